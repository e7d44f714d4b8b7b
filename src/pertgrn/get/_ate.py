"""Observed average treatment effects: the yardstick every prediction is compared with."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from pertgrn._constants import CONDITION_KEY
from pertgrn._utils import check_counts, get_design, log_normalize, unknown_names_message


def log2_cp10k(X: np.ndarray | sparse.spmatrix, *, target_sum: float = 1e4) -> np.ndarray | sparse.csr_matrix:
    """``log2(1 + counts / library_size * target_sum)``: the unit of every treatment effect in pertgrn."""
    out = log_normalize(X, target_sum=target_sum)
    if sparse.issparse(out):
        out.data /= np.float32(np.log(2.0))
        return out
    return out / np.float32(np.log(2.0))


def group_means(X: np.ndarray | sparse.spmatrix, groups: pd.Categorical) -> np.ndarray:
    """Mean of the rows of ``X`` within each category of ``groups`` (categories × columns), by one sparse product."""
    codes = np.asarray(groups.codes)
    keep = codes >= 0
    n_groups = len(groups.categories)
    indicator = sparse.csr_matrix(
        (np.ones(int(keep.sum())), (codes[keep], np.flatnonzero(keep))), shape=(n_groups, X.shape[0])
    )
    counts = np.asarray(indicator.sum(axis=1)).ravel()
    sums = indicator @ X
    sums = sums.toarray() if sparse.issparse(sums) else np.asarray(sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def ate_df(
    adata: AnnData,
    *,
    layer: str | None = None,
    mask: str | np.ndarray | None = None,
    perturbations: Sequence[str] | None = None,
    min_cells: int = 1,
    target_sum: float = 1e4,
) -> pd.DataFrame:
    """Observed average treatment effect of each perturbation on every gene.

    The effect of perturbation *p* on gene *g* is the mean of ``log2(1 + CP10k)`` expression over
    the cells of *p* minus its mean over control cells — the unit in which every pertgrn model
    (``get_ate``) and baseline reports predicted effects, so the two can be compared directly.

    Parameters
    ----------
    adata
        Annotated screen after :func:`pertgrn.pp.annotate_perturbations`, raw counts in ``X`` or ``layer``.
    layer
        Layer holding raw counts; ``None`` uses ``X``.
    mask
        Restrict to these cells: a boolean ``obs`` column name or a boolean array (for example the
        held-out test cells). Control cells are taken from the same subset.
    perturbations
        Conditions to report (canonical labels of ``obs["pertgrn_condition"]``); ``None`` reports
        every non-control condition with at least ``min_cells`` cells in the subset.
    min_cells
        Conditions with fewer cells in the subset are left out.
    target_sum
        Counts per cell after normalisation.

    Returns
    -------
    DataFrame perturbation × gene of observed average treatment effects.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> ate = pg.get.ate_df(adata)
    >>> ate.shape[1] == adata.n_vars
    True
    """
    design = get_design(adata)
    control = design["control"]
    if isinstance(mask, str):
        if mask not in adata.obs.columns:
            raise KeyError(f"Mask column {mask!r} not found in adata.obs; available: {list(adata.obs.columns)}.")
        mask = adata.obs[mask].to_numpy()
    if mask is None:
        mask = np.ones(adata.n_obs, dtype=bool)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (adata.n_obs,):
        raise ValueError(
            f"`mask` must be a boolean array of length n_obs={adata.n_obs}, got {mask.dtype} {mask.shape}."
        )
    X = check_counts(adata, layer)
    conditions = adata.obs[CONDITION_KEY]
    subset = pd.Categorical(conditions.to_numpy()[mask], categories=conditions.cat.categories)
    if control not in set(subset):
        raise ValueError("No control cells among the selected cells; cannot compute treatment effects.")
    means = group_means(log2_cp10k(X[mask], target_sum=target_sum), subset)
    n = pd.Series(subset).value_counts().reindex(subset.categories).to_numpy()
    table = pd.DataFrame(means, index=list(subset.categories), columns=adata.var_names)
    ate = table - table.loc[control]
    if perturbations is None:
        keep = [c for c, k in zip(subset.categories, n, strict=True) if c != control and k >= min_cells]
    else:
        missing = [p for p in perturbations if p not in ate.index]
        if missing:
            known = [c for c in ate.index if c != control]
            raise KeyError(
                unknown_names_message(
                    missing,
                    known,
                    what="Perturbations",
                    problem="are not conditions of this screen",
                    delimiter=design["delimiter"],
                )
            )
        too_few = [p for p in perturbations if n[list(subset.categories).index(p)] < min_cells]
        if too_few:
            raise ValueError(f"Perturbations {too_few} have fewer than min_cells={min_cells} cells in the subset.")
        keep = list(perturbations)
    out = ate.loc[keep]
    out.index.name = "perturbation"
    out.columns.name = None
    return out

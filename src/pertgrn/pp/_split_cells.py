"""Hold cells out for evaluation: a split stratified by condition, so every condition is scored on unseen cells."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from pertgrn._constants import CONDITION_KEY, UNS_KEY
from pertgrn._utils import SUMMARY, did_you_mean, logger, preview

#: ``by="condition"`` names pertgrn's canonical condition column when it exists.
_CONDITION_ALIAS = "condition"


def _strata_columns(adata: AnnData, by: str | Sequence[str] | None) -> list[str]:
    """The ``obs`` columns to stratify on, resolving the ``"condition"`` alias."""
    if by is None:
        return []
    names = [by] if isinstance(by, str) else list(by)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"`by` must be an obs column name, a list of them or None, found {by!r}.")
    columns = []
    for name in names:
        if name == _CONDITION_ALIAS and CONDITION_KEY in adata.obs.columns:
            columns.append(CONDITION_KEY)
        elif name in adata.obs.columns:
            columns.append(name)
        else:
            how = (
                f" Run `pertgrn.pp.annotate_perturbations(adata, ...)` first (it writes obs[{CONDITION_KEY!r}]), "
                "or name an obs column."
                if name == _CONDITION_ALIAS
                else ""
            )
            raise KeyError(
                f"Column {name!r} not found in adata.obs.{did_you_mean([name], adata.obs.columns)}{how} "
                f"Available columns: {preview(adata.obs.columns)}."
            )
    if len(set(columns)) != len(columns):
        raise ValueError(f"`by` names a column twice: {names}.")
    for column in columns:
        if adata.obs[column].isna().any():
            raise ValueError(f"adata.obs[{column!r}] has missing values; every cell needs a stratum.")
    return columns


def n_held_out(n_cells: np.ndarray, fraction: float) -> np.ndarray:
    """Test cells per stratum: ``fraction`` of its cells rounded half up, but at least one test and one training cell.

    A stratum of one cell keeps it for training.

    Examples
    --------
    >>> import numpy as np
    >>> from pertgrn.pp._split_cells import n_held_out
    >>> n_held_out(np.array([1, 2, 3, 10, 11, 100]), 0.2).tolist()
    [0, 1, 1, 2, 2, 20]
    """
    n_cells = np.asarray(n_cells, dtype=np.int64)
    n_test = np.floor(fraction * n_cells + 0.5).astype(np.int64)
    return np.where(n_cells >= 2, np.clip(n_test, 1, n_cells - 1), 0)


def split_cells(
    adata: AnnData,
    *,
    fraction: float = 0.2,
    by: str | Sequence[str] | None = "condition",
    seed: int = 0,
    key_added: str = "test",
    copy: bool = False,
) -> AnnData | None:
    """Mark a held-out set of cells, stratified by condition, for honest evaluation.

    Within every stratum (by default every condition, control included) a fraction of the cells
    is drawn at random, without replacement, as test cells; the rest are training cells. Pass the
    column to :func:`pertgrn.tl.fit_gpovae` and to :func:`pertgrn.tl.evaluate` (``test_key=``) so the
    model is scored on cells it never saw, and every condition contributes to the score in proportion
    to its cells.

    Stratum sizes: a stratum of ``n`` cells gets ``round(fraction · n)`` test cells (halves rounded
    up), but at least one test cell and at least one training cell, so every condition with two
    or more cells is both trained on and evaluated; a condition of a single cell cannot be split
    and stays in training (logged). With ``fraction=0.2``: 1 cell → 0 test cells, 2 → 1, 3 → 1,
    10 → 2, 100 → 20. The split depends only on ``seed`` and the strata (cell order within a
    stratum is the order in ``adata``), so the same seed gives the same split.

    Parameters
    ----------
    adata
        Annotated data matrix of a screen.
    fraction
        Fraction of each stratum's cells to hold out, in (0, 1).
    by
        Column(s) of ``adata.obs`` whose groups are split separately. ``"condition"`` means
        ``obs["pertgrn_condition"]`` (written by :func:`pertgrn.pp.annotate_perturbations`) when it
        exists, else a column named ``"condition"``. A list stratifies by the combinations (for
        example condition and replicate); ``None`` draws from all cells at once.
    seed
        Seed of the random draw.
    key_added
        Name of the boolean ``obs`` column written.
    copy
        Return a copy with the column instead of writing into ``adata``.

    Returns
    -------
    The annotated copy if ``copy=True``, else ``None``; the annotated object gets

    ``obs[key_added]``
        ``(n_obs,)`` bool, ``True`` for held-out (test) cells.
    ``uns["pertgrn"]["split_cells"]``
        ``params`` (``fraction``, ``by``: the obs columns used, or ``"none"``, ``seed``, ``key_added``),
        ``n_test`` and ``n_train``, and ``strata``: DataFrame with one row per stratum, columns
        ``n_cells`` and ``n_test`` (indexed by the stratum's label, its columns' values joined by
        ``" | "``). Other entries of ``uns["pertgrn"]`` are kept.

    Raises
    ------
    KeyError
        If a column of ``by`` is not in ``adata.obs`` (with a suggestion for a near miss).
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``fraction`` is not in (0, 1) or a stratum column has missing values. ``adata`` is left untouched.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> pg.pp.split_cells(adata, fraction=0.2, seed=0)
    >>> test = adata.obs["test"]
    >>> bool(test.groupby(adata.obs["pertgrn_condition"], observed=True).any().all())  # every condition held out
    True
    """
    # ---- validate everything before writing
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, got {type(adata).__name__}.")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not np.isfinite(fraction):
        raise TypeError(f"`fraction` must be a number, got {fraction!r}.")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"`fraction` must lie strictly between 0 and 1, got {fraction!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`seed` must be an int, got {seed!r}.")
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"`key_added` must be a non-empty string, got {key_added!r}.")
    if not isinstance(copy, bool | np.bool_):
        raise TypeError(f"`copy` must be a bool, got {copy!r}.")
    columns = _strata_columns(adata, by)
    if UNS_KEY in adata.uns and not isinstance(adata.uns[UNS_KEY], Mapping):
        raise TypeError(
            f"adata.uns[{UNS_KEY!r}] must be a dict, found {type(adata.uns[UNS_KEY]).__name__}; "
            "pertgrn stores its records there."
        )

    # ---- compute (nothing written yet)
    if columns:
        parts = [adata.obs[c].astype(str).reset_index(drop=True) for c in columns]
        joined = parts[0]
        for part in parts[1:]:
            joined = joined + " | " + part
        labels = joined.to_numpy()
    else:
        labels = np.full(adata.n_obs, "all cells", dtype=object)
    codes, strata = pd.factorize(labels, sort=True)
    n_cells = np.bincount(codes, minlength=len(strata))
    n_test = n_held_out(n_cells, float(fraction))
    rng = np.random.default_rng(int(seed))
    test = np.zeros(adata.n_obs, dtype=bool)
    members = pd.Series(np.arange(adata.n_obs)).groupby(codes).indices
    for code in range(len(strata)):  # strata in sorted order: the draw does not depend on cell order across strata
        cells = members.get(code, np.array([], dtype=int))
        if n_test[code]:
            test[rng.choice(cells, size=int(n_test[code]), replace=False)] = True
    unsplit = [str(s) for s, n in zip(strata, n_cells, strict=True) if n < 2]
    table = pd.DataFrame({"n_cells": n_cells.astype(np.int64), "n_test": n_test.astype(np.int64)}, index=strata)
    table.index = table.index.astype(str)
    table.index.name = "stratum"
    params: dict[str, Any] = {
        "fraction": float(fraction),
        "by": list(columns),
        "seed": int(seed),
        "key_added": key_added,
    }
    if not columns:
        params["by"] = "none"  # an empty list does not survive an h5ad round trip as a list

    # ---- write
    if copy:
        adata = adata.copy()
    elif adata.is_view:
        adata._init_as_actual(adata.copy())
    adata.obs[key_added] = test
    record = dict(adata.uns.get(UNS_KEY, {}))
    record["split_cells"] = {
        "params": params,
        "n_test": int(test.sum()),
        "n_train": int((~test).sum()),
        "strata": table,
    }
    adata.uns[UNS_KEY] = record
    logger.info(
        "split_cells: %s of %s cells held out in obs[%r] (%d strata by %s)",
        f"{int(test.sum()):,}",
        f"{adata.n_obs:,}",
        key_added,
        len(strata),
        columns or "nothing",
    )
    if unsplit:
        logger.log(
            SUMMARY,
            "split_cells: %s a single cell, kept for training and never evaluated: %s",
            "1 stratum has" if len(unsplit) == 1 else f"{len(unsplit)} strata have",
            preview(unsplit, n=10),
        )
    return adata if copy else None

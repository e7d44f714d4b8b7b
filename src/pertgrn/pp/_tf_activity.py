"""TF-community activities: the eigengene of each community's TFs, plus a global one over all TFs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from threadpoolctl import threadpool_limits

from pertgrn._utils import check_counts, library_size, logger, to_dense


def activity_names(key_added: str) -> tuple[str, str]:
    """``(uns key, varm key)`` of :func:`tf_activity` for ``key_added`` (``X_tf_activity`` → ``tf_activity``)."""
    base = key_added[2:] if key_added.startswith("X_") and len(key_added) > 2 else key_added
    return base, f"{base}_loadings"


def fit_cells(adata: AnnData, fit_mask: object) -> tuple[np.ndarray, str]:
    """The fit cells as a boolean mask over ``obs``, and a description for ``params``."""
    if fit_mask is None:
        return np.ones(adata.n_obs, dtype=bool), "all"
    if isinstance(fit_mask, str):
        if fit_mask not in adata.obs.columns:
            raise KeyError(f"fit_mask {fit_mask!r} is not a column of adata.obs; available: {list(adata.obs.columns)}.")
        mask = adata.obs[fit_mask].to_numpy()
        if mask.dtype != bool:
            raise TypeError(f"adata.obs[{fit_mask!r}] must be boolean (True = fit cell), found dtype {mask.dtype}.")
        return mask, fit_mask
    mask = fit_mask.to_numpy() if isinstance(fit_mask, pd.Series) else np.asarray(fit_mask)
    if mask.dtype != bool:
        raise TypeError(
            f"`fit_mask` must be boolean (True = fit cell) or an obs column name, found dtype {mask.dtype}."
        )
    if mask.shape != (adata.n_obs,):
        raise ValueError(f"`fit_mask` must have shape ({adata.n_obs},) (one entry per cell), found {mask.shape}.")
    return mask, "array"


def eigengene(Z_fit: np.ndarray) -> tuple[np.ndarray, float]:
    """Leading principal axis of z-scored, fit-centred columns, signed toward their mean; and its variance share.

    The sign makes the eigengene correlate positively with the mean of the columns on the fit cells
    (ties, e.g. a zero correlation, go to a positive largest loading). A single column gives loading 1.
    """
    _, singular, vt = np.linalg.svd(Z_fit, full_matrices=False)
    v = vt[0].copy()
    score, mean = Z_fit @ v, Z_fit.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(score, mean)[0, 1] if score.std() > 0 and mean.std() > 0 else 0.0
    if corr < 0 or (not corr > 0 and v[np.argmax(np.abs(v))] < 0):
        v = -v
    power = singular**2
    return v, float(power[0] / power.sum()) if power.sum() > 0 else 0.0


def tf_activity(
    adata: AnnData,
    *,
    key: str = "tf_communities",
    fit_mask: np.ndarray | pd.Series | str | None = None,
    layer: str | None = None,
    key_added: str = "X_tf_activity",
    copy: bool = False,
) -> AnnData | None:
    """Summarise each TF community's activity per cell by its eigengene, plus a global TF activity (gCRL).

    For each community ``C`` of :func:`pertgrn.pp.tf_communities` the activity is
    ``TFA_C = Z_C v_1`` (Alter et al. 2000), where ``Z_C`` is the log-normalised expression
    of the community's TFs z-scored per TF, and ``v_1`` is the leading eigenvector of its covariance
    (the loadings of PC 1: a PCA on the correlation matrix of the TFs). A last column, the global
    activity, is the same over every TF of the reference GRN (``uns[key]["tfs"]``, which includes
    the TFs left out of the communities).

    - **Fit cells.** The library-size scale (median library of the fit cells), the per-TF means and
      standard deviations and the loadings are fitted on the ``fit_mask`` cells only, then frozen
      and applied to every cell, so the activities of held-out cells are out-of-sample.
    - **Sign.** ``v_1`` is signed so that the activity correlates positively with the mean z-score
      of the community's TFs on the fit cells.
    - **Edge cases.** A community of one TF has that TF's z-score as activity (a warning about small
      communities comes from :func:`pertgrn.pp.tf_communities`). A TF that is constant in the fit
      cells gets loading 0 (logged). Community TFs absent from ``var_names`` are skipped (logged); a
      community without any measured TF is an error.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts in ``X`` or ``layer`` and TF communities under
        ``uns[key]``.
    key
        The ``key_added`` of :func:`pertgrn.pp.tf_communities`.
    fit_mask
        Cells that fit the z-scores and loadings: a boolean array over ``obs``, the name of a
        boolean ``obs`` column, or ``None`` for all cells. gCRL fits on the training cells
        (controls and training singles).
    layer
        Layer holding the raw counts; ``None`` uses ``X``.
    key_added
        Key of ``adata.obsm`` written; the loadings go to ``varm[f"{base}_loadings"]`` and the rest
        to ``uns[base]``, where ``base`` is ``key_added`` without a leading ``X_``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``; writes (defaults shown)

    ``obsm["X_tf_activity"]``
        ``(n_obs, K + 1)`` float64: the activities of communities 0 … K−1, then the global activity.
    ``varm["tf_activity_loadings"]``
        ``(n_vars, K + 1)`` float64: the loadings ``v_1`` of each column on the z-scored TFs, 0 for
        genes outside the column's TF set.
    ``uns["tf_activity"]``
        ``columns`` (``["C0", …, "C{K-1}", "global"]``), ``tfs`` (the TFs used, in ``var`` order),
        ``mean`` and ``sd`` (their z-score parameters on the fit cells, log-normalised scale),
        ``explained_variance_ratio`` (of PC 1 within each column's TFs), ``n_tfs`` (per column),
        ``target_sum`` (of the log-normalisation), ``n_fit_cells``, ``params`` (``key``, ``fit_mask``:
        ``"all"``, ``"array"`` or the obs column, ``layer``) and ``keys``. The activity of any cell
        is ``((log1p(counts · target_sum / library_size) − mean) / sd) @ loadings``.

    Raises
    ------
    KeyError
        If ``uns[key]`` holds no TF communities, or ``fit_mask`` / ``layer`` names a missing column.
    TypeError, ValueError
        On a non-boolean or misshaped ``fit_mask``, fewer than 2 fit cells, counts that are not raw
        integers, or a community without a measured TF; ``adata`` is left untouched.

    Examples
    --------
    >>> import numpy as np
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(n_tf_modules=3, seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> pg.pp.reference_grn(adata, tfs=adata.var_names[adata.var["true_tf_module"] >= 0])
    >>> pg.pp.tf_communities(adata, n_runs=10, n_perm=100)
    >>> pg.pp.tf_activity(adata, fit_mask=(adata.obs["perturbation"] == "control").to_numpy())
    >>> adata.obsm["X_tf_activity"].shape[1] == adata.uns["tf_communities"]["n_communities"] + 1
    True
    >>> adata.uns["tf_activity"]["columns"][-1]
    'global'
    """
    # ---- arguments
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, found {type(adata).__name__}.")
    if not isinstance(copy, bool):
        raise TypeError(f"`copy` must be True or False, found {copy!r}.")
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"`key_added` must be a non-empty string, found {key_added!r}.")
    if not isinstance(key, str):
        raise TypeError(f"`key` must be a string, found {type(key).__name__}.")
    record = adata.uns.get(key)
    if not isinstance(record, Mapping) or "communities" not in record or "tfs" not in record:
        raise KeyError(
            f"adata.uns[{key!r}] holds no TF communities; run `pertgrn.pp.tf_communities(adata, key_added={key!r})` "
            "first."
        )
    mask, mask_name = fit_cells(adata, fit_mask)
    n_fit = int(mask.sum())
    if n_fit < 2:
        raise ValueError(f"tf_activity needs at least 2 fit cells, found {n_fit}.")
    counts = check_counts(adata, layer)

    # ---- TF sets of the columns
    table = record["communities"]
    genes = adata.var_names.astype(str)
    position = pd.Series(np.arange(genes.size), index=genes)
    community = pd.Series(table["community"].to_numpy(np.int64), index=table["tf"].astype(str).to_numpy())
    n_communities = int(community.max()) + 1 if (community >= 0).any() else 0
    all_tfs = [str(t) for t in record["tfs"]]
    missing = sorted(set(all_tfs) - set(genes))
    if missing:
        logger.warning(
            "tf_activity: %d TFs of uns[%r] are not in var_names and are skipped: %s", len(missing), key, missing[:10]
        )
    columns: list[np.ndarray] = []
    for c in range(n_communities):
        members = [t for t in community.index[community.to_numpy() == c] if t in position.index]
        if not members:
            raise ValueError(f"Community {c} of uns[{key!r}] has no TF among var_names, so it has no activity.")
        columns.append(np.sort(position[members].to_numpy()))
    global_members = np.sort(position[[t for t in all_tfs if t in position.index]].to_numpy())
    if global_members.size == 0:
        raise ValueError(f"No TF of uns[{key!r}] is among var_names.")
    columns.append(global_members)
    used = np.unique(np.concatenate(columns))

    # ---- expression of the TFs, scaled on the fit cells
    lib = library_size(counts)
    fit_lib = lib[mask]
    positive = fit_lib[fit_lib > 0]
    target_sum = float(np.median(positive)) if positive.size else 1.0
    scale = np.divide(target_sum, lib, out=np.zeros_like(lib), where=lib > 0)
    tf_counts = counts[:, used]
    tf_counts = tf_counts.multiply(scale[:, None]).tocsr() if sparse.issparse(tf_counts) else tf_counts * scale[:, None]
    expr = np.log1p(to_dense(tf_counts).astype(np.float64))
    mean = expr[mask].mean(axis=0)
    sd = expr[mask].std(axis=0)
    constant = sd == 0
    if constant.any():
        logger.warning(
            "tf_activity: %d TFs are constant in the fit cells and get loading 0: %s",
            int(constant.sum()),
            list(genes[used[constant]][:10]),
        )
    Z = np.where(constant, 0.0, (expr - mean) / np.where(constant, 1.0, sd))
    column_of = {g: j for j, g in enumerate(used)}

    activity = np.zeros((adata.n_obs, len(columns)))
    loadings = np.zeros((adata.n_vars, len(columns)))
    explained = np.zeros(len(columns))
    Z_fit = Z[mask]
    with threadpool_limits(limits=1, user_api="blas"):  # small SVDs: threads only contend
        for j, members in enumerate(columns):
            local = np.array([column_of[g] for g in members])
            v, explained[j] = eigengene(Z_fit[:, local])
            v[constant[local]] = 0.0  # an all-constant community has an arbitrary axis: make it 0
            activity[:, j] = Z[:, local] @ v
            loadings[members, j] = v
    names = [f"C{c}" for c in range(n_communities)] + ["global"]
    logger.info(
        "tf_activity: %d community eigengenes and a global one over %d TFs, fitted on %d cells; PC1 explains %s",
        n_communities,
        global_members.size,
        n_fit,
        np.round(explained, 2).tolist(),
    )
    base, varm_key = activity_names(key_added)
    result: dict[str, Any] = {
        "columns": names,
        "tfs": genes[used].tolist(),
        "mean": mean,
        "sd": sd,
        "explained_variance_ratio": explained,
        "n_tfs": np.array([m.size for m in columns], dtype=np.int64),
        "target_sum": target_sum,
        "n_fit_cells": n_fit,
        "params": {"key": key, "fit_mask": mask_name, "layer": "X" if layer is None else layer},
        "keys": {"obsm": key_added, "varm": varm_key, "communities": key},
    }

    # ---- write
    out = adata.copy() if copy else adata
    out.obsm[key_added] = activity
    out.varm[varm_key] = loadings
    out.uns[base] = result
    return out if copy else None

"""Select the extended genes: genes differentially expressed under some perturbation that are not targets."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from pertgrn._constants import CONDITION_KEY, EXTENDED_KEY, PERTURBED_KEY, UNS_KEY
from pertgrn._design import PerturbationDesign
from pertgrn._utils import check_counts, get_design, log_normalize, logger, quiet_scanpy

_METHODS = ("wilcoxon", "t-test", "t-test_overestim_var")


def select_extended_genes(
    adata: AnnData,
    *,
    min_abs_logfc: float = 1.0,
    max_pval_adj: float = 0.01,
    method: str = "wilcoxon",
    layer: str | None = None,
    min_cells: int = 3,
    max_genes: int | None = None,
    test_key: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Mark the genes that respond to some perturbation without being targets: GPO-VAE's extended genes.

    GPO-VAE's graph has a node for every target and for every extended gene, a gene that is
    differentially expressed under some perturbation, so that the GRN can reach the genes that
    perturbations act on through other genes. Each perturbation condition is compared with the
    control cells by :func:`scanpy.tl.rank_genes_groups` (``reference`` = control) on
    log-normalised expression (counts scaled to the median library size, ``log1p``), computed into a
    temporary AnnData so that ``adata`` receives no scanpy keys. A gene is extended if, in at least one
    condition, ``|logfoldchanges| ≥ min_abs_logfc`` (scanpy's log2 fold change) and the
    Benjamini–Hochberg adjusted p-value is ≤ ``max_pval_adj``, and it is not a target of any
    perturbation. Every gene that passes is kept, not one per perturbation.

    The GPO-VAE reference code (``gpo_vae/data/*/data_module.py``: Wilcoxon against the non-targeting
    cells, ``|log2 FC| > 3`` and adjusted p < 0.01) keeps only the top-ranked gene per perturbation,
    which makes its cut of 3 a ranking device more than a filter. Keeping every passing gene, the
    default here is a two-fold change (``min_abs_logfc=1``), the usual differential-expression
    effect-size cut, with the reference's p-value cut of 0.01; ``max_genes`` bounds the set when a
    screen yields too many.

    Parameters
    ----------
    adata
        Annotated data matrix of a screen, with raw counts, annotated by
        :func:`pertgrn.pp.annotate_perturbations`.
    min_abs_logfc
        Smallest absolute log2 fold change (perturbed vs control, as reported by scanpy).
    max_pval_adj
        Largest Benjamini–Hochberg adjusted p-value.
    method
        Test of :func:`scanpy.tl.rank_genes_groups`: ``"wilcoxon"``, ``"t-test"`` or
        ``"t-test_overestim_var"``.
    layer
        Layer holding the raw counts; ``None`` uses ``adata.X``.
    min_cells
        Conditions with fewer cells are not tested (logged).
    max_genes
        Keep at most this many extended genes, those with the largest absolute test statistic in
        any condition; ``None`` keeps all.
    test_key
        Bool ``obs`` column of held-out cells (True): they are left out of the tests, so that the
        nodes of a model fitted without them are chosen without them too.
    copy
        Return an annotated copy instead of annotating ``adata`` in place.

    Returns
    -------
    The annotated copy if ``copy=True``, else ``None``; the annotated object gets

    ``var["pertgrn_extended"]``
        ``(n_vars,)`` bool, the gene is an extended gene.
    ``uns["pertgrn"]["extended_genes"]``
        ``hits``: long DataFrame with one row per (condition, extended gene) that passed, columns
        ``condition``, ``gene``, ``logfoldchange``, ``pval_adj``, ``score``; ``params``: the
        arguments; ``conditions_tested``: list of the conditions compared with control.

    Raises
    ------
    KeyError
        If :func:`pertgrn.pp.annotate_perturbations` has not been run or ``layer`` is absent.
    TypeError
        If an argument has the wrong type.
    ValueError
        If an argument is out of range, the counts are not raw integers, or there are too few
        control cells. ``adata`` is left untouched.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(seed=0)
    >>> pg.pp.annotate_perturbations(adata, perturbation_key="perturbation", control="control")
    >>> pg.pp.select_extended_genes(adata)
    >>> bool((adata.var["pertgrn_extended"] & adata.var["pertgrn_perturbed"]).any())
    False
    """
    # ---- validate everything before writing
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, got {type(adata).__name__}.")
    for name, value in (("min_abs_logfc", min_abs_logfc), ("max_pval_adj", max_pval_adj)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise TypeError(f"`{name}` must be a number, got {value!r}.")
    if not np.isfinite(min_abs_logfc) or min_abs_logfc < 0:
        raise ValueError(f"`min_abs_logfc` must be a finite number ≥ 0, got {min_abs_logfc!r}.")
    if not 0 < max_pval_adj <= 1:
        raise ValueError(f"`max_pval_adj` must lie in (0, 1], got {max_pval_adj!r}.")
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {list(_METHODS)}, got {method!r}.")
    if isinstance(min_cells, bool) or not isinstance(min_cells, int | np.integer):
        raise TypeError(f"`min_cells` must be an int, got {min_cells!r}.")
    if min_cells < 2:
        raise ValueError(f"`min_cells` must be at least 2 (a test needs two cells per group), got {min_cells}.")
    if max_genes is not None:
        if isinstance(max_genes, bool) or not isinstance(max_genes, int | np.integer):
            raise TypeError(f"`max_genes` must be an int or None, got {max_genes!r}.")
        if max_genes < 1:
            raise ValueError(f"`max_genes` must be at least 1, got {max_genes}.")
    if not isinstance(copy, bool | np.bool_):
        raise TypeError(f"`copy` must be a bool, got {copy!r}.")
    design = get_design(adata)
    control = str(design["control"])
    if CONDITION_KEY not in adata.obs.columns or not isinstance(adata.obs[CONDITION_KEY].dtype, pd.CategoricalDtype):
        raise KeyError(
            f"adata.obs[{CONDITION_KEY!r}] is missing or not categorical. "
            "Run `pertgrn.pp.annotate_perturbations(adata, ...)` first."
        )
    if test_key is None:
        train = np.ones(adata.n_obs, dtype=bool)
    elif test_key not in adata.obs.columns or not pd.api.types.is_bool_dtype(adata.obs[test_key]):
        raise KeyError(f"`test_key` {test_key!r} must name a boolean column of adata.obs.")
    else:
        train = ~adata.obs[test_key].to_numpy(dtype=bool)
    condition = adata.obs[CONDITION_KEY].astype(str)[train]
    sizes = condition.value_counts()
    n_control = int(sizes.get(control, 0))
    if n_control < min_cells:
        raise ValueError(f"Need at least {min_cells} control cells ({control!r}) to test against; found {n_control}.")
    X = check_counts(adata, layer)

    # ---- compute (nothing written yet)
    conditions = [str(c) for c in adata.obs[CONDITION_KEY].cat.categories if str(c) != control]
    tested = [c for c in conditions if int(sizes.get(c, 0)) >= min_cells]
    skipped = [c for c in conditions if c not in tested]
    if skipped:
        logger.info(
            "select_extended_genes: %d conditions with < %d cells not tested: %s", len(skipped), min_cells, skipped
        )
    targets = {str(t) for t in design.get("targets", [])}
    parser = PerturbationDesign.from_adata(adata)
    targets |= {t for c in conditions for t in parser.split(c)}
    hits = pd.DataFrame(
        {"condition": pd.Series(dtype=str), "gene": pd.Series(dtype=str), "logfoldchange": [], "pval_adj": []}
    ).assign(score=pd.Series(dtype=float))
    if tested:
        import scanpy as sc

        tmp = AnnData(
            X=log_normalize(X[train] if not train.all() else X),
            obs=pd.DataFrame(
                {"group": pd.Categorical(condition.to_numpy())}, index=[f"c{i}" for i in range(int(train.sum()))]
            ),
            var=pd.DataFrame(index=adata.var_names.astype(str)),
        )
        tmp.uns["log1p"] = {"base": None}  # natural log, so that scanpy's fold changes are right
        with warnings.catch_warnings(), quiet_scanpy():
            # scanpy fills its result table one group at a time, which pandas reports for many groups
            warnings.filterwarnings("ignore", category=pd.errors.PerformanceWarning)
            sc.tl.rank_genes_groups(
                tmp, "group", groups=tested, reference=control, method=method, use_raw=False, n_genes=tmp.n_vars
            )
        result = tmp.uns["rank_genes_groups"]
        frames = [
            pd.DataFrame(
                {
                    "condition": c,
                    "gene": np.asarray(result["names"][c], dtype=str),
                    "logfoldchange": np.asarray(result["logfoldchanges"][c], dtype=np.float64),
                    "pval_adj": np.asarray(result["pvals_adj"][c], dtype=np.float64),
                    "score": np.asarray(result["scores"][c], dtype=np.float64),
                }
            )
            for c in tested
        ]
        table = pd.concat(frames, ignore_index=True)
        passed = (
            (table["logfoldchange"].abs() >= min_abs_logfc)
            & (table["pval_adj"] <= max_pval_adj)
            & ~table["gene"].isin(targets)
        )
        hits = table.loc[passed.to_numpy()].reset_index(drop=True)
    genes = pd.unique(hits["gene"])
    if max_genes is not None and genes.size > max_genes:
        best = hits.assign(abs_score=hits["score"].abs()).groupby("gene")["abs_score"].max()
        keep = best.sort_values(ascending=False, kind="stable").index[:max_genes]
        hits = hits[hits["gene"].isin(keep)].reset_index(drop=True)
        genes = pd.unique(hits["gene"])
    hits = hits.sort_values(["condition", "pval_adj", "gene"], kind="stable").reset_index(drop=True)
    hits.index = hits.index.astype(str)
    extended = adata.var_names.isin(genes)
    params: dict[str, Any] = {
        "min_abs_logfc": float(min_abs_logfc),
        "max_pval_adj": float(max_pval_adj),
        "method": method,
        "min_cells": int(min_cells),
    }
    if max_genes is not None:
        params["max_genes"] = int(max_genes)
    if layer is not None:
        params["layer"] = layer
    if test_key is not None:
        params["test_key"] = test_key

    # ---- write
    if copy:
        adata = adata.copy()
    elif adata.is_view:
        adata._init_as_actual(adata.copy())
    adata.var[EXTENDED_KEY] = extended
    record = dict(adata.uns[UNS_KEY])
    record["extended_genes"] = {"hits": hits, "params": params, "conditions_tested": tested}
    adata.uns[UNS_KEY] = record
    logger.info(
        "select_extended_genes: %d extended genes from %d hits in %d tested conditions (%d targets measured)",
        int(extended.sum()),
        len(hits),
        len(tested),
        int(adata.var[PERTURBED_KEY].sum()) if PERTURBED_KEY in adata.var else 0,
    )
    return adata if copy else None

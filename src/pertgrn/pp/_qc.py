"""Flag low-quality cells by the six QC criteria of CRADLE-VAE / GPO-VAE."""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from scipy.stats import median_abs_deviation

from pertgrn._constants import QC_FAIL_KEY, UNS_KEY
from pertgrn._utils import check_counts, library_size, logger, quiet_scanpy

#: Default gene-name patterns, matched case-insensitively against ``var_names``.
MT_PATTERN = r"^MT-"
#: ``RPS…`` / ``RPL…`` ribosomal proteins, not the ``RPS6K…`` kinases.
RIBO_PATTERN = r"^RP[SL](?!\d+K)"
#: Hemoglobin chains (HBA1/2, HBB, HBD, HBE1, HBG1/2, HBM, HBQ1, HBZ; mouse Hba-a1, Hbb-bs, …), excluding HBEGF,
#: HBP1, HBS1L and the pseudogenes (HBBP1, HBAP1) that scanpy's tutorial pattern ``^HB[^(P)]`` partly lets through.
HB_PATTERN = r"^HB[ABDEGMQZ](?:\d|-|$)"

#: obs columns written by :func:`annotate_qc`, one per criterion.
QC_FLAG_KEYS = {
    "low_counts": "pertgrn_qc_low_counts",
    "genes_outlier": "pertgrn_qc_genes_outlier",
    "high_mt": "pertgrn_qc_high_mt",
    "high_ribo": "pertgrn_qc_high_ribo",
    "high_hb": "pertgrn_qc_high_hb",
    "doublet": "pertgrn_qc_doublet",
}
#: obs columns holding the continuous QC metrics.
QC_METRIC_KEYS = {
    "total_counts": "pertgrn_total_counts",
    "n_genes": "pertgrn_n_genes",
    "pct_mt": "pertgrn_pct_mt",
    "pct_ribo": "pertgrn_pct_ribo",
    "pct_hb": "pertgrn_pct_hb",
    "doublet_score": "pertgrn_doublet_score",
}
# keyword arguments of scanpy.pp.scrublet that annotate_qc sets itself
_SCRUBLET_RESERVED = {"adata", "adata_sim", "batch_key", "random_state", "threshold", "copy", "verbose"}


def _compile(pattern: Any, name: str) -> re.Pattern:
    if not isinstance(pattern, str) or pattern == "":
        raise TypeError(f"`{name}` must be a non-empty regular expression string, got {pattern!r}.")
    try:
        return re.compile(pattern, flags=re.IGNORECASE)
    except re.error as err:
        raise ValueError(f"`{name}`={pattern!r} is not a valid regular expression: {err}.") from err


def _check_real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    if not np.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    return float(value)


def _mad_bounds(values: np.ndarray, n_mads: float, *, lower: bool, upper: bool) -> dict[str, Any]:
    """Median ± ``n_mads`` · MAD outlier call; a zero MAD flags nothing (a spike at the median is no outlier).

    The MAD is scaled to estimate the standard deviation of normal data (R's ``mad``, scater's ``isOutlier``).
    """
    median = float(np.median(values))
    mad = float(median_abs_deviation(values, scale="normal"))
    lo = median - n_mads * mad if lower else -np.inf
    hi = median + n_mads * mad if upper else np.inf
    if mad == 0.0:
        flags = np.zeros(values.shape[0], dtype=bool)
    else:
        flags = (values < lo) | (values > hi)
    return {"median": median, "mad": mad, "lower": float(lo), "upper": float(hi), "flags": flags}


def _n_scrublet_hvgs(counts: sparse.csr_matrix) -> int:
    """Number of genes Scrublet's own preprocessing in :func:`scanpy.pp.scrublet` keeps as highly variable."""
    import scanpy as sc

    tmp = AnnData(X=counts.copy())
    with quiet_scanpy():  # a throw-away AnnData: scanpy's "added …" messages would only confuse
        sc.pp.filter_genes(tmp, min_cells=3)
        sc.pp.filter_cells(tmp, min_genes=3)
        if tmp.n_obs < 3 or tmp.n_vars < 3:
            return 0
        sc.pp.normalize_total(tmp)
        sc.pp.log1p(tmp)
        sc.pp.highly_variable_genes(tmp)
    return int(tmp.var["highly_variable"].sum())


def _run_scrublet(
    X: sparse.spmatrix | np.ndarray,
    *,
    batches: np.ndarray | None,
    random_state: int,
    threshold: float | None,
    kwargs: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Doublet scores, calls and thresholds from :func:`scanpy.pp.scrublet`, run on throw-away AnnDatas.

    Each batch is scored separately, as ``scanpy.pp.scrublet(batch_key=...)`` does; running the batches
    here lets the number of principal components be capped at what the batch's highly variable genes
    allow (small panels have fewer than Scrublet's default 30). Cells with fewer than 3 detected genes
    (which Scrublet drops) get a NaN score and are not called doublets.
    """
    import scanpy as sc

    n_obs = X.shape[0]
    detected = np.asarray((X > 0).sum(axis=1)).ravel()
    usable = detected >= 3
    groups = {"all": usable} if batches is None else {str(b): usable & (batches == b) for b in pd.unique(batches)}
    # exact neighbours: reproducible, and clear of the sparse-array mismatch between pynndescent >= 0.7 and
    # scanpy 1.11's Scrublet (its approximate path fails on `csr_array.getnnz`)
    options = {"use_approx_neighbors": False, **kwargs}
    n_pcs_wanted = int(options.pop("n_prin_comps", 30))
    scores = np.full(n_obs, np.nan)
    called = np.zeros(n_obs, dtype=bool)
    thresholds: dict[str, float] = {}
    for name, in_batch in groups.items():
        cells = np.flatnonzero(in_batch)
        counts = sparse.csr_matrix(X[cells], dtype=np.float32)
        n_pcs = min(n_pcs_wanted, _n_scrublet_hvgs(counts) - 1, cells.size - 1)
        if n_pcs < 2:
            logger.warning(
                "annotate_qc: batch %r has too few cells or variable genes for Scrublet; no doublets called there", name
            )
            thresholds[name] = float("nan")
            continue
        tmp = AnnData(X=counts)
        tmp.obs_names = pd.Index([f"c{i}" for i in range(cells.size)])
        tmp.var_names = pd.Index([f"g{j}" for j in range(counts.shape[1])])
        with warnings.catch_warnings(), quiet_scanpy():
            # cells without counts in Scrublet's highly variable genes are harmless (they score as singlets)
            warnings.filterwarnings("ignore", message="Some cells have zero counts", category=UserWarning)
            # scanpy zeroes the kNN graph's diagonal in place, which scipy reports when identical cells exist
            warnings.filterwarnings("ignore", category=sparse.SparseEfficiencyWarning)
            # the threshold is applied below; scanpy only gets a placeholder, below every score so that its
            # summary statistics stay finite
            sc.pp.scrublet(
                tmp,
                random_state=random_state,
                threshold=-1.0,
                n_prin_comps=n_pcs,
                verbose=False,
                **options,
            )
        batch_scores = tmp.obs["doublet_score"].to_numpy(dtype=np.float64)
        scores[cells] = batch_scores
        if threshold is None:
            try:
                from skimage.filters import threshold_minimum

                # the automatic threshold of Scrublet: the valley of the simulated doublets' score histogram
                thr = float(threshold_minimum(tmp.uns["scrublet"]["doublet_scores_sim"]))
            except RuntimeError as err:
                logger.warning(
                    "annotate_qc: no doublet threshold for batch %r (%s); no doublets called there", name, err
                )
                thr = np.inf
        else:
            thr = float(threshold)
        thresholds[name] = float(thr)
        called[cells] = np.nan_to_num(batch_scores, nan=-np.inf) > thr
    return scores, called, thresholds


def annotate_qc(
    adata: AnnData,
    *,
    layer: str | None = None,
    n_mads: float = 3.0,
    doublets: bool = True,
    batch_key: str | None = None,
    random_state: int = 0,
    mt_pattern: str = MT_PATTERN,
    ribo_pattern: str = RIBO_PATTERN,
    hb_pattern: str = HB_PATTERN,
    scrublet_threshold: float | None = None,
    scrublet_kwargs: Mapping[str, Any] | None = None,
    copy: bool = False,
) -> AnnData | None:
    r"""Flag low-quality cells by the six QC criteria of CRADLE-VAE and GPO-VAE.

    Each cell is tested against six criteria, each recorded in its own column, and flagged as
    failing QC if it fails any:

    1. low total UMI counts: ``log1p(total counts) < median − n_mads · MAD``;
    2. an outlying number of detected genes: ``log1p(n genes)`` outside ``median ± n_mads · MAD``;
    3. a high mitochondrial percentage of counts: ``pct > median + n_mads · MAD``, on percentages (0–100);
    4. a high ribosomal percentage of counts, likewise;
    5. a high hemoglobin percentage of counts, likewise;
    6. doublets called by Scrublet (:func:`scanpy.pp.scrublet`).

    Totals and gene counts are compared on the ``log1p`` scale, as is usual (their distributions
    are skewed); percentages directly. MAD is the median absolute deviation scaled by 1.4826, so that
    it estimates the standard deviation of normal data (R's ``mad`` and scater's ``isOutlier``,
    where the "3 MADs" rule comes from). The GPO-VAE reference code uses the unscaled MAD, which
    with 3 MADs flags about 2 % of healthy cells per criterion and side; ``n_mads=2.02`` reproduces
    it. A criterion whose MAD is 0 (e.g. most cells have no hemoglobin counts) flags no cell rather
    than every cell off the median, and a criterion whose gene set is empty (no ``MT-`` gene in the
    panel) is skipped with a log message; its column is all ``False``. Thresholds are global (one
    set for the whole screen), as in the reference code.

    The doublet threshold is the one scanpy's Scrublet sets automatically: the valley of the
    bimodal histogram of the simulated doublets' scores (:func:`skimage.filters.threshold_minimum`,
    as Scrublet does),
    per batch when ``batch_key`` is given. Scrublet runs on separate AnnDatas built from the counts,
    one per batch as ``scanpy.pp.scrublet(batch_key=...)`` does, with its number of principal
    components capped by the batch's highly variable genes (small panels have fewer than 30) and
    with exact nearest neighbours unless ``scrublet_kwargs`` says otherwise (reproducible; the
    approximate search is quicker on very large screens); ``adata`` gets no scanpy keys.
    :func:`pertgrn.pp.annotate_perturbations` is not required.

    Parameters
    ----------
    adata
        Annotated data matrix of a screen, cells × genes, with raw integer UMI counts.
    layer
        Layer holding the raw counts; ``None`` uses ``adata.X``.
    n_mads
        Number of (normal-scaled) median absolute deviations beyond the median that makes a cell
        an outlier.
    doublets
        Whether to run Scrublet (criterion 6). ``False`` leaves the doublet column all ``False``.
    batch_key
        Column of ``adata.obs`` whose groups Scrublet treats separately (passed to
        :func:`scanpy.pp.scrublet`); the MAD thresholds stay global.
    random_state
        Seed of Scrublet's doublet simulation and PCA.
    mt_pattern
        Regular expression for mitochondrial genes, matched case-insensitively against
        ``var_names`` (so mouse ``mt-`` genes match the default ``^MT-``).
    ribo_pattern
        Regular expression for ribosomal protein genes; the default ``^RP[SL](?!\d+K)`` takes
        ``RPS…``/``RPL…`` but not the ``RPS6KA…`` kinases.
    hb_pattern
        Regular expression for hemoglobin genes; the default ``^HB[ABDEGMQZ](?:\d|-|$)`` takes the
        hemoglobin chains (``HBA1``, ``HBB``, ``HBG2``, ``HBZ``, mouse ``Hbb-bs``, …) but not
        ``HBEGF``, ``HBP1``, ``HBS1L`` or pseudogenes such as ``HBBP1`` (scanpy's tutorial pattern
        ``^HB[^(P)]`` excludes ``HBP1`` but keeps ``HBEGF``).
    scrublet_threshold
        Doublet-score threshold; ``None`` sets it automatically as described above.
    scrublet_kwargs
        Further keyword arguments for :func:`scanpy.pp.scrublet` (e.g. ``expected_doublet_rate``,
        ``n_prin_comps``, ``use_approx_neighbors``).
    copy
        Return an annotated copy instead of annotating ``adata`` in place.

    Returns
    -------
    The annotated copy if ``copy=True``, else ``None``; the annotated object gets

    ``obs["pertgrn_qc_<criterion>"]``
        ``(n_obs,)`` bool, one column per criterion: ``pertgrn_qc_low_counts``,
        ``pertgrn_qc_genes_outlier``, ``pertgrn_qc_high_mt``, ``pertgrn_qc_high_ribo``,
        ``pertgrn_qc_high_hb``, ``pertgrn_qc_doublet``.
    ``obs["pertgrn_qc_fail"]``
        ``(n_obs,)`` bool, the cell fails at least one criterion.
    ``obs["pertgrn_total_counts"]``, ``obs["pertgrn_n_genes"]``
        ``(n_obs,)`` total UMI counts and number of detected genes.
    ``obs["pertgrn_pct_mt"]``, ``obs["pertgrn_pct_ribo"]``, ``obs["pertgrn_pct_hb"]``
        ``(n_obs,)`` percentage of counts from each gene set (0 when the set is empty).
    ``obs["pertgrn_doublet_score"]``
        ``(n_obs,)`` Scrublet's doublet score (NaN when ``doublets=False`` or for cells with fewer
        than 3 detected genes, which Scrublet cannot score).
    ``uns["pertgrn"]["qc"]``
        ``params`` and, under ``criteria``, per criterion: ``metric`` (its obs column), ``scale``,
        ``n_genes`` (size of the gene set, where there is one), ``median``, ``mad`` (scaled),
        ``lower``, ``upper`` (±inf on an unused side, NaN when skipped), ``n_flagged``, ``skipped``;
        for doublets ``threshold``, the Scrublet threshold per batch (``"all"`` without
        ``batch_key``); plus ``n_fail``, the number of cells failing any criterion. Other entries of
        ``uns["pertgrn"]`` are kept.

    Raises
    ------
    KeyError
        If ``layer`` or ``batch_key`` is absent.
    TypeError
        If an argument has the wrong type.
    ValueError
        If the counts are not raw integers, or an argument is out of range. ``adata`` is left untouched.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(seed=0)
    >>> pg.pp.annotate_qc(adata)
    >>> int(adata.obs["pertgrn_qc_fail"].sum()) == adata.uns["pertgrn"]["qc"]["n_fail"]
    True
    """
    # ---- validate everything before writing
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, got {type(adata).__name__}.")
    if _check_real(n_mads, "n_mads") <= 0:
        raise ValueError(f"`n_mads` must be positive, got {n_mads!r}.")
    if not isinstance(doublets, bool | np.bool_):
        raise TypeError(f"`doublets` must be a bool, got {doublets!r}.")
    if isinstance(random_state, bool) or not isinstance(random_state, int | np.integer):
        raise TypeError(f"`random_state` must be an int, got {random_state!r}.")
    if not isinstance(copy, bool | np.bool_):
        raise TypeError(f"`copy` must be a bool, got {copy!r}.")
    patterns = {
        "mt": _compile(mt_pattern, "mt_pattern"),
        "ribo": _compile(ribo_pattern, "ribo_pattern"),
        "hb": _compile(hb_pattern, "hb_pattern"),
    }
    if scrublet_threshold is not None:
        _check_real(scrublet_threshold, "scrublet_threshold")
    if scrublet_kwargs is None:
        scrublet_kwargs = {}
    if not isinstance(scrublet_kwargs, Mapping):
        raise TypeError(f"`scrublet_kwargs` must be a mapping or None, got {type(scrublet_kwargs).__name__}.")
    reserved = sorted(_SCRUBLET_RESERVED & set(scrublet_kwargs))
    if reserved:
        raise ValueError(
            f"`scrublet_kwargs` may not set {reserved}: annotate_qc sets them (use `batch_key=`, `random_state=`, "
            "`scrublet_threshold=`)."
        )
    if doublets:
        import scanpy as sc

        accepted = set(inspect.signature(sc.pp.scrublet).parameters) - _SCRUBLET_RESERVED
        unknown = sorted(set(scrublet_kwargs) - accepted)
        if unknown:
            raise TypeError(
                f"`scrublet_kwargs` has unknown arguments {unknown}; scanpy.pp.scrublet takes {sorted(accepted)}."
            )
    batches = None
    if batch_key is not None:
        if not isinstance(batch_key, str):
            raise TypeError(f"`batch_key` must be a column name (str) or None, got {batch_key!r}.")
        if batch_key not in adata.obs.columns:
            raise KeyError(
                f"Column {batch_key!r} not found in adata.obs; available columns: {list(adata.obs.columns)}."
            )
        if adata.obs[batch_key].isna().any():
            raise ValueError(f"adata.obs[{batch_key!r}] has missing values; every cell needs a batch.")
        batches = adata.obs[batch_key].to_numpy()
    if UNS_KEY in adata.uns and not isinstance(adata.uns[UNS_KEY], Mapping):
        raise TypeError(
            f"adata.uns[{UNS_KEY!r}] must be a dict, found {type(adata.uns[UNS_KEY]).__name__}; "
            "pertgrn stores its records there."
        )
    X = check_counts(adata, layer)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"adata must have cells and genes, got shape {adata.shape}.")

    # ---- compute (nothing written yet)
    total = library_size(X)
    n_genes = np.asarray((X > 0).sum(axis=1), dtype=np.float64).ravel()
    names = adata.var_names.astype(str)
    pct: dict[str, np.ndarray] = {}
    gene_sets: dict[str, int] = {}
    for key, pattern in patterns.items():
        mask = np.fromiter((bool(pattern.search(g)) for g in names), dtype=bool, count=len(names))
        gene_sets[key] = int(mask.sum())
        if mask.any():
            in_set = library_size(X[:, np.flatnonzero(mask)])
            pct[key] = np.divide(100.0 * in_set, total, out=np.zeros_like(total), where=total > 0)
        else:
            pct[key] = np.zeros_like(total)

    criteria: dict[str, dict[str, Any]] = {}
    flags: dict[str, np.ndarray] = {}
    for name, values, scale, lower, upper in (
        ("low_counts", np.log1p(total), "log1p", True, False),
        ("genes_outlier", np.log1p(n_genes), "log1p", True, True),
    ):
        call = _mad_bounds(values, n_mads, lower=lower, upper=upper)
        flags[name] = call.pop("flags")
        criteria[name] = {"metric": QC_METRIC_KEYS["n_genes" if name == "genes_outlier" else "total_counts"]}
        criteria[name].update(scale=scale, skipped=False, **call)
        if call["mad"] == 0.0:
            logger.info("annotate_qc: %s has zero MAD; no cell flagged by it", name)
    for key in ("mt", "ribo", "hb"):
        name = f"high_{key}"
        info: dict[str, Any] = {"metric": QC_METRIC_KEYS[f"pct_{key}"], "scale": "percent", "n_genes": gene_sets[key]}
        if gene_sets[key] == 0:
            logger.info("annotate_qc: no gene matches %r; criterion %s skipped", patterns[key].pattern, name)
            flags[name] = np.zeros(adata.n_obs, dtype=bool)
            info.update(skipped=True, median=np.nan, mad=np.nan, lower=np.nan, upper=np.nan)
        else:
            call = _mad_bounds(pct[key], n_mads, lower=False, upper=True)
            flags[name] = call.pop("flags")
            info.update(skipped=False, **call)
            if call["mad"] == 0.0:
                logger.info("annotate_qc: %s has zero MAD; no cell flagged by it", name)
        criteria[name] = info

    doublet_score = np.full(adata.n_obs, np.nan)
    if doublets:
        doublet_score, flags["doublet"], thresholds = _run_scrublet(
            X, batches=batches, random_state=int(random_state), threshold=scrublet_threshold, kwargs=scrublet_kwargs
        )
        criteria["doublet"] = {
            "metric": QC_METRIC_KEYS["doublet_score"],
            "scale": "scrublet score",
            "skipped": False,
            "threshold": thresholds,
        }
    else:
        logger.info("annotate_qc: doublets=False; doublet criterion skipped")
        flags["doublet"] = np.zeros(adata.n_obs, dtype=bool)
        criteria["doublet"] = {"metric": QC_METRIC_KEYS["doublet_score"], "scale": "scrublet score", "skipped": True}
    for name in criteria:
        criteria[name]["n_flagged"] = int(flags[name].sum())
    fail = np.logical_or.reduce([flags[name] for name in QC_FLAG_KEYS])

    params: dict[str, Any] = {"n_mads": float(n_mads), "doublets": bool(doublets), "random_state": int(random_state)}
    params.update(mt_pattern=mt_pattern, ribo_pattern=ribo_pattern, hb_pattern=hb_pattern)
    params.update({k: v for k, v in (("layer", layer), ("batch_key", batch_key)) if v is not None})
    if scrublet_threshold is not None:
        params["scrublet_threshold"] = float(scrublet_threshold)

    # ---- write
    if copy:
        adata = adata.copy()
    elif adata.is_view:
        adata._init_as_actual(adata.copy())
    obs = adata.obs
    obs[QC_METRIC_KEYS["total_counts"]] = total
    obs[QC_METRIC_KEYS["n_genes"]] = n_genes.astype(np.int64)
    for key in ("mt", "ribo", "hb"):
        obs[QC_METRIC_KEYS[f"pct_{key}"]] = pct[key]
    obs[QC_METRIC_KEYS["doublet_score"]] = doublet_score
    for name, column in QC_FLAG_KEYS.items():
        obs[column] = flags[name]
    obs[QC_FAIL_KEY] = fail
    record = dict(adata.uns.get(UNS_KEY, {}))
    record["qc"] = {"params": params, "criteria": criteria, "n_fail": int(fail.sum())}
    adata.uns[UNS_KEY] = record
    logger.info(
        "annotate_qc: %d of %d cells fail QC (%s)",
        int(fail.sum()),
        adata.n_obs,
        ", ".join(f"{name} {criteria[name]['n_flagged']}" for name in QC_FLAG_KEYS),
    )
    return adata if copy else None

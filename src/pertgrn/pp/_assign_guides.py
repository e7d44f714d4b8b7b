"""Assign each cell its guide RNA(s) and perturbation label from guide UMI counts."""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from scipy.special import gammaln

from pertgrn._constants import KNOWN_CONTROL_LABELS, UNS_KEY
from pertgrn._settings import progress
from pertgrn._utils import SUMMARY, did_you_mean, is_integer_counts, logger, preview

if TYPE_CHECKING:
    from mudata import MuData

METHODS = ("threshold", "mixture", "max")
#: Modality names searched, in this order, for the guide counts of a MuData.
GUIDE_MODALITIES = ("gdo", "crispr", "guide", "guides", "grna", "sgrna")
#: Modality names searched, in this order, for the expression of a MuData.
EXPRESSION_MODALITIES = ("rna", "gex", "expression")

#: Fewest cells with a non-zero count a guide needs for its mixture to be fitted (pertpy skips guides below 2).
_MIN_CELLS_MIXTURE = 2
_EM_MAX_ITER = 500
_EM_TOL = 1e-8
#: Smallest standard deviation (log2 UMI) of the positive component: keeps the fit away from a point mass.
_MIN_SD = 0.1
#: Prior fraction of positive cells among those with a non-zero count (pertpy's ``fraction_positive_expected``).
_PRIOR_POSITIVE = 0.15


@dataclass
class _GuideCounts:
    """Cells × guides counts with names and targets, and where they came from."""

    X: sparse.csr_matrix
    obs_names: pd.Index
    guides: list[str]
    targets: list[str]
    source: str


def _check_int(value: Any, name: str, *, low: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int{' or None' if allow_none else ''}, got {value!r}.")
    if value < low:
        raise ValueError(f"`{name}` must be at least {low}, got {value!r}.")
    return int(value)


def _is_mudata(obj: object) -> bool:
    return hasattr(obj, "mod") and hasattr(obj, "obs") and not isinstance(obj, AnnData)


def _pick_modality(mdata: MuData, wanted: str | None, candidates: Sequence[str], what: str) -> str:
    names = list(mdata.mod)
    if wanted is not None:
        if wanted not in mdata.mod:
            raise KeyError(
                f"Modality {wanted!r} not found in the MuData.{did_you_mean([wanted], names)} Modalities: {names}."
            )
        return wanted
    for name in candidates:
        if name in mdata.mod:
            return name
    raise KeyError(f"No {what} modality among {names}; looked for {list(candidates)}. Name it explicitly.")


def _guide_names_for(adata: AnnData, key: str, matrix: Any, guide_names: Sequence[str] | str | None) -> list[str]:
    """Names of the columns of ``obsm[key]``: a DataFrame's columns, ``guide_names`` or a ``uns`` entry beside it."""
    if isinstance(matrix, pd.DataFrame):
        if guide_names is not None:
            raise ValueError(f"adata.obsm[{key!r}] is a DataFrame with column names; do not pass `guide_names`.")
        return [str(c) for c in matrix.columns]
    if isinstance(guide_names, str):
        if guide_names not in adata.uns:
            raise KeyError(
                f"`guide_names={guide_names!r}` is not in adata.uns.{did_you_mean([guide_names], adata.uns)} "
                f"Keys in adata.uns: {preview(adata.uns)}."
            )
        return [str(g) for g in np.asarray(adata.uns[guide_names]).ravel()]
    if guide_names is not None:
        return [str(g) for g in guide_names]
    stem = key.removesuffix("_counts")
    for candidate in (f"{stem}_names", f"{key}_names"):
        if candidate in adata.uns:
            return [str(g) for g in np.asarray(adata.uns[candidate]).ravel()]
    raise ValueError(
        f"adata.obsm[{key!r}] has no guide names: pass `guide_names=` (a list, or the adata.uns key holding "
        f"them), store it as a DataFrame, or put the names in adata.uns[{stem + '_names'!r}]."
    )


def _resolve_targets(
    guides: list[str],
    var: pd.DataFrame | None,
    targets: str | Mapping[str, str] | Sequence[str] | None,
    target_pattern: str | None,
) -> list[str]:
    """Target of every guide from a ``var`` column, a mapping, a list or a pattern on the guide names."""
    if target_pattern is not None:
        if not isinstance(target_pattern, str):
            raise TypeError(f"`target_pattern` must be a regular expression string, got {target_pattern!r}.")
        try:
            pattern = re.compile(target_pattern)
        except re.error as err:
            raise ValueError(f"`target_pattern`={target_pattern!r} is not a valid regular expression: {err}.") from err
        if pattern.groups != 1:
            raise ValueError(f"`target_pattern` must have exactly one group (the target), found {pattern.groups}.")
        out = []
        unmatched = []
        for g in guides:
            m = pattern.fullmatch(g)
            if m is None or not m.group(1):
                unmatched.append(g)
            else:
                out.append(m.group(1))
        if unmatched:
            raise ValueError(
                f"`target_pattern`={target_pattern!r} does not match the guide names {preview(unmatched, n=10)}."
            )
        return out
    if isinstance(targets, str):
        if var is None or targets not in var.columns:
            where = "the guide counts have no var table" if var is None else f"available: {list(var.columns)}"
            raise KeyError(
                f"No guide targets: column {targets!r} not found ({where}). Pass `targets=` (a var column, a "
                "mapping guide → target or a list), or `target_pattern=` (a regular expression whose group is the "
                "target in each guide name, e.g. r'^(.+)g\\d+$' for 'STAT1g2')."
            )
        column = var[targets]
        if column.isna().any():
            missing = [g for g, t in zip(guides, column.isna().to_numpy(), strict=True) if t]
            raise ValueError(f"Guides {preview(missing, n=10)} have no target in var[{targets!r}].")
        return [str(t) for t in column.to_numpy()]
    if isinstance(targets, Mapping):
        missing = [g for g in guides if g not in targets]
        if missing:
            raise KeyError(f"`targets` gives no target for the guides {preview(missing, n=10)}.")
        return [str(targets[g]) for g in guides]
    if targets is None:
        raise ValueError("Pass `targets=` or `target_pattern=`: every guide needs a target.")
    targets = [str(t) for t in targets]
    if len(targets) != len(guides):
        raise ValueError(f"`targets` has {len(targets)} entries for {len(guides)} guides.")
    return targets


def _read_guide_counts(
    adata: AnnData,
    guide_counts: str | AnnData | None,
    *,
    guide_names: Sequence[str] | str | None,
    targets: str | Mapping[str, str] | Sequence[str] | None,
    target_pattern: str | None,
    layer: str | None,
    source: str,
) -> _GuideCounts:
    if guide_counts is None or isinstance(guide_counts, AnnData):
        holder = adata if guide_counts is None else guide_counts
        if layer is None:
            X = holder.X
        elif layer in holder.layers:
            X = holder.layers[layer]
        else:
            raise KeyError(f"Layer {layer!r} not found in the guide counts; available layers: {list(holder.layers)}.")
        if X is None:
            raise ValueError("The guide counts AnnData has an empty X; pass `layer=` naming the layer of counts.")
        guides = [str(g) for g in holder.var_names]
        found = _resolve_targets(guides, holder.var, targets, target_pattern)
        where = source + (f".layers[{layer!r}]" if layer is not None else ".X")
        return _GuideCounts(
            sparse.csr_matrix(X, copy=True), pd.Index(holder.obs_names.astype(str)), guides, found, where
        )
    if not isinstance(guide_counts, str):
        raise TypeError(
            f"`guide_counts` must be None, an obsm key (str), a modality name or an AnnData, "
            f"found {type(guide_counts).__name__}."
        )
    if guide_counts not in adata.obsm:
        raise KeyError(
            f"adata.obsm[{guide_counts!r}] not found.{did_you_mean([guide_counts], adata.obsm.keys())} "
            f"Keys in adata.obsm: {list(adata.obsm.keys())}."
        )
    matrix = adata.obsm[guide_counts]
    guides = _guide_names_for(adata, guide_counts, matrix, guide_names)
    values = matrix.to_numpy() if isinstance(matrix, pd.DataFrame) else matrix
    X = sparse.csr_matrix(values)
    if X.shape[1] != len(guides):
        raise ValueError(f"adata.obsm[{guide_counts!r}] has {X.shape[1]} columns for {len(guides)} guide names.")
    found = _resolve_targets(guides, None, targets, target_pattern)
    return _GuideCounts(X, pd.Index(adata.obs_names.astype(str)), guides, found, f"{source}.obsm[{guide_counts!r}]")


def _fit_mixture(x: np.ndarray) -> dict[str, float]:
    """EM fit of pertpy's Poisson–Gaussian mixture to the log2 counts ``x`` of the cells with a count.

    The background (negative) component is Poisson with rate ``λ`` on the log2 counts, the foreground
    (positive) component Gaussian, as in Replogle et al. 2022 and pertpy's ``PoissonGaussMixture``
    (which samples the same model by MCMC; this is its maximum-likelihood fit).
    """
    hi = float(np.quantile(x, 0.9))
    rate = max(float(x[x <= np.median(x)].mean()), 1e-3)
    mean, sd, weight = max(hi, rate + 1.0), max(float(x.std()), 1.0), _PRIOR_POSITIVE
    previous = -np.inf
    for _ in range(_EM_MAX_ITER):
        log_neg = np.log1p(-weight) + x * np.log(rate) - rate - gammaln(x + 1.0)
        log_pos = np.log(weight) - 0.5 * ((x - mean) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2.0 * np.pi)
        top = np.maximum(log_neg, log_pos)
        total = top + np.log(np.exp(log_neg - top) + np.exp(log_pos - top))
        loglik = float(total.sum())
        resp = np.exp(log_pos - total)
        n_pos = float(resp.sum())
        if n_pos < 1e-6 or n_pos > x.size - 1e-6:
            break
        rate = max(float(((1.0 - resp) * x).sum() / (x.size - n_pos)), 1e-3)
        mean = float((resp * x).sum() / n_pos)
        sd = max(float(np.sqrt((resp * (x - mean) ** 2).sum() / n_pos)), _MIN_SD)
        weight = min(max(n_pos / x.size, 1e-6), 1.0 - 1e-6)
        if abs(loglik - previous) <= _EM_TOL * max(1.0, abs(loglik)):
            break
        previous = loglik
    return {"poisson_rate": rate, "gaussian_mean": mean, "gaussian_sd": sd, "weight_positive": weight}


def _positive_by_mixture(params: Mapping[str, float], x: np.ndarray) -> np.ndarray:
    """Cells whose log2 count is more likely under the positive component (none if it sits below the background)."""
    if params["gaussian_mean"] <= params["poisson_rate"]:
        return np.zeros(x.shape, dtype=bool)
    rate, mean, sd, weight = (params[k] for k in ("poisson_rate", "gaussian_mean", "gaussian_sd", "weight_positive"))
    log_neg = np.log1p(-weight) + x * np.log(rate) - rate - gammaln(x + 1.0)
    log_pos = np.log(weight) - 0.5 * ((x - mean) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2.0 * np.pi)
    return log_pos > log_neg


def _assigned_matrix(
    X: sparse.csr_matrix, guides: list[str], method: str, min_umi: int
) -> tuple[sparse.csr_matrix, pd.DataFrame]:
    """Boolean cells × guides matrix of assignments, and a per-guide table of what was fitted and called."""
    n_cells, n_guides = X.shape
    fits = pd.DataFrame(index=pd.Index(guides, name="guide"))
    if method == "threshold":
        A = sparse.csr_matrix(X >= min_umi)
    elif method == "max":
        best = np.asarray(X.argmax(axis=1)).ravel()  # ties: the first guide in column order
        top = X.max(axis=1).toarray().ravel()
        cells = np.flatnonzero(top >= min_umi)
        A = sparse.csr_matrix(
            (np.ones(cells.size, dtype=bool), (cells, best[cells])), shape=(n_cells, n_guides), dtype=bool
        )
    else:  # mixture
        C = sparse.csc_matrix(X)
        rows, cols = [], []
        columns: dict[str, list[float]] = {
            k: [] for k in ("poisson_rate", "gaussian_mean", "gaussian_sd", "weight_positive", "n_cells_fitted")
        }
        for j in progress(range(n_guides), total=n_guides, desc="assign_guides", unit="guide"):
            start, stop = C.indptr[j], C.indptr[j + 1]
            cells, counts = C.indices[start:stop], np.asarray(C.data[start:stop], dtype=np.float64)
            keep = counts > 0
            cells, counts = cells[keep], counts[keep]
            if cells.size < _MIN_CELLS_MIXTURE:
                for k in columns:
                    columns[k].append(np.nan if k != "n_cells_fitted" else float(cells.size))
                continue
            x = np.log2(counts)
            params = _fit_mixture(x)
            positive = _positive_by_mixture(params, x) & (counts >= min_umi)
            rows.append(cells[positive])
            cols.append(np.full(int(positive.sum()), j))
            for k, v in params.items():
                columns[k].append(v)
            columns["n_cells_fitted"].append(float(cells.size))
        for k, v in columns.items():
            fits[k] = np.asarray(v, dtype=np.float64)
        fits["n_cells_fitted"] = fits["n_cells_fitted"].astype(np.int64)
        skipped = fits.index[fits["poisson_rate"].isna()].tolist()
        if skipped:
            logger.info(
                "assign_guides: %d guides with fewer than %d cells with a count were not fitted (no cell assigned): %s",
                len(skipped),
                _MIN_CELLS_MIXTURE,
                preview(skipped, n=10),
            )
        r = np.concatenate(rows) if rows else np.array([], dtype=int)
        c = np.concatenate(cols) if cols else np.array([], dtype=int)
        A = sparse.csr_matrix((np.ones(r.size, dtype=bool), (r, c)), shape=(n_cells, n_guides), dtype=bool)
    A.eliminate_zeros()
    A.sort_indices()
    fits["n_cells_assigned"] = np.asarray(A.sum(axis=0)).ravel().astype(np.int64)
    return A, fits


def _labels(
    A: sparse.csr_matrix,
    guides: list[str],
    targets: list[str],
    *,
    is_control: np.ndarray,
    control: str,
    delimiter: str,
    max_guides: int | None,
    unassigned: str,
    multiple: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Perturbation label, guides and number of guides of every cell."""
    n_guides = np.diff(A.indptr).astype(np.int64)
    label = np.empty(A.shape[0], dtype=object)
    guide_text = np.empty(A.shape[0], dtype=object)
    names = np.asarray(guides, dtype=object)
    cache: dict[tuple[int, ...], tuple[str, str]] = {}
    for i in range(A.shape[0]):
        cols = tuple(A.indices[A.indptr[i] : A.indptr[i + 1]].tolist())
        if cols not in cache:
            hit = sorted({targets[j] for j in cols if not is_control[j]})
            if not cols:
                text = unassigned
            elif max_guides is not None and len(cols) > max_guides:
                text = multiple
            elif not hit:
                text = control
            else:
                text = delimiter.join(hit)
            cache[cols] = (text, delimiter.join(names[list(cols)]))
        label[i], guide_text[i] = cache[cols]
    return label, guide_text, n_guides


def assign_guides(
    adata: AnnData | MuData,
    *,
    guide_counts: str | AnnData | None = None,
    method: str = "threshold",
    min_umi: int = 5,
    targets: str | Mapping[str, str] | Sequence[str] | None = "target",
    target_pattern: str | None = None,
    guide_names: Sequence[str] | str | None = None,
    control: str = "non-targeting",
    max_guides: int | None = 5,
    delimiter: str = "+",
    unassigned: str = "unassigned",
    multiple: str = "multiple",
    layer: str | None = None,
    expression: str | None = None,
    key_added: str = "perturbation",
    copy: bool = False,
) -> AnnData | MuData | None:
    r"""Assign each cell its guide RNA(s) and the perturbation they make, from guide UMI counts.

    The guide counts (cells × guides) are read from, depending on what is given:

    - an AnnData of guide counts itself (``adata``, ``guide_counts=None``), guide targets in ``var["target"]``;
    - a matrix in ``adata.obsm[guide_counts]`` beside the expression (e.g. Papalexi's ``"grna_counts"``),
      guide names from its DataFrame columns, ``guide_names=`` or ``adata.uns["<stem>_names"]``
      (``"grna_names"`` for ``"grna_counts"``);
    - a separate AnnData of guide counts (``guide_counts=gdo``), matched to ``adata`` by ``obs_names``;
    - a :class:`~mudata.MuData` (``adata``): the guide modality ``guide_counts`` (by default the first of
      ``"gdo"``, ``"crispr"``, ``"guide"``, ``"guides"``, ``"grna"``, ``"sgrna"``).

    Each guide's target comes from ``targets`` (a ``var`` column of the guide counts, a mapping guide →
    target or a list) or from ``target_pattern``, a regular expression whose one group is the target in
    the guide's name (``r"^(.+)g\d+$"`` turns ``"STAT1g2"`` into ``"STAT1"``). Guides whose target is
    ``control`` or one of the usual control labels (``non-targeting``, ``NT``, ``ctrl``, …,
    case-insensitive) are non-targeting.

    The methods and their names follow pertpy's ``GuideAssignment``:

    - ``"threshold"`` (``assign_by_threshold``): every guide with at least ``min_umi`` UMIs is assigned,
      so a cell can carry several (high-MOI screens);
    - ``"max"`` (``assign_to_max_guide``): the guide with the most UMIs, if it has at least ``min_umi``
      (ties go to the first guide in column order); one guide per cell (low-MOI screens);
    - ``"mixture"`` (``assign_mixture_model``): per guide, a two-component mixture on the log2 UMI counts of
      the cells where the guide is seen — a Poisson background and a Gaussian foreground (Replogle et al.
      2022) — and a cell is assigned the guide when the foreground is the likelier component (and it has
      at least ``min_umi`` UMIs; ``min_umi=1`` is pertpy's rule). pertpy samples the model by MCMC with
      numpyro; pertgrn fits it by expectation–maximisation (deterministic, no JAX). A guide seen in fewer
      than 2 cells, or whose fitted foreground lies below its background, assigns no cell.

    Labels: a cell with assigned guides gets the sorted, ``delimiter``-joined set of their targets
    (``"IRF1+STAT1"``; two guides of one gene give ``"STAT1"``); non-targeting guides count only when
    nothing else is assigned, giving ``control``; a cell with no guide gets ``unassigned``, one with more
    than ``max_guides`` guides ``multiple`` (pertpy's ``max_assignments_per_cell``). Remove the
    ``unassigned`` and ``multiple`` cells before :func:`pertgrn.pp.annotate_perturbations`, which would
    read them as targets, e.g. ``adata = adata[adata.obs["perturbation_n_guides"].between(1, 5)].copy()``.

    Parameters
    ----------
    adata
        AnnData of the screen (expression, with guide counts in ``obsm``), AnnData of guide counts, or a
        MuData with a guide modality.
    guide_counts
        Where the guide counts are: ``None`` (``adata`` holds them; for a MuData, the first guide modality
        found), an ``obsm`` key of ``adata``, a modality name of the MuData, or an AnnData of guide counts.
    method
        ``"threshold"``, ``"max"`` or ``"mixture"``, as above.
    min_umi
        Fewest UMIs of a guide for it to be assigned (every method).
    targets
        Targets of the guides: a ``var`` column of the guide counts (default ``"target"``), a mapping
        guide → target, or a list in guide order.
    target_pattern
        Regular expression with one group, matched against each whole guide name, whose group is the
        target; used instead of ``targets``.
    guide_names
        Names of the columns of an ``obsm`` matrix (a list, or the ``adata.uns`` key holding them).
    control
        Label of cells whose assigned guides are all non-targeting; guides whose target is this label are
        non-targeting (besides the usual control labels).
    max_guides
        Cells with more assigned guides are labelled ``multiple``; ``None`` sets no limit.
    delimiter
        String joining the targets of a cell with several (pertgrn's combination delimiter).
    unassigned
        Label of cells with no assigned guide.
    multiple
        Label of cells with more than ``max_guides`` guides.
    layer
        Layer of the guide-counts AnnData holding the counts; ``None`` uses its ``X``.
    expression
        For a MuData: the expression modality that also receives the labels; ``None`` takes the first of
        ``"rna"``, ``"gex"``, ``"expression"`` present (none: only the guide modality and ``mdata.obs``).
    key_added
        Name of the ``obs`` column of labels; the other columns are derived from it.
    copy
        Return an annotated copy instead of annotating ``adata`` in place.

    Returns
    -------
    The annotated copy if ``copy=True``, else ``None``. Written into ``adata.obs`` (for a MuData: into
    ``mdata.obs``, the guide modality's and the expression modality's ``obs``, matched by ``obs_names``;
    cells without guide counts are ``unassigned``):

    ``obs[key_added]``
        ``(n_obs,)`` categorical label: target(s), ``control``, ``unassigned`` or ``multiple``.
    ``obs[key_added + "_guides"]``
        ``(n_obs,)`` categorical, the assigned guides joined by ``delimiter`` (``""`` for none).
    ``obs[key_added + "_n_guides"]``
        ``(n_obs,)`` int, the number of assigned guides.
    ``uns["pertgrn"]["assign_guides"]``
        ``params``; ``source`` (where the counts were read); ``n_cells``: counts of ``single`` (one target),
        ``combination`` (several targets), ``control``, ``unassigned`` and ``multiple`` cells; ``guides``:
        DataFrame indexed by guide with ``target``, ``non_targeting``, ``n_cells_assigned`` and, for
        ``"mixture"``, the fitted ``poisson_rate``, ``gaussian_mean``, ``gaussian_sd`` (log2 UMI),
        ``weight_positive`` and ``n_cells_fitted`` (NaN for guides not fitted). Other entries of
        ``uns["pertgrn"]`` are kept.

    Raises
    ------
    KeyError
        If the guide counts, a layer, a modality or the targets column are not found (with a suggestion
        for near misses).
    TypeError
        If an argument has the wrong type.
    ValueError
        If the counts are not non-negative integers, guide names are duplicated or a target contains the
        delimiter, labels collide, or an argument is out of range. ``adata`` is left untouched.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> from anndata import AnnData
    >>> import pertgrn as pg
    >>> counts = np.array([[9, 0, 1], [0, 7, 0], [6, 8, 0], [1, 0, 0]])
    >>> var = pd.DataFrame({"target": ["STAT1", "IRF1", "non-targeting"]}, index=["s1", "i1", "nt1"])
    >>> guides = AnnData(counts, var=var)
    >>> pg.pp.assign_guides(guides, method="threshold", min_umi=5)
    >>> guides.obs["perturbation"].tolist()
    ['STAT1', 'IRF1', 'IRF1+STAT1', 'unassigned']
    """
    # ---- validate everything before writing
    if method not in METHODS:
        raise ValueError(
            f"`method` must be one of {list(METHODS)}, got {method!r}.{did_you_mean([str(method)], METHODS)}"
        )
    min_umi = _check_int(min_umi, "min_umi", low=1)
    max_guides = _check_int(max_guides, "max_guides", low=1, allow_none=True)
    for name, value in (
        ("control", control),
        ("delimiter", delimiter),
        ("unassigned", unassigned),
        ("multiple", multiple),
        ("key_added", key_added),
    ):
        if not isinstance(value, str) or not value:
            raise TypeError(f"`{name}` must be a non-empty string, got {value!r}.")
    if len({control, unassigned, multiple}) < 3:
        raise ValueError(
            f"`control`, `unassigned` and `multiple` must differ, got {control!r}, {unassigned!r}, {multiple!r}."
        )
    if not isinstance(copy, bool | np.bool_):
        raise TypeError(f"`copy` must be a bool, got {copy!r}.")

    is_mudata = _is_mudata(adata)
    if not is_mudata and not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData or a MuData, got {type(adata).__name__}.")
    if is_mudata:
        if guide_counts is not None and not isinstance(guide_counts, str):
            raise TypeError(f"For a MuData, `guide_counts` must be a modality name or None, found {guide_counts!r}.")
        guide_mod = _pick_modality(adata, guide_counts, GUIDE_MODALITIES, "guide")
        expression_mod = None
        try:
            expression_mod = _pick_modality(
                adata, expression, [m for m in EXPRESSION_MODALITIES if m != guide_mod], "expression"
            )
        except KeyError:
            if expression is not None:
                raise
        counts = _read_guide_counts(
            adata.mod[guide_mod],
            None,
            guide_names=guide_names,
            targets=targets,
            target_pattern=target_pattern,
            layer=layer,
            source=f"mod[{guide_mod!r}]",
        )
    else:
        if expression is not None:
            raise ValueError("`expression` names a modality of a MuData; `adata` is an AnnData.")
        if layer is not None and isinstance(guide_counts, str):
            raise ValueError("`layer` applies to an AnnData of guide counts, not to an obsm matrix.")
        counts = _read_guide_counts(
            adata,
            guide_counts,
            guide_names=guide_names,
            targets=targets,
            target_pattern=target_pattern,
            layer=layer,
            source="guide_counts" if isinstance(guide_counts, AnnData) else "adata",
        )
    if len(set(counts.guides)) != len(counts.guides):
        twice = pd.Index(counts.guides)[pd.Index(counts.guides).duplicated()].unique().tolist()
        raise ValueError(f"Guide names must be unique; duplicated: {preview(twice, n=10)}.")
    if not counts.obs_names.is_unique:
        raise ValueError("The cells of the guide counts must have unique obs_names.")
    X = counts.X
    if X.shape[0] and X.nnz and (not is_integer_counts(X, n_check=X.nnz) or X.data.min() < 0):
        raise ValueError(f"Expected non-negative integer guide UMI counts in {counts.source}; found other values.")
    known_controls = {c.lower() for c in KNOWN_CONTROL_LABELS} | {control.lower()}
    is_control = np.array([t.lower() in known_controls for t in counts.targets], dtype=bool)
    bad = sorted({t for t, c in zip(counts.targets, is_control, strict=True) if not c and delimiter in t})
    if bad:
        raise ValueError(
            f"Targets {preview(bad, n=10)} contain the delimiter {delimiter!r}; pass another `delimiter=`."
        )
    clash = sorted({unassigned, multiple} & {t for t, c in zip(counts.targets, is_control, strict=True) if not c})
    if clash:
        raise ValueError(f"Labels {clash} are also target names; pass other `unassigned=` / `multiple=` labels.")

    # ---- compute (nothing written yet)
    X.sum_duplicates()
    A, fits = _assigned_matrix(X, counts.guides, method, int(min_umi))
    label, guide_text, n_guides = _labels(
        A,
        counts.guides,
        counts.targets,
        is_control=is_control,
        control=control,
        delimiter=delimiter,
        max_guides=max_guides,
        unassigned=unassigned,
        multiple=multiple,
    )
    fits.insert(0, "non_targeting", is_control)
    fits.insert(0, "target", counts.targets)
    per_cell = pd.DataFrame({"label": label, "guides": guide_text, "n_guides": n_guides}, index=counts.obs_names)
    special = {control, unassigned, multiple}
    labels = per_cell["label"]
    n_cells = {
        "single": int((~labels.isin(special) & ~labels.str.contains(delimiter, regex=False)).sum()),
        "combination": int((~labels.isin(special) & labels.str.contains(delimiter, regex=False)).sum()),
        "control": int((labels == control).sum()),
        "unassigned": int((labels == unassigned).sum()),
        "multiple": int((labels == multiple).sum()),
    }
    params: dict[str, Any] = {
        "method": method,
        "min_umi": int(min_umi),
        "max_guides": -1 if max_guides is None else int(max_guides),
        "control": control,
        "delimiter": delimiter,
        "unassigned": unassigned,
        "multiple": multiple,
        "key_added": key_added,
    }
    if target_pattern is not None:
        params["target_pattern"] = target_pattern
    record = {"params": params, "source": counts.source, "n_cells": n_cells, "guides": fits}

    # ---- write
    out = adata.copy() if copy else adata
    frames = [out]  # what gets the labels; the first and the expression modality also get the record
    with_record = [out]
    if is_mudata:
        frames.append(out.mod[guide_mod])
        if expression_mod is not None:
            frames.append(out.mod[expression_mod])
            with_record.append(out.mod[expression_mod])
    for i, frame in enumerate(frames):
        if isinstance(frame, AnnData) and frame.is_view:  # pragma: no cover - a modality view is unusual
            frame._init_as_actual(frame.copy())
        aligned = per_cell.reindex(pd.Index(frame.obs_names.astype(str)))
        missing = aligned["label"].isna().to_numpy()
        lab = aligned["label"].to_numpy(dtype=object)
        lab[missing] = unassigned
        gtext = aligned["guides"].to_numpy(dtype=object)
        gtext[missing] = ""
        ng = aligned["n_guides"].fillna(0).to_numpy().astype(np.int64)
        categories = sorted(set(lab) - special) + [c for c in (control, unassigned, multiple) if c in set(lab)]
        frame.obs[key_added] = pd.Categorical(lab, categories=categories)
        frame.obs[f"{key_added}_guides"] = pd.Categorical(gtext)
        frame.obs[f"{key_added}_n_guides"] = ng
        if any(frame is f for f in with_record):
            previous = frame.uns.get(UNS_KEY, {})
            entry = dict(previous) if isinstance(previous, Mapping) else {}
            entry["assign_guides"] = record
            frame.uns[UNS_KEY] = entry
        if i == 0 and int(missing.sum()):
            logger.info(
                "assign_guides: %s cells have no guide counts and are marked %r", f"{int(missing.sum()):,}", unassigned
            )
    n_total = len(per_cell)
    logger.log(
        SUMMARY,
        "assign_guides (%s, min_umi=%d): %s of %s cells assigned — %s one target, %s several, %s %s; "
        "%s %s (no guide)%s",
        method,
        int(min_umi),
        f"{n_total - n_cells['unassigned'] - n_cells['multiple']:,}",
        f"{n_total:,}",
        f"{n_cells['single']:,}",
        f"{n_cells['combination']:,}",
        f"{n_cells['control']:,}",
        control,
        f"{n_cells['unassigned']:,}",
        unassigned,
        f", {n_cells['multiple']:,} {multiple} (more than {max_guides} guides)" if n_cells["multiple"] else "",
    )
    return out if copy else None

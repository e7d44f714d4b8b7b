"""A reference GRN from unperturbed cells: CellOracle's bagging-ridge refinement of a TF → target prior."""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats
from threadpoolctl import threadpool_limits

from pertgrn._constants import CONDITION_KEY
from pertgrn._settings import progress
from pertgrn._utils import check_counts, check_int, get_design, library_size, log_normalize, logger, to_dense

#: Share of a target's candidate regulators each bag sees (CellOracle's ``max_features=0.8``).
MAX_FEATURES = 0.8
#: Fewer edges than this after the FDR filter: the mixture cut is skipped (logged).
MIN_EDGES_FOR_GMM = 10

#: Column names accepted for the regulator and the target of a prior table (compared case-insensitively).
PRIOR_SOURCE_COLUMNS = ("source", "tf", "regulator", "tf_symbol", "from")
PRIOR_TARGET_COLUMNS = ("target", "target_gene", "gene", "to")


# ---- inputs ------------------------------------------------------------------------------------


def read_tf_list(tfs: str | os.PathLike | Iterable[str]) -> list[str]:
    """TF symbols from a list or from a file with one symbol per line (blank lines and ``#`` comments skipped)."""
    if isinstance(tfs, str | os.PathLike):
        path = Path(tfs)
        if not path.is_file():
            raise ValueError(
                f"`tfs` is a string but no file exists at {str(tfs)!r}; pass a list of TF symbols or the path "
                "of a file with one symbol per line."
            )
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        names = [line for line in lines if line]
    elif isinstance(tfs, pd.Index | pd.Series | np.ndarray | list | tuple | set | frozenset):
        names = [str(t) for t in tfs]
    else:
        raise TypeError(f"`tfs` must be a list of TF symbols or a file path, found {type(tfs).__name__}.")
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("`tfs` holds no TF symbol.")
    return names


def read_prior(prior: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """A prior network as a ``source, target`` frame (strings, duplicates and self-loops dropped)."""
    if isinstance(prior, str | os.PathLike):
        path = Path(prior)
        if not path.is_file():
            raise ValueError(f"`prior` names no file: {str(prior)!r}.")
        sep = "\t" if path.suffix.lower() in {".tsv", ".txt", ".tab"} else ","
        prior = pd.read_csv(path, sep=sep)
    if not isinstance(prior, pd.DataFrame):
        raise TypeError(f"`prior` must be a pandas DataFrame, a file path or None, found {type(prior).__name__}.")
    lower = {str(c).lower(): c for c in prior.columns}
    source = next((lower[c] for c in PRIOR_SOURCE_COLUMNS if c in lower), None)
    target = next((lower[c] for c in PRIOR_TARGET_COLUMNS if c in lower), None)
    if source is None or target is None:
        raise ValueError(
            f"`prior` needs a regulator column (one of {list(PRIOR_SOURCE_COLUMNS)}) and a target column (one of "
            f"{list(PRIOR_TARGET_COLUMNS)}); found columns {list(prior.columns)}."
        )
    table = pd.DataFrame({"source": prior[source].astype(str), "target": prior[target].astype(str)})
    table = table[table["source"] != table["target"]].drop_duplicates()
    return table.reset_index(drop=True)


def held_out_mask(adata: AnnData, test_key: str | None) -> np.ndarray:
    """Boolean mask of held-out cells from ``obs[test_key]`` (all False when ``None``)."""
    if test_key is None:
        return np.zeros(adata.n_obs, dtype=bool)
    if not isinstance(test_key, str):
        raise TypeError(f"`test_key` must be an obs column name or None, found {type(test_key).__name__}.")
    if test_key not in adata.obs.columns:
        raise KeyError(f"test_key {test_key!r} not found in adata.obs; available: {list(adata.obs.columns)}.")
    mask = adata.obs[test_key].to_numpy()
    if mask.dtype != bool:
        raise TypeError(f"adata.obs[{test_key!r}] must be boolean (True = held-out cell), found dtype {mask.dtype}.")
    return mask


def _check_number(name: str, value: object, *, low: float, high: float, low_open: bool, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, found {type(value).__name__} ({value!r}).")
    value = float(value)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (np.isfinite(value) and above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must lie in {interval}, found {value}.")
    return value


# ---- bagging ridge -----------------------------------------------------------------------------


def bag_moments(X: np.ndarray, Y: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred cross-products of a bootstrap sample given by per-cell multiplicities ``counts``.

    Returns ``G = Xcᵀ D Xc`` (features × features) and ``C = Xcᵀ D Yc`` (features × targets), where
    ``D = diag(counts)`` and ``Xc``, ``Yc`` are centred on the sample's (weighted) means: exactly what
    a ridge regression with intercept fitted on the bootstrap rows needs. (``Xcᵀ D`` sums to zero
    over cells, so ``Y`` needs no centring.)
    """
    mean_x = counts @ X / counts.sum()
    weighted = (X - mean_x) * counts[:, None]
    return weighted.T @ (X - mean_x), weighted.T @ Y


def ridge_solve(
    G: np.ndarray, C: np.ndarray, features: np.ndarray, targets: np.ndarray, alpha: float, *, self_position=None
) -> np.ndarray:
    """Ridge coefficients (``features × targets``) of ``targets`` on ``features`` from :func:`bag_moments`.

    ``(G_FF + alpha I)⁻¹ C_F,T``: the minimiser of ``‖y − b − X_F w‖² + alpha ‖w‖²``, which is
    :class:`sklearn.linear_model.Ridge` (``fit_intercept=True``) on the bootstrap rows.

    ``self_position`` (one entry per target, ``-1`` for none) names a feature to leave out of that
    target's regression, a target's own expression: its coefficient is 0 and the others are those of
    the ridge without it, obtained from the full solution by the block-inverse identity
    ``w₋ₖ = w₋ₖ − A⁻¹₋ₖ,ₖ wₖ / A⁻¹ₖₖ`` (``A = G_FF + alpha I``), so all targets share one factorisation.
    """
    from scipy.linalg import cho_factor, cho_solve

    gram = G[np.ix_(features, features)]
    gram[np.diag_indices_from(gram)] += alpha
    factor = cho_factor(gram)
    coef = cho_solve(factor, C[np.ix_(features, targets)])
    if self_position is not None:
        cols = np.flatnonzero(self_position >= 0)
        if cols.size:
            k = self_position[cols]
            inverse = cho_solve(factor, np.eye(features.size))
            coef[:, cols] -= inverse[:, k] * (coef[k, cols] / inverse[k, k])
            coef[k, cols] = 0.0
    return coef


def edge_statistics(total: np.ndarray, total_sq: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean coefficient and two-sided one-sample t-test p-value (against 0) from running sums over bags.

    Equal to ``mean(c)`` and ``scipy.stats.ttest_1samp(c, 0).pvalue`` for the coefficients ``c`` of
    the ``n`` bags in which a regulator was offered; a p-value is 1 where ``n < 2`` (no test), 0 where
    every bag gave the same non-zero coefficient.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), 0.0)
        var = (total_sq - n * mean**2) / np.maximum(n - 1, 1)
        var = np.maximum(var, 0.0)
        t = mean / np.sqrt(var / np.maximum(n, 1))
        p = 2.0 * stats.t.sf(np.abs(t), np.maximum(n - 1, 1))
    p = np.where(var > 0, p, np.where(mean != 0, 0.0, 1.0))
    p = np.where(n >= 2, p, 1.0)
    return mean, p


def bagging_ridge(
    X: np.ndarray,
    Y: np.ndarray,
    candidates: np.ndarray,
    *,
    self_index: np.ndarray | None = None,
    alpha: float,
    n_bags: int,
    rng: np.random.Generator,
    max_features: float = MAX_FEATURES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bagged ridge regressions of every target on its candidate regulators, vectorised over targets.

    Parameters
    ----------
    X
        Cells × regulators, standardised.
    Y
        Cells × targets.
    candidates
        Bool, regulators × targets: which regulators may explain which target (never itself).
    self_index
        Per target, the regulator index of the target itself (``-1`` when it is not a regulator).
    alpha, n_bags, rng, max_features
        Ridge penalty, number of bags, random generator, share of the candidates each bag offers.

    Returns
    -------
    ``(weight, pvalue, n_bags_offered)``, each regulators × targets: the mean coefficient over the
    bags in which the regulator was offered, the two-sided one-sample t-test p-value, and the
    number of those bags.

    Each bag draws one bootstrap sample of cells, shared by every target. Targets are grouped by
    their candidate set counted with themselves (so that, without a prior, all targets form one
    group). A group of several targets gets, per bag, one random subset of
    ``max(1, int(max_features · |R|))`` of its regulators and one ridge system with many
    right-hand sides, a target's own column being left out of its regression (:func:`ridge_solve`).
    A group of one target (the usual case with a prior) draws from its candidates without itself,
    as CellOracle does, and all such targets with the same number of candidates are solved as one
    stack of small systems.
    """
    n_regulators, n_targets = candidates.shape
    if self_index is None:
        self_index = np.full(n_targets, -1)
    with_self = candidates.copy()
    has_self = np.flatnonzero(self_index >= 0)
    with_self[self_index[has_self], has_self] = True
    groups: dict[bytes, list[int]] = {}
    for t in np.flatnonzero(candidates.any(axis=0)):
        groups.setdefault(np.packbits(with_self[:, t]).tobytes(), []).append(int(t))
    shared = []  # (regulators incl. the targets themselves, targets)
    single: dict[int, list[int]] = {}  # number of candidates -> targets solved one by one, stacked
    for members in groups.values():
        if len(members) > 1:
            shared.append((np.flatnonzero(with_self[:, members[0]]), np.asarray(members)))
        else:
            single.setdefault(int(candidates[:, members[0]].sum()), []).append(members[0])
    stacks = []
    for r, members in sorted(single.items()):
        targets = np.asarray(members)
        regulators = np.vstack([np.flatnonzero(candidates[:, t]) for t in targets])  # targets × r
        stacks.append((max(1, int(max_features * r)), regulators, targets))

    total = np.zeros(candidates.shape)
    total_sq = np.zeros(candidates.shape)
    count = np.zeros(candidates.shape)
    n_cells = X.shape[0]
    eye = np.eye(n_regulators)
    for _ in progress(range(n_bags), desc="reference_grn", unit="bag"):
        counts = np.bincount(rng.integers(0, n_cells, size=n_cells), minlength=n_cells).astype(np.float64)
        G, C = bag_moments(X, Y, counts)
        for regulators, targets in shared:
            size = max(1, int(max_features * regulators.size))
            features = np.sort(rng.choice(regulators, size=size, replace=False))
            position = np.full(n_regulators, -1)
            position[features] = np.arange(features.size)
            own = self_index[targets]
            self_position = np.where(own >= 0, position[np.maximum(own, 0)], -1)
            coef = ridge_solve(G, C, features, targets, alpha, self_position=self_position)
            index = np.ix_(features, targets)
            total[index] += coef
            total_sq[index] += coef**2
            offered = np.ones(coef.shape)
            cols = np.flatnonzero(self_position >= 0)
            offered[self_position[cols], cols] = 0.0
            count[index] += offered
        for size, regulators, targets in stacks:
            pick = np.argsort(rng.random(regulators.shape), axis=1)[:, :size]
            features = np.sort(np.take_along_axis(regulators, pick, axis=1), axis=1)  # targets × size
            gram = G[features[:, :, None], features[:, None, :]] + alpha * eye[:size, :size]
            rhs = C[features, targets[:, None]]
            coef = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]
            index = (features, np.broadcast_to(targets[:, None], features.shape))
            total[index] += coef
            total_sq[index] += coef**2
            count[index] += 1.0
    weight, pvalue = edge_statistics(total, total_sq, count)
    return weight, pvalue, count


# ---- edge filters ------------------------------------------------------------------------------


def gmm_crossing(log_weight: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Crossing of the two weighted Gaussians of a 2-component mixture fitted to ``log_weight``.

    :class:`sklearn.mixture.GaussianMixture` (``random_state=0``) is fitted; the threshold is the
    root of ``pi_lo N(x; mu_lo, s_lo²) = pi_hi N(x; mu_hi, s_hi²)`` between the two means where the
    upper component takes over. Without such a root the midpoint of the means is used (logged).
    Returns the threshold and the fitted ``means``, ``variances``, ``weights`` (lower mean first).
    """
    from sklearn.mixture import GaussianMixture

    mixture = GaussianMixture(n_components=2, random_state=0).fit(log_weight.reshape(-1, 1))
    order = np.argsort(mixture.means_.ravel())
    mu = mixture.means_.ravel()[order]
    var = mixture.covariances_.ravel()[order]
    pi = mixture.weights_.ravel()[order]
    fit = {"means": mu, "variances": var, "weights": pi}
    # log(pi_hi N_hi) - log(pi_lo N_lo) = a x² + b x + c
    a = 0.5 / var[0] - 0.5 / var[1]
    b = mu[1] / var[1] - mu[0] / var[0]
    c = 0.5 * mu[0] ** 2 / var[0] - 0.5 * mu[1] ** 2 / var[1] + np.log(pi[1] / pi[0]) + 0.5 * np.log(var[0] / var[1])
    roots = np.roots([a, b, c]) if abs(a) > 1e-12 else np.array([-c / b])
    roots = roots[np.isreal(roots)].real
    rising = [r for r in roots if mu[0] <= r <= mu[1] and 2 * a * r + b > 0]
    if rising:
        return float(min(rising)), fit
    midpoint = float(mu.mean())
    logger.warning(
        "reference_grn: the two mixture components do not cross between their means (%.3g, %.3g); "
        "cutting at their midpoint %.3g instead.",
        mu[0],
        mu[1],
        midpoint,
    )
    return midpoint, fit


# ---- the public function -----------------------------------------------------------------------


def reference_grn(
    adata: AnnData,
    *,
    tfs: str | os.PathLike | Iterable[str],
    prior: pd.DataFrame | str | os.PathLike | None = None,
    control_only: bool = True,
    alpha: float = 10.0,
    n_bags: int = 20,
    fdr: float = 0.05,
    edge_threshold: str | float | None = "gmm",
    layer: str | None = None,
    test_key: str | None = None,
    seed: int = 0,
    key_added: str = "reference_grn",
    copy: bool = False,
) -> AnnData | None:
    """Infer a reference TF → target GRN from unperturbed cells, as CellOracle refines its base GRN.

    The paper of gCRL builds its GRN with CellOracle (Kamimoto et al. 2023); this is a
    native re-implementation of CellOracle's refinement step (``get_links`` with
    ``model_method="bagging_ridge"``, ``alpha=10``, ``bagging_number=20``), followed by the paper's
    two filters:

    1. **Cells and expression.** The fit cells are the control cells (``control_only=True``, from
       :func:`pertgrn.pp.annotate_perturbations`) or all cells, minus the held-out cells of
       ``test_key``, which never enter the fit. Their raw counts are log-normalised (each cell scaled
       to the median library size of the fit cells, ``log1p``).
    2. **Candidates.** The regulators are the genes of ``tfs`` that are measured and vary in the fit
       cells. With ``prior=None`` every regulator is a candidate for every gene; with a prior, the
       candidates of a target are its prior regulators among them. A gene never regulates itself.
    3. **Bagging ridge.** For every target gene with a candidate: ``n_bags`` bootstrap samples of the
       fit cells, each offering a random 80 % of the candidates (CellOracle's ``max_features=0.8``;
       without a prior, 80 % of all TFs, the target's own expression then left out),
       a ridge regression (penalty ``alpha``, with intercept) of the target's log expression on the
       standardised expression of the offered regulators. The edge weight is the mean coefficient
       over the bags that offered the regulator; its p-value is the two-sided one-sample t-test of
       those coefficients against 0 (CellOracle's ``coef_mean`` and ``p``).
    4. **Significance.** Benjamini–Hochberg over all tested edges; edges with ``q ≤ fdr`` are kept.
    5. **Strength.** ``edge_threshold="gmm"``: a two-component Gaussian mixture on ``log10 |w|`` of
       the kept edges; the edges above the crossing of the two weighted components are kept (the
       paper's cut at the valley of the bimodal weight distribution). A number ``f`` in (0, 1] keeps
       the ``ceil(f · E)`` strongest of the ``E`` significant edges; ``None`` keeps them all.

    Differences from CellOracle: no motif base GRN (it cannot be downloaded here; pass any prior),
    no KNN imputation of the expression before the regression, and one bootstrap sample per bag
    shared by all targets (one ridge solve per bag for all targets with the same candidates, a
    target's own expression removed from its regression by a rank-one update), which is what makes
    a fit of 150 TFs × 1,700 genes × 3,000 cells take seconds on one core.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts in ``X`` or ``layer``; annotated by
        :func:`pertgrn.pp.annotate_perturbations` when ``control_only=True``.
    tfs
        The transcription factors: a list of gene symbols, or the path of a file with one symbol per
        line (e.g. the human TF list of Lambert et al. 2018).
    prior
        ``None``: every measured TF may regulate every gene. Otherwise a long table (DataFrame, or
        the path of a ``.csv`` / ``.tsv`` file) with a regulator column named ``source``, ``tf``,
        ``regulator``, ``tf_symbol`` or ``from`` and a target column named ``target``,
        ``target_gene``, ``gene`` or ``to`` (case-insensitive; other columns such as a sign are
        ignored). CollecTRI's ``tf,target,sign`` and TRRUST's ``tf,target,mor,…`` work as they are.
    control_only
        Fit on the control cells only (the paper), else on all cells.
    alpha
        Ridge penalty (CellOracle's default 10).
    n_bags
        Number of bootstrap bags (CellOracle's default 20); at least 2.
    fdr
        Largest Benjamini–Hochberg q-value of a kept edge, in (0, 1].
    edge_threshold
        ``"gmm"`` (default), a top fraction in (0, 1], or ``None`` (no strength filter).
    layer
        Layer holding the raw counts; ``None`` uses ``X``.
    test_key
        Boolean ``obs`` column marking cells (True) that must not enter the fit: held-out cells, or
        e.g. ``"pertgrn_qc_fail"`` to leave out the cells flagged by :func:`pertgrn.pp.annotate_qc`.
    seed
        Seed of the bootstrap and feature draws.
    key_added
        Key of ``adata.uns`` written.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``; writes ``uns[key_added]``, a dict with

    ``edges``
        :class:`pandas.DataFrame` of the kept edges, columns ``source`` (TF), ``target``,
        ``weight`` (mean ridge coefficient: change of the target's log expression per standard
        deviation of the TF), ``pvalue``, ``qvalue``; sorted by ``|weight|``, largest first.
    ``summary``
        ``n_fit_cells``, ``target_sum`` (of the log-normalisation), ``n_tfs_listed``,
        ``n_tfs_measured``, ``n_regulators`` (TFs that vary in the fit cells), ``n_targets``,
        ``n_tested``, ``n_significant``, ``n_kept``, ``kept_fraction`` (of the significant edges),
        ``weight_threshold`` (smallest kept ``|weight|``), ``log10_threshold`` (the mixture's crossing,
        NaN unless ``"gmm"``) and ``gmm`` (``means``, ``variances``, ``weights`` of the mixture on
        ``log10 |w|``, lower component first; empty without a mixture).
    ``params``
        The arguments (``tfs`` and ``prior`` described by strings, ``layer="X"`` and ``test_key=""``
        for ``None``).

    Raises
    ------
    TypeError, ValueError, KeyError
        On bad arguments, no listed TF measured, a prior without an edge among the regulators and
        measured genes, too few fit cells, counts that are not raw integers, or no edge passing the
        FDR filter; ``adata`` is left untouched.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(n_tf_modules=3, seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> tfs = adata.var_names[adata.var["true_tf_module"] >= 0]
    >>> pg.pp.reference_grn(adata, tfs=tfs)
    >>> edges = pg.get.reference_grn_df(adata)
    >>> list(edges.columns)
    ['source', 'target', 'weight', 'pvalue', 'qvalue']
    >>> bool(edges["source"].isin(tfs).all())
    True
    """
    # ---- arguments
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, found {type(adata).__name__}.")
    for name, value in (("control_only", control_only), ("copy", copy)):
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be True or False, found {value!r}.")
    alpha = _check_number("alpha", alpha, low=0.0, high=np.inf, low_open=True, high_open=True)
    n_bags = check_int("n_bags", n_bags, 2)
    fdr = _check_number("fdr", fdr, low=0.0, high=1.0, low_open=True, high_open=False)
    seed = check_int("seed", seed, 0)
    if isinstance(edge_threshold, str):
        if edge_threshold != "gmm":
            raise ValueError(f"`edge_threshold` must be 'gmm', a fraction in (0, 1] or None, found {edge_threshold!r}.")
    elif edge_threshold is not None:
        edge_threshold = _check_number(
            "edge_threshold", edge_threshold, low=0.0, high=1.0, low_open=True, high_open=False
        )
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"`key_added` must be a non-empty string, found {key_added!r}.")
    tf_list = read_tf_list(tfs)
    prior_table = None if prior is None else read_prior(prior)

    # ---- cells
    fit = ~held_out_mask(adata, test_key)
    if control_only:
        design = get_design(adata)
        if CONDITION_KEY not in adata.obs.columns:
            raise KeyError(
                f"adata.obs[{CONDITION_KEY!r}] is missing; run `pertgrn.pp.annotate_perturbations` first "
                "or pass control_only=False."
            )
        fit &= (adata.obs[CONDITION_KEY].astype(str) == str(design["control"])).to_numpy()
    n_fit = int(fit.sum())
    if n_fit < 3:
        raise ValueError(
            f"reference_grn needs at least 3 fit cells ({'control ' if control_only else ''}cells not held out), "
            f"found {n_fit}."
        )

    # ---- regulators and candidates
    genes = adata.var_names.astype(str)
    tf_set = set(tf_list)
    measured_tfs = np.flatnonzero(genes.isin(tf_set))
    if measured_tfs.size == 0:
        raise ValueError(
            f"None of the {len(tf_list)} listed TFs (e.g. {tf_list[:5]}) is a measured gene "
            f"(var_names such as {list(genes[:5])}). Check the TF list and the gene symbols."
        )
    counts = check_counts(adata, layer)[fit]
    lib = library_size(counts)
    positive = lib[lib > 0]
    target_sum = float(np.median(positive)) if positive.size else 1.0
    expr = to_dense(log_normalize(counts, target_sum=target_sum, dtype=np.float64))
    sd = expr.std(axis=0)
    varies = sd > 0
    regulators = measured_tfs[varies[measured_tfs]]
    if regulators.size < measured_tfs.size:
        logger.info(
            "reference_grn: %d measured TFs are constant in the fit cells and cannot regulate: %s",
            measured_tfs.size - regulators.size,
            list(genes[measured_tfs[~varies[measured_tfs]]][:10]),
        )
    if regulators.size == 0:
        raise ValueError(f"All {measured_tfs.size} measured TFs are constant in the {n_fit} fit cells.")
    targets = np.flatnonzero(varies)
    candidates = np.ones((regulators.size, targets.size), dtype=bool)
    if prior_table is not None:
        reg_pos = pd.Series(np.arange(regulators.size), index=genes[regulators])
        tgt_pos = pd.Series(np.arange(targets.size), index=genes[targets])
        usable = prior_table[prior_table["source"].isin(reg_pos.index) & prior_table["target"].isin(tgt_pos.index)]
        if usable.empty:
            n_sources = int(prior_table["source"].isin(set(genes[measured_tfs])).sum())
            raise ValueError(
                f"The prior ({len(prior_table)} edges) has no edge from a measured, varying TF to a measured, "
                f"varying gene ({n_sources} of its edges start at a measured TF). Check that the prior and "
                "var_names use the same gene symbols."
            )
        candidates[:] = False
        candidates[reg_pos[usable["source"]].to_numpy(), tgt_pos[usable["target"]].to_numpy()] = True
    self_index = np.full(targets.size, -1)
    self_pairs = np.flatnonzero(np.isin(targets, regulators))
    self_index[self_pairs] = np.searchsorted(regulators, targets[self_pairs])
    candidates[self_index[self_pairs], self_pairs] = False
    has_candidate = candidates.any(axis=0)
    targets, candidates, self_index = targets[has_candidate], candidates[:, has_candidate], self_index[has_candidate]
    if targets.size == 0:
        raise ValueError("No gene has a candidate regulator other than itself; a GRN needs at least two genes.")

    # ---- bagging ridge (nothing written yet)
    X = (expr[:, regulators] - expr[:, regulators].mean(axis=0)) / sd[regulators]
    Y = expr[:, targets]
    logger.info(
        "reference_grn: bagging ridge of %d targets on %d TFs (%d candidate edges) over %d fit cells",
        targets.size,
        regulators.size,
        int(candidates.sum()),
        n_fit,
    )
    rng = np.random.default_rng(seed)
    # many small solves: one BLAS thread is faster than several fighting over the cores
    with threadpool_limits(limits=1, user_api="blas"):
        weight, pvalue, offered = bagging_ridge(
            X, Y, candidates, self_index=self_index, alpha=alpha, n_bags=n_bags, rng=rng
        )
    tested = candidates & (offered > 0)
    rows, cols = np.nonzero(tested)
    table = pd.DataFrame(
        {
            "source": genes[regulators][rows].to_numpy(dtype=object),
            "target": genes[targets][cols].to_numpy(dtype=object),
            "weight": weight[rows, cols],
            "pvalue": pvalue[rows, cols],
        }
    )
    table["qvalue"] = stats.false_discovery_control(table["pvalue"].to_numpy(), method="bh")
    significant = table[table["qvalue"] <= fdr]
    if significant.empty:
        raise ValueError(
            f"No edge of the {len(table)} tested passes q ≤ {fdr} (smallest q {table['qvalue'].min():.3g}). "
            "More fit cells, a larger `fdr` or a smaller `alpha` may help."
        )

    # ---- strength filter
    magnitude = significant["weight"].abs().to_numpy()
    order = np.lexsort((significant["target"].to_numpy(), significant["source"].to_numpy(), -magnitude))
    significant = significant.iloc[order].reset_index(drop=True)
    magnitude = magnitude[order]
    log_threshold, gmm_fit = np.nan, {}
    if edge_threshold == "gmm":
        if len(significant) < MIN_EDGES_FOR_GMM:
            logger.warning(
                "reference_grn: only %d significant edges, too few for the mixture cut; keeping all of them.",
                len(significant),
            )
            kept = significant
        else:
            log_threshold, gmm_fit = gmm_crossing(np.log10(magnitude))
            kept = significant[np.log10(magnitude) >= log_threshold]
    elif edge_threshold is None:
        kept = significant
    else:
        kept = significant.iloc[: int(np.ceil(edge_threshold * len(significant)))]
    kept = kept.reset_index(drop=True)
    kept_fraction = len(kept) / len(significant)
    logger.info(
        "reference_grn: %d tested edges, %d with q ≤ %g, %d kept (%.0f %% of the significant ones) from %d TFs",
        len(table),
        len(significant),
        fdr,
        len(kept),
        100 * kept_fraction,
        kept["source"].nunique(),
    )

    summary: dict[str, Any] = {
        "n_fit_cells": n_fit,
        "target_sum": target_sum,
        "n_tfs_listed": len(tf_list),
        "n_tfs_measured": int(measured_tfs.size),
        "n_regulators": int(regulators.size),
        "n_targets": int(targets.size),
        "n_tested": len(table),
        "n_significant": len(significant),
        "n_kept": len(kept),
        "kept_fraction": float(kept_fraction),
        "weight_threshold": float(kept["weight"].abs().min()),
        "log10_threshold": float(log_threshold),
        "gmm": {k: np.asarray(v, dtype=np.float64) for k, v in gmm_fit.items()},
    }
    params: dict[str, Any] = {
        "tfs": str(tfs) if isinstance(tfs, str | os.PathLike) else "list",
        "prior": "none" if prior is None else (str(prior) if isinstance(prior, str | os.PathLike) else "table"),
        "prior_n_edges": 0 if prior_table is None else len(prior_table),
        "control_only": control_only,
        "alpha": alpha,
        "n_bags": n_bags,
        "max_features": MAX_FEATURES,
        "fdr": fdr,
        "edge_threshold": "none" if edge_threshold is None else edge_threshold,
        "layer": "X" if layer is None else layer,
        "test_key": "" if test_key is None else test_key,
        "seed": seed,
    }

    # ---- write
    out = adata.copy() if copy else adata
    out.uns[key_added] = {"edges": kept, "summary": summary, "params": params}
    return out if copy else None


def reference_grn_record(adata: AnnData, key: str) -> Mapping[str, Any]:
    """``adata.uns[key]`` written by :func:`reference_grn`, with an error that says how to make it."""
    if not isinstance(key, str):
        raise TypeError(f"`key` must be a string, found {type(key).__name__}.")
    record = adata.uns.get(key)
    if not isinstance(record, Mapping) or "edges" not in record:
        raise KeyError(
            f"adata.uns[{key!r}] holds no reference GRN; run `pertgrn.pp.reference_grn(adata, tfs=..., "
            f"key_added={key!r})` first."
        )
    edges = record["edges"]
    if not isinstance(edges, pd.DataFrame) or not {"source", "target", "weight"} <= set(edges.columns):
        raise ValueError(
            f"adata.uns[{key!r}]['edges'] must be a DataFrame with columns source, target, weight; "
            f"found {type(edges).__name__}."
        )
    return record

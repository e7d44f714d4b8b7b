"""gCRL-AE's alignment of learned latents with TF-community activities, and its community permutation test.

gCRL (§2.7, appendix A.4) looks for the linear map ``A`` maximising
``T-MEX(TFA, ẐA) = (1/d) Σ_i ρ(Ẑa_i, TFA_i | TFA_{−i})``. With ``P_i`` the projection onto the
complement of ``C_i = [1, TFA_{−i}]``, ``P_i(Ẑa) = (P_iẐ)a``, so the problem separates by column:
``ρ_i(a) = aᵀb_i / √(aᵀM_ia · c_i)`` with ``M_i = (P_iẐ)ᵀP_iẐ``, ``b_i = (P_iẐ)ᵀP_iTFA_i`` and
``c_i = ‖P_iTFA_i‖²``. Its maximum over a free ``a`` is ``a_i* = M_i⁺b_i`` with
``ρ_i* = √(b_iᵀM_i⁺b_i / c_i)``, the multiple correlation of ``P_iTFA_i`` on ``P_iẐ``: the closed
form. Gradient solvers (Adam on the same quadratic forms) serve the rotation reading of the paper
(``A`` orthogonal) and parity checks.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from pertgrn._settings import progress
from pertgrn._utils import check_counts, check_int, library_size, logger, to_dense

CONSTRAINTS = ("none", "orthogonal")
SOLVERS = ("closed_form", "adam")


# ------------------------------------------------------------------------------------------------
# the quadratic forms behind T-MEX(TFA, ẐA)
# ------------------------------------------------------------------------------------------------
def _projected(values: np.ndarray, conditioning: np.ndarray) -> np.ndarray:
    """Residuals of least-squares regressions (with intercept) of ``values``' columns on ``conditioning``."""
    design = np.column_stack([np.ones(values.shape[0]), conditioning])
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    return values - design @ coef


def tmex_forms(z: np.ndarray, tfa: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(M, b, c)``: ``d × k × k``, ``d × k`` and ``d`` such that ``ρ_i(a) = aᵀb_i / √(aᵀM_ia · c_i)``.

    ``z`` is ``n × k`` (latents), ``tfa`` is ``n × d`` (activities).
    """
    d = tfa.shape[1]
    k = z.shape[1]
    M = np.empty((d, k, k))
    b = np.empty((d, k))
    c = np.empty(d)
    for i in range(d):
        others = np.delete(tfa, i, axis=1)
        pz = _projected(z, others)
        pt = _projected(tfa[:, [i]], others)[:, 0]
        M[i] = pz.T @ pz
        b[i] = pz.T @ pt
        c[i] = pt @ pt
    return M, b, c


def correlations(A: np.ndarray, forms: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """``ρ_i`` of each column of ``A`` (signed; 0 where a column or its target has no residual variance)."""
    M, b, c = forms
    num = np.einsum("ki,ik->i", A, b)
    den = np.sqrt(np.maximum(np.einsum("ki,ikl,li->i", A, M, A), 0.0) * c)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 1e-300)


def closed_form_alignment(forms: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(A*, ρ*)``: the free map maximising every ``ρ_i`` (min-norm ``a_i* = M_i⁺ b_i``) and its correlations."""
    M, b, _ = forms
    A = np.column_stack([np.linalg.pinv(M[i], hermitian=True) @ b[i] for i in range(b.shape[0])])
    return A, correlations(A, forms)


def _gradients(A: np.ndarray, forms: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``ρ`` of each column of ``A`` and ``∂ρ_i / ∂a_i`` (columns): ``(b_i q − s M_i a) / (q^{3/2} √c_i)``."""
    M, b, c = forms
    Ma = np.einsum("ikl,li->ki", M, A)  # column i = M_i a_i
    s = np.einsum("ki,ik->i", A, b)
    q = np.maximum(np.einsum("ki,ki->i", A, Ma), 1e-300)
    root = np.sqrt(q * c)
    rho = np.divide(s, root, out=np.zeros_like(s), where=root > 1e-300)
    grad = (b.T * q - Ma * s) / np.where(root > 1e-300, q * root, np.inf)
    return rho, grad


def _nearest_orthogonal(A: np.ndarray) -> np.ndarray:
    """The orthogonal matrix nearest to ``A`` (polar factor ``U Vᵀ`` of its SVD)."""
    u, _, vt = np.linalg.svd(A)
    return u @ vt


def gradient_alignment(
    forms: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    constraint: str = "none",
    seed: int = 0,
    n_steps: int = 2000,
    lr: float = 1e-2,
    tol: float = 1e-9,
) -> tuple[np.ndarray, np.ndarray]:
    """``(A, ρ)`` from Adam (analytic gradients of the quadratic forms) started at a seeded random ``A``.

    ``constraint="none"``: ``A`` free, maximising the mean signed ``ρ`` (converges to the closed
    form). ``"orthogonal"``: ``A ∈ O(d)``, maximising the mean ``|ρ|`` (a rotation cannot flip a
    latent's sign freely): each Adam step is projected back onto the orthogonal matrices (polar
    decomposition), starting from a random orthogonal matrix. Stops when the objective improves
    by less than ``tol`` over 50 steps. Adam's moments use PyTorch's defaults (0.9, 0.999, 1e-8).
    """
    M, b, _ = forms
    k, d = M.shape[1], b.shape[0]
    rng = np.random.default_rng(int(seed))
    A = rng.standard_normal((k, d))
    if constraint == "orthogonal":
        if k != d:
            raise ValueError(f"An orthogonal A needs as many latents as activity columns, found {k} and {d}.")
        q, r = np.linalg.qr(A)
        A = q * np.sign(np.diag(r))
    first = np.zeros_like(A)
    second = np.zeros_like(A)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    best, window = -np.inf, -np.inf
    for step in range(1, int(n_steps) + 1):
        rho, grad = _gradients(A, forms)
        if constraint == "orthogonal":
            grad = grad * np.where(rho < 0, -1.0, 1.0)
            objective = float(np.abs(rho).mean())
        else:
            objective = float(rho.mean())
        grad = grad / d
        first = beta1 * first + (1 - beta1) * grad
        second = beta2 * second + (1 - beta2) * grad**2
        A = A + lr * (first / (1 - beta1**step)) / (np.sqrt(second / (1 - beta2**step)) + eps)
        if constraint == "orthogonal":
            A = _nearest_orthogonal(A)
        best = max(best, objective)
        if step % 50 == 0:
            if best - window < tol:
                break
            window = best
    return A, correlations(A, forms)


def _fit(
    forms: tuple[np.ndarray, np.ndarray, np.ndarray], constraint: str, solver: str, seeds: list[int], **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``(A, ρ)`` over the seeds (one closed-form solve when it applies)."""
    if solver == "closed_form":
        return closed_form_alignment(forms)
    best = None
    for seed in seeds:
        A, rho = gradient_alignment(forms, constraint=constraint, seed=seed, **kwargs)
        score = np.abs(rho).mean() if constraint == "orthogonal" else rho.mean()
        if best is None or score > best[0]:
            best = (score, A, rho)
    return best[1], best[2]


# ------------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------------
def _mask(adata: AnnData, mask: object, name: str) -> np.ndarray:
    if mask is None:
        return np.ones(adata.n_obs, dtype=bool)
    if isinstance(mask, str):
        if mask not in adata.obs.columns:
            raise KeyError(f"`{name}` {mask!r} is not a column of adata.obs; available: {list(adata.obs.columns)}.")
        values = adata.obs[mask].to_numpy()
    else:
        values = mask.to_numpy() if isinstance(mask, pd.Series) else np.asarray(mask)
    if values.dtype != bool:
        raise TypeError(f"`{name}` must be boolean (or an obs column of booleans), found dtype {values.dtype}.")
    if values.shape != (adata.n_obs,):
        raise ValueError(f"`{name}` must have shape ({adata.n_obs},), found {values.shape}.")
    return values


def _arrays(adata: AnnData, latent_key: str, activity_key: str) -> tuple[np.ndarray, np.ndarray]:
    for key, what in ((latent_key, "latents (e.g. GCRLAE.get_latent_representation())"), (activity_key, "activities")):
        if not isinstance(key, str) or key not in adata.obsm:
            raise KeyError(f"adata.obsm[{key!r}] is missing; it should hold the {what}.")
    z = np.asarray(adata.obsm[latent_key], dtype=np.float64)
    tfa = np.asarray(adata.obsm[activity_key], dtype=np.float64)
    if z.ndim != 2 or tfa.ndim != 2:
        raise ValueError("Latents and activities must be 2-d (cells × columns).")
    if not (np.isfinite(z).all() and np.isfinite(tfa).all()):
        raise ValueError("Latents and activities must not contain NaN or inf.")
    return z, tfa


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, found {value!r}.")


def _resolve_solver(constraint: str, solver: str | None) -> str:
    solver = ("closed_form" if constraint == "none" else "adam") if solver is None else solver
    _check_choice("solver", solver, SOLVERS)
    if constraint == "orthogonal" and solver == "closed_form":
        raise ValueError("An orthogonal A has no closed form here; use solver='adam' (or None).")
    return solver


def _standardise(z: np.ndarray, fit: np.ndarray) -> np.ndarray:
    mean = z[fit].mean(0)
    sd = z[fit].std(0)
    return (z - mean) / np.where(sd > 0, sd, 1.0)


# ------------------------------------------------------------------------------------------------
# public functions
# ------------------------------------------------------------------------------------------------
def align_latents(
    adata: AnnData,
    *,
    latent_key: str = "X_gcrlae",
    activity_key: str = "X_tf_activity",
    constraint: str = "none",
    solver: str | None = None,
    fit_mask: np.ndarray | pd.Series | str | None = None,
    n_init: int = 100,
    n_steps: int = 2000,
    lr: float = 1e-2,
    seed: int = 0,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Align learned latents ``Ẑ`` with TF-community activities by the linear map maximising T-MEX (gCRL-AE).

    Finds ``A* = argmax_A T-MEX(TFA, ẐA)``, where T-MEX is the mean over activity columns ``i`` of
    the partial correlation ``ρ(Ẑa_i, TFA_i | TFA_{−i})`` (:func:`pertgrn.metrics.tmex` with
    ``given="activities"``; gCRL appendix A.4), on the ``fit_mask`` cells, and writes the aligned
    latents ``Z = ẐA`` of every cell.

    - ``constraint="none"`` (default): ``A`` is a free linear map. The objective separates by
      column and has a closed form, ``a_i* = M_i⁺ b_i`` (see the module docstring), reached
      exactly (``solver="closed_form"``) or by Adam from a seeded random start (``"adam"``).
    - ``constraint="orthogonal"``: ``A`` is a rotation (or reflection) of the standardised latents,
      the paper's figure captions' reading, maximising the mean ``|ρ|`` with Adam from ``n_init``
      seeded starts (the best is kept); this problem is not convex.

    Parameters
    ----------
    adata
        AnnData with latents in ``obsm[latent_key]`` and activities in ``obsm[activity_key]``
        (from :func:`pertgrn.pp.tf_activity`).
    latent_key
        ``obsm`` key of the latents ``Ẑ`` (``n_obs × k``; e.g. :class:`pertgrn.models.GCRLAE`'s).
    activity_key
        ``obsm`` key of the activities (``n_obs × d``, global activity last).
    constraint
        ``"none"`` or ``"orthogonal"`` (needs ``k = d``).
    solver
        ``"closed_form"`` or ``"adam"``; ``None`` picks the closed form when it applies.
    fit_mask
        Cells that fit ``A`` (boolean array or ``obs`` column; ``None``: all). gCRL fits on the
        AE's training cells and reports T-MEX on all cells and on the validation cells.
    n_init
        Seeded starts of the orthogonal solver (seeds ``seed``, ``seed + 1``, …).
    n_steps
        Adam steps, at most (it stops when the objective stops improving).
    lr
        Adam learning rate.
    seed
        First seed of the random starts.
    key_added
        ``obsm`` key of the aligned latents; ``None`` uses ``f"{latent_key}_aligned"``. The
        summary goes to ``uns[key_added without a leading "X_"]``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``; writes

    ``obsm[key_added]``
        ``n_obs × d`` float64 aligned latents ``ẐA`` (``Ẑ`` standardised on the fit cells first
        when ``constraint="orthogonal"``); column ``i`` pairs with activity column ``i``.
    ``uns[base]``
        ``A`` (``k × d``), ``tmex_fit`` (T-MEX on the fit cells: the optimum), ``tmex`` (on all
        cells), ``tmex_held_out`` (on the other cells; NaN when there are none),
        ``partial_correlations`` (DataFrame per activity column, named as in
        :func:`pertgrn.pp.tf_activity`'s record when there is one, else ``column_<i>``: ``fit``,
        ``all``; signed, so ``|ρ|`` for the orthogonal solver is their absolute value), ``params``
        and ``keys``.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> import pertgrn as pg
    >>> rng = np.random.default_rng(0)
    >>> tfa = rng.normal(size=(500, 3))
    >>> adata = ad.AnnData(np.zeros((500, 1)))
    >>> adata.obsm["X_tf_activity"] = tfa
    >>> adata.obsm["X_gcrlae"] = tfa @ rng.normal(size=(3, 3))  # mixed latents
    >>> pg.tl.align_latents(adata)
    >>> round(adata.uns["gcrlae_aligned"]["tmex"], 6)
    1.0
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, found {type(adata).__name__}.")
    if not isinstance(copy, bool):
        raise TypeError(f"`copy` must be True or False, found {copy!r}.")
    _check_choice("constraint", constraint, CONSTRAINTS)
    solver = _resolve_solver(constraint, solver)
    n_init = check_int("n_init", n_init, 1)
    n_steps = check_int("n_steps", n_steps, 1)
    seed = check_int("seed", seed, 0)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr > 0:
        raise ValueError(f"`lr` must be a positive number, found {lr!r}.")
    if key_added is None:
        key_added = f"{latent_key}_aligned"
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"`key_added` must be a non-empty string, found {key_added!r}.")
    z, tfa = _arrays(adata, latent_key, activity_key)
    fit = _mask(adata, fit_mask, "fit_mask")
    d = tfa.shape[1]
    if fit.sum() < d + 3:
        raise ValueError(
            f"align_latents needs more than {d + 2} fit cells for {d} activity columns, found {fit.sum()}."
        )
    if constraint == "orthogonal":
        if z.shape[1] != d:
            raise ValueError(f"An orthogonal A needs as many latents as activity columns, found {z.shape[1]} and {d}.")
        z = _standardise(z, fit)

    forms = tmex_forms(z[fit], tfa[fit])
    A, rho_fit = _fit(
        forms, constraint, solver, list(range(seed, seed + (n_init if constraint == "orthogonal" else 1))),
        n_steps=n_steps, lr=lr,
    )  # fmt: skip
    aligned = z @ A
    rho_all = correlations(A, tmex_forms(z, tfa))
    held_out = ~fit
    rho_held = correlations(A, tmex_forms(z[held_out], tfa[held_out])) if held_out.sum() >= d + 3 else None
    summarise = (lambda r: float(np.abs(r).mean())) if constraint == "orthogonal" else (lambda r: float(r.mean()))
    base = key_added[2:] if key_added.startswith("X_") and len(key_added) > 2 else key_added
    activity_base = activity_key[2:] if activity_key.startswith("X_") and len(activity_key) > 2 else activity_key
    record = adata.uns.get(activity_base)
    names = [f"column_{i}" for i in range(d)]
    if isinstance(record, Mapping) and len(record.get("columns", ())) == d:
        names = [str(c) for c in record["columns"]]
    result: dict[str, Any] = {
        "A": A,
        "tmex_fit": summarise(rho_fit),
        "tmex": summarise(rho_all),
        "tmex_held_out": float("nan") if rho_held is None else summarise(rho_held),
        "partial_correlations": pd.DataFrame({"fit": rho_fit, "all": rho_all}, index=pd.Index(names, name="column")),
        "params": {
            "latent_key": latent_key,
            "activity_key": activity_key,
            "constraint": constraint,
            "solver": solver,
            "n_init": n_init,
            "n_steps": n_steps,
            "lr": float(lr),
            "seed": seed,
            "n_fit_cells": int(fit.sum()),
        },
        "keys": {"obsm": key_added},
    }
    logger.info(
        "align_latents: T-MEX %.4f on %d fit cells, %.4f on all cells (%s, %s)",
        result["tmex_fit"],
        int(fit.sum()),
        result["tmex"],
        constraint,
        solver,
    )
    out = adata.copy() if copy else adata
    out.obsm[key_added] = aligned
    out.uns[base] = result
    return out if copy else None


def one_tailed_ttest(null: np.ndarray, observed: float) -> tuple[float, float]:
    """``(t, p)`` of the one-sample, one-tailed t-test that the null scores lie below ``observed`` (gCRL §3.1).

    ``p`` is :func:`scipy.stats.ttest_1samp` with ``popmean=observed`` and ``alternative="less"``;
    ``t = (observed − mean(null)) / (sd(null) / √n)`` is reported positive when the observed score is
    above the null (scipy's statistic with the opposite sign).
    """
    null = np.asarray(null, dtype=np.float64)
    test = stats.ttest_1samp(null, popmean=float(observed), alternative="less")
    return float(-test.statistic), float(test.pvalue)


def _zscored_tfs(adata: AnnData, record: Mapping, layer: str | None) -> tuple[list[str], np.ndarray]:
    """TFs of an activity record and their z-scored log-normalised expression (the record's frozen scaling)."""
    tfs = [str(t) for t in record["tfs"]]
    counts = check_counts(adata, layer)
    position = adata.var_names.get_indexer(pd.Index(tfs))
    if (position < 0).any():
        missing = [t for t, p in zip(tfs, position, strict=True) if p < 0]
        raise KeyError(f"TFs of the activity record are not among var_names: {missing[:10]}.")
    lib = library_size(counts)
    scale = np.divide(float(record["target_sum"]), lib, out=np.zeros_like(lib), where=lib > 0)
    expr = np.log1p(to_dense(counts[:, position]).astype(np.float64) * scale[:, None])
    sd = np.asarray(record["sd"], dtype=np.float64)
    constant = sd == 0
    Z = np.where(constant, 0.0, (expr - np.asarray(record["mean"])) / np.where(constant, 1.0, sd))
    return tfs, Z


def community_activities(Z: np.ndarray, labels: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """Eigengene of each community (labels ``0..K−1``; ``−1`` unpartitioned) of z-scored TFs, fitted on ``fit``."""
    from pertgrn.pp._tf_activity import eigengene

    n_communities = int(labels.max()) + 1
    columns = np.zeros((Z.shape[0], n_communities))
    for c in range(n_communities):
        members = np.flatnonzero(labels == c)
        v, _ = eigengene(Z[fit][:, members])
        columns[:, c] = Z[:, members] @ v
    return columns


def community_permutation_test(
    adata: AnnData,
    *,
    latent_key: str = "X_gcrlae",
    activity_key: str = "X_tf_activity",
    communities_key: str = "tf_communities",
    layer: str | None = None,
    constraint: str = "none",
    n_perm: int = 100,
    n_fits: int = 3,
    n_fits_observed: int = 100,
    fit_mask: np.ndarray | pd.Series | str | None = None,
    n_steps: int = 500,
    seed: int = 0,
    key_added: str = "community_permutation_test",
    copy: bool = False,
) -> AnnData | None:
    """Is the alignment of latents with the TF communities better than with random communities? (gCRL §3.1)

    1. **Observed.** ``A`` is fitted ``n_fits_observed`` times on the true communities (seeds
       ``seed …``; with the closed form, once, since it does not depend on a seed) and the mean
       T-MEX is ``T̄_obs``.
    2. **Null.** ``n_perm`` times, the TFs are reassigned to communities at random with the
       community sizes kept; each community's activity is recomputed (the eigengene of its
       z-scored TFs, with the scaling of :func:`pertgrn.pp.tf_activity` and loadings fitted on the
       ``fit_mask`` cells) while the global activity and the latents stay fixed; ``A`` is fitted
       ``n_fits`` times and the T-MEX values averaged.
    3. **Test.** One-sample, one-tailed t-test of the null values against ``T̄_obs``
       (``scipy.stats.ttest_1samp(null, T̄_obs, alternative="less")``), reported with
       ``t = (T̄_obs − mean(null)) / (sd(null) / √n_perm)``.

    Parameters
    ----------
    adata
        AnnData with latents, activities (:func:`pertgrn.pp.tf_activity`) and communities
        (:func:`pertgrn.pp.tf_communities`), and the raw counts the activities came from.
    latent_key
        ``obsm`` key of the latents.
    activity_key
        ``obsm`` key of the activities.
    communities_key
        ``uns`` key of the communities.
    layer
        Layer holding the raw counts; ``None`` uses ``X``.
    constraint
        ``"none"`` (closed form) or ``"orthogonal"`` (Adam from a seeded start per fit).
    n_perm
        Community permutations (paper: 100).
    n_fits
        Fits of ``A`` averaged per permutation (paper: 3).
    n_fits_observed
        Fits of ``A`` on the true communities (paper: 100; the closed form needs one).
    fit_mask
        Cells that fit ``A`` and the permuted eigengenes (``None``: all cells).
    n_steps
        Adam steps per fit (orthogonal).
    seed
        Seed of the permutations and the fits.
    key_added
        Key of ``adata.uns`` written.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``; writes ``uns[key_added]`` with
    ``observed`` (the ``n_fits_observed`` T-MEX values), ``observed_mean``, ``observed_sd``,
    ``null`` (``n_perm`` values), ``null_mean``, ``null_sd``, ``t``, ``pvalue`` (the paper's
    t-test), ``pvalue_permutation`` (``(1 + #{null ≥ observed}) / (1 + n_perm)``, which stays valid
    when the permutations repeat), ``n_distinct_permutations`` and ``params``. With few TFs the
    permutations repeat (6 TFs in 3 pairs form 15 distinct groupings); the t-test then treats
    copies as independent draws and its p-value overstates the evidence (logged).

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(n_tf_modules=3, seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> pg.pp.reference_grn(adata, tfs=adata.var_names[adata.var["true_tf_module"] >= 0])
    >>> pg.pp.tf_communities(adata, n_runs=10, n_perm=0)
    >>> pg.pp.tf_activity(adata)
    >>> adata.obsm["X_gcrlae"] = adata.obsm["true_tf_module_activity"]  # stand-in for AE latents
    >>> pg.tl.community_permutation_test(adata, n_perm=20)
    >>> result = adata.uns["community_permutation_test"]
    >>> bool(result["observed_mean"] > result["null_mean"])
    True
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, found {type(adata).__name__}.")
    if not isinstance(copy, bool):
        raise TypeError(f"`copy` must be True or False, found {copy!r}.")
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"`key_added` must be a non-empty string, found {key_added!r}.")
    _check_choice("constraint", constraint, CONSTRAINTS)
    solver = _resolve_solver(constraint, None)
    n_perm = check_int("n_perm", n_perm, 2)
    n_fits = check_int("n_fits", n_fits, 1)
    n_fits_observed = check_int("n_fits_observed", n_fits_observed, 1)
    n_steps = check_int("n_steps", n_steps, 1)
    seed = check_int("seed", seed, 0)
    z, tfa = _arrays(adata, latent_key, activity_key)
    fit = _mask(adata, fit_mask, "fit_mask")
    communities = adata.uns.get(communities_key)
    if not isinstance(communities, Mapping) or "communities" not in communities:
        raise KeyError(f"adata.uns[{communities_key!r}] holds no TF communities; run `pertgrn.pp.tf_communities`.")
    base = activity_key[2:] if activity_key.startswith("X_") and len(activity_key) > 2 else activity_key
    record = adata.uns.get(base)
    if not isinstance(record, Mapping) or not {"tfs", "mean", "sd", "target_sum"} <= set(record):
        raise KeyError(f"adata.uns[{base!r}] holds no activity record of `pertgrn.pp.tf_activity`.")
    table = pd.DataFrame(communities["communities"])
    K = int(table["community"].max()) + 1
    if tfa.shape[1] != K + 1:
        raise ValueError(f"adata.obsm[{activity_key!r}] has {tfa.shape[1]} columns; {K} communities need {K + 1}.")
    if K < 2:
        raise ValueError(f"Permuting TFs across communities needs at least 2 communities, found {K}.")
    tfs, Z = _zscored_tfs(adata, record, layer)
    community_of = dict(zip(table["tf"].astype(str), table["community"].astype(int), strict=True))
    labels = np.array([community_of.get(t, -1) for t in tfs], dtype=np.int64)
    partitioned = np.flatnonzero(labels >= 0)
    if constraint == "orthogonal":
        if z.shape[1] != K + 1:
            raise ValueError(f"An orthogonal A needs {K + 1} latents, found {z.shape[1]}.")
        z = _standardise(z, fit)

    def score(activities: np.ndarray, seeds: list[int]) -> float:
        forms = tmex_forms(z[fit], activities[fit])
        values = []
        for s in seeds:
            _, rho = _fit(forms, constraint, solver, [s], n_steps=n_steps)
            values.append(np.abs(rho).mean() if constraint == "orthogonal" else rho.mean())
        return float(np.mean(values))

    n_observed = 1 if solver == "closed_form" else n_fits_observed
    observed = np.array([score(tfa, [seed + i]) for i in range(n_observed)])
    from pertgrn.pp._tf_communities import canonical

    rng = np.random.default_rng(seed)
    null = np.empty(n_perm)
    seen: set[bytes] = set()
    for p in progress(range(n_perm), desc="community_permutation_test", unit="permutation"):
        shuffled = labels.copy()
        shuffled[partitioned] = rng.permutation(labels[partitioned])
        seen.add(canonical(shuffled[partitioned]).tobytes())  # the same grouping under other labels is the same
        activities = np.column_stack([community_activities(Z, shuffled, fit), tfa[:, -1]])
        null[p] = score(
            activities, [seed + 1000 * (p + 1) + f for f in range(1 if solver == "closed_form" else n_fits)]
        )
    observed_mean = float(observed.mean())
    t, pvalue = one_tailed_ttest(null, observed_mean)
    empirical = (1.0 + float(np.sum(null >= observed_mean))) / (1.0 + n_perm)
    if len(seen) < n_perm:
        logger.warning(
            "community_permutation_test: only %d distinct community assignments among %d permutations (%d TFs in "
            "%d communities); the null values repeat, so the t-test's p-value overstates the evidence. "
            "The permutation p-value is %.3g.",
            len(seen),
            n_perm,
            partitioned.size,
            K,
            empirical,
        )
    logger.info(
        "community_permutation_test: T-MEX %.4f (communities) vs %.4f ± %.4f (%d permutations): t = %.2f, p = %.3g",
        observed_mean,
        null.mean(),
        null.std(ddof=1),
        n_perm,
        t,
        pvalue,
    )
    result = {
        "observed": observed,
        "observed_mean": observed_mean,
        "observed_sd": float(observed.std(ddof=1)) if observed.size > 1 else 0.0,
        "null": null,
        "null_mean": float(null.mean()),
        "null_sd": float(null.std(ddof=1)),
        "t": t,
        "pvalue": pvalue,
        "pvalue_permutation": empirical,
        "n_distinct_permutations": len(seen),
        "params": {
            "latent_key": latent_key,
            "activity_key": activity_key,
            "communities_key": communities_key,
            "constraint": constraint,
            "n_perm": n_perm,
            "n_fits": n_fits,
            "n_fits_observed": n_observed,
            "seed": seed,
        },
    }
    out = adata.copy() if copy else adata
    out.uns[key_added] = result
    return out if copy else None

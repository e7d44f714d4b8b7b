"""T-MEX alignment of learned latents with transcription-factor community activities (gCRL appendix A.4)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pertgrn.metrics._align import _as_2d_float


def _residuals(targets: np.ndarray, conditioning: np.ndarray) -> np.ndarray:
    """Residuals of least-squares regressions (with intercept) of each column of ``targets`` on ``conditioning``."""
    design = np.column_stack([np.ones(targets.shape[0]), conditioning])
    coef, *_ = np.linalg.lstsq(design, targets, rcond=None)
    return targets - design @ coef


def tmex(
    z: np.ndarray | pd.DataFrame,
    tfa: np.ndarray | pd.DataFrame,
    *,
    given: str = "activities",
    absolute: bool = True,
    per_component: bool = False,
) -> float | pd.Series:
    """T-MEX alignment score: mean partial correlation of each latent with its TF-community activity.

    For component j, the partial correlation of ``z[:, j]`` and ``tfa[:, j]`` given a conditioning
    set C_j, computed as the Pearson correlation of the residuals of least-squares regressions
    (with intercept) of both on C_j; the score is the mean over j (of absolute values by default,
    since the sign of a latent is arbitrary).

    C_j follows the Test-based Measurement EXclusivity (T-MEX) score introduced in "The third pillar
    of causal analysis? A measurement perspective on causal representations" (2025; code:
    shimenghuang/a-measurement-perspective-of-crl, ``eval_numerical.py``), where a learned latent is
    tested against its target factor *given the other true factors* (there with conditional
    independence tests; a linear partial correlation is the statistic of such a test with linear
    regressions). Here the true factors are the TF-community activities, so by default C_j is every
    other activity column:

    - ``given="activities"``: C_j = ``tfa[:, ≠ j]`` (T-MEX; default);
    - ``given="latents"``: C_j = ``z[:, ≠ j]``;
    - ``given="both"``: C_j = ``z[:, ≠ j]`` and ``tfa[:, ≠ j]`` (the partial correlation of the pair
      given all other variables, i.e. from the precision matrix of ``[z, tfa]``).

    gCRL (appendix A.4) defines T-MEX as ``(1/d) Σ_i ρ(Z_i, TFA_i | TFA_{−i})``: the default
    ``given="activities"``, averaged over the signed partial correlations (``absolute=False``);
    there a free linear map of the latents can flip any sign, so the optimum is non-negative. This
    redefines the original T-MEX, a count of conditional-independence test outcomes that disagree
    with the expected pairing (lower is better), as a score where higher is better.

    Parameters
    ----------
    z
        Learned latents, cells × d (array or DataFrame).
    tfa
        TF-community activities, cells × d; column j is the counterpart of latent j (after the
        latent ↔ community matching). Two DataFrames are aligned on their row labels.
    given
        Conditioning set: ``"activities"``, ``"latents"`` or ``"both"`` (see above).
    absolute
        Average ``|partial correlation|`` (default) rather than signed values.
    per_component
        Return the (absolute, if ``absolute``) partial correlation of every component instead of the mean.

    Returns
    -------
    The T-MEX alignment score (float; in [0, 1] with ``absolute=True``), or a :class:`~pandas.Series`
    per component (indexed by ``z``'s column labels).

    Raises
    ------
    ValueError
        If shapes differ, values are non-finite, a column is constant, there are too few cells for
        the conditioning set, or ``given`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from pertgrn.metrics import tmex
    >>> rng = np.random.default_rng(0)
    >>> tfa = rng.normal(size=(500, 3))
    >>> z = tfa[:, [0, 1, 2]] + 0.1 * rng.normal(size=(500, 3))  # aligned latents
    >>> tmex(z, tfa) > 0.9 > tmex(z[:, [1, 2, 0]], tfa)
    True
    """
    if given not in ("activities", "latents", "both"):
        raise ValueError(f"`given` must be 'activities', 'latents' or 'both', got {given!r}.")
    labels = z.columns if isinstance(z, pd.DataFrame) else None
    if isinstance(z, pd.DataFrame) and isinstance(tfa, pd.DataFrame):
        if not z.index.is_unique or set(z.index) != set(tfa.index):
            raise ValueError("`z` and `tfa` DataFrames must have the same unique row (cell) labels.")
        tfa = tfa.loc[z.index]
    zz, tt = _as_2d_float(z, "z"), _as_2d_float(tfa, "tfa")
    if zz.shape != tt.shape:
        raise ValueError(f"`z` has shape {zz.shape} but `tfa` has shape {tt.shape}; column j of each must pair up.")
    if not (np.isfinite(zz).all() and np.isfinite(tt).all()):
        raise ValueError("`z` and `tfa` must not contain NaN or inf.")
    n, d = zz.shape
    n_cond = {"activities": d - 1, "latents": d - 1, "both": 2 * (d - 1)}[given]
    if n < n_cond + 3:
        raise ValueError(f"Need more than {n_cond + 2} cells to condition on {n_cond} variables, got {n}.")
    for arr, name in ((zz, "z"), (tt, "tfa")):
        const = np.flatnonzero(np.ptp(arr, axis=0) == 0)
        if const.size:
            raise ValueError(f"`{name}` has constant columns {const.tolist()}; their partial correlation is undefined.")
    values = np.empty(d)
    for j in range(d):
        others = np.arange(d) != j
        cond = {
            "activities": tt[:, others],
            "latents": zz[:, others],
            "both": np.hstack([zz[:, others], tt[:, others]]),
        }[given]
        res = _residuals(np.column_stack([zz[:, j], tt[:, j]]), cond)
        norms = np.linalg.norm(res, axis=0)
        scale = np.linalg.norm(np.column_stack([zz[:, j], tt[:, j]]) - [zz[:, j].mean(), tt[:, j].mean()], axis=0)
        if (norms <= 1e-12 * scale).any():
            values[j] = np.nan  # a variable is fully explained by the conditioning set
        else:
            values[j] = float(res[:, 0] @ res[:, 1] / (norms[0] * norms[1]))
    if absolute:
        values = np.abs(values)
    if per_component:
        index = labels if labels is not None else pd.RangeIndex(d)
        return pd.Series(values, index=index, name="partial_correlation")
    return float(np.mean(values))

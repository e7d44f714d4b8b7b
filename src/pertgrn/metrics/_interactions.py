"""Genetic-interaction scores of double perturbations (Norman et al. 2019, as computed in GEARS) and their precision@k.

For a double perturbation A+B with mean expression changes (versus control) ``δa``, ``δb`` and
``δab`` over genes, Norman et al. (2019, Science 365:786, "Exploring genetic interaction
manifolds constructed from rich single-cell phenotypes") fit ``δab ≈ c1·δa + c2·δb`` with a robust
Theil-Sen regression without intercept and describe the double by features of that fit. GEARS
(Roohani et al. 2023, Nat. Biotechnol.; snap-stanford/GEARS, ``get_coeffs``) computes them as
``mag = sqrt(c1² + c2²)``, ``dominance = |log10(c1/c2)|``, ``corr_fit = pearson(fit, δab)``,
``dcor_singles = dcor(δa, δb)`` and ``dcor = dcor([δa, δb], δab)`` (``dcor``: distance
correlation), and ranks predicted doubles per interaction type (precision of the top 10). The
RAPTORGraph evaluation (appendix D.4) reports precision@k per type, a type's true members being
the doubles in the top 25 % of the true score (bottom 25 % for suppression); that is what
:func:`interaction_precision_at_k` computes.

Two definitions of the scores live here, named apart:

- :func:`interaction_scores` — GEARS' regression-based scores (Norman et al. 2019's fit);
- :func:`additive_interaction_scores` — RAPTORGraph's scores against the naive additive
  reference ``δa + δb`` (appendix D.4, eqs. S11–S15), which the RAPTORGraph tables report.

Both return the columns ``synergy``, ``neomorphism``, ``redundancy`` and ``epistasis``, so
:func:`interaction_precision_at_k` ranks either; numbers from one definition are not comparable
with the other's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist

from pertgrn.metrics._align import _as_2d_float

#: interaction type -> (score column, which tail of the true score defines its members)
INTERACTION_TYPES: dict[str, tuple[str, str]] = {
    "synergy": ("synergy", "top"),
    "suppression": ("synergy", "bottom"),
    "neomorphism": ("neomorphism", "top"),
    "redundancy": ("redundancy", "top"),
    "epistasis": ("epistasis", "top"),
}

_SCORE_COLUMNS = ["synergy", "epistasis", "neomorphism", "redundancy", "c1", "c2", "corr_fit", "dcor_singles", "dcor"]


def _distance_correlation(x: np.ndarray, y: np.ndarray, block_size: int = 512) -> float:
    """Distance correlation dCor(x, y) of Székely et al. (2007), the quantity ``dcor.distance_correlation`` returns.

    Uses ``dCov²_n = S1 + S2 − 2·S3`` with ``S1 = mean(a_ij b_ij)``, ``S2 = mean(a)·mean(b)``,
    ``S3 = mean_i(rowmean(a)_i · rowmean(b)_i)`` (a, b: pairwise Euclidean distance matrices),
    accumulated block by block so memory stays ``O(block_size · n)``. NaN when a sample is constant.
    """
    x = x.reshape(len(x), -1)
    y = y.reshape(len(y), -1)
    n = x.shape[0]
    ra, rb = np.zeros(n), np.zeros(n)
    s_ab = s_aa = s_bb = 0.0
    for i in range(0, n, block_size):
        a = cdist(x[i : i + block_size], x)
        b = cdist(y[i : i + block_size], y)
        ra[i : i + block_size] = a.sum(axis=1)
        rb[i : i + block_size] = b.sum(axis=1)
        s_ab += float((a * b).sum())
        s_aa += float((a * a).sum())
        s_bb += float((b * b).sum())
    ma, mb = ra / n, rb / n  # row means
    ga, gb = ma.mean(), mb.mean()  # grand means
    dcov = s_ab / n**2 + ga * gb - 2.0 * float(ma @ mb) / n
    dvar_x = s_aa / n**2 + ga * ga - 2.0 * float(ma @ ma) / n
    dvar_y = s_bb / n**2 + gb * gb - 2.0 * float(mb @ mb) / n
    denom = np.sqrt(dvar_x * dvar_y)
    if not denom > 1e-300:
        return float("nan")
    return float(np.sqrt(max(dcov / denom, 0.0)))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denom) if denom > 0 else float("nan")


def _scores_one(a: np.ndarray, b: np.ndarray, ab: np.ndarray, regression: str, random_state: int) -> list[float]:
    singles = np.column_stack([a, b])
    if regression == "theil_sen":
        from sklearn.linear_model import TheilSenRegressor

        model = TheilSenRegressor(
            fit_intercept=False, max_subpopulation=int(1e5), max_iter=1000, random_state=random_state
        )
        model.fit(singles, ab)
        c1, c2 = (float(c) for c in model.coef_)
    else:
        coef, *_ = np.linalg.lstsq(singles, ab, rcond=None)
        c1, c2 = float(coef[0]), float(coef[1])
    fit = singles @ np.array([c1, c2])
    corr_fit = _pearson(fit, ab)
    with np.errstate(divide="ignore", invalid="ignore"):
        dominance = float(np.abs(np.log10(np.abs(c1) / np.abs(c2))))
    dcor_singles = _distance_correlation(a, b)
    dcor = _distance_correlation(singles, ab)
    return [float(np.hypot(c1, c2)), dominance, 1.0 - corr_fit, dcor_singles, c1, c2, corr_fit, dcor_singles, dcor]


def _aligned_deltas(
    delta_a: pd.DataFrame | np.ndarray, delta_b: pd.DataFrame | np.ndarray, delta_ab: pd.DataFrame | np.ndarray
) -> tuple[list[np.ndarray], pd.Index | None, bool]:
    """The effect tables as aligned arrays (doubles × genes), their row labels, and whether vectors were given."""
    vectors = all(not isinstance(d, pd.DataFrame) and np.ndim(d) == 1 for d in (delta_a, delta_b, delta_ab))
    if vectors:
        arrays = [np.asarray(d, dtype=np.float64).reshape(1, -1) for d in (delta_a, delta_b, delta_ab)]
        index = None
    elif all(isinstance(d, pd.DataFrame) for d in (delta_a, delta_b, delta_ab)):
        rows, cols = delta_ab.index, delta_ab.columns
        for d, name in ((delta_a, "delta_a"), (delta_b, "delta_b"), (delta_ab, "delta_ab")):
            if not (d.index.is_unique and d.columns.is_unique):
                raise ValueError(f"`{name}` has duplicated row or column labels.")
            if set(d.index) != set(rows) or set(d.columns) != set(cols):
                raise ValueError(f"`{name}` must have the same doubles (rows) and genes (columns) as `delta_ab`.")
        arrays = [_as_2d_float(d.loc[rows, cols], n) for d, n in ((delta_a, "delta_a"), (delta_b, "delta_b"))]
        arrays.append(_as_2d_float(delta_ab, "delta_ab"))
        index = rows
    else:
        arrays = [_as_2d_float(d, n) for d, n in ((delta_a, "delta_a"), (delta_b, "delta_b"), (delta_ab, "delta_ab"))]
        index = pd.RangeIndex(arrays[0].shape[0])
    if not arrays[0].shape == arrays[1].shape == arrays[2].shape:
        raise ValueError(f"Shapes differ: {[a.shape for a in arrays]}; delta_a, delta_b, delta_ab must match.")
    if arrays[0].shape[1] < 3:
        raise ValueError(f"Need at least 3 genes to fit the interaction model, got {arrays[0].shape[1]}.")
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError("delta_a, delta_b and delta_ab must not contain NaN or inf.")
    return arrays, index, vectors


def interaction_scores(
    delta_a: pd.DataFrame | np.ndarray,
    delta_b: pd.DataFrame | np.ndarray,
    delta_ab: pd.DataFrame | np.ndarray,
    *,
    regression: str = "theil_sen",
    random_state: int = 1000,
) -> pd.Series | pd.DataFrame:
    """Genetic-interaction scores of double perturbations: synergy, epistasis, neomorphism, redundancy.

    Fits ``δab ≈ c1·δa + c2·δb`` (no intercept) and returns, following Norman et al. 2019 as
    computed by GEARS (``get_coeffs``):

    ``synergy``
        Magnitude ``sqrt(c1² + c2²)`` (GEARS' ``mag``): > 1 synergy, < 1 suppression.
    ``epistasis``
        Dominance ``|log10(|c1| / |c2|)|``: one single dominates the double (GEARS takes
        ``log10(c1/c2)``, NaN for opposite signs; absolute values keep it defined).
    ``neomorphism``
        ``1 − corr_fit``, with ``corr_fit`` the Pearson correlation between the fitted ``c1·δa + c2·δb``
        and ``δab``: high when the double does something the singles do not explain.
    ``redundancy``
        ``dcor_singles``, the distance correlation between ``δa`` and ``δb``: high when the two
        singles have the same effect.

    plus the raw ``c1``, ``c2``, ``corr_fit``, ``dcor_singles`` and ``dcor`` (distance correlation of
    ``[δa, δb]`` with ``δab``).

    Parameters
    ----------
    delta_a
        Expression change of the first single perturbation versus control: a vector over genes,
        or a table doubles × genes (row i: the first single of double i).
    delta_b
        Expression change of the second single, same shape.
    delta_ab
        Expression change of the double, same shape. With DataFrames, the three tables must have
        the same row labels (doubles) and columns (genes), in any order.
    regression
        ``"theil_sen"`` (default; Norman et al. and GEARS: scikit-learn's
        :class:`~sklearn.linear_model.TheilSenRegressor`, ``max_subpopulation=1e5``) or ``"ols"``
        (least squares; faster).
    random_state
        Seed of the Theil-Sen subsampling (GEARS uses 1000).

    Returns
    -------
    A :class:`~pandas.Series` of the scores for vectors, or a :class:`~pandas.DataFrame` doubles ×
    scores for tables.

    Raises
    ------
    ValueError
        If shapes or labels differ, values are non-finite, fewer than 3 genes are given, or
        ``regression`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from pertgrn.metrics import interaction_scores
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=200), rng.normal(size=200)
    >>> s = interaction_scores(a, b, 2 * a + 2 * b, regression="ols")  # a synergistic double
    >>> s[["synergy", "epistasis", "neomorphism"]].round(3).abs().tolist()
    [2.828, 0.0, 0.0]
    """
    if regression not in ("theil_sen", "ols"):
        raise ValueError(f"`regression` must be 'theil_sen' or 'ols', got {regression!r}.")
    arrays, index, vectors = _aligned_deltas(delta_a, delta_b, delta_ab)
    table = np.array(
        [_scores_one(a, b, ab, regression, random_state) for a, b, ab in zip(*arrays, strict=True)], dtype=np.float64
    )
    if vectors:
        return pd.Series(table[0], index=_SCORE_COLUMNS, name="interaction_scores")
    return pd.DataFrame(table, index=index, columns=_SCORE_COLUMNS)


_ADDITIVE_COLUMNS = ["synergy", "neomorphism", "redundancy", "epistasis", "cos_a", "cos_b", "cos_additive"]


def _cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (NaN where a row is all zeros)."""
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, (x * y).sum(axis=1) / norms, np.nan)


def additive_interaction_scores(
    delta_a: pd.DataFrame | np.ndarray,
    delta_b: pd.DataFrame | np.ndarray,
    delta_ab: pd.DataFrame | np.ndarray,
) -> pd.Series | pd.DataFrame:
    """Genetic-interaction scores of double perturbations against the naive additive reference (RAPTORGraph D.4).

    With ``δ_naive = δa + δb`` (eq. S11) and ``cos`` the cosine similarity over genes:

    ``synergy``
        ``‖δab‖₂ / ‖δ_naive‖₂`` (eq. S12): > 1 synergy, < 1 suppression (ranked from the bottom).
    ``neomorphism``
        ``1 − cos(δab, δ_naive)`` (eq. S13): the double points somewhere the singles do not.
    ``redundancy``
        ``min(cos(δab, δa), cos(δab, δb))`` (eq. S14): the double resembles both singles.
    ``epistasis``
        ``|cos(δab, δa) − cos(δab, δb)|`` (eq. S15): one single dominates the double.

    plus ``cos_a``, ``cos_b`` and ``cos_additive``. These are **not** GEARS' regression-based
    scores (:func:`interaction_scores`), and the two are not comparable.

    Parameters
    ----------
    delta_a
        Expression change of the first single versus control: a vector over genes, or a table
        doubles × genes (row i: the first single of double i).
    delta_b
        Expression change of the second single, same shape.
    delta_ab
        Expression change of the double, same shape. DataFrames are aligned on their row labels
        (doubles) and columns (genes).

    Returns
    -------
    A :class:`~pandas.Series` of the scores for vectors, or a :class:`~pandas.DataFrame` doubles ×
    scores for tables. Scores are NaN where a vector is all zeros.

    Raises
    ------
    ValueError
        If shapes or labels differ, values are non-finite or fewer than 3 genes are given.

    Examples
    --------
    >>> import numpy as np
    >>> from pertgrn.metrics import additive_interaction_scores
    >>> a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    >>> additive_interaction_scores(a, b, 2 * (a + b))[["synergy", "neomorphism"]].round(6).tolist()
    [2.0, 0.0]
    >>> additive_interaction_scores(a, b, a)[["epistasis", "redundancy"]].tolist()
    [1.0, 0.0]
    """
    (a, b, ab), index, vectors = _aligned_deltas(delta_a, delta_b, delta_ab)
    naive = a + b
    naive_norm = np.linalg.norm(naive, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        synergy = np.where(naive_norm > 0, np.linalg.norm(ab, axis=1) / naive_norm, np.nan)
    cos_a, cos_b, cos_naive = _cosine(ab, a), _cosine(ab, b), _cosine(ab, naive)
    table = np.column_stack(
        [synergy, 1.0 - cos_naive, np.minimum(cos_a, cos_b), np.abs(cos_a - cos_b), cos_a, cos_b, cos_naive]
    )
    if vectors:
        return pd.Series(table[0], index=_ADDITIVE_COLUMNS, name="additive_interaction_scores")
    return pd.DataFrame(table, index=index, columns=_ADDITIVE_COLUMNS)


def interaction_precision_at_k(
    pred_scores: pd.DataFrame,
    true_scores: pd.DataFrame,
    *,
    k: int = 10,
    quantile: float = 0.25,
) -> pd.Series:
    """Precision@k of predicted genetic-interaction types (GEARS / RAPTORGraph protocol).

    For each interaction type, the true members are the doubles whose *true* score lies in the
    top ``quantile`` of the true scores (``score ≥ np.quantile(true, 1 − quantile)``), or in the
    bottom ``quantile`` for suppression (``score ≤ np.quantile(true, quantile)``). The ``k`` doubles
    with the highest *predicted* score (lowest for suppression; ties broken by the row order of ``true_scores``) are
    checked, and precision@k is the fraction of them that are true members.

    Types and scores: synergy — ``synergy``, top; suppression — ``synergy``, bottom;
    neomorphism — ``neomorphism``, top; redundancy — ``redundancy``, top; epistasis —
    ``epistasis``, top.

    Parameters
    ----------
    pred_scores
        Scores of :func:`interaction_scores` computed on predicted expression changes, doubles × scores.
    true_scores
        The same scores computed on observed expression changes. Rows are aligned on the doubles
        shared by both tables.
    k
        Number of top-ranked predicted doubles per type.
    quantile
        Fraction of doubles (by true score) that make up each type's true members.

    Returns
    -------
    A :class:`~pandas.Series` of precision@k indexed by interaction type (types whose score column
    is missing from either table are left out). Doubles with a non-finite true or predicted score
    are ignored for that type.

    Raises
    ------
    ValueError
        If the tables share no double, no type can be evaluated, ``quantile`` is not in (0, 1), or
        ``k`` is not a positive integer no larger than the number of doubles with finite scores.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from pertgrn.metrics import interaction_precision_at_k
    >>> true = pd.DataFrame({"synergy": np.arange(8.0)}, index=[f"d{i}" for i in range(8)])
    >>> interaction_precision_at_k(true, true, k=2).to_dict()
    {'synergy': 1.0, 'suppression': 1.0}
    """
    for df, name in ((pred_scores, "pred_scores"), (true_scores, "true_scores")):
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"`{name}` must be a DataFrame doubles × scores, got {type(df).__name__}.")
        if not df.index.is_unique:
            raise ValueError(f"`{name}` has duplicated row labels.")
    if not 0 < quantile < 1:
        raise ValueError(f"`quantile` must be in (0, 1), got {quantile!r}.")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"`k` must be a positive integer, got {k!r}.")
    rows = true_scores.index[true_scores.index.isin(pred_scores.index)]
    if len(rows) == 0:
        raise ValueError("`pred_scores` and `true_scores` share no double (row label).")
    result = {}
    for kind, (column, tail) in INTERACTION_TYPES.items():
        if column not in pred_scores.columns or column not in true_scores.columns:
            continue
        t = pd.to_numeric(true_scores.loc[rows, column], errors="raise").to_numpy(dtype=np.float64)
        p = pd.to_numeric(pred_scores.loc[rows, column], errors="raise").to_numpy(dtype=np.float64)
        ok = np.isfinite(t) & np.isfinite(p)
        t, p = t[ok], p[ok]
        if k > t.size:
            raise ValueError(f"`k`={k} exceeds the {t.size} doubles with finite {column!r} scores (type {kind!r}).")
        if tail == "top":
            members = t >= np.quantile(t, 1.0 - quantile)
            ranked = np.argsort(-p, kind="stable")
        else:
            members = t <= np.quantile(t, quantile)
            ranked = np.argsort(p, kind="stable")
        result[kind] = float(members[ranked[:k]].mean())
    if not result:
        needed = sorted({c for c, _ in INTERACTION_TYPES.values()})
        raise ValueError(f"No interaction type can be evaluated: need score columns among {needed} in both tables.")
    return pd.Series(result, name="precision_at_k")

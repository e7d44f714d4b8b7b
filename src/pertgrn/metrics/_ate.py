"""Agreement of predicted and observed average treatment effects (ATEs): Pearson ρ, R², top-k Jaccard."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pertgrn.metrics._align import align_tables


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b``; NaN where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    num = (a * b).sum(axis=1)
    return np.divide(num, denom, out=np.full(num.shape, np.nan), where=denom > 0)


def ate_pearson(
    pred: pd.DataFrame | np.ndarray,
    true: pd.DataFrame | np.ndarray,
    *,
    per_perturbation: bool = False,
) -> float | pd.Series:
    """Pearson correlation between predicted and observed average treatment effects.

    With ``per_perturbation=False`` (GPO-VAE's ATE ρ), the correlation is taken over the
    flattened perturbation × gene matrix; otherwise one correlation per perturbation, across genes.

    Parameters
    ----------
    pred
        Predicted ATEs, perturbations × genes (DataFrame, or array of the same shape as ``true``).
    true
        Observed ATEs, perturbations × genes.
    per_perturbation
        Return one value per perturbation (a Series indexed by perturbation) instead of one number.

    Returns
    -------
    The Pearson correlation (float), or a :class:`~pandas.Series` of correlations per perturbation
    (NaN where a row is constant).

    Raises
    ------
    ValueError
        If two DataFrames share no perturbation or no gene label, if arrays have different shapes
        (alignment is only possible with labels on both), or values are non-finite.

    Notes
    -----
    Two DataFrames are aligned on their shared index (perturbations) and shared columns (genes);
    labels found in only one of them are dropped (logged at INFO level).

    Examples
    --------
    >>> import pandas as pd
    >>> from pertgrn.metrics import ate_pearson
    >>> true = pd.DataFrame([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]], index=["A", "B"], columns=["g1", "g2", "g3"])
    >>> round(ate_pearson(2 * true, true), 6)
    1.0
    >>> ate_pearson(true, true, per_perturbation=True).round(3).tolist()
    [1.0, 1.0]
    """
    p, t, rows, _ = align_tables(pred, true)
    if per_perturbation:
        return pd.Series(_rowwise_pearson(p, t), index=rows, name="pearson")
    return float(_rowwise_pearson(p.reshape(1, -1), t.reshape(1, -1))[0])


def ate_r2(
    pred: pd.DataFrame | np.ndarray,
    true: pd.DataFrame | np.ndarray,
    *,
    per_perturbation: bool = False,
) -> float | pd.Series:
    """Coefficient of determination R² of predicted against observed average treatment effects.

    Computed as :func:`sklearn.metrics.r2_score` ``(true.ravel(), pred.ravel())`` over the flattened
    perturbation × gene matrix, or, with ``per_perturbation=True``, per perturbation across genes.

    Parameters
    ----------
    pred
        Predicted ATEs, perturbations × genes (DataFrame, or array of the same shape as ``true``).
    true
        Observed ATEs, perturbations × genes.
    per_perturbation
        Return one R² per perturbation (a Series indexed by perturbation) instead of one number.

    Returns
    -------
    R² (float), or a :class:`~pandas.Series` of R² per perturbation. R² is not symmetric: ``true``
    provides the total sum of squares. As in scikit-learn, a constant ``true`` row gives 1.0 for a
    perfect prediction and 0.0 otherwise.

    Raises
    ------
    ValueError
        If two DataFrames share no perturbation or no gene label, if arrays have different shapes,
        or values are non-finite.

    Notes
    -----
    Two DataFrames are aligned on their shared index and columns (labels in only one are dropped).

    Examples
    --------
    >>> import numpy as np
    >>> from pertgrn.metrics import ate_r2
    >>> true = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
    >>> ate_r2(true, true)
    1.0
    >>> round(ate_r2(np.zeros_like(true), true), 4)  # 1 - 15 / (15 - 6 * (7/6)**2)
    -1.1951
    """
    from sklearn.metrics import r2_score

    p, t, rows, _ = align_tables(pred, true)
    if per_perturbation:
        values = r2_score(t.T, p.T, multioutput="raw_values")
        return pd.Series(np.asarray(values, dtype=np.float64), index=rows, name="r2")
    return float(r2_score(t.ravel(), p.ravel()))


def _topk_mask(values: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` entries of largest ``|value|`` in each row (ties: first column first)."""
    order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]
    mask = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def topk_jaccard(
    pred: pd.DataFrame | np.ndarray,
    true: pd.DataFrame | np.ndarray,
    *,
    k: int = 50,
    per_perturbation: bool = False,
) -> float | pd.Series:
    """Jaccard index of the top-k genes by absolute ATE, predicted versus observed, averaged over perturbations.

    For each perturbation, the sets are the ``k`` genes of largest ``|ATE|`` in ``pred`` and in
    ``true``; the Jaccard index is ``|P ∩ T| / |P ∪ T|``. Ties in ``|ATE|`` are broken by column
    order (the first gene wins).

    Parameters
    ----------
    pred
        Predicted ATEs, perturbations × genes (DataFrame, or array of the same shape as ``true``).
    true
        Observed ATEs, perturbations × genes.
    k
        Number of top genes per perturbation; at most the number of (shared) genes.
    per_perturbation
        Return the Jaccard index of every perturbation (a Series) instead of their mean.

    Returns
    -------
    The mean Jaccard index (float in [0, 1]) or a :class:`~pandas.Series` per perturbation.

    Raises
    ------
    ValueError
        If ``k`` is not a positive integer no larger than the number of genes, or on alignment
        failures as in :func:`ate_pearson`.

    Examples
    --------
    >>> import numpy as np
    >>> from pertgrn.metrics import topk_jaccard
    >>> true = np.array([[5.0, -4.0, 0.1, 0.0]])
    >>> pred = np.array([[3.0, 0.0, -2.0, 0.1]])
    >>> round(topk_jaccard(pred, true, k=2), 4)  # {g0, g2} vs {g0, g1}: 1 shared of 3
    0.3333
    """
    p, t, rows, cols = align_tables(pred, true)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"`k` must be a positive integer, got {k!r}.")
    if k > p.shape[1]:
        raise ValueError(f"`k`={k} exceeds the number of genes compared ({p.shape[1]}).")
    mp, mt = _topk_mask(p, k), _topk_mask(t, k)
    inter = (mp & mt).sum(axis=1)
    jac = inter / (2 * k - inter)
    if per_perturbation:
        return pd.Series(jac.astype(np.float64), index=rows, name="jaccard")
    return float(jac.mean())

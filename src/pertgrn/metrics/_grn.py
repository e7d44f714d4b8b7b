"""Recovery of a known gene regulatory network (simulated data): AUPRC, precision@k, early precision (BEELINE)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pertgrn.metrics._align import _as_2d_float


def _flatten_candidates(
    scores: pd.DataFrame | np.ndarray,
    truth: pd.DataFrame | np.ndarray,
    exclude_diagonal: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """|scores| and the truth labels (bool) of every candidate edge, row-major, diagonal optionally removed."""
    if isinstance(scores, pd.DataFrame) and isinstance(truth, pd.DataFrame):
        for df, name in ((scores, "scores"), (truth, "truth")):
            if not (df.index.is_unique and df.columns.is_unique):
                raise ValueError(f"`{name}` has duplicated row or column labels.")
        if set(scores.index) != set(truth.index) or set(scores.columns) != set(truth.columns):
            raise ValueError(
                "`scores` and `truth` must have the same regulator (row) and target (column) labels; "
                f"rows only in scores: {sorted(set(scores.index) - set(truth.index))[:5]}, only in truth: "
                f"{sorted(set(truth.index) - set(scores.index))[:5]}; columns only in scores: "
                f"{sorted(set(scores.columns) - set(truth.columns))[:5]}, only in truth: "
                f"{sorted(set(truth.columns) - set(scores.columns))[:5]}."
            )
        rows, cols = truth.index, truth.columns
        s = _as_2d_float(scores.loc[rows, cols], "scores")
        t = _as_2d_float(truth, "truth")
        diag = np.asarray(rows)[:, None] == np.asarray(cols)[None, :]
    else:
        s, t = _as_2d_float(scores, "scores"), _as_2d_float(truth, "truth")
        if s.shape != t.shape:
            raise ValueError(f"`scores` has shape {s.shape} but `truth` has shape {t.shape}; they must match.")
        labelled = scores if isinstance(scores, pd.DataFrame) else truth if isinstance(truth, pd.DataFrame) else None
        if labelled is not None:
            diag = np.asarray(labelled.index)[:, None] == np.asarray(labelled.columns)[None, :]
        else:
            diag = np.eye(*s.shape, dtype=bool)
    if not np.isfinite(s).all():
        raise ValueError("`scores` must not contain NaN or inf.")
    if not np.isfinite(t).all():
        raise ValueError("`truth` must not contain NaN or inf.")
    keep = ~diag if exclude_diagonal else np.ones(s.shape, dtype=bool)
    abs_scores, labels = np.abs(s[keep]), t[keep] != 0
    if labels.size == 0:
        raise ValueError("No candidate edges to evaluate.")
    if not labels.any():
        raise ValueError("`truth` contains no edge (no nonzero entry) among the candidate edges.")
    return abs_scores, labels


def grn_auprc(
    scores: pd.DataFrame | np.ndarray,
    truth: pd.DataFrame | np.ndarray,
    *,
    exclude_diagonal: bool = True,
) -> float:
    """Area under the precision-recall curve of edge scores against a known network.

    Every (regulator, target) entry is a candidate edge, ranked by ``|score|``; an entry is a true
    edge when ``truth`` is nonzero there. Computed with
    :func:`sklearn.metrics.average_precision_score`.

    Parameters
    ----------
    scores
        Predicted edge scores, regulators (rows) × targets (columns): a DataFrame or an array.
        Signs are ignored.
    truth
        Known network of the same shape (nonzero = edge, sign and weight ignored). Two DataFrames
        must carry the same row and column labels (in any order); otherwise arrays (or one
        DataFrame and one array) must have the same shape.
    exclude_diagonal
        Leave self-edges out: entries whose row and column labels are equal (DataFrames) or
        ``i == j`` (arrays).

    Returns
    -------
    Average precision (float in [0, 1]); a random ranking scores about the edge density.

    Raises
    ------
    ValueError
        If shapes or labels differ, values are non-finite, or ``truth`` has no edge.

    Examples
    --------
    >>> import numpy as np
    >>> from pertgrn.metrics import grn_auprc
    >>> truth = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    >>> grn_auprc(truth * 0.9 + 0.1, truth)
    1.0
    """
    from sklearn.metrics import average_precision_score

    s, t = _flatten_candidates(scores, truth, exclude_diagonal)
    return float(average_precision_score(t, s))


def grn_precision_at_k(
    scores: pd.DataFrame | np.ndarray,
    truth: pd.DataFrame | np.ndarray,
    *,
    k: int,
    exclude_diagonal: bool = True,
) -> float:
    """Fraction of true edges among the ``k`` candidate edges of largest ``|score|``.

    Exactly ``k`` edges are taken; ties in ``|score|`` are broken by position (row-major order).

    Parameters
    ----------
    scores
        Predicted edge scores, regulators × targets (DataFrame or array); signs are ignored.
    truth
        Known network of the same shape (nonzero = edge), labelled as in :func:`grn_auprc`.
    k
        Number of top-ranked edges; at most the number of candidate edges.
    exclude_diagonal
        Leave self-edges out of the candidates.

    Returns
    -------
    Precision at ``k`` (float in [0, 1]).

    Raises
    ------
    ValueError
        If ``k`` is not a positive integer no larger than the number of candidates, and for the
        reasons listed in :func:`grn_auprc`.

    Examples
    --------
    >>> import numpy as np
    >>> from pertgrn.metrics import grn_precision_at_k
    >>> truth = np.array([[0, 1, 1], [0, 0, 0], [0, 0, 0]])
    >>> scores = np.array([[0.0, 0.9, 0.1], [0.8, 0.0, 0.2], [0.0, 0.0, 0.0]])
    >>> grn_precision_at_k(scores, truth, k=2)  # top two: (0, 1) true, (1, 0) false
    0.5
    """
    s, t = _flatten_candidates(scores, truth, exclude_diagonal)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"`k` must be a positive integer, got {k!r}.")
    if k > s.size:
        raise ValueError(f"`k`={k} exceeds the number of candidate edges ({s.size}).")
    top = np.argsort(-s, kind="stable")[:k]
    return float(t[top].mean())


def grn_early_precision(
    scores: pd.DataFrame | np.ndarray,
    truth: pd.DataFrame | np.ndarray,
    *,
    exclude_diagonal: bool = True,
    ratio: bool = False,
) -> float:
    """Early precision as in BEELINE (Pratapa et al. 2020): precision among the top-k edges, k = number of true edges.

    Follows BEELINE's ``EarlyPrecision`` exactly: scores are ``|score|`` rounded to 6 decimals;
    the cut-off is the larger of the k-th largest score and the smallest nonzero score, and every
    candidate at or above it is selected (so ties at the cut-off are all included and zero scores
    never are). Early precision is the fraction of true edges among the selected ones (0 if nothing
    is selected).

    Parameters
    ----------
    scores
        Predicted edge scores, regulators × targets (DataFrame or array); signs are ignored.
    truth
        Known network of the same shape (nonzero = edge), labelled as in :func:`grn_auprc`.
    exclude_diagonal
        Leave self-edges out of the candidates (BEELINE ignores self-loops).
    ratio
        Return the early precision *ratio*: early precision divided by the precision of a random
        predictor, the edge density ``n_true_edges / n_candidate_edges``.

    Returns
    -------
    Early precision (float in [0, 1]), or its ratio to the random baseline when ``ratio=True``.

    Raises
    ------
    ValueError
        For the reasons listed in :func:`grn_auprc`.

    Examples
    --------
    >>> import numpy as np
    >>> from pertgrn.metrics import grn_early_precision
    >>> truth = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    >>> scores = np.array([[0.0, 0.9, 0.5], [0.1, 0.0, 0.2], [0.0, 0.3, 0.0]])
    >>> grn_early_precision(scores, truth)  # top 2 of 6: (0, 1) true, (0, 2) false
    0.5
    >>> grn_early_precision(scores, truth, ratio=True)  # density 2/6
    1.5
    """
    s, t = _flatten_candidates(scores, truth, exclude_diagonal)
    s = np.round(s, 6)
    n_true = int(t.sum())
    nonzero = s[s > 0]
    if nonzero.size == 0:
        precision = 0.0
    else:
        kth = np.sort(s)[::-1][min(n_true, s.size) - 1]
        selected = s >= max(float(nonzero.min()), float(kth))
        precision = float(t[selected].mean())
    if ratio:
        return precision / (n_true / t.size)
    return precision

"""Reverse perturbation prediction (RAPTORGraph appendix D.5): which perturbation produced an observed profile?"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy import sparse

from pertgrn._design import PerturbationDesign
from pertgrn._utils import logger
from pertgrn.metrics._align import _as_2d_float


def _similarity(q: np.ndarray, c: np.ndarray, metric: str) -> np.ndarray:
    """Queries × candidates similarity; larger means more alike."""
    if metric == "euclidean":
        d2 = (q * q).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2.0 * q @ c.T
        return -np.sqrt(np.maximum(d2, 0.0))
    if metric == "pearson":
        q = q - q.mean(axis=1, keepdims=True)
        c = c - c.mean(axis=1, keepdims=True)
    qn, cn = np.linalg.norm(q, axis=1), np.linalg.norm(c, axis=1)
    if (qn == 0).any() or (cn == 0).any():
        raise ValueError(
            f"A constant profile has no {metric} similarity; "
            f"{int((qn == 0).sum())} query and {int((cn == 0).sum())} candidate profiles are constant."
        )
    return (q / qn[:, None]) @ (c / cn[:, None]).T


def _target_lists(labels: Iterable[str], vocab: dict[str, int], delimiter: str) -> tuple[list[int], list[int], int]:
    """Row and column indices of a labels × targets multi-hot matrix; ``vocab`` grows with new targets."""
    rows, cols, n = [], [], 0
    for i, label in enumerate(labels):
        n = i + 1
        for t in set(PerturbationDesign(control="", delimiter=delimiter).split(label)):
            rows.append(i)
            cols.append(vocab.setdefault(t, len(vocab)))
    return rows, cols, n


def reverse_perturbation_hit_rate(
    query_profiles: pd.DataFrame,
    predicted_profiles: pd.DataFrame,
    *,
    k: int | Iterable[int] = (1, 3, 5),
    mode: str = "correct",
    metric: str = "pearson",
    delimiter: str = "+",
) -> pd.Series:
    """Hit rate@k of reverse perturbation prediction: is the true perturbation among the k best-matching candidates?

    Each query is an observed expression profile (e.g. the mean expression change of the cells of
    one perturbation, versus control) labelled with the perturbation that produced it. Candidates
    are the model's predicted profiles, one per candidate perturbation. Candidates are ranked by
    similarity to the query (``metric``; ties keep candidate order). A query is a hit at ``k``

    - ``mode="correct"``: if a candidate with the query's label is among the top ``k``;
      labels are compared as sets of targets, so ``"B+A"`` matches ``"A+B"``;
    - ``mode="relevant"``: if any of the top ``k`` shares at least one target gene with the
      query's label (labels split on ``delimiter``).

    Parameters
    ----------
    query_profiles
        Observed profiles, queries × genes; the index holds each query's true perturbation label
        (repeated labels are allowed, e.g. one query per replicate).
    predicted_profiles
        Predicted profiles, candidate perturbations × genes; the index holds unique candidate labels.
        Only the genes shared with ``query_profiles`` are used.
    k
        One cut-off or several.
    mode
        ``"correct"`` or ``"relevant"`` (see above).
    metric
        Similarity between profiles: ``"pearson"`` (default, correlation across genes),
        ``"cosine"`` or ``"euclidean"`` (smaller distance ranks first).
    delimiter
        String joining the targets of a combination label.

    Returns
    -------
    A :class:`~pandas.Series` of hit rates (fractions of queries) indexed by ``k``. In
    ``"correct"`` mode, queries whose label is not among the candidates can never be hits and are
    left out (logged); in ``"relevant"`` mode every query counts.

    Raises
    ------
    ValueError
        If ``mode`` or ``metric`` is unknown, a ``k`` is not in 1..n_candidates, the tables share no
        gene, candidate labels are duplicated, a profile is constant (pearson/cosine) or no query
        is left to evaluate.

    Examples
    --------
    >>> import pandas as pd
    >>> from pertgrn.metrics import reverse_perturbation_hit_rate
    >>> pred = pd.DataFrame([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.2, 1.0]], index=["A", "B", "A+C"])
    >>> query = pd.DataFrame([[0.9, 0.1, 0.0], [0.0, 0.1, 1.0]], index=["A", "C+A"])
    >>> reverse_perturbation_hit_rate(query, pred, k=[1, 2]).tolist()
    [1.0, 1.0]
    """
    if mode not in ("correct", "relevant"):
        raise ValueError(f"`mode` must be 'correct' or 'relevant', got {mode!r}.")
    if metric not in ("pearson", "cosine", "euclidean"):
        raise ValueError(f"`metric` must be 'pearson', 'cosine' or 'euclidean', got {metric!r}.")
    for df, name in ((query_profiles, "query_profiles"), (predicted_profiles, "predicted_profiles")):
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"`{name}` must be a DataFrame (index = perturbation labels), got {type(df).__name__}.")
        if not df.columns.is_unique:
            raise ValueError(f"`{name}` has duplicated gene (column) labels.")
    if not predicted_profiles.index.is_unique:
        dup = predicted_profiles.index[predicted_profiles.index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"Candidate labels in `predicted_profiles` must be unique; duplicated: {dup}.")
    ks = [k] if isinstance(k, int | np.integer) and not isinstance(k, bool) else list(k)
    n_cand = len(predicted_profiles)
    if not ks or any(isinstance(x, bool) or not isinstance(x, int | np.integer) or not 1 <= x <= n_cand for x in ks):
        raise ValueError(f"Every k must be an integer in 1..{n_cand} (the number of candidates), got {ks}.")
    genes = query_profiles.columns[query_profiles.columns.isin(predicted_profiles.columns)]
    if len(genes) == 0:
        raise ValueError("`query_profiles` and `predicted_profiles` share no gene (column).")
    q = _as_2d_float(query_profiles[genes], "query_profiles")
    c = _as_2d_float(predicted_profiles[genes], "predicted_profiles")
    if not (np.isfinite(q).all() and np.isfinite(c).all()):
        raise ValueError("Profiles must not contain NaN or inf.")

    vocab: dict[str, int] = {}
    lists = [_target_lists(df.index.astype(str), vocab, delimiter) for df in (query_profiles, predicted_profiles)]
    dq, dc = (sparse.csr_matrix((np.ones(len(r)), (r, cl)), shape=(n, len(vocab))) for r, cl, n in lists)
    shared = (dq @ dc.T).toarray()  # targets in common, queries × candidates
    if mode == "correct":
        nq = np.asarray(dq.sum(axis=1)).ravel()
        nc = np.asarray(dc.sum(axis=1)).ravel()
        match = (shared == nq[:, None]) & (shared == nc[None, :])
        keep = match.any(axis=1)
        if not keep.all():
            logger.info(
                "reverse perturbation: %d of %d queries have a label absent from the candidates and are left out",
                int((~keep).sum()),
                len(keep),
            )
        if not keep.any():
            raise ValueError("No query label is among the candidate labels; nothing to evaluate in 'correct' mode.")
        q, match = q[keep], match[keep]
    else:
        match = shared > 0
    sim = _similarity(q, c, metric)
    order = np.argsort(-sim, axis=1, kind="stable")[:, : max(ks)]
    hit_by_rank = np.logical_or.accumulate(np.take_along_axis(match, order, axis=1), axis=1)
    return pd.Series([float(hit_by_rank[:, x - 1].mean()) for x in ks], index=pd.Index(ks, name="k"), name="hit_rate")

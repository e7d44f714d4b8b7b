"""Small helpers shared across ``pp``, ``tl``, ``metrics`` and the models.

Nothing here writes to an :class:`~anndata.AnnData`; every function either reads or
returns new arrays, so callers can validate everything before they touch user data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from anndata import AnnData
from scipy import sparse

from pertgrn._constants import UNS_KEY

logger = logging.getLogger("pertgrn")


def get_matrix(adata: AnnData, layer: str | None = None) -> np.ndarray | sparse.spmatrix:
    """Return ``adata.X`` or ``adata.layers[layer]``, with an error that lists the layers present."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass `layer=` naming the layer that holds the counts.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"Layer {layer!r} not found in adata.layers; available layers: {sorted(adata.layers)}.")
    return adata.layers[layer]


def is_integer_counts(X: np.ndarray | sparse.spmatrix, *, n_check: int = 100_000) -> bool:
    """Whether ``X`` looks like raw UMI counts: non-negative and integer-valued.

    Checks at most ``n_check`` stored values (taken from the start of the data), which is
    what scvi-tools does as well, so that the test stays cheap on large screens.
    """
    data = X.data if sparse.issparse(X) else np.asarray(X).ravel()
    data = np.asarray(data[:n_check])
    if data.size == 0:
        return True
    return bool(np.all(data >= 0) and np.all(np.equal(np.mod(data, 1), 0)))


def check_counts(adata: AnnData, layer: str | None = None) -> np.ndarray | sparse.spmatrix:
    """Return the count matrix, raising a :class:`ValueError` if it is not raw integer counts."""
    X = get_matrix(adata, layer)
    if not is_integer_counts(X):
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        raise ValueError(
            f"Expected raw integer UMI counts in {where}, but found non-integer or negative values "
            "(log-normalised data?). Pass `layer=` naming a layer of raw counts."
        )
    return X


def library_size(X: np.ndarray | sparse.spmatrix) -> np.ndarray:
    """Total counts per cell as a flat float64 array."""
    return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()


def log_normalize(
    X: np.ndarray | sparse.spmatrix,
    *,
    target_sum: float | None = None,
    dtype: type = np.float32,
) -> np.ndarray | sparse.csr_matrix:
    """Normalise each cell to ``target_sum`` counts and take ``log1p``; returns a new matrix.

    Parameters
    ----------
    X
        Cells × genes raw counts, dense or sparse.
    target_sum
        Counts per cell after normalisation; ``None`` uses the median library size of ``X``
        (scanpy's default and CausalBench's convention).
    dtype
        Floating type of the result.

    Returns
    -------
    ``log1p(X / library_size * target_sum)`` with the same sparsity as ``X`` (CSR when sparse).

    Examples
    --------
    >>> import numpy as np
    >>> from pertgrn._utils import log_normalize
    >>> log_normalize(np.array([[1.0, 3.0], [2.0, 2.0]]), target_sum=4.0).round(3)
    array([[0.693, 1.386],
           [1.099, 1.099]], dtype=float32)
    """
    size = library_size(X)
    if target_sum is None:
        positive = size[size > 0]
        target_sum = float(np.median(positive)) if positive.size else 1.0
    scale = np.divide(target_sum, size, out=np.zeros_like(size), where=size > 0)
    if sparse.issparse(X):
        out = sparse.csr_matrix(X, dtype=dtype, copy=True)
        out.data *= np.repeat(scale, np.diff(out.indptr)).astype(dtype)
        np.log1p(out.data, out=out.data)
        return out
    out = np.asarray(X, dtype=dtype) * scale[:, None].astype(dtype)
    return np.log1p(out)


def to_dense(X: np.ndarray | sparse.spmatrix) -> np.ndarray:
    """Return a dense :class:`numpy.ndarray` view or copy of ``X``."""
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def get_design(adata: AnnData) -> dict[str, Any]:
    """Return the design recorded by :func:`pertgrn.pp.annotate_perturbations`, or explain how to make it."""
    design = adata.uns.get(UNS_KEY)
    if not isinstance(design, Mapping) or "control" not in design:
        raise KeyError(
            f"adata.uns[{UNS_KEY!r}] holds no perturbation design. "
            "Run `pertgrn.pp.annotate_perturbations(adata, ...)` first."
        )
    return dict(design)


def did_you_mean(name: str, choices: Sequence[str], *, n: int = 3) -> str:
    """`` Did you mean 'X'?`` for the closest of ``choices`` (case-insensitive), or an empty string.

    Examples
    --------
    >>> from pertgrn._utils import did_you_mean
    >>> did_you_mean("stat1", ["STAT1", "IRF1"])
    " Did you mean 'STAT1'?"
    """
    import difflib

    lowered = {str(c).lower(): str(c) for c in choices}
    matches = difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.6)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(lowered[m]) for m in matches) + "?"

"""Small helpers shared across ``pp``, ``tl``, ``metrics`` and the models.

Nothing here writes to an :class:`~anndata.AnnData`; every function either reads or
returns new arrays, so callers can validate everything before they touch user data.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from anndata import AnnData
from scipy import sparse

from pertgrn._constants import UNS_KEY
from pertgrn._settings import SUMMARY, logger

__all__ = ["SUMMARY", "logger"]  # re-exported: `from pertgrn._utils import logger` is how modules log


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int: a TypeError when it is not an integer, a ValueError when it is below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, found {type(value).__name__} ({value!r}).")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, found {value}.")
    return int(value)


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
    what scvi-tools does as well, so that the test stays cheap on large screens. A backed
    (on-disk) matrix is checked on its first rows, read without loading the rest.
    """
    if not (sparse.issparse(X) or isinstance(X, np.ndarray)) and hasattr(X, "shape") and len(X.shape) == 2:
        rows = max(1, min(X.shape[0], n_check // max(X.shape[1], 1)))  # backed: read the first rows only
        X = X[:rows]
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


def preview(values: Iterable[object], *, n: int = 20) -> str:
    """A list for an error message: all of it when short, else its first ``n`` items and the count.

    Examples
    --------
    >>> from pertgrn._utils import preview
    >>> preview(["A", "B"])
    "['A', 'B']"
    >>> preview(range(30), n=3)
    '[0, 1, 2, …] (first 3 of 30)'
    """
    values = list(values)
    if len(values) <= n:
        return repr(values)
    return repr(values[:n])[:-1] + f", …] (first {n} of {len(values)})"


def _canonical(name: str, delimiter: str | None) -> str:
    name = str(name).strip().lower()
    if delimiter:
        name = delimiter.join(sorted(t.strip() for t in name.split(delimiter)))
    return name


def suggest(name: str, choices: Iterable[object], *, delimiter: str | None = None, n: int = 3) -> list[str]:
    """The ``choices`` closest to a misspelt ``name``, best first (at most ``n``).

    A choice equal to ``name`` but for case (``stat1`` → ``STAT1``), or, with a ``delimiter``, but for
    the order of a combination's targets (``STAT1+JAK2`` → ``JAK2+STAT1``), comes first; then the
    close matches of :func:`difflib.get_close_matches`, compared case-insensitively.

    Parameters
    ----------
    name
        The name that was not found.
    choices
        The names that exist.
    delimiter
        String joining the targets of a combination, to compare combinations as sets.
    n
        Most suggestions returned.

    Returns
    -------
    A list of at most ``n`` existing names.

    Examples
    --------
    >>> from pertgrn._utils import suggest
    >>> suggest("stat1", ["STAT1", "STAT2", "JAK2"])
    ['STAT1', 'STAT2']
    >>> suggest("STAT1+JAK2", ["JAK2+STAT1", "STAT1"], delimiter="+")[0]
    'JAK2+STAT1'
    """
    options = list(dict.fromkeys(str(c) for c in choices))
    by_key: dict[str, list[str]] = {}
    for c in options:
        by_key.setdefault(_canonical(c, delimiter), []).append(c)
    key = _canonical(name, delimiter)
    found = [c for c in by_key.get(key, []) if c != str(name)]
    lowered: dict[str, list[str]] = {}
    for c in options:
        lowered.setdefault(c.lower(), []).append(c)
    for match in difflib.get_close_matches(str(name).lower(), list(lowered), n=n + len(found), cutoff=0.6):
        found += [c for c in lowered[match] if c not in found and c != str(name)]
    return found[:n]


def did_you_mean(names: Iterable[object], choices: Iterable[object], *, delimiter: str | None = None) -> str:
    """``" Did you mean 'STAT1'?"`` for the first of ``names`` with a close match in ``choices``, else ``""``.

    The text starts with a space, so it can be appended to any message.

    Examples
    --------
    >>> from pertgrn._utils import did_you_mean
    >>> did_you_mean(["stat1"], ["STAT1", "JAK2"])
    " Did you mean 'STAT1'?"
    >>> did_you_mean(["XYZ"], ["STAT1", "JAK2"])
    ''
    """
    names = [str(x) for x in names]
    choices = list(choices)
    pairs = [(x, close[0]) for x in names if (close := suggest(x, choices, delimiter=delimiter, n=1))]
    if not pairs:
        return ""
    if len(names) == 1:
        return f" Did you mean {pairs[0][1]!r}?"
    return " Did you mean " + ", ".join(f"{c!r} for {x!r}" for x, c in pairs[:5]) + "?"


def unknown_names_message(
    missing: Sequence[object], choices: Sequence[object], *, what: str, problem: str, delimiter: str | None = None
) -> str:
    """One error message for names that do not exist: what was asked, the closest names, and what exists.

    Parameters
    ----------
    missing
        The names not found.
    choices
        The names that exist.
    what
        What the names are, starting the message (``"Perturbations"``).
    problem
        What is wrong with them (``"are not conditions of this screen"``).
    delimiter
        String joining the targets of a combination, to compare combinations as sets.

    Returns
    -------
    The message.

    Examples
    --------
    >>> from pertgrn._utils import unknown_names_message
    >>> unknown_names_message(["stat1"], ["STAT1", "JAK2"], what="Perturbations", problem="are not conditions")
    "Perturbations ['stat1'] are not conditions. Did you mean 'STAT1'? Known: ['STAT1', 'JAK2']."
    """
    hint = did_you_mean(list(missing), choices, delimiter=delimiter)
    return f"{what} {list(missing)} {problem}.{hint} Known: {preview(choices)}."


@contextmanager
def quiet_scanpy() -> Iterator[None]:
    """Keep scanpy's info messages about private, throw-away AnnDatas (``added 'x' to adata.uns``) off screen.

    Lowers ``scanpy.settings.verbosity`` to at most ``1`` (warnings) while the block runs and restores it
    afterwards; scanpy's warnings still show.
    """
    import scanpy as sc

    before = sc.settings.verbosity
    if int(before) <= 1:
        yield
        return
    sc.settings.verbosity = 1
    try:
        yield
    finally:
        sc.settings.verbosity = before

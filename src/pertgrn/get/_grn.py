"""The GRN a model or baseline wrote into an AnnData, as a long ``source, target, weight`` table."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from pertgrn._grn_store import check_edge_selection, read_grn, select_edges


def grn_df(
    adata: AnnData,
    *,
    key: str = "gpovae",
    threshold: float | None = None,
    top_edges: int | None = None,
    level: str | None = None,
) -> pd.DataFrame:
    """Return the GRN stored under ``key`` as a ``source, target, weight`` table (decoupler's format).

    Covers every node of the record, including perturbation targets without an expression column.
    Self-loops (``source == target``) are left out: a knocked-down gene trivially changes its own
    expression, which says nothing about regulation; entries of weight 0 are not edges.

    Edges are selected by pertgrn's one edge rule (:func:`pertgrn._grn_store.select_edges`): an
    edge is kept when its *strength* exceeds ``threshold`` — strength is ``|weight|`` for signed
    GRNs (a latent DAG, signed effects) and the weight itself for probabilities and scores — and
    then the ``top_edges`` strongest are kept. The same rule selects edges in the models'
    ``get_grn``, :func:`pertgrn.pl.grn_heatmap`, :func:`pertgrn.pl.grn_network` and
    :func:`pertgrn.tl.evaluate`, so a repressive edge is never dropped by one and drawn by another.

    Parameters
    ----------
    adata
        AnnData holding a model's or baseline's output.
    key
        The ``key_added`` the GRN was written with.
    threshold
        ``None`` keeps every stored edge; a number keeps edges whose strength exceeds it (for
        GPO-VAE's edge probabilities, ``0.5`` gives the paper's binary GRN).
    top_edges
        Keep only this many of the strongest edges (after ``threshold``); ``None`` keeps all.
    level
        ``None`` reads the record at its own level (the latent DAG of RaptorGraph / gCRL-VAE, the
        gene graph of GPO-VAE and the baselines); ``"gene"`` lifts a latent DAG to the genes that
        anchor its latents; ``"latent"`` requires a latent-level record.

    Returns
    -------
    :class:`pandas.DataFrame` with columns ``source`` (regulator, str), ``target`` (str) and
    ``weight`` (float), strongest first (ties by source, then target). Nothing is written to ``adata``.

    Examples
    --------
    >>> import numpy as np
    >>> import anndata as ad
    >>> import pertgrn as pg
    >>> adata = ad.AnnData(np.zeros((2, 2)))
    >>> adata.uns["toy"] = {"nodes": ["A", "B"], "grn": np.array([[0.9, 0.8], [0.1, 0.7]])}
    >>> pg.get.grn_df(adata, key="toy")
      source target  weight
    0      A      B     0.8
    1      B      A     0.1
    >>> len(pg.get.grn_df(adata, key="toy", threshold=0.5))
    1
    """
    if not isinstance(key, str):
        raise TypeError(f"`key` must be a string, found {type(key).__name__}.")
    check_edge_selection(threshold, top_edges)
    graph = read_grn(adata, key, level=level)
    nodes = np.asarray(graph.nodes, dtype=object)
    rows, cols = np.nonzero(graph.weights)
    table = pd.DataFrame(
        {"source": nodes[rows], "target": nodes[cols], "weight": graph.weights[rows, cols].astype(np.float64)}
    )
    table = table[table["source"] != table["target"]]
    return select_edges(table, signed=graph.signed, threshold=threshold, top_edges=top_edges)

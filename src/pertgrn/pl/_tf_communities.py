"""The TF–TF network of a reference GRN, coloured by TF community."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from pertgrn.pl._grn_network import layout
from pertgrn.pl._utils import check_flags, figure_and_axes, show_or_return

#: Colour of TFs left out of the communities (no TF–TF edge).
UNASSIGNED_COLOR = "#bdbdbd"
#: Up to this many TFs, every node is labelled by default.
MAX_NODE_LABELS = 60


def community_colors(n_communities: int) -> list[str]:
    """One colour per community: tab10 up to 9, tab20 up to 18 (their greys left out), else evenly spaced hues."""
    from matplotlib.colors import to_hex

    for name, greys in (("tab10", {7}), ("tab20", {14, 15})):
        cmap = colormaps[name]
        palette = [to_hex(cmap(i)) for i in range(cmap.N) if i not in greys]
        if n_communities <= len(palette):
            return palette[:n_communities]
    cmap = colormaps["hsv"]
    return [to_hex(cmap(i / n_communities)) for i in range(n_communities)]


def tf_communities(
    adata: AnnData,
    *,
    key: str = "tf_communities",
    top_edges: int | None = 500,
    labels: bool | None = None,
    node_size: float = 80.0,
    font_size: float = 6.0,
    seed: int = 0,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """TF–TF network of the reference GRN, nodes coloured by TF community.

    Reads what :func:`pertgrn.pp.tf_communities` wrote under ``uns[key]``: the undirected TF–TF
    graph (weight ``|w_ab| + |w_ba|``) and each TF's community. The nodes are placed by igraph's
    Fruchterman–Reingold layout on the whole weighted graph, so that communities appear as
    clusters; the ``top_edges`` strongest edges are drawn as lines whose width and opacity grow with
    the weight. TFs left out of the communities (no TF–TF edge) are grey. The legend gives each
    community's size; the title the number of communities, the chosen resolution and the cohesion
    test's p-value.

    Parameters
    ----------
    adata
        AnnData holding TF communities under ``uns[key]``.
    key
        The ``key_added`` of :func:`pertgrn.pp.tf_communities`.
    top_edges
        Number of strongest edges to draw; ``None`` draws all (the layout always uses all).
    labels
        Write the TF names next to the nodes; ``None`` labels them when there are at most 60 TFs.
    node_size
        Marker area of the nodes, in points².
    font_size
        Font size of the TF names.
    seed
        Seed of the layout; the same seed gives the same picture.
    figsize
        Size of a new figure; ignored when ``ax`` is given.
    ax
        Axes to draw into; ``None`` creates a new figure.
    show
        Show the figure; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of showing it.

    Returns
    -------
    The Figure if ``return_fig``; else, if not shown, the Axes; otherwise ``None``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(n_tf_modules=3, seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> pg.pp.reference_grn(adata, tfs=adata.var_names[adata.var["true_tf_module"] >= 0])
    >>> pg.pp.tf_communities(adata, n_runs=10, n_perm=100)
    >>> ax = pg.pl.tf_communities(adata, show=False)
    >>> ax.get_legend() is not None
    True
    """
    check_flags(show=show, return_fig=return_fig)
    if not isinstance(key, str):
        raise TypeError(f"`key` must be a string, found {type(key).__name__}.")
    if top_edges is not None and (
        isinstance(top_edges, bool) or not isinstance(top_edges, numbers.Integral) or top_edges < 1
    ):
        raise ValueError(f"`top_edges` must be a positive integer or None, found {top_edges!r}.")
    if labels is not None and not isinstance(labels, bool):
        raise TypeError(f"`labels` must be True, False or None, found {labels!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`seed` must be an integer, found {type(seed).__name__} ({seed!r}).")
    record = adata.uns.get(key)
    if not isinstance(record, Mapping) or "communities" not in record or "graph" not in record:
        raise KeyError(
            f"adata.uns[{key!r}] holds no TF communities; run `pertgrn.pp.tf_communities(adata, key_added={key!r})` "
            "first."
        )
    table: pd.DataFrame = record["communities"]
    graph: pd.DataFrame = record["graph"]
    names = table["tf"].astype(str).tolist()
    community = table["community"].to_numpy(np.int64)
    index = {name: i for i, name in enumerate(names)}
    src = graph["source"].astype(str).map(index).to_numpy()
    dst = graph["target"].astype(str).map(index).to_numpy()
    weight = graph["weight"].to_numpy(float)
    pos = layout(len(names), list(zip(src.tolist(), dst.tolist(), strict=True)), weight, int(seed))

    fig, ax = figure_and_axes(ax, figsize or (7.0, 6.0))
    order = np.argsort(-weight, kind="stable")
    if top_edges is not None:
        order = order[:top_edges]
    order = order[::-1]  # strongest drawn last, on top
    if order.size:
        relative = weight[order] / weight.max()
        segments = np.stack([pos[src[order]], pos[dst[order]]], axis=1)
        lines = LineCollection(
            segments,
            linewidths=0.3 + 2.2 * relative,
            colors=[(0.25, 0.25, 0.25, 0.15 + 0.6 * r) for r in relative],
            zorder=1,
        )
        lines.set_gid("tf_edge")
        ax.add_collection(lines)

    n_communities = int(community.max()) + 1 if (community >= 0).any() else 0
    colors = community_colors(n_communities)
    for c in range(n_communities):
        members = community == c
        ax.scatter(
            pos[members, 0],
            pos[members, 1],
            s=node_size,
            c=colors[c],
            edgecolors="black",
            linewidths=0.5,
            label=f"C{c} ({int(members.sum())} TFs)",
            zorder=2,
        )
    unassigned = community < 0
    if unassigned.any():
        ax.scatter(
            pos[unassigned, 0],
            pos[unassigned, 1],
            s=node_size,
            c=UNASSIGNED_COLOR,
            edgecolors="black",
            linewidths=0.5,
            label=f"no community ({int(unassigned.sum())})",
            zorder=2,
        )
    if labels if labels is not None else len(names) <= MAX_NODE_LABELS:
        radius = np.sqrt(node_size) / 2.0
        for name, (x, y) in zip(names, pos, strict=True):
            ax.annotate(
                name,
                (x, y),
                xytext=(0.0, radius + 1.0),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=font_size,
                zorder=3,
                gid="node_label",
            )
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, markerscale=0.8, frameon=False)
    ax.margins(0.08)
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_axis_off()
    title = f"TF communities {key!r}: {n_communities} communities"
    if "resolution" in record:
        title += f", γ = {float(record['resolution']):.2g}"
    cohesion = record.get("cohesion")
    if isinstance(cohesion, Mapping) and np.isfinite(float(cohesion.get("pvalue", np.nan))):
        title += f"\ncohesion {float(cohesion['statistic']):.2f}, permutation p = {float(cohesion['pvalue']):.2g}"
    ax.set_title(title, fontsize=9)
    return show_or_return(fig, ax, show=show, return_fig=return_fig)

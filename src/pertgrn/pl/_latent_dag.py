"""The DAG a latent-causal model learned among its latents, drawn in layers (parents above children)."""

from __future__ import annotations

import numbers

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch

from pertgrn._grn_store import LatentGRN, read_record
from pertgrn.pl._grn_network import ACTIVATION_COLOR, REPRESSION_COLOR
from pertgrn.pl._utils import ROLE_COLORS, ROLE_TARGET, ROLE_UNMEASURED, check_flags, figure_and_axes, show_or_return

#: colour of latents that belong to no target
FREE_COLOR = "#bdbdbd"


def latent_dag(
    adata: AnnData,
    *,
    key: str = "raptorgraph",
    threshold: float = 0.3,
    top_edges: int | None = None,
    isolated: bool = False,
    node_size: float = 250.0,
    font_size: float = 8.0,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """The latent DAG of a latent-level GRN record, in an acyclic (layered) layout.

    Edges ``a → b`` with ``|A_ab| > threshold`` (DAGMA's 0.3 by default) are drawn as arrows whose
    width grows with ``|A_ab|``, red for positive and blue for negative weights. Latents are placed
    by igraph's Sugiyama layout, so in a DAG every edge points downwards. Latents of measured
    targets, unmeasured targets and free latents are coloured apart. When no edge passes the
    threshold the latents are drawn on a grid without edges and the title says so.

    Parameters
    ----------
    adata
        AnnData holding a latent-level GRN under ``uns[key]`` (e.g. :func:`pertgrn.tl.fit_raptorgraph`).
    key
        The model's ``key_added``.
    threshold
        Draw edges with ``|A_ab|`` above it.
    top_edges
        Draw at most this many of the strongest edges; ``None`` draws all above ``threshold``.
    isolated
        Also draw latents without a drawn edge.
    node_size
        Marker area of the latents, in points².
    font_size
        Font size of the latent names.
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
    >>> import numpy as np, pandas as pd
    >>> from anndata import AnnData
    >>> import pertgrn as pg
    >>> adata = AnnData(np.zeros((1, 2), dtype=np.float32), var=pd.DataFrame(index=["A", "B"]))
    >>> dag = np.array([[0.0, 0.8, 0.0], [0.0, 0.0, -0.5], [0.0, 0.0, 0.0]], dtype=np.float32)
    >>> lift = pd.DataFrame({"latent": ["A", "B"], "gene": ["A", "B"], "weight": [1.0, 1.0]})
    >>> adata.uns["toy"] = {"latents": ["A", "B", "free_0"], "dag": dag, "lift": lift}
    >>> ax = pg.pl.latent_dag(adata, key="toy", show=False)
    >>> len([p for p in ax.patches if p.get_gid() == "dag_edge"])
    2
    """
    check_flags(show=show, return_fig=return_fig)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or threshold < 0:
        raise ValueError(f"`threshold` must be a non-negative number, found {threshold!r}.")
    if top_edges is not None and (
        isinstance(top_edges, bool) or not isinstance(top_edges, numbers.Integral) or top_edges < 1
    ):
        raise ValueError(f"`top_edges` must be a positive integer or None, found {top_edges!r}.")
    record = read_record(adata, key)
    if not isinstance(record, LatentGRN):
        raise ValueError(f"The GRN under {key!r} is gene-level; `pl.latent_dag` draws latent DAGs (`pl.grn_network`).")
    latents = np.asarray(record.latents, dtype=object)
    dag = np.array(record.dag, dtype=np.float64)
    np.fill_diagonal(dag, 0.0)
    rows, cols = np.nonzero(np.abs(dag) > threshold)
    order = np.argsort(-np.abs(dag[rows, cols]), kind="stable")
    if top_edges is not None:
        order = order[:top_edges]
    rows, cols = rows[order], cols[order]
    weights = dag[rows, cols]
    used = np.arange(len(latents)) if isolated or rows.size == 0 else np.unique(np.concatenate([rows, cols]))
    position = {int(n): i for i, n in enumerate(used)}
    edges = [(position[int(r)], position[int(c)]) for r, c in zip(rows, cols, strict=True)]
    import igraph as ig  # on first use: `pertgrn.pl` stays quick to import

    if edges:
        graph = ig.Graph(n=len(used), edges=edges, directed=True)
        coords = np.asarray(graph.layout_sugiyama().coords, dtype=float)[: len(used)]
        coords[:, 1] = -coords[:, 1]  # parents on top
    else:  # nothing to layer: a grid keeps the names readable
        n_columns = int(np.ceil(np.sqrt(len(used))))
        coords = np.column_stack([np.arange(len(used)) % n_columns, -(np.arange(len(used)) // n_columns)]).astype(float)

    measured = set(adata.var_names.astype(str))
    targets = set(record.lift["latent"].astype(str))
    colors = []
    for name in latents[used]:
        if name in targets:
            colors.append(ROLE_COLORS[ROLE_TARGET] if name in measured else ROLE_COLORS[ROLE_UNMEASURED])
        else:
            colors.append(FREE_COLOR)
    # the width holds the graph and, beside it, the legend
    fig, ax = figure_and_axes(ax, figsize or (max(4.0, 0.6 * len(used) ** 0.8 + 3.0) + 2.5, 5.0))
    magnitude = np.abs(weights)
    span = magnitude.max() - magnitude.min() if magnitude.size else 0.0
    widths = 0.8 + 2.5 * ((magnitude - magnitude.min()) / span if span > 0 else np.ones_like(magnitude))
    radius = np.sqrt(node_size) / 2.0
    for (s, t), w, width in zip(edges, weights, widths, strict=True):
        ax.add_patch(
            FancyArrowPatch(
                posA=tuple(coords[s]),
                posB=tuple(coords[t]),
                arrowstyle="-|>",
                mutation_scale=8 + 2 * width,
                connectionstyle="arc3,rad=0.08",
                shrinkA=radius,
                shrinkB=radius + 1.0,
                linewidth=width,
                color=ACTIVATION_COLOR if w > 0 else REPRESSION_COLOR,
                alpha=0.8,
                zorder=1,
                gid="dag_edge",
            )
        )
    ax.scatter(coords[:, 0], coords[:, 1], s=node_size, c=colors, edgecolors="black", linewidths=0.6, zorder=2)
    for name, (x, y) in zip(latents[used], coords, strict=True):
        ax.annotate(
            str(name), (x, y), xytext=(0, radius + 1), textcoords="offset points", ha="center", fontsize=font_size
        )
    handles = [
        Line2D([], [], marker="o", ls="", color=ROLE_COLORS[ROLE_TARGET], label="latent of a measured target"),
        Line2D([], [], marker="o", ls="", color=ROLE_COLORS[ROLE_UNMEASURED], label="latent of an unmeasured target"),
        Line2D([], [], marker="o", ls="", color=FREE_COLOR, label="free latent"),
        Line2D([], [], color=ACTIVATION_COLOR, lw=2, label="A > 0"),
        Line2D([], [], color=REPRESSION_COLOR, lw=2, label="A < 0"),
    ]
    # beside the graph, never over a node label (constrained layout makes room)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    ax.margins(0.15)
    ax.set_axis_off()
    title = f"Latent DAG {key!r}: {len(edges)} edge{'' if len(edges) == 1 else 's'} with |A| > {threshold:g}"
    ax.set_title(title if edges else f"Latent DAG {key!r}: no edge with |A| > {threshold:g}")
    return show_or_return(fig, ax, show=show, return_fig=return_fig)

"""The strongest edges of a GRN as a directed network drawn with matplotlib."""

from __future__ import annotations

import numbers
import random

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch

from pertgrn.pl._utils import ROLE_COLORS, check_flags, figure_and_axes, node_roles, show_or_return

#: Edges whose |weight| all lie within this fraction of the strongest are drawn at one width: differences
#: that small (e.g. edge probabilities 0.500–0.503) carry no meaning a reader could see.
UNIFORM_WIDTH_RATIO = 0.8
#: Line widths (points) of the weakest-possible and the strongest edge, and of edges of one width.
MIN_WIDTH, MAX_WIDTH, UNIFORM_WIDTH = 0.5, 3.5, 1.5

#: Edge colours of signed networks.
ACTIVATION_COLOR = "#b2182b"
REPRESSION_COLOR = "#2166ac"
UNSIGNED_COLOR = "#404040"


def strongest_edges(adata: AnnData, *, key: str, threshold: float | None, top_edges: int) -> pd.DataFrame:
    """The ``top_edges`` strongest edges by pertgrn's edge rule (:func:`pertgrn.get.grn_df`), self-loops left out."""
    from pertgrn.get import grn_df

    return grn_df(adata, key=key, threshold=threshold, top_edges=top_edges)


def layout(n_nodes: int, edges: list[tuple[int, int]], weights: np.ndarray, seed: int) -> np.ndarray:
    """Fruchterman–Reingold positions (n_nodes × 2), reproducible for a given ``seed``."""
    import igraph as ig

    graph = ig.Graph(n=n_nodes, edges=edges, directed=True)
    # igraph draws from Python's `random` module unless told otherwise: use a private generator
    # so the layout is reproducible and the user's global random state is left alone.
    ig.set_random_number_generator(random.Random(seed))
    try:
        coords = graph.layout_fruchterman_reingold(weights=list(weights), niter=500).coords
    finally:
        ig.set_random_number_generator(random)
    return np.asarray(coords, dtype=float).reshape(n_nodes, 2)


def edge_widths(magnitude: np.ndarray) -> tuple[np.ndarray, bool]:
    """Line width of each edge, proportional to its |weight|, and whether widths vary at all.

    When the weakest edge drawn is at least :data:`UNIFORM_WIDTH_RATIO` of the strongest, every edge gets
    one width (the differences are not meaningful); otherwise the width grows linearly with |weight|
    from 0 (width :data:`MIN_WIDTH`) to the strongest (:data:`MAX_WIDTH`).
    """
    top = float(magnitude.max()) if magnitude.size else 0.0
    if top <= 0 or float(magnitude.min()) >= UNIFORM_WIDTH_RATIO * top:
        return np.full(magnitude.shape, UNIFORM_WIDTH), False
    return MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * magnitude / top, True


def _distinct(low: float, high: float) -> tuple[str, str]:
    """``low`` and ``high`` with as few significant digits (3 to 8) as tell them apart."""
    for digits in range(3, 9):
        a, b = f"{low:.{digits}g}", f"{high:.{digits}g}"
        if a != b:
            return a, b
    return a, b


def label_directions(pos: np.ndarray, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Unit vector per node pointing away from its neighbours (else from the centre): where its label goes."""
    n = len(pos)
    sums = np.zeros((n, 2))
    counts = np.zeros(n)
    for a, b in zip(sources, targets, strict=True):
        sums[a] += pos[b]
        sums[b] += pos[a]
        counts[a] += 1
        counts[b] += 1
    scale = float(np.ptp(pos, axis=0).max()) if n > 1 else 1.0
    scale = scale if scale > 0 else 1.0
    away = pos - sums / np.maximum(counts, 1)[:, None]
    weak = np.linalg.norm(away, axis=1) < 1e-6 * scale
    away[weak] = (pos - pos.mean(axis=0))[weak]
    weak = np.linalg.norm(away, axis=1) < 1e-6 * scale
    away[weak] = (1.0, 0.0)
    return away / np.linalg.norm(away, axis=1, keepdims=True)


def grn_network(
    adata: AnnData,
    *,
    key: str = "gpovae",
    top_edges: int = 50,
    threshold: float | None = None,
    node_size: float = 150.0,
    font_size: float = 8.0,
    seed: int = 0,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Directed network of a GRN's strongest edges.

    The ``top_edges`` edges of largest absolute weight (self-loops excluded) are placed with igraph's
    Fruchterman–Reingold layout and drawn with matplotlib as arrows from regulator to target. An
    edge's width is proportional to its absolute weight, but only where the weights drawn differ
    meaningfully: when the weakest is within 20 % of the strongest (GPO-VAE's edge probabilities
    just above 0.5, say), every edge gets one width. Signed networks colour activating edges red and
    repressing ones blue. Nodes are coloured by role — perturbed (measured) target, unmeasured
    target, extended gene, other gene — and carry their names beside them, on the side away from
    their neighbours. The legend, outside the network, names every node role drawn and says what
    edge colour and width mean.

    Parameters
    ----------
    adata
        AnnData holding a GRN under ``uns[key]``.
    key
        The ``key_added`` of the model or baseline.
    top_edges
        Number of strongest edges (by absolute weight) to draw.
    threshold
        Only consider edges whose strength (``|weight|`` for signed GRNs, the weight for
        probabilities) exceeds ``threshold``: pertgrn's edge rule, as in :func:`pertgrn.get.grn_df`.
    node_size
        Marker area of the nodes, in points².
    font_size
        Font size of the node names.
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
    >>> adata = pg.datasets.simulate(seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> pg.tl.baseline_grn(adata, method="de")
    >>> ax = pg.pl.grn_network(adata, key="baseline_de", top_edges=20, show=False)
    >>> len(ax.patches)
    20
    """
    check_flags(show=show, return_fig=return_fig)
    if isinstance(top_edges, bool) or not isinstance(top_edges, numbers.Integral) or top_edges < 1:
        raise ValueError(f"`top_edges` must be a positive integer, found {top_edges!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`seed` must be an integer, found {type(seed).__name__} ({seed!r}).")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)):
        raise TypeError(f"`threshold` must be a number or None, found {type(threshold).__name__} ({threshold!r}).")
    edges = strongest_edges(adata, key=key, threshold=threshold, top_edges=int(top_edges))
    if edges.empty:
        raise ValueError(
            f"The GRN under {key!r} has no edges to draw"
            + (f" with strength above {threshold}." if threshold is not None else ".")
            + " Lower `threshold` or check the GRN."
        )
    names = list(dict.fromkeys(np.ravel(edges[["source", "target"]].to_numpy()).tolist()))
    index = {name: i for i, name in enumerate(names)}
    sources = edges["source"].map(index).to_numpy()
    targets = edges["target"].map(index).to_numpy()
    weights = edges["weight"].to_numpy(dtype=float)
    magnitude = np.abs(weights)
    pos = layout(len(names), list(zip(sources.tolist(), targets.tolist(), strict=True)), magnitude, int(seed))
    roles = node_roles(adata, names)

    fig, ax = figure_and_axes(ax, figsize or (8.5, 6.0))
    signed = bool((weights < 0).any())
    widths, widths_vary = edge_widths(magnitude)
    radius = np.sqrt(node_size) / 2.0
    pair_set = set(zip(sources.tolist(), targets.tolist(), strict=True))
    for s, t, w, width in zip(sources, targets, weights, widths, strict=True):
        color = (ACTIVATION_COLOR if w > 0 else REPRESSION_COLOR) if signed else UNSIGNED_COLOR
        bend = 0.15 if (t, s) in pair_set else 0.05  # separate A→B from B→A
        arrow = FancyArrowPatch(
            posA=tuple(pos[s]),
            posB=tuple(pos[t]),
            arrowstyle="-|>",
            mutation_scale=8 + 2 * width,
            connectionstyle=f"arc3,rad={bend}",
            shrinkA=radius,
            shrinkB=radius + 1.0,
            linewidth=width,
            color=color,
            alpha=0.8,
            zorder=1,
            gid="grn_edge",
        )
        ax.add_patch(arrow)

    for role, color in ROLE_COLORS.items():
        members = roles == role
        if members.any():
            ax.scatter(
                pos[members, 0],
                pos[members, 1],
                s=node_size,
                c=color,
                edgecolors="black",
                linewidths=0.6,
                label=role,
                zorder=2,
            )
    directions = label_directions(pos, sources, targets)
    gap = radius + 2.0
    for name, (x, y), (dx, dy) in zip(names, pos, directions, strict=True):
        horizontal = abs(dx) >= 0.5 * abs(dy)
        ax.annotate(
            name,
            (x, y),
            xytext=(gap * dx, gap * dy),
            textcoords="offset points",
            ha=("left" if dx >= 0 else "right") if horizontal else "center",
            va="center" if horizontal else ("bottom" if dy > 0 else "top"),
            fontsize=font_size,
            zorder=1.5,  # above the edges, below the nodes
            gid="node_label",
            bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.7},
        )

    handles, labels = ax.get_legend_handles_labels()
    if signed:
        handles += [Line2D([], [], color=ACTIVATION_COLOR, lw=2), Line2D([], [], color=REPRESSION_COLOR, lw=2)]
        labels += ["activation (w > 0)", "repression (w < 0)"]
    else:
        handles.append(Line2D([], [], color=UNSIGNED_COLOR, lw=UNIFORM_WIDTH))
        labels.append("edge: regulator → target")
    edge_color = "black" if signed else UNSIGNED_COLOR
    low, high = _distinct(float(magnitude.min()), float(magnitude.max()))
    if widths_vary:
        handles += [
            Line2D([], [], color=edge_color, lw=float(widths.max())),
            Line2D([], [], color=edge_color, lw=float(widths.min())),
        ]
        labels += [f"|weight| {high}", f"|weight| {low}"]
    else:
        spread = low if low == high else f"{low}–{high}"
        handles.append(Line2D([], [], color=edge_color, lw=UNIFORM_WIDTH))
        labels.append(f"|weight| {spread} (one width)")
    ax.legend(
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=8,
        markerscale=0.6,
        frameon=False,
        borderaxespad=0.0,
    )
    ax.margins(0.12)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_axis_off()
    ax.set_title(f"GRN {key!r}: top {len(edges)} edges")
    return show_or_return(fig, ax, show=show, return_fig=return_fig)

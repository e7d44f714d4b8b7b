"""The GRN as a regulator × target heatmap, targets and extended genes in separate blocks."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from pertgrn._grn_store import edge_strength, read_grn
from pertgrn._utils import unknown_names_message
from pertgrn.pl._utils import (
    MAX_TICK_LABELS,
    ROLE_TARGET,
    ROLE_UNMEASURED,
    check_flags,
    figure_and_axes,
    node_roles,
    show_or_return,
)

#: What italic node names mean, written under the heatmap when some are drawn.
ITALIC_NOTE = "italic: target not measured (no expression column)"

#: Group names of the two node blocks, in display order.
GROUP_TARGETS = "targets"
GROUP_EXTENDED = "extended genes"


def select_nodes(all_nodes: list[str], nodes: Sequence[str] | None) -> np.ndarray:
    """Indices of the requested nodes in GRN order (so that groups stay contiguous)."""
    if nodes is None:
        return np.arange(len(all_nodes))
    if isinstance(nodes, str):
        nodes = [nodes]
    nodes = [str(n) for n in nodes]
    if not nodes:
        raise ValueError("`nodes` is empty; pass at least one node name or None for all nodes.")
    index = {n: i for i, n in enumerate(all_nodes)}
    missing = [n for n in nodes if n not in index]
    if missing:
        raise KeyError(
            unknown_names_message(missing[:10], all_nodes, what="Nodes", problem="are not nodes of this GRN")
        )
    return np.asarray(sorted({index[n] for n in nodes}))


def grn_heatmap(
    adata: AnnData,
    *,
    key: str = "gpovae",
    threshold: float | None = None,
    nodes: Sequence[str] | None = None,
    show_node_labels: bool | None = None,
    cmap: str | Colormap | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    center: float | str | None = "auto",
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Heatmap of a GRN's edge weights, regulators as rows and targets as columns.

    Nodes are drawn in two blocks, as in GPO-VAE's topology figure: the perturbation targets
    (measured or not) first, then the extended genes, with lines separating the blocks and the
    block names on the top and right edges. Edge probabilities are drawn on a diverging colormap
    centred at 0.5, GPO-VAE's initial probability, so that edges the model gained and lost stand
    apart; signed weights on one centred at 0; other scores on a sequential colormap from 0. With up to 60 nodes
    every row and column is labelled, unmeasured targets (nodes without an expression column, common
    in CRISPRa screens) in italics with a note saying so under the axis; beyond that only the blocks
    are, so GRNs of hundreds of nodes stay readable.

    Parameters
    ----------
    adata
        AnnData holding a GRN under ``uns[key]`` (written by a ``tl.fit_*`` model or
        :func:`pertgrn.tl.baseline_grn`).
    key
        The ``key_added`` of the model or baseline.
    threshold
        Mask (draw as empty) every edge that pertgrn's edge rule drops: its strength (``|weight|``
        for signed GRNs, the weight for probabilities) does not exceed ``threshold``
        (:func:`pertgrn.get.grn_df`); ``0.5`` on GPO-VAE's edge probabilities shows the paper's
        binary GRN. ``None`` draws every weight.
    nodes
        Draw only these nodes (rows and columns), kept in GRN order. ``None`` draws all nodes.
    show_node_labels
        Label every row and column with its node name; ``None`` does so when at most 60 nodes are drawn.
    cmap
        Colormap; defaults to ``"RdBu_r"`` on a diverging scale (see ``center``), ``"Reds"`` otherwise.
    vmin
        Lower end of the colour scale; defaults to 0 (``-vmax`` for signed weights).
    vmax
        Upper end of the colour scale; defaults to the largest (absolute) weight drawn.
    center
        Centre of a diverging colour scale, or ``None`` for a sequential one from 0. ``"auto"``:
        0.5 when every drawn weight lies strictly between 0 and 1 (edge probabilities), 0 for
        signed weights, ``None`` otherwise (scores with exact zeros, such as baselines').
    figsize
        Size of a new figure; ignored when ``ax`` is given. Defaults grow with the number of nodes.
    ax
        Axes to draw into; ``None`` creates a new figure. The colorbar takes room from this Axes.
    show
        Show the figure; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of showing it.

    Returns
    -------
    The Figure if ``return_fig``; else, if not shown, the heatmap's Axes; otherwise ``None``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> pg.tl.baseline_grn(adata, method="de")
    >>> ax = pg.pl.grn_heatmap(adata, key="baseline_de", show=False)
    >>> ax.get_ylabel()
    'regulator'
    """
    check_flags(show=show, return_fig=return_fig)
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)):
        raise TypeError(f"`threshold` must be a number or None, found {type(threshold).__name__} ({threshold!r}).")
    graph = read_grn(adata, key)
    all_nodes, weights = graph.nodes, graph.weights
    chosen = select_nodes(all_nodes, nodes)
    names = np.asarray(all_nodes, dtype=object)[chosen]
    roles = node_roles(adata, names.tolist())
    is_target = np.isin(roles, [ROLE_TARGET, ROLE_UNMEASURED])
    order = np.argsort(~is_target, kind="stable")
    chosen, names, roles, is_target = chosen[order], names[order], roles[order], is_target[order]
    matrix = np.asarray(weights, dtype=float)[np.ix_(chosen, chosen)]
    n, n_targets = len(names), int(is_target.sum())

    hidden = ~np.isfinite(matrix)
    if threshold is not None:  # the edge rule of pertgrn.get.grn_df: strength must exceed the threshold
        hidden |= ~(edge_strength(matrix, graph.signed) > threshold)
    shown = matrix[~hidden]
    signed = graph.signed or bool((shown < 0).any())
    if isinstance(center, str):
        if center != "auto":
            raise ValueError(f'`center` must be a number, None or "auto", found {center!r}.')
        probabilities = shown.size > 0 and shown.min() > 0 and shown.max() < 1
        center = 0.0 if signed else (0.5 if probabilities else None)
    if center is not None:
        span = float(np.abs(shown - center).max()) if shown.size else 0.0
        span = span if span > 0 else 1.0
        vmin = center - span if vmin is None else vmin
        vmax = center + span if vmax is None else vmax
    else:
        top = float(np.abs(shown).max()) if shown.size else 0.0
        vmax = (top if top > 0 else 1.0) if vmax is None else vmax
        vmin = 0.0 if vmin is None else vmin
    diverging = center is not None
    colormap = mpl.colormaps[cmap or ("RdBu_r" if diverging else "Reds")] if not isinstance(cmap, Colormap) else cmap
    colormap = colormap.with_extremes(bad="white")

    if figsize is None:
        side = max(4.0, 0.12 * n + 2.5) if n <= MAX_TICK_LABELS else 8.0
        figsize = (side + 1.6, side)
    fig, ax = figure_and_axes(ax, figsize)
    image = ax.imshow(
        np.ma.masked_array(matrix, mask=hidden),
        cmap=colormap,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
        aspect="equal",
    )
    ax.set_xlabel("target")
    ax.set_ylabel("regulator")
    strength = "|weight|" if graph.signed else "weight"
    title = f"GRN {key!r}" + (f" ({strength} > {threshold:g})" if threshold is not None else "")
    ax.set_title(title, pad=24)

    label_nodes = n <= MAX_TICK_LABELS if show_node_labels is None else bool(show_node_labels)
    if label_nodes:
        fontsize = 8 if n <= 30 else 6
        ax.set_xticks(np.arange(n), labels=list(names), rotation=90, fontsize=fontsize)
        ax.set_yticks(np.arange(n), labels=list(names), fontsize=fontsize)
        unmeasured = roles == ROLE_UNMEASURED
        for tick_labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            for text, italic in zip(tick_labels, unmeasured, strict=True):
                if italic:
                    text.set_fontstyle("italic")
        if unmeasured.any():  # say what the italics mean, under the axis they appear on
            ax.set_xlabel(f"target\n{ITALIC_NOTE}")
    else:
        ax.set_xticks([])
        ax.set_yticks([])

    bounds = [(GROUP_TARGETS, 0, n_targets), (GROUP_EXTENDED, n_targets, n)]
    groups = [(name, start, stop) for name, start, stop in bounds if stop > start]
    centers = [(start + stop - 1) / 2 for _, start, stop in groups]
    group_names = [name for name, _, _ in groups]
    top_axis = ax.secondary_xaxis("top")
    top_axis.set_xticks(centers, labels=group_names, fontsize=9)
    right_axis = ax.secondary_yaxis("right")
    right_axis.set_yticks(centers, labels=group_names, rotation=-90, va="center", fontsize=9)
    top_axis.tick_params(length=0)
    right_axis.tick_params(length=0)
    if 0 < n_targets < n:
        ax.axhline(n_targets - 0.5, color="black", linewidth=1.0, gid="group_separator")
        ax.axvline(n_targets - 0.5, color="black", linewidth=1.0, gid="group_separator")

    colorbar = fig.colorbar(image, ax=ax, pad=0.08, fraction=0.046)
    in_unit_interval = shown.size > 0 and shown.min() >= 0 and shown.max() <= 1
    colorbar.set_label("edge probability" if in_unit_interval and not signed else "edge weight")
    return show_or_return(fig, ax, show=show, return_fig=return_fig)

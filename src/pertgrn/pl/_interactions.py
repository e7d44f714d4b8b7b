"""Observed against predicted genetic-interaction scores, one panel per interaction type."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pertgrn.metrics._interactions import INTERACTION_TYPES
from pertgrn.pl._utils import as_frame, check_ax, check_flags, show_or_return, uns_entry

MEMBER_COLOR = "#d62728"
OTHER_COLOR = "#7f7f7f"


def interactions(
    adata: AnnData,
    *,
    key: str = "raptorgraph_interactions",
    types: Sequence[str] | None = None,
    label_top: int = 3,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | dict[str, Axes] | Figure | None:
    """Observed (x) against predicted (y) interaction scores of the doubles, one panel per interaction type.

    Reads what :func:`pertgrn.tl.genetic_interactions` wrote. In each panel a point is a double;
    red points are the type's true members (observed score in the top quantile, bottom for
    suppression), ringed points the ``k`` doubles the prediction ranks first, and the title gives
    precision@k. Suppression shares the synergy score (its members are the low ratios).

    Parameters
    ----------
    adata
        AnnData holding ``uns[key]`` from :func:`pertgrn.tl.genetic_interactions`.
    key
        The ``uns`` key (``"<model key>_interactions"`` by default).
    types
        Interaction types to draw; ``None``: every type with a precision.
    label_top
        Name the ``label_top`` doubles the prediction ranks first in each panel.
    figsize
        Size of a new figure; ignored when ``ax`` is given.
    ax
        Axes to draw one type into (requires a single type); ``None`` creates a figure.
    show
        Show the figure; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of showing it.

    Returns
    -------
    The Figure if ``return_fig``; else, if not shown, the Axes (a dict type → Axes for several
    types); otherwise ``None``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(n_perturbed=6, n_doubles=8, n_control=100, cells_per_condition=40)
    >>> pg.pp.annotate_perturbations(adata)
    >>> adata.uns["oracle"] = {"ate": pg.get.ate_df(adata)}
    >>> _ = pg.tl.genetic_interactions(adata, key="oracle", k=2)
    >>> axes = pg.pl.interactions(adata, key="oracle_interactions", show=False)
    >>> sorted(axes)
    ['epistasis', 'neomorphism', 'redundancy', 'suppression', 'synergy']
    """
    check_flags(show=show, return_fig=return_fig)
    check_ax(ax)
    how = "run `pertgrn.tl.genetic_interactions` first"
    observed = as_frame(uns_entry(adata, key, "observed", how=how), what=f"adata.uns[{key!r}]['observed']")
    predicted = as_frame(uns_entry(adata, key, "predicted", how=how), what=f"adata.uns[{key!r}]['predicted']")
    precision = as_frame(uns_entry(adata, key, "precision", how=how), what=f"adata.uns[{key!r}]['precision']")
    params = uns_entry(adata, key, "params", how=how)
    k, quantile = int(params["k"]), float(params["quantile"])
    available = [t for t in INTERACTION_TYPES if t in precision.index]
    types = available if types is None else [str(t) for t in ([types] if isinstance(types, str) else types)]
    unknown = sorted(set(types) - set(available))
    if unknown or not types:
        raise ValueError(f"Unknown or empty interaction types {unknown or types}; available: {available}.")
    if ax is not None and len(types) != 1:
        raise ValueError(f"`ax` draws one interaction type; {len(types)} were asked for ({types}).")
    if ax is None:
        n = len(types)
        fig, grid = plt.subplots(1, n, figsize=figsize or (3.2 * n, 3.2), layout="constrained", squeeze=False)
        axes = dict(zip(types, grid[0], strict=True))
    else:
        fig, axes = ax.figure, {types[0]: ax}
    doubles = observed.index.intersection(predicted.index)
    for kind, panel in axes.items():
        column, tail = INTERACTION_TYPES[kind]
        x = observed.loc[doubles, column].to_numpy(dtype=float)
        y = predicted.loc[doubles, column].to_numpy(dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        x, y, names = x[ok], y[ok], np.asarray(doubles)[ok]
        if tail == "top":
            members = x >= np.quantile(x, 1 - quantile)
            ranked = np.argsort(-y, kind="stable")[:k]
        else:
            members = x <= np.quantile(x, quantile)
            ranked = np.argsort(y, kind="stable")[:k]
        panel.scatter(x[~members], y[~members], s=18, c=OTHER_COLOR, label="other doubles")
        panel.scatter(x[members], y[members], s=18, c=MEMBER_COLOR, label="true members")
        panel.scatter(
            x[ranked], y[ranked], s=70, facecolors="none", edgecolors="black", lw=0.8, label=f"top {k} predicted"
        )
        for i in ranked[:label_top]:
            panel.annotate(str(names[i]), (x[i], y[i]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        panel.set_xlabel(f"observed {column}")
        panel.set_ylabel(f"predicted {column}")
        panel.set_title(f"{kind}: P@{k} = {float(precision.loc[kind].iloc[0]):.2f}", fontsize=9)
    next(iter(axes.values())).legend(fontsize=6, frameon=False, loc="best")
    return show_or_return(fig, axes if len(axes) > 1 else next(iter(axes.values())), show=show, return_fig=return_fig)

"""Predicted against observed average treatment effects: one perturbation as a scatter, many as heatmaps."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from pertgrn._utils import unknown_names_message
from pertgrn.get._ate import ate_df
from pertgrn.metrics import ate_pearson
from pertgrn.pl._utils import MAX_TICK_LABELS, as_frame, check_flags, figure_and_axes, show_or_return, uns_entry

#: Unit of every treatment effect: mean log2(1 + CP10k) of the perturbed cells minus the control cells'.
EFFECT_UNIT = "Δ log2(1 + CP10k)"
#: A least-squares line is drawn when the predicted spread differs from the observed one by more than this factor.
SCALE_RATIO = 1.5

_HOW_PREDICTED = (
    "predicted effects are written by a model's fit/evaluation or by "
    "`pertgrn.tl.baseline_predict(adata, method=..., key_added=...)`"
)


def _as_list(values: str | Sequence[str] | None, name: str) -> list[str] | None:
    if values is None:
        return None
    values = [values] if isinstance(values, str) else [str(v) for v in values]
    if not values:
        raise ValueError(f"`{name}` is empty; pass at least one name or None.")
    return values


def effects(
    adata: AnnData, *, key: str, perturbations: list[str] | None, test_key: str | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Observed and predicted ATEs on the same perturbations (rows) and genes (columns).

    The observed side is ``uns[key]["ate_reference"]`` when present, else :func:`pertgrn.get.ate_df`
    over the cells of ``test_key`` (all cells when ``None``).
    """
    predicted = as_frame(uns_entry(adata, key, "ate", how=_HOW_PREDICTED), what=f"adata.uns[{key!r}]['ate']")
    if perturbations is None:
        perturbations = [str(p) for p in predicted.index]
    missing = [p for p in perturbations if p not in predicted.index]
    if missing:
        raise KeyError(
            unknown_names_message(
                missing,
                list(map(str, predicted.index)),
                what="Perturbations",
                problem=f"have no predicted effects under adata.uns[{key!r}]['ate']",
                delimiter="+",
            )
        )
    reference = adata.uns[key].get("ate_reference")
    if reference is not None:
        observed = as_frame(reference, what=f"adata.uns[{key!r}]['ate_reference']")
        absent = [p for p in perturbations if p not in observed.index]
        if absent:
            raise KeyError(f"Perturbations {absent} are missing from adata.uns[{key!r}]['ate_reference'].")
        observed = observed.loc[perturbations]
    else:
        observed = ate_df(adata, mask=test_key, perturbations=perturbations)
    genes = [g for g in predicted.columns if g in set(observed.columns)]
    if not genes:
        raise ValueError(f"Predicted effects under {key!r} and observed effects share no gene.")
    observed = observed.loc[perturbations, genes].astype(float)
    predicted = predicted.loc[perturbations, genes].astype(float)
    return observed, predicted


def ate_scatter(
    adata: AnnData,
    *,
    key: str = "gpovae",
    perturbation: str,
    test_key: str | None = None,
    genes: Sequence[str] | None = None,
    n_labels: int = 5,
    size: float | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Predicted against observed treatment effects of one perturbation, one point per gene.

    The x axis is the observed average treatment effect, the y axis the prediction stored under
    ``uns[key]["ate"]``, both in ``Δ log2(1 + CP10k)`` (mean log-normalised expression of the perturbed
    cells minus that of the control cells; 1 is a two-fold change). A dashed identity line marks a
    perfect prediction. When the predicted effects are on another scale than the observed ones (their
    standard deviations differ by more than 1.5×, as for a model that predicts the right direction
    but shrunken effects), the least-squares line is drawn too and its slope printed, so a good
    ranking with the wrong scale is told apart from a bad one. The Pearson correlation across genes
    is printed in the corner.

    Parameters
    ----------
    adata
        Screen after :func:`pertgrn.pp.annotate_perturbations` with predicted effects in
        ``uns[key]["ate"]`` (a perturbation × gene DataFrame).
    key
        The ``key_added`` of the model or baseline whose predictions are drawn.
    perturbation
        Condition label (canonical, e.g. ``"G003+G010"``) to draw.
    test_key
        Boolean ``obs`` column of held-out cells: observed effects are computed on those cells only.
        Ignored when ``uns[key]`` holds ``ate_reference`` (e.g. the half-split baseline), which is
        then the observed side. ``None`` uses every cell.
    genes
        Draw only these genes; ``None`` draws every gene with both an observed and a predicted effect.
    n_labels
        Label this many genes with the largest absolute observed effect (0 for none).
    size
        Marker area in points²; defaults to a size that suits the number of genes.
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
    >>> _ = pg.tl.baseline_predict(adata, method="mean_shift", key_added="shift")
    >>> p = adata.uns["pertgrn"]["targets"][0]
    >>> ax = pg.pl.ate_scatter(adata, key="shift", perturbation=p, show=False)
    >>> ax.get_xlabel()
    'observed effect (Δ log2(1 + CP10k))'
    """
    check_flags(show=show, return_fig=return_fig)
    if not isinstance(perturbation, str):
        raise TypeError(f"`perturbation` must be a condition label (str), found {type(perturbation).__name__}.")
    if isinstance(n_labels, bool) or not isinstance(n_labels, numbers.Integral) or n_labels < 0:
        raise ValueError(f"`n_labels` must be a non-negative integer, found {n_labels!r}.")
    observed, predicted = effects(adata, key=key, perturbations=[perturbation], test_key=test_key)
    genes = _as_list(genes, "genes")
    if genes is not None:
        missing = [g for g in genes if g not in observed.columns]
        if missing:
            raise KeyError(f"Genes {missing[:10]} have no observed and predicted effects under {key!r}.")
        observed, predicted = observed[genes], predicted[genes]
    x, y = observed.iloc[0].to_numpy(), predicted.iloc[0].to_numpy()
    finite = np.isfinite(x) & np.isfinite(y)
    names = observed.columns.to_numpy()[finite]
    x, y = x[finite], y[finite]
    if x.size == 0:
        raise ValueError(f"No gene has finite observed and predicted effects for {perturbation!r}.")
    r = ate_pearson(y[None, :], x[None, :]) if x.size > 1 else float("nan")

    fig, ax = figure_and_axes(ax, figsize or (4.8, 4.5))
    size = size if size is not None else float(np.clip(3000.0 / x.size, 4.0, 40.0))
    ax.scatter(x, y, s=size, c="#1f77b4", alpha=0.7, linewidths=0, gid="genes")
    ax.axline((0.0, 0.0), slope=1.0, color="grey", linestyle="--", linewidth=1.0, gid="identity", label="y = x")
    fit_text = ""
    sx, sy = (float(np.std(x)), float(np.std(y))) if x.size > 1 else (0.0, 0.0)
    if sx > 0 and sy > 0 and max(sx / sy, sy / sx) > SCALE_RATIO:
        slope, intercept = np.polyfit(x, y, 1)
        ax.axline(
            (0.0, float(intercept)),
            slope=float(slope),
            color="#d62728",
            linewidth=1.2,
            gid="regression",
            label=f"least squares, slope {slope:.2g}",
        )
        fit_text = f"\nscales differ: slope {slope:.2g}"
        ax.legend(loc="best", fontsize=7, frameon=False)
    ax.axhline(0.0, color="lightgrey", linewidth=0.6, zorder=0)
    ax.axvline(0.0, color="lightgrey", linewidth=0.6, zorder=0)
    for i in np.argsort(-np.abs(x), kind="stable")[: int(n_labels)]:
        ax.annotate(
            str(names[i]), (x[i], y[i]), xytext=(3, 3), textcoords="offset points", fontsize=7, gid="gene_label"
        )
    ax.text(
        0.03,
        0.97,
        f"Pearson r = {r:.3f}\n{x.size} genes{fit_text}",
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=8,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "edgecolor": "lightgrey"},
        gid="pearson",
    )
    ax.set_xlabel(f"observed effect ({EFFECT_UNIT})")
    ax.set_ylabel(f"predicted effect, {key} ({EFFECT_UNIT})")
    ax.set_title(perturbation)
    return show_or_return(fig, ax, show=show, return_fig=return_fig)


def ate_heatmap(
    adata: AnnData,
    *,
    key: str = "gpovae",
    perturbations: Sequence[str] | None = None,
    genes: Sequence[str] | None = None,
    n_genes: int = 30,
    test_key: str | None = None,
    cmap: str | Colormap = "RdBu_r",
    vmax: float | None = None,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> dict[str, Axes] | Figure | None:
    """Observed and predicted treatment effects side by side, perturbation × gene.

    Both panels share one diverging colour scale centred at 0, so a colour means the same effect
    on either side. By default the genes are the ``n_genes`` with the largest absolute observed
    effect in any of the drawn perturbations, strongest first.

    Parameters
    ----------
    adata
        Screen after :func:`pertgrn.pp.annotate_perturbations` with predicted effects in
        ``uns[key]["ate"]`` (a perturbation × gene DataFrame).
    key
        The ``key_added`` of the model or baseline whose predictions are drawn.
    perturbations
        Conditions to draw (rows); ``None`` draws every perturbation predicted under ``key``.
    genes
        Genes to draw (columns), in this order; ``None`` picks them by ``n_genes``.
    n_genes
        Number of genes with the largest absolute observed effect to draw when ``genes`` is ``None``.
    test_key
        Boolean ``obs`` column of held-out cells for the observed side; ignored when ``uns[key]``
        holds ``ate_reference``. ``None`` uses every cell.
    cmap
        Diverging colormap.
    vmax
        Colour scale runs from ``-vmax`` to ``vmax``; defaults to the largest absolute effect drawn.
    figsize
        Size of the figure.
    show
        Show the figure; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of showing it.

    Returns
    -------
    The Figure if ``return_fig``; else, if not shown, a dict of Axes with keys ``"observed"``,
    ``"predicted"`` and ``"colorbar"``; otherwise ``None``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> _ = pg.tl.baseline_predict(adata, method="mean_shift", key_added="shift")
    >>> axes = pg.pl.ate_heatmap(adata, key="shift", n_genes=20, show=False)
    >>> sorted(axes)
    ['colorbar', 'observed', 'predicted']
    """
    check_flags(show=show, return_fig=return_fig)
    if isinstance(n_genes, bool) or not isinstance(n_genes, numbers.Integral) or n_genes < 1:
        raise ValueError(f"`n_genes` must be a positive integer, found {n_genes!r}.")
    if vmax is not None and (isinstance(vmax, bool) or not isinstance(vmax, numbers.Real) or vmax <= 0):
        raise ValueError(f"`vmax` must be a positive number or None, found {vmax!r}.")
    observed, predicted = effects(
        adata, key=key, perturbations=_as_list(perturbations, "perturbations"), test_key=test_key
    )
    genes = _as_list(genes, "genes")
    if genes is None:
        strength = observed.abs().max(axis=0).fillna(-np.inf)
        genes = strength.sort_values(ascending=False, kind="stable").index[: int(n_genes)].tolist()
    else:
        missing = [g for g in genes if g not in observed.columns]
        if missing:
            raise KeyError(f"Genes {missing[:10]} have no observed and predicted effects under {key!r}.")
    observed, predicted = observed[genes], predicted[genes]
    if vmax is None:
        values = np.abs(np.concatenate([observed.to_numpy().ravel(), predicted.to_numpy().ravel()]))
        values = values[np.isfinite(values)]
        vmax = float(values.max()) if values.size and values.max() > 0 else 1.0

    n_rows, n_cols = observed.shape
    if figsize is None:
        width = min(2 * max(3.0, 0.16 * n_cols + 1.2) + 1.0, 20.0)
        figsize = (width, max(2.5, 0.25 * n_rows + 1.8))
    fig = plt.figure(figsize=figsize, layout="constrained")
    grid = fig.add_gridspec(1, 3, width_ratios=[1.0, 1.0, 0.04])
    axes = {
        "observed": fig.add_subplot(grid[0, 0]),
        "predicted": fig.add_subplot(grid[0, 1]),
        "colorbar": fig.add_subplot(grid[0, 2]),
    }
    label_genes = n_cols <= MAX_TICK_LABELS
    label_rows = n_rows <= MAX_TICK_LABELS
    image = None
    for side, table in (("observed", observed), ("predicted", predicted)):
        panel = axes[side]
        image = panel.imshow(
            np.ma.masked_invalid(table.to_numpy()),
            cmap=cmap,
            vmin=-vmax,
            vmax=vmax,
            aspect="auto",
            interpolation="nearest",
        )
        panel.set_title(side if side == "observed" else f"predicted ({key})")
        panel.set_xlabel("gene")
        if label_genes:
            panel.set_xticks(np.arange(n_cols), labels=list(table.columns), rotation=90, fontsize=7)
        else:
            panel.set_xticks([])
        if side == "observed":
            panel.set_ylabel("perturbation")
        if side == "observed" and label_rows:
            panel.set_yticks(np.arange(n_rows), labels=list(table.index), fontsize=8)
        else:
            panel.set_yticks([])
    colorbar = fig.colorbar(image, cax=axes["colorbar"])
    colorbar.set_label(f"treatment effect ({EFFECT_UNIT})")
    return show_or_return(fig, axes, show=show, return_fig=return_fig)

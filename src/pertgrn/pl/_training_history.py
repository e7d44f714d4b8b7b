"""Loss terms over training epochs: one panel per quantity, training and validation side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from pertgrn.pl._utils import check_ax, check_flags, show_or_return, uns_entry

#: Each model's own main term (quantity names without train / validation tokens), by model class name; for
#: an AnnData the ``key`` is looked up (the models' default ``key_added`` is their lower-case name). A model
#: class can also declare ``main_history_terms`` (a tuple of such names).
MAIN_TERMS = {"GPOVAE": ("gpo_fit",)}
#: Readable panel titles of common quantities.
TITLES = {
    "elbo": "negative ELBO",
    "loss": "total loss (optimised)",
    "reconstruction_loss": "reconstruction loss",
    "reconstruction": "reconstruction loss",
    "kl_local": "KL divergence (per cell)",
    "kl_global": "KL divergence (global)",
    "gpo_fit": "GPO fit (K-hop differential expression)",
    "sparsity": "sparsity penalty",
    "n_edges": "edges with probability > 0.5",
}

_VALIDATION_TOKENS = ("validation", "val")
_PHASE_TOKENS = {"train", "training", "validation", "val", "epoch"}


def is_validation(term: str) -> bool:
    """Whether a logged term is measured on validation cells (``validation_loss``, ``elbo_validation``)."""
    return any(token in _VALIDATION_TOKENS for token in term.lower().split("_"))


def base_name(term: str) -> str:
    """A term's name without train / validation / epoch tokens, so both phases share a colour."""
    tokens = [t for t in term.split("_") if t.lower() not in _PHASE_TOKENS]
    return "_".join(tokens) or term


def history_series(model_or_adata: object, key: str) -> dict[str, pd.Series]:
    """Every logged term of a model's ``history`` or of ``uns[key]["history"]`` as a Series indexed by epoch."""
    if isinstance(model_or_adata, AnnData):
        history = uns_entry(model_or_adata, key, "history", how="it is written by `pertgrn.tl.fit_*`")
        if not isinstance(history, pd.DataFrame):
            raise TypeError(
                f"adata.uns[{key!r}]['history'] must be a DataFrame indexed by epoch, found {type(history).__name__}."
            )
        return {str(c): history[c] for c in history.columns}
    if not hasattr(model_or_adata, "history"):
        raise TypeError(
            f"`model_or_adata` must be a trained model (with `.history`) or an AnnData, "
            f"found {type(model_or_adata).__name__}."
        )
    history = model_or_adata.history
    if history is None:
        raise ValueError("The model has no training history; train it first (`model.train(...)`).")
    if not isinstance(history, Mapping):
        raise TypeError(f"`model.history` must be a dict of DataFrames, found {type(history).__name__}.")
    series = {}
    for name, frame in history.items():
        if isinstance(frame, pd.DataFrame):
            if frame.shape[1] != 1:
                raise ValueError(f"`model.history[{name!r}]` must have one column, found {frame.shape[1]}.")
            frame = frame.iloc[:, 0]
        if not isinstance(frame, pd.Series):
            raise TypeError(f"`model.history[{name!r}]` must be a DataFrame or Series, found {type(frame).__name__}.")
        series[str(name)] = frame
    return series


def _main_terms(model_or_adata: object, key: str) -> tuple[str, ...]:
    """The model's main quantity: declared by its class, or looked up by class name (for an AnnData, by ``key``)."""
    declared = getattr(type(model_or_adata), "main_history_terms", None)
    if declared:
        return tuple(str(t) for t in declared)
    name = key if isinstance(model_or_adata, AnnData) else type(model_or_adata).__name__
    table = {model.lower(): found for model, found in MAIN_TERMS.items()}
    return table.get(name.lower(), ())


def _default_quantities(model_or_adata: object, key: str, by_base: Mapping[str, list[str]]) -> list[str]:
    """ELBO, reconstruction and the model's main term where logged; else the total loss; else everything."""
    chosen = [b for b in ("elbo", "reconstruction_loss") if b in by_base]
    if "reconstruction_loss" not in by_base and "reconstruction" in by_base:  # a model's own name for it
        chosen.append("reconstruction")
    chosen += [b for b in _main_terms(model_or_adata, key) if b in by_base and b not in chosen]
    if not chosen:
        chosen = ["loss"] if "loss" in by_base else list(by_base)
    return chosen


def training_history(
    model_or_adata: object,
    *,
    key: str = "gpovae",
    terms: Sequence[str] | str | None = None,
    log: bool = False,
    ncols: int = 3,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | dict[str, Axes] | Figure | None:
    """Loss terms over the epochs of training, one panel per quantity.

    By default three panels: the negative ELBO (what a VAE minimises, per cell), the reconstruction
    loss, and the model's own main term (for GPO-VAE the GPO fit, the K-hop differential-expression
    loss that shapes its GRN). Each quantity has its own y axis, since their scales differ by orders of
    magnitude; training is drawn solid, validation dashed with markers, in the same colour. Models
    whose history holds none of these get their total loss, or every logged quantity.

    Parameters
    ----------
    model_or_adata
        A trained model (scvi-tools' ``model.history``: a dict of one-column DataFrames indexed by
        epoch) or an AnnData holding ``uns[key]["history"]`` (a DataFrame indexed by epoch, one
        column per logged term).
    key
        The ``key_added`` the model was fitted under; used for an AnnData only.
    terms
        What to draw: ``None`` for the default panels above; ``"all"`` for every term logged per epoch
        (``*_step`` terms are left out), or a list of logged terms (``"elbo_train"``) or quantities
        (``"elbo"``, drawing both phases). Terms of one quantity share a panel.
    log
        Logarithmic y axes (symmetric-log on a panel whose terms reach 0 or below).
    ncols
        Panels per row.
    figsize
        Size of a new figure; defaults to about 3.6 × 2.8 inches per panel. Ignored when ``ax`` is given.
    ax
        Axes to draw into, when one panel is drawn (e.g. ``terms=["elbo"]``); ``None`` creates a new figure.
    show
        Show the figure; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of showing it.

    Returns
    -------
    The Figure if ``return_fig``; else, if not shown, the Axes (one panel) or a dict mapping each
    quantity to its Axes (several panels); otherwise ``None``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import pandas as pd
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(seed=0)
    >>> history = pd.DataFrame(
    ...     {"elbo_train": [3.0, 2.0, 1.5], "elbo_validation": [3.2, 2.4, 2.0], "kl_local_train": [0.5, 0.4, 0.3]}
    ... )
    >>> adata.uns["gpovae"] = {"history": history}
    >>> ax = pg.pl.training_history(adata, key="gpovae", show=False)  # one default panel: the ELBO
    >>> len(ax.get_lines())
    2
    """
    check_flags(show=show, return_fig=return_fig)
    check_ax(ax)
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"`ncols` must be a positive integer, found {ncols!r}.")
    series = history_series(model_or_adata, key)
    per_epoch = [n for n in series if not n.endswith("_step")]
    by_base: dict[str, list[str]] = {}
    for name in per_epoch:
        by_base.setdefault(base_name(name), []).append(name)
    if terms is None:
        names = [n for b in _default_quantities(model_or_adata, key, by_base) for n in by_base[b]]
    elif isinstance(terms, str) and terms == "all":
        names = per_epoch
    else:
        asked = [terms] if isinstance(terms, str) else [str(t) for t in terms]
        names = []
        missing = []
        for t in asked:
            found = [t] if t in series else by_base.get(t, [])
            if not found:
                missing.append(t)
            names += [n for n in found if n not in names]
        if missing:
            raise KeyError(
                f"Terms {missing} were not logged; logged terms: {list(series)} (quantities: {list(by_base)})."
            )
    numeric: dict[str, pd.Series] = {}
    for name in names:
        values = pd.to_numeric(series[name], errors="coerce")
        if values.notna().any():
            numeric[name] = values
        elif terms is not None and terms != "all":
            raise ValueError(f"Term {name!r} holds no numeric value.")
    if not numeric:
        raise ValueError(f"No numeric per-epoch term to draw; logged terms: {list(series)}.")
    panels: dict[str, list[str]] = {}
    for name in numeric:
        panels.setdefault(base_name(name), []).append(name)
    if ax is not None and len(panels) > 1:
        raise ValueError(
            f"`ax` holds one panel, but {len(panels)} quantities would be drawn ({list(panels)}); "
            "pass `terms=` naming one quantity, or `ax=None`."
        )

    if ax is not None:
        fig, grid = ax.figure, np.array([ax])
    else:
        n_cols = min(int(ncols), len(panels))
        n_rows = int(np.ceil(len(panels) / n_cols))
        fig, grid = plt.subplots(
            n_rows,
            n_cols,
            figsize=figsize or (3.6 * n_cols, 2.8 * n_rows + 0.4),
            squeeze=False,
            layout="constrained",
        )
        grid = grid.ravel()
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    axes: dict[str, Axes] = {}
    phases = set()
    for i, (panel, (base, members)) in enumerate(zip(grid, panels.items(), strict=False)):
        color = cycle[i % len(cycle)]
        for name in members:
            values = numeric[name].dropna()
            epochs = (
                np.asarray(values.index, dtype=float)
                if np.issubdtype(values.index.dtype, np.number)
                else np.arange(len(values))
            )
            validation = is_validation(name)
            phases.add("validation" if validation else "train")
            panel.plot(
                epochs,
                values.to_numpy(dtype=float),
                color=color,
                linestyle="--" if validation else "-",
                marker="o" if validation else None,
                markersize=3,
                label=name,
            )
        if log:
            drawn = np.concatenate([numeric[n].dropna().to_numpy(dtype=float) for n in members])
            if (drawn > 0).all():
                panel.set_yscale("log")
            else:
                nonzero = np.abs(drawn[drawn != 0])
                panel.set_yscale("symlog", linthresh=max(float(np.min(nonzero, initial=1.0)), 1e-8))
        panel.set_title(TITLES.get(base, base.replace("_", " ")), fontsize=10)
        panel.set_xlabel("epoch")
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        panel.grid(alpha=0.3, linewidth=0.5)
        axes[base] = panel
    for panel in grid[len(panels) :]:
        panel.set_visible(False)
    first = next(iter(axes.values()))
    first.set_ylabel("loss")
    if phases == {"train", "validation"}:
        handles = [
            Line2D([], [], color="black", linestyle="-", label="training cells"),
            Line2D([], [], color="black", linestyle="--", marker="o", markersize=3, label="validation cells"),
        ]
        if ax is None:
            fig.legend(handles=handles, loc="outside upper right", ncols=2, fontsize=8, frameon=False)
        else:
            ax.legend(handles=handles, fontsize=8, frameon=False)
    if ax is None:
        name = key if isinstance(model_or_adata, AnnData) else type(model_or_adata).__name__
        fig.suptitle(f"training history ({name})", fontsize=11)
    return show_or_return(fig, first if len(axes) == 1 else axes, show=show, return_fig=return_fig)

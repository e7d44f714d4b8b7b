"""Evaluation metrics of several models and baselines, one panel per metric."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pertgrn.pl._utils import as_frame, check_flags, show_or_return, uns_entry

#: Which way is better for pertgrn's metrics (``+1`` higher, ``-1`` lower).
DIRECTION = {
    "ate_pearson": 1,
    "ate_r2": 1,
    "topk_jaccard": 1,
    "ate_mse": -1,
    "mean_wasserstein": 1,  # CausalBench: inferred edges whose targets shift more under the perturbation
    "false_omission_rate": -1,
    "grn_auprc": 1,
    "grn_early_precision": 1,
    "hit_rate": 1,
    "mk_mmd": -1,
    "aecd": -1,
}
#: Colour of the direction notes.
_NOTE_COLOR = "#333333"


def is_count(name: str) -> bool:
    """Whether a reported value is bookkeeping (a count such as ``n_edges``), not a score."""
    return name.startswith("n_")


def direction_note(name: str) -> str:
    """``"↑ higher is better"``, ``"↓ lower is better"``, ``"count (not a score)"`` or ``""`` (unknown metric)."""
    if is_count(name):
        return "count (not a score)"
    sign = DIRECTION.get(name)
    if sign is None:
        for known, value in DIRECTION.items():  # per-perturbation variants, e.g. "ate_pearson_delta"
            if name.startswith(known):
                sign = value
                break
    return {1: "↑ higher is better", -1: "↓ lower is better"}.get(sign, "")


def metrics_table(adata: AnnData, keys: Sequence[str]) -> pd.DataFrame:
    """Metric × key table of the values in ``uns[key]["metrics"]`` (NaN where a key lacks a metric)."""
    columns = {}
    for key in keys:
        frame = as_frame(
            uns_entry(adata, key, "metrics", how="run `pertgrn.tl.evaluate(adata, key=...)` first"),
            what=f"adata.uns[{key!r}]['metrics']",
        )
        if "value" not in frame.columns:
            raise KeyError(f"adata.uns[{key!r}]['metrics'] must have a 'value' column; found {list(frame.columns)}.")
        values = pd.to_numeric(frame["value"], errors="coerce")
        values.index = values.index.astype(str)
        if values.index.has_duplicates:
            twice = values.index[values.index.duplicated()].tolist()
            raise ValueError(f"adata.uns[{key!r}]['metrics'] names a metric twice: {twice}.")
        columns[key] = values
    return pd.DataFrame(columns)


def metrics(
    adata: AnnData,
    *,
    keys: Sequence[str],
    metrics: Sequence[str] | None = None,
    ncols: int = 4,
    palette: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> dict[str, Axes] | Figure | None:
    """Compare models and baselines on their evaluation metrics.

    Metrics live on different scales (a correlation, a distance, a rate), so each gets its own
    panel; within a panel there is one bar per key, in the order of ``keys`` and in the same colour
    across panels, with its value written above. A key that lacks a metric leaves its place empty
    and is marked "n/a". Each panel's y axis says which direction is better (``↑ higher is better``,
    ``↓ lower is better``). Counts that :func:`pertgrn.tl.evaluate` reports for context (``n_edges``,
    ``n_edges_evaluated``: names starting with ``n_``) are not scores: they come after the metrics, on
    a row of their own with paler bars and the label "count (not a score)".

    Parameters
    ----------
    adata
        AnnData whose ``uns[key]["metrics"]`` (a DataFrame indexed by metric name with a ``"value"``
        column, written by ``pertgrn.tl.evaluate``) holds each key's results.
    keys
        The ``key_added`` of each model or baseline to compare, e.g. ``["gpovae", "baseline_de"]``.
    metrics
        Metric names to draw, in this order; ``None`` draws every metric any key has.
    ncols
        Panels per row.
    palette
        One colour per key; ``None`` uses matplotlib's colour cycle.
    figsize
        Size of the figure; defaults to about 2.6 × 3 inches per panel.
    show
        Show the figure; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of showing it.

    Returns
    -------
    The Figure if ``return_fig``; else, if not shown, a dict mapping each metric name to its Axes
    (metrics first, then counts); otherwise ``None``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import pandas as pd
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(seed=0)
    >>> adata.uns["model"] = {"metrics": pd.DataFrame({"value": [0.8, 0.1]}, index=["ate_pearson", "fdr"])}
    >>> adata.uns["baseline"] = {"metrics": pd.DataFrame({"value": [0.5, 0.3]}, index=["ate_pearson", "fdr"])}
    >>> axes = pg.pl.metrics(adata, keys=["model", "baseline"], show=False)
    >>> list(axes)
    ['ate_pearson', 'fdr']
    >>> axes["ate_pearson"].get_ylabel()
    '↑ higher is better'
    """
    check_flags(show=show, return_fig=return_fig)
    keys = [keys] if isinstance(keys, str) else [str(k) for k in keys]
    if not keys:
        raise ValueError("`keys` is empty; pass the keys of the models and baselines to compare.")
    if len(set(keys)) != len(keys):
        raise ValueError(f"`keys` names a key twice: {keys}.")
    if isinstance(ncols, bool) or not isinstance(ncols, numbers.Integral) or ncols < 1:
        raise ValueError(f"`ncols` must be a positive integer, found {ncols!r}.")
    table = metrics_table(adata, keys)
    if metrics is None:
        names = table.index.tolist()
    else:
        names = [metrics] if isinstance(metrics, str) else [str(m) for m in metrics]
        missing = [m for m in names if m not in table.index]
        if missing:
            raise KeyError(f"Metrics {missing} are not reported under any of {keys}; reported: {table.index.tolist()}.")
    if not names:
        raise ValueError(f"No metric to draw: the metrics tables of {keys} are empty.")
    if palette is None:
        cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
        palette = [cycle[i % len(cycle)] for i in range(len(keys))]
    elif len(palette) < len(keys):
        raise ValueError(f"`palette` has {len(palette)} colours for {len(keys)} keys.")

    scores = [m for m in names if not is_count(m)]
    counts = [m for m in names if is_count(m)]
    n_cols = min(int(ncols), max(len(scores), len(counts)))
    rows_scores = int(np.ceil(len(scores) / n_cols))
    rows_counts = int(np.ceil(len(counts) / n_cols))
    n_rows = rows_scores + rows_counts
    fig, grid = plt.subplots(
        n_rows,
        n_cols,
        figsize=figsize or (max(2.6, 0.5 * len(keys) + 1.2) * n_cols, 3.0 * n_rows),
        squeeze=False,
        layout="constrained",
    )
    # metrics fill the first rows, counts start a row of their own
    slots = [grid[i // n_cols, i % n_cols] for i in range(len(scores))]
    slots += [grid[rows_scores + i // n_cols, i % n_cols] for i in range(len(counts))]
    axes: dict[str, Axes] = {}
    positions = np.arange(len(keys))
    for panel, name in zip(slots, [*scores, *counts], strict=True):
        count = is_count(name)
        values = table.loc[name, keys].to_numpy(dtype=float)
        present = np.isfinite(values)
        bars = panel.bar(
            positions[present],
            values[present],
            color=[c for c, ok in zip(palette, present, strict=False) if ok],
            alpha=0.45 if count else 1.0,
        )
        panel.bar_label(bars, fmt="%.3g", fontsize=7, padding=2)
        for pos in positions[~present]:
            panel.annotate(
                "n/a", (pos, 0.0), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8, color="grey"
            )
        panel.axhline(0.0, color="black", linewidth=0.6)
        panel.set_xticks(
            positions, labels=keys, rotation=45 if len(keys) > 2 else 0, ha="right" if len(keys) > 2 else "center"
        )
        panel.set_title(name)
        panel.set_ylabel(direction_note(name), fontsize=9, color=_NOTE_COLOR)
        panel.margins(y=0.15)
        axes[name] = panel
    used = {id(p) for p in slots}
    for panel in grid.ravel():
        if id(panel) not in used:
            panel.set_visible(False)
    return show_or_return(fig, axes, show=show, return_fig=return_fig)

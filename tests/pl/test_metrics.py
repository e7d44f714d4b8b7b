from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle

import pertgrn as pg


def _bars(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_one_panel_per_metric_one_bar_per_key(screen, metrics_frames):
    for key, frame in metrics_frames.items():
        screen.uns[key] = {"metrics": frame}
    axes = pg.pl.metrics(screen, keys=["model", "baseline"], show=False)
    assert list(axes) == ["ate_pearson", "false_omission_rate", "mean_wd"]
    for name, ax in axes.items():
        assert ax.get_title() == name
        assert [t.get_text() for t in ax.get_xticklabels()] == ["model", "baseline"]
    heights = [b.get_height() for b in _bars(axes["ate_pearson"])]
    assert heights == pytest.approx([0.8, 0.5])
    # the baseline has no mean_wd: one bar and an "n/a" mark
    assert [b.get_height() for b in _bars(axes["mean_wd"])] == pytest.approx([2.0])
    assert "n/a" in [t.get_text() for t in axes["mean_wd"].texts]
    # same colour for a key in every panel, different colours for different keys
    first = [tuple(b.get_facecolor()) for b in _bars(axes["ate_pearson"])]
    second = [tuple(b.get_facecolor()) for b in _bars(axes["false_omission_rate"])]
    assert first == second and first[0] != first[1]
    # values are written on the bars
    assert {"0.8", "0.5"} <= {t.get_text() for t in axes["ate_pearson"].texts}


def test_metric_subset_order_and_layout(screen, metrics_frames):
    for key, frame in metrics_frames.items():
        screen.uns[key] = {"metrics": frame}
    fig = pg.pl.metrics(
        screen, keys=["baseline", "model"], metrics=["false_omission_rate", "ate_pearson"], ncols=1, return_fig=True
    )
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["false_omission_rate", "ate_pearson"]
    assert [b.get_height() for b in _bars(visible[0])] == pytest.approx([0.3, 0.1])
    assert len({round(ax.get_position().x0, 3) for ax in visible}) == 1  # one column


def test_metrics_errors_leave_adata_untouched(screen, metrics_frames):
    screen.uns["model"] = {"metrics": metrics_frames["model"]}
    with pytest.raises(KeyError, match="tl.evaluate"):
        pg.pl.metrics(screen, keys=["model", "shift"], show=False)
    with pytest.raises(KeyError, match="not reported"):
        pg.pl.metrics(screen, keys=["model"], metrics=["auprc"], show=False)
    screen.uns["bad"] = {"metrics": pd.DataFrame({"score": [1.0]}, index=["x"])}
    with pytest.raises(KeyError, match="'value' column"):
        pg.pl.metrics(screen, keys=["bad"], show=False)
    with pytest.raises(ValueError, match="twice"):
        pg.pl.metrics(screen, keys=["model", "model"], show=False)
    assert np.array_equal(screen.uns["model"]["metrics"]["value"], metrics_frames["model"]["value"])


def test_directions_and_counts_apart_from_scores(screen):
    screen.uns["model"] = {
        "metrics": pd.DataFrame(
            {"value": [0.8, 120.0, 0.1, 0.4, 100.0]},
            index=["ate_pearson", "n_edges", "false_omission_rate", "mean_wasserstein", "n_edges_evaluated"],
        )
    }
    screen.uns["baseline"] = {"metrics": pd.DataFrame({"value": [0.5, 80.0]}, index=["ate_pearson", "n_edges"])}
    axes = pg.pl.metrics(screen, keys=["model", "baseline"], ncols=2, show=False)
    # scores first, in their order; the counts after them, on a row of their own
    assert list(axes) == ["ate_pearson", "false_omission_rate", "mean_wasserstein", "n_edges", "n_edges_evaluated"]
    assert axes["ate_pearson"].get_ylabel() == "↑ higher is better"
    assert axes["false_omission_rate"].get_ylabel() == "↓ lower is better"
    assert axes["mean_wasserstein"].get_ylabel() == "↑ higher is better"
    assert axes["n_edges"].get_ylabel() == axes["n_edges_evaluated"].get_ylabel() == "count (not a score)"
    rows = {name: round(ax.get_position().y0, 3) for name, ax in axes.items()}
    assert rows["n_edges"] == rows["n_edges_evaluated"] < rows["mean_wasserstein"] < rows["ate_pearson"]
    # the slot beside mean_wasserstein stays empty rather than taking a count
    assert len([ax for ax in axes["n_edges"].figure.axes if ax.get_visible()]) == 5
    # counts are drawn paler than scores, in the same colour per key
    score_bar, count_bar = _bars(axes["ate_pearson"])[0], _bars(axes["n_edges"])[0]
    assert count_bar.get_alpha() < 1.0 and score_bar.get_alpha() in (None, 1.0)
    assert score_bar.get_facecolor()[:3] == count_bar.get_facecolor()[:3]

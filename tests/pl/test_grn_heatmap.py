from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import pertgrn as pg
from pertgrn._grn_store import NodeGRN, read_grn, write_grn


def _separators(ax):
    return [line for line in ax.lines if line.get_gid() == "group_separator"]


def _group_labels(ax):
    labels = []
    for child in ax.child_axes:  # the secondary axes on top and right
        axis = child.xaxis if child.get_xticklabels() else child.yaxis
        labels.append([t.get_text() for t in axis.get_ticklabels()])
    return labels


def test_heatmap_draws_the_full_grn_in_two_blocks(screen):
    graph = read_grn(screen, "baseline_de")
    nodes, weights = graph.nodes, graph.weights
    n_targets = len(screen.uns["pertgrn"]["targets"])
    ax = pg.pl.grn_heatmap(screen, key="baseline_de", show=False)
    assert isinstance(ax, Axes)
    image = ax.get_images()[0]
    assert image.get_array().shape == (len(nodes), len(nodes))
    np.testing.assert_allclose(image.get_array().filled(np.nan), weights, rtol=1e-6)
    # the italics are explained under the axis (the screen has unmeasured targets)
    assert screen.uns["pertgrn"]["unmeasured_targets"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == (
        "target\nitalic: target not measured (no expression column)",
        "regulator",
    )
    assert image.colorbar is not None and image.colorbar.ax in ax.figure.axes
    assert image.norm.vmin == 0 and image.norm.vmax == pytest.approx(weights.max())
    separators = _separators(ax)
    assert len(separators) == 2  # one horizontal, one vertical, between targets and extended genes
    positions = sorted({*separators[0].get_xdata(), *separators[0].get_ydata()} - {0, 1})
    assert positions == [n_targets - 0.5]
    assert _group_labels(ax) == [["targets", "extended genes"], ["targets", "extended genes"]]
    # few nodes: every row and column is labelled, in GRN order, unmeasured targets in italics
    assert [t.get_text() for t in ax.get_xticklabels()] == nodes
    assert [t.get_text() for t in ax.get_yticklabels()] == nodes
    italic = {t.get_text() for t in ax.get_yticklabels() if t.get_fontstyle() == "italic"}
    assert italic == set(screen.uns["pertgrn"]["unmeasured_targets"])


def test_threshold_masks_weak_edges(screen):
    weights = read_grn(screen, "baseline_de").weights
    threshold = float(np.quantile(weights[weights > 0], 0.5))
    ax = pg.pl.grn_heatmap(screen, key="baseline_de", threshold=threshold, show=False)
    data = ax.get_images()[0].get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(data), np.abs(weights) < threshold)
    assert "0." in ax.get_title() or "≥" in ax.get_title()


def test_nodes_subset_keeps_blocks_in_grn_order(screen):
    targets = list(screen.uns["pertgrn"]["targets"])
    extended = list(screen.var_names[screen.var["pertgrn_extended"]])
    chosen = [extended[1], targets[2], extended[0], targets[0]]
    ax = pg.pl.grn_heatmap(screen, key="baseline_de", nodes=chosen, show=False)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    nodes = read_grn(screen, "baseline_de").nodes
    assert labels == [n for n in nodes if n in set(chosen)]
    assert labels[:2] == [targets[0], targets[2]]
    assert ax.get_images()[0].get_array().shape == (4, 4)
    measured = set(screen.uns["pertgrn"]["measured_targets"])
    if not set(chosen) & set(screen.uns["pertgrn"]["unmeasured_targets"]):
        assert ax.get_xlabel() == "target"  # no italic name drawn, no note
    assert set(chosen) & measured
    with pytest.raises(KeyError, match="not nodes of this GRN"):
        pg.pl.grn_heatmap(screen, key="baseline_de", nodes=["NOT_A_GENE"], show=False)


def test_only_targets_means_no_separator(screen):
    targets = list(screen.uns["pertgrn"]["targets"])
    ax = pg.pl.grn_heatmap(screen, key="baseline_de", nodes=targets, show=False)
    assert _separators(ax) == []
    assert _group_labels(ax) == [["targets"], ["targets"]]


def test_hundreds_of_nodes_show_group_labels_only_and_signed_scale():
    rng = np.random.default_rng(0)
    n_targets, n_extended = 40, 160
    genes = [f"g{i}" for i in range(n_targets + n_extended)]
    adata = ad.AnnData(np.zeros((3, len(genes)), dtype=np.float32), var=pd.DataFrame(index=genes))
    adata.var["pertgrn_extended"] = np.arange(len(genes)) >= n_targets
    adata.uns["pertgrn"] = {"targets": genes[:n_targets], "control": "control"}
    weights = rng.normal(size=(len(genes), len(genes)))
    write_grn(adata, key="big", grn=NodeGRN(nodes=genes, weights=weights, signed=True), params={})
    fig = pg.pl.grn_heatmap(adata, key="big", return_fig=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xticklabels() == [] and ax.get_yticklabels() == []
    assert _group_labels(ax)[0] == ["targets", "extended genes"]
    assert len(_separators(ax)) == 2
    norm = ax.get_images()[0].norm
    assert norm.vmin == pytest.approx(-norm.vmax) and norm.vmax == pytest.approx(np.abs(weights).max(), rel=1e-6)
    assert ax.get_images()[0].get_cmap().name.startswith("RdBu")
    width, height = fig.get_size_inches()
    assert width <= 12 and height <= 10


def test_draws_into_given_axes_and_leaves_adata_alone(screen):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    before = {k: set(v) if isinstance(v, dict) else None for k, v in screen.uns.items()}
    out = pg.pl.grn_heatmap(screen, key="baseline_de", ax=ax, show=False)
    assert out is ax
    assert {k: set(v) if isinstance(v, dict) else None for k, v in screen.uns.items()} == before


def test_missing_grn_raises_with_advice(screen):
    with pytest.raises(KeyError, match="baseline_grn"):
        pg.pl.grn_heatmap(screen, key="nothing_here", show=False)
    with pytest.raises(TypeError, match="threshold"):
        pg.pl.grn_heatmap(screen, key="baseline_de", threshold="high", show=False)


def test_probabilities_are_centred_on_the_prior():
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    adata = ad.AnnData(
        X=sparse.csr_matrix(np.ones((3, 3), dtype=np.float32)),
        obs=pd.DataFrame({"perturbation": ["control", "A", "B"]}, index=["c0", "c1", "c2"]),
        var=pd.DataFrame(index=["A", "B", "C"]),
    )
    pg.pp.annotate_perturbations(adata, control="control")
    probabilities = np.array([[0.5, 0.8, 0.45], [0.3, 0.5, 0.52]])[:, :2]
    write_grn(adata, key="probs", grn=NodeGRN(nodes=["A", "B"], weights=probabilities), params={"method": "toy"})
    ax = pg.pl.grn_heatmap(adata, key="probs", show=False)
    low, high = ax.images[0].get_clim()
    assert (low, high) == pytest.approx((0.2, 0.8))  # symmetric around 0.5, span = max |p - 0.5| = 0.3
    assert ax.images[0].get_cmap().name.startswith("RdBu_r")
    ax = pg.pl.grn_heatmap(adata, key="probs", center=None, show=False)
    assert ax.images[0].get_clim() == pytest.approx((0.0, 0.8))
    with pytest.raises(ValueError, match="center"):
        pg.pl.grn_heatmap(adata, key="probs", center="middle", show=False)

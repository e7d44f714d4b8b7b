from __future__ import annotations

import random

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.patches import FancyArrowPatch

import pertgrn as pg
from pertgrn._grn_store import NodeGRN, read_grn, write_grn
from pertgrn.pl._grn_network import (
    ACTIVATION_COLOR,
    MAX_WIDTH,
    MIN_WIDTH,
    REPRESSION_COLOR,
    UNIFORM_WIDTH,
    strongest_edges,
)
from pertgrn.pl._utils import ROLE_COLORS, node_roles


def _arrows(ax):
    return [p for p in ax.patches if isinstance(p, FancyArrowPatch)]


def _nodes(ax):
    """Role label → node positions, from the per-role scatter collections."""
    return {c.get_label(): c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)}


def _labels(ax):
    return [t for t in ax.texts if t.get_gid() == "node_label"]


def test_network_draws_top_edges_with_their_nodes(screen):
    top = 15
    ax = pg.pl.grn_network(screen, key="baseline_de", top_edges=top, show=False)
    edges = strongest_edges(screen, key="baseline_de", threshold=None, top_edges=top)
    names = set(edges["source"]) | set(edges["target"])
    assert len(_arrows(ax)) == top
    assert sum(len(pos) for pos in _nodes(ax).values()) == len(names)
    assert {t.get_text() for t in _labels(ax)} == names and len(_labels(ax)) == len(names)
    # the regulators of a DE GRN are perturbed targets: measured ones red, unmeasured ones pink
    design = screen.uns["pertgrn"]
    roles = {
        "perturbed target": names & set(design["measured_targets"]),
        "unmeasured target": names & set(design["unmeasured_targets"]),
        "extended gene": names & set(screen.var_names[screen.var["pertgrn_extended"]]),
    }
    drawn = _nodes(ax)
    for role, members in roles.items():
        if members:
            assert len(drawn[role]) == len(members)
            collection = next(c for c in ax.collections if c.get_label() == role)
            assert to_hex(collection.get_facecolor()[0]) == ROLE_COLORS[role]
    # a legend entry for every node role drawn (and none for roles absent), then what edges mean
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    drawn_roles = set(node_roles(screen, sorted(names)))
    assert [t for t in legend if t in ROLE_COLORS] == [r for r in ROLE_COLORS if r in drawn_roles]
    magnitude = np.abs(edges["weight"].to_numpy())
    assert magnitude.min() < 0.8 * magnitude.max()  # DE scores differ: widths follow them
    assert legend[len(drawn_roles) :] == [
        "edge: regulator → target",
        f"|weight| {magnitude.max():.3g}",
        f"|weight| {magnitude.min():.3g}",
    ]
    # width proportional to |weight|: the strongest edge widest, the weakest narrowest
    widths = np.array([a.get_linewidth() for a in _arrows(ax)])
    np.testing.assert_allclose(widths, MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * magnitude / magnitude.max())
    assert "top 15 edges" in ax.get_title()
    # names beside their nodes: offset from the node by more than its radius, never centred on it
    radius = np.sqrt(150.0) / 2.0
    for label in _labels(ax):
        dx, dy = label.xyann
        assert np.hypot(dx, dy) > radius
        assert (label.get_ha(), label.get_va()) != ("center", "center")


def test_widths_are_uniform_when_weights_barely_differ(screen):
    graph = read_grn(screen, "baseline_de")
    nodes, weights = graph.nodes, graph.weights
    # edge probabilities just above 0.5, as GPO-VAE's: differences of 0.1 % mean nothing to a reader
    probabilities = np.where(weights > 0, 0.5 + 0.003 * weights / weights.max(), 0.4)
    write_grn(screen, key="probabilities", grn=NodeGRN(nodes=nodes, weights=probabilities), params={})
    ax = pg.pl.grn_network(screen, key="probabilities", top_edges=20, show=False)
    widths = {a.get_linewidth() for a in _arrows(ax)}
    assert widths == {UNIFORM_WIDTH}
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[-1].endswith("(one width)") and "0.503" in legend[-1]


def test_edges_are_the_strongest_and_skip_self_loops(screen):
    graph = read_grn(screen, "baseline_de")
    weights = graph.weights
    edges = strongest_edges(screen, key="baseline_de", threshold=None, top_edges=10)
    off = weights.copy()
    np.fill_diagonal(off, 0)
    np.testing.assert_allclose(np.sort(edges["weight"].to_numpy())[::-1], np.sort(off.ravel())[::-1][:10])
    assert (edges["source"] != edges["target"]).all()


def test_signed_edges_are_coloured_by_sign(screen):
    graph = read_grn(screen, "baseline_de")
    nodes, weights = graph.nodes, graph.weights
    signs = np.where(np.random.default_rng(1).random(weights.shape) < 0.5, -1.0, 1.0)
    write_grn(screen, key="signed", grn=NodeGRN(nodes=nodes, weights=weights * signs, signed=True), params={})
    ax = pg.pl.grn_network(screen, key="signed", top_edges=20, show=False)
    edges = strongest_edges(screen, key="signed", threshold=None, top_edges=20)
    colours = [to_hex(a.get_edgecolor()) for a in _arrows(ax)]
    assert colours.count(ACTIVATION_COLOR) == int((edges["weight"] > 0).sum())
    assert colours.count(REPRESSION_COLOR) == int((edges["weight"] < 0).sum())
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "activation (w > 0)" in legend and "repression (w < 0)" in legend


def test_layout_is_reproducible_and_leaves_global_random_alone(screen):
    random.seed(123)
    expected = random.random()
    random.seed(123)
    a = pg.pl.grn_network(screen, key="baseline_de", top_edges=10, seed=3, show=False)
    assert random.random() == expected
    b = pg.pl.grn_network(screen, key="baseline_de", top_edges=10, seed=3, show=False)
    c = pg.pl.grn_network(screen, key="baseline_de", top_edges=10, seed=4, show=False)
    pa, pb, pc = (np.vstack(list(_nodes(x).values())) for x in (a, b, c))
    np.testing.assert_allclose(pa, pb)
    assert not np.allclose(pa, pc)


def test_bad_arguments(screen):
    with pytest.raises(ValueError, match="top_edges"):
        pg.pl.grn_network(screen, key="baseline_de", top_edges=0, show=False)
    with pytest.raises(ValueError, match="no edges"):
        pg.pl.grn_network(screen, key="baseline_de", threshold=1e9, show=False)
    with pytest.raises(KeyError, match="No GRN"):
        pg.pl.grn_network(screen, key="absent", show=False)

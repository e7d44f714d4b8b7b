from __future__ import annotations

import numpy as np
import pytest
from gcrl_fixtures import build_modular_screen
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

import pertgrn as pg
from pertgrn.pl._tf_communities import UNASSIGNED_COLOR, community_colors


@pytest.fixture(scope="module")
def communities():
    return build_modular_screen()


def _nodes(ax):
    return {c.get_label(): c for c in ax.collections if isinstance(c, PathCollection)}


def _edges(ax):
    return [c for c in ax.collections if isinstance(c, LineCollection) and c.get_gid() == "tf_edge"]


def test_nodes_coloured_by_community_and_edges_drawn(communities):
    record = communities.uns["tf_communities"]
    K = record["n_communities"]
    ax = pg.pl.tf_communities(communities, top_edges=30, show=False)
    nodes = _nodes(ax)
    sizes = np.bincount(record["communities"]["community"].to_numpy()[record["communities"]["community"] >= 0])
    colors = community_colors(K)
    for k in range(K):
        collection = nodes[f"C{k} ({sizes[k]} TFs)"]
        assert len(collection.get_offsets()) == sizes[k]
        assert to_hex(collection.get_facecolor()[0]) == colors[k]
    assert sum(len(c.get_offsets()) for c in nodes.values()) == len(record["tfs"])
    (lines,) = _edges(ax)
    assert len(lines.get_segments()) == 30
    # all TFs labelled (40 ≤ 60)
    assert {t.get_text() for t in ax.texts if t.get_gid() == "node_label"} == set(record["tfs"])
    assert "permutation p" in ax.get_title()


def test_all_edges_unassigned_tfs_and_labels_off(communities):
    adata = communities.copy()
    table = adata.uns["tf_communities"]["communities"]
    table.loc[table.index[:2], "community"] = -1
    ax = pg.pl.tf_communities(adata, top_edges=None, labels=False, show=False)
    (lines,) = _edges(ax)
    assert len(lines.get_segments()) == len(adata.uns["tf_communities"]["graph"])
    grey = _nodes(ax)["no community (2)"]
    assert to_hex(grey.get_facecolor()[0]) == UNASSIGNED_COLOR
    assert not [t for t in ax.texts if t.get_gid() == "node_label"]


def test_layout_is_reproducible(communities):
    first = pg.pl.tf_communities(communities, show=False)
    second = pg.pl.tf_communities(communities, show=False)
    label = "C0 (10 TFs)"
    np.testing.assert_array_equal(_nodes(first)[label].get_offsets(), _nodes(second)[label].get_offsets())


def test_palette_never_repeats_or_uses_grey():
    for k in (3, 9, 10, 18, 25):
        colors = community_colors(k)
        assert len(set(colors)) == k and UNASSIGNED_COLOR not in colors and "#7f7f7f" not in colors


def test_show_and_return_rule(communities, shown, autoshow):
    assert isinstance(pg.pl.tf_communities(communities, return_fig=True), Figure)
    assert not shown
    assert pg.pl.tf_communities(communities, show=True) is None and len(shown) == 1
    autoshow(False)
    assert pg.pl.tf_communities(communities) is not None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"key": "absent"}, KeyError),
        ({"top_edges": 0}, ValueError),
        ({"labels": "yes"}, TypeError),
        ({"seed": 1.5}, TypeError),
        ({"show": "no"}, TypeError),
    ],
)
def test_bad_arguments(communities, kwargs, error):
    with pytest.raises(error):
        pg.pl.tf_communities(communities, **kwargs)

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata_equal import assert_equal
from sklearn.metrics import adjusted_rand_score

import pertgrn as pg
from pertgrn.pp._tf_communities import (
    RESOLUTIONS,
    canonical,
    choose_resolution,
    cohesion_ratios,
    cohesion_test,
    consensus_partition,
    tf_tf_graph,
)

BLOCK_SIZES = (12, 10, 8)


def planted_grn(seed: int = 0, extra_edges: pd.DataFrame | None = None) -> tuple[ad.AnnData, dict[str, int]]:
    """An AnnData whose reference GRN has 3 dense TF blocks (12, 10, 8 TFs) joined by weak links.

    TF names are shuffled so that neither alphabetical order nor block order give the size order;
    the TFs also regulate 20 non-TF genes, and ``LONE`` regulates only non-TF genes.
    """
    rng = np.random.default_rng(seed)
    n = sum(BLOCK_SIZES)
    names = [f"TF{i:02d}" for i in rng.permutation(n)]
    block = np.repeat(np.arange(len(BLOCK_SIZES)), BLOCK_SIZES)
    rows = []
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if block[i] == block[j] and rng.random() < 0.7:
                rows.append((names[i], names[j], rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)))
            elif block[i] != block[j] and rng.random() < 0.03:
                rows.append((names[i], names[j], 0.05))
    genes = [f"G{i:02d}" for i in range(20)]
    for i in range(n):
        for g in rng.choice(genes, size=3, replace=False):
            rows.append((names[i], g, rng.uniform(0.2, 1.0)))
    rows += [("LONE", "G00", 0.8), ("LONE", "G01", -0.6)]
    edges = pd.DataFrame(rows, columns=["source", "target", "weight"])
    if extra_edges is not None:
        edges = pd.concat([edges, extra_edges], ignore_index=True)
    edges = edges.assign(pvalue=1e-6, qvalue=1e-5)
    var_names = sorted(set(edges["source"]) | set(edges["target"]))
    adata = ad.AnnData(X=np.zeros((5, len(var_names)), dtype=np.float32), var=pd.DataFrame(index=var_names))
    adata.uns["reference_grn"] = {"edges": edges, "summary": {}, "params": {}}
    return adata, dict(zip(names, block.tolist(), strict=True))


# ---- pieces ----------------------------------------------------------------------------------------


def test_tf_tf_graph_is_symmetric_sum_of_absolute_weights_without_self_loops():
    edges = pd.DataFrame(
        {
            "source": ["A", "B", "A", "C", "A", "B"],
            "target": ["B", "A", "C", "C", "X", "C"],
            "weight": [0.5, -0.3, 0.2, 1.0, 2.0, -0.1],
        }
    )
    tfs, graph = tf_tf_graph(edges)
    assert tfs == ["A", "B", "C"]
    expected = pd.DataFrame({"source": ["A", "A", "B"], "target": ["B", "C", "C"], "weight": [0.8, 0.2, 0.1]})
    pd.testing.assert_frame_equal(graph, expected)


def test_choose_resolution_breaks_ties_by_fewer_communities_then_smaller_resolution():
    table = pd.DataFrame(
        {
            "resolution": [0.9, 1.0, 1.1, 1.2],
            "score": [np.inf, np.inf, np.inf, 5.0],
            "n_communities": [4.0, 3.0, 3.0, 2.0],
        }
    )
    assert choose_resolution(table) == 1
    finite = table.assign(score=[2.0, 3.0, 3.0 * (1 + 1e-12), 1.0], n_communities=[3.0, 4.0, 4.0, 2.0])
    assert choose_resolution(finite) == 1  # a relative difference of 1e-12 is a tie: smaller γ
    assert choose_resolution(finite.assign(n_communities=[3.0, 4.0, 2.0, 2.0])) == 2


def test_consensus_is_invariant_to_relabelling_runs_and_numbers_by_size():
    rng = np.random.default_rng(0)
    base = np.repeat([0, 1, 2], [6, 9, 3])
    names = [f"T{i:02d}" for i in range(base.size)]
    runs = []
    for r in range(30):
        run = base.copy()
        if r % 3:  # two thirds of the runs move one or two TFs
            run[rng.choice(base.size, size=1 + r % 2, replace=False)] = rng.integers(0, 3)
        runs.append(run)
    runs = np.array(runs)
    labels, agreement = consensus_partition(np.array([canonical(r) for r in runs]), names)
    relabelled = np.array([rng.permutation(3)[r] for r in runs])
    labels_again, agreement_again = consensus_partition(relabelled, names)
    np.testing.assert_array_equal(labels, labels_again)
    np.testing.assert_allclose(agreement, agreement_again)
    # the majority partition, communities numbered by decreasing size: the 9-TF block is community 0
    np.testing.assert_array_equal(labels, np.array([1, 0, 2])[base])
    assert (agreement > 0.5).all() and agreement.max() == 1.0


def test_cohesion_by_hand_on_four_nodes():
    # A-B 2, B-C 1, C-D 3; communities {A, B}, {C, D}
    W = np.zeros((4, 4))
    for i, j, w in ((0, 1, 2.0), (1, 2, 1.0), (2, 3, 3.0)):
        W[i, j] = W[j, i] = w
    labels = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(cohesion_ratios(W, labels, 2)[0], [2 / 3, 3 / 4])
    result = cohesion_test(W, labels, n_perm=200, rng=np.random.default_rng(0))
    assert result["statistic"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    # the only size-preserving relabellings: {AB|CD}, {AC|BD} (ratio 0) and {AD|BC} (BC: 1 / (1 + 5))
    feasible = {round((2 / 3 + 3 / 4) / 2, 9), 0.0, round(1 / 12, 9)}
    assert set(np.round(result["null"], 9)) <= feasible
    assert result["pvalue"] == pytest.approx((1 + np.sum(result["null"] >= result["statistic"])) / 201)


# ---- the function on a planted partition ------------------------------------------------------------


@pytest.mark.parametrize("flavor", ["igraph", "leidenalg"])
def test_planted_partition_is_recovered_exactly(flavor):
    adata, planted = planted_grn()
    runs = 100 if flavor == "igraph" else 10
    pg.pp.tf_communities(adata, n_runs=runs, flavor=flavor)
    result = adata.uns["tf_communities"]
    table = result["communities"].set_index("tf")
    assert result["n_communities"] == 3
    found = table.loc[list(planted), "community"].to_numpy()
    assert adjusted_rand_score(list(planted.values()), found) == 1.0
    # numbered by size: community 0 is the 12-TF block, 2 the 8-TF block
    assert np.bincount(found).tolist() == [12, 10, 8]
    # the paper's grid, one stability row per resolution, the chosen one flagged
    stability = result["stability"]
    assert len(RESOLUTIONS) == 12 and stability["resolution"].tolist() == list(RESOLUTIONS)
    assert stability["chosen"].sum() == 1
    assert stability.loc[stability["chosen"], "resolution"].item() == result["resolution"]
    # the isolated TF: in the TF list, out of the partition
    assert "LONE" in result["tfs"] and table.loc["LONE", "community"] == -1 and np.isnan(table.loc["LONE", "agreement"])
    column = adata.var["pertgrn_tf_community"]
    assert column.dtype == np.int64 and column["LONE"] == -1 and column["G00"] == -1
    assert (column[list(planted)] == found).all()
    # the planted partition is far more cohesive than random relabellings
    assert result["cohesion"]["pvalue"] == pytest.approx(1 / 1001)
    assert (result["cohesion"]["w_ratio"] > 0.9).all()


def test_small_communities_are_kept_and_logged(caplog):
    pair = pd.DataFrame({"source": ["P1", "P2"], "target": ["P2", "P1"], "weight": [1.0, 1.0]})
    adata, _ = planted_grn(extra_edges=pair)
    with caplog.at_level("WARNING", logger="pertgrn"):
        pg.pp.tf_communities(adata, n_runs=10, n_perm=50)
    assert "fewer than 3 TFs" in caplog.text
    table = adata.uns["tf_communities"]["communities"].set_index("tf")
    assert table.loc["P1", "community"] == table.loc["P2", "community"] == 3
    assert adata.uns["tf_communities"]["n_communities"] == 4


def test_copy_round_trip_and_key_added(tmp_path):
    adata, _ = planted_grn()
    out = pg.pp.tf_communities(adata, n_runs=10, n_perm=50, key_added="modules", copy=True)
    assert "modules" not in adata.uns and "pertgrn_modules" not in adata.var
    assert out.uns["modules"]["keys"] == {"var": "pertgrn_modules", "grn": "reference_grn"}
    path = tmp_path / "communities.h5ad"
    out.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_series_equal(back.var["pertgrn_modules"], out.var["pertgrn_modules"])
    record, again = out.uns["modules"], back.uns["modules"]
    for name in ("communities", "graph", "stability"):
        pd.testing.assert_frame_equal(again[name], record[name], check_index_type=False)
    assert again["resolution"] == record["resolution"] and again["n_communities"] == record["n_communities"]
    assert list(again["tfs"]) == record["tfs"]
    np.testing.assert_array_equal(again["cohesion"]["null"], record["cohesion"]["null"])
    assert again["cohesion"]["pvalue"] == record["cohesion"]["pvalue"]
    assert dict(again["params"])["n_runs"] == 10


def test_modular_simulator_communities_match_the_planted_modules(modular_screen):
    adata = modular_screen
    planted = adata.var["true_tf_module"].to_numpy()
    found = adata.var["pertgrn_tf_community"].to_numpy()
    tf = planted >= 0
    assert (found[tf] >= 0).all() and (found[~tf] == -1).all()
    assert adjusted_rand_score(planted[tf], found[tf]) >= 0.9  # measured: 1.0 (4 modules of 10 TFs)
    assert adata.uns["tf_communities"]["cohesion"]["pvalue"] < 0.01


# ---- bad input ---------------------------------------------------------------------------------------


def test_a_grn_without_tf_tf_edges_is_an_error():
    edges = pd.DataFrame({"source": ["A", "B"], "target": ["X", "Y"], "weight": [1.0, 2.0]})
    adata = ad.AnnData(X=np.zeros((2, 4), dtype=np.float32), var=pd.DataFrame(index=["A", "B", "X", "Y"]))
    adata.uns["reference_grn"] = {"edges": edges}
    before = adata.copy()
    with pytest.raises(ValueError, match="no edge between two of them"):
        pg.pp.tf_communities(adata)
    assert_equal(adata, before)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"key": "absent"}, KeyError, "pp.reference_grn"),
        ({"n_runs": 1}, ValueError, "n_runs"),
        ({"n_runs": 2.5}, TypeError, "n_runs"),
        ({"resolutions": []}, ValueError, "empty"),
        ({"resolutions": [1.0, -1.0]}, ValueError, "positive"),
        ({"resolutions": [1.0, 1.0]}, ValueError, "duplicates"),
        ({"resolutions": 1.0}, TypeError, "sequence"),
        ({"flavor": "louvain"}, ValueError, "flavor"),
        ({"n_perm": -1}, ValueError, "n_perm"),
        ({"copy": "yes"}, TypeError, "copy"),
    ],
)
def test_bad_arguments_leave_adata_untouched(kwargs, error, match):
    adata, _ = planted_grn()
    before = adata.copy()
    with pytest.raises(error, match=match):
        pg.pp.tf_communities(adata, **kwargs)
    assert_equal(adata, before)

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import pertgrn as pg


@pytest.fixture
def adata() -> AnnData:
    adata = AnnData(np.zeros((3, 3), dtype=np.float32))
    adata.var_names = ["A", "B", "C"]
    adata.uns["toy"] = {
        # "U" is a perturbation target without an expression column
        "nodes": ["A", "B", "U"],
        "grn": np.array([[0.99, 0.2, 0.7], [0.6, 0.5, 0.0], [0.9, 0.05, 0.8]]),
        "keys": {"varp": "toy_grn"},
    }
    adata.varp["toy_grn"] = sparse.csr_matrix(np.array([[0.9, 0.2, 0.0], [0.6, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    return adata


def test_all_nodes_sorted_without_self_loops(adata):
    df = pg.get.grn_df(adata, key="toy")
    assert list(df.columns) == ["source", "target", "weight"]
    assert len(df) == 5  # 3 × 3 minus the diagonal and the zero B -> U
    assert (df["source"] != df["target"]).all()
    assert df["weight"].is_monotonic_decreasing
    assert df.iloc[0].tolist() == ["U", "A", 0.9]
    # ties are ordered by source, then target
    adata.uns["toy"]["grn"][1, 2] = 0.2
    ties = pg.get.grn_df(adata, key="toy").query("weight == 0.2")
    assert ties[["source", "target"]].values.tolist() == [["A", "B"], ["B", "U"]]
    assert "U" in set(df["source"]) | set(df["target"])


def test_threshold_gives_binary_grn(adata):
    df = pg.get.grn_df(adata, key="toy", threshold=0.5)
    assert set(zip(df["source"], df["target"], strict=True)) == {("U", "A"), ("A", "U"), ("B", "A")}
    assert (df["weight"] > 0.5).all()
    assert pg.get.grn_df(adata, key="toy", threshold=1.0).empty


def test_top_edges_by_magnitude(adata):
    adata.uns["toy"]["grn"] = np.array([[0.0, -3.0, 1.0], [2.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    df = pg.get.grn_df(adata, key="toy", top_edges=2)
    # a signed graph ranks by magnitude: the repression A -| B is the strongest edge
    assert df[["source", "target"]].values.tolist() == [["A", "B"], ["B", "A"]]
    assert df["weight"].tolist() == [-3.0, 2.0]
    assert pg.get.grn_df(adata, key="toy", threshold=2.5)["weight"].tolist() == [-3.0]
    assert len(pg.get.grn_df(adata, key="toy", top_edges=10)) == 4
    assert pg.get.grn_df(adata, key="toy", top_edges=0).empty


def test_falls_back_to_varp(adata):
    del adata.uns["toy"]["grn"]
    df = pg.get.grn_df(adata, key="toy")
    expected = pd.DataFrame({"source": ["B", "A"], "target": ["A", "B"], "weight": [0.6, 0.2]})
    pd.testing.assert_frame_equal(df, expected)


def test_errors(adata):
    with pytest.raises(KeyError, match="missing"):
        pg.get.grn_df(adata, key="nothing")
    with pytest.raises(ValueError, match="threshold"):
        pg.get.grn_df(adata, key="toy", threshold="0.5")
    with pytest.raises(ValueError, match="top_edges"):
        pg.get.grn_df(adata, key="toy", top_edges=-1)
    adata.uns["toy"]["grn"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="shape"):
        pg.get.grn_df(adata, key="toy")
    adata.uns["bare"] = {"params": {}}
    with pytest.raises(KeyError, match="No GRN"):
        pg.get.grn_df(adata, key="bare")


def _written(adata, grn, key="rec"):
    from pertgrn._grn_store import write_grn

    write_grn(adata, key=key, grn=grn, params={"method": "test"})
    return adata


def test_gene_record_stores_each_edge_once_and_reads_back(adata, tmp_path):
    import anndata as ad

    from pertgrn._grn_store import NodeGRN, read_grn

    weights = np.array([[0.0, 0.8, 0.3], [0.05, 0.0, 0.6], [0.9, 0.2, 0.0]])
    grn = NodeGRN(nodes=["A", "B", "U"], weights=weights, signed=False, min_weight=0.1)
    _written(adata, grn)
    record = adata.uns["rec"]
    assert "grn" not in record and record["level"] == "gene" and record["edge_rule"] == {"min_weight": 0.1}
    varp = adata.varp["rec_grn"]
    assert sparse.issparse(varp) and varp.nnz == 1  # A -> B among measured genes; B -> A (0.05) fails the rule
    assert set(map(tuple, record["unmeasured_edges"][["source", "target"]].to_numpy())) == {
        ("A", "U"),
        ("B", "U"),
        ("U", "A"),
        ("U", "B"),
    }
    adata.write_h5ad(tmp_path / "g.h5ad")
    back = ad.read_h5ad(tmp_path / "g.h5ad")
    expected = np.where(weights > 0.1, weights, 0.0)
    np.testing.assert_allclose(read_grn(back, "rec").weights, expected, rtol=1e-6)
    assert len(pg.get.grn_df(back, key="rec")) == 5


def test_latent_dag_keeps_signs_through_the_store(adata, tmp_path):
    import anndata as ad

    from pertgrn._grn_store import LatentGRN

    dag = np.array([[0.0, 0.7, -0.5], [0.0, 0.0, -0.9], [0.0, 0.0, 0.0]])
    lift = pd.DataFrame({"latent": ["L0", "L1", "L2"], "gene": ["A", "B", "C"], "weight": [1.0, 1.0, 1.0]})
    _written(adata, LatentGRN(latents=["L0", "L1", "L2"], dag=dag, lift=lift))
    adata.write_h5ad(tmp_path / "l.h5ad")
    back = ad.read_h5ad(tmp_path / "l.h5ad")
    df = pg.get.grn_df(back, key="rec")
    assert df[["source", "target"]].values.tolist() == [["L1", "L2"], ["L0", "L1"], ["L0", "L2"]]
    np.testing.assert_allclose(df["weight"], [-0.9, 0.7, -0.5], rtol=1e-6)
    # the lift to genes: one anchor per latent, so the same three signed edges between genes, also in varp
    genes = pg.get.grn_df(back, key="rec", level="gene")
    assert genes["weight"].round(6).tolist() == [-0.9, 0.7, -0.5]
    assert back.varp["rec_grn"].nnz == 3 and back.varp["rec_grn"].min() == pytest.approx(-0.9)
    with pytest.raises(ValueError, match="gene-level"):
        pg.get.grn_df(adata, key="toy", level="latent")


def test_lift_sums_over_anchor_genes():
    from pertgrn._grn_store import LatentGRN

    lift = pd.DataFrame({"latent": ["a", "a", "b"], "gene": ["G1", "G2", "G3"], "weight": [0.5, 2.0, 1.0]})
    grn = LatentGRN(latents=["a", "b"], dag=np.array([[0.0, 0.4], [0.0, 0.0]]), lift=lift, min_weight=0.3)
    lifted = grn.lifted()
    table = pd.DataFrame(lifted.weights, index=lifted.nodes, columns=lifted.nodes)
    assert table.loc["G1", "G3"] == pytest.approx(0.2) and table.loc["G2", "G3"] == pytest.approx(0.8)
    assert np.count_nonzero(lifted.weights) == 2
    below = LatentGRN(latents=["a", "b"], dag=np.array([[0.0, 0.2], [0.0, 0.0]]), lift=lift, min_weight=0.3)
    assert not below.lifted().weights.any()

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import pertgrn as pg
from pertgrn._grn_store import NodeGRN, read_grn, write_grn


@pytest.fixture(scope="module")
def screen():
    adata = pg.datasets.simulate(seed=3)
    pg.pp.annotate_perturbations(adata, control="control")
    pg.pp.select_extended_genes(adata)
    adata.obs["test"] = np.random.default_rng(0).random(adata.n_obs) < 0.3
    return adata


def _write_truth(adata, key="truth"):
    """The simulator's GRN written as if a model had found it, over the same nodes as the baselines."""
    from pertgrn.tl._baselines import grn_nodes

    nodes = grn_nodes(adata)
    index = {n: i for i, n in enumerate(nodes)}
    weights = np.zeros((len(nodes), len(nodes)))
    for s, t in adata.uns["simulation"]["grn"][["source", "target"]].itertuples(index=False):
        if s in index and t in index:
            weights[index[s], index[t]] = 1.0
    write_grn(adata, key=key, grn=NodeGRN(nodes=nodes, weights=weights), params={"method": "truth"})


def test_true_grn_beats_random_graph(screen):
    adata = screen.copy()
    _write_truth(adata)
    n_true = int((read_grn(adata, "truth").weights > 0).sum())
    pg.tl.baseline_grn(adata, method="random", n_edges=n_true, seed=0)
    truth = pg.tl.evaluate(adata, key="truth", metrics="grn", test_key="test")["value"]
    random = pg.tl.evaluate(adata, key="baseline_random", metrics="grn", test_key="test")["value"]
    assert truth["n_edges"] == random["n_edges"] == n_true
    assert truth["grn_auprc"] == pytest.approx(1.0)
    assert random["grn_auprc"] < 0.3
    assert truth["mean_wasserstein"] > 2 * random["mean_wasserstein"]
    assert truth["false_omission_rate"] < random["false_omission_rate"]
    assert isinstance(adata.uns["truth"]["metrics"], pd.DataFrame)


def test_de_baseline_ranks_true_edges(screen):
    adata = screen.copy()
    pg.tl.baseline_grn(adata, method="de")
    table = pg.tl.evaluate(adata, key="baseline_de", metrics=["grn_auprc", "grn_early_precision"])
    density = None
    nodes = list(adata.uns["baseline_de"]["nodes"])
    # the DE ranking finds descendants, direct or not: far above the edge density
    sim = adata.uns["simulation"]["grn"]
    n_true = sim[sim["source"].isin(nodes) & sim["target"].isin(nodes)].shape[0]
    density = n_true / (len(nodes) * (len(nodes) - 1))
    assert table.loc["grn_auprc", "value"] > 3 * density
    assert set(table.index) == {"grn_auprc", "grn_early_precision"}


def test_prediction_metrics_order_baselines(screen):
    adata = screen.copy()
    for method in ("control", "mean_shift", "half_split"):
        pg.tl.baseline_predict(adata, method=method, test_key="test", key_added=method)
    shift = pg.tl.evaluate(adata, key="mean_shift", metrics="ate", test_key="test")["value"]
    half = pg.tl.evaluate(adata, key="half_split", metrics="ate", test_key="test")["value"]
    control = pg.tl.evaluate(adata, key="control", metrics="ate", test_key="test")["value"]
    assert shift["ate_pearson"] > 0.8
    assert shift["ate_mse"] < control["ate_mse"]
    assert shift["ate_r2"] > control["ate_r2"]
    assert 0 < half["ate_pearson"] <= 1
    assert 0 <= shift["topk_jaccard"] <= 1


def test_metrics_survive_h5ad(screen, tmp_path):
    adata = screen.copy()
    pg.tl.baseline_predict(adata, method="mean_shift", test_key="test", key_added="shift")
    pg.tl.evaluate(adata, key="shift", test_key="test")
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    pd.testing.assert_frame_equal(back.uns["shift"]["metrics"], adata.uns["shift"]["metrics"])


def test_errors_teach(screen):
    adata = screen.copy()
    with pytest.raises(KeyError, match="Nothing to evaluate"):
        pg.tl.evaluate(adata, key="absent")
    pg.tl.baseline_grn(adata, method="de")
    with pytest.raises(ValueError, match="Unknown metric"):
        pg.tl.evaluate(adata, key="baseline_de", metrics=["accuracy"])
    with pytest.raises(KeyError, match="boolean column"):
        pg.tl.evaluate(adata, key="baseline_de", test_key="perturbation")


def test_matched_size_counts_only_evaluable_edges(screen):
    adata = screen.copy()
    pg.tl.baseline_grn(adata, method="de", test_key="test")
    table = pg.tl.evaluate(adata, key="baseline_de", metrics="grn", test_key="test", n_edges=20)["value"]
    assert table["n_edges"] == 20 and table["n_edges_evaluated"] == 20
    too_many = pg.tl.evaluate(adata, key="baseline_de", metrics="mean_wasserstein", test_key="test", n_edges=10**6)
    assert np.isnan(too_many.loc["mean_wasserstein", "value"])


def test_any_delimiter_gives_the_same_scores():
    """FOR and µWD read the screen's own delimiter: a screen written with '_' scores as with '+'."""
    tables = []
    for delimiter in ("+", "_"):
        adata = pg.datasets.simulate(seed=3)
        adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).str.replace("+", delimiter)
        pg.pp.annotate_perturbations(adata, control="control", delimiter=delimiter)
        assert any(delimiter in c for c in adata.obs["pertgrn_condition"].cat.categories)
        adata.obs["test"] = np.random.default_rng(0).random(adata.n_obs) < 0.3
        pg.tl.baseline_grn(adata, method="de", test_key="test")
        tables.append(pg.tl.evaluate(adata, key="baseline_de", metrics="grn", test_key="test", grn_threshold=0.5))
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert tables[0].loc["false_omission_rate", "value"] < 0.2


def test_truth_as_a_long_table_with_unmeasured_regulators(screen):
    adata = screen.copy()
    pg.tl.baseline_grn(adata, method="de", test_key="test")
    truth = adata.uns["simulation"]["grn"][["source", "target"]]
    unmeasured = set(adata.uns["pertgrn"]["unmeasured_targets"])
    assert unmeasured & set(truth["source"])  # the reference names regulators without an expression column
    by_key = pg.tl.evaluate(adata, key="baseline_de", metrics=["grn_auprc"], test_key="test")
    by_table = pg.tl.evaluate(adata, key="baseline_de", metrics=["grn_auprc"], test_key="test", truth=truth)
    assert by_table.loc["grn_auprc", "value"] == pytest.approx(by_key.loc["grn_auprc", "value"])
    collectri_style = truth.rename(columns={"source": "tf"})
    again = pg.tl.evaluate(adata, key="baseline_de", metrics=["grn_auprc"], test_key="test", truth=collectri_style)
    assert again.loc["grn_auprc", "value"] == pytest.approx(by_key.loc["grn_auprc", "value"])
    no_truth = pg.tl.evaluate(adata, key="baseline_de", metrics="grn", test_key="test", truth=None)
    assert "grn_auprc" not in no_truth.index
    with pytest.raises(ValueError, match="source"):
        pg.tl.evaluate(adata, key="baseline_de", truth=pd.DataFrame({"a": ["x"], "b": ["y"]}))


def test_latent_dag_is_scored_on_its_lift_and_checked():
    from pertgrn._grn_store import LatentGRN

    adata = pg.datasets.simulate(seed=3)
    pg.pp.annotate_perturbations(adata, control="control")
    adata.obs["test"] = np.random.default_rng(0).random(adata.n_obs) < 0.3
    targets = [t for t in adata.uns["pertgrn"]["measured_targets"]][:3]
    latents = [*targets, "free_0"]
    dag = np.zeros((4, 4))
    dag[0, 1], dag[1, 2], dag[0, 3] = 0.8, -0.6, 0.5
    lift = pd.DataFrame({"latent": targets, "gene": targets, "weight": 1.0})
    write_grn(adata, key="dag", grn=LatentGRN(latents=latents, dag=dag, lift=lift, min_weight=0.3), params={})
    table = pg.tl.evaluate(adata, key="dag", metrics=["grn", "dag"], test_key="test", grn_threshold=0.3)["value"]
    assert table["dag_is_acyclic"] == 1.0 and table["dag_n_edges"] == 3
    assert table["n_edges"] == 2  # the lift: free_0 anchors no gene
    # AUPRC on the lift: a reference with exactly the two lifted edges ranks them first
    exact = pd.DataFrame({"source": targets[:2], "target": targets[1:3]})
    scored = pg.tl.evaluate(adata, key="dag", metrics=["grn_auprc"], truth=exact)["value"]
    assert scored["grn_auprc"] == pytest.approx(1.0)
    dag[2, 0] = 0.9  # a cycle 0 -> 1 -> 2 -> 0
    write_grn(adata, key="cyclic", grn=LatentGRN(latents=latents, dag=dag, lift=lift, min_weight=0.3), params={})
    cyclic = pg.tl.evaluate(adata, key="cyclic", metrics="dag", grn_threshold=0.3)["value"]
    assert cyclic["dag_is_acyclic"] == 0.0 and cyclic["dag_n_edges"] == 4


def test_metrics_df_collects_keys(screen):
    adata = screen.copy()
    for method in ("de", "correlation"):
        pg.tl.baseline_grn(adata, method=method, test_key="test")
        pg.tl.evaluate(adata, key=f"baseline_{method}", metrics=["grn_auprc", "n_edges"], test_key="test")
    table = pg.get.metrics_df(adata, keys=["baseline_correlation", "baseline_de"])
    assert list(table.columns) == ["key", "metric", "value"]
    assert table["key"].unique().tolist() == ["baseline_correlation", "baseline_de"]
    wide = table.pivot(index="metric", columns="key", values="value")
    assert wide.loc["grn_auprc", "baseline_de"] > wide.loc["grn_auprc", "baseline_correlation"]
    with pytest.raises(KeyError, match="tl.evaluate"):
        pg.get.metrics_df(adata, keys=["nothing"])

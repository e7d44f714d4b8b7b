from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import pertgrn as pg
from pertgrn._grn_store import read_grn


@pytest.fixture
def screen():
    """Control, A (lowers B), C (raises D) and A+C, with an unmeasured target Z; 40 cells each."""
    rng = np.random.default_rng(0)
    genes = ["A", "B", "C", "D", "E"]
    base = np.array([50.0, 50.0, 50.0, 50.0, 50.0])
    effects = {
        "control": np.ones(5),
        "A": np.array([0.2, 0.3, 1, 1, 1]),
        "C": np.array([1, 1, 0.2, 3.0, 1]),
        "A+C": np.array([0.2, 0.3, 0.2, 3.0, 1]),
        "Z": np.array([1, 1, 1, 1, 2.0]),
    }
    labels = np.repeat(list(effects), 40)
    mu = np.vstack([base * effects[label] for label in labels])
    X = rng.poisson(mu).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    adata = ad.AnnData(X=sparse.csr_matrix(X), obs=obs, var=pd.DataFrame(index=genes))
    adata.obs["test"] = rng.random(adata.n_obs) < 0.5
    pg.pp.annotate_perturbations(adata, control="control")
    return adata


def test_de_grn_finds_the_effects(screen):
    pg.tl.baseline_grn(screen, method="de")
    entry = screen.uns["baseline_de"]
    assert list(entry["nodes"]) == ["A", "C", "Z"]  # no extended genes annotated: targets only
    grn = pd.DataFrame(read_grn(screen, "baseline_de").weights, index=entry["nodes"], columns=entry["nodes"])
    # A and C do not regulate each other: only the compositional shift of normalisation (< 1 log2 unit)
    assert grn.loc["A", "C"] < 1.0 and grn.loc["C", "A"] < 1.0
    assert np.all(np.diag(grn) == 0)
    assert grn["Z"].abs().sum() == 0  # Z is not measured: no effect on it can be observed
    varp = screen.varp["baseline_de_grn"]
    assert sparse.issparse(varp) and varp.shape == (5, 5)
    assert varp[0].nnz <= 1  # row A: only C is a measured node


def test_de_grn_scores_extended_genes(screen):
    screen.var["pertgrn_extended"] = [False, True, False, True, False]
    pg.tl.baseline_grn(screen, method="de", key_added="de")
    entry = screen.uns["de"]
    nodes = list(entry["nodes"])
    assert nodes == ["A", "C", "Z", "B", "D"]
    grn = pd.DataFrame(read_grn(screen, "de").weights, index=nodes, columns=nodes)
    # A's knockdown lowers B by log2(0.3) ~ -1.7; C's raises D by log2(3) ~ 1.6 (minus normalisation)
    assert grn.loc["A", "B"] > 1.0 and grn.loc["C", "D"] > 0.8
    # off-target scores are the compositional shift of normalisation, well below the direct effects
    assert grn.loc["A", "B"] > 2 * grn.loc["A", "D"] and grn.loc["C", "D"] > 2 * grn.loc["C", "B"]
    edges = pg.get.grn_df(screen, key="de")
    assert tuple(edges.iloc[0][["source", "target"]]) in {("A", "B"), ("C", "D")}


def test_random_and_correlation(screen):
    pg.tl.baseline_grn(screen, method="random", n_edges=4, seed=1)
    grn = read_grn(screen, "baseline_random").weights
    assert (grn != 0).sum() == 4 and np.all(np.diag(grn) == 0)
    pg.tl.baseline_grn(screen, method="correlation")
    corr = read_grn(screen, "baseline_correlation").weights
    np.testing.assert_allclose(corr[:2, :2], corr[:2, :2].T)
    assert np.all(corr <= 1.0 + 1e-6)
    with pytest.raises(ValueError, match="n_edges"):
        pg.tl.baseline_grn(screen, method="random")
    with pytest.raises(ValueError, match="Unknown GRN baseline"):
        pg.tl.baseline_grn(screen, method="magic")


def test_predict_baselines(screen):
    control = pg.tl.baseline_predict(screen, method="control", test_key="test")
    assert (control.to_numpy() == 0).all() and list(control.index) == ["A", "C", "Z", "A+C"]
    shift = pg.tl.baseline_predict(screen, method="mean_shift", test_key="test", perturbations=["A", "C"])
    truth = pg.get.ate_df(screen, mask="test", perturbations=["A", "C"])
    assert np.corrcoef(shift.to_numpy().ravel(), truth.to_numpy().ravel())[0, 1] > 0.95
    additive = pg.tl.baseline_predict(screen, method="additive", test_key="test", perturbations=["A+C"])
    train = pg.get.ate_df(screen, mask=~screen.obs["test"].to_numpy())
    np.testing.assert_allclose(additive.loc["A+C"], train.loc["A"] + train.loc["C"], rtol=1e-5)
    half = pg.tl.baseline_predict(screen, method="half_split", test_key="test", key_added="half")
    reference = screen.uns["half"]["ate_reference"]
    assert list(reference.index) == list(half.index)
    assert not np.allclose(reference.to_numpy(), half.to_numpy())  # two disjoint halves
    with pytest.raises(KeyError, match="singles"):
        screen.obs["test"] = screen.obs["perturbation"].isin(["C", "A+C"]).to_numpy()
        pg.tl.baseline_predict(screen, method="additive", test_key="test", perturbations=["A+C"])


def test_predict_validation(screen):
    with pytest.raises(ValueError, match="Unknown prediction baseline"):
        pg.tl.baseline_predict(screen, method="oracle")
    screen.obs["not_bool"] = 1
    with pytest.raises(TypeError, match="boolean"):
        pg.tl.baseline_predict(screen, method="control", test_key="not_bool")


def test_grn_baseline_uses_training_cells_only(screen):
    pg.tl.baseline_grn(screen, method="de", key_added="all")
    pg.tl.baseline_grn(screen, method="de", key_added="train", test_key="test")
    nodes = list(screen.uns["train"]["nodes"])
    expected = pg.get.ate_df(screen, mask=~screen.obs["test"].to_numpy()).abs()
    grn = pd.DataFrame(read_grn(screen, "train").weights, index=nodes, columns=nodes)
    np.testing.assert_allclose(grn.loc["A", "C"], expected.loc["A", "C"], rtol=1e-5)
    assert not np.allclose(read_grn(screen, "all").weights, read_grn(screen, "train").weights)
    assert screen.uns["train"]["params"]["test_key"] == "test"

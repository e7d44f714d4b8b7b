from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata_equal import assert_equal
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA

import pertgrn as pg
from pertgrn.pp._tf_activity import eigengene


def _log_normalised(adata, target_sum):
    X = adata.X.toarray().astype(np.float64)
    return np.log1p(X / X.sum(axis=1, keepdims=True) * target_sum)


@pytest.fixture
def controls(modular_screen):
    return (modular_screen.obs["perturbation"] == "control").to_numpy()


def test_eigengene_is_pca_on_z_scores_signed_toward_the_mean():
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(300, 1))
    X = shared @ np.array([[1.0, 0.8, -0.3, 0.5]]) + 0.6 * rng.normal(size=(300, 4))
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    v, explained = eigengene(Z)
    pca = PCA(n_components=1).fit(Z)
    np.testing.assert_allclose(np.abs(v), np.abs(pca.components_[0]), atol=1e-10)
    assert explained == pytest.approx(pca.explained_variance_ratio_[0])
    assert np.corrcoef(Z @ v, Z.mean(axis=1))[0, 1] > 0
    # flipping the data flips nothing in the convention: still positive toward the mean
    v_neg, _ = eigengene(-Z)
    assert np.corrcoef(-Z @ v_neg, -Z.mean(axis=1))[0, 1] > 0
    np.testing.assert_array_equal(eigengene(Z[:, :1])[0], [1.0])


def test_activities_columns_and_out_of_sample_reproduction(modular_screen, controls):
    adata = modular_screen
    pg.pp.tf_activity(adata, fit_mask=controls)
    K = adata.uns["tf_communities"]["n_communities"]
    activity = adata.obsm["X_tf_activity"]
    record = adata.uns["tf_activity"]
    assert activity.shape == (adata.n_obs, K + 1)
    assert record["columns"] == [f"C{k}" for k in range(K)] + ["global"]
    loadings = adata.varm["tf_activity_loadings"]
    assert loadings.shape == (adata.n_vars, K + 1)
    community = adata.var["pertgrn_tf_community"].to_numpy()
    for k in range(K):
        assert set(np.flatnonzero(loadings[:, k])) <= set(np.flatnonzero(community == k))
        np.testing.assert_allclose(np.linalg.norm(loadings[:, k]), 1.0)
    # the global column spans every TF of the GRN
    tfs = adata.uns["tf_communities"]["tfs"]
    assert set(adata.var_names[loadings[:, K] != 0]) == set(tfs)
    # the documented formula reproduces every cell, fitted or not
    tf_index = adata.var_names.get_indexer(record["tfs"])
    expr = _log_normalised(adata, record["target_sum"])[:, tf_index]
    by_hand = ((expr - record["mean"]) / record["sd"]) @ loadings[tf_index]
    np.testing.assert_allclose(by_hand, activity, atol=1e-8)
    # the fit: z-scores on the controls, the target sum their median library size
    library = np.asarray(adata.X.sum(axis=1)).ravel()
    assert record["target_sum"] == np.median(library[controls])
    np.testing.assert_allclose(record["mean"], expr[controls].mean(axis=0))
    # each community column is PC1 of its z-scored TFs on the fit cells
    z_fit = (expr[controls] - record["mean"]) / record["sd"]
    for k in range(K):
        members = np.flatnonzero(community[tf_index] == k)
        pca = PCA(n_components=1).fit(z_fit[:, members])
        np.testing.assert_allclose(np.abs(loadings[tf_index[members], k]), np.abs(pca.components_[0]), atol=1e-8)
        assert np.corrcoef(activity[controls, k], z_fit[:, members].mean(axis=1))[0, 1] > 0


def test_non_fit_cells_do_not_change_the_fit(modular_screen, controls):
    adata = modular_screen
    pg.pp.tf_activity(adata, fit_mask=controls)
    corrupted = adata.copy()
    X = corrupted.X.toarray()
    X[~controls] = np.random.default_rng(0).poisson(30.0, size=(int((~controls).sum()), X.shape[1]))
    corrupted.X = sparse.csr_matrix(X)
    pg.pp.tf_activity(corrupted, fit_mask=controls)
    np.testing.assert_array_equal(corrupted.varm["tf_activity_loadings"], adata.varm["tf_activity_loadings"])
    np.testing.assert_array_equal(corrupted.uns["tf_activity"]["mean"], adata.uns["tf_activity"]["mean"])
    np.testing.assert_array_equal(corrupted.obsm["X_tf_activity"][controls], adata.obsm["X_tf_activity"][controls])
    assert not np.allclose(corrupted.obsm["X_tf_activity"][~controls], adata.obsm["X_tf_activity"][~controls])
    # the same cells as an obs column give the same result
    corrupted.obs["fit"] = controls
    pg.pp.tf_activity(corrupted, fit_mask="fit", key_added="X_again")
    np.testing.assert_array_equal(corrupted.obsm["X_again"], corrupted.obsm["X_tf_activity"])
    assert corrupted.uns["again"]["params"]["fit_mask"] == "fit"


def test_activities_track_the_planted_module_activities(modular_screen, controls):
    adata = modular_screen
    pg.pp.tf_activity(adata, fit_mask=controls)
    activity = adata.obsm["X_tf_activity"]
    truth = adata.obsm["true_tf_module_activity"]
    K = truth.shape[1]
    assert activity.shape[1] == K + 1
    corr = np.corrcoef(activity[:, :K].T, truth.T)[:K, K:]
    rows, cols = linear_sum_assignment(-np.abs(corr))
    matched = corr[rows, cols]
    assert (matched > 0.7).all(), matched  # measured: 0.76-0.87, positive: the sign convention holds
    # matched through the communities' TFs, not only through the correlations
    community = adata.var["pertgrn_tf_community"].to_numpy()
    planted = adata.var["true_tf_module"].to_numpy()
    for k, m in zip(rows, cols, strict=True):
        assert np.bincount(planted[community == k]).argmax() == m
    # communities with their TFs permuted (sizes kept) track the modules worse
    rng = np.random.default_rng(0)
    permuted_means = []
    for _ in range(5):
        permuted = adata.copy()
        table = permuted.uns["tf_communities"]["communities"]
        table["community"] = rng.permutation(table["community"].to_numpy())
        pg.pp.tf_activity(permuted, fit_mask=controls)
        corr_perm = np.corrcoef(permuted.obsm["X_tf_activity"][:, :K].T, truth.T)[:K, K:]
        r, c = linear_sum_assignment(-np.abs(corr_perm))
        permuted_means.append(np.abs(corr_perm[r, c]).mean())
    assert np.mean(permuted_means) < matched.mean() - 0.1, (permuted_means, matched)


def test_single_tf_community_is_its_z_score_and_isolated_tfs_join_only_the_global_column(modular_screen):
    adata = modular_screen
    record = adata.uns["tf_communities"]
    table = record["communities"].copy()
    lone, isolated = table["tf"].iloc[0], table["tf"].iloc[1]
    K = record["n_communities"]
    table.loc[table["tf"] == lone, "community"] = K  # a community of one TF
    table.loc[table["tf"] == isolated, "community"] = -1  # a TF without a community
    record["communities"] = table
    pg.pp.tf_activity(adata)
    activity = adata.obsm["X_tf_activity"]
    assert activity.shape[1] == K + 2
    expr = _log_normalised(adata, adata.uns["tf_activity"]["target_sum"])[:, adata.var_names.get_loc(lone)]
    np.testing.assert_allclose(activity[:, K], (expr - expr.mean()) / expr.std(), atol=1e-8)
    loadings = pd.DataFrame(adata.varm["tf_activity_loadings"], index=adata.var_names)
    assert (loadings.loc[isolated, :K] == 0).all() and loadings.loc[isolated, K + 1] != 0


def test_h5ad_round_trip(modular_screen, tmp_path):
    adata = modular_screen
    pg.pp.tf_activity(adata)
    path = tmp_path / "activity.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.obsm["X_tf_activity"], adata.obsm["X_tf_activity"])
    np.testing.assert_array_equal(back.varm["tf_activity_loadings"], adata.varm["tf_activity_loadings"])
    record, again = adata.uns["tf_activity"], back.uns["tf_activity"]
    assert list(again["columns"]) == record["columns"] and list(again["tfs"]) == record["tfs"]
    for name in ("mean", "sd", "explained_variance_ratio", "n_tfs"):
        np.testing.assert_array_equal(again[name], record[name])
    assert dict(again["params"]) == record["params"] and dict(again["keys"]) == record["keys"]


@pytest.mark.parametrize(
    ("fit_mask", "error", "match"),
    [
        (np.ones(10), TypeError, "boolean"),
        ("perturbation", TypeError, "boolean"),
        ("absent", KeyError, "absent"),
        (np.ones(7, dtype=bool), ValueError, "shape"),
        ("none_fit", ValueError, "at least 2 fit cells"),
    ],
)
def test_bad_fit_mask_leaves_adata_untouched(modular_screen, fit_mask, error, match):
    adata = modular_screen
    adata.obs["none_fit"] = False
    if isinstance(fit_mask, np.ndarray) and fit_mask.size == 10:
        fit_mask = np.ones(adata.n_obs)  # right length, wrong dtype
    before = adata.copy()
    with pytest.raises(error, match=match):
        pg.pp.tf_activity(adata, fit_mask=fit_mask)
    assert_equal(adata, before)


def test_missing_communities_and_unmeasured_community(modular_screen):
    adata = modular_screen
    with pytest.raises(KeyError, match="pp.tf_communities"):
        pg.pp.tf_activity(adata, key="absent")
    table = adata.uns["tf_communities"]["communities"]
    table.loc[len(table)] = ["NOT_A_GENE", table["community"].max() + 1, 1.0, 1.0]
    before = adata.copy()
    with pytest.raises(ValueError, match="no TF among var_names"):
        pg.pp.tf_activity(adata)
    assert_equal(adata, before)


def test_a_tf_constant_in_the_fit_cells_gets_loading_zero(modular_screen, controls, caplog):
    adata = modular_screen
    community = adata.var["pertgrn_tf_community"]
    silent = community.index[community == 0][0]
    X = adata.X.toarray()
    X[controls, adata.var_names.get_loc(silent)] = 0.0
    adata.X = sparse.csr_matrix(X)
    with caplog.at_level("WARNING", logger="pertgrn"):
        pg.pp.tf_activity(adata, fit_mask=controls)
    assert "constant in the fit cells" in caplog.text
    loadings = adata.varm["tf_activity_loadings"]
    assert (loadings[adata.var_names.get_loc(silent)] == 0).all()
    assert np.isfinite(adata.obsm["X_tf_activity"]).all()
    # the community keeps an activity from its other TFs
    assert np.count_nonzero(loadings[:, 0]) == (community == 0).sum() - 1

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata_equal import assert_equal
from gcrl_fixtures import modular_tfs
from scipy import sparse, stats
from sklearn.linear_model import Ridge
from sklearn.metrics import average_precision_score

import pertgrn as pg
from pertgrn.pp._reference_grn import bag_moments, bagging_ridge, edge_statistics, gmm_crossing, ridge_solve

TFS_FILE = "human_tfs_lambert2018.txt"


# ---- the regression and the statistics against their references ---------------------------------


def test_ridge_solve_equals_sklearn_ridge_on_bootstrap_rows():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6))
    Y = X[:, :3] @ rng.normal(size=(3, 4)) + rng.normal(size=(120, 4)) + 5.0
    rows = rng.integers(0, 120, size=120)
    counts = np.bincount(rows, minlength=120).astype(float)
    G, C = bag_moments(X, Y, counts)
    features, targets = np.array([0, 2, 3, 5]), np.array([0, 1, 3])
    coef = ridge_solve(G, C, features, targets, alpha=10.0)
    for j, t in enumerate(targets):
        reference = Ridge(alpha=10.0).fit(X[rows][:, features], Y[rows, t]).coef_
        np.testing.assert_allclose(coef[:, j], reference, rtol=1e-9, atol=1e-12)


def test_ridge_solve_leaves_a_target_out_of_its_own_regression():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 5))
    Y = np.column_stack([X[:, 2] + 0.1 * rng.normal(size=80), rng.normal(size=80)])
    counts = np.ones(80)
    G, C = bag_moments(X, Y, counts)
    features = np.array([0, 1, 2, 4])
    # target 0 is regulator 2 itself (position 2 among the features); target 1 is no regulator
    coef = ridge_solve(G, C, features, np.array([0, 1]), 3.0, self_position=np.array([2, -1]))
    assert coef[2, 0] == 0.0
    others = np.array([0, 1, 4])
    np.testing.assert_allclose(coef[[0, 1, 3], 0], Ridge(alpha=3.0).fit(X[:, others], Y[:, 0]).coef_, atol=1e-10)
    np.testing.assert_allclose(coef[:, 1], Ridge(alpha=3.0).fit(X[:, features], Y[:, 1]).coef_, atol=1e-10)


def test_edge_statistics_equal_one_sample_t_test():
    rng = np.random.default_rng(2)
    samples = [rng.normal(0.3, 1.0, size=n) for n in (2, 5, 16, 20)] + [rng.normal(0.0, 0.1, size=16)]
    total = np.array([s.sum() for s in samples])
    total_sq = np.array([(s**2).sum() for s in samples])
    n = np.array([s.size for s in samples], dtype=float)
    mean, p = edge_statistics(total, total_sq, n)
    np.testing.assert_allclose(mean, [s.mean() for s in samples])
    np.testing.assert_allclose(p, [stats.ttest_1samp(s, 0.0).pvalue for s in samples], rtol=1e-7)
    # no test with fewer than two bags; identical non-zero coefficients are certain
    mean, p = edge_statistics(np.array([0.5, 1.5, 0.0]), np.array([0.25, 0.75, 0.0]), np.array([1.0, 3.0, 0.0]))
    np.testing.assert_allclose(p, [1.0, 0.0, 1.0])


def _naive_summary(coefs: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, t-test p-value and count per (regulator, target) from lists of bag coefficients."""
    shape = (5, 8)
    mean, p, n = np.zeros(shape), np.ones(shape), np.zeros(shape)
    for (a, t), values in coefs.items():
        mean[a, t], n[a, t] = np.mean(values), len(values)
        if len(values) >= 2:  # one bag: no test, p = 1
            p[a, t] = stats.ttest_1samp(values, 0.0).pvalue
    return mean, p, n


def test_bagging_ridge_without_prior_equals_per_target_sklearn_fits():
    """One shared group (all regulators); targets 0-4 are the regulators themselves, 5-7 other genes."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(60, 5))
    Y = np.column_stack([X, X[:, :3] @ rng.normal(size=(3, 3))]) + 0.5 * rng.normal(size=(60, 8))
    self_index = np.array([0, 1, 2, 3, 4, -1, -1, -1])
    candidates = np.ones((5, 8), dtype=bool)
    candidates[np.arange(5), np.arange(5)] = False
    weight, pvalue, n = bagging_ridge(
        X, Y, candidates, self_index=self_index, alpha=2.0, n_bags=6, rng=np.random.default_rng(7)
    )
    draws, coefs = np.random.default_rng(7), {}
    for _ in range(6):
        rows = draws.integers(0, 60, size=60)
        offered = np.sort(draws.choice(np.arange(5), size=4, replace=False))
        for t in range(8):
            features = offered[offered != self_index[t]]
            fit = Ridge(alpha=2.0).fit(X[rows][:, features], Y[rows, t])
            for a, c in zip(features, fit.coef_, strict=True):
                coefs.setdefault((a, t), []).append(c)
    mean, p, count = _naive_summary(coefs)
    np.testing.assert_array_equal(n, count)
    np.testing.assert_allclose(weight, mean, atol=1e-10)
    np.testing.assert_allclose(pvalue, p, rtol=1e-6, atol=1e-12)


def test_bagging_ridge_with_a_prior_equals_per_target_sklearn_fits():
    """Every target has its own candidate set: the stacked small systems, CellOracle's per-target draws."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, 5))
    Y = X @ rng.normal(size=(5, 8)) + rng.normal(size=(50, 8))
    candidates = np.zeros((5, 8), dtype=bool)
    sets = {0: [1], 1: [0, 2], 2: [3], 3: [1, 4], 4: [0, 1, 2], 5: [2, 4], 6: [0, 3, 4], 7: [4]}
    for t, regulators in sets.items():
        candidates[regulators, t] = True
    weight, pvalue, n = bagging_ridge(X, Y, candidates, alpha=1.0, n_bags=5, rng=np.random.default_rng(8))
    # the draws, in the function's order: per bag the cells, then one stack per candidate-set size
    by_size: dict[int, list[int]] = {}
    for t, regulators in sets.items():
        by_size.setdefault(len(regulators), []).append(t)
    draws, coefs = np.random.default_rng(8), {}
    for _ in range(5):
        rows = draws.integers(0, 50, size=50)
        for r, targets in sorted(by_size.items()):
            size = max(1, int(0.8 * r))
            pick = np.argsort(draws.random((len(targets), r)), axis=1)[:, :size]
            for t, chosen in zip(targets, pick, strict=True):
                features = np.sort(np.asarray(sets[t])[chosen])
                fit = Ridge(alpha=1.0).fit(X[rows][:, features], Y[rows, t])
                for a, c in zip(features, fit.coef_, strict=True):
                    coefs.setdefault((a, t), []).append(c)
    mean, p, count = _naive_summary(coefs)
    np.testing.assert_array_equal(n, count)
    assert (n[~candidates] == 0).all()
    np.testing.assert_allclose(weight, mean, atol=1e-10)
    np.testing.assert_allclose(pvalue, p, rtol=1e-6, atol=1e-12)


def _pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["source"], frame["target"], strict=True))


def _bh_by_hand(p: np.ndarray) -> np.ndarray:
    m = p.size
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


# ---- a toy structural model with known signed edges ----------------------------------------------


def _toy_screen(seed: int = 0, n_cells: int = 600) -> tuple[ad.AnnData, pd.DataFrame]:
    """3 independent TFs; 18 targets with one TF each (signed log-scale effect); 5 unregulated genes."""
    rng = np.random.default_rng(seed)
    tf_names = ["TFA", "TFB", "TFC"]
    activity = rng.normal(size=(n_cells, 3))
    effects = []
    log_mean = [np.log(60.0) + 0.4 * activity]
    names = list(tf_names)
    for i in range(18):
        tf, w = i % 3, (0.5 if i % 2 == 0 else -0.5)
        log_mean.append((np.log(40.0) + w * activity[:, tf])[:, None])
        names.append(f"T{i:02d}")
        effects.append((tf_names[tf], f"T{i:02d}", w))
    for i in range(5):
        log_mean.append(np.full((n_cells, 1), np.log(40.0)))
        names.append(f"N{i}")
    counts = rng.poisson(np.exp(np.hstack(log_mean))).astype(np.float32)
    adata = ad.AnnData(
        X=sparse.csr_matrix(counts),
        obs=pd.DataFrame({"perturbation": ["control"] * n_cells}, index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=names),
    )
    return adata, pd.DataFrame(effects, columns=["source", "target", "weight"])


def test_toy_model_recovers_signed_edges_and_bh_is_hand_bh():
    adata, truth = _toy_screen()
    pg.pp.reference_grn(adata, tfs=["TFA", "TFB", "TFC"], control_only=False, fdr=1.0, edge_threshold=None)
    edges = pg.get.reference_grn_df(adata)
    # every (TF, gene ≠ TF) pair is tested: 3 × 23 targets + 3 × 2 TF → TF pairs
    assert len(edges) == 3 * 23 + 6
    assert not (edges["source"] == edges["target"]).any()
    np.testing.assert_allclose(edges["qvalue"], _bh_by_hand(edges["pvalue"].to_numpy()), rtol=1e-12)
    np.testing.assert_allclose(edges["qvalue"], stats.false_discovery_control(edges["pvalue"]), rtol=1e-12)
    assert (edges["qvalue"] >= edges["pvalue"]).all()
    merged = truth.merge(edges, on=["source", "target"], suffixes=("_true", ""))
    assert len(merged) == len(truth)
    assert (np.sign(merged["weight"]) == np.sign(merged["weight_true"])).all()
    assert (merged["qvalue"] < 1e-6).all()
    # the 18 true edges are the 18 strongest
    assert _pairs(edges.iloc[:18]) == _pairs(truth)


def test_edge_filters_fdr_top_fraction_and_gmm():
    adata, truth = _toy_screen(seed=1)
    pg.pp.reference_grn(adata, tfs=["TFA", "TFB", "TFC"], control_only=False, fdr=0.05, edge_threshold=None)
    significant = pg.get.reference_grn_df(adata)
    assert (significant["qvalue"] <= 0.05).all()
    summary = adata.uns["reference_grn"]["summary"]
    assert summary["n_significant"] == len(significant) < summary["n_tested"]
    pg.pp.reference_grn(adata, tfs=["TFA", "TFB", "TFC"], control_only=False, edge_threshold=0.5)
    top = pg.get.reference_grn_df(adata)
    assert len(top) == int(np.ceil(0.5 * len(significant)))
    assert top["weight"].abs().min() >= significant["weight"].abs().nlargest(len(top)).min()
    pg.pp.reference_grn(adata, tfs=["TFA", "TFB", "TFC"], control_only=False)  # "gmm"
    kept = pg.get.reference_grn_df(adata)
    summary = adata.uns["reference_grn"]["summary"]
    means = summary["gmm"]["means"]
    assert means[0] < summary["log10_threshold"] < means[1]
    assert (np.log10(kept["weight"].abs()) >= summary["log10_threshold"]).all()
    assert summary["kept_fraction"] == pytest.approx(len(kept) / len(significant))
    # the strong true edges lie above the crossing of the two components
    assert _pairs(truth) <= _pairs(kept)


def test_gmm_crossing_of_two_separated_components():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(-2.0, 0.3, 600), rng.normal(0.0, 0.3, 400)])
    threshold, fit = gmm_crossing(values)
    np.testing.assert_allclose(fit["means"], [-2.0, 0.0], atol=0.05)
    # equal variances: the crossing sits at the midpoint shifted toward the lighter component
    expected = -1.0 + 0.3**2 / 2.0 * np.log(fit["weights"][0] / fit["weights"][1])
    assert threshold == pytest.approx(expected, abs=0.05)


# ---- the simulator with planted modules ----------------------------------------------------------


def test_recovers_true_edges_on_the_modular_simulator(modular_screen):
    adata = modular_screen
    tfs = modular_tfs(adata)
    truth = adata.uns["simulation"]["grn"]
    true_pairs = _pairs(truth)
    pg.pp.reference_grn(adata, tfs=tfs, fdr=1.0, edge_threshold=None, key_added="all_edges")
    tested = pg.get.reference_grn_df(adata, key="all_edges")
    label = np.array([(s, t) in true_pairs for s, t in zip(tested["source"], tested["target"], strict=True)])
    # every true edge among measured genes is a candidate without a prior
    measured = truth["source"].isin(tfs) & truth["target"].isin(adata.var_names)
    assert label.sum() == measured.sum()
    auprc = average_precision_score(label, tested["weight"].abs())
    chance = label.mean()
    assert auprc > 7 * chance, (auprc, chance)  # measured: AUPRC 0.375 at chance 0.036
    kept = pg.get.reference_grn_df(adata)  # the fixture's default run: q ≤ 0.05 and the mixture cut
    kept_label = np.array([(s, t) in true_pairs for s, t in zip(kept["source"], kept["target"], strict=True)])
    assert kept_label.mean() > 3 * chance  # measured: precision 0.13
    assert kept_label.sum() > 0.7 * label.sum()  # measured: recall 254 / 297
    assert set(kept["source"]) <= set(tfs)


def test_held_out_cells_never_enter_the_fit(modular_screen):
    adata = modular_screen
    tfs = modular_tfs(adata)
    rng = np.random.default_rng(0)
    control = (adata.obs["perturbation"] == "control").to_numpy()
    adata.obs["held_out"] = control & (rng.random(adata.n_obs) < 0.3)
    pg.pp.reference_grn(adata, tfs=tfs, test_key="held_out")
    before = pg.get.reference_grn_df(adata)
    assert adata.uns["reference_grn"]["summary"]["n_fit_cells"] == control.sum() - adata.obs["held_out"].sum()

    corrupted = adata.copy()
    X = corrupted.X.toarray()
    rows = np.flatnonzero(adata.obs["held_out"].to_numpy() | ~control)  # held-out and perturbed cells
    X[rows] = rng.poisson(50.0, size=(rows.size, X.shape[1]))
    corrupted.X = sparse.csr_matrix(X)
    pg.pp.reference_grn(corrupted, tfs=tfs, test_key="held_out")
    pd.testing.assert_frame_equal(pg.get.reference_grn_df(corrupted), before)
    # the same corruption changes the GRN once the cells are no longer held out
    pg.pp.reference_grn(corrupted, tfs=tfs)
    assert not pg.get.reference_grn_df(corrupted)["weight"].equals(before["weight"])


def test_prior_restricts_candidates_and_accepts_common_column_names(modular_screen, tmp_path):
    adata = modular_screen
    tfs = modular_tfs(adata)
    truth = adata.uns["simulation"]["grn"]
    rng = np.random.default_rng(0)
    decoys = pd.DataFrame({"source": rng.choice(tfs, 200), "target": rng.choice(adata.var_names, 200)})
    prior = pd.concat([truth[["source", "target"]], decoys], ignore_index=True)
    pg.pp.reference_grn(adata, tfs=tfs, prior=prior)
    edges = pg.get.reference_grn_df(adata)
    assert _pairs(edges) <= _pairs(prior)
    # CollecTRI's column names (tf, target, sign), from a DataFrame and from a csv file, give the same GRN
    collectri_style = prior.rename(columns={"source": "tf"}).assign(sign=1)
    pg.pp.reference_grn(adata, tfs=tfs, prior=collectri_style, key_added="renamed")
    pd.testing.assert_frame_equal(pg.get.reference_grn_df(adata, key="renamed"), edges)
    path = tmp_path / "prior.tsv"
    prior.rename(columns={"source": "TF", "target": "Target"}).to_csv(path, sep="\t", index=False)
    pg.pp.reference_grn(adata, tfs=tfs, prior=path, key_added="from_file")
    pd.testing.assert_frame_equal(pg.get.reference_grn_df(adata, key="from_file"), edges)
    assert adata.uns["from_file"]["params"]["prior"] == str(path)


def test_tfs_from_a_file_and_determinism(modular_screen, tmp_path):
    adata = modular_screen
    tfs = modular_tfs(adata)
    path = tmp_path / "tfs.txt"
    path.write_text("# regulators\n" + "\n".join(tfs + ["NOT_MEASURED"]) + "\n\n")
    pg.pp.reference_grn(adata, tfs=path, key_added="from_file")
    pd.testing.assert_frame_equal(pg.get.reference_grn_df(adata, key="from_file"), pg.get.reference_grn_df(adata))
    summary = adata.uns["from_file"]["summary"]
    assert summary["n_tfs_listed"] == len(tfs) + 1 and summary["n_tfs_measured"] == len(tfs)
    pg.pp.reference_grn(adata, tfs=tfs, seed=1, key_added="other_seed")
    other = pg.get.reference_grn_df(adata, key="other_seed")
    assert not other["weight"].equals(pg.get.reference_grn_df(adata)["weight"])


def test_copy_and_h5ad_round_trip(modular_screen, tmp_path):
    adata = modular_screen
    del adata.uns["reference_grn"]
    out = pg.pp.reference_grn(adata, tfs=modular_tfs(adata), copy=True)
    assert "reference_grn" not in adata.uns and "reference_grn" in out.uns
    path = tmp_path / "grn.h5ad"
    out.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(pg.get.reference_grn_df(back), pg.get.reference_grn_df(out))
    record, record_back = out.uns["reference_grn"], back.uns["reference_grn"]
    assert dict(record_back["params"]) == record["params"]
    for name, value in record["summary"].items():
        if name == "gmm":
            for k, v in value.items():
                np.testing.assert_array_equal(record_back["summary"]["gmm"][k], v)
        else:
            assert record_back["summary"][name] == value or (np.isnan(value) and np.isnan(record_back["summary"][name]))


def test_getter_returns_a_copy_and_explains_a_missing_key(modular_screen):
    edges = pg.get.reference_grn_df(modular_screen)
    edges.loc[0, "weight"] = 1e9
    assert pg.get.reference_grn_df(modular_screen)["weight"].iloc[0] != 1e9
    with pytest.raises(KeyError, match="pp.reference_grn"):
        pg.get.reference_grn_df(modular_screen, key="absent")


# ---- bad input, caught before anything is written ------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tfs": ["NOPE1", "NOPE2"]}, ValueError, "None of the 2 listed TFs"),
        ({"tfs": "no/such/file.txt"}, ValueError, "no file exists"),
        ({"tfs": 3}, TypeError, "list of TF symbols"),
        ({"prior": pd.DataFrame({"source": ["A"], "target": ["B"]})}, ValueError, "no edge from a measured"),
        ({"prior": pd.DataFrame({"x": ["A"], "y": ["B"]})}, ValueError, "regulator column"),
        ({"edge_threshold": "otsu"}, ValueError, "edge_threshold"),
        ({"edge_threshold": 1.5}, ValueError, "edge_threshold"),
        ({"alpha": 0}, ValueError, "alpha"),
        ({"n_bags": 1}, ValueError, "n_bags"),
        ({"fdr": 0.0}, ValueError, "fdr"),
        ({"test_key": "absent"}, KeyError, "absent"),
        ({"test_key": "perturbation"}, TypeError, "boolean"),
        ({"layer": "absent"}, KeyError, "absent"),
        ({"copy": 1}, TypeError, "copy"),
    ],
)
def test_bad_input_leaves_adata_untouched(modular_screen, kwargs, error, match):
    adata = modular_screen
    del adata.uns["reference_grn"]
    before = adata.copy()
    arguments = {"tfs": modular_tfs(adata), **kwargs}
    with pytest.raises(error, match=match):
        pg.pp.reference_grn(adata, **arguments)
    assert_equal(adata, before)


def test_needs_annotation_for_control_cells_and_raw_counts():
    adata, _ = _toy_screen(n_cells=50)
    with pytest.raises(KeyError, match="annotate_perturbations"):
        pg.pp.reference_grn(adata, tfs=["TFA", "TFB"])
    adata.X = adata.X.multiply(0.5).tocsr()
    with pytest.raises(ValueError, match="raw integer"):
        pg.pp.reference_grn(adata, tfs=["TFA", "TFB"], control_only=False)
    assert not adata.uns


def test_no_significant_edge_is_an_error():
    rng = np.random.default_rng(0)
    adata = ad.AnnData(X=rng.poisson(20.0, size=(40, 6)).astype(np.float32))
    adata.var_names = ["A", "B", "C", "D", "E", "F"]
    with pytest.raises(ValueError, match="No edge of the"):
        pg.pp.reference_grn(adata, tfs=["A", "B"], control_only=False, fdr=1e-6)
    assert not adata.uns


def test_lambert_tf_list_reads(shared_data):
    from pertgrn.pp._reference_grn import read_tf_list

    tfs = read_tf_list(shared_data / "priors" / TFS_FILE)
    assert len(tfs) == 1639 and "GATA1" in tfs

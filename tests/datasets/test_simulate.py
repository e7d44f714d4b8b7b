from __future__ import annotations

import re
from collections import defaultdict

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.stats import median_abs_deviation

from pertgrn.datasets import simulate

N_CONDITIONS = 1 + 12 + 4
N_CELLS = 400 + (12 + 4) * 80


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    return simulate()


@pytest.fixture(scope="module")
def observed_lfc(adata) -> pd.DataFrame:
    """Observed log2 fold changes of mean normalised expression versus control, healthy cells only."""
    healthy = ~adata.obs["true_qc_fail"].to_numpy()
    X = adata.X[healthy].toarray().astype(np.float64)
    X = X / X.sum(axis=1, keepdims=True) * 1e4
    conditions = adata.obs["perturbation"].to_numpy()[healthy]
    control = X[conditions == "control"].mean(axis=0)
    perturbed = [c for c in adata.obs["perturbation"].cat.categories if c != "control"]
    rows = [np.log2((X[conditions == c].mean(axis=0) + 1e-3) / (control + 1e-3)) for c in perturbed]
    return pd.DataFrame(np.vstack(rows), index=perturbed, columns=adata.var_names)


def _descendants(grn: pd.DataFrame) -> dict[str, set[str]]:
    children = defaultdict(list)
    for s, t in zip(grn["source"], grn["target"], strict=True):
        children[s].append(t)
    out = {}
    for root in set(grn["source"]):
        seen, stack = set(), [root]
        while stack:
            for c in children[stack.pop()]:
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        out[root] = seen
    return out


# ---- structure -----------------------------------------------------------------------------------


def test_shapes_dtypes_and_counts(adata):
    assert adata.shape == (N_CELLS, 200)
    assert sparse.issparse(adata.X) and adata.X.format == "csr"
    assert adata.X.dtype == np.float32
    data = adata.X.data
    assert data.size > 0.5 * N_CELLS * 200 * 0.5
    assert np.all(data >= 0) and np.array_equal(data, np.round(data))
    assert adata.var_names.is_unique and adata.obs_names.is_unique
    assert set(adata.obs.columns) == {"perturbation", "true_qc_fail", "true_library_size"}
    assert adata.obs["true_qc_fail"].dtype == bool
    assert np.all(adata.obs["true_library_size"] > 0)


def test_condition_labels(adata):
    pert = adata.obs["perturbation"]
    assert isinstance(pert.dtype, pd.CategoricalDtype)
    cats = list(pert.cat.categories)
    assert len(cats) == N_CONDITIONS and cats[0] == "control"
    counts = pert.value_counts()
    assert counts["control"] == 400
    assert all(counts[c] == 80 for c in cats[1:])
    sim = adata.uns["simulation"]
    singles = [c for c in cats[1:] if "+" not in c]
    doubles = [c for c in cats[1:] if "+" in c]
    assert sorted(singles) == sim["perturbed_genes"] and len(singles) == 12
    assert len(doubles) == 4 == len(set(doubles))
    for c in singles:
        assert re.fullmatch(r"G\d{3}", c)
    for d in doubles:
        a, b = d.split("+")
        assert a < b and a in singles and b in singles


def test_gene_names_and_unmeasured_targets(adata):
    names = list(adata.var_names)
    assert sum(n.startswith("MT-") for n in names) == 8
    assert any(n.startswith("RPL") for n in names) and any(n.startswith("RPS") for n in names)
    assert {"HBA1", "HBB"} <= set(names)
    grn_genes = [n for n in names if re.fullmatch(r"G\d{3}", n)]
    assert len(grn_genes) == 200 - 16
    sim = adata.uns["simulation"]
    unmeasured = sim["unmeasured_targets"]
    assert len(unmeasured) == 2
    for g in unmeasured:
        assert re.fullmatch(r"G\d{3}", g)
        assert g not in adata.var_names
        assert g in sim["perturbed_genes"]
        assert g in set(sim["grn"]["source"])  # a node of the GRN with children
    # the GRN's nodes are exactly the measured G genes plus the unmeasured targets
    nodes = set(sim["grn"]["source"]) | set(sim["grn"]["target"])
    assert nodes <= set(grn_genes) | set(unmeasured)
    assert set(unmeasured) <= nodes


def test_grn_structure(adata):
    sim = adata.uns["simulation"]
    grn = sim["grn"]
    assert list(grn.columns) == ["source", "target", "weight"]
    assert not grn.duplicated(["source", "target"]).any()
    assert (grn["source"] != grn["target"]).all()
    # the regulators are exactly the nodes with out-edges
    assert grn["source"].nunique() == 20
    # sparse in-degree, both signs, sizeable weights
    assert grn.groupby("target").size().max() <= 3
    assert (grn["weight"] > 0).any() and (grn["weight"] < 0).any()
    assert (grn["weight"].abs() >= 1.0).all()
    # acyclic: Kahn's algorithm consumes every node
    indeg = grn.groupby("target").size().to_dict()
    children = grn.groupby("source")["target"].apply(list).to_dict()
    nodes = set(grn["source"]) | set(grn["target"])
    queue = [n for n in nodes if indeg.get(n, 0) == 0]
    seen = 0
    while queue:
        n = queue.pop()
        seen += 1
        for c in children.get(n, []):
            indeg[c] -= 1
            if indeg[c] == 0:
                queue.append(c)
    assert seen == len(nodes)
    # every perturbed gene has a measured child
    for g in sim["perturbed_genes"]:
        assert grn.loc[grn["source"] == g, "target"].isin(adata.var_names).any()


def test_true_grn_matches_edge_list(adata):
    W = adata.varp["true_grn"]
    assert sparse.issparse(W) and W.format == "csr" and W.shape == (200, 200)
    grn = adata.uns["simulation"]["grn"]
    measured = grn[grn["source"].isin(adata.var_names) & grn["target"].isin(adata.var_names)]
    assert len(measured) < len(grn)  # edges from unmeasured targets exist but cannot be in varp
    assert W.nnz == len(measured)
    idx = adata.var_names.get_indexer
    dense = W.toarray()
    np.testing.assert_array_equal(dense[idx(measured["source"]), idx(measured["target"])], measured["weight"])
    qc = ~adata.var_names.str.match(r"G\d{3}")
    assert not dense[qc].any() and not dense[:, qc].any()


# ---- the truth is real ---------------------------------------------------------------------------


def test_true_lfc_table(adata):
    sim = adata.uns["simulation"]
    lfc = sim["true_lfc"]
    assert list(lfc.index) == list(adata.obs["perturbation"].cat.categories[1:])
    assert list(lfc.columns) == list(adata.var_names)
    assert np.isfinite(lfc.to_numpy()).all()
    # the knocked-down gene keeps exactly 1 - knockdown_strength of its expression
    for g in sim["perturbed_genes"]:
        if g in adata.var_names:
            assert lfc.loc[g, g] == pytest.approx(np.log2(1 - 0.85))
    # QC genes are outside the GRN
    qc = ~adata.var_names.str.match(r"G\d{3}")
    assert np.all(lfc.loc[:, qc] == 0)


def test_knocked_down_genes_drop(adata, observed_lfc):
    measured = [g for g in adata.uns["simulation"]["perturbed_genes"] if g in adata.var_names]
    assert len(measured) == 10
    own = np.array([observed_lfc.loc[g, g] for g in measured])
    assert np.all(own < -1.0), own
    # doubles knock down both measured genes
    for d in observed_lfc.index[observed_lfc.index.str.contains("+", regex=False)]:
        for g in d.split("+"):
            if g in adata.var_names:
                assert observed_lfc.loc[d, g] < -1.0


def test_direct_targets_move_with_edge_sign(adata, observed_lfc):
    grn = adata.uns["simulation"]["grn"]
    agree, effects = [], []
    for g in adata.uns["simulation"]["perturbed_genes"]:
        edges = grn[(grn["source"] == g) & grn["target"].isin(adata.var_names) & (grn["weight"].abs() > 1.2)]
        obs = observed_lfc.loc[g, edges["target"]].to_numpy()
        agree.extend(np.sign(obs) == -np.sign(edges["weight"].to_numpy()))
        effects.extend(np.abs(obs))
    assert len(agree) >= 50
    assert np.mean(agree) >= 0.9
    assert np.median(effects) > 0.5


def test_non_descendants_do_not_move(adata, observed_lfc):
    sim = adata.uns["simulation"]
    grn, lfc = sim["grn"], sim["true_lfc"]
    desc = _descendants(grn)
    direct, non_desc = [], []
    for g in sim["perturbed_genes"]:
        affected = desc[g] | {g}
        others = [v for v in adata.var_names if v not in affected]
        assert len(others) > 50
        # noise-free: exactly unchanged
        np.testing.assert_allclose(lfc.loc[g, others].to_numpy(), 0.0, atol=1e-12)
        # descendants do move in the truth
        measured_desc = [v for v in desc[g] if v in adata.var_names]
        assert np.all(np.abs(lfc.loc[g, measured_desc].to_numpy()) > 1e-6)
        non_desc.extend(np.abs(observed_lfc.loc[g, others].to_numpy()))
        children = grn.loc[(grn["source"] == g) & grn["target"].isin(adata.var_names), "target"]
        direct.extend(np.abs(observed_lfc.loc[g, children].to_numpy()))
    assert np.median(non_desc) < 0.2
    assert np.median(non_desc) < 0.25 * np.median(direct)


def test_observed_lfc_tracks_true_lfc(adata, observed_lfc):
    true = adata.uns["simulation"]["true_lfc"]
    grn_genes = adata.var_names[adata.var_names.str.match(r"G\d{3}")]
    t = true.loc[observed_lfc.index, grn_genes].to_numpy().ravel()
    o = observed_lfc.loc[:, grn_genes].to_numpy().ravel()
    moved = np.abs(t) > 0.3
    assert moved.sum() > 100
    assert np.corrcoef(t, o)[0, 1] > 0.85
    assert np.mean(np.sign(t[moved]) == np.sign(o[moved])) > 0.95


def test_qc_artifacts(adata):
    fail = adata.obs["true_qc_fail"].to_numpy()
    assert fail.sum() == round(0.05 * N_CELLS)
    # spread over the conditions, control included
    per_condition = adata.obs.groupby("perturbation", observed=True)["true_qc_fail"].sum()
    assert per_condition["control"] > 0 and (per_condition > 0).sum() >= N_CONDITIONS // 2
    X = adata.X.toarray()
    total = X.sum(axis=1)
    detected = (X > 0).sum(axis=1)
    mt = X[:, adata.var_names.str.startswith("MT-")].sum(axis=1) / total
    assert np.median(total[fail]) < 0.3 * np.median(total[~fail])
    assert np.median(detected[fail]) < 0.6 * np.median(detected[~fail])
    assert np.median(mt[~fail]) < 0.08 and np.median(mt[fail]) > 0.2
    assert mt[fail].min() > np.percentile(mt[~fail], 99)

    def outlier(v, lower=True, upper=True):
        m, d = np.median(v), median_abs_deviation(v)
        return (lower & (v < m - 3 * d)) | (upper & (v > m + 3 * d))

    flagged = outlier(np.log1p(total)) | outlier(np.log1p(detected)) | outlier(mt, lower=False)
    assert flagged[fail].mean() >= 0.9


def test_parameters_recorded(adata):
    params = adata.uns["simulation"]["parameters"]
    assert params["n_genes"] == 200 and params["seed"] == 0
    assert params["knockdown_strength"] == 0.85 and params["qc_fail_fraction"] == 0.05
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in params.values())


# ---- options, determinism, round trip, validation ------------------------------------------------


def test_options():
    a = simulate(
        n_genes=60,
        n_regulators=8,
        n_perturbed=5,
        n_doubles=10,
        n_control=50,
        cells_per_condition=20,
        n_unmeasured_targets=0,
        knockdown_strength=0.5,
        qc_fail_fraction=0.0,
        seed=3,
    )
    assert a.shape == (50 + 15 * 20, 60)
    assert not a.obs["true_qc_fail"].any()
    sim = a.uns["simulation"]
    assert len(sim["unmeasured_targets"]) == 0
    assert a.varp["true_grn"].nnz == len(sim["grn"])
    assert all(sim["true_lfc"].loc[g, g] == pytest.approx(-1.0) for g in sim["perturbed_genes"])


def test_knockdown_strength_scales_effects():
    weak = simulate(knockdown_strength=0.3, seed=5).uns["simulation"]["true_lfc"]
    strong = simulate(knockdown_strength=0.9, seed=5).uns["simulation"]["true_lfc"]
    assert list(weak.index) == list(strong.index)
    assert np.abs(strong.to_numpy()).sum() > 1.5 * np.abs(weak.to_numpy()).sum()


def test_deterministic_for_a_seed(adata):
    again = simulate(seed=0)
    assert (adata.X != again.X).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, again.obs)
    pd.testing.assert_frame_equal(adata.uns["simulation"]["grn"], again.uns["simulation"]["grn"])
    other = simulate(seed=1)
    assert (adata.X != other.X).nnz > 0
    assert not adata.uns["simulation"]["grn"].equals(other.uns["simulation"]["grn"])


def test_h5ad_round_trip(adata, tmp_path):
    path = tmp_path / "sim.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert (back.X != adata.X).nnz == 0
    assert (back.varp["true_grn"] != adata.varp["true_grn"]).nnz == 0
    pd.testing.assert_frame_equal(back.obs, adata.obs)
    sim, sim_back = adata.uns["simulation"], back.uns["simulation"]
    pd.testing.assert_frame_equal(sim_back["grn"], sim["grn"], check_index_type=False)
    pd.testing.assert_frame_equal(sim_back["true_lfc"], sim["true_lfc"])
    assert list(sim_back["perturbed_genes"]) == sim["perturbed_genes"]
    assert list(sim_back["unmeasured_targets"]) == sim["unmeasured_targets"]
    assert dict(sim_back["parameters"]) == sim["parameters"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_perturbed": 21}, "eligible regulators"),
        ({"n_doubles": 67}, "distinct pairs"),
        ({"n_unmeasured_targets": 13}, "n_unmeasured_targets"),
        ({"knockdown_strength": 1.0}, r"\[0, 1\)"),
        ({"knockdown_strength": -0.1}, r"\[0, 1\)"),
        ({"qc_fail_fraction": 1.5}, r"\[0, 1\)"),
        ({"n_control": -1}, "n_control"),
        ({"cells_per_condition": 0}, "cells_per_condition"),
        ({"n_genes": -5}, "n_genes"),
        ({"n_genes": 40}, "n_genes"),
        ({"seed": -1}, "seed"),
    ],
)
def test_argument_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"n_genes": 200.0}, {"seed": "0"}, {"n_doubles": True}, {"knockdown_strength": "x"}]
)
def test_argument_types(kwargs):
    with pytest.raises(TypeError):
        simulate(**kwargs)


# ---- planted regulator modules -------------------------------------------------------------------

MODULAR = {"n_genes": 216, "n_regulators": 40, "n_tf_modules": 4, "n_control": 600, "seed": 2}


@pytest.fixture(scope="module")
def modular() -> ad.AnnData:
    return simulate(**MODULAR)


def test_default_plants_no_modules(adata):
    assert "true_tf_module" not in adata.var and not adata.obsm
    assert "tf_modules" not in adata.uns["simulation"]
    assert adata.uns["simulation"]["parameters"]["n_tf_modules"] == 0


def test_module_assignment_and_records(modular):
    sim = modular.uns["simulation"]
    modules = sim["tf_modules"]
    assert list(modules.columns) == ["tf", "module", "measured"]
    assert set(modules["tf"]) == set(sim["grn"]["source"])  # every regulator, measured or not
    assert modules["module"].value_counts().sort_index().tolist() == [10, 10, 10, 10]
    assert (~modules["measured"]).sum() == 2 and set(modules.loc[~modules["measured"], "tf"]) == set(
        sim["unmeasured_targets"]
    )
    column = modular.var["true_tf_module"]
    assert column.dtype == np.int64
    measured = modules[modules["measured"]]
    assert (column[measured["tf"]].to_numpy() == measured["module"].to_numpy()).all()
    assert (column.drop(measured["tf"]) == -1).all()
    activity = modular.obsm["true_tf_module_activity"]
    assert activity.shape == (modular.n_obs, 4)
    np.testing.assert_allclose(activity.std(axis=0), 1.0, atol=0.05)
    params = sim["parameters"]
    assert params["n_tf_modules"] == 4 and params["tf_module_density"] == 0.5


def test_regulation_is_dense_within_modules_and_sparse_across(modular):
    sim = modular.uns["simulation"]
    module = dict(zip(sim["tf_modules"]["tf"], sim["tf_modules"]["module"], strict=True))
    grn = sim["grn"]
    among = grn[grn["source"].isin(module) & grn["target"].isin(module)]
    same = np.array([module[s] == module[t] for s, t in zip(among["source"], among["target"], strict=True)])
    intra_pairs, cross_pairs = 4 * 10 * 9 / 2, 40 * 39 / 2 - 4 * 10 * 9 / 2
    assert same.sum() / intra_pairs > 0.35  # density 0.5
    assert (~same).sum() / cross_pairs < 0.05  # at most one cross-module parent each, probability 0.2
    assert (among.loc[same, "weight"] > 0).mean() > 0.65  # 80 % activating
    # a regulator's incoming regulator weights are shared out, so they sum to at most 2.5 in size
    assert among.groupby("target")["weight"].apply(lambda w: w.abs().sum()).max() <= 2.5
    # targets keep the in-degree of the model without modules
    assert grn[~grn["target"].isin(module)].groupby("target").size().max() <= 3


def test_module_activity_drives_control_cells(modular):
    healthy = (modular.obs["perturbation"] == "control").to_numpy() & ~modular.obs["true_qc_fail"].to_numpy()
    X = modular.X[healthy].toarray().astype(np.float64)
    log_expr = np.log1p(X / X.sum(axis=1, keepdims=True) * 1e4)
    module = modular.var["true_tf_module"].to_numpy()
    tf = np.flatnonzero(module >= 0)
    corr = np.corrcoef(log_expr[:, tf].T)
    same = module[tf][:, None] == module[tf][None, :]
    off = ~np.eye(tf.size, dtype=bool)
    assert corr[same & off].mean() > 0.4 and abs(corr[~same].mean()) < 0.1  # measured 0.55 and -0.04
    activity = modular.obsm["true_tf_module_activity"][healthy]
    own = [np.corrcoef(log_expr[:, j], activity[:, module[j]])[0, 1] for j in tf]
    assert np.mean(own) > 0.6  # measured 0.71


def test_modules_keep_the_knockdowns_and_the_noise_free_effects(modular):
    sim = modular.uns["simulation"]
    for g in sim["perturbed_genes"]:
        if g in modular.var_names:
            assert sim["true_lfc"].loc[g, g] == pytest.approx(np.log2(1 - 0.85))
            cells = (modular.obs["perturbation"] == g).to_numpy()
            control = (modular.obs["perturbation"] == "control").to_numpy()
            X = modular.X.toarray().astype(np.float64)
            X = X / X.sum(axis=1, keepdims=True)
            j = modular.var_names.get_loc(g)
            assert X[cells, j].mean() < 0.4 * X[control, j].mean()


def test_modules_are_deterministic_and_round_trip(modular, tmp_path):
    again = simulate(**MODULAR)
    assert (again.X != modular.X).nnz == 0
    np.testing.assert_array_equal(again.obsm["true_tf_module_activity"], modular.obsm["true_tf_module_activity"])
    path = tmp_path / "modular.h5ad"
    modular.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_series_equal(back.var["true_tf_module"], modular.var["true_tf_module"])
    np.testing.assert_array_equal(back.obsm["true_tf_module_activity"], modular.obsm["true_tf_module_activity"])
    pd.testing.assert_frame_equal(
        back.uns["simulation"]["tf_modules"], modular.uns["simulation"]["tf_modules"], check_index_type=False
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_tf_modules": 11}, ValueError, "2 regulators per module"),
        ({"n_tf_modules": -1}, ValueError, "n_tf_modules"),
        ({"n_tf_modules": 2.0}, TypeError, "n_tf_modules"),
        ({"n_tf_modules": 2, "tf_module_density": 0.0}, ValueError, r"\(0, 1\]"),
        ({"n_tf_modules": 2, "tf_module_density": 1.5}, ValueError, r"\(0, 1\]"),
        ({"n_tf_modules": 2, "tf_module_density": "dense"}, TypeError, "tf_module_density"),
    ],
)
def test_module_argument_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        simulate(**kwargs)

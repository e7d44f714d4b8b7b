from __future__ import annotations

import gc

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.optimize import linear_sum_assignment, linprog
from scipy.spatial.distance import cdist

import pertgrn as pg
from pertgrn.pp import _emd_sparse, _ot_pairing

CONDITION = "pertgrn_condition"


def _screen(sizes: dict[str, int], *, n_genes: int = 30, dims: int = 3, seed: int = 0) -> ad.AnnData:
    """Annotated toy screen: Poisson counts in X and a random representation in obsm["X_rep"]."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(list(sizes), list(sizes.values()))
    X = sparse.csr_matrix(rng.poisson(3.0, size=(labels.size, n_genes)).astype(np.float32))
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels)}, index=[f"c{i}" for i in range(labels.size)])
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    shift = {label: rng.normal(0.0, 1.0, dims) for label in sizes}
    adata.obsm["X_rep"] = rng.normal(size=(labels.size, dims)) + np.array([shift[label] for label in labels])
    pg.pp.annotate_perturbations(adata, perturbation_key="perturbation", control="control")
    return adata


def _groups(adata, control="control"):
    cond = adata.obs[CONDITION].to_numpy()
    return np.flatnonzero(cond == control), {c: np.flatnonzero(cond == c) for c in pd.unique(cond) if c != control}


def _snapshot(adata):
    return (
        adata.obs.copy(),
        dict(adata.uns),
        list(adata.obsp.keys()),
        adata.X.copy(),
        {k: np.array(v, copy=True) for k, v in adata.obsm.items()},
    )


def _assert_untouched(adata, snap):
    obs, uns, obsp, X, obsm = snap
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert dict(adata.uns).keys() == uns.keys()
    assert list(adata.obsp.keys()) == obsp
    assert (adata.X != X).nnz == 0
    for k, v in obsm.items():
        np.testing.assert_array_equal(adata.obsm[k], v)


@pytest.mark.parametrize("method", ["emd", "sinkhorn", "random"])
def test_plan_is_row_stochastic_over_controls(method):
    adata = _screen({"control": 40, "A": 12, "B": 7, "A+B": 9})
    pg.pp.ot_pairing(adata, method=method, use_rep="X_rep")
    plan = adata.obsp["ot_pairing"]
    assert sparse.isspmatrix_csr(plan) or isinstance(plan, sparse.csr_array)
    assert plan.shape == (adata.n_obs, adata.n_obs)
    controls, groups = _groups(adata)
    is_control = np.zeros(adata.n_obs, bool)
    is_control[controls] = True
    row_sum = np.asarray(plan.sum(axis=1)).ravel()
    np.testing.assert_allclose(row_sum[~is_control], 1.0, atol=1e-12)
    assert np.all(np.diff(plan.indptr)[is_control] == 0)  # control rows empty
    assert is_control[plan.indices].all()  # every partner is a control cell
    assert (plan.data > 0).all()
    costs = adata.uns["ot_pairing"]["costs"]
    assert list(costs.index) == ["A", "B", "A+B"]
    assert costs.loc["A", "n_cells"] == 12


@pytest.mark.parametrize("method", ["emd", "random"])
def test_plans_have_uniform_marginals_and_are_sparse(method):
    """emd and random are feasible couplings: every control receives 1/m of each condition's mass."""
    adata = _screen({"control": 23, "A": 9, "B": 31})
    pg.pp.ot_pairing(adata, method=method, use_rep="X_rep")
    plan = adata.obsp["ot_pairing"]
    controls, groups = _groups(adata)
    for idx in groups.values():
        block = plan[idx][:, controls].toarray() / idx.size  # the transport plan, total mass 1
        np.testing.assert_allclose(block.sum(axis=0), 1.0 / controls.size, atol=1e-12)
        assert (block > 0).sum() <= idx.size + controls.size - 1


def test_emd_equal_sizes_is_the_optimal_assignment():
    adata = _screen({"control": 15, "A": 15, "B": 15}, dims=4, seed=3)
    pg.pp.ot_pairing(adata, use_rep="X_rep")
    plan = adata.obsp["ot_pairing"]
    controls, groups = _groups(adata)
    rep = adata.obsm["X_rep"]
    for name, idx in groups.items():
        cost = cdist(rep[idx], rep[controls], "sqeuclidean")
        block = plan[idx][:, controls].toarray()
        # n = m: the optimal plan is a permutation
        np.testing.assert_allclose(np.sort(block, axis=1)[:, -1], 1.0)
        assert (block > 0).sum() == idx.size
        r, c = linear_sum_assignment(cost)
        optimum = cost[r, c].mean()
        assert np.sum(block * cost) / idx.size == pytest.approx(optimum, rel=1e-10)
        assert adata.uns["ot_pairing"]["costs"].loc[name, "cost"] == pytest.approx(optimum, rel=1e-10)


def test_emd_unequal_sizes_matches_linear_program():
    adata = _screen({"control": 7, "A": 4}, dims=2, seed=5)
    pg.pp.ot_pairing(adata, use_rep="X_rep")
    controls, groups = _groups(adata)
    idx = groups["A"]
    rep = adata.obsm["X_rep"]
    cost = cdist(rep[idx], rep[controls], "sqeuclidean")
    n, m = cost.shape
    # brute force: the transportation LP with uniform marginals, solved by HiGHS
    a_eq = np.vstack([np.kron(np.eye(n), np.ones(m)), np.kron(np.ones(n), np.eye(m))])
    b_eq = np.r_[np.full(n, 1 / n), np.full(m, 1 / m)]
    lp = linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    assert lp.status == 0
    assert adata.uns["ot_pairing"]["costs"].loc["A", "cost"] == pytest.approx(lp.fun, rel=1e-9)


def test_emd_cost_not_above_random_and_sinkhorn_close_to_emd():
    adata = _screen({"control": 60, "A": 20, "B": 25}, dims=5, seed=1)
    costs = {}
    for method, reg in [("emd", 0.05), ("random", 0.05), ("sinkhorn", 0.002), ("sinkhorn", 0.2)]:
        pg.pp.ot_pairing(adata, method=method, use_rep="X_rep", reg=reg, max_partners=60, key_added="p")
        costs[method, reg] = adata.uns["p"]["costs"]["cost"]
    emd, random = costs["emd", 0.05], costs["random", 0.05]
    assert (emd <= random + 1e-12).all()
    assert (emd < 0.8 * random).all()  # on separated clouds the optimum is much better than chance
    np.testing.assert_allclose(costs["sinkhorn", 0.002], emd, rtol=0.02)
    assert (costs["sinkhorn", 0.2] > costs["sinkhorn", 0.002]).all()


def test_sinkhorn_keeps_max_partners():
    adata = _screen({"control": 50, "A": 10})
    pg.pp.ot_pairing(adata, method="sinkhorn", use_rep="X_rep", reg=1.0, max_partners=4)
    plan = adata.obsp["ot_pairing"]
    _, groups = _groups(adata)
    assert (np.diff(plan.indptr)[groups["A"]] == 4).all()
    np.testing.assert_allclose(np.asarray(plan.sum(axis=1)).ravel()[groups["A"]], 1.0)
    assert adata.uns["ot_pairing"]["params"]["max_partners"] == 4


def test_max_partners_truncates_emd_rows():
    adata = _screen({"control": 30, "A": 3})
    pg.pp.ot_pairing(adata, use_rep="X_rep", max_partners=2)
    plan = adata.obsp["ot_pairing"]
    assert np.diff(plan.indptr).max() == 2
    _, groups = _groups(adata)
    np.testing.assert_allclose(np.asarray(plan.sum(axis=1)).ravel()[groups["A"]], 1.0)


def test_random_is_reproducible_and_independent_of_n_jobs():
    adata = _screen({"control": 30, "A": 8, "B": 11, "C": 5})
    pg.pp.ot_pairing(adata, method="random", use_rep="X_rep", seed=7, key_added="r1")
    pg.pp.ot_pairing(adata, method="random", use_rep="X_rep", seed=7, key_added="r2", n_jobs=2)
    pg.pp.ot_pairing(adata, method="random", use_rep="X_rep", seed=8, key_added="r3")
    assert (adata.obsp["r1"] != adata.obsp["r2"]).nnz == 0
    assert (adata.obsp["r1"] != adata.obsp["r3"]).nnz > 0


def test_emd_threads_give_the_same_plan():
    adata = _screen({"control": 30, "A": 8, "B": 11, "C": 5})
    pg.pp.ot_pairing(adata, key_added="one")
    pg.pp.ot_pairing(adata, key_added="two", n_jobs=2)
    assert abs(adata.obsp["one"] - adata.obsp["two"]).max() < 1e-15


def test_default_pca_of_controls_and_use_rep_x():
    adata = _screen({"control": 12, "A": 6}, n_genes=8)
    pg.pp.ot_pairing(adata)  # n_comps=50 is reduced to min(12, 8) - 1
    rep = adata.uns["ot_pairing"]["representation"]
    assert rep["use_rep"] == "pca_controls"
    assert rep["n_comps"] == 7
    lib = np.asarray(adata.X.sum(axis=1)).ravel()
    assert rep["target_sum"] == pytest.approx(np.median(lib))
    pg.pp.ot_pairing(adata, use_rep="X", key_added="on_x")
    assert adata.uns["on_x"]["representation"]["n_dims"] == 8
    # use_rep="X": squared Euclidean distances between log-normalised profiles
    x = np.log1p(adata.X.toarray() / lib[:, None] * np.median(lib))
    controls, groups = _groups(adata)
    cost = cdist(x[groups["A"]], x[controls], "sqeuclidean")
    block = adata.obsp["on_x"][groups["A"]][:, controls].toarray()
    assert adata.uns["on_x"]["costs"].loc["A", "cost"] == pytest.approx(np.sum(block * cost) / 6, rel=1e-5)


def test_pca_is_fitted_on_controls_and_applied_to_all_cells():
    from pertgrn.pp._ot_pairing import _control_pca

    adata = _screen({"control": 40, "A": 10, "B": 10}, n_genes=20, seed=2)
    controls, _ = _groups(adata)
    Z, info = _control_pca(adata.X, controls, 5, 0)
    lib = np.asarray(adata.X.sum(axis=1)).ravel()
    x = np.log1p(adata.X.toarray() / lib[:, None] * np.median(lib))
    mean = x[controls].mean(axis=0)
    _, _, vt = np.linalg.svd(x[controls] - mean, full_matrices=False)
    expected = (x - mean) @ vt[:5].T  # controls' axes, all cells projected
    np.testing.assert_allclose(np.abs(Z), np.abs(expected), atol=1e-4)
    np.testing.assert_allclose(Z[controls].mean(axis=0), 0.0, atol=1e-5)
    assert info["n_comps"] == 5 and np.all(np.diff(info["explained_variance_ratio"]) <= 1e-12)


def test_h5ad_round_trip(tmp_path):
    adata = _screen({"control": 20, "A/1": 5, "B": 6})  # "/" in a condition name must survive h5ad
    pg.pp.ot_pairing(adata, use_rep="X_rep", method="sinkhorn")
    adata.write_h5ad(tmp_path / "paired.h5ad")
    back = ad.read_h5ad(tmp_path / "paired.h5ad")
    plan, back_plan = adata.obsp["ot_pairing"], back.obsp["ot_pairing"]
    assert sparse.issparse(back_plan)
    assert abs(plan - back_plan).max() == 0
    pd.testing.assert_frame_equal(back.uns["ot_pairing"]["costs"], adata.uns["ot_pairing"]["costs"])
    assert back.uns["ot_pairing"]["params"] == adata.uns["ot_pairing"]["params"]
    assert back.uns["ot_pairing"]["representation"]["use_rep"] == "X_rep"
    assert back.uns["ot_pairing"]["keys"] == {"obsp": "ot_pairing"}


def test_copy_leaves_input_untouched():
    adata = _screen({"control": 10, "A": 4})
    snap = _snapshot(adata)
    out = pg.pp.ot_pairing(adata, use_rep="X_rep", copy=True)
    _assert_untouched(adata, snap)
    assert "ot_pairing" in out.obsp and "ot_pairing" in out.uns


def _not_annotated():
    adata = _screen({"control": 10, "A": 4})
    del adata.uns["pertgrn"]
    return adata


def _no_controls():
    adata = _screen({"control": 10, "A": 4})
    return adata[adata.obs[CONDITION] != "control"].copy()


def _only_controls():
    adata = _screen({"control": 10, "A": 4})
    return adata[adata.obs[CONDITION] == "control"].copy()


def _log_normalised():
    adata = _screen({"control": 10, "A": 4})
    adata.X = sparse.csr_matrix(np.log1p(adata.X.toarray()))
    return adata


def _nan_rep():
    adata = _screen({"control": 10, "A": 4})
    adata.obsm["X_rep"][0, 0] = np.nan
    return adata


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "match"),
    [
        (None, {"method": "hungarian"}, ValueError, "method"),
        (None, {"use_rep": "X_missing"}, KeyError, "X_missing"),
        (None, {"use_rep": 3}, TypeError, "use_rep"),
        (None, {"n_comps": 0}, ValueError, "n_comps"),
        (None, {"n_comps": 2.5}, TypeError, "n_comps"),
        (None, {"reg": 0.0}, ValueError, "reg"),
        (None, {"max_partners": 0}, ValueError, "max_partners"),
        (None, {"key_added": ""}, ValueError, "key_added"),
        (None, {"layer": "counts"}, KeyError, "counts"),
        (None, {"n_jobs": 0}, ValueError, "n_jobs"),
        (None, {"seed": -1}, ValueError, "seed"),
        (None, {"max_iter": 0}, ValueError, "max_iter"),
        (None, {"copy": "yes"}, TypeError, "copy"),
        (_not_annotated, {}, KeyError, "annotate_perturbations"),
        (_no_controls, {}, ValueError, "No control cells"),
        (_only_controls, {}, ValueError, "No perturbed cells"),
        (_log_normalised, {}, ValueError, "raw integer"),
        (_log_normalised, {"use_rep": "X"}, ValueError, "raw integer"),
        (_nan_rep, {"use_rep": "X_rep"}, ValueError, "NaN"),
    ],
)
def test_bad_input_leaves_adata_untouched(make, kwargs, error, match):
    adata = make() if make is not None else _screen({"control": 10, "A": 4})
    snap = _snapshot(adata)
    with pytest.raises(error, match=match):
        pg.pp.ot_pairing(adata, **kwargs)
    _assert_untouched(adata, snap)


def test_unconverged_emd_raises_and_writes_nothing():
    adata = _screen({"control": 40, "A": 15})
    snap = _snapshot(adata)
    with pytest.raises(RuntimeError, match="did not converge"), pytest.warns(UserWarning):
        pg.pp.ot_pairing(adata, use_rep="X_rep", max_iter=3)
    _assert_untouched(adata, snap)


def test_simulated_screen():
    adata = pg.datasets.simulate(n_genes=80, n_regulators=10, n_perturbed=5, n_doubles=2, n_control=200, seed=1)
    pg.pp.annotate_perturbations(adata, perturbation_key="perturbation", control="control")
    pg.pp.ot_pairing(adata, n_comps=20, n_jobs=2)
    pg.pp.ot_pairing(adata, method="random", key_added="random")
    plan = adata.obsp["ot_pairing"]
    controls, groups = _groups(adata)
    perturbed = np.concatenate(list(groups.values()))
    np.testing.assert_allclose(np.asarray(plan.sum(axis=1)).ravel()[perturbed], 1.0, atol=1e-12)
    for idx in groups.values():
        assert plan[idx].nnz <= idx.size + controls.size - 1
    emd, random = adata.uns["ot_pairing"]["costs"]["cost"], adata.uns["random"]["costs"]["cost"]
    assert (emd < random).all()
    assert adata.uns["ot_pairing"]["representation"]["n_dims"] == 20


@pytest.mark.realdata
def test_papalexi(shared_data):
    adata = ad.read_h5ad(shared_data / "papalexi2021_thp1_lowmoi.h5ad")
    rng = np.random.default_rng(0)
    label = adata.obs["perturbation"].astype(str)
    keep = [rng.choice(np.flatnonzero(label == "non-targeting"), 800, replace=False)]
    for target in ["IFNGR1", "JAK2", "STAT1", "MYC"]:
        idx = np.flatnonzero(label == target)
        keep.append(rng.choice(idx, min(idx.size, 150), replace=False))
    adata = adata[np.sort(np.concatenate(keep))].copy()
    pg.pp.annotate_perturbations(adata, perturbation_key="perturbation", control="non-targeting")
    pg.pp.ot_pairing(adata, n_comps=30)
    pg.pp.ot_pairing(adata, method="random", key_added="random")
    plan = adata.obsp["ot_pairing"]
    controls, groups = _groups(adata, "non-targeting")
    perturbed = np.concatenate(list(groups.values()))
    np.testing.assert_allclose(np.asarray(plan.sum(axis=1)).ravel()[perturbed], 1.0, atol=1e-12)
    assert np.isin(plan.indices, controls).all()
    emd, random = adata.uns["ot_pairing"]["costs"]["cost"], adata.uns["random"]["costs"]["cost"]
    assert (emd < random).all()
    reference = pg.get.paired_control_mean(adata, genes=["JAK2", "STAT1"])
    assert reference.shape == (adata.n_obs, 2) and np.isfinite(reference).all()


def test_small_conditions_go_to_the_dense_simplex(monkeypatch, caplog):
    """Below SPARSE_MIN_PAIRS cell pairs the sparse solver is slower: those conditions are solved densely."""
    calls = []
    certified = _emd_sparse.certified_transport

    def spy(C, **kwargs):
        calls.append(C.shape)
        return certified(C, **kwargs)

    monkeypatch.setattr(_emd_sparse, "certified_transport", spy)
    adata = _screen({"control": 300, "A": 40, "B": 60, "A+B": 7}, dims=4, seed=2)  # 12,000, 18,000, 2,100 pairs
    with caplog.at_level("INFO", logger="pertgrn"):
        pg.pp.ot_pairing(adata, use_rep="X_rep")
    assert calls == [(300, 60)]  # only B reaches the certified solver
    assert "1 certified" in caplog.text and "2 small ones" in caplog.text
    pg.pp.ot_pairing(adata, use_rep="X_rep", solver="dense", key_added="dense")
    np.testing.assert_allclose(adata.uns["ot_pairing"]["costs"]["cost"], adata.uns["dense"]["costs"]["cost"], rtol=1e-9)


def test_sparse_and_dense_solvers_reach_the_same_optimum(monkeypatch):
    monkeypatch.setattr(_ot_pairing, "SPARSE_MIN_PAIRS", 0)  # every condition through the sparse solver
    adata = _screen({"control": 300, "A": 40, "B": 25, "C": 60, "A+B": 7}, dims=6, seed=4)
    pg.pp.ot_pairing(adata, use_rep="X_rep", key_added="sparse")
    pg.pp.ot_pairing(adata, use_rep="X_rep", key_added="dense", solver="dense")
    np.testing.assert_allclose(adata.uns["sparse"]["costs"]["cost"], adata.uns["dense"]["costs"]["cost"], rtol=1e-9)
    assert adata.uns["sparse"]["params"]["solver"] == "sparse"
    assert adata.uns["dense"]["params"]["solver"] == "dense"
    controls, groups = _groups(adata)
    rep = adata.obsm["X_rep"]
    for idx in groups.values():
        cost = cdist(rep[idx], rep[controls], "sqeuclidean")
        optimum = ot_emd_cost(cost)
        for key in ("sparse", "dense"):
            block = adata.obsp[key][idx][:, controls].toarray() / idx.size  # the transport plan, total mass 1
            np.testing.assert_allclose(block.sum(axis=0), 1.0 / controls.size, rtol=1e-12)
            assert np.sum(block * cost) == pytest.approx(optimum, rel=1e-9)


def ot_emd_cost(cost):
    import ot

    n, m = cost.shape
    return ot.emd2(np.full(n, 1.0 / n), np.full(m, 1.0 / m), cost, numItermax=10**7)


def _held_out_screen(seed=0):
    adata = _screen({"control": 80, "A": 20, "B": 15, "C": 6}, n_genes=40, seed=seed)
    rng = np.random.default_rng(seed)
    held = rng.random(adata.n_obs) < 0.3
    held[adata.obs[CONDITION].to_numpy() == "C"] = True  # a condition with no training cell at all
    adata.obs["held_out"] = held
    return adata


@pytest.mark.parametrize("use_rep", [None, "X"])
def test_held_out_cells_do_not_influence_the_training_pairing(use_rep):
    adata = _held_out_screen()
    held = adata.obs["held_out"].to_numpy()
    pg.pp.ot_pairing(adata, use_rep=use_rep, n_comps=5, test_key="held_out")
    plan = adata.obsp["ot_pairing"]
    # held-out cells are neither paired nor partners
    assert plan[held].nnz == 0
    assert not held[plan.indices].any()
    controls, groups = _groups(adata)
    train_perturbed = np.setdiff1d(np.concatenate(list(groups.values())), np.flatnonzero(held))
    np.testing.assert_allclose(np.asarray(plan.sum(axis=1)).ravel()[train_perturbed], 1.0, atol=1e-12)
    costs = adata.uns["ot_pairing"]["costs"]
    assert list(costs.index) == ["A", "B"]  # C is held out entirely
    assert costs.loc["A", "n_cells"] == int((~held[groups["A"]]).sum())
    assert adata.uns["ot_pairing"]["params"]["test_key"] == "held_out"

    # corrupt the held-out cells' counts: the training cells' pairing must not move
    corrupted = adata.copy()
    X = corrupted.X.toarray()
    rng = np.random.default_rng(1)
    X[held] = rng.poisson(50.0, size=(int(held.sum()), X.shape[1])) * rng.integers(1, 20, size=(int(held.sum()), 1))
    corrupted.X = sparse.csr_matrix(X)
    pg.pp.ot_pairing(corrupted, use_rep=use_rep, n_comps=5, test_key="held_out")
    assert (corrupted.obsp["ot_pairing"] != plan).nnz == 0
    pd.testing.assert_frame_equal(corrupted.uns["ot_pairing"]["costs"], costs)
    rep = corrupted.uns["ot_pairing"]["representation"]
    assert rep["target_sum"] == adata.uns["ot_pairing"]["representation"]["target_sum"]
    # without test_key the same corruption does change the pairing (the check above can fail)
    pg.pp.ot_pairing(adata, use_rep=use_rep, n_comps=5, key_added="all")
    pg.pp.ot_pairing(corrupted, use_rep=use_rep, n_comps=5, key_added="all")
    assert (corrupted.obsp["all"] != adata.obsp["all"]).nnz > 0


def test_held_out_boolean_extension_dtype_and_h5ad(tmp_path):
    adata = _held_out_screen(seed=2)
    adata.obs["held_out"] = adata.obs["held_out"].astype("boolean")
    pg.pp.ot_pairing(adata, use_rep="X_rep", test_key="held_out")
    held = adata.obs["held_out"].to_numpy(dtype=bool)
    assert adata.obsp["ot_pairing"][held].nnz == 0
    adata.write_h5ad(tmp_path / "held.h5ad")
    back = ad.read_h5ad(tmp_path / "held.h5ad")
    assert back.uns["ot_pairing"]["params"] == adata.uns["ot_pairing"]["params"]
    assert abs(back.obsp["ot_pairing"] - adata.obsp["ot_pairing"]).max() == 0


def _with_column(values):
    def make():
        adata = _screen({"control": 10, "A": 4})
        adata.obs["held_out"] = values(adata.n_obs)
        return adata

    return make


def _all_controls_held_out():
    adata = _screen({"control": 10, "A": 4})
    adata.obs["held_out"] = (adata.obs[CONDITION] == "control").to_numpy()
    return adata


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "match"),
    [
        (None, {"solver": "lp"}, ValueError, "solver"),
        (None, {"test_key": "missing"}, KeyError, "missing"),
        (None, {"test_key": 1}, TypeError, "test_key"),
        (_with_column(lambda n: np.arange(n) % 2), {"test_key": "held_out"}, TypeError, "boolean"),
        (_with_column(lambda n: np.where(np.arange(n) % 2, "yes", "no")), {"test_key": "held_out"}, TypeError, "bool"),
        (
            _with_column(lambda n: pd.array([True, None] + [False] * (n - 2), dtype="boolean")),
            {"test_key": "held_out"},
            ValueError,
            "missing",
        ),
        (_all_controls_held_out, {"test_key": "held_out"}, ValueError, "No training"),
    ],
)
def test_bad_solver_or_test_key_leaves_adata_untouched(make, kwargs, error, match):
    adata = make() if make is not None else _screen({"control": 10, "A": 4})
    snap = _snapshot(adata)
    with pytest.raises(error, match=match):
        pg.pp.ot_pairing(adata, use_rep="X_rep", **kwargs)
    _assert_untouched(adata, snap)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "emd", "device": "cuda"}, ValueError, "method='sinkhorn' only"),
        ({"method": "random", "device": "cuda:0"}, ValueError, "method='sinkhorn' only"),
        ({"method": "sinkhorn", "device": "tpu"}, ValueError, "CUDA device"),
        ({"method": "sinkhorn", "device": "mps"}, ValueError, "CUDA device"),
        ({"method": "sinkhorn", "device": 0}, TypeError, "device"),
    ],
)
def test_bad_device_leaves_adata_untouched(kwargs, error, match):
    adata = _screen({"control": 10, "A": 4})
    snap = _snapshot(adata)
    with pytest.raises(error, match=match):
        pg.pp.ot_pairing(adata, use_rep="X_rep", **kwargs)
    _assert_untouched(adata, snap)


def test_gpu_device_without_a_gpu_raises_before_writing():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    adata = _screen({"control": 10, "A": 4})
    snap = _snapshot(adata)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        pg.pp.ot_pairing(adata, method="sinkhorn", use_rep="X_rep", device="cuda")
    _assert_untouched(adata, snap)


@pytest.mark.parametrize("size", [1, 2, 7, 10, 1001])
def test_median_of_a_tensor_is_numpys(size):
    torch = pytest.importorskip("torch")
    from pertgrn.pp._ot_pairing import _median

    values = np.random.default_rng(size).normal(size=size).reshape(-1, 1 if size % 2 else 2)
    assert _median(torch.from_numpy(values)) == _median(values) == np.median(values)


@pytest.mark.parametrize(("n", "m", "max_partners"), [(7, 40, 5), (25, 60, None), (12, 12, 50)])
def test_sinkhorn_on_torch_tensors_is_the_numpy_plan(n, m, max_partners):
    """The GPU path (POT's torch backend, top-k on the tensor) on a CPU tensor gives the NumPy path's plan."""
    torch = pytest.importorskip("torch")

    rng = np.random.default_rng(n)
    Zp, Zc = rng.normal(size=(n, 4)) + 0.5, rng.normal(size=(m, 4))
    C = _ot_pairing._cost_matrix(Zp, Zc, np.einsum("ij,ij->i", Zc, Zc))
    M = _ot_pairing._device_costs(Zp, Zc, "cpu")
    assert isinstance(M, torch.Tensor) and M.dtype == torch.float64
    np.testing.assert_allclose(M.numpy(), C.T, rtol=1e-10, atol=1e-12)
    kwargs = {"name": "A", "reg": 0.05, "max_partners": max_partners, "max_iter": None}
    plans = [_ot_pairing._sinkhorn_plan(cost, **kwargs) for cost in (np.ascontiguousarray(C.T), M)]
    (rows, cols, vals, costs), (t_rows, t_cols, t_vals, t_costs) = ([np.asarray(x) for x in plan] for plan in plans)
    order, t_order = np.lexsort((cols, rows)), np.lexsort((t_cols, t_rows))
    np.testing.assert_array_equal(rows[order], t_rows[t_order])
    np.testing.assert_array_equal(cols[order], t_cols[t_order])
    np.testing.assert_allclose(vals[order], t_vals[t_order], rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(costs[order], C[cols, rows][order], rtol=1e-12)
    np.testing.assert_allclose(t_costs[t_order], costs[order], rtol=1e-9, atol=1e-12)
    assert np.bincount(rows, minlength=n).max() == min(max_partners or 50, m)


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
def test_sinkhorn_on_the_gpu_gives_the_cpu_plan():
    adata = _screen({"control": 300, "A": 40, "B": 25, "A+B": 30}, dims=8, seed=3)
    pg.pp.ot_pairing(adata, method="sinkhorn", use_rep="X_rep", key_added="cpu")
    pg.pp.ot_pairing(adata, method="sinkhorn", use_rep="X_rep", key_added="gpu", device="cuda")
    cpu, gpu = adata.obsp["cpu"], adata.obsp["gpu"]
    assert (cpu != 0).nnz == (gpu != 0).nnz and abs(cpu - gpu).max() < 1e-8
    np.testing.assert_allclose(adata.uns["gpu"]["costs"]["cost"], adata.uns["cpu"]["costs"]["cost"], rtol=1e-9)
    assert adata.uns["gpu"]["params"]["device"] == "cuda"


def test_progress_bar_follows_settings(capsys):
    adata = _screen({"control": 30, "A": 8, "B": 11})
    before = pg.settings.progress_bar
    try:
        pg.settings.progress_bar = True
        pg.pp.ot_pairing(adata, use_rep="X_rep")
        assert "ot_pairing" in capsys.readouterr().err
        pg.settings.progress_bar = False
        pg.pp.ot_pairing(adata, use_rep="X_rep")
        assert "ot_pairing" not in capsys.readouterr().err
    finally:
        pg.settings.progress_bar = before


def test_importing_pertgrn_does_not_import_pot():
    import subprocess
    import sys

    code = "import sys, pertgrn, pertgrn.pp; print('ot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_joblib_processes_give_the_same_plan():
    joblib = pytest.importorskip("joblib")
    adata = _screen({"control": 120, "A": 8, "B": 11, "C": 5}, dims=4)
    pg.pp.ot_pairing(adata, use_rep="X_rep", key_added="threads", n_jobs=2)
    with joblib.parallel_config(backend="multiprocessing"):  # a backend that cannot stream results
        pg.pp.ot_pairing(adata, use_rep="X_rep", key_added="processes", n_jobs=2)
    assert (adata.obsp["threads"] != adata.obsp["processes"]).nnz == 0


# joblib's Dask backend can fire a weakref callback on its scatter cache after clearing it
# (joblib/_dask.py, _WeakKeyDictionary.on_destroy -> KeyError): a harmless race in joblib that
# Python reports as an "exception ignored"; collected below so that it lands in this test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_dask_cluster_gives_the_same_plan():
    pytest.importorskip("dask")
    distributed = pytest.importorskip("dask.distributed")
    joblib = pytest.importorskip("joblib")
    adata = _screen({"control": 300, "A": 30, "B": 25, "C": 40, "D": 12}, dims=5, seed=7)
    pg.pp.ot_pairing(adata, use_rep="X_rep", key_added="local", n_jobs=2)
    # in-process workers keep the test fast; the same code runs on worker processes or remote machines
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
        distributed.get_task_stream(client) as tasks,
        joblib.parallel_config(backend="dask"),
    ):
        pg.pp.ot_pairing(adata, use_rep="X_rep", key_added="dask")
    # the conditions went through the Dask scheduler to its workers
    solved = [t for t in tasks.data if "_solve_condition" in str(t["key"])]
    assert solved
    assert (adata.obsp["local"] != adata.obsp["dask"]).nnz == 0
    pd.testing.assert_frame_equal(adata.uns["local"]["costs"], adata.uns["dask"]["costs"])
    del tasks, cluster, client
    gc.collect()

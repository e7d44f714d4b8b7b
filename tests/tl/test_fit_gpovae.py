from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData, read_h5ad
from scipy import sparse
from scipy.stats import pearsonr
from sklearn.metrics import average_precision_score

import pertgrn as pg
from pertgrn._grn_store import read_grn
from pertgrn.models import GPOVAE

SMALL = {
    "n_latent": 8,
    "decoder_n_hidden": 32,
    "encoder_n_hidden": 32,
    "embedding_n_hidden": 32,
    "embedding_n_layers": 2,
}
QUIET = {"enable_progress_bar": False, "batch_size": 128, "n_particles": 2}


def _prepared(**simulate_kwargs) -> AnnData:
    """The full preprocessing chain on a simulated screen."""
    adata = pg.datasets.simulate(**simulate_kwargs)
    pg.pp.annotate_perturbations(adata)
    pg.pp.annotate_qc(adata)
    pg.pp.select_extended_genes(adata)
    pg.pp.ot_pairing(adata)
    return adata


TINY = {
    "n_genes": 60,
    "n_regulators": 6,
    "n_perturbed": 4,
    "n_doubles": 1,
    "n_unmeasured_targets": 1,
    "n_control": 80,
    "cells_per_condition": 30,
}


@pytest.fixture(scope="module")
def tiny() -> AnnData:
    return _prepared(**TINY)


def test_writes_the_contract_and_survives_h5ad(tiny, tmp_path):
    adata = tiny.copy()
    model = pg.tl.fit_gpovae(adata, max_epochs=2, model_kwargs=SMALL, train_kwargs=QUIET)
    assert isinstance(model, GPOVAE) and model.is_trained
    assert adata.obsm["X_gpovae"].shape == (adata.n_obs, 8)
    np.testing.assert_allclose(adata.obsm["X_gpovae"], model.get_latent_representation(), rtol=1e-5)

    record = adata.uns["gpovae"]
    nodes = list(record["nodes"])
    assert nodes == model.nodes
    assert record["keys"] == {"obsm": "X_gpovae", "varp": "gpovae_grn"}
    assert record["level"] == "gene" and not record["signed"] and "grn" not in record  # no dense copy
    probs = model.get_grn()
    stored = read_grn(adata, "gpovae").weights
    kept = probs.to_numpy() > record["edge_rule"]["min_weight"]
    np.testing.assert_allclose(stored[kept], probs.to_numpy()[kept], rtol=1e-6)
    assert (stored[~kept] == 0).all()
    targets = list(adata.uns["pertgrn"]["targets"])
    assert nodes[: len(targets)] == targets
    unmeasured = set(adata.uns["pertgrn"]["unmeasured_targets"])
    assert unmeasured and unmeasured <= set(nodes)
    assert not unmeasured & set(adata.var_names)
    assert record["version"] == pg.__version__
    assert record["params"]["model"]["gpo_offset"] == 0.8
    assert record["params"]["train"]["max_epochs"] == 2
    history = record["history"]
    assert isinstance(history, pd.DataFrame) and len(history) == 2
    assert {"train_loss", "validation_loss", "gpo_fit_train", "ade_train", "kl_mask_train"} <= set(history.columns)

    grn = adata.varp["gpovae_grn"]
    assert sparse.issparse(grn) and grn.shape == (adata.n_vars, adata.n_vars)
    measured = [n for n in nodes if n in adata.var_names]
    a, b = measured[0], measured[1]
    i, j = adata.var_names.get_loc(a), adata.var_names.get_loc(b)
    np.testing.assert_allclose(grn[i, j], probs.loc[a, b], rtol=1e-6)
    # only edges that pass the record's rule are stored, each once
    assert grn.nnz == int(kept[np.ix_(*[[nodes.index(g) for g in measured]] * 2)].sum())
    unmeasured_rows = len(record["unmeasured_edges"])
    assert grn.nnz + unmeasured_rows == int(kept.sum())

    df = pg.get.grn_df(adata, key="gpovae")
    off = ~np.eye(len(nodes), dtype=bool)
    assert len(df) == int((kept & off).sum())
    assert df["weight"].is_monotonic_decreasing
    binary = pg.get.grn_df(adata, key="gpovae", threshold=0.5)
    assert len(binary) == int(((probs.to_numpy() > 0.5) & off).sum())

    conditions = [c for c in adata.obs["pertgrn_condition"].cat.categories if c != "control"]
    ate = record["ate"]
    assert list(ate.index) == conditions and list(ate.columns) == list(adata.var_names)
    # get_ate is seeded: a second call gives the same answer, another seed agrees up to Monte Carlo noise
    again = model.get_ate(conditions).astype(np.float32)
    pd.testing.assert_frame_equal(again, ate, check_names=False)
    # another seed differs by Monte Carlo noise only
    other = model.get_ate(conditions[:2], seed=1).to_numpy()
    assert 0 < np.abs(ate.loc[conditions[:2]].to_numpy() - other).mean() < 0.25  # untrained: theta = 1, wide counts
    table = pg.tl.evaluate(adata, key="gpovae", metrics=["ate_pearson", "n_edges"])
    assert np.isfinite(table.loc["ate_pearson", "value"]) and table.loc["n_edges", "value"] >= 0

    adata.write_h5ad(tmp_path / "fit.h5ad")
    back = read_h5ad(tmp_path / "fit.h5ad")
    np.testing.assert_allclose(read_grn(back, "gpovae").weights, stored)
    pd.testing.assert_frame_equal(back.uns["gpovae"]["ate"], ate, check_dtype=False)
    pd.testing.assert_frame_equal(pg.get.grn_df(back, key="gpovae"), df)
    loaded_keys = back.uns["gpovae"]["keys"]
    assert back.obsm[loaded_keys["obsm"]].shape == adata.obsm["X_gpovae"].shape


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"model_kwargs": {"gpo_loss": "all"}}, ValueError),
        ({"model_kwargs": {"n_hop": 2}}, TypeError),
        ({"train_kwargs": {"batchsize": 10}}, TypeError),
        ({"max_epochs": 0}, ValueError),
        ({"key_added": ""}, TypeError),
        ({"pairing_key": None}, ValueError),
        ({"pairing_key": "missing"}, KeyError),
        ({"extended_key": "missing"}, KeyError),
        ({"layer": "missing"}, KeyError),
        ({"grn_min_weight": -0.1}, ValueError),
        ({"grn_min_weight": float("nan")}, ValueError),
    ],
)
def test_bad_input_leaves_adata_unchanged(tiny, kwargs, error):
    adata = tiny.copy()
    obs, var = adata.obs.copy(), adata.var.copy()
    keys = {slot: sorted(getattr(adata, slot).keys()) for slot in ("obsm", "varp", "uns", "obsp", "layers")}
    with pytest.raises(error):
        pg.tl.fit_gpovae(adata, **{"max_epochs": 1, **kwargs})
    pd.testing.assert_frame_equal(adata.obs, obs)
    pd.testing.assert_frame_equal(adata.var, var)
    assert {slot: sorted(getattr(adata, slot).keys()) for slot in keys} == keys


def test_grn_min_weight_sets_which_edges_are_stored(tiny):
    adata = tiny.copy()
    model = pg.tl.fit_gpovae(adata, max_epochs=1, grn_min_weight=0.0, model_kwargs=SMALL, train_kwargs=QUIET)
    record = read_grn(adata, "gpovae")
    assert adata.uns["gpovae"]["edge_rule"]["min_weight"] == 0.0
    probabilities = model.get_grn().to_numpy()
    distinct = ~np.eye(len(model.nodes), dtype=bool)
    # every pair of distinct nodes is stored, none of the (empty) self-loops
    stored = pg.get.grn_df(adata, key="gpovae")
    assert len(stored) == int((probabilities[distinct] > 0).sum()) == distinct.sum()
    assert (stored["source"] != stored["target"]).all()
    np.testing.assert_allclose(record.weights[distinct], probabilities[distinct], rtol=1e-5)
    # a higher cut stores exactly the pairs above it; the same seed gives the same probabilities
    cut = float(np.median(probabilities[distinct]))
    higher = tiny.copy()
    pg.tl.fit_gpovae(higher, max_epochs=1, grn_min_weight=cut, model_kwargs=SMALL, train_kwargs=QUIET)
    assert len(pg.get.grn_df(higher, key="gpovae")) == int((probabilities[distinct] > cut).sum()) < len(stored)


@pytest.mark.slow
def test_defaults_beat_the_baselines_on_held_out_cells():
    """Default fit (2,000 steps; about a minute on two cores): GRN above DE, effects at the mean shift."""
    adata = pg.datasets.simulate(seed=3)
    pg.pp.annotate_perturbations(adata)
    pg.pp.annotate_qc(adata, doublets=False)
    pg.pp.split_cells(adata, fraction=0.2, seed=3, key_added="test")
    pg.pp.select_extended_genes(adata, test_key="test")
    pg.pp.ot_pairing(adata, test_key="test", seed=3)
    model = pg.tl.fit_gpovae(adata, test_key="test", train_kwargs={"enable_progress_bar": False}, random_state=3)
    assert model.trainer.global_step >= 2000

    # GRN: AUPRC over regulator -> measured node pairs of the single perturbations, against DE on training cells
    pg.tl.baseline_grn(adata, method="de", test_key="test")
    truth = adata.uns["simulation"]["grn"]
    true_edges = set(zip(truth["source"], truth["target"], strict=True))
    singles = [c for c in adata.obs["pertgrn_condition"].cat.categories if model.design.is_single(c)]
    measured = [n for n in model.nodes if n in adata.var_names]
    pairs = [(s, t) for s in singles for t in measured if s != t]
    y = np.array([p in true_edges for p in pairs])
    grn = model.get_grn()
    de = pg.get.grn_df(adata, key="baseline_de").pivot(index="source", columns="target", values="weight")
    de = de.reindex(index=singles, columns=measured).fillna(0.0)
    auprc_model = average_precision_score(y, [grn.loc[s, t] for s, t in pairs])
    auprc_de = average_precision_score(y, [de.loc[s, t] for s, t in pairs])
    assert auprc_model > auprc_de > 3 * y.mean(), f"AUPRC GPOVAE {auprc_model:.3f}, DE {auprc_de:.3f}"

    # held-out effects of the singles: at least about as good as the training cells' means
    observed = pg.get.ate_df(adata, mask="test", perturbations=singles)
    predicted = model.get_ate(singles)
    shift = pg.tl.baseline_predict(adata, method="mean_shift", test_key="test", perturbations=singles)
    rho_model = pearsonr(predicted.to_numpy().ravel(), observed.to_numpy().ravel())[0]
    rho_shift = pearsonr(shift.to_numpy().ravel(), observed.to_numpy().ravel())[0]
    assert rho_model > 0.97 * rho_shift, f"ATE Pearson GPOVAE {rho_model:.3f}, mean shift {rho_shift:.3f}"


def test_warns_when_the_grn_stays_at_its_prior(tiny, caplog):
    import logging

    import torch

    from pertgrn.tl._fit_gpovae import warn_if_near_prior

    adata = tiny.copy()
    with caplog.at_level(logging.WARNING, logger="pertgrn"):
        model = pg.tl.fit_gpovae(
            adata, max_epochs=1, model_kwargs={**SMALL, "preset": "reference", "mask_prior": 0.5}, train_kwargs=QUIET
        )
    assert any("has not learned" in r.getMessage() for r in caplog.records)
    with torch.no_grad():
        model.module.grn_logits.copy_(
            torch.linspace(-4, 4, model.module.grn_logits.numel()).reshape_as(model.module.grn_logits)
        )
    assert not warn_if_near_prior(model)

"""The model contract: every pertgrn model passes the same tests (cases in ``tests/models/cases.py``)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from anndata import AnnData, read_h5ad
from anndata_equal import assert_equal
from lightning.pytorch import Callback
from models.cases import CASES, ModelCase, tiny_screen
from scipy import sparse

import pertgrn as pg
from pertgrn._grn_store import read_grn

pytestmark = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


def _screen(case: ModelCase) -> AnnData:
    return case.screen() if case.screen is not None else tiny_screen()


def _fit(case: ModelCase, adata: AnnData, *, max_epochs: int = 2, test_key: str | None = "test", seed: int = 0):
    return case.fit(
        adata,
        key_added=case.key,
        test_key=test_key,
        max_epochs=max_epochs,
        model_kwargs=case.model_kwargs,
        train_kwargs=case.train_kwargs,
        random_state=seed,
    )


@pytest.fixture(scope="module")
def fitted(request):
    """One fit per model, shared by the read-only tests."""
    cache = {}

    def get(case: ModelCase):
        if case.name not in cache:
            adata = _screen(case)
            cache[case.name] = (_fit(case, adata), adata)
        return cache[case.name]

    return get


def _unseen_combination(model, adata: AnnData) -> str:
    """Two trained singles whose combination the screen never measured."""
    design = model.design
    observed = set(adata.obs["pertgrn_condition"].astype(str))
    singles = [c for c in observed if design.is_single(c) and c in model.design_columns]
    for i, a in enumerate(sorted(singles)):
        for b in sorted(singles)[i + 1 :]:
            label = design.join([a, b])
            if label not in observed:
                return label
    pytest.skip("every pair of singles was measured")


def test_setup_and_training_change_parameters(case):
    adata = _screen(case)
    model_cls = case.model_cls()
    model_cls.setup_anndata(adata, test_key="test")
    scvi.settings.seed = 0
    model = model_cls(adata, **case.model_kwargs)
    before = copy.deepcopy(model.module.state_dict())
    model.train(max_epochs=2, **case.train_kwargs)
    after = {key: value.cpu() for key, value in model.module.state_dict().items()}  # trained on a GPU, if any
    changed = [k for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])]
    assert changed, "no parameter changed in training"
    history = model.history_summary()
    assert len(history) == 2 and np.isfinite(history["train_loss"]).all()


def test_training_after_predictions_runs_in_train_mode(case):
    """Predictions put the module in eval mode; training again must not run in it (Lightning keeps modes)."""
    adata = _screen(case)
    model = _fit(case, adata, max_epochs=1)
    model.get_latent_representation()
    assert not model.module.training
    modes = []

    class RecordMode(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append(pl_module.module.training)

    model.train(max_epochs=1, callbacks=[RecordMode()], **case.train_kwargs)
    assert modes and all(modes)


def test_latents_predictions_and_effects(case, fitted):
    model, adata = fitted(case)
    latent = model.get_latent_representation()
    assert latent.shape == (adata.n_obs, case.n_latent) and np.isfinite(latent).all()
    seen = next(c for c in adata.obs["pertgrn_condition"].cat.categories if model.design.is_single(c))
    combination = _unseen_combination(model, adata)
    labels = ["control", seen, combination]
    pred = model.predict(perturbations=labels, n_cells=6)
    assert pred.shape == (18, adata.n_vars) and list(pred.obs["perturbation"].cat.categories) == labels
    assert np.isfinite(pred.X).all() and (pred.X >= 0).all()
    np.testing.assert_allclose(pred.X.sum(1), 1e4, rtol=1e-3)
    ate = model.get_ate(labels, n_cells=40)
    assert list(ate.index) == labels and list(ate.columns) == list(adata.var_names)
    np.testing.assert_allclose(ate.loc["control"], 0.0, atol=1e-6)
    assert ate.loc[seen].abs().max() > 0
    # seeded: the same seed gives the same answer, the global random state is left alone
    state = torch.random.get_rng_state()
    pd.testing.assert_frame_equal(model.get_ate(labels, n_cells=40), ate)
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(KeyError, match="Did you mean"):
        model.get_ate([seen.lower() + "x"])


def test_grn_export_at_its_level_and_write_back(case, fitted, tmp_path):
    model, adata = fitted(case)
    record = adata.uns[case.key]
    assert record["level"] == case.level == model.grn_level
    keys = {"obsm": f"X_{case.key}", "varp": f"{case.key}_grn"}
    if model.has_loadings:  # gene loadings of the latents, genes × latents
        keys["varm"] = f"{case.key}_loadings"
        assert adata.varm[keys["varm"]].shape == (adata.n_vars, case.n_latent)
    assert record["keys"] == keys
    for slot, key in record["keys"].items():  # further pointers (e.g. varm loadings) point at what was written
        assert key in getattr(adata, slot), f"uns[{case.key!r}]['keys'] points at a missing {slot}[{key!r}]"
    grn = adata.varp[f"{case.key}_grn"]
    assert sparse.issparse(grn) and grn.shape == (adata.n_vars, adata.n_vars)
    assert grn.nnz < adata.n_vars**2  # only edges that pass the record's rule
    assert "grn" not in record  # no second dense copy
    own = model.get_grn()
    stored = read_grn(adata, case.key)
    assert list(own.index) == stored.nodes
    strength = np.abs(own.to_numpy()) if stored.signed else own.to_numpy()
    kept = strength > record["edge_rule"]["min_weight"]
    np.testing.assert_allclose(stored.weights[kept], own.to_numpy()[kept], rtol=1e-5)
    edges = pg.get.grn_df(adata, key=case.key)
    assert {"source", "target", "weight"} <= set(edges.columns)
    params = record["params"]
    assert params["test_key"] == "test" and params["n_epochs_trained"] == 2
    assert isinstance(record["history"], pd.DataFrame) and isinstance(record["ate"], pd.DataFrame)
    np.testing.assert_allclose(adata.obsm[f"X_{case.key}"], model.get_latent_representation(), rtol=1e-5)

    # every key survives an h5ad round trip
    adata.write_h5ad(tmp_path / "fit.h5ad")
    back = read_h5ad(tmp_path / "fit.h5ad")
    np.testing.assert_array_equal(back.obsm[f"X_{case.key}"], adata.obsm[f"X_{case.key}"])
    if "varm" in keys:
        np.testing.assert_array_equal(back.varm[keys["varm"]], adata.varm[keys["varm"]])
    assert (back.varp[f"{case.key}_grn"] != grn).nnz == 0
    pd.testing.assert_frame_equal(pg.get.grn_df(back, key=case.key), edges)
    pd.testing.assert_frame_equal(back.uns[case.key]["ate"], record["ate"], check_dtype=False)
    pd.testing.assert_frame_equal(back.uns[case.key]["history"], record["history"], check_dtype=False)
    assert back.uns[case.key]["params"]["model"] == params["model"]


def test_save_load_gives_identical_outputs(case, fitted, tmp_path):
    model, adata = fitted(case)
    model.save(tmp_path / "model", overwrite=True)
    loaded = type(model).load(tmp_path / "model", adata=adata)
    pd.testing.assert_frame_equal(loaded.get_grn(), model.get_grn())
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), rtol=1e-6)
    labels = ["control", model.design_columns[0]]
    pd.testing.assert_frame_equal(loaded.get_ate(labels, n_cells=20), model.get_ate(labels, n_cells=20))


def test_failed_transfer_leaves_the_anndata_untouched(case, fitted):
    model, adata = fitted(case)
    new = AnnData(X=adata.X.copy(), obs=adata.obs[["perturbation"]].copy(), var=adata.var[[]].copy())
    before = new.copy()
    with pytest.raises(KeyError):  # not annotated: no perturbation design
        model.get_latent_representation(new)
    assert_equal(new, before)


def test_held_out_cells_never_influence_the_fit(case):
    """Corrupting the held-out cells' counts leaves the fitted GRN and the training cells' latents unchanged."""
    clean = _screen(case)
    corrupted = clean.copy()
    test = corrupted.obs["test"].to_numpy()
    rng = np.random.default_rng(1)
    counts = corrupted.X.toarray()
    counts[test] = rng.poisson(counts[test].mean() * 3.0, size=counts[test].shape)
    corrupted.X = sparse.csr_matrix(counts)
    # steps that see held-out cells honour test_key; the OT plan and QC flags are inputs computed before
    pg.pp.select_extended_genes(corrupted, test_key="test")
    assert (corrupted.var["pertgrn_extended"] == clean.var["pertgrn_extended"]).all()

    a = _fit(case, clean, max_epochs=2)
    b = _fit(case, corrupted, max_epochs=2)
    pd.testing.assert_frame_equal(a.get_grn(), b.get_grn())
    train = ~test
    np.testing.assert_allclose(
        a.get_latent_representation()[train], b.get_latent_representation()[train], rtol=1e-5, atol=1e-6
    )
    # and the test has teeth: without test_key the same corruption changes the fit
    c = _fit(case, clean.copy(), max_epochs=2, test_key=None)
    d = _fit(case, corrupted.copy(), max_epochs=2, test_key=None)
    assert not np.allclose(c.get_grn().to_numpy(), d.get_grn().to_numpy())

"""RAPTORGraph at model level: the spec's §8 faithfulness properties on a trained model, set-up, pairing, getters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from anndata import AnnData
from scipy import sparse

import pertgrn as pg
from pertgrn.models import RaptorGraph
from pertgrn.models._base import PairedDataSplitter
from pertgrn.nn import dagma_acyclicity, order_perturbed_first, squared_spectral_radius, threshold_dag

SMALL = {"decoder_n_hidden": 32, "n_subgraphs": 3}
QUIET = {"enable_progress_bar": False}


def _screen(seed: int = 0, n_doubles: int = 2, cells_per_condition: int = 30) -> AnnData:
    """A tiny simulated screen: 4 targets (one unmeasured), doubles held out in ``obs["test"]``.

    The OT plan is written by hand so that every perturbed cell's heaviest control is known:
    perturbed cell ``j`` puts weight 0.7 on control ``(7 j) mod n_ctrl`` and 0.3 on the next one.
    """
    adata = pg.datasets.simulate(
        n_genes=60,
        n_regulators=6,
        n_perturbed=4,
        n_doubles=n_doubles,
        n_unmeasured_targets=1,
        n_control=80,
        cells_per_condition=cells_per_condition,
        seed=seed,
    )
    pg.pp.annotate_perturbations(adata)
    adata.obs["test"] = (adata.obs["pertgrn_n_targets"] > 1).to_numpy()
    control = adata.uns["pertgrn"]["control"]
    ctrl = np.flatnonzero(adata.obs["pertgrn_condition"] == control)
    pert = np.flatnonzero(adata.obs["pertgrn_condition"] != control)
    heavy = ctrl[(7 * np.arange(pert.size)) % ctrl.size]
    light = ctrl[(7 * np.arange(pert.size) + 1) % ctrl.size]
    rows = np.concatenate([pert, pert])
    cols = np.concatenate([heavy, light])
    weights = np.concatenate([np.full(pert.size, 0.7), np.full(pert.size, 0.3)])
    adata.obsp["ot_pairing"] = sparse.csr_matrix((weights, (rows, cols)), shape=(adata.n_obs, adata.n_obs))
    adata.uns["heaviest_partner"] = pd.Series(heavy, index=pert)
    return adata


def _snapshot(adata: AnnData) -> dict:
    return {
        "obs": adata.obs.copy(),
        "uns": sorted(adata.uns.keys()),
        "obsm": sorted(adata.obsm.keys()),
        "obsp": sorted(adata.obsp.keys()),
        "varm": sorted(adata.varm.keys()),
        "varp": sorted(adata.varp.keys()),
    }


def _assert_unchanged(adata: AnnData, before: dict) -> None:
    pd.testing.assert_frame_equal(adata.obs, before["obs"])
    for slot in ("uns", "obsm", "obsp", "varm", "varp"):
        assert sorted(getattr(adata, slot).keys()) == before[slot], slot


@pytest.fixture
def screen() -> AnnData:
    return _screen()


@pytest.fixture(scope="module")
def trained() -> tuple[RaptorGraph, AnnData]:
    scvi.settings.seed = 0
    adata = _screen()
    RaptorGraph.setup_anndata(adata, test_key="test")
    model = RaptorGraph(adata, **SMALL)
    model.train(max_epochs=4, batch_size=32, lr=3e-3, **QUIET)
    model.to_device("cpu")  # trained on a GPU where there is one; the structural checks below build CPU tensors
    return model, adata


def _x_log(model: RaptorGraph, adata: AnnData, n: int = 16) -> torch.Tensor:
    counts = torch.as_tensor(adata.X[:n].toarray(), dtype=torch.float32, device=model.module.device)
    return model.module.log_normalise(counts)


# ---------------------------------------------------------------------------------------------
# set-up and pairing
# ---------------------------------------------------------------------------------------------
def test_setup_registers_targets_and_the_heaviest_partner(screen):
    RaptorGraph.setup_anndata(screen, test_key="test")
    model = RaptorGraph(screen, **SMALL)
    targets = list(screen.uns["pertgrn"]["targets"])
    assert model.targets == targets and model.latent_names == [*targets, "free_0", "free_1", "free_2", "free_3"]
    assert model.module.n_latent == len(targets) + 4
    unmeasured = [t for t in targets if t not in screen.var_names]
    assert len(unmeasured) == 1
    assert (model.module.target_columns[targets.index(unmeasured[0])] == -1).item()
    # one partner slot per cell: the heaviest control of its plan row (the doubles are held out: never batch items)
    index = screen.obsm["_pertgrn_partner_index"]
    assert index.shape == (screen.n_obs, 1) and index.dtype == np.int32
    heaviest = screen.uns["heaviest_partner"]
    np.testing.assert_array_equal(index[heaviest.index, 0], heaviest.to_numpy())
    # every target with single cells can be predicted; the normalisation uses training cells only
    assert model.predictable_targets == targets
    test = screen.obs["test"].to_numpy()
    library = np.asarray(screen.X[~test].sum(1)).ravel()
    assert float(model.module.target_sum) == pytest.approx(np.median(library))


def test_random_pairing_needs_no_plan_and_draws_training_controls(screen):
    del screen.obsp["ot_pairing"]
    RaptorGraph.setup_anndata(screen, pairing="random", test_key="test")
    assert "_pertgrn_partner_index" not in screen.obsm
    model = RaptorGraph(screen, **SMALL)
    assert model.pairing == "random"
    # hold out a few controls too: they must never be drawn
    control = screen.obs["pertgrn_condition"] == screen.uns["pertgrn"]["control"]
    held = np.flatnonzero(control)[:10]
    train = np.setdiff1d(np.arange(screen.n_obs), np.concatenate([held, np.flatnonzero(screen.obs["test"])]))
    splitter = PairedDataSplitter(
        model.adata_manager,
        group_by_condition=True,
        random_partners=True,
        external_indexing=[train, np.array([], dtype=int), np.setdiff1d(np.arange(screen.n_obs), train)],
        batch_size=16,
    )
    splitter.setup()
    loader = splitter.train_dataloader()
    drawn = [set(), set()]
    for epoch in range(2):
        for batch in loader:
            partners = batch["partner_index"][:, 0].numpy()
            assert (partners >= 0).all()  # every batch item is perturbed and gets a partner
            assert control.to_numpy()[partners].all() and not np.isin(partners, held).any()
            drawn[epoch].update(partners.tolist())
            counts = screen.X[partners].toarray()
            np.testing.assert_allclose(batch["partner_x"][:, 0].numpy(), counts)
    assert drawn[0] != drawn[1]  # drawn anew every epoch


def test_training_batches_hold_one_condition_with_their_ot_partner(screen):
    RaptorGraph.setup_anndata(screen, test_key="test")
    model = RaptorGraph(screen, **SMALL)
    train = np.flatnonzero(~screen.obs["test"].to_numpy())
    splitter = PairedDataSplitter(
        model.adata_manager,
        group_by_condition=True,
        external_indexing=[train, np.array([], dtype=int), np.flatnonzero(screen.obs["test"].to_numpy())],
        batch_size=20,
    )
    splitter.setup()
    sizes, seen = [], []
    heaviest = screen.uns["heaviest_partner"]
    for batch in splitter.train_dataloader():
        design = batch["design"].numpy()
        assert (design == design[0]).all() and design[0].sum() == 1  # one single condition per batch
        sizes.append(len(design))
        seen.extend(batch["partner_index"][:, 0].tolist())
        np.testing.assert_allclose(
            batch["partner_x"][:, 0].numpy(), screen.X[batch["partner_index"][:, 0].numpy()].toarray()
        )
    # 4 singles × 30 cells in chunks of at most 20: two chunks of 15 each, no control as a batch item
    assert sorted(sizes) == [15] * 8
    assert sorted(seen) == sorted(heaviest.loc[heaviest.index.isin(train)].tolist())


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (lambda a: a.obsp.pop("ot_pairing"), KeyError, "ot_pairing"),
        (lambda a: a.uns.pop("pertgrn"), KeyError, "annotate_perturbations"),
        (lambda a: a.obs.__setitem__("test", a.obs["pertgrn_n_targets"] > -1), ValueError, "control"),
        (lambda a: setattr(a, "X", a.X.multiply(0.5).tocsr()), ValueError, "count"),
    ],
    ids=["no-pairing", "no-design", "no-controls", "not-counts"],
)
def test_setup_rejects_bad_input_without_writing(screen, edit, error, match):
    edit(screen)
    before = _snapshot(screen)
    with pytest.raises(error, match=match):
        RaptorGraph.setup_anndata(screen, test_key="test")
    _assert_unchanged(screen, before)


def test_setup_rejects_one_target_and_tiny_conditions():
    one = pg.datasets.simulate(
        n_genes=40,
        n_regulators=4,
        n_perturbed=1,
        n_doubles=0,
        n_unmeasured_targets=0,
        n_control=30,
        cells_per_condition=10,
    )
    pg.pp.annotate_perturbations(one)
    with pytest.raises(ValueError, match="at least two perturbation targets"):
        RaptorGraph.setup_anndata(one, pairing="random")
    screen = _screen()
    target = screen.uns["pertgrn"]["targets"][0]
    cells = np.flatnonzero(screen.obs["pertgrn_condition"] == target)
    screen.obs.loc[screen.obs_names[cells[1:]], "test"] = True  # one training cell left
    before = _snapshot(screen)
    with pytest.raises(ValueError, match="fewer than 2 training cells"):
        RaptorGraph.setup_anndata(screen, test_key="test")
    _assert_unchanged(screen, before)


def test_bad_model_parameters_raise(screen):
    RaptorGraph.setup_anndata(screen, test_key="test")
    with pytest.raises(ValueError, match="n_latent"):
        RaptorGraph(screen, n_latent=2)
    with pytest.raises(ValueError, match="norm"):
        RaptorGraph(screen, norm="group")
    with pytest.raises(ValueError, match="beta_kl"):
        RaptorGraph(screen, beta_kl=-1.0)
    with pytest.raises(TypeError, match="Unknown"):
        RaptorGraph.check_params(n_latents=3)
    with pytest.raises(ValueError, match="pairing"):
        RaptorGraph.setup_anndata(screen, pairing="sinkhorn")


# ---------------------------------------------------------------------------------------------
# spec §8 on the trained model
# ---------------------------------------------------------------------------------------------
def test_encoder_input_is_order_perturbed_first_and_not_saved(trained):
    """The module's one-gather reordering equals the checked public function; its index buffers are not saved."""
    model, adata = trained
    module = model.module
    x_log = _x_log(model, adata)
    expected = order_perturbed_first(x_log, target_columns=module.target_columns, other_columns=module.other_columns)
    assert torch.equal(module.encoder_input(x_log), expected)
    assert not [key for key in module.state_dict() if "_encoder_" in key]
    assert {"target_columns", "other_columns"} <= set(module.state_dict())


def test_zero_jacobian_from_each_target_gene_to_every_other_latent(trained):
    model, adata = trained
    module = model.module
    module.eval()
    x_log = _x_log(model, adata).requires_grad_(True)
    loc, scale = module.encoder(module.encoder_input(x_log))
    columns = module.target_columns.tolist()
    for output in (loc, scale):
        for latent in range(module.n_latent):
            (grad,) = torch.autograd.grad(output[:, latent].sum(), x_log, retain_graph=True)
            for target, column in enumerate(columns):
                if column < 0:
                    continue
                if latent == target:
                    assert grad[:, column].abs().max() > 0  # the target feeds its own latent
                else:
                    assert (grad[:, column] == 0).all()  # and no other latent, exactly
    # the mask survived training with AdamW's weight decay: masked weights are exactly zero
    weight, mask = module.encoder.subgraphs.weight.detach(), module.encoder.subgraphs.mask
    assert (weight[~mask] == 0).all() and weight[mask].abs().min() >= 0


def test_shift_touches_one_coordinate_and_doubles_add(trained):
    model, adata = trained
    module = model.module
    module.eval()
    k = len(model.targets)
    with torch.no_grad():
        z_bar = module.inference(torch.as_tensor(adata.X[:8].toarray(), dtype=torch.float32))["z_bar"]
        shift = module.modulator.shift.detach()
        for design in (torch.eye(k)[[0] * 8], torch.eye(k)[[0] * 8] + torch.eye(k)[[2] * 8]):
            out = module.generative(z_bar, design)
            z_int = out["u_int"] @ (torch.eye(module.n_latent) - module.dag.adjacency)  # undo the propagation
            expected = torch.zeros(8, module.n_latent)
            expected[:, :k] = design * shift
            torch.testing.assert_close(z_int - z_bar, expected, atol=1e-5, rtol=0)
            delta = module.modulator.intervention(design)
            assert (delta == delta[0]).all() and (delta[:, k:] == 0).all()  # the same for every cell
            assert int((delta[0] != 0).sum()) == int(design[0].sum())  # one coordinate, two for a double


def test_propagation_and_latent_additivity(trained):
    model, adata = trained
    module = model.module
    module.eval()
    k = len(model.targets)
    with torch.no_grad():
        z_bar = module.inference(torch.as_tensor(adata.X[:8].toarray(), dtype=torch.float32))["z_bar"]
        eye = torch.eye(k)
        inverse = torch.linalg.inv(torch.eye(module.n_latent) - module.dag.adjacency)
        u = {}
        for name, design in {"A": eye[[1] * 8], "B": eye[[3] * 8], "AB": eye[[1] * 8] + eye[[3] * 8]}.items():
            out = module.generative(z_bar, design)
            delta = module.modulator.intervention(design)
            torch.testing.assert_close(out["u_int"] - out["u_obs"], delta @ inverse, atol=1e-5, rtol=1e-4)
            u[name] = out["u_int"] - out["u_obs"]
        torch.testing.assert_close(u["AB"], u["A"] + u["B"], atol=1e-5, rtol=1e-4)


def test_dagma_loss_sends_no_gradient_to_the_encoder(trained):
    model, adata = trained
    module = model.module
    module.train()
    loader = model._make_data_loader(adata, indices=np.arange(32), batch_size=32)
    tensors = next(iter(loader))
    original = (module.alpha_rec, module.beta_kl, module.gamma_mmd)
    module.alpha_rec = module.beta_kl = module.gamma_mmd = 0.0
    try:
        module.zero_grad()
        _, _, loss = module(tensors, loss_kwargs={"dagma_mu": 0.27})
        loss.loss.backward()
    finally:
        module.alpha_rec, module.beta_kl, module.gamma_mmd = original
    for parameter in module.encoder.parameters():
        assert parameter.grad is None or (parameter.grad == 0).all()
    assert module.dag.weight.grad.abs().sum() > 0
    module.zero_grad()


def test_training_and_evaluation_mmd_agree(trained):
    model, adata = trained
    module = model.module
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(20, adata.n_vars)) * 3.0, dtype=torch.float32)
    y = torch.as_tensor(rng.normal(size=(20, adata.n_vars)) * 3.0 + 1.0, dtype=torch.float32)
    design = torch.zeros(20, len(model.targets))
    design[:, 0] = 1
    value = float(module.mmd_by_condition(x, y, design))
    expected = pg.metrics.mk_mmd(x.numpy(), y.numpy(), fix_sigma=200.0, kernel_num=10)
    assert module.mmd_kernel_num == 10 and value == pytest.approx(expected, rel=1e-4)
    # two conditions in one batch: the cell-weighted mean of the per-condition MMDs
    design[:5] = 0
    design[:5, 1] = 1
    mixed = float(module.mmd_by_condition(x, y, design))
    parts = [pg.metrics.mk_mmd(x[s].numpy(), y[s].numpy(), kernel_num=10) for s in (slice(0, 5), slice(5, 20))]
    assert mixed == pytest.approx((5 * parts[0] + 15 * parts[1]) / 20, rel=1e-4)


def test_loss_is_eq6_with_named_weights(trained):
    model, adata = trained
    module = model.module
    module.train()
    loader = model._make_data_loader(adata, indices=np.arange(24), batch_size=24)
    tensors = next(iter(loader))
    torch.manual_seed(0)
    inference, generative, loss = module(tensors, loss_kwargs={"dagma_mu": 0.1})
    terms = loss.extra_metrics
    dagma = module.dag.loss(inference["z_bar"], mu=0.1, lambda1=module.lambda1).loss
    expected = (
        module.alpha_rec * terms["reconstruction"]
        + module.beta_kl * terms["kl"]
        + module.gamma_mmd * terms["mmd"]
        + module.delta_dagma * dagma
    )
    torch.testing.assert_close(loss.loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    assert (module.alpha_rec, module.beta_kl, module.gamma_mmd, module.delta_dagma) == (1.0, 0.447, 1.0, 1.0)
    assert (module.mu_init, module.lambda1) == (0.27, 0.052)
    loc, scale = inference["qz_loc"], inference["qz_scale"]
    kl = (0.5 * (loc**2 + scale**2 - 2 * torch.log(scale) - 1)).mean()
    torch.testing.assert_close(terms["kl"], kl.detach())


def test_training_keeps_the_dag_in_the_domain_and_logs_every_term(trained):
    model, _ = trained
    history = model.history_summary()
    assert len(history) == 4
    for term in ("reconstruction", "kl", "mmd", "dagma_score", "acyclicity", "n_edges"):
        for split in ("train", "validation"):
            assert np.isfinite(history[f"{term}_{split}"]).all(), term
    # the staged μ schedule over 4 epochs: one stage per epoch
    np.testing.assert_allclose(history["dagma_mu"], [0.27, 0.027, 0.0027, 0.00027], rtol=1e-6)
    assert history["mmd_train"].iloc[-1] < history["mmd_train"].iloc[0]
    assert squared_spectral_radius(model.module.dag.adjacency) < model.module.dag.s
    assert not np.allclose(model.module.modulator.shift.detach().numpy(), 1.0)  # the shifts were trained


def _latent_sem_screen(seed: int = 0) -> tuple[AnnData, np.ndarray]:
    """Counts generated from a linear latent SEM ``u = u A + z`` (chain 0 → 1 → 2, 3 → 2) with shift interventions."""
    rng = np.random.default_rng(seed)
    k, n_genes, per = 4, 40, 60
    a_true = np.zeros((k, k))
    a_true[0, 1], a_true[1, 2], a_true[3, 2] = 0.9, -0.8, 0.7
    loadings = rng.normal(0, 0.6, size=(k, n_genes))
    loadings[np.arange(k), np.arange(k)] = 1.5  # gene i is target i and reads its latent
    labels = ["control"] * 200 + [f"T{i}" for i in range(k) for _ in range(per)]
    z = rng.normal(size=(len(labels), k))
    for i in range(k):
        z[np.asarray(labels) == f"T{i}", i] -= 2.0
    u = z @ np.linalg.inv(np.eye(k) - a_true)
    rate = np.exp(1.5 + 0.5 * u @ loadings)
    counts = rng.poisson(rate).astype(np.float32)
    adata = AnnData(
        sparse.csr_matrix(counts),
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=[f"T{i}" for i in range(k)] + [f"g{i}" for i in range(k, n_genes)]),
    )
    pg.pp.annotate_perturbations(adata, control="control")
    return adata, a_true


@pytest.mark.slow
def test_training_breaks_a_cycle_of_the_latent_graph():
    """Spec §8.9 at model level: a model started on a cyclic A (on a linear latent-SEM screen) ends acyclic."""
    adata, _ = _latent_sem_screen()
    scvi.settings.seed = 0
    RaptorGraph.setup_anndata(adata, pairing="random")
    model = RaptorGraph(adata, n_latent=4, decoder_n_hidden=32, n_subgraphs=2)
    with torch.no_grad():
        model.module.dag.weight[0, 1], model.module.dag.weight[1, 0] = 0.9, 0.6  # a 2-cycle
    start = float(model.module.dag.acyclicity().detach())
    assert start > 0.3 and threshold_dag(model.module.dag.adjacency).order is None
    model.train(max_epochs=60, batch_size=64, lr=1e-2, validation_size=0.0, train_size=1.0, **QUIET)
    a = model.module.dag.adjacency.detach()
    assert float(dagma_acyclicity(a)) < start / 10 and squared_spectral_radius(a) < 1.0
    graph = threshold_dag(a, threshold=0.3)
    assert graph.order is not None  # a topological order exists
    assert abs(graph.adjacency[0, 1]) > 0.3 and graph.adjacency[1, 0] == 0  # the weaker edge of the cycle went


# ---------------------------------------------------------------------------------------------
# getters, prediction, save/load
# ---------------------------------------------------------------------------------------------
def test_grn_record_latents_lift_and_levels(trained):
    model, adata = trained
    record = model._grn_record()
    assert record.latents == model.latent_names and record.min_weight == pytest.approx(0.3)
    np.testing.assert_allclose(record.dag, model.module.dag.adjacency.detach().numpy(), rtol=1e-6)
    assert np.diag(record.dag).tolist() == [0.0] * model.module.n_latent
    assert record.lift["latent"].tolist() == record.lift["gene"].tolist() == model.targets
    latent = model.get_grn(level="latent")
    assert latent.shape == (8, 8) and list(latent.index) == model.latent_names
    gene = model.get_grn(level="gene")
    assert list(gene.index) == model.targets
    kept = np.where(np.abs(record.dag[:4, :4]) > 0.3, record.dag[:4, :4], 0.0)
    np.testing.assert_allclose(gene.to_numpy(), kept, rtol=1e-6)


def test_latents_predictions_and_untrained_targets(trained):
    model, adata = trained
    latent = model.get_latent_representation()
    assert latent.shape == (adata.n_obs, 8) and latent.dtype == np.float32
    np.testing.assert_array_equal(latent, model.get_latent_representation())
    a, b = model.targets[0], model.targets[1]
    pred = model.predict(perturbations=["control", a, f"{a}+{b}"], n_cells=6, library_size=1000.0)
    assert pred.shape == (18, adata.n_vars) and (pred.X >= 0).all()
    np.testing.assert_allclose(pred.X.sum(1), 1000.0, rtol=1e-4)
    np.testing.assert_array_equal(
        pred.X, model.predict(perturbations=["control", a, f"{a}+{b}"], n_cells=6, library_size=1000.0).X
    )  # seeded
    ate = model.get_ate([a, f"{a}+{b}"], n_cells=20)
    assert ate.shape == (2, adata.n_vars) and ate.abs().to_numpy().max() > 0
    with pytest.raises(KeyError, match="NOT_A_GENE"):
        model.predict(perturbations=["NOT_A_GENE"])


def test_targets_without_single_training_cells_cannot_be_predicted():
    adata = _screen()
    target = adata.uns["pertgrn"]["targets"][0]
    adata.obs.loc[adata.obs["pertgrn_condition"] == target, "test"] = True
    RaptorGraph.setup_anndata(adata, test_key="test")
    model = RaptorGraph(adata, **SMALL)
    assert target not in model.predictable_targets and len(model.predictable_targets) == 3
    with pytest.raises(ValueError, match="no single-perturbation training cells"):
        model.predict(perturbations=[target])
    with pytest.raises(ValueError, match=target):
        model.get_ate([f"{target}+{model.predictable_targets[0]}"])
    assert np.isnan(model.get_shifts()[target])


def test_loadings_are_the_decoded_change_per_unit_shift(trained):
    model, adata = trained
    loadings = model.get_loadings(n_cells=32)
    assert loadings.shape == (adata.n_vars, 8) and list(loadings.columns) == model.latent_names
    np.testing.assert_allclose(loadings.to_numpy(), model.get_loadings(n_cells=32).to_numpy())  # seeded
    module = model.module
    with model._seeded(0), torch.no_grad():
        z_bar = model._control_latents(None, 32, give_mean=True)
        shifted = z_bar.clone()
        shifted[:, 2] += 1.0
        expected = (module.decode(shifted) - module.decode(z_bar)).mean(0).numpy()
    np.testing.assert_allclose(loadings.iloc[:, 2].to_numpy(), expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(model.get_loadings(n_cells=32, propagate=False), loadings)  # the DAG matters


def test_save_load_round_trip(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "model", overwrite=True)
    loaded = RaptorGraph.load(tmp_path / "model", adata=adata)
    assert loaded.latent_names == model.latent_names and loaded.predictable_targets == model.predictable_targets
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), rtol=1e-5)
    a = model.targets[0]
    np.testing.assert_allclose(
        loaded.predict(perturbations=[a], n_cells=5).X, model.predict(perturbations=[a], n_cells=5).X, rtol=1e-5
    )
    np.testing.assert_allclose(loaded.get_grn(level="latent"), model.get_grn(level="latent"))

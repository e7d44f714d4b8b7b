from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from anndata import AnnData, read_h5ad
from scipy import sparse

import pertgrn as pg
from pertgrn._utils import log_normalize
from pertgrn.models import GPOVAE
from pertgrn.models._base import PairedAnnDataLoader
from pertgrn.models._gpovae._module import khop_scores, khop_scores_dense
from pertgrn.nn import bernoulli_kl, relaxed_bernoulli_straight_through

SMALL = {
    "n_latent": 8,
    "decoder_n_hidden": 32,
    "encoder_n_hidden": 32,
    "embedding_n_hidden": 32,
    "embedding_n_layers": 2,
}
QUIET = {"enable_progress_bar": False, "early_stopping": False}


def _screen(seed: int = 0, n_control: int = 80, cells_per_condition: int = 30) -> AnnData:
    """A tiny simulated screen annotated by hand to the ``pp`` contracts.

    QC flags are the simulator's truth, the extended genes are the non-target genes with a true
    |log2 fold change| > 0.3, and the OT plan pairs every perturbed cell uniformly with all controls
    (rows sum to one and point at controls only, as ``pp.ot_pairing`` promises).
    """
    adata = pg.datasets.simulate(
        n_genes=60,
        n_regulators=6,
        n_perturbed=4,
        n_doubles=1,
        n_unmeasured_targets=1,
        n_control=n_control,
        cells_per_condition=cells_per_condition,
        seed=seed,
    )
    pg.pp.annotate_perturbations(adata)
    adata.obs["pertgrn_qc_fail"] = adata.obs["true_qc_fail"].to_numpy()
    lfc = adata.uns["simulation"]["true_lfc"]
    de = (lfc.abs() > 0.3).any(axis=0).reindex(adata.var_names, fill_value=False).to_numpy()
    adata.var["pertgrn_extended"] = de & ~adata.var["pertgrn_perturbed"].to_numpy()
    control = adata.uns["pertgrn"]["control"]
    ctrl = np.flatnonzero(adata.obs["pertgrn_condition"] == control)
    pert = np.flatnonzero(adata.obs["pertgrn_condition"] != control)
    rows, cols = np.repeat(pert, ctrl.size), np.tile(ctrl, pert.size)
    weights = np.full(rows.size, 1.0 / ctrl.size)
    adata.obsp["ot_pairing"] = sparse.csr_matrix((weights, (rows, cols)), shape=(adata.n_obs, adata.n_obs))
    return adata


def _snapshot(adata: AnnData) -> dict:
    return {
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "uns": sorted(adata.uns.keys()),
        "obsm": sorted(adata.obsm.keys()),
        "obsp": sorted(adata.obsp.keys()),
        "X": adata.X.copy(),
    }


def _assert_unchanged(adata: AnnData, before: dict) -> None:
    pd.testing.assert_frame_equal(adata.obs, before["obs"])
    pd.testing.assert_frame_equal(adata.var, before["var"])
    assert sorted(adata.uns.keys()) == before["uns"]
    assert sorted(adata.obsm.keys()) == before["obsm"]
    assert sorted(adata.obsp.keys()) == before["obsp"]
    assert (adata.X != before["X"]).nnz == 0


@pytest.fixture
def screen() -> AnnData:
    return _screen()


@pytest.fixture(scope="module")
def trained() -> tuple[GPOVAE, AnnData]:
    scvi.settings.seed = 0
    adata = _screen()
    GPOVAE.setup_anndata(adata)
    model = GPOVAE(adata, **SMALL)
    model.train(max_epochs=3, batch_size=64, n_particles=2, **QUIET)
    return model, adata


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
def test_khop_rows_equal_bounded_matrix_power_sum():
    torch.manual_seed(0)
    n, hops = 7, 3
    logits = torch.randn(n, n)
    rows = torch.tensor([1, 4, 6])
    expected = sum(n * torch.linalg.matrix_power(logits / n, k) for k in range(1, hops + 2))
    torch.testing.assert_close(khop_scores_dense(logits, hops), expected)
    torch.testing.assert_close(khop_scores(logits, rows, hops), expected[rows])
    torch.testing.assert_close(khop_scores(logits, rows, 0), logits[rows])


def test_relaxed_bernoulli_is_hard_unbiased_and_differentiable():
    torch.manual_seed(0)
    logits = torch.tensor([-2.0, 0.0, 1.5], requires_grad=True)
    samples = relaxed_bernoulli_straight_through(logits, sample_shape=(20000,))
    assert set(torch.unique(samples).tolist()) <= {0.0, 1.0}
    np.testing.assert_allclose(samples.mean(0).detach().numpy(), torch.sigmoid(logits).detach().numpy(), atol=0.02)
    samples.sum().backward()
    assert torch.all(logits.grad > 0)
    kl = bernoulli_kl(torch.tensor([0.0, 5.0]), 0.3)
    p, q = 0.3, torch.sigmoid(torch.tensor(5.0))
    np.testing.assert_allclose(
        kl.numpy(),
        [0.5 * np.log(0.5 / p) + 0.5 * np.log(0.5 / (1 - p)), q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))],
        rtol=1e-5,
    )


# ---------------------------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------------------------
def _paired_batch(model: GPOVAE, indices: np.ndarray) -> dict[str, torch.Tensor]:
    loader = PairedAnnDataLoader(
        model.adata_manager, indices=indices, batch_size=len(indices), partner_columns=model._partner_columns()
    )
    return next(iter(loader))


def test_setup_registers_nodes_design_and_partners(screen):
    GPOVAE.setup_anndata(screen, max_partners=200)
    design = screen.uns["pertgrn"]
    targets = list(design["targets"])
    extended = sorted(screen.var_names[screen.var["pertgrn_extended"]])
    model = GPOVAE(screen, **SMALL)
    assert model.nodes == targets + extended
    assert model.n_targets == len(targets)
    unmeasured = list(design["unmeasured_targets"])
    assert unmeasured and set(unmeasured) <= set(model.nodes)  # targets without expression column are nodes
    assert model.measured_nodes == [n for n in model.nodes if n in screen.var_names]

    d = screen.obsm["_pertgrn_design"]
    assert sparse.issparse(d) and d.shape == (screen.n_obs, len(model.nodes))
    cond = screen.obs["pertgrn_condition"].astype(str).to_numpy()
    double = next(c for c in cond if "+" in c)
    i = int(np.flatnonzero(cond == double)[0])
    assert sorted(np.asarray(model.nodes)[d[i].indices]) == sorted(double.split("+"))
    assert d[np.flatnonzero(cond == design["control"])].nnz == 0

    # partners: small int32 / float32 per-cell fields, nothing of size n_obs × genes
    index, weight = screen.obsm["_pertgrn_partner_index"], screen.obsm["_pertgrn_partner_weight"]
    assert index.dtype == np.int32 and weight.dtype == np.float32 and index.shape == (screen.n_obs, 200)
    ctrl = cond == design["control"]
    assert (index[ctrl] == -1).all() and (weight[ctrl] == 0).all()
    np.testing.assert_allclose(weight[~ctrl].sum(1), 1.0, rtol=1e-6)
    assert set(index[~ctrl].ravel()) - {-1} == set(np.flatnonzero(ctrl))

    # ΔX, computed in the module from the partners the paired loader puts in the batch, is
    # |log-normalised x - plan-weighted mean of the partners| (the uniform plan: the control mean)
    batch = _paired_batch(model, np.arange(screen.n_obs))
    delta, has_partner = model.module.paired_delta(batch["X"], batch)
    assert has_partner.numpy().tolist() == (~ctrl).tolist()
    expression = log_normalize(screen.X, target_sum=float(model.module.target_sum)).toarray()
    expression = expression[:, screen.var_names.get_indexer(model.measured_nodes)]
    expected = np.abs(expression[~ctrl] - expression[ctrl].mean(0))
    np.testing.assert_allclose(delta.numpy()[~ctrl], expected, rtol=1e-4, atol=1e-5)


def test_partners_keep_the_heaviest_and_renormalise():
    from pertgrn.models._base import top_partners

    plan = sparse.csr_matrix(np.array([[0, 0.2, 0.5, 0.3], [0, 0, 0, 0], [0.1, 0.1, 0, 0.8], [0, 0, 0, 0]]))
    index, weight = top_partners(plan, max_partners=2)
    np.testing.assert_array_equal(index, [[2, 3], [-1, -1], [3, 0], [-1, -1]])
    np.testing.assert_allclose(weight, [[0.625, 0.375], [0, 0], [0.8 / 0.9, 0.1 / 0.9], [0, 0]], rtol=1e-6)
    index, weight = top_partners(plan, max_partners=2, allowed=np.array([True, True, False, True]))
    np.testing.assert_array_equal(index[0], [3, 1])
    np.testing.assert_allclose(weight[0], [0.6, 0.4], rtol=1e-6)


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda a: setattr(a, "X", log_normalize(a.X)), ValueError),
        (lambda a: a.uns.pop("pertgrn"), KeyError),
        (lambda a: a.var.drop(columns="pertgrn_extended", inplace=True), KeyError),
        (lambda a: a.obsp.pop("ot_pairing"), KeyError),
        (lambda a: a.obsp.__setitem__("ot_pairing", sparse.eye(a.n_obs, format="csr")), ValueError),
        (lambda a: a.obs.__setitem__("pertgrn_qc_fail", "yes"), TypeError),
    ],
    ids=["lognormalised", "no-design", "no-extended", "no-pairing", "plan-not-controls", "qc-dtype"],
)
def test_setup_rejects_bad_input_without_writing(screen, edit, error):
    edit(screen)
    before = _snapshot(screen)
    with pytest.raises(error):
        GPOVAE.setup_anndata(screen)
    _assert_unchanged(screen, before)


def test_bad_model_parameters_raise(screen):
    GPOVAE.setup_anndata(screen)
    with pytest.raises(ValueError, match="gpo_loss"):
        GPOVAE(screen, gpo_loss="khop")
    with pytest.raises(ValueError, match="mask_prior"):
        GPOVAE(screen, mask_prior=1.5)
    with pytest.raises(TypeError, match="Unknown"):
        GPOVAE.check_params(n_hop=3)


def test_without_pairing_or_qc(screen):
    GPOVAE.setup_anndata(screen, qc_key=None, pairing_key=None)
    assert "_pertgrn_partner_index" not in screen.obsm
    with pytest.raises(ValueError, match="pairing"):
        GPOVAE(screen)
    model = GPOVAE(screen, gpo_loss="sparsity", **SMALL)
    assert not model.use_artifact
    model.train(max_epochs=1, batch_size=64, n_particles=1, **QUIET)
    assert model.history_summary()["ade_train"].eq(0).all()


# ---------------------------------------------------------------------------------------------
# gradients and the Table 5 ablations
# ---------------------------------------------------------------------------------------------
def _batch(model: GPOVAE, adata: AnnData, n: int = 64) -> dict[str, torch.Tensor]:
    loader = model._make_data_loader(adata, indices=np.arange(n), batch_size=n)
    return next(iter(loader))


def test_gradients_reach_grn_logits_through_elbo_and_gpo_term(screen):
    GPOVAE.setup_anndata(screen, max_partners=200)
    model = GPOVAE(screen, gpo_loss="none", **SMALL)
    module = model.module
    tensors = _paired_batch(model, np.arange(screen.n_obs))
    delta_x, _ = module.paired_delta(tensors["X"], tensors)
    perturbed = module.active_nodes(tensors["design"])
    assert perturbed.numel() > 0

    _, _, loss = module(tensors, inference_kwargs={"n_particles": 3})
    assert loss.extra_metrics["gpo_fit"] == 0 and loss.extra_metrics["sparsity"] == 0
    loss.loss.backward()
    grad_elbo = module.grn_logits.grad.clone()
    assert grad_elbo[perturbed].abs().sum() > 0  # through the straight-through masks and the mask KL

    module.zero_grad()
    module.grn_fit_loss(tensors["design"], delta_x).backward()
    grad_gpo = module.grn_logits.grad.clone()
    assert grad_gpo[perturbed][:, module.measured_node_index].abs().min() > 0
    # at A = 0 only the first hop carries gradient; once A moves, K-hop reaches non-perturbed rows
    never_perturbed = torch.ones(module.n_nodes, dtype=torch.bool)
    never_perturbed[perturbed] = False
    assert grad_gpo[never_perturbed].abs().sum() == 0
    with torch.no_grad():
        module.grn_logits.normal_(0, 1)
    module.zero_grad()
    module.grn_fit_loss(tensors["design"], delta_x).backward()
    assert module.grn_logits.grad[never_perturbed].abs().sum() > 0
    module.zero_grad()
    module.grn_fit_loss(tensors["design"], delta_x, n_hops=0).backward()
    assert module.grn_logits.grad[never_perturbed].abs().sum() == 0


def _ablation(adata: AnnData, gpo_loss: str) -> np.ndarray:
    scvi.settings.seed = 0
    GPOVAE.setup_anndata(adata)
    model = GPOVAE(adata, gpo_loss=gpo_loss, preset="reference", **SMALL)
    model.train(max_epochs=12, batch_size=64, n_particles=1, lr=3e-3, **QUIET)
    return model._grn_probabilities(), model


def test_table5_ablation_patterns(screen):
    probabilities = {}
    for variant in ("dge", "dge_khop", "full", "sparsity"):
        probabilities[variant], model = _ablation(screen, variant)
    extended = np.arange(model.n_targets, len(model.nodes))
    off_diagonal = ~np.eye(len(model.nodes), dtype=bool)
    n_edges = {k: int(((p > 0.5) & off_diagonal).sum()) for k, p in probabilities.items()}
    # "dge": K = 0 and no node outside the targets is ever perturbed, so extended rows stay at 0.5
    np.testing.assert_array_equal(probabilities["dge"][extended], 0.5)
    # "dge_khop": the K-hop paths move them
    assert np.abs(probabilities["dge_khop"][extended] - 0.5).max() > 1e-3
    # target rows move under every GPO variant
    assert np.abs(probabilities["dge"][: model.n_targets] - 0.5).max() > 1e-2
    # "full" (K-hop + sparsity) ends with fewer edges than "dge_khop"
    assert n_edges["full"] < n_edges["dge_khop"]
    # "sparsity": no edge out of an extended gene
    assert (probabilities["sparsity"][extended] < 0.5).all()


# ---------------------------------------------------------------------------------------------
# trained model: history, getters, prediction, save/load
# ---------------------------------------------------------------------------------------------
def test_training_history_holds_every_term(trained):
    model, _ = trained
    history = model.history_summary()
    assert history.index.name == "epoch" and len(history) == 3
    for term in ("reconstruction", "kl_basal", "kl_mask", "kl_embedding", "kl_artifact", "gpo_fit", "sparsity", "ade"):
        for split in ("train", "validation"):
            column = history[f"{term}_{split}"]
            assert column.notna().all() and np.isfinite(column).all()
    assert (history["reconstruction_train"] > 0).all() and (history["ade_train"] > 0).all()
    assert (history["gpo_fit_train"] > 0).all()


def test_parameters_change_and_getters(trained):
    model, adata = trained
    grn = model.get_grn()
    assert grn.shape == (len(model.nodes), len(model.nodes))
    assert list(grn.index) == list(grn.columns) == model.nodes
    off_diagonal = ~np.eye(len(model.nodes), dtype=bool)
    assert ((grn.to_numpy()[off_diagonal] > 0) & (grn.to_numpy()[off_diagonal] < 1)).all()
    # the signed GPO form has no self-loops to learn: its diagonal is exactly 0
    assert (np.diag(grn.to_numpy()) == 0).all()
    assert not np.allclose(grn.to_numpy(), 0.5)  # A was trained
    binary = model.get_grn(threshold=0.5)
    np.testing.assert_array_equal(binary.to_numpy(), (grn.to_numpy() > 0.5).astype(int))
    assert model.get_grn(threshold=1.0).to_numpy().sum() == 0
    for bad in (-0.1, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="threshold"):
            model.get_grn(threshold=bad)
    latent = model.get_latent_representation()
    assert latent.shape == (adata.n_obs, 8) and np.isfinite(latent).all()
    np.testing.assert_allclose(latent, model.get_latent_representation())  # the mean is deterministic
    assert not np.allclose(latent, model.get_latent_representation(give_mean=False))


def test_predict_seen_unseen_and_combinations(trained):
    model, adata = trained
    seen = next(t for t in model.nodes[: model.n_targets] if t in adata.var_names)
    unseen = model.nodes[-1]  # an extended gene: never perturbed
    perturbations = ["control", seen, unseen, f"{seen}+{unseen}"]
    pred = model.predict(perturbations=perturbations, n_cells=7)
    assert pred.shape == (28, adata.n_vars)
    assert list(pred.obs["perturbation"].cat.categories) == perturbations
    assert (pred.obs["perturbation"].value_counts() == 7).all()
    assert np.isfinite(pred.X).all() and (pred.X >= 0).all()
    np.testing.assert_allclose(pred.X.sum(1), 1e4, rtol=1e-3)  # expected counts at the library size
    sampled = model.predict(adata, perturbations=[seen], n_cells=5, sample=True, library_size=500)
    np.testing.assert_array_equal(sampled.X, np.round(sampled.X))
    with pytest.raises(KeyError, match="NOT_A_GENE"):
        model.predict(perturbations=["NOT_A_GENE"])
    with pytest.raises(KeyError, match="NOT_A_GENE"):
        model.get_ate([f"{seen}+NOT_A_GENE"])
    with pytest.raises(ValueError, match="duplicates"):
        model.predict(perturbations=[seen, seen])


def test_get_ate_subtracts_control(trained):
    model, adata = trained
    seen = model.nodes[0]
    ate = model.get_ate(["control", seen], n_cells=50)
    assert list(ate.index) == ["control", seen] and list(ate.columns) == list(adata.var_names)
    np.testing.assert_allclose(ate.loc["control"], 0.0, atol=1e-5)  # same basal draws for every perturbation
    assert ate.loc[seen].abs().max() > 0


def test_save_load_round_trip_and_reread_h5ad(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "model", overwrite=True)
    loaded = GPOVAE.load(tmp_path / "model", adata=adata)
    assert loaded.nodes == model.nodes
    np.testing.assert_allclose(loaded.get_grn().to_numpy(), model.get_grn().to_numpy())
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), rtol=1e-5)

    adata.write_h5ad(tmp_path / "screen.h5ad")
    reread = read_h5ad(tmp_path / "screen.h5ad")
    del reread.obsm["_pertgrn_partner_index"]  # recomputed from obsp on set-up
    again = GPOVAE.load(tmp_path / "model", adata=reread)
    np.testing.assert_allclose(again.get_latent_representation(), model.get_latent_representation(), rtol=1e-5)
    np.testing.assert_array_equal(reread.obsm["_pertgrn_partner_index"], adata.obsm["_pertgrn_partner_index"])


def _fresh_copy(adata: AnnData) -> AnnData:
    new = adata.copy()
    for key in [k for k in new.obsm if k.startswith("_pertgrn")]:
        del new.obsm[key]
    for key in [k for k in new.obs.columns if k.startswith("_scvi")]:
        del new.obs[key]
    for key in [k for k in new.uns if k.startswith("_scvi")]:
        del new.uns[key]
    return new


def test_new_cells_are_embedded_without_the_pairing(trained):
    model, adata = trained
    new = _fresh_copy(adata)
    del new.obsp["ot_pairing"]
    np.testing.assert_allclose(model.get_latent_representation(new), model.get_latent_representation(), rtol=1e-5)
    pred = model.predict(new, perturbations=[model.nodes[0]], n_cells=4)
    assert pred.shape == (4, adata.n_vars)


def test_failed_transfer_leaves_a_new_anndata_untouched(trained):
    model, adata = trained
    new = _fresh_copy(adata)
    del new.obs["pertgrn_qc_fail"]  # the model has an artifact latent
    before = (set(new.obs.columns), set(new.obsm), set(new.uns))
    with pytest.raises(KeyError, match="pertgrn_qc_fail"):
        model.get_latent_representation(new)
    assert (set(new.obs.columns), set(new.obsm), set(new.uns)) == before


def test_kl_warmup_through_plan_kwargs(screen):
    scvi.settings.seed = 0
    GPOVAE.setup_anndata(screen)
    model = GPOVAE(screen, **SMALL)
    model.train(max_epochs=4, batch_size=256, n_particles=1, plan_kwargs={"n_epochs_kl_warmup": 4}, **QUIET)
    weights = model.history["kl_weight"]["kl_weight"].to_numpy(dtype=float)
    # one step per epoch: the weight ramps 0, 1/4, 2/4, 3/4 over the epochs
    np.testing.assert_allclose(weights, [0.0, 0.25, 0.5, 0.75])
    # the module's loss takes the weight: a KL term scaled by it enters the total
    batch = _paired_batch(model, np.arange(64))
    torch.manual_seed(0)
    _, _, full = model.module(batch, inference_kwargs={"n_particles": 1}, loss_kwargs={"kl_weight": 1.0})
    torch.manual_seed(0)
    _, _, none = model.module(batch, inference_kwargs={"n_particles": 1}, loss_kwargs={"kl_weight": 0.0})
    kl = sum(full.kl_local[k].mean() for k in full.kl_local)
    np.testing.assert_allclose(float((full.loss - none.loss).detach()), float(kl.detach()), rtol=1e-4)


def test_gpo_term_averages_over_perturbed_cells_only(screen):
    GPOVAE.setup_anndata(screen)
    model = GPOVAE(screen, **SMALL)
    control = screen.obs["pertgrn_condition"] == screen.uns["pertgrn"]["control"]
    qc_pass = ~screen.obs["pertgrn_qc_fail"].to_numpy()
    perturbed = np.flatnonzero(~control.to_numpy() & qc_pass)[:40]
    controls = np.flatnonzero(control.to_numpy())[:60]
    with torch.no_grad():
        model.module.grn_logits.normal_(0, 1)
    losses = []
    for indices in (perturbed, np.concatenate([perturbed, controls])):
        torch.manual_seed(0)
        _, _, out = model.module(_paired_batch(model, indices), inference_kwargs={"n_particles": 1})
        losses.append(float(out.extra_metrics["gpo_fit"].detach()))
    # adding 60 control cells to the batch leaves the term unchanged (it is not diluted by 40 / 100)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
    assert losses[0] > 0


def _module(n_nodes: int, gpo_loss: str = "full", **kwargs):
    from pertgrn.models._gpovae._module import GPOVAEModule

    return GPOVAEModule(
        n_genes=n_nodes,
        n_nodes=n_nodes,
        measured_node_index=torch.arange(n_nodes),
        measured_gene_index=torch.arange(n_nodes),
        target_sum=1e4,
        node_counts=torch.ones(n_nodes),
        log_mean=torch.zeros(n_nodes),
        log_std=torch.ones(n_nodes),
        n_conditions=n_nodes + 1,
        cf_profiles=None,
        cf_valid=None,
        n_qc_fail=0,
        n_latent=4,
        gpo_loss=gpo_loss,
        gpo_form="signed",
        mask_estimator="expectation",
        mask_gradient="gpo",
        **kwargs,
    )


@pytest.mark.parametrize("gpo_loss", ["full", "dge"])
def test_signed_fit_tells_direct_from_indirect_effects(gpo_loss):
    """A chain 0 -> 1 -| 2: knocking 0 down moves 2 only through 1; the paths term explains it away."""
    torch.manual_seed(0)
    truth = torch.tensor([[0.0, 0.8, 0.0], [0.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    design = torch.eye(3)[:2]
    knockdown = -2.0
    # observed mean changes of the two single knockdowns: knockdown times rows of (I - W)^-1
    observed = knockdown * torch.linalg.inv(torch.eye(3) - truth)[:2]
    module = _module(3, gpo_loss=gpo_loss, sparsity_weight=1.0)
    optimiser = torch.optim.Adam([module.grn_logits, module.grn_effects], lr=0.05)
    module.condition_delta_count[:] = 1.0  # two fitted conditions (the sparsity term's units)
    for _ in range(1500):
        optimiser.zero_grad()
        loss = module.signed_fit_loss(design, observed) + module.sparsity_weight * module.sparsity_loss()
        loss.backward()
        optimiser.step()
    effects = module.direct_effects().detach()
    probabilities = torch.sigmoid(module.grn_logits).detach()
    torch.testing.assert_close(effects[0, 1], torch.tensor(0.8), atol=0.05, rtol=0)
    torch.testing.assert_close(effects[1, 2], torch.tensor(-1.0), atol=0.05, rtol=0)
    if gpo_loss == "full":
        # the indirect effect of 0 on 2 needs no edge: its probability falls below the true edges'
        assert abs(float(effects[0, 2])) < 0.05
        assert probabilities[0, 2] < 0.5 * min(probabilities[0, 1], probabilities[1, 2])
    else:
        # without the paths (the "dge" ablation) the whole observed change becomes a direct edge
        torch.testing.assert_close(effects[0, 2], torch.tensor(-0.8), atol=0.05, rtol=0)


def test_presets_and_named_options(screen):
    from pertgrn.models._gpovae._model import PRESETS

    GPOVAE.setup_anndata(screen)
    default = GPOVAE(screen, **SMALL)
    reference = GPOVAE(screen, preset="reference", **SMALL)
    assert default.module.gpo_form == "signed" and reference.module.gpo_form == "bounded_logits"
    assert reference.module.mask_estimator == "straight_through" and reference.grn_lr is None
    assert reference.module.gpo_weight == 100.0 and reference.module.sparsity_weight == 5.0
    assert not reference.deterministic_prediction and reference.basal_source == "prior"
    # a named option overrides its preset
    mixed = GPOVAE(screen, preset="reference", mask_estimator="expectation", **SMALL)
    assert mixed.module.mask_estimator == "expectation" and mixed.module.gpo_form == "bounded_logits"
    assert set(PRESETS["pertgrn"]) == set(PRESETS["reference"])
    with pytest.raises(ValueError, match="preset"):
        GPOVAE(screen, preset="paper")
    with pytest.raises(ValueError, match="gpo_form"):
        GPOVAE(screen, gpo_form="khop")
    # the default trains by steps: a small screen gets many epochs, a large one few
    assert default._default_max_epochs(1000, 128) == int(np.ceil(2000 / np.ceil(900 / 128)))
    assert default._default_max_epochs(200_000, 128) == int(np.ceil(2000 / np.ceil(180_000 / 128)))


def test_predictions_are_deterministic_given_a_seed(trained):
    model, _ = trained
    labels = ["control", model.nodes[0]]
    a = model.predict(perturbations=labels, n_cells=5, seed=3)
    b = model.predict(perturbations=labels, n_cells=5, seed=3)
    np.testing.assert_array_equal(a.X, b.X)
    c = model.predict(perturbations=labels, n_cells=5, seed=4)
    assert not np.array_equal(a.X, c.X)

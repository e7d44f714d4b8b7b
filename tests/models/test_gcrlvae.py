"""gCRL-VAE: the spec's faithfulness properties (§8, items 11–17) and the model's checks on bad input."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from anndata_equal import assert_equal
from scvi import REGISTRY_KEYS

import pertgrn as pg
from pertgrn.metrics import tmex
from pertgrn.models import GCRLVAE
from pertgrn.models._base import (
    CONDITION_REGISTRY_KEY,
    DESIGN_KEY,
    PARTNER_LIBRARY_KEY,
    PARTNER_X_KEY,
    PairedAnnDataLoader,
    PairedDataSplitter,
)
from pertgrn.models._gcrlvae._alignment import residualise, tmex_torch
from pertgrn.models._gcrlvae._module import ACTIVITY_KEY, PARTNER_ACTIVITY_KEY, GCRLVAEModule
from pertgrn.models._gcrlvae._permutation import LatentPermutation, hungarian, sinkhorn
from pertgrn.models._gcrlvae._schedules import alpha_schedule, beta_schedule, temperature_schedule


# ------------------------------------------------------------------------------------------------
# a small screen with two planted modules, communities and activities
# ------------------------------------------------------------------------------------------------
def small_screen(seed: int = 0):
    adata = pg.datasets.simulate(
        n_genes=96,
        n_regulators=16,
        n_tf_modules=2,
        n_perturbed=4,
        n_doubles=1,
        n_unmeasured_targets=0,
        n_control=300,
        cells_per_condition=40,
        seed=seed,
    )
    pg.pp.annotate_perturbations(adata, control="control")
    pg.pp.reference_grn(adata, tfs=adata.var_names[adata.var["true_tf_module"] >= 0])
    pg.pp.tf_communities(adata, n_runs=10, n_perm=0)
    adata.obs["test"] = adata.obs["pertgrn_n_targets"].to_numpy() == 2
    pg.pp.tf_activity(adata, fit_mask=~adata.obs["test"].to_numpy())
    return adata


@pytest.fixture(scope="module")
def screen():
    return small_screen()


def _module(n_targets=3, n_latent=3, routing="hard", learned=True, community=None, **kwargs):
    torch.manual_seed(0)
    if community is None and routing != "soft":
        community = torch.eye(n_latent)[[0, 1, 1]][:n_targets]
    return GCRLVAEModule(
        n_genes=10,
        n_targets=n_targets,
        n_latent=n_latent,
        target_community=community,
        routing=routing,
        learned_permutation=learned,
        **kwargs,
    )


def _batch(module: GCRLVAEModule, n: int = 16, seed: int = 0, with_activity: bool = True):
    rng = np.random.default_rng(seed)
    counts = torch.as_tensor(rng.poisson(5.0, size=(n, module.n_genes)), dtype=torch.float32)
    partner = torch.as_tensor(rng.poisson(5.0, size=(n, 1, module.n_genes)), dtype=torch.float32)
    design = torch.zeros(n, module.n_targets)
    design[torch.arange(n), torch.as_tensor(rng.integers(module.n_targets, size=n))] = 1.0
    tensors = {
        REGISTRY_KEYS.X_KEY: counts,
        PARTNER_X_KEY: partner,
        PARTNER_LIBRARY_KEY: partner.sum(-1),
        DESIGN_KEY: design,
        CONDITION_REGISTRY_KEY: design.argmax(1, keepdim=True).float(),
    }
    if with_activity:
        tensors[PARTNER_ACTIVITY_KEY] = torch.as_tensor(rng.normal(size=(n, 1, module.n_latent)), dtype=torch.float32)
    return tensors


# ------------------------------------------------------------------------------------------------
# §8.11 ramps
# ------------------------------------------------------------------------------------------------
def test_ramps_equal_the_reference_formulas():
    T = 100
    alpha = np.concatenate([np.zeros(5), np.linspace(0, 20.0, 45), np.full(50, 20.0)])
    beta = np.concatenate([np.zeros(10), np.linspace(0, 2.0, 90)])
    temperature = np.concatenate([np.ones(5), np.linspace(1, 5.0, 95)])
    np.testing.assert_array_equal(alpha_schedule(T, 20.0), alpha)
    np.testing.assert_array_equal(beta_schedule(T, 2.0), beta)
    np.testing.assert_array_equal(temperature_schedule(T, 5.0), temperature)
    assert alpha_schedule(T, 20.0)[49] == 20.0 and beta_schedule(T, 2.0)[-1] == 2.0
    np.testing.assert_array_equal(beta_schedule(7, 2.0, "constant"), np.full(7, 2.0))
    # runs shorter than the warm-up keep the warm-up values
    np.testing.assert_array_equal(alpha_schedule(3, 20.0), np.zeros(3))
    np.testing.assert_array_equal(beta_schedule(3, 2.0), np.zeros(3))


def test_training_plan_sets_each_epochs_weights(screen):
    adata = screen.copy()
    GCRLVAE.setup_anndata(adata, test_key="test")
    scvi.settings.seed = 0
    model = GCRLVAE(adata, alpha_max=4.0, beta_max=1.0, temperature_max=3.0)
    model.train(max_epochs=12, batch_size=16, enable_progress_bar=False)
    history = model.history_summary()
    np.testing.assert_allclose(history["alpha_train"], alpha_schedule(12, 4.0), rtol=1e-6)
    np.testing.assert_allclose(history["beta_train"], beta_schedule(12, 1.0), atol=1e-7)
    assert float(model.module.temperature) == pytest.approx(3.0)  # the final temperature predicts


def test_registered_fields_pickle_for_spawned_processes(screen):
    # Lightning's ddp_spawn pickles the model's manager: the activity field must not be a closure
    import pickle

    adata = screen.copy()
    GCRLVAE.setup_anndata(adata, test_key="test")
    fields = pickle.loads(pickle.dumps(GCRLVAE(adata).adata_manager.fields))
    activity = next(f for f in fields if f.registry_key == ACTIVITY_KEY)
    recomputed = activity._compute(adata, {**activity._extra_state, "column_names": activity._columns})
    np.testing.assert_array_equal(recomputed, np.asarray(adata.obsm["X_tf_activity"], dtype=np.float32))


# ------------------------------------------------------------------------------------------------
# §8.12 KL, causal layer
# ------------------------------------------------------------------------------------------------
def test_causal_latent_is_forward_substitution_and_triu_g_nilpotent():
    module = _module(n_latent=5, community=torch.eye(5)[[0, 1, 2]])
    dag = module.dag().detach().numpy()
    assert np.allclose(np.tril(dag), 0.0)
    np.testing.assert_allclose(np.linalg.matrix_power(dag, 5), 0.0, atol=1e-12)
    z = torch.randn(7, 5)
    u = module.causal(z).detach().numpy()
    # u (I - U) = z  ⇔  u_j = z_j + Σ_{i<j} u_i U_ij, solved in topological order
    expected = np.zeros_like(u)
    for j in range(5):
        expected[:, j] = z[:, j].numpy() + expected[:, :j] @ dag[:j, j]
    np.testing.assert_allclose(u, expected, rtol=1e-5, atol=1e-6)


def test_kl_is_the_closed_form_gaussian_kl():
    module = _module()
    tensors = _batch(module)
    inference, generative, losses = module(tensors)
    mu, var = inference["mu"], inference["var"]
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, var.sqrt()), torch.distributions.Normal(0.0, 1.0)
    ).sum(1)
    assert float(losses.extra_metrics["kl"]) == pytest.approx(float(expected.mean().detach()), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# §8.14 the permutation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scores",
    [np.eye(4), np.ones((4, 4)), np.tile([3.0, 1.0, 0.0, 2.0], (4, 1)), np.random.default_rng(0).normal(size=(6, 6))],
    ids=["identity", "all-tied", "tied-rows", "random"],
)
def test_hungarian_always_gives_a_permutation(scores):
    perm = hungarian(scores)
    assert sorted(perm.tolist()) == list(range(len(scores)))
    if np.array_equal(scores, np.eye(4)):
        assert perm.tolist() == [0, 1, 2, 3]
    # a row argmax is not a permutation on tied rows: the reason for the matching
    if np.array_equal(scores, np.tile([3.0, 1.0, 0.0, 2.0], (4, 1))):
        assert len(set(np.argmax(scores, axis=1))) == 1


def test_sinkhorn_is_doubly_stochastic():
    soft = sinkhorn(torch.randn(5, 5), 50)
    np.testing.assert_allclose(soft.sum(0).numpy(), 1.0, atol=1e-4)
    np.testing.assert_allclose(soft.sum(1).numpy(), 1.0, atol=1e-4)


def _autograd_sinkhorn(log_alpha, n_iterations):
    """The relaxation as plain torch operations (autograd through every iteration)."""
    for _ in range(n_iterations):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=1, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=0, keepdim=True)
    return log_alpha.exp()


@pytest.mark.parametrize(("d", "n_iterations", "scale"), [(5, 20, 10.0), (3, 1, 1.0), (8, 50, 30.0)])
def test_sinkhorn_values_and_gradients_equal_autograd_through_the_iterations(d, n_iterations, scale):
    generator = torch.Generator().manual_seed(d)
    log_alpha = (scale * torch.randn(d, d, generator=generator, dtype=torch.float64)).requires_grad_()
    weights = torch.randn(d, d, generator=generator, dtype=torch.float64)
    ours = sinkhorn(log_alpha, n_iterations)
    (grad,) = torch.autograd.grad((ours * weights).sum(), log_alpha)
    reference = _autograd_sinkhorn(log_alpha, n_iterations)
    (grad_ref,) = torch.autograd.grad((reference * weights).sum(), log_alpha)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-8, atol=1e-10)
    assert torch.autograd.gradcheck(lambda x: sinkhorn(x, n_iterations), (log_alpha / scale,))


def test_learned_permutation_receives_gradient_and_identity_never_changes():
    learned = _module(alignment_weight=1.0)
    learned.alpha.fill_(1.0)
    _, _, losses = learned(_batch(learned))
    losses.loss.backward()
    grad = learned.permutation.scores.grad
    assert grad is not None and grad.abs().sum() > 0
    # the forward pass is exactly the hard permutation
    torch.testing.assert_close(learned.permutation().detach(), torch.eye(3))

    fixed = _module(learned=False)
    optimizer = torch.optim.Adam(fixed.parameters(), lr=0.5)
    for seed in range(3):
        optimizer.zero_grad()
        fixed(_batch(fixed, seed=seed))[2].loss.backward()
        optimizer.step()
        assert fixed.permutation.perm().tolist() == [0, 1, 2]
    assert not fixed.permutation.scores.requires_grad


def test_learned_permutation_follows_the_scores():
    perm = LatentPermutation(3)
    with torch.no_grad():
        perm.scores.copy_(torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]]))
    assert perm.perm().tolist() == [1, 2, 0]
    assert torch.equal(perm().detach(), torch.eye(3)[[1, 2, 0]])


# ------------------------------------------------------------------------------------------------
# §8.15 hard routing
# ------------------------------------------------------------------------------------------------
def test_hard_routing_moves_only_the_routed_latent_and_its_descendants():
    # targets 0, 1, 2 in communities 0, 1, 1 (of 3 columns); π = (2, 0, 1)
    module = _module(n_latent=3)
    with torch.no_grad():
        module.permutation.scores.copy_(torch.eye(3)[[2, 0, 1]])
        module.c_shift.copy_(torch.tensor([0.5, -1.0, 2.0]))
        module.G.copy_(torch.randn(3, 3))
    z = torch.randn(4, 3)
    single = torch.tensor([[1.0, 0.0, 0.0]]).expand(4, 3)
    shifted = z + module.shift(single)
    delta = (shifted - z).detach()
    assert torch.allclose(delta[:, [0, 1]], torch.zeros(4, 2)) and torch.allclose(delta[:, 2], torch.full((4,), 0.5))
    # community 1 sits at latent π[1] = 0: only u_j with j ≥ 0 may move; community 0 at latent 2: only u_2
    du = (module.causal(shifted) - module.causal(z)).detach()
    assert torch.allclose(du[:, :2], torch.zeros(4, 2), atol=1e-6) and (du[:, 2].abs() > 0).all()
    # doubles are additive; two TFs of one community add on one coordinate
    double = torch.tensor([[0.0, 1.0, 1.0]])
    torch.testing.assert_close(
        module.shift(double), module.shift(torch.tensor([[0.0, 1.0, 0.0]])) + module.shift(torch.tensor([[0, 0, 1.0]]))
    )
    torch.testing.assert_close(module.shift(double).detach(), torch.tensor([[1.0, 0.0, 0.0]]))


def test_unassigned_targets_use_the_intervention_encoder():
    community = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    module = _module(community=community, target_assigned=torch.tensor([True, False, True]))
    routing = module.routing_matrix().detach()
    torch.testing.assert_close(routing[[0, 2]], torch.eye(3)[[0, 1]])
    torch.testing.assert_close(routing[1], module.soft_routing().detach()[1])


# ------------------------------------------------------------------------------------------------
# §8.16–17 losses
# ------------------------------------------------------------------------------------------------
def test_gcrl_without_its_changes_is_id_vae_and_d_vae(screen):
    adata = screen.copy()
    GCRLVAE.setup_anndata(adata, test_key="test")
    plain = {"routing": "soft", "alignment_weight": 0.0, "encoder_input": "genes", "permutation": "identity"}
    losses = {}
    for name, kwargs in {
        "gcrl_plain": {"variant": "gcrl", **plain},
        "id": {"variant": "id"},
        "gcrl_plain_d": {"variant": "gcrl", **plain, "n_latent": len(GCRLVAE(adata, variant="d").trained_singles)},
        "d": {"variant": "d"},
    }.items():
        torch.manual_seed(3)
        model = GCRLVAE(adata, **kwargs)
        model.module.alpha.fill_(2.0)
        model.module.beta.fill_(0.5)
        cells = np.flatnonzero(~adata.obs["test"].to_numpy())
        controls = cells[(adata.obs["perturbation"] == "control").to_numpy()[cells]]
        loader = PairedAnnDataLoader(
            model.adata_manager,
            indices=cells[~np.isin(cells, controls)][:32],
            batch_size=32,
            shuffle=False,
            random_partners=controls,
        )
        torch.manual_seed(5)
        losses[name] = float(model.module(next(iter(loader)))[2].loss.detach())
    assert losses["gcrl_plain"] == losses["id"]
    assert losses["gcrl_plain_d"] == losses["d"]
    assert losses["id"] != losses["d"]


def test_centroid_loss_is_mean_squared_centroid_difference():
    rng = np.random.default_rng(0)
    y = torch.as_tensor(rng.normal(size=(6, 4)))
    condition = torch.tensor([0, 0, 0, 1, 1, 1])
    assert float(GCRLVAEModule.centroid_loss(y, y, condition)) == 0.0
    y_hat = torch.as_tensor(rng.normal(size=(6, 4)))
    expected = np.mean(
        [np.mean((y_hat[i].mean(0).numpy() - y[i].mean(0).numpy()) ** 2) for i in (slice(0, 3), slice(3, 6))]
    )
    assert float(GCRLVAEModule.centroid_loss(y_hat, y, condition)) == pytest.approx(expected)


def test_residualise_on_one_design_with_several_right_hand_sides_equals_one_at_a_time():
    rng = np.random.default_rng(3)
    tfa = torch.as_tensor(rng.normal(size=(40, 5)))
    z = torch.as_tensor(rng.normal(size=(40, 5)))
    both = residualise(torch.stack([z, tfa], dim=2), tfa)
    torch.testing.assert_close(both[..., 0], residualise(z, tfa), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(both[..., 1], residualise(tfa, tfa), rtol=1e-12, atol=1e-12)
    # a residual is orthogonal to its design (up to the tiny ridge): the intercept and every other activity
    for i in range(5):
        others = [j for j in range(5) if j != i]
        design = torch.cat([torch.ones(40, 1, dtype=tfa.dtype), tfa[:, others]], dim=1)
        assert float((design.T @ both[i, :, 0]).abs().max()) < 1e-5


def test_torch_tmex_matches_the_metric():
    rng = np.random.default_rng(1)
    tfa = rng.normal(size=(64, 4))
    z = tfa @ rng.normal(size=(4, 4)) + rng.normal(size=(64, 4))
    assert float(tmex_torch(torch.as_tensor(tfa), torch.as_tensor(tfa))) == pytest.approx(1.0, abs=1e-6)
    expected = tmex(z, tfa, given="activities", absolute=False)
    assert float(tmex_torch(torch.as_tensor(z), torch.as_tensor(tfa)).detach()) == pytest.approx(expected, abs=1e-6)
    # differentiable in the latents
    zt = torch.as_tensor(z, dtype=torch.float32).requires_grad_()
    tmex_torch(zt, torch.as_tensor(tfa, dtype=torch.float32)).backward()
    assert torch.isfinite(zt.grad).all() and zt.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# pairing, model outputs, bad input
# ------------------------------------------------------------------------------------------------
def test_condition_batches_carry_each_partners_activities(screen):
    adata = screen.copy()
    GCRLVAE.setup_anndata(adata, test_key="test")
    model = GCRLVAE(adata)
    splitter = PairedDataSplitter(
        model.adata_manager,
        external_indexing=model._split_indices(1.0, None, True),
        batch_size=16,
        group_by_condition=True,
        random_partners=True,
        partner_keys=("tf_activity",),
    )
    splitter.setup()
    control = (adata.obs["perturbation"] == "control").to_numpy()
    held_out = adata.obs["test"].to_numpy()
    activity = adata.obsm["X_tf_activity"].astype(np.float32)
    n_batches = 0
    for batch in splitter.train_dataloader():
        partners = batch["partner_index"][:, 0].numpy()
        assert len(set(batch[CONDITION_REGISTRY_KEY][:, 0].tolist())) == 1  # one condition per minibatch
        assert control[partners].all() and not held_out[partners].any()
        np.testing.assert_array_equal(batch[PARTNER_ACTIVITY_KEY][:, 0].numpy(), activity[partners])
        n_batches += 1
    assert n_batches > 0


def test_fit_writes_the_latent_record_and_predicts_unseen_doubles(screen, tmp_path):
    adata = screen.copy()
    model = pg.tl.fit_gcrlvae(
        adata, test_key="test", max_epochs=3, train_kwargs={"batch_size": 16, "enable_progress_bar": False}
    )
    K = adata.uns["tf_communities"]["n_communities"]
    record = adata.uns["gcrlvae"]
    assert adata.obsm["X_gcrlvae"].shape == (adata.n_obs, K + 1)
    assert sorted(record["latents"]) == sorted([f"C{k}" for k in range(K)] + ["global"])
    assert adata.varm["gcrlvae_loadings"].shape == (adata.n_vars, K + 1)
    assert record["keys"]["varm"] == "gcrlvae_loadings"
    # the lift: latent π[k] → the TFs of community k
    lift = pd.DataFrame(record["lift"])
    communities = pd.DataFrame(adata.uns["tf_communities"]["communities"])
    for k in range(K):
        tfs = set(communities.loc[communities["community"] == k, "tf"])
        assert set(lift.loc[lift["latent"] == f"C{k}", "gene"]) == tfs
    assert np.allclose(np.tril(record["dag"]), 0.0)
    alignment = record["alignment"]
    assert list(alignment.index) == [f"C{k}" for k in range(K)] + ["global"]
    double = next(c for c in adata.obs["pertgrn_condition"].cat.categories if "+" in c)
    pred = model.predict(perturbations=["control", double], n_cells=8)
    np.testing.assert_allclose(pred.X.sum(1), 1e4, rtol=1e-4)
    logs = model.predict_log_normalized(perturbations=["control", double], n_cells=16)
    assert logs.shape == (32, adata.n_vars) and np.isfinite(logs.X).all()
    ten = model.predict_log_normalized(perturbations=[double], n_cells=16, target_sum=1e5)
    assert (ten.X >= logs[logs.obs["perturbation"] == double].X - 1e-6).all()  # a larger library raises every gene
    adata.write_h5ad(tmp_path / "gcrl.h5ad")
    back = anndata.read_h5ad(tmp_path / "gcrl.h5ad")
    pd.testing.assert_frame_equal(pd.DataFrame(back.uns["gcrlvae"]["lift"]), lift)
    np.testing.assert_array_equal(back.varm["gcrlvae_loadings"], adata.varm["gcrlvae_loadings"])


@pytest.mark.parametrize(
    ("change", "kwargs", "error", "match"),
    [
        ("no_communities", {}, KeyError, "holds no TF communities"),
        ("bad_activity", {}, ValueError, "expected \\(n_obs, "),
        ("none", {"model_kwargs": {"unassigned_targets": "error", "n_latent": None}}, ValueError, "in no TF community"),
        ("none", {"activity_key": None}, ValueError, "needs TF communities"),
        ("none", {"model_kwargs": {"routing": "sideways"}}, ValueError, "`routing` must be one of"),
        ("none", {"model_kwargs": {"n_latent": 2, "variant": "gcrl"}}, ValueError, "n_latent=2"),
    ],
)
def test_bad_input_fails_before_anything_is_written(screen, change, kwargs, error, match):
    adata = screen.copy()
    if change == "no_communities":
        del adata.uns["tf_communities"]
    if change == "bad_activity":
        adata.obsm["X_tf_activity"] = adata.obsm["X_tf_activity"][:, :-1]
    if change == "none" and "unassigned_targets" in kwargs.get("model_kwargs", {}):
        # a perturbed gene outside every community
        communities = pd.DataFrame(adata.uns["tf_communities"]["communities"])
        target = adata.uns["simulation"]["perturbed_genes"][0]
        communities.loc[communities["tf"] == target, "community"] = -1
        adata.uns["tf_communities"]["communities"] = communities
    model_kwargs = {k: v for k, v in kwargs.get("model_kwargs", {}).items() if v is not None}
    before = adata.copy()
    with pytest.raises(error, match=match):
        pg.tl.fit_gcrlvae(
            adata,
            max_epochs=1,
            activity_key=kwargs.get("activity_key", "X_tf_activity"),
            model_kwargs=model_kwargs,
            train_kwargs={"enable_progress_bar": False},
        )
    assert_equal(adata, before)


def test_targets_outside_communities_fall_back_to_the_global_latent(screen, caplog):
    adata = screen.copy()
    communities = pd.DataFrame(adata.uns["tf_communities"]["communities"])
    target = adata.uns["simulation"]["perturbed_genes"][0]
    communities.loc[communities["tf"] == target, "community"] = -1
    adata.uns["tf_communities"]["communities"] = communities
    GCRLVAE.setup_anndata(adata, test_key="test")
    with caplog.at_level("INFO", logger="pertgrn"):
        model = GCRLVAE(adata)
    assert "routed to the global latent" in caplog.text
    row = model.design_columns.index(target)
    assert model.module.target_community[row].argmax() == model.module.target_community.shape[1] - 1


def test_evaluate_reports_aecd_and_tmex(screen):
    adata = screen.copy()
    # observed effects need held-out controls beside the held-out doubles
    control = (adata.obs["perturbation"] == "control").to_numpy()
    adata.obs["test"] = adata.obs["test"].to_numpy() | (control & (np.arange(adata.n_obs) % 5 == 0))
    pg.tl.fit_gcrlvae(
        adata, test_key="test", max_epochs=2, train_kwargs={"batch_size": 16, "enable_progress_bar": False}
    )
    table = pg.tl.evaluate(adata, key="gcrlvae", test_key="test", metrics=["aecd", "alignment", "dag"])
    assert table.loc["tmex", "value"] == pytest.approx(adata.uns["gcrlvae"]["alignment"]["partial_correlation"].mean())
    observed = pg.get.ate_df(adata, mask=adata.obs["test"].to_numpy())
    predicted = adata.uns["gcrlvae"]["ate"].loc[observed.index]
    distance = np.sqrt(((predicted.to_numpy() - observed.loc[:, predicted.columns].to_numpy()) ** 2).sum(1)).mean()
    assert table.loc["aecd", "value"] == pytest.approx(distance, rel=1e-5)
    assert table.loc["dag_is_acyclic", "value"] == 1.0

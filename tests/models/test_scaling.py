"""Past one process and past memory: the distributed sampler path, condition means under data parallelism,
per-epoch logging of the loss terms, and fitting from a backed (on-disk) AnnData.

A full two-process DDP fit takes minutes on two cores; it lives in ``benchmarks/ddp.py``.
"""

from __future__ import annotations

import anndata
import numpy as np
import pytest
import scvi
import torch
from models.test_gpovae import SMALL, _screen
from scipy import sparse

from pertgrn.models import GPOVAE
from pertgrn.models._base import PARTNER_INDEX_KEY, PARTNER_LIBRARY_KEY, PARTNER_X_KEY, PairedDataSplitter
from pertgrn.models._gpovae import _module as gpovae_module
from pertgrn.models._gpovae._trainingplan import GPOVAETrainingPlan


@pytest.fixture(scope="module")
def model() -> GPOVAE:
    adata = _screen()
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    GPOVAE.setup_anndata(adata)
    return GPOVAE(adata, **SMALL)


def _expected_partners(model: GPOVAE, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``partner_x`` and ``partner_library`` of ``cells`` computed directly from the registered fields."""
    counts = sparse.csr_matrix(model.adata.X).toarray()
    index = np.asarray(model.adata.obsm["_pertgrn_partner_index"])[cells]
    columns = model._partner_columns()
    x = np.where(index[..., None] >= 0, counts[np.maximum(index, 0)][..., columns], 0.0)
    library = np.where(index >= 0, counts[np.maximum(index, 0)].sum(-1), 0.0)
    return x, library


def test_distributed_sampler_shards_training_cells_and_attaches_partners(model, monkeypatch):
    # two data-parallel processes, as DistributedSampler sees them (no process group needed)
    from scvi.dataloaders._samplers import BatchDistributedSampler

    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(scvi.settings, "seed", None)  # processes spawned by Lightning do not inherit a seed
    shards, train = [], None
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, rank=rank, **k: rank)
        # what train() passes to the splitter under DDP: the same split in every process, seed or not
        kwargs = model._datasplitter_kwargs(
            None, train_size=0.9, validation_size=None, shuffle_set_split=True, strategy="ddp_spawn"
        )
        splitter = PairedDataSplitter(model.adata_manager, batch_size=16, distributed_sampler=True, **kwargs)
        splitter.setup()
        loader = splitter.train_dataloader()
        assert isinstance(loader.sampler, BatchDistributedSampler)
        train = np.sort(loader.indices)
        batches = [loader.indices[np.asarray(b)] for b in loader.sampler]
        assert all(len(b) <= 16 for b in batches)
        shards.append(np.concatenate(batches))
        batch = next(iter(loader))
        x, library = _expected_partners(model, batches[0])
        np.testing.assert_array_equal(batch[PARTNER_X_KEY].numpy(), x)
        np.testing.assert_array_equal(batch[PARTNER_LIBRARY_KEY].numpy(), library)
        np.testing.assert_array_equal(
            batch[PARTNER_INDEX_KEY].numpy(), model.adata.obsm["_pertgrn_partner_index"][batches[0]]
        )
    # equal shards that together cover every training cell (DistributedSampler pads the last by repeating)
    assert len(shards[0]) == len(shards[1]) == int(np.ceil(train.size / 2))
    assert set(shards[0]) | set(shards[1]) == set(train)
    assert len(set(shards[0]) & set(shards[1])) <= train.size % 2
    # without DDP (and without held-out cells) scvi-tools draws the split itself, as before
    assert "external_indexing" not in model._datasplitter_kwargs(
        None, train_size=0.9, validation_size=None, shuffle_set_split=True, strategy=None
    )


def test_condition_means_sum_the_cells_of_every_process(model, monkeypatch):
    module = model.module
    module.train()
    torch.manual_seed(0)
    condition = torch.tensor([1, 1, 2, 3])
    delta = torch.randn(4, module.measured_node_index.numel())
    weights = torch.tensor([True, True, False, True])
    buffers = (module.condition_delta_sum.clone(), module.condition_delta_count.clone())
    try:
        means_single = module.condition_mean_delta(condition, delta, weights)
        single = (module.condition_delta_sum - buffers[0], module.condition_delta_count - buffers[1])
        module.condition_delta_sum.copy_(buffers[0])
        module.condition_delta_count.copy_(buffers[1])
        # two processes with the same minibatch: all_reduce sums their increments
        monkeypatch.setattr(gpovae_module, "_data_parallel", lambda: True)
        monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor, *a, **k: tensor.mul_(2))
        means_double = module.condition_mean_delta(condition, delta, weights, rows=torch.tensor([1, 3]))
        np.testing.assert_allclose((module.condition_delta_sum - buffers[0]).numpy(), 2 * single[0].numpy())
        np.testing.assert_allclose((module.condition_delta_count - buffers[1]).numpy(), 2 * single[1].numpy())
        np.testing.assert_allclose(means_double.numpy(), means_single[[1, 3]].numpy(), rtol=1e-6)
        np.testing.assert_allclose(means_single[1].numpy(), delta[:2].mean(0).numpy(), rtol=1e-5)
    finally:
        module.condition_delta_sum.copy_(buffers[0])
        module.condition_delta_count.copy_(buffers[1])
        module.eval()


def test_loss_terms_are_logged_once_per_epoch_as_weighted_means(model, monkeypatch):
    from scvi.module.base import LossOutput
    from scvi.train import TrainingPlan

    plan = GPOVAETrainingPlan(model.module)
    monkeypatch.setattr(TrainingPlan, "compute_and_log_metrics", lambda self, *a, **k: None)
    monkeypatch.setattr(GPOVAETrainingPlan, "use_sync_dist", False)
    monkeypatch.setattr(GPOVAETrainingPlan, "log_elbo_metrics", False)
    logged = {}
    monkeypatch.setattr(plan, "log", lambda name, value, **k: logged.__setitem__(name, (float(value), k)))
    for value, n in ((1.0, 10), (4.0, 30)):
        output = LossOutput(
            loss=torch.tensor(0.0),
            n_obs_minibatch=n,
            extra_metrics={"gpo_fit": torch.tensor(value), "n_edges": torch.tensor(2 * value)},
        )
        plan.compute_and_log_metrics(output, {}, "train")
    assert logged == {}  # nothing per step
    plan.log_epoch_terms("train")
    assert logged["gpo_fit_train"][0] == pytest.approx((1.0 * 10 + 4.0 * 30) / 40)
    assert logged["n_edges_train"][0] == pytest.approx(2 * 3.25)
    assert logged["gpo_fit_train"][1] == {
        "on_step": False,
        "on_epoch": True,
        "batch_size": 1,
        "sync_dist": False,
        "prog_bar": False,
    }
    assert logged["train_loss"][0] == 0.0 and logged["train_loss"][1]["prog_bar"] is True
    plan.log_epoch_terms("train")  # a new epoch starts from zero
    assert set(logged) == {"train_loss", "gpo_fit_train", "n_edges_train", "kl_weight"}
    assert logged["kl_weight"][0] == pytest.approx(float(plan.kl_weight))  # once per epoch, not per step


@pytest.mark.parametrize("mode", ["train", "validation"])
def test_elbo_metrics_per_epoch_equal_scvi_tools_elbo_metric(model, monkeypatch, mode):
    # the plan's own ElboMetric objects are updated every minibatch (no Lightning call per step) and
    # logged once at the end of the epoch, with the values scvi-tools' per-step path gives
    from scvi.module.base import LossOutput
    from scvi.train import TrainingPlan

    plan = GPOVAETrainingPlan(model.module)
    monkeypatch.setattr(GPOVAETrainingPlan, "use_sync_dist", False)
    plan.n_obs_training, plan.n_obs_validation = 40, 25
    plan.initialize_train_metrics()
    plan.initialize_val_metrics()
    own = plan.train_metrics if mode == "train" else plan.val_metrics
    reference = TrainingPlan._create_elbo_metric_components(mode, n_total=40 if mode == "train" else 25)[-1]
    logged = {}
    monkeypatch.setattr(plan, "log", lambda name, value, **k: logged.__setitem__(name, value))
    generator = torch.Generator().manual_seed(0)
    for n in (10, 30, 7):
        output = LossOutput(
            loss=torch.tensor(0.0),
            reconstruction_loss=torch.rand(n, generator=generator) * 100,
            kl_local=torch.rand(n, generator=generator),
            kl_global=torch.rand((), generator=generator) * 5,
            extra_metrics={"gpo_fit": torch.tensor(float(n))},
        )
        plan.compute_and_log_metrics(output, own, mode)
    assert logged == {}  # nothing per step
    with monkeypatch.context() as m:  # scvi-tools' own per-step path on fresh metrics, same minibatches
        m.setattr(plan, "log", lambda *a, **k: None)
        generator = torch.Generator().manual_seed(0)
        for n in (10, 30, 7):
            output = LossOutput(
                loss=torch.tensor(0.0),
                reconstruction_loss=torch.rand(n, generator=generator) * 100,
                kl_local=torch.rand(n, generator=generator),
                kl_global=torch.rand((), generator=generator) * 5,
            )
            TrainingPlan.compute_and_log_metrics(plan, output, reference, mode)
    plan.log_epoch_terms(mode)
    expected = {*reference, f"gpo_fit_{mode}", f"{mode}_loss"} | ({"kl_weight"} if mode == "train" else set())
    assert set(logged) == expected
    for name, metric in reference.items():
        assert logged[name] is own[name]
        assert float(logged[name].compute()) == pytest.approx(float(metric.compute()), rel=1e-6), name
    assert float(logged[f"gpo_fit_{mode}"]) == pytest.approx((10 * 10 + 30 * 30 + 7 * 7) / 47)


def test_epoch_terms_are_summed_over_processes_before_the_mean(model, monkeypatch):
    # under DDP every process adds its (Σ value·n, Σ n); the mean is taken over the cells of all of them
    from types import SimpleNamespace

    from scvi.module.base import LossOutput
    from scvi.train import TrainingPlan

    plan = GPOVAETrainingPlan(model.module)
    monkeypatch.setattr(TrainingPlan, "compute_and_log_metrics", lambda self, *a, **k: None)
    monkeypatch.setattr(GPOVAETrainingPlan, "use_sync_dist", True)
    monkeypatch.setattr(GPOVAETrainingPlan, "log_elbo_metrics", False)
    reduced = []

    def reduce(tensor, reduce_op):
        assert reduce_op == "sum" and not tensor.is_inference()  # Lightning syncs in place
        reduced.append(tensor)
        # the other process: 20 cells, loss 1.0, term 6.0
        return tensor + torch.tensor([1.0 * 20, 6.0 * 20, 20.0], dtype=tensor.dtype)

    monkeypatch.setattr(GPOVAETrainingPlan, "trainer", SimpleNamespace(strategy=SimpleNamespace(reduce=reduce)))
    logged = {}
    monkeypatch.setattr(plan, "log", lambda name, value, **k: logged.__setitem__(name, (float(value), k)))
    output = LossOutput(loss=torch.tensor(0.0), n_obs_minibatch=10, extra_metrics={"gpo_fit": torch.tensor(3.0)})
    plan.compute_and_log_metrics(output, {}, "train")
    plan.log_epoch_terms("train")
    assert len(reduced) == 1
    assert logged["gpo_fit_train"][0] == pytest.approx((3.0 * 10 + 6.0 * 20) / 30)
    assert logged["train_loss"][0] == pytest.approx((0.0 * 10 + 1.0 * 20) / 30)
    assert logged["gpo_fit_train"][1]["sync_dist"] is True
    # a module whose terms change within an epoch is an error, not a silently wrong mean
    plan.compute_and_log_metrics(output, {}, "train")
    other = LossOutput(loss=torch.tensor(0.0), n_obs_minibatch=10, extra_metrics={"kl": torch.tensor(1.0)})
    with pytest.raises(RuntimeError, match="changed within an epoch"):
        plan.compute_and_log_metrics(other, {}, "train")


def test_fused_adam_where_available(model):
    plan = GPOVAETrainingPlan(model.module, grn_lr=0.05)
    optimizer = plan.configure_optimizers()["optimizer"]
    assert bool(optimizer.defaults.get("fused")) == _has_cpu_fused()
    assert [group["lr"] for group in optimizer.param_groups] == [plan.lr, 0.05]


@pytest.mark.parametrize("plan_name", ["raptorgraph", "gcrlvae"])
def test_condition_batched_plans_use_fused_adam_where_available(plan_name, condition_batched):
    if plan_name == "raptorgraph":
        from pertgrn.models._raptorgraph._trainingplan import RaptorGraphTrainingPlan

        plan = RaptorGraphTrainingPlan(condition_batched.module, lr=1e-3)
        expected_cls, decay = torch.optim.AdamW, [0.01, 0.0]  # no decay on A and the shifts
    else:
        from pertgrn.models._gcrlvae._module import GCRLVAEModule
        from pertgrn.models._gcrlvae._trainingplan import GCRLVAETrainingPlan

        plan = GCRLVAETrainingPlan(GCRLVAEModule(n_genes=10, n_targets=3, n_latent=3, routing="soft"))
        expected_cls, decay = torch.optim.Adam, [0.0]
    optimizer = plan.configure_optimizers()["optimizer"]
    assert type(optimizer) is expected_cls
    assert bool(optimizer.defaults.get("fused")) == _has_cpu_fused()
    assert [group["weight_decay"] for group in optimizer.param_groups] == decay


def test_fused_where_possible_is_the_same_update_and_falls_back():
    from pertgrn.models._base._optim import fused_where_possible

    # a device without a fused kernel gets the default implementation
    meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    assert not fused_where_possible(torch.optim.AdamW, meta, lr=1e-3).defaults.get("fused")
    if not _has_cpu_fused():
        pytest.skip("this PyTorch has no fused CPU Adam")
    trajectories = []
    for fused in (True, False):
        torch.manual_seed(0)
        layer = torch.nn.Linear(6, 4)
        groups = [{"params": [layer.weight], "weight_decay": 0.01}, {"params": [layer.bias], "weight_decay": 0.0}]
        optimizer = (
            fused_where_possible(torch.optim.AdamW, groups, lr=1e-2) if fused else torch.optim.AdamW(groups, lr=1e-2)
        )
        assert bool(optimizer.defaults.get("fused")) == fused
        x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
        for _ in range(5):
            optimizer.zero_grad()
            layer(x).square().mean().backward()
            optimizer.step()
        trajectories.append(torch.cat([layer.weight.detach().ravel(), layer.bias.detach()]))
    torch.testing.assert_close(trajectories[0], trajectories[1], rtol=1e-5, atol=1e-6)


def _has_cpu_fused() -> bool:
    try:
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def _backed_copy(adata, tmp_path):
    """``adata`` with sparse float32 counts, written to ``tmp_path`` and read back with ``X`` on disk."""
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    path = tmp_path / "screen.h5ad"
    adata.write_h5ad(path)
    backed = anndata.read_h5ad(path, backed="r")
    assert backed.isbacked and not sparse.issparse(backed.X)  # X stays on disk
    return backed


def test_fit_from_a_backed_anndata_matches_in_memory(tmp_path):
    adata = _screen()
    backed = _backed_copy(adata, tmp_path)

    GPOVAE.setup_anndata(adata)
    in_memory = GPOVAE(adata, **SMALL)
    GPOVAE.setup_anndata(backed)
    on_disk = GPOVAE(backed, **SMALL)
    # set-up statistics read from disk in chunks equal those of the in-memory matrix
    for name in ("log_mean", "log_std", "target_sum", "node_counts", "cf_profiles", "cf_valid"):
        np.testing.assert_allclose(
            getattr(on_disk.module, name).numpy(), getattr(in_memory.module, name).numpy(), rtol=1e-6, err_msg=name
        )
    # a paired minibatch read from disk equals the in-memory one
    from pertgrn.models._base import PairedAnnDataLoader

    cells = np.flatnonzero(adata.obs["pertgrn_condition"] != adata.uns["pertgrn"]["control"])[:20]
    batches = [
        next(
            iter(
                PairedAnnDataLoader(m.adata_manager, indices=cells, batch_size=20, partner_columns=m._partner_columns())
            )
        )
        for m in (in_memory, on_disk)
    ]
    for key in ("X", PARTNER_X_KEY, PARTNER_LIBRARY_KEY, PARTNER_INDEX_KEY):
        np.testing.assert_array_equal(batches[0][key].numpy(), batches[1][key].numpy(), err_msg=key)
    # and the backed model trains, embeds and predicts
    scvi.settings.seed = 0
    on_disk.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    assert np.isfinite(on_disk.history_summary()["train_loss"].to_numpy()).all()
    assert on_disk.get_latent_representation().shape == (adata.n_obs, SMALL["n_latent"])
    assert np.isfinite(on_disk.get_ate([on_disk.nodes[0]], n_cells=20).to_numpy()).all()
    backed.file.close()


def test_raptorgraph_fits_from_a_backed_anndata_as_in_memory(tmp_path):
    """RAPTORGraph's set-up statistics are read in chunks, so X can stay on disk; the fit is the same."""
    import pertgrn as pg
    from pertgrn.models import RaptorGraph

    adata = pg.datasets.simulate(seed=1)
    pg.pp.annotate_perturbations(adata, control="control")
    adata.obs["test"] = (adata.obs["pertgrn_n_targets"] > 1).to_numpy()
    pg.pp.ot_pairing(adata, test_key="test", n_comps=10)
    backed = _backed_copy(adata, tmp_path)

    fits = []
    for data in (adata, backed):
        RaptorGraph.setup_anndata(data, test_key="test")
        scvi.settings.seed = 0
        fits.append(RaptorGraph(data, n_latent=len(data.uns["pertgrn"]["targets"]) + 2))
    in_memory, on_disk = fits
    # the same statistics and, from the same weights, the same encodings of cells read from disk
    assert on_disk.module.target_sum.item() == in_memory.module.target_sum.item()
    latents = [m.get_latent_representation(give_mean=True) for m in fits]
    np.testing.assert_array_equal(latents[1], latents[0])
    # and the backed model trains and predicts (minibatch rows come in another order from disk, so the
    # draws of the reparameterisation noise, and the losses, differ slightly from the in-memory fit)
    on_disk.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    assert np.isfinite(on_disk.history_summary()["train_loss"].to_numpy()).all()
    held_out = sorted(adata.obs.loc[adata.obs["test"], "pertgrn_condition"].astype(str).unique())[:2]
    assert np.isfinite(on_disk.get_ate(held_out, n_cells=50).to_numpy()).all()
    backed.file.close()


def test_gcrlvae_fits_from_a_backed_anndata_as_in_memory(tmp_path):
    """gCRL-VAE reads no statistics of X at set-up: X can stay on disk; the same encodings, then a fit."""
    from gcrl_fixtures import build_modular_screen

    import pertgrn as pg
    from pertgrn.models import GCRLVAE

    adata = build_modular_screen()
    adata.obs["test"] = (adata.obs["pertgrn_n_targets"] > 1).to_numpy()
    pg.pp.tf_activity(adata, fit_mask=~adata.obs["test"].to_numpy())
    backed = _backed_copy(adata, tmp_path)
    fits = []
    for data in (adata, backed):
        GCRLVAE.setup_anndata(data, test_key="test")
        scvi.settings.seed = 0
        fits.append(GCRLVAE(data))
    np.testing.assert_array_equal(fits[1].get_latent_representation(), fits[0].get_latent_representation())
    fits[1].train(max_epochs=2, batch_size=16, enable_progress_bar=False)
    assert np.isfinite(fits[1].history_summary()["train_loss"].to_numpy()).all()
    held_out = sorted(adata.obs.loc[adata.obs["test"], "pertgrn_condition"].astype(str).unique())[:2]
    assert np.isfinite(fits[1].get_ate(held_out, n_cells=30).to_numpy()).all()
    backed.file.close()


def test_registered_fields_pickle_for_spawned_processes(model):
    # Lightning's ddp_spawn pickles the training plan and data splitter, registered fields included
    import pickle

    fields = pickle.loads(pickle.dumps(model.adata_manager.fields))
    recomputed = [f._compute(model.adata, {"column_names": f._columns}) for f in fields if hasattr(f, "_compute")]
    assert len(recomputed) == 3  # design, partner indices, partner weights
    np.testing.assert_array_equal(recomputed[1], model.adata.obsm["_pertgrn_partner_index"])


@pytest.fixture(scope="module")
def condition_batched():
    from models.cases import tiny_screen

    from pertgrn.models import RaptorGraph

    adata = tiny_screen()
    RaptorGraph.setup_anndata(adata, test_key="test")
    return RaptorGraph(adata, decoder_n_hidden=16, n_subgraphs=2)


def test_condition_batches_are_shared_out_between_processes(condition_batched, monkeypatch):
    # RaptorGraph's (and gCRL's) minibatches hold one condition each; under DDP each process takes its share
    from pertgrn.models._base import DistributedConditionBatchSampler

    model = condition_batched
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(scvi.settings, "seed", None)  # spawned processes: no inherited seed, yet they must agree
    condition = model.adata.obs["pertgrn_condition"].to_numpy()

    def passes(loader, n=2):
        return [[tuple(loader.indices[np.asarray(b)]) for b in loader.sampler] for _ in range(n)]

    kwargs = model._datasplitter_kwargs(
        None, train_size=1.0, validation_size=None, shuffle_set_split=True, strategy="ddp_spawn"
    )
    assert kwargs["sampler_seed"] == 0
    # what one process would train on with that seed: every batch of every pass
    single = model._data_splitter_cls(model.adata_manager, batch_size=8, group_by_condition=True, **kwargs)
    single.setup()
    expected = passes(single.train_dataloader())
    assert all(len(set(condition[list(b)])) == 1 and len(b) <= 8 for b in expected[0])
    assert expected[0] != expected[1]  # reshuffled every pass
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, rank=rank, **k: rank)
        splitter = model._data_splitter_cls(
            model.adata_manager, batch_size=8, group_by_condition=True, distributed_sampler=True, **kwargs
        )
        splitter.setup()
        loader = splitter.train_dataloader()
        assert isinstance(loader.sampler, DistributedConditionBatchSampler)
        shares.append(passes(loader))
    for epoch, batches in enumerate(expected):
        # the same number of steps in every process (or DDP hangs), the pass padded by its first batch
        padded = batches + batches[: len(batches) % 2]
        assert shares[0][epoch] == padded[0::2]
        assert shares[1][epoch] == padded[1::2]

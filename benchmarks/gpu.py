"""Every model for one epoch at its paper's scale on a GPU, next to SCVI on the same matrix; OT pairing on the GPU.

Sections (``--sections``, all by default). Each adds its results to one JSON file, which is
rewritten after every section, so a run cut short keeps what it measured:

``gpovae``
    GPO-VAE (``preset="pertgrn"``) on the K562-shaped synthetic screen of ``benchmarks/gpovae.py``:
    8,563 genes, 1,546 GRN nodes (1,000 perturbed targets + 546 extended genes), ``--k562-cells``
    cells, 8 random control partners per perturbed cell.
``raptorgraph``
    RAPTORGraph on the Norman-scale synthetic screen of ``benchmarks/raptorgraph.py``: 100,000
    cells × 5,000 genes, 105 targets (109 latents), 131 doubles held out, one OT partner per cell.
``gcrl``
    gCRL-VAE (``variant="gcrl"``) on the paper-scale simulated screen of ``benchmarks/gcrl.py``:
    150 TFs in 8 planted modules, 1,716 genes, 10,000 controls, 39 singles of 640 cells, 4
    held-out doubles (35,360 cells); ``pp.reference_grn``, ``pp.tf_communities``
    (``n_runs=--community-runs``) and ``pp.tf_activity`` on the CPU first, timed.
``ot``
    ``pp.ot_pairing`` on the Norman-scale simulated counts of ``benchmarks/ot_pairing.py``
    (8,907 controls, 280 conditions of ~350 cells, 5,000 genes, 50-d PCA): the exact solver on
    the CPU (``n_jobs`` = every core), Sinkhorn on the CPU (same ``n_jobs``) and Sinkhorn on the
    GPU (``device="cuda"``), with each plan's mean cost against the exact optimum.

Model timing: a fresh model and a fresh SCVI (scvi-tools' defaults, minibatches of 128) on the
same count matrix train two epochs each through Lightning (``accelerator="gpu"``, validation
off); the second epoch is timed between ``torch.cuda.synchronize()`` calls at its start and end
(the first pays for the CUDA context, cuBLAS handles and the caching allocator's growth). Loading
minibatches from the AnnData is part of an epoch, as it is for a user. The ratio is the model's
epoch seconds over SCVI's. Recorded with it: steps per epoch, peak CUDA memory, and a check of
the whole GPU path: the GPU-trained model predicts effects (``get_ate``), is saved, loaded back
on the CPU, and must predict the same effects there (largest absolute difference reported).

Usage (on a machine with a CUDA GPU)::

    python benchmarks/gpu.py --out benchmarks/results/gpu.json
    python benchmarks/gpu.py --sections ot --n-jobs 16

``--small`` runs every section at toy sizes, on whatever device there is: a check of the script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmark scripts' data builders

import lightning.pytorch as lp
import scvi

import pertgrn as pg


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class EpochTimer(lp.Callback):
    """Wall seconds and steps of every training epoch, the GPU synchronised at both ends."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.steps: list[int] = []
        self._start = 0.0
        self._steps = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _sync()
        self._steps = 0
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._steps += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        _sync()
        self.seconds.append(time.perf_counter() - self._start)
        self.steps.append(self._steps)


def accelerator() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def timed_epochs(model, **train_kwargs) -> dict:
    """Two epochs of ``model.train``; the second one timed."""
    timer = EpochTimer()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model.train(
        max_epochs=2,
        accelerator=accelerator(),
        devices=1,
        early_stopping=False,
        check_val_every_n_epoch=10_000,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        callbacks=[timer],
        **train_kwargs,
    )
    out = {
        "train_call_s": round(time.perf_counter() - start, 3),
        "first_epoch_s": round(timer.seconds[0], 4),
        "epoch_s": round(timer.seconds[-1], 4),
        "steps_per_epoch": timer.steps[-1],
        "ms_per_step": round(1e3 * timer.seconds[-1] / max(timer.steps[-1], 1), 3),
        "n_parameters": int(sum(p.numel() for p in model.module.parameters())),
    }
    if torch.cuda.is_available():
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def scvi_reference(adata, **train_kwargs) -> dict:
    cells = adata.copy()
    scvi.model.SCVI.setup_anndata(cells)
    return timed_epochs(scvi.model.SCVI(cells), **train_kwargs)


def gpu_path_check(model, model_cls, adata, perturbations: list[str], n_cells: int) -> dict:
    """Effects predicted by the GPU-trained model, then by the same model saved and loaded on the CPU.

    Count models draw counts in ``get_ate``: CUDA's generator gives other draws than the CPU's for
    the same seed, so the two agree within Monte Carlo noise (their correlation is reported); models
    that decode expected expression agree up to float32 rounding.
    """
    start = time.perf_counter()
    on_gpu = model.get_ate(perturbations, n_cells=n_cells)
    predict_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        model.save(folder, overwrite=True)
        reloaded = model_cls.load(folder, adata=adata, accelerator="cpu")
        start = time.perf_counter()
        on_cpu = reloaded.get_ate(perturbations, n_cells=n_cells).loc[on_gpu.index, on_gpu.columns]
        predict_cpu_s = time.perf_counter() - start
    gpu, cpu = on_gpu.to_numpy().ravel(), on_cpu.to_numpy().ravel()
    return {
        "get_ate_conditions": len(perturbations),
        "get_ate_cells_per_condition": n_cells,
        "get_ate_gpu_s": round(predict_s, 3),
        "get_ate_cpu_s": round(predict_cpu_s, 3),
        "device_of_parameters": str(next(model.module.parameters()).device),
        "gpu_vs_cpu_reload_pearson": float(np.corrcoef(gpu, cpu)[0, 1]),
        "gpu_vs_cpu_reload_max_abs_diff": float(np.abs(gpu - cpu).max()),
        "gpu_vs_cpu_reload_mean_abs_diff": float(np.abs(gpu - cpu).mean()),
        "mean_abs_effect": float(np.abs(gpu).mean()),
    }


def section_gpovae(args) -> dict:
    import gpovae as bench

    from pertgrn.models import GPOVAE

    start = time.perf_counter()
    adata = bench.k562_screen(args.k562_cells) if not args.small else bench.simulator_screen()
    out = {"build_s": round(time.perf_counter() - start, 2), "shape": list(adata.shape)}
    GPOVAE.setup_anndata(adata)
    model = GPOVAE(adata)
    out["n_nodes"] = len(model.nodes)
    out["gpovae"] = timed_epochs(model)
    print("gpovae", out["gpovae"], flush=True)
    out["scvi"] = scvi_reference(adata)
    print("scvi", out["scvi"], flush=True)
    out["epoch_ratio_to_scvi"] = out["gpovae"]["epoch_s"] / out["scvi"]["epoch_s"]
    targets = model.predictable_targets[: args.ate_conditions]
    out["gpu_path"] = gpu_path_check(model, GPOVAE, adata, targets, args.ate_cells)
    return out


def section_raptorgraph(args) -> dict:
    import raptorgraph as bench

    from pertgrn.models import RaptorGraph

    start = time.perf_counter()
    if args.small:
        adata = bench.simulator()
    else:
        adata = bench.synthetic_norman(SimpleNamespace(**bench.NORMAN_SCALE))
    out = {"build_s": round(time.perf_counter() - start, 2), "shape": list(adata.shape)}
    RaptorGraph.setup_anndata(adata, test_key="test")
    model = RaptorGraph(adata)
    out["n_latent"] = model.module.n_latent
    out["raptorgraph"] = timed_epochs(model)
    print("raptorgraph", out["raptorgraph"], flush=True)
    out["scvi"] = scvi_reference(adata[~adata.obs["test"].to_numpy()])
    print("scvi", out["scvi"], flush=True)
    out["epoch_ratio_to_scvi"] = out["raptorgraph"]["epoch_s"] / out["scvi"]["epoch_s"]
    held_out = sorted(adata.obs.loc[adata.obs["test"], "pertgrn_condition"].astype(str).unique())
    out["gpu_path"] = gpu_path_check(model, RaptorGraph, adata, held_out[: args.ate_conditions], args.ate_cells)
    return out


def section_gcrl(args) -> dict:
    import gcrl as bench

    from pertgrn.models import GCRLVAE

    sizes = (
        {"n_genes": 200, "n_regulators": 20, "n_tf_modules": 4, "n_control": 400, "n_perturbed": 12}
        | {"cells_per_condition": 80, "n_doubles": 4}
        if args.small
        else {"n_genes": 1716, "n_regulators": 150, "n_tf_modules": 8, "n_control": 10_000, "n_perturbed": 39}
        | {"cells_per_condition": 640, "n_doubles": 4}
    )
    start = time.perf_counter()
    adata = bench.paper_screen(**sizes)
    out: dict = {"simulate_s": round(time.perf_counter() - start, 2), "shape": list(adata.shape)}
    tfs = adata.var_names[adata.var["true_tf_module"].to_numpy() >= 0]
    for name, step in (
        ("reference_grn_s", lambda: pg.pp.reference_grn(adata, tfs=tfs, test_key="test")),
        ("tf_communities_s", lambda: pg.pp.tf_communities(adata, n_runs=args.community_runs)),
        ("tf_activity_s", lambda: pg.pp.tf_activity(adata, fit_mask=~adata.obs["test"].to_numpy())),
    ):
        start = time.perf_counter()
        step()
        out[name] = round(time.perf_counter() - start, 2)
    out["n_communities"] = int(adata.uns["tf_communities"]["n_communities"])
    print({k: v for k, v in out.items() if k.endswith("_s")}, flush=True)
    GCRLVAE.setup_anndata(adata, test_key="test")
    model = GCRLVAE(adata)
    out["gcrlvae"] = timed_epochs(model)
    print("gcrlvae", out["gcrlvae"], flush=True)
    out["scvi"] = scvi_reference(adata)
    print("scvi", out["scvi"], flush=True)
    out["epoch_ratio_to_scvi"] = out["gcrlvae"]["epoch_s"] / out["scvi"]["epoch_s"]
    held_out = sorted(adata.obs.loc[adata.obs["test"], "pertgrn_condition"].astype(str).unique())
    out["gpu_path"] = gpu_path_check(model, GCRLVAE, adata, held_out, args.ate_cells)
    return out


def section_ot(args) -> dict:
    import ot_pairing as bench

    scale = bench.SCALES["small" if args.small else "norman"]
    start = time.perf_counter()
    adata = bench.simulate_counts(**scale, seed=0)
    pg.pp.annotate_perturbations(adata, perturbation_key="perturbation", control="control")
    out: dict = {"build_s": round(time.perf_counter() - start, 2), "shape": list(adata.shape)}
    start = time.perf_counter()
    pg.pp.ot_pairing(adata, n_jobs=1, key_added="_warmup", use_rep=None, method="random")  # PCA once, cached below
    out["representation_s"] = round(time.perf_counter() - start, 2)
    adata.obsm["X_pca_controls"] = _control_pca(adata)
    runs = [
        ("exact_cpu", {"method": "emd", "n_jobs": args.n_jobs}),
        ("sinkhorn_cpu", {"method": "sinkhorn", "n_jobs": args.n_jobs}),
    ]
    if torch.cuda.is_available():
        runs.append(("sinkhorn_gpu", {"method": "sinkhorn", "device": "cuda"}))
    for name, kwargs in runs:
        cpu0, start = time.process_time(), time.perf_counter()
        pg.pp.ot_pairing(adata, use_rep="X_pca_controls", key_added=name, **kwargs)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
        costs = adata.uns[name]["costs"]["cost"]
        out[name] = {"wall_s": round(wall, 2), "process_cpu_s": round(cpu, 2), "mean_cost": float(costs.mean())}
        if name != "exact_cpu":
            exact = adata.uns["exact_cpu"]["costs"]["cost"]
            out[name]["cost_over_exact_median"] = float(np.median(costs / exact))
        print(name, out[name], flush=True)
    return out


def _control_pca(adata) -> np.ndarray:
    """The representation ``pp.ot_pairing`` builds by default (50-d PCA of log-normalised controls)."""
    from pertgrn.pp import _ot_pairing

    held_out = np.zeros(adata.n_obs, dtype=bool)
    controls, _ = _ot_pairing._conditions(adata, held_out)
    Z, _ = _ot_pairing._representation(adata, None, 50, None, controls, 0, None)
    return np.asarray(Z)


def _step_profile(plan, batches: list, repeats: int) -> dict:
    """Milliseconds per optimisation step on ready minibatches, and a profile: kernel launches, top operators."""
    from torch.profiler import ProfilerActivity, profile

    optimizer = plan.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    plan.module.train()

    def step(batch) -> None:
        optimizer.zero_grad()
        _, _, loss = plan.forward(batch, loss_kwargs=plan.loss_kwargs)
        loss.loss.backward()
        torch.nn.utils.clip_grad_norm_(plan.module.parameters(), 100.0)
        optimizer.step()

    for batch in batches[:2]:
        step(batch)
    _sync()
    start = time.perf_counter()
    for batch in batches[2 : 2 + repeats]:
        step(batch)
    _sync()
    out = {"ms_per_step_no_loading": round(1e3 * (time.perf_counter() - start) / repeats, 3)}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    n = min(5, repeats)
    with profile(activities=activities) as prof:
        for batch in batches[2 : 2 + n]:
            step(batch)
        _sync()
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    out["kernel_launches_per_step"] = launches / n
    out["aten_ops_per_step"] = sum(e.count for e in events if e.key.startswith("aten::")) / n
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    out["top_self_cpu_ms_per_step"] = {e.key: round(e.self_cpu_time_total / 1e3 / n, 3) for e in top}
    if torch.cuda.is_available():
        device_time = sum(getattr(e, "self_device_time_total", 0.0) for e in events)
        out["gpu_busy_ms_per_step"] = round(device_time / 1e3 / n, 3)
    return out


def _on(device: str, batch: dict) -> dict:
    """A minibatch moved to ``device``, as Lightning does before a training step (scvi-tools' modules do not
    move their inputs while training)."""
    return {key: value.to(device) for key, value in batch.items()}


def section_gpovae_profile(args) -> dict:
    """Where a GPO-VAE step goes next to SCVI's, minibatches ready (loading apart)."""
    import gpovae as bench

    from pertgrn.models import GPOVAE
    from pertgrn.models._base import PairedAnnDataLoader
    from pertgrn.models._gpovae._trainingplan import GPOVAETrainingPlan

    adata = bench.simulator_screen() if args.small else bench.k562_screen(args.k562_cells)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    GPOVAE.setup_anndata(adata)
    model = GPOVAE(adata)
    model.module.to(device)
    loader = PairedAnnDataLoader(
        model.adata_manager, batch_size=128, shuffle=True, partner_columns=model._partner_columns()
    )
    batches = [_on(device, b) for _, b in zip(range(args.profile_steps + 2), loader, strict=False)]
    out = {"loading": bench.loading_profile(model, 128, 10)}
    plan = GPOVAETrainingPlan(model.module, n_particles=1, lr=1e-3, grn_lr=model.grn_lr)
    out["gpovae"] = _step_profile(plan, batches, args.profile_steps)
    print("gpovae", out["gpovae"], flush=True)
    cells = adata.copy()
    scvi.model.SCVI.setup_anndata(cells)
    reference = scvi.model.SCVI(cells)
    reference.module.to(device)
    scvi_loader = scvi.dataloaders.AnnDataLoader(reference.adata_manager, batch_size=128, shuffle=True)
    batches = [_on(device, b) for _, b in zip(range(args.profile_steps + 2), scvi_loader, strict=False)]
    out["scvi"] = _step_profile(scvi.train.TrainingPlan(reference.module), batches, args.profile_steps)
    print("scvi", out["scvi"], flush=True)
    return out


SECTIONS = {
    "gpovae_profile": section_gpovae_profile,
    "gpovae": section_gpovae,
    "raptorgraph": section_raptorgraph,
    "gcrl": section_gcrl,
    "ot": section_ot,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sections", nargs="+", choices=list(SECTIONS), default=[k for k in SECTIONS if k != "gpovae_profile"]
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    parser.add_argument("--k562-cells", type=int, default=20_000)
    parser.add_argument("--community-runs", type=int, default=10, help="Leiden runs of pp.tf_communities")
    parser.add_argument("--ate-conditions", type=int, default=200, help="conditions predicted by get_ate")
    parser.add_argument("--ate-cells", type=int, default=500, help="basal cells per condition in get_ate")
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1, help="CPU workers of the OT jobs")
    parser.add_argument("--profile-steps", type=int, default=10, help="steps timed by gpovae_profile")
    parser.add_argument("--small", action="store_true", help="toy sizes: a check of the script")
    args = parser.parse_args()
    pg.settings.progress_bar = False
    scvi.settings.verbosity = 40
    scvi.settings.seed = 0
    result: dict = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "small": args.small,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.sections:
        start = time.perf_counter()
        try:
            result[name] = SECTIONS[name](args)
        except Exception:  # keep the other sections' results; the traceback says what failed
            result[name] = {"error": traceback.format_exc()}
            print(result[name]["error"], flush=True)
        result[name]["section_s"] = round(time.perf_counter() - start, 1)
        print(f"== {name}: {result[name]['section_s']} s", flush=True)
        args.out.write_text(json.dumps(result, indent=2, default=float))
    sections = {k: v for k, v in result.items() if isinstance(v, dict)}
    ratios = {k: round(v["epoch_ratio_to_scvi"], 3) for k, v in sections.items() if "epoch_ratio_to_scvi" in v}
    print("epoch time / SCVI epoch time:", ratios)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

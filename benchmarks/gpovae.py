"""Training throughput of GPO-VAE against scvi-tools' SCVI on the same matrix, in one run; where a step's time goes.

Sizes (``--sizes``):

``simulator``
    ``pertgrn.datasets.simulate()`` at its defaults (1,680 cells × 200 genes; 135 GRN nodes), annotated
    by hand to the ``pp`` contracts (QC flags = the simulator's truth, extended genes = true
    ``|log2 FC| > 0.3``, each perturbed cell paired with 8 random controls): the ``pp`` chain is not
    what is timed.
``k562``
    A synthetic screen of the K562 shape of the GPO-VAE paper: 8,563 genes, 1,546 GRN nodes (1,000
    perturbed targets + 546 extended genes), ``--k562-cells`` cells (default 8,000; 10 % controls,
    5 % QC-failing), negative-binomial counts, 8 random control partners per perturbed cell.

Throughput: for every size, torch thread count (``--threads``, default 1 and 2) and round
(``--rounds``), SCVI (scvi-tools defaults, minibatches of 128), GPOVAE ``preset="pertgrn"`` (the
default: minibatches of 128, one particle) and GPOVAE ``preset="reference"`` (minibatches of 512,
5 particles) are trained through Lightning on the same matrix for a fixed number of steps
(``--steps-*``); a callback times every step (``training_step`` + backward + clipping + optimiser
step + Lightning's hooks) and every gap between steps (loading the next minibatch, the paired
loader's partner gathering). Seconds per step are the medians after ``--warmup`` steps; cells per
second = minibatch size / (step + gap); an epoch of ``n`` training cells takes ``n / (cells/s)``,
so the per-epoch ratio to SCVI is the ratio of cells per second. Wall and process-CPU time are
both recorded: the machine is shared, so ratios measured in the same run are what to compare.

Profile (one thread; ``--no-profile`` skips it): ``--profile-repeats`` minibatches of each preset
run directly (inference, generative, loss, backward, gradient clipping, Adam), each under its own
``torch.profiler`` session, the median over steps taken per component (the machine is shared: a
median resists the stalls that other jobs cause); forward time is
attributed to the innermost of the module's methods it ran in (the guide of ``M`` and ``E`` for
all particles, the basal encoder with the counterfactual encodings, the paired ``ΔX``, the
condition means, the GPO fit, the sparsity term, the decoder, the rest of the loss: likelihood and
KL terms) and backward time to the method whose forward operation it differentiates (matched by
autograd sequence number). Next to it: the loading of a minibatch split into scvi-tools' slicing
of the registered arrays and pertgrn's partner collate, the module step without the profiler, and
the Lightning step of the throughput run (process CPU time), whose difference is the Python
overhead per step; the same for SCVI.

K-hop (``--khop``): the bounded K-hop term timed (forward + backward) by row-vector iteration
(what the model does) and by full matrix powers.

Usage::

    nice python benchmarks/gpovae.py --out benchmarks/results/gpovae_speed.json
    nice python benchmarks/gpovae.py --sizes simulator --threads 1 --rounds 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

PRESET_BATCH = {"pertgrn": 128, "reference": 512}
PRESET_PARTICLES = {"pertgrn": 1, "reference": 5}
SCVI_BATCH = 128


# ------------------------------------------------------------------------------------------------
# screens
# ------------------------------------------------------------------------------------------------
def random_plan(is_control: np.ndarray, rng: np.random.Generator, n_partners: int = 8) -> sparse.csr_matrix:
    """Each perturbed cell paired with ``n_partners`` random controls, equal weights (rows sum to one)."""
    ctrl, pert = np.flatnonzero(is_control), np.flatnonzero(~is_control)
    rows = np.repeat(pert, n_partners)
    cols = rng.choice(ctrl, size=rows.size)
    n = is_control.size
    plan = sparse.csr_matrix((np.full(rows.size, 1.0 / n_partners), (rows, cols)), shape=(n, n))
    plan.sum_duplicates()
    return plan


def simulator_screen(seed: int = 0) -> AnnData:
    import pertgrn as pg

    adata = pg.datasets.simulate(seed=seed)
    pg.pp.annotate_perturbations(adata)
    adata.obs["pertgrn_qc_fail"] = adata.obs["true_qc_fail"].to_numpy()
    lfc = adata.uns["simulation"]["true_lfc"]
    de = (lfc.abs() > 0.3).any(axis=0).reindex(adata.var_names, fill_value=False).to_numpy()
    adata.var["pertgrn_extended"] = de & ~adata.var["pertgrn_perturbed"].to_numpy()
    is_control = (adata.obs["pertgrn_condition"] == adata.uns["pertgrn"]["control"]).to_numpy()
    adata.obsp["ot_pairing"] = random_plan(is_control, np.random.default_rng(seed))
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    return adata


def k562_screen(
    n_cells: int, n_genes: int = 8563, n_targets: int = 1000, n_extended: int = 546, seed: int = 0
) -> AnnData:
    """Synthetic screen of the K562 shape (see the module docstring)."""
    import pertgrn as pg

    rng = np.random.default_rng(seed)
    mean = rng.lognormal(0.0, 1.2, size=n_genes)
    mean = mean / mean.sum() * 8000.0
    blocks = []
    for start in range(0, n_cells, 2000):
        size = min(2000, n_cells - start)
        library = rng.lognormal(0.0, 0.3, size=(size, 1))
        counts = rng.negative_binomial(5, 5 / (5 + mean * library)).astype(np.float32)
        blocks.append(sparse.csr_matrix(counts))
    genes = np.array([f"G{i:04d}" for i in range(n_genes)])
    labels = np.where(rng.random(n_cells) < 0.1, "control", genes[rng.integers(0, n_targets, n_cells)])
    adata = AnnData(
        X=sparse.vstack(blocks).tocsr(),
        obs=pd.DataFrame({"perturbation": labels}, index=[f"cell{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=genes),
    )
    pg.pp.annotate_perturbations(adata, control="control")
    adata.obs["pertgrn_qc_fail"] = rng.random(n_cells) < 0.05
    extended = np.zeros(n_genes, dtype=bool)
    extended[n_targets : n_targets + n_extended] = True
    adata.var["pertgrn_extended"] = extended
    adata.obsp["ot_pairing"] = random_plan(labels == "control", rng)
    return adata


# ------------------------------------------------------------------------------------------------
# throughput through Lightning
# ------------------------------------------------------------------------------------------------
def step_timer():
    import lightning.pytorch as pl

    class StepTimer(pl.Callback):
        """Wall and process-CPU seconds of every training step and of every gap between steps."""

        def __init__(self):
            self.step_wall, self.step_cpu, self.gap_wall, self.gap_cpu = [], [], [], []
            self._end = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            wall, cpu = time.perf_counter(), time.process_time()
            if self._end is not None:
                self.gap_wall.append(wall - self._end[0])
                self.gap_cpu.append(cpu - self._end[1])
            self._start = (wall, cpu)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            wall, cpu = time.perf_counter(), time.process_time()
            self.step_wall.append(wall - self._start[0])
            self.step_cpu.append(cpu - self._start[1])
            self._end = (wall, cpu)

    return StepTimer()


def train_steps(model, n_steps: int, warmup: int, batch_size: int, **train_kwargs) -> dict:
    """Train ``n_steps`` minibatches through the model's ``train``; medians after ``warmup`` steps."""
    timer = step_timer()
    model.train(
        max_epochs=10_000,
        max_steps=n_steps,
        train_size=0.9,
        check_val_every_n_epoch=10_000,  # no validation inside the timed steps
        batch_size=batch_size,
        early_stopping=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        **train_kwargs,
    )
    step_wall = float(np.median(timer.step_wall[warmup:]))
    step_cpu = float(np.median(timer.step_cpu[warmup:]))
    gap_wall = float(np.median(timer.gap_wall[max(warmup - 1, 0) :]))
    gap_cpu = float(np.median(timer.gap_cpu[max(warmup - 1, 0) :]))
    return {
        "batch_size": batch_size,
        "n_steps_timed": len(timer.step_wall) - warmup,
        "step_wall_s": step_wall,
        "step_cpu_s": step_cpu,
        "gap_wall_s": gap_wall,
        "gap_cpu_s": gap_cpu,
        "cells_per_s_wall": batch_size / (step_wall + gap_wall),
        "cells_per_s_cpu": batch_size / (step_cpu + gap_cpu),
    }


def build_models(adata: AnnData) -> dict:
    import scvi

    from pertgrn.models import GPOVAE

    models = {}
    scvi_adata = adata.copy()
    scvi.model.SCVI.setup_anndata(scvi_adata)
    models["scvi"] = scvi.model.SCVI(scvi_adata)
    for preset in ("pertgrn", "reference"):
        GPOVAE.setup_anndata(adata)
        t0 = time.perf_counter()
        models[f"gpovae_{preset}"] = GPOVAE(adata, preset=preset)
        models[f"gpovae_{preset}_init_s"] = time.perf_counter() - t0
    return models


def throughput(models: dict, args, size: str) -> dict:
    steps = {
        "scvi": args.steps_scvi,
        "gpovae_pertgrn": args.steps_pertgrn,
        "gpovae_reference": args.steps_reference,
    }
    if size == "simulator":
        steps = {k: v * args.simulator_step_factor for k, v in steps.items()}
    runs: dict = defaultdict(lambda: defaultdict(list))
    for threads in args.threads:
        torch.set_num_threads(threads)
        for r in range(args.rounds):
            order = ["scvi", "gpovae_pertgrn", "gpovae_reference"]
            if r % 2:
                order = order[::-1]
            for name in order:
                if name == "scvi":
                    batch = SCVI_BATCH
                    kwargs = {}
                else:
                    preset = name.split("_", 1)[1]
                    batch = PRESET_BATCH[preset]
                    kwargs = {"n_particles": PRESET_PARTICLES[preset]}
                result = train_steps(models[name], steps[name] + args.warmup, args.warmup, batch, **kwargs)
                result["load_average"] = os.getloadavg()
                runs[threads][name].append(result)
                print(
                    f"  {size} threads={threads} round={r} {name}: {result['cells_per_s_wall']:.0f} cells/s wall, "
                    f"{result['cells_per_s_cpu']:.0f} cells/s CPU (step {result['step_wall_s'] * 1e3:.0f} ms, "
                    f"gap {result['gap_wall_s'] * 1e3:.1f} ms)",
                    flush=True,
                )
    out = {}
    for threads, per_model in runs.items():
        summary = {}
        for name, results in per_model.items():
            summary[name] = {
                "runs": results,
                "cells_per_s_wall": float(np.median([r["cells_per_s_wall"] for r in results])),
                "cells_per_s_cpu": float(np.median([r["cells_per_s_cpu"] for r in results])),
                "step_wall_s": float(np.median([r["step_wall_s"] for r in results])),
                "gap_wall_s": float(np.median([r["gap_wall_s"] for r in results])),
            }
        for preset in ("pertgrn", "reference"):
            name = f"gpovae_{preset}"
            # the slowdown per epoch: SCVI's cells/s over GPOVAE's, for each round, then the median
            ratios_wall = [
                s["cells_per_s_wall"] / g["cells_per_s_wall"]
                for s, g in zip(per_model["scvi"], per_model[name], strict=True)
            ]
            ratios_cpu = [
                s["cells_per_s_cpu"] / g["cells_per_s_cpu"]
                for s, g in zip(per_model["scvi"], per_model[name], strict=True)
            ]
            summary[f"{name}_epoch_time_over_scvi_wall"] = float(np.median(ratios_wall))
            summary[f"{name}_epoch_time_over_scvi_cpu"] = float(np.median(ratios_cpu))
        out[f"threads_{threads}"] = summary
    return out


# ------------------------------------------------------------------------------------------------
# per-component profile
# ------------------------------------------------------------------------------------------------
#: module methods whose forward time (and the backward of their operations) is attributed to a component
COMPONENTS = {
    "perturbation_latent": "guide: masks and embedding MLP, all particles",
    "basal_posterior": "basal encoder (z_b, counterfactual encodings): hidden layers and head",
    "_basal_head": "basal encoder after its first layer: hidden layers and head",
    "encoder_x": "basal encoder: counts projection (cells and counterfactual profiles)",
    "normalise_counts": "basal encoder: log-standardisation",
    "decode": "decoder MLP and softmax",
    "paired_delta": "GPO: paired ΔX from the partners",
    "condition_mean_delta": "GPO (signed): running condition means",
    "signed_fit_loss": "GPO fit (signed direct + paths)",
    "grn_fit_loss": "GPO fit (bounded K-hop)",
    "sparsity_loss": "sparsity term",
    "loss": "rest of the loss: likelihood and KL terms",
    "inference": "rest of inference",
    "generative": "rest of generative",
}


#: components grouped for the report (the first layer of the basal encoder moved into ``inference``)
GROUPS = {
    "guide (masks, embedding MLP; all particles)": ("perturbation_latent",),
    "basal encoder incl. counterfactual encodings": (
        "inference",
        "basal_posterior",
        "_basal_head",
        "encoder_x",
        "normalise_counts",
    ),
    "decoder": ("decode", "generative"),
    "likelihood and KL terms": ("loss",),
    "GPO fit (K-hop or signed paths), ΔX, sparsity": (
        "signed_fit_loss",
        "grn_fit_loss",
        "paired_delta",
        "condition_mean_delta",
        "sparsity_loss",
    ),
    "optimiser (clipping, Adam)": ("gradient clipping", "Adam step"),
    "unattributed backward": ("unlabelled",),
}


def grouped(components: dict) -> dict[str, float]:
    """Seconds (forward + backward) of each group of :data:`GROUPS`."""
    return {
        group: sum(components[k]["forward_s"] + components[k]["backward_s"] for k in labels if k in components)
        for group, labels in GROUPS.items()
    }


def _wrap(target, name: str):
    from torch.profiler import record_function

    def wrapped(*a, **k):
        with record_function(f"component::{name}"):
            return target(*a, **k)

    return wrapped


def attribute(prof) -> dict[str, float]:
    """Seconds per component: forward by innermost enclosing label, backward by autograd sequence number."""
    events = prof.events()
    label_of_seq: dict[int, str] = {}
    forward = defaultdict(float)
    backward = defaultdict(float)
    other = defaultdict(float)

    def innermost(event) -> str | None:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("component::"):
                return parent.name.split("::", 1)[1]
            parent = parent.cpu_parent
        return None

    for event in events:
        if event.name.startswith("component::"):
            nested = sum(c.cpu_time_total for c in _descendant_labels(event))
            forward[event.name.split("::", 1)[1]] += (event.cpu_time_total - nested) / 1e6
        elif event.sequence_nr >= 0 and not event.name.startswith("autograd::"):
            label = innermost(event)
            if label is not None:
                label_of_seq.setdefault(event.sequence_nr, label)
    for event in events:
        if event.name.startswith("autograd::engine::evaluate_function:") and event.cpu_parent is None:
            label = label_of_seq.get(event.sequence_nr, "unlabelled")
            backward[label] += event.cpu_time_total / 1e6
        elif event.name.startswith("step::") and event.cpu_parent is None:
            other[event.name.split("::", 1)[1]] += event.cpu_time_total / 1e6
    out = {}
    for label in sorted(set(forward) | set(backward)):
        out[label] = {"forward_s": forward.get(label, 0.0), "backward_s": backward.get(label, 0.0)}
    for label, seconds in other.items():
        out[label] = {"forward_s": seconds, "backward_s": 0.0}
    return out


def _descendant_labels(event):
    """Directly nested ``component::`` ranges of ``event`` (not those inside them)."""
    found = []
    stack = list(event.cpu_children)
    while stack:
        child = stack.pop()
        if child.name.startswith("component::"):
            found.append(child)
        else:
            stack.extend(child.cpu_children)
    return found


def loading_profile(model, batch_size: int, repeats: int) -> dict:
    """Seconds per minibatch: scvi-tools' slicing of the registered arrays, then pertgrn's partner collate."""
    from pertgrn.models._base import PairedAnnDataLoader

    loader = PairedAnnDataLoader(
        model.adata_manager, batch_size=batch_size, shuffle=True, partner_columns=model._partner_columns()
    )
    rng = np.random.default_rng(0)
    slicing, collate = [], []
    for _ in range(repeats + 1):
        indices = np.sort(rng.choice(len(loader.dataset), size=batch_size, replace=False))
        t0 = time.perf_counter()
        sample = loader.dataset[indices]
        t1 = time.perf_counter()
        loader.collate_fn(sample)
        t2 = time.perf_counter()
        slicing.append(t1 - t0)
        collate.append(t2 - t1)
    return {"slicing_s": float(np.median(slicing[1:])), "partner_collate_s": float(np.median(collate[1:]))}


def module_profile(model, preset: str, repeats: int) -> dict:
    """Profile of the module's training step on real minibatches (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from pertgrn.models._base import PairedAnnDataLoader
    from pertgrn.models._gpovae._trainingplan import GPOVAETrainingPlan

    batch_size, n_particles = PRESET_BATCH[preset], PRESET_PARTICLES[preset]
    module = model.module
    module.train()
    loader = PairedAnnDataLoader(
        model.adata_manager, batch_size=batch_size, shuffle=True, partner_columns=model._partner_columns()
    )
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == repeats + 1:
            break
    plan = GPOVAETrainingPlan(module, n_particles=n_particles, lr=1e-3, grn_lr=model.grn_lr)
    optimizer = plan.configure_optimizers()["optimizer"]

    def step(batch) -> None:
        optimizer.zero_grad()
        _, _, loss = plan.forward(batch)
        loss.loss.backward()
        with record_function("step::gradient clipping"):
            torch.nn.utils.clip_grad_norm_(module.parameters(), 100.0)
        with record_function("step::Adam step"):
            optimizer.step()

    step(batches[0])
    times, cpu_times = [], []
    for batch in batches[1:]:
        t0, c0 = time.perf_counter(), time.process_time()
        step(batch)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    wrapped = []
    for name in COMPONENTS:
        target = getattr(module, name, None)
        if isinstance(target, torch.nn.Module):  # a submodule: wrap its forward
            target.forward = _wrap(target.forward, name)
            wrapped.append((target, "forward"))
        elif target is not None:
            setattr(module, name, _wrap(target, name))
            wrapped.append((module, name))
    per_step = []
    try:
        for batch in batches[1:]:  # one profile per step: medians over steps resist the shared machine's stalls
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(batch)
            per_step.append(attribute(prof))
    finally:
        for owner, name in wrapped:
            delattr(owner, name)
    labels = sorted({label for step_result in per_step for label in step_result})
    components = {}
    for label in labels:
        entry = {"what": COMPONENTS.get(label, label)}
        for part in ("forward_s", "backward_s"):
            entry[part] = float(np.median([r.get(label, {}).get(part, 0.0) for r in per_step]))
        components[label] = entry
    total = sum(v["forward_s"] + v["backward_s"] for v in components.values())
    for entry in components.values():
        entry["share"] = (entry["forward_s"] + entry["backward_s"]) / total if total > 0 else 0.0
    return {
        "groups_s": grouped(components),
        "batch_size": batch_size,
        "n_particles": n_particles,
        "module_step_s": float(np.median(times)),
        "module_step_cpu_s": float(np.median(cpu_times)),
        "profiled_step_s": total,
        "components": components,
    }


def scvi_module_step(model, repeats: int) -> float:
    """Seconds of one SCVI module step (forward, backward, Adam) on minibatches of 128, for scale."""
    loader = model._make_data_loader(adata=model.adata, batch_size=SCVI_BATCH, shuffle=True)
    module = model.module
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3, eps=0.01, weight_decay=1e-6)
    times = []
    for i, batch in enumerate(loader):
        t0 = time.process_time()
        optimizer.zero_grad()
        _, _, loss = module(batch)
        loss.loss.backward()
        optimizer.step()
        times.append(time.process_time() - t0)
        if i == repeats:
            break
    return float(np.median(times[1:]))


# ------------------------------------------------------------------------------------------------
# K-hop
# ------------------------------------------------------------------------------------------------
def time_khop(n_nodes: int, n_targets: int, batch_size: int, n_hops: int, repeats: int) -> dict:
    from pertgrn.models._gpovae._module import khop_scores, khop_scores_dense

    torch.manual_seed(0)
    logits = (0.1 * torch.randn(n_nodes, n_nodes)).requires_grad_(True)
    rng = np.random.default_rng(1)
    rows = torch.as_tensor(np.unique(rng.integers(0, n_targets, size=batch_size)))
    target = torch.randn(len(rows), n_nodes)

    def rows_version() -> None:
        (khop_scores(logits, rows, n_hops) - target).abs().mean().backward()

    def dense_version() -> None:
        (khop_scores_dense(logits, n_hops)[rows] - target).abs().mean().backward()

    out = {"n_nodes": n_nodes, "n_rows": len(rows), "n_hops": n_hops}
    for name, fn in (("row_iteration", rows_version), ("matrix_powers", dense_version)):
        fn()
        times = []
        for _ in range(repeats):
            logits.grad = None
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[f"{name}_seconds"] = float(np.median(times))
    out["speedup"] = out["matrix_powers_seconds"] / out["row_iteration_seconds"]
    return out


# ------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=["simulator", "k562"], default=["simulator", "k562"])
    parser.add_argument("--k562-cells", type=int, default=8000)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps-scvi", type=int, default=12, help="timed SCVI steps at the K562 size")
    parser.add_argument("--steps-pertgrn", type=int, default=6, help="timed GPOVAE 'pertgrn' steps (K562 size)")
    parser.add_argument("--steps-reference", type=int, default=3, help="timed GPOVAE 'reference' steps (K562)")
    parser.add_argument("--simulator-step-factor", type=int, default=4, help="more steps at the simulator size")
    parser.add_argument("--profile-repeats", type=int, default=5, help="profiled steps (medians per component)")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--no-throughput", dest="throughput", action="store_false")
    parser.add_argument("--khop", action="store_true", help="also time the K-hop term alone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/gpovae_speed.json")
    args = parser.parse_args()

    import lightning
    import scvi

    import pertgrn

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "scvi"):
        import logging

        logging.getLogger(name).setLevel(logging.ERROR)
    scvi.settings.seed = args.seed
    result = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average_start": os.getloadavg(),
            "torch": torch.__version__,
            "scvi_tools": scvi.__version__,
            "lightning": lightning.__version__,
            "pertgrn": pertgrn.__file__,
        },
        "params": vars(args),
        "sizes": {},
    }
    for size in args.sizes:
        t0 = time.perf_counter()
        adata = simulator_screen(args.seed) if size == "simulator" else k562_screen(args.k562_cells, seed=args.seed)
        entry: dict = {"shape": list(adata.shape), "build_s": time.perf_counter() - t0}
        print(f"{size}: {adata.n_obs} cells × {adata.n_vars} genes", flush=True)
        models = build_models(adata)
        entry["n_nodes"] = len(models["gpovae_pertgrn"].nodes)
        entry["init_s"] = {p: models.pop(f"gpovae_{p}_init_s") for p in ("pertgrn", "reference")}
        entry["n_parameters"] = {k: int(sum(p.numel() for p in m.module.parameters())) for k, m in models.items()}
        if args.profile:
            torch.set_num_threads(1)
            entry["profile"] = {"scvi_module_step_cpu_s": scvi_module_step(models["scvi"], args.profile_repeats + 2)}
            for preset in ("pertgrn", "reference"):
                model = models[f"gpovae_{preset}"]
                profile_entry = module_profile(model, preset, args.profile_repeats)
                profile_entry["loading"] = loading_profile(model, PRESET_BATCH[preset], args.profile_repeats + 2)
                entry["profile"][preset] = profile_entry
                print(
                    f"  profile {preset}: module step {profile_entry['module_step_cpu_s'] * 1e3:.0f} ms CPU, "
                    f"loading {profile_entry['loading']}",
                    flush=True,
                )
                for label, value in sorted(
                    profile_entry["components"].items(), key=lambda kv: -(kv[1]["forward_s"] + kv[1]["backward_s"])
                ):
                    forward, backward = value["forward_s"] * 1e3, value["backward_s"] * 1e3
                    print(f"    {label:22s} fwd {forward:8.1f} ms  bwd {backward:8.1f} ms", flush=True)
        if args.throughput:
            entry["throughput"] = throughput(models, args, size)
            for key, summary in entry["throughput"].items():
                for preset in ("pertgrn", "reference"):
                    print(
                        f"  {size} {key} {preset}: epoch time / SCVI's = "
                        f"{summary[f'gpovae_{preset}_epoch_time_over_scvi_wall']:.2f} (wall), "
                        f"{summary[f'gpovae_{preset}_epoch_time_over_scvi_cpu']:.2f} (CPU)",
                        flush=True,
                    )
            if args.profile:
                runs = entry["throughput"]["threads_1"]["scvi"]["runs"]
                scvi_step = float(np.median([r["step_cpu_s"] for r in runs]))
                entry["profile"]["scvi_lightning_step_cpu_s"] = scvi_step
                entry["profile"]["scvi_python_overhead_per_step_cpu_s"] = (
                    scvi_step - entry["profile"]["scvi_module_step_cpu_s"]
                )
                for preset in ("pertgrn", "reference"):
                    runs = entry["throughput"]["threads_1"][f"gpovae_{preset}"]["runs"]
                    lightning_step = float(np.median([r["step_cpu_s"] for r in runs]))
                    entry["profile"][preset]["lightning_step_cpu_s"] = lightning_step
                    entry["profile"][preset]["lightning_gap_cpu_s"] = float(np.median([r["gap_cpu_s"] for r in runs]))
                    entry["profile"][preset]["python_overhead_per_step_cpu_s"] = (
                        lightning_step - entry["profile"][preset]["module_step_cpu_s"]
                    )
        if args.khop and size == "k562":
            torch.set_num_threads(1)
            entry["khop"] = time_khop(entry["n_nodes"], 1000, PRESET_BATCH["reference"], 5, 3)
        entry["load_average_end"] = os.getloadavg()
        result["sizes"][size] = entry
        del models, adata
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

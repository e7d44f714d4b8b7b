"""Speed and memory of RAPTORGraph training next to scvi-tools' SCVI on the same matrix, in the same run.

Three shapes:

- ``simulator``: ``pertgrn.datasets.simulate()`` at its defaults (1,680 cells × 200 genes, 12
  single targets and 4 doubles, held out), real ``pp.ot_pairing``.

- ``norman_scale`` (synthetic, defaults): 100,000 cells × 5,000 genes, 105 single targets and 131
  doubles (held out, as in the paper's split), 8,907 controls, so 109 = 105 + 4 latents. Counts
  are sparse negative-binomial draws (about 10 % non-zero); every perturbed cell gets one random
  control as its "OT" partner through a one-entry-per-row plan in ``obsp["ot_pairing"]``, so the
  paired loader and the partner field are exercised as in a real run (the EMD itself is timed
  by ``benchmarks/ot_pairing.py``).
- ``norman_subset``: the Norman et al. 2019 cells of ``../shared/data`` (3,375 cells × 500
  genes, 31 targets, 1 measured), real ``pp.ot_pairing``, doubles held out.

For each shape both models train through their ``train`` method (Lightning) for ``--steps``
minibatches of ``--batch-size`` cells after ``--warmup`` untimed ones (over several epochs where
one epoch has fewer steps), validation off; a step's time is forward, backward and optimiser,
not the fetch of its batch. Seconds per epoch are the mean seconds per timed step times the
steps of one epoch: RAPTORGraph's condition batches of the training split (90 % of the non-held-out
cells), SCVI's ``ceil(0.9 · n_train / batch_size)`` on the same training cells. SCVI uses
scvi-tools' defaults (``n_latent=10``, one hidden layer of 128, negative binomial). Memory: the
peak resident set during training minus the resident set before it (psutil, every 10 ms), and
on a GPU ``torch.cuda.max_memory_allocated``.

Usage::

    python benchmarks/raptorgraph.py --out benchmarks/results/raptorgraph_speed.json
    python benchmarks/raptorgraph.py --shapes norman_subset --steps 20
    python benchmarks/raptorgraph.py --shapes simulator --steps 40 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import threading
import time
from pathlib import Path

import anndata as ad
import lightning.pytorch as lp
import numpy as np
import pandas as pd
import psutil
import scvi
import torch
from scipy import sparse

import pertgrn as pg
from pertgrn.models import RaptorGraph
from pertgrn.models._base import ConditionBatchSampler

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class PeakRSS:
    """Sample the resident set size in a thread; ``peak`` is the maximum seen."""

    def __init__(self, interval: float = 0.01):
        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class StepTimer(lp.Callback):
    """Wall time of every training step (batch fetch excluded, forward + backward + optimiser included)."""

    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


#: the synthetic Norman-scale screen's shape (the defaults of the ``--n-cells`` … ``--density`` options)
NORMAN_SCALE = {
    "n_cells": 100_000,
    "n_genes": 5_000,
    "n_targets": 105,
    "n_doubles": 131,
    "n_control": 8_907,
    "n_measured_targets": 105,
    "density": 0.1,
}


def synthetic_norman(args: argparse.Namespace) -> ad.AnnData:
    """A Norman-scale screen: controls, singles, held-out doubles, sparse NB counts, a one-partner plan."""
    rng = np.random.default_rng(0)
    targets = [f"T{i:03d}" for i in range(args.n_targets)]
    n_doubles = args.n_doubles
    pairs = set()
    while len(pairs) < n_doubles:
        a, b = sorted(rng.choice(args.n_targets, size=2, replace=False))
        pairs.add((targets[a], targets[b]))
    doubles = sorted(f"{a}+{b}" for a, b in pairs)
    n_perturbed = args.n_cells - args.n_control
    n_single = int(round(n_perturbed * 0.6))
    labels = np.concatenate(
        [
            np.full(args.n_control, "control", dtype=object),
            np.asarray(targets, dtype=object)[rng.integers(0, args.n_targets, size=n_single)],
            np.asarray(doubles, dtype=object)[rng.integers(0, n_doubles, size=n_perturbed - n_single)],
        ]
    )
    # sparse negative-binomial counts: each cell expresses each gene with probability `density` (~10 %)
    n_genes = args.n_genes
    mean = rng.lognormal(0.0, 1.0, size=n_genes)
    per_cell, blocks = [], []
    for start in range(0, args.n_cells, 10_000):  # blocks keep the temporary arrays small
        expressed = rng.random((min(start + 10_000, args.n_cells) - start, n_genes)) < args.density
        per_cell.append(expressed.sum(axis=1))
        blocks.append(np.nonzero(expressed)[1].astype(np.int32))  # row-major: sorted columns per cell
    indptr = np.r_[0, np.cumsum(np.concatenate(per_cell))].astype(np.int64)
    indices = np.concatenate(blocks)
    data = (rng.negative_binomial(5, 5 / (5 + mean[indices] * 3.0)) + 1).astype(np.float32)
    counts = sparse.csr_matrix((data, indices, indptr), shape=(args.n_cells, n_genes))
    genes = targets[: args.n_measured_targets] + [f"G{i:05d}" for i in range(n_genes - args.n_measured_targets)]
    adata = ad.AnnData(
        counts,
        obs=pd.DataFrame({"perturbation": pd.Categorical(labels)}, index=[f"c{i}" for i in range(args.n_cells)]),
        var=pd.DataFrame(index=genes),
    )
    pg.pp.annotate_perturbations(adata, perturbation_key="perturbation", control="control")
    adata.obs["test"] = (adata.obs["pertgrn_n_targets"] > 1).to_numpy()
    control = np.flatnonzero(labels == "control")
    perturbed = np.flatnonzero(labels != "control")
    partner = control[rng.integers(0, control.size, size=perturbed.size)]
    adata.obsp["ot_pairing"] = sparse.csr_matrix(
        (np.ones(perturbed.size), (perturbed, partner)), shape=(args.n_cells, args.n_cells)
    )
    return adata


def simulator() -> ad.AnnData:
    adata = pg.datasets.simulate(seed=0)
    pg.pp.annotate_perturbations(adata, control="control")
    adata.obs["test"] = (adata.obs["pertgrn_n_targets"] > 1).to_numpy()
    pg.pp.ot_pairing(adata)
    return adata


def norman_subset() -> ad.AnnData:
    adata = ad.read_h5ad(SHARED_DATA / "norman2019_perturbench_devel.h5ad")
    adata = adata[adata.obs["dataset"] == "norman19"].copy()
    adata.X = adata.layers["counts"].copy()
    del adata.layers
    pg.pp.annotate_perturbations(adata, perturbation_key="condition", control="control")
    adata.obs["test"] = (adata.obs["pertgrn_n_targets"] > 1).to_numpy()
    pg.pp.ot_pairing(adata)
    return adata


def trainer_kwargs(n_steps: int, timer: StepTimer) -> dict:
    return {
        "enable_progress_bar": False,
        "max_steps": n_steps,  # over as many epochs as it takes (small screens have few steps per epoch)
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "callbacks": [timer],
        "logger": False,
        "enable_checkpointing": False,
    }


def measure(fit, n_steps: int, warmup: int) -> dict:
    timer = StepTimer()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        start = time.perf_counter()
        fit(trainer_kwargs(n_steps + warmup, timer))
        wall = time.perf_counter() - start
    timed = timer.times[warmup:]
    out = {
        "timed_steps": len(timed),
        "seconds_per_step": float(np.mean(timed)) if timed else math.nan,
        "seconds_per_step_median": float(np.median(timed)) if timed else math.nan,
        "train_call_seconds": wall,
        "peak_rss_increase_mib": (rss.peak - rss.start) / 2**20,
        "peak_rss_mib": rss.peak / 2**20,
    }
    if torch.cuda.is_available():
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def raptorgraph_steps_per_epoch(adata: ad.AnnData, batch_size: int) -> int:
    """Condition batches of one epoch on 90 % of the training (non-held-out) perturbed cells."""
    conditions = adata.obs["pertgrn_condition"].astype(str)
    train = ~adata.obs["test"].to_numpy() & (conditions != "control").to_numpy()
    codes = pd.Categorical(conditions[train]).codes.astype(np.int64)
    keep = np.random.default_rng(0).random(codes.size) < 0.9
    return len(ConditionBatchSampler(codes[keep], batch_size, shuffle=False))


def run_shape(name: str, adata: ad.AnnData, args: argparse.Namespace) -> dict:
    scvi.settings.seed = 0
    result = {"shape": name, "n_cells": adata.n_obs, "n_genes": adata.n_vars}
    design = adata.uns["pertgrn"]
    result["n_targets"] = len(design["targets"])
    n_train = int((~adata.obs["test"]).sum())
    result["n_training_cells"] = n_train

    rg_steps = raptorgraph_steps_per_epoch(adata, args.batch_size)
    scvi_steps = math.ceil(0.9 * n_train / args.batch_size)

    def epochs_for(steps_per_epoch: int) -> int:
        return math.ceil((args.steps + args.warmup) / steps_per_epoch)

    RaptorGraph.setup_anndata(adata, test_key="test")
    model = RaptorGraph(adata)
    result["raptorgraph"] = {
        "n_latent": model.module.n_latent,
        "n_parameters": int(sum(p.numel() for p in model.module.parameters())),
        "steps_per_epoch": rg_steps,
        **measure(
            lambda kw: model.train(max_epochs=epochs_for(rg_steps), batch_size=args.batch_size, **kw),
            args.steps,
            args.warmup,
        ),
    }
    result["raptorgraph"]["seconds_per_epoch"] = (
        result["raptorgraph"]["seconds_per_step"] * result["raptorgraph"]["steps_per_epoch"]
    )

    train_cells = adata[~adata.obs["test"].to_numpy()].copy()
    scvi.model.SCVI.setup_anndata(train_cells)
    reference = scvi.model.SCVI(train_cells)
    result["scvi"] = {
        "n_latent": reference.module.n_latent,
        "n_parameters": int(sum(p.numel() for p in reference.module.parameters())),
        "steps_per_epoch": scvi_steps,
        **measure(
            lambda kw: reference.train(max_epochs=epochs_for(scvi_steps), batch_size=args.batch_size, **kw),
            args.steps,
            args.warmup,
        ),
    }
    result["scvi"]["seconds_per_epoch"] = result["scvi"]["seconds_per_step"] * result["scvi"]["steps_per_epoch"]
    result["ratio_seconds_per_step"] = result["raptorgraph"]["seconds_per_step"] / result["scvi"]["seconds_per_step"]
    result["ratio_seconds_per_epoch"] = result["raptorgraph"]["seconds_per_epoch"] / result["scvi"]["seconds_per_epoch"]
    result["raptorgraph"]["seconds_per_100_epochs"] = 100 * result["raptorgraph"]["seconds_per_epoch"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=["simulator", "norman_scale", "norman_subset"],
        default=["simulator", "norman_scale", "norman_subset"],
    )
    for name, default in NORMAN_SCALE.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/raptorgraph_speed.json"))
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "shapes": [],
    }
    for shape in args.shapes:
        if shape == "simulator":
            adata = simulator()
        elif shape == "norman_scale":
            start = time.perf_counter()
            adata = synthetic_norman(args)
            result["synthetic_build_seconds"] = time.perf_counter() - start
        else:
            if not (SHARED_DATA / "norman2019_perturbench_devel.h5ad").exists():
                result["shapes"].append({"shape": shape, "skipped": f"{SHARED_DATA} is absent"})
                continue
            adata = norman_subset()
        result["shapes"].append(run_shape(shape, adata, args))
        del adata
        print(json.dumps(result["shapes"][-1], indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

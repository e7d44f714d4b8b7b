"""Fitting a model from a backed ``.h5ad`` (X on disk) against the in-memory path: peak memory and time.

A synthetic sparse screen of ``--n-cells`` cells (default 1,000,000) × ``--n-genes`` genes (default
1,000) is written to ``--path`` in chunks, so that it never exists in memory whole:
negative-binomial counts with about ``--counts-per-cell`` UMIs per cell (default 300: 18 % of
entries non-zero), ``--n-targets`` perturbed targets (singles), 10 % control cells, 5 % QC-failing
cells, ``--n-extended`` extended genes, and an OT plan in ``obsp`` pairing each perturbed cell with
8 random controls (the plan of ``pp.ot_pairing`` would be computed on the same cells; its solver is
benchmarked in ``benchmarks/ot_pairing.py``).

Each path then runs in a fresh process (so that its peak resident memory is its own), for
``--model`` GPO-VAE (default; minibatches of ``--batch-size`` cells) or RAPTORGraph (minibatches of
one condition, up to ``--batch-size`` cells, each with its heaviest OT partner):

``in_memory``
    ``anndata.read_h5ad(path)`` (X loaded as a CSR matrix), ``setup_anndata``, the model,
    ``--steps`` training steps.
``backed``
    ``anndata.read_h5ad(path, backed="r")`` (X stays on disk), then the same. The set-up
    statistics read X in chunks of rows, the paired loader reads the partner pool once, and
    minibatches read their rows from disk (scvi-tools' ``AnnTorchDataset`` supports backed X).

Reported per path: peak resident memory (``ru_maxrss``) and the resident memory after each phase
(read, set-up, model, training), the wall time of each phase and seconds per training step;
``memory_ratio`` = in-memory peak / backed peak. ``--n-cells`` may be given several values to
see how each path's peak grows with the screen.

Usage::

    nice python benchmarks/backed.py --out benchmarks/results/backed.json
    nice python benchmarks/backed.py --n-cells 100000 250000 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


# ------------------------------------------------------------------------------------------------
# writing the screen in chunks
# ------------------------------------------------------------------------------------------------
def write_screen(path: Path, args) -> dict:
    import anndata
    import h5py
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem
    from scipy import sparse

    import pertgrn as pg

    rng = np.random.default_rng(args.seed)
    n, g = args.n_cells, args.n_genes
    genes = np.array([f"G{i:05d}" for i in range(g)])
    labels = np.where(rng.random(n) < 0.1, "control", genes[rng.integers(0, args.n_targets, n)])
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels)}, index=pd.RangeIndex(n).astype(str))
    skeleton = anndata.AnnData(obs=obs, var=pd.DataFrame(index=genes))
    pg.pp.annotate_perturbations(skeleton, control="control")
    skeleton.obs["pertgrn_qc_fail"] = rng.random(n) < 0.05
    extended = np.zeros(g, dtype=bool)
    extended[args.n_targets : args.n_targets + args.n_extended] = True
    skeleton.var["pertgrn_extended"] = extended
    ctrl = np.flatnonzero(labels == "control")
    pert = np.flatnonzero(labels != "control")
    rows = np.repeat(pert, 8)
    plan = sparse.csr_matrix(
        (np.full(rows.size, 1 / 8, dtype=np.float32), (rows, rng.choice(ctrl, size=rows.size))), shape=(n, n)
    )
    plan.sum_duplicates()
    skeleton.obsp["ot_pairing"] = plan
    skeleton.X = sparse.csr_matrix((n, g), dtype=np.float32)
    skeleton.write_h5ad(path)
    del skeleton, plan

    mean = rng.lognormal(0.0, 1.5, size=g)
    mean = mean / mean.sum() * args.counts_per_cell
    nnz = 0
    with h5py.File(path, "a") as f:
        del f["X"]
        for start in range(0, n, args.chunk):
            size = min(args.chunk, n - start)
            library = rng.lognormal(0.0, 0.3, size=(size, 1))
            counts = rng.negative_binomial(5, 5 / (5 + mean * library)).astype(np.float32)
            block = sparse.csr_matrix(counts)
            nnz += block.nnz
            if start == 0:
                write_elem(f, "X", block)
            else:
                sparse_dataset(f["X"]).append(block)
    return {
        "n_cells": n,
        "n_genes": g,
        "nnz": int(nnz),
        "density": nnz / (n * g),
        "file_mib": path.stat().st_size / 2**20,
    }


# ------------------------------------------------------------------------------------------------
# one path, in its own process
# ------------------------------------------------------------------------------------------------
def run_path(path: str, mode: str, steps: int, batch_size: int, model_name: str = "gpovae") -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    import anndata
    import scvi
    import torch

    from pertgrn.models import GPOVAE, RaptorGraph

    model_cls = {"gpovae": GPOVAE, "raptorgraph": RaptorGraph}[model_name]
    for name in ("lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(1)
    scvi.settings.seed = 0
    out = {"model": model_name, "mode": mode, "rss_start_mib": rss_mib()}
    t0 = time.perf_counter()
    adata = anndata.read_h5ad(path, backed="r" if mode == "backed" else None)
    out["read_s"], out["rss_after_read_mib"] = time.perf_counter() - t0, rss_mib()
    out["x_type"] = type(adata.X).__name__
    t0 = time.perf_counter()
    model_cls.setup_anndata(adata)
    out["setup_s"], out["rss_after_setup_mib"] = time.perf_counter() - t0, rss_mib()
    t0 = time.perf_counter()
    model = model_cls(adata)
    out["model_s"], out["rss_after_model_mib"] = time.perf_counter() - t0, rss_mib()
    t0 = time.perf_counter()
    model.train(
        max_epochs=1,
        max_steps=steps,
        batch_size=batch_size,
        train_size=0.9,
        check_val_every_n_epoch=10_000,
        early_stopping=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    out["train_s"], out["rss_after_train_mib"] = time.perf_counter() - t0, rss_mib()
    out["seconds_per_step"] = out["train_s"] / steps
    out["peak_rss_mib"] = peak_mib()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--n-genes", type=int, default=1000)
    parser.add_argument("--n-targets", type=int, default=200)
    parser.add_argument("--n-extended", type=int, default=100)
    parser.add_argument("--counts-per-cell", type=float, default=300.0)
    parser.add_argument("--chunk", type=int, default=50_000)
    parser.add_argument("--model", choices=["gpovae", "raptorgraph"], default="gpovae")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--path", default="benchmarks/results/backed_screen_{n}.h5ad")
    parser.add_argument("--keep", action="store_true", help="keep the written .h5ad files")
    parser.add_argument("--run", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/backed.json")
    args = parser.parse_args()
    if args.run:  # a child process: one path
        print(json.dumps(run_path(args.run[0], args.run[1], args.steps, args.batch_size, args.model)))
        return

    result = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg()},
        "params": vars(args),
        "screens": [],
    }
    for n in args.n_cells:
        path = Path(args.path.format(n=n))
        path.parent.mkdir(parents=True, exist_ok=True)
        args.n_cells = n
        t0 = time.perf_counter()
        screen = write_screen(path, args)
        screen["write_s"] = time.perf_counter() - t0
        print(f"wrote {path}: {screen}", flush=True)
        entry = {"screen": screen}
        for mode in ("backed", "in_memory"):
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--run",
                    str(path),
                    mode,
                    "--steps",
                    str(args.steps),
                    "--batch-size",
                    str(args.batch_size),
                    "--model",
                    args.model,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if child.returncode != 0:
                entry[mode] = {"error": child.stderr[-3000:]}
            else:
                entry[mode] = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"  {mode}: {entry[mode]}", flush=True)
        if "peak_rss_mib" in entry["backed"] and "peak_rss_mib" in entry["in_memory"]:
            entry["memory_ratio_in_memory_over_backed"] = (
                entry["in_memory"]["peak_rss_mib"] / entry["backed"]["peak_rss_mib"]
            )
            entry["step_time_ratio_backed_over_in_memory"] = (
                entry["backed"]["seconds_per_step"] / entry["in_memory"]["seconds_per_step"]
            )
        result["screens"].append(entry)
        if not args.keep:
            path.unlink()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

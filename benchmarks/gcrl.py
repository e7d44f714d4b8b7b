"""Speed of the gCRL chain at the paper's scale: reference GRN, communities, activities, gCRL-AE and gCRL-VAE.

A simulated screen (``pertgrn.datasets.simulate`` with planted regulator modules) of about the Joung
et al. shape the paper reports: 150 regulators (TFs) in 8 modules, 1,716 genes (1,700 GRN genes and
16 QC genes), 10,000 control cells and 39 single perturbations of 640 cells, plus 4 doubles of 100
(≈ 35,400 cells). It records wall times of

- ``pp.reference_grn`` (on the 10,000 controls), ``pp.tf_communities`` (default ``n_runs=100``)
  and ``pp.tf_activity``;
- training: seconds per epoch of ``GCRLAE`` (batch 1,024; controls and singles), ``GCRLVAE``
  (``variant="gcrl"``, batch 32 of one condition with random training controls) and ``d``
  variant, and of scvi-tools' ``SCVI`` (its defaults, batch 128) on the same count matrix in the
  same process, with the ratios to SCVI. Each model trains ``--epochs`` epochs after one warm-up
  epoch (not timed), so the first-epoch set-up costs do not count.

Usage::

    OMP_WAIT_POLICY=PASSIVE nice python benchmarks/gcrl.py --out benchmarks/results/gcrl.json
    # the simulator's default size (1,680 cells x 200 genes), one torch thread
    OMP_WAIT_POLICY=PASSIVE nice python benchmarks/gcrl.py --n-genes 200 --n-regulators 20 --n-modules 4 \
        --n-control 400 --n-perturbed 12 --cells-per-condition 80 --n-doubles 4 --epochs 20 --threads 1 \
        --out benchmarks/results/gcrl_simulator_t1.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scvi
import torch

import pertgrn as pg
from pertgrn.models import GCRLAE, GCRLVAE


def _seconds(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def _per_epoch(train, epochs: int) -> dict:
    """Seconds per epoch of ``train(max_epochs=epochs)`` after a one-epoch warm-up of a fresh model."""
    train(1)  # warm-up (data loaders, first allocations), not timed
    seconds = _seconds(train, epochs)
    return {"seconds": seconds, "epochs": epochs, "seconds_per_epoch": seconds / epochs}


def paper_screen(*, n_doubles: int, seed: int = 0, **sizes) -> ad.AnnData:
    """``datasets.simulate(**sizes)``, doubles cut to 100 cells each, annotated, doubles held out (``test``)."""
    adata = pg.datasets.simulate(n_doubles=n_doubles, n_unmeasured_targets=0, seed=seed, **sizes)
    # doubles get 100 cells: resample the simulator's equal condition sizes down
    doubles = np.flatnonzero(adata.obs["perturbation"].astype(str).str.contains(r"\+").to_numpy())
    rng = np.random.default_rng(seed)
    drop = rng.choice(doubles, size=max(doubles.size - 100 * n_doubles, 0), replace=False)
    adata = adata[np.setdiff1d(np.arange(adata.n_obs), drop)].copy()
    pg.pp.annotate_perturbations(adata, control="control")
    adata.obs["test"] = (adata.obs["pertgrn_n_targets"] > 1).to_numpy()
    return adata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gcrl.json"))
    parser.add_argument("--n-genes", type=int, default=1716)
    parser.add_argument("--n-regulators", type=int, default=150)
    parser.add_argument("--n-modules", type=int, default=8)
    parser.add_argument("--n-control", type=int, default=10_000)
    parser.add_argument("--n-perturbed", type=int, default=39)
    parser.add_argument("--cells-per-condition", type=int, default=640)
    parser.add_argument("--n-doubles", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pg.settings.progress_bar = False
    scvi.settings.verbosity = 40
    if args.threads:
        torch.set_num_threads(args.threads)
    trainer = {"enable_progress_bar": False, "accelerator": "auto"}

    start = time.perf_counter()
    adata = paper_screen(
        n_genes=args.n_genes,
        n_regulators=args.n_regulators,
        n_tf_modules=args.n_modules,
        n_perturbed=args.n_perturbed,
        n_doubles=args.n_doubles,
        n_control=args.n_control,
        cells_per_condition=args.cells_per_condition,
        seed=args.seed,
    )
    simulate_seconds = time.perf_counter() - start
    tfs = adata.var_names[adata.var["true_tf_module"].to_numpy() >= 0]
    result: dict = {
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "shape": list(adata.shape),
        "n_tfs": len(tfs),
        "n_controls": int((adata.obs["perturbation"] == "control").sum()),
        "simulate_seconds": simulate_seconds,
    }
    result["reference_grn_seconds"] = _seconds(pg.pp.reference_grn, adata, tfs=tfs, test_key="test")
    result["reference_grn"] = {
        k: adata.uns["reference_grn"]["summary"][k] for k in ("n_fit_cells", "n_regulators", "n_targets", "n_kept")
    }
    result["tf_communities_seconds"] = _seconds(pg.pp.tf_communities, adata)
    result["n_communities"] = int(adata.uns["tf_communities"]["n_communities"])
    result["tf_activity_seconds"] = _seconds(pg.pp.tf_activity, adata, fit_mask=~adata.obs["test"].to_numpy())
    print({k: v for k, v in result.items() if k.endswith("seconds") or k == "n_communities"}, flush=True)

    # gCRL-AE on controls and singles
    ae_cells = adata[~adata.obs["test"].to_numpy()].copy()
    GCRLAE.setup_anndata(ae_cells)

    def train_ae(epochs: int) -> None:
        GCRLAE(ae_cells).train(max_epochs=epochs, **trainer)

    result["gcrlae"] = _per_epoch(train_ae, args.epochs)
    print("gcrlae", result["gcrlae"], flush=True)

    training = {}
    for variant in ("gcrl", "d"):
        GCRLVAE.setup_anndata(adata, test_key="test")

        def train_vae(epochs: int, variant: str = variant) -> None:
            GCRLVAE(adata, variant=variant).train(max_epochs=epochs, **trainer)

        training[variant] = _per_epoch(train_vae, args.epochs)
        print(variant, training[variant], flush=True)
    result["gcrlvae"] = training

    scvi_cells = adata.copy()
    scvi.model.SCVI.setup_anndata(scvi_cells)

    def train_scvi(epochs: int) -> None:
        scvi.model.SCVI(scvi_cells).train(max_epochs=epochs, **trainer)

    result["scvi"] = _per_epoch(train_scvi, args.epochs)
    print("scvi", result["scvi"], flush=True)
    reference = result["scvi"]["seconds_per_epoch"]
    result["ratio_to_scvi"] = {
        "gcrlae": result["gcrlae"]["seconds_per_epoch"] / reference,
        **{f"gcrlvae_{v}": t["seconds_per_epoch"] / reference for v, t in training.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()

"""Data-parallel training on CPU processes (Lightning DDP, gloo) against one process: same fit within noise.

Every model (``--model``: ``gpovae``, ``raptorgraph`` or ``gcrlvae``) is fitted three times for
``--epochs`` epochs:

``single``
    one process, minibatches of ``--batch-size``, seed ``--seed``;
``single_other_seed``
    the same with seed ``--seed + 1``: what a refit changes (the sampling noise of the comparison);
``ddp``
    ``--processes`` CPU processes through Lightning's data-parallel strategy (``--strategy``,
    default ``ddp_spawn_find_unused_parameters_true``: processes spawned inside ``train``, gloo
    backend), seed ``--seed``.

How the processes share the data:

- GPO-VAE (minibatches cut from all training cells): each process takes ``--batch-size /
  --processes`` cells per step from its shard of the training cells (scvi-tools'
  ``BatchDistributedSampler``, ``distributed_sampler=True`` in the data splitter when the strategy
  is DDP), so the effective minibatch and the number of optimisation steps equal the
  single-process fit's; the paired loader attaches each cell's partners in every process.
- RAPTORGraph and gCRL-VAE (every minibatch holds one condition's cells): the processes share
  out the condition batches of each pass (``DistributedConditionBatchSampler``, one shuffling seed
  for all), so a step averages the gradients of ``--processes`` condition batches and an epoch
  has ``1 / --processes`` as many steps; ``--batch-size`` is the same as the single fit's.

Screens: GPO-VAE and RAPTORGraph fit the simulator's default screen (``benchmarks/gpovae.py``'s
``simulator_screen``: 1,680 cells × 200 genes, annotated by hand, 8 random control partners per
perturbed cell); gCRL-VAE fits a simulated screen with planted TF modules (2,280 cells × 200
genes, 3 modules, 8 perturbed regulators and 4 doubles), with its reference GRN, TF communities
and activities.

Reported: Pearson correlations between fits of the predicted effects of every observed condition
(``get_ate``) and of the exported GRN (GPO-VAE: edge probabilities, off-diagonal, and the signed
direct effects; the latent models: the latent DAG, when it has edges), GPO-VAE's AUPRC against
the simulator's true GRN, and wall time. The DDP fit agrees with the single-process fit when its
correlations are as high as the ``single`` against ``single_other_seed`` ones.

Usage::

    nice python benchmarks/ddp.py --model gpovae --out benchmarks/results/ddp.json
    nice python benchmarks/ddp.py --model raptorgraph --epochs 60 --batch-size 256 \\
        --out benchmarks/results/ddp_raptorgraph.json
    nice python benchmarks/ddp.py --model gcrlvae --epochs 60 --batch-size 32 --out benchmarks/results/ddp_gcrlvae.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def screen(model_name: str, seed: int = 0):
    """The screen a model is fitted on (see the module docstring)."""
    import pertgrn as pg

    if model_name in ("gpovae", "raptorgraph"):
        from gpovae import simulator_screen

        return simulator_screen(seed)
    adata = pg.datasets.simulate(
        n_genes=200,
        n_regulators=24,
        n_tf_modules=3,
        n_perturbed=8,
        n_doubles=4,
        n_unmeasured_targets=0,
        n_control=600,
        cells_per_condition=140,
        seed=seed,
    )
    pg.pp.annotate_perturbations(adata, control="control")
    adata.obs["test"] = (adata.obs["pertgrn_n_targets"] > 1).to_numpy()
    tfs = adata.var_names[adata.var["true_tf_module"].to_numpy() >= 0]
    pg.pp.reference_grn(adata, tfs=tfs, test_key="test")
    pg.pp.tf_communities(adata, seed=seed)
    pg.pp.tf_activity(adata, fit_mask=~adata.obs["test"].to_numpy())
    return adata


def fit(adata, *, model_name: str, preset: str, epochs: int, batch_size: int, seed: int, strategy, processes: int):
    import scvi

    from pertgrn.models import GCRLVAE, GPOVAE, RaptorGraph

    scvi.settings.seed = seed
    if model_name == "gpovae":
        GPOVAE.setup_anndata(adata)
        model = GPOVAE(adata, preset=preset)
        extra = {"early_stopping": False}
    elif model_name == "raptorgraph":
        RaptorGraph.setup_anndata(adata)
        model = RaptorGraph(adata)
        extra = {}
    else:
        GCRLVAE.setup_anndata(adata, test_key="test")
        model = GCRLVAE(adata)
        extra = {}
    kwargs = {"accelerator": "cpu", "devices": 1}
    if strategy is not None:
        kwargs = {"accelerator": "cpu", "devices": processes, "strategy": strategy}
    t0 = time.perf_counter()
    model.train(
        max_epochs=epochs,
        batch_size=batch_size,
        enable_progress_bar=False,
        enable_model_summary=False,
        **extra,
        **kwargs,
    )
    return model, time.perf_counter() - t0


def summarise(model, adata) -> dict:
    import pandas as pd

    from pertgrn.metrics import grn_auprc

    conditions = [
        c
        for c in adata.obs["pertgrn_condition"].cat.categories
        if c != model.design.control and set(c.split(model.design.delimiter)) <= set(model.predictable_targets)
    ]
    out = {"ate": model.get_ate(conditions).to_numpy()}
    grn = model.get_grn()
    out["grn"] = np.asarray(grn.to_numpy(), dtype=np.float64)
    if "true_grn" in adata.varp and set(grn.index) <= set(adata.var_names):
        nodes = list(grn.index)
        truth = adata.varp["true_grn"]
        truth = pd.DataFrame(
            truth.toarray() if hasattr(truth, "toarray") else truth, index=adata.var_names, columns=adata.var_names
        )
        out["auprc"] = grn_auprc(grn.loc[nodes, nodes], truth.loc[nodes, nodes])
    if getattr(model.module, "gpo_form", None) == "signed":
        out["effects"] = model.module.direct_effects().detach().cpu().numpy()
    return out


def correlation(a: np.ndarray, b: np.ndarray, off_diagonal: bool = False) -> float | None:
    """Pearson correlation of two arrays; ``None`` when either is constant (e.g. a DAG without edges)."""
    if off_diagonal:
        keep = ~np.eye(a.shape[0], dtype=bool)
        a, b = a[keep], b[keep]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["gpovae", "raptorgraph", "gcrlvae"], default="gpovae")
    parser.add_argument("--preset", choices=["pertgrn", "reference"], default="pertgrn", help="GPO-VAE's preset")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--strategy", default="ddp_spawn_find_unused_parameters_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/ddp.json")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process (inherited by spawned processes)
    import logging

    import lightning
    import scvi
    import torch

    import pertgrn as pg

    pg.settings.progress_bar = False
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)

    # condition batches are shared out whole between processes; cells of one stream are split
    ddp_batch = args.batch_size if args.model != "gpovae" else args.batch_size // args.processes
    runs = {
        "single": {"seed": args.seed, "strategy": None, "batch_size": args.batch_size},
        "single_other_seed": {"seed": args.seed + 1, "strategy": None, "batch_size": args.batch_size},
        "ddp": {"seed": args.seed, "strategy": args.strategy, "batch_size": ddp_batch},
    }
    results, summaries = {}, {}
    for name, run in runs.items():
        adata = screen(args.model, 0)
        model, seconds = fit(
            adata,
            model_name=args.model,
            preset=args.preset,
            epochs=args.epochs,
            batch_size=run["batch_size"],
            seed=run["seed"],
            strategy=run["strategy"],
            processes=args.processes,
        )
        summaries[name] = summarise(model, adata)
        results[name] = {
            **{k: v for k, v in run.items()},
            "processes": args.processes if run["strategy"] else 1,
            "wall_s": seconds,
            "auprc": summaries[name].get("auprc"),
            "grn_shape": list(summaries[name]["grn"].shape),
            "n_edges_above_0.5": int((np.abs(summaries[name]["grn"]) > 0.5).sum()),
        }
        print(f"{name}: {seconds:.0f} s, {results[name]}", flush=True)
    comparisons = {}
    for a, b in (("single", "ddp"), ("single", "single_other_seed"), ("single_other_seed", "ddp")):
        entry = {
            "grn_pearson": correlation(summaries[a]["grn"], summaries[b]["grn"], off_diagonal=True),
            "ate_pearson": correlation(summaries[a]["ate"], summaries[b]["ate"]),
        }
        if "effects" in summaries[a]:
            entry["direct_effects_pearson"] = correlation(
                summaries[a]["effects"], summaries[b]["effects"], off_diagonal=True
            )
        comparisons[f"{a}_vs_{b}"] = entry
        print(f"{a} vs {b}: {entry}", flush=True)
    out = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "scvi_tools": scvi.__version__,
        },
        "params": vars(args),
        "fits": results,
        "comparisons": comparisons,
        "within_noise": {
            key: comparisons["single_vs_ddp"][key] >= comparisons["single_vs_single_other_seed"][key] - 0.02
            for key in comparisons["single_vs_ddp"]
            if comparisons["single_vs_ddp"][key] is not None
            and comparisons["single_vs_single_other_seed"][key] is not None
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Data-parallel training on CPU processes (Lightning DDP, gloo) against one process: same GRN and effects within noise.

On the simulator's default screen (``benchmarks/gpovae.py``'s ``simulator_screen``: 1,680 cells ×
200 genes, annotated by hand, 8 random control partners per perturbed cell), GPO-VAE (preset
``--preset``) is fitted three times for ``--epochs`` epochs:

``single``
    one process, minibatches of ``--batch-size``, seed ``--seed``;
``single_other_seed``
    the same with seed ``--seed + 1``: what a refit changes (the sampling noise of the comparison);
``ddp``
    ``--processes`` CPU processes through Lightning's data-parallel strategy (``--strategy``,
    default ``ddp_spawn_find_unused_parameters_true``: processes spawned inside ``train``, gloo
    backend), minibatches of ``--batch-size / --processes`` per process, so the effective minibatch
    and the number of optimisation steps equal the single-process fit's; seed ``--seed``. scvi-tools
    gives each process its shard of the training cells through its ``BatchDistributedSampler``
    (``distributed_sampler=True`` in the data splitter when the strategy is DDP), and the paired
    loader attaches each cell's partners in every process.

Reported: Pearson correlations between fits of the GRN's edge probabilities (off-diagonal), of
the signed direct effects (``preset="pertgrn"``) and of the predicted effects of every observed
condition (``get_ate``), the AUPRC of each fit against the simulator's true GRN (measured nodes),
and wall time. The DDP fit agrees with the single-process fit when its correlations are as high as
the ``single`` against ``single_other_seed`` ones.

Usage::

    nice python benchmarks/ddp.py --out benchmarks/results/ddp.json
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


def fit(adata, *, preset: str, epochs: int, batch_size: int, seed: int, strategy: str | None, processes: int):
    import scvi

    from pertgrn.models import GPOVAE

    scvi.settings.seed = seed
    GPOVAE.setup_anndata(adata)
    model = GPOVAE(adata, preset=preset)
    kwargs = {"accelerator": "cpu", "devices": 1}
    if strategy is not None:
        kwargs = {"accelerator": "cpu", "devices": processes, "strategy": strategy}
    t0 = time.perf_counter()
    model.train(
        max_epochs=epochs,
        batch_size=batch_size,
        early_stopping=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
    return model, time.perf_counter() - t0


def summarise(model, adata) -> dict:
    import pandas as pd

    from pertgrn.metrics import grn_auprc

    grn = model.get_grn()
    nodes = [n for n in grn.index if n in adata.var_names]
    truth = pd.DataFrame(
        adata.varp["true_grn"].toarray() if hasattr(adata.varp["true_grn"], "toarray") else adata.varp["true_grn"],
        index=adata.var_names,
        columns=adata.var_names,
    )
    conditions = [c for c in adata.obs["pertgrn_condition"].cat.categories if c != model.design.control]
    out = {
        "grn": grn.to_numpy(),
        "ate": model.get_ate(conditions).to_numpy(),
        "auprc": grn_auprc(grn.loc[nodes, nodes], truth.loc[nodes, nodes]),
    }
    if model.module.gpo_form == "signed":
        out["effects"] = model.module.direct_effects().detach().cpu().numpy()
    return out


def correlation(a: np.ndarray, b: np.ndarray, off_diagonal: bool = False) -> float:
    if off_diagonal:
        keep = ~np.eye(a.shape[0], dtype=bool)
        a, b = a[keep], b[keep]
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["pertgrn", "reference"], default="pertgrn")
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
    from gpovae import simulator_screen

    import pertgrn as pg

    pg.settings.progress_bar = False
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)

    runs = {
        "single": {"seed": args.seed, "strategy": None, "batch_size": args.batch_size},
        "single_other_seed": {"seed": args.seed + 1, "strategy": None, "batch_size": args.batch_size},
        "ddp": {"seed": args.seed, "strategy": args.strategy, "batch_size": args.batch_size // args.processes},
    }
    results, summaries = {}, {}
    for name, run in runs.items():
        adata = simulator_screen(0)
        model, seconds = fit(
            adata,
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
            "auprc": summaries[name]["auprc"],
            "n_edges_above_0.5": int((summaries[name]["grn"] > 0.5).sum()),
        }
        print(f"{name}: {seconds:.0f} s, AUPRC {summaries[name]['auprc']:.3f}", flush=True)
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
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Quality of RAPTORGraph on held-out double perturbations, and OT against random pairing (Table S8).

Datasets:

- ``simulator``: ``pertgrn.datasets.simulate`` with 12 single and 30 double knockdowns (200
  genes, 600 controls, 80 cells per condition, 2 unmeasured targets). Doubles combine through
  the simulator's sigmoid responses, so they are not additive.
- ``norman``: the Norman et al. 2019 K562 CRISPRa cells of the perturbench development file in
  ``../shared/data`` (counts in ``layers["counts"]``; 1 of 31 targets measured).

Protocol (spec §1.4, §5): train on control and single-perturbation cells; hold out every double
(``obs["test"]``). ``pp.ot_pairing`` (exact EMD), then ``tl.fit_raptorgraph`` with its defaults
(epochs from the model's heuristic unless ``--epochs``). Scores:

- ``tl.distribution_distances``: per held-out double whose singles were trained, MK-MMD
  (10 kernels, ``fix_sigma`` 200, V-statistic) and centroid distance of the model's predicted
  cells against half of the double's cells, next to the control, additive and half-split
  baselines (same sizes, same log-normalisation), and the number of doubles where the model
  beats each baseline. The model's cells are its decoded expectation (the paper's protocol);
  ``sampled`` repeats the scores with Poisson counts drawn around it.
- ``tl.genetic_interactions`` (RAPTORGraph's additive definitions): precision@10 per type.
- ``tl.reverse_perturbation`` (with the model: every pair of the genes).

With ``--pairings ot random --seeds 0 1 2`` it repeats the fit for each pairing and seed (the
split and the OT plan are the same; only the model's seed and pairing change) and reports
mean ± SD (ddof 1) over seeds.

Usage::

    python benchmarks/raptorgraph_quality.py --dataset simulator --pairings ot random --seeds 0 1 2 \
        --out benchmarks/results/raptorgraph_quality_simulator.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

import pertgrn as pg

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load(dataset: str, data_seed: int) -> tuple[ad.AnnData, str | None]:
    if dataset == "simulator":
        adata = pg.datasets.simulate(
            n_genes=200,
            n_regulators=20,
            n_perturbed=12,
            n_doubles=30,
            n_unmeasured_targets=2,
            n_control=600,
            cells_per_condition=80,
            seed=data_seed,
        )
        pg.pp.annotate_perturbations(adata, perturbation_key="perturbation", control="control")
        return adata, None
    path = SHARED_DATA / "norman2019_perturbench_devel.h5ad"
    adata = ad.read_h5ad(path)
    adata = adata[adata.obs["dataset"] == "norman19"].copy()
    adata.X = adata.layers["counts"].copy()
    del adata.layers
    pg.pp.annotate_perturbations(adata, perturbation_key="condition", control="control")
    return adata, None


def summarise(scores: pd.DataFrame) -> dict:
    out = {"n_doubles": len(scores)}
    for metric in ("mk_mmd", "centroid"):
        table = scores[metric]
        out[metric] = {m: float(table[m].mean()) for m in table.columns}
        out[f"{metric}_median"] = {m: float(table[m].median()) for m in table.columns}
        out[f"{metric}_model_beats"] = {
            m: int((table["model"] < table[m]).sum()) for m in table.columns if m != "model"
        }
    return out


def mean_sd(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "values": arr.tolist()}


def run(args: argparse.Namespace) -> dict:
    adata, _ = load(args.dataset, args.data_seed)
    adata.obs["test"] = (adata.obs["pertgrn_n_targets"] > 1).to_numpy()
    start = time.perf_counter()
    pg.pp.ot_pairing(adata, seed=args.data_seed)
    ot_seconds = time.perf_counter() - start
    result = {
        "dataset": args.dataset,
        "shape": list(adata.shape),
        "n_conditions": int(adata.obs["pertgrn_condition"].nunique()),
        "n_held_out_doubles": int(adata.obs.loc[adata.obs["test"], "pertgrn_condition"].nunique()),
        "ot_seconds": ot_seconds,
        "epochs": args.epochs if args.epochs is not None else "model default",
        "runs": [],
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    for pairing in args.pairings:
        for seed in args.seeds:
            data = adata.copy()
            start = time.perf_counter()
            model = pg.tl.fit_raptorgraph(
                data,
                test_key="test",
                pairing=pairing,
                max_epochs=args.epochs,
                random_state=seed,
                train_kwargs={"enable_progress_bar": False},
            )
            seconds = time.perf_counter() - start
            scores = pg.tl.distribution_distances(data, model=model, test_key="test", seed=seed)
            sampled = pg.tl.distribution_distances(data, model=model, test_key="test", seed=seed, sample=True)
            run_result = {
                "pairing": pairing,
                "seed": seed,
                "train_seconds": seconds,
                "n_epochs": int(data.uns["raptorgraph"]["params"]["n_epochs_trained"]),
                "per_double": {
                    f"{metric}:{method}": scores[(metric, method)].round(6).to_dict()
                    for metric, method in scores.columns
                    if metric != "n_cells"
                },
                **summarise(scores),
                # the same with Poisson counts drawn around the model's expectation (counting noise added)
                "sampled": summarise(sampled),
            }
            try:
                precision = pg.tl.genetic_interactions(data, key="raptorgraph", k=args.k)
                run_result["interaction_precision"] = precision.to_dict()
                run_result["interaction_k"] = int(data.uns["raptorgraph_interactions"]["params"]["k"])
            except ValueError as error:
                run_result["interaction_precision"] = f"not computed: {error}"
            try:
                hits = pg.tl.reverse_perturbation(data, key="raptorgraph", model=model, k=(1, 3, 5))
                run_result["reverse_perturbation"] = {str(k): row.to_dict() for k, row in hits.iterrows()}
            except ValueError as error:
                run_result["reverse_perturbation"] = f"not computed: {error}"
            history = data.uns["raptorgraph"]["history"]
            last = history.iloc[-1]
            run_result["final_terms"] = {
                c: float(last[c]) for c in history.columns if c.endswith("_train") or c.endswith("_validation")
            }
            dag = pg.get.grn_df(data, key="raptorgraph", level="latent", threshold=0.3)
            run_result["dag_edges"] = int(len(dag))
            result["runs"].append(run_result)
            print(
                f"{pairing} seed {seed}: {seconds:.0f} s, MK-MMD model {run_result['mk_mmd']['model']:.3f} "
                f"control {run_result['mk_mmd']['control']:.3f} additive {run_result['mk_mmd']['additive']:.3f} "
                f"half {run_result['mk_mmd']['half_split']:.3f}; beats {run_result['mk_mmd_model_beats']}",
                flush=True,
            )
    # mean ± SD over seeds, per pairing
    summary = {}
    for pairing in args.pairings:
        runs = [r for r in result["runs"] if r["pairing"] == pairing]
        block = {}
        for metric in ("mk_mmd", "centroid"):
            block[metric] = {m: mean_sd([r[metric][m] for r in runs]) for m in runs[0][metric]}
            block[f"{metric}_model_beats"] = {
                m: mean_sd([r[f"{metric}_model_beats"][m] for r in runs]) for m in runs[0][f"{metric}_model_beats"]
            }
        if all(isinstance(r["interaction_precision"], dict) for r in runs):
            block["interaction_precision"] = {
                t: mean_sd([r["interaction_precision"][t] for r in runs]) for t in runs[0]["interaction_precision"]
            }
        summary[pairing] = block
    result["summary"] = summary
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["simulator", "norman"], default="simulator")
    parser.add_argument("--pairings", nargs="+", choices=["ot", "random"], default=["ot"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--k", type=int, default=10, help="precision@k of the interaction types")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/raptorgraph_quality.json"))
    args = parser.parse_args()
    if args.dataset == "norman" and not (SHARED_DATA / "norman2019_perturbench_devel.h5ad").exists():
        raise SystemExit(f"{SHARED_DATA} holds no Norman subset.")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()

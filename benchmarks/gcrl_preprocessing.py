"""gCRL preprocessing: reference GRN, TF communities and TF-community activities, speed and quality.

Simulated screens (``pertgrn.datasets.simulate`` with planted regulator modules) at the paper's
TF scale: by default 150 regulators in 8 modules, 1,716 genes (1,700 GRN genes + 16 QC genes),
3,000 control cells. Per seed it records

- ``reference_grn``: wall time of the default call (q ≤ 0.05, mixture cut) and of an unfiltered
  call; AUPRC of ``|weight|`` over every tested TF → gene pair against the simulator's edges, with
  its chance level; precision and recall of the kept edges;
- ``tf_communities``: wall time (default ``n_runs=100``, igraph's Leiden), K, the ARI of the
  consensus against the planted modules, the chosen resolution, the cohesion test; optionally
  the wall time of ``flavor="leidenalg"`` and of the paper's ``n_runs=1000``;
- ``tf_activity``: wall time, and the correlation of each community activity with the planted
  module activity it matches (Hungarian on |corr|), against communities whose TFs are permuted.

Then the Norman et al. 2019 subset in ``../shared/data`` (skipped, with the reason, when absent):
TFs, edges and communities with no prior, CollecTRI and TRRUST, on control cells or on all cells.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/gcrl_preprocessing.py --out benchmarks/results/gcrl_preprocessing.json
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
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, average_precision_score

import pertgrn as pg

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def _pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["source"], frame["target"], strict=True))


def _matched_correlations(activity: np.ndarray, truth: np.ndarray) -> np.ndarray:
    k = activity.shape[1]
    corr = np.corrcoef(activity.T, truth.T)[:k, k:]
    rows, cols = linear_sum_assignment(-np.abs(corr))
    return corr[rows, cols]


def simulated(seed: int, args: argparse.Namespace) -> dict:
    adata = pg.datasets.simulate(
        n_genes=args.n_genes,
        n_regulators=args.n_regulators,
        n_tf_modules=args.n_modules,
        n_control=args.n_control,
        n_perturbed=10,
        n_doubles=0,
        cells_per_condition=50,
        seed=seed,
    )
    pg.pp.annotate_perturbations(adata, control="control")
    tfs = list(adata.var_names[adata.var["true_tf_module"].to_numpy() >= 0])
    truth = _pairs(adata.uns["simulation"]["grn"])
    out: dict = {"seed": seed, "n_cells": adata.n_obs, "n_genes": adata.n_vars, "n_tfs_measured": len(tfs)}

    # reference GRN
    t_all = _timed(pg.pp.reference_grn, adata, tfs=tfs, fdr=1.0, edge_threshold=None, key_added="all_edges")
    tested = pg.get.reference_grn_df(adata, key="all_edges")
    label = np.array([p in truth for p in zip(tested["source"], tested["target"], strict=True)])
    t_default = _timed(pg.pp.reference_grn, adata, tfs=tfs)
    kept = pg.get.reference_grn_df(adata)
    kept_label = np.array([p in truth for p in zip(kept["source"], kept["target"], strict=True)])
    summary = adata.uns["reference_grn"]["summary"]
    out["reference_grn"] = {
        "seconds_default": t_default,
        "seconds_unfiltered": t_all,
        "n_fit_cells": int(summary["n_fit_cells"]),
        "n_tested": int(summary["n_tested"]),
        "n_significant": int(summary["n_significant"]),
        "n_kept": int(summary["n_kept"]),
        "kept_fraction_of_significant": float(summary["kept_fraction"]),
        "n_true_edges_measured": int(label.sum()),
        "auprc": float(average_precision_score(label, tested["weight"].abs())),
        "auprc_chance": float(label.mean()),
        "precision_at_n_true": float(label[: int(label.sum())].mean()),
        "kept_precision": float(kept_label.mean()),
        "kept_recall": float(kept_label.sum() / label.sum()),
        "n_tfs_with_edges": int(kept["source"].nunique()),
    }

    # TF communities
    t_comm = _timed(pg.pp.tf_communities, adata)
    record = adata.uns["tf_communities"]
    planted = adata.var["true_tf_module"].to_numpy()
    found = adata.var["pertgrn_tf_community"].to_numpy()
    tf_mask = planted >= 0
    out["tf_communities"] = {
        "seconds_default": t_comm,
        "n_communities": int(record["n_communities"]),
        "n_planted": args.n_modules,
        "ari": float(adjusted_rand_score(planted[tf_mask], found[tf_mask])),
        "resolution": float(record["resolution"]),
        "n_partitioned": int((record["communities"]["community"] >= 0).sum()),
        "n_graph_edges": len(record["graph"]),
        "cohesion": float(record["cohesion"]["statistic"]),
        "cohesion_null_mean": float(record["cohesion"]["null_mean"]),
        "cohesion_pvalue": float(record["cohesion"]["pvalue"]),
    }
    if args.leidenalg_runs:
        copy = adata.copy()
        seconds = _timed(pg.pp.tf_communities, copy, n_runs=args.leidenalg_runs, flavor="leidenalg")
        found_la = copy.var["pertgrn_tf_community"].to_numpy()
        out["tf_communities"]["leidenalg"] = {
            "n_runs": args.leidenalg_runs,
            "seconds": seconds,
            "ari": float(adjusted_rand_score(planted[tf_mask], found_la[tf_mask])),
        }
    if args.paper_runs and seed == args.seeds[0]:
        copy = adata.copy()
        seconds = _timed(pg.pp.tf_communities, copy, n_runs=1000)
        found_paper = copy.var["pertgrn_tf_community"].to_numpy()
        out["tf_communities"]["n_runs_1000"] = {
            "seconds": seconds,
            "ari": float(adjusted_rand_score(planted[tf_mask], found_paper[tf_mask])),
            "same_as_default": bool((found_paper == found).all()),
        }

    # TF activities, fitted on the control cells
    controls = (adata.obs["perturbation"] == "control").to_numpy()
    t_act = _timed(pg.pp.tf_activity, adata, fit_mask=controls)
    truth_activity = adata.obsm["true_tf_module_activity"]
    K = int(record["n_communities"])
    matched = _matched_correlations(adata.obsm["X_tf_activity"][:, :K], truth_activity)
    rng = np.random.default_rng(seed)
    permuted = []
    for _ in range(5):
        copy = adata.copy()
        table = copy.uns["tf_communities"]["communities"]
        table["community"] = rng.permutation(table["community"].to_numpy())
        pg.pp.tf_activity(copy, fit_mask=controls)
        permuted.append(float(np.abs(_matched_correlations(copy.obsm["X_tf_activity"][:, :K], truth_activity)).mean()))
    out["tf_activity"] = {
        "seconds": t_act,
        "matched_correlations": matched.tolist(),
        "mean_matched_correlation": float(matched.mean()),
        "mean_matched_correlation_permuted_communities": float(np.mean(permuted)),
        "explained_variance_ratio": adata.uns["tf_activity"]["explained_variance_ratio"].tolist(),
    }
    return out


def norman() -> dict:
    path = SHARED_DATA / "norman2019_perturbench_devel.h5ad"
    if not path.exists():
        return {"skipped": f"{path} is absent"}
    adata = ad.read_h5ad(path)
    adata = adata[adata.obs["dataset"] == "norman19"].copy()
    pg.pp.annotate_perturbations(adata, perturbation_key="condition", control="control")
    tfs = SHARED_DATA / "priors" / "human_tfs_lambert2018.txt"
    controls = (adata.obs["condition"] == "control").to_numpy()
    results = {"n_cells": adata.n_obs, "n_genes": adata.n_vars, "n_control": int(controls.sum())}
    priors = {
        "none": None,
        "collectri": SHARED_DATA / "priors" / "collectri_human.csv",
        "trrust": SHARED_DATA / "priors" / "trrust_human.tsv",
    }
    for name, prior in priors.items():
        for control_only in (True, False):
            run: dict = {}
            try:
                pg.pp.reference_grn(adata, tfs=tfs, prior=prior, layer="counts", control_only=control_only)
                summary = adata.uns["reference_grn"]["summary"]
                edges = pg.get.reference_grn_df(adata)
                run.update(
                    n_tfs_measured=int(summary["n_tfs_measured"]),
                    n_tfs_varying=int(summary["n_regulators"]),
                    n_tested=int(summary["n_tested"]),
                    n_significant=int(summary["n_significant"]),
                    n_edges=int(summary["n_kept"]),
                    n_grn_tfs=int(edges["source"].nunique()),
                    n_grn_genes=len(set(edges["source"]) | set(edges["target"])),
                )
                pg.pp.tf_communities(adata)
                record = adata.uns["tf_communities"]
                sizes = record["communities"]["community"].value_counts().sort_index()
                run.update(
                    n_communities=int(record["n_communities"]),
                    community_sizes={int(k): int(v) for k, v in sizes.items()},
                    resolution=float(record["resolution"]),
                    cohesion_pvalue=float(record["cohesion"]["pvalue"]),
                )
                pg.pp.tf_activity(adata, layer="counts", fit_mask=controls)
                run["activity_shape"] = list(adata.obsm["X_tf_activity"].shape)
            except ValueError as error:
                run["stopped"] = str(error)
            results[f"prior_{name}_{'controls' if control_only else 'all_cells'}"] = run
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/gcrl_preprocessing.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-genes", type=int, default=1716)
    parser.add_argument("--n-regulators", type=int, default=150)
    parser.add_argument("--n-modules", type=int, default=8)
    parser.add_argument("--n-control", type=int, default=3000)
    parser.add_argument("--leidenalg-runs", type=int, default=20, help="time flavor='leidenalg' (0: skip)")
    parser.add_argument("--paper-runs", action="store_true", help="also time n_runs=1000 on the first seed")
    args = parser.parse_args()
    pg.settings.progress_bar = False
    results = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pertgrn": pg.__version__,
        "args": vars(args),
        "simulated": [simulated(seed, args) for seed in args.seeds],
        "norman": norman(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    for run in results["simulated"]:
        grn, comm, act = run["reference_grn"], run["tf_communities"], run["tf_activity"]
        print(
            f"seed {run['seed']}: reference_grn {grn['seconds_default']:.1f} s, AUPRC {grn['auprc']:.3f} "
            f"(chance {grn['auprc_chance']:.4f}), kept {grn['n_kept']} (precision {grn['kept_precision']:.3f}, "
            f"recall {grn['kept_recall']:.2f}); tf_communities {comm['seconds_default']:.1f} s, K = "
            f"{comm['n_communities']}, ARI {comm['ari']:.3f}; tf_activity {act['seconds']:.1f} s, matched r "
            f"{act['mean_matched_correlation']:.2f} "
            f"(permuted {act['mean_matched_correlation_permuted_communities']:.2f})"
        )
    print(json.dumps(results["norman"], indent=1))


if __name__ == "__main__":
    main()

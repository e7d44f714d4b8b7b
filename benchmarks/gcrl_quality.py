"""Quality of gCRL on simulated screens with planted TF communities, and on the Norman subset.

Simulated screens (``pertgrn.datasets.simulate`` with ``n_tf_modules``): every double perturbation is
held out (``obs["test"]``); the reference GRN (``pp.reference_grn(test_key="test")``), the TF
communities and the activities (fitted on the training cells) come first. Per seed it records

- ``communities``: K and the ARI of the recovered communities against the planted modules;
- ``tmex``: for gCRL-VAE's causal latents ``U = μ (I − triu G)⁻¹`` of the training controls,
  paired with the activity columns by the learned ``π``, the T-MEX with the activities of the
  recovered communities, the same for ``n_perm`` random relabellings of the TFs (community sizes
  kept, the global column fixed; ``tl._align.community_activities``) with the same pairing, and
  against the planted module activities (matched to the communities by Hungarian on |corr|; the
  T-MEX over the community columns only, and each latent's |corr| with its module); plus
  ``tl.community_permutation_test`` on ``U`` (closed-form ``A``, the paper's protocol);
- ``aecd``: the centroid distance of ``tl.distribution_distances`` on every held-out double for
  gCRL-VAE, id-VAE and d-VAE (``tl.fit_gcrlvae(variant=…)``) and the control (worst case),
  additive and half-split baselines: mean, S.E. over doubles, paired two-sided Wilcoxon against
  gCRL-VAE, the number of doubles where each model is below the worst case, and
  ``same_community`` (whether both targets of a double are in one recovered community, so that
  gCRL-VAE shifts a single latent by the sum of their magnitudes);
- ``single_fit``: how well each variant reproduces the training singles (training cells only): per
  trained single, the distance between its predicted centroid (``predict_log_normalized``) and the
  mean of its training cells, the same for the control centroid, the mean over singles and, per
  community, the mean cosine between the predicted effects (prediction minus predicted control) of
  its TFs next to the observed one. Under gCRL's hard routing all TFs of a community move one
  latent, so their predicted effects can only differ by the size of the shift;
- ``training``: epochs and wall time per variant.

Over all seeds, ``pooled`` holds the AECD of every model and baseline over the doubles of every
seed, with the paired Wilcoxon test against gCRL-VAE on the pooled doubles.

The Norman subset (``../shared/data/norman2019_perturbench_devel.h5ad``, Norman cells only, counts
in ``layers["counts"]``): the chain with ``prior=None`` and with CollecTRI (which leaves no TF–TF
edge among the subset's genes, so its communities fail and the run records why), then the three
variants with the doubles held out.

Usage::

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 nice python benchmarks/gcrl_quality.py --seeds 0 1 2 \\
        --epochs 100 --out benchmarks/results/gcrl_quality.json
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
import scvi
from scipy import stats
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

import pertgrn as pg
from pertgrn._design import PerturbationDesign
from pertgrn._utils import check_counts, log_normalize, to_dense
from pertgrn.metrics import tmex
from pertgrn.tl._align import _zscored_tfs, community_activities

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VARIANTS = ("gcrl", "id", "d")
BASELINES = ("control", "additive", "half_split")


def _aecd_table(tables: dict[str, pd.DataFrame]) -> dict:
    """AECD per model and baseline, S.E., Wilcoxon against gCRL-VAE, doubles below the worst case."""
    columns = {v: t[("centroid", "model")] for v, t in tables.items()}
    first = next(iter(tables.values()))
    for b in BASELINES:
        columns[b] = first[("centroid", b)]
    frame = pd.DataFrame(columns)
    out = {"n_doubles": len(frame), "per_double": frame.round(4).to_dict()}
    for name, values in frame.items():
        row = {"aecd": float(values.mean()), "se": float(values.std(ddof=1) / np.sqrt(len(values)))}
        if name != "gcrl" and "gcrl" in frame and len(values) > 1 and not np.allclose(values, frame["gcrl"]):
            row["wilcoxon_p_vs_gcrl"] = float(stats.wilcoxon(frame["gcrl"], values).pvalue)
        if name in tables:
            row["below_worst_case"] = int((values < frame["control"]).sum())
        out[name] = row
    return out


def _fit_variants(
    adata, epochs: int, seed: int, model_kwargs: dict | None = None, layer: str | None = None
) -> tuple[dict, dict, dict]:
    tables, training, models = {}, {}, {}
    for variant in VARIANTS:
        start = time.perf_counter()
        model = pg.tl.fit_gcrlvae(
            adata,
            variant=variant,
            layer=layer,
            key_added=f"gcrlvae_{variant}",
            test_key="test",
            max_epochs=epochs,
            model_kwargs=model_kwargs,
            train_kwargs={"enable_progress_bar": False},
            random_state=seed,
        )
        training[variant] = {"seconds": time.perf_counter() - start, "epochs": epochs, "n_latent": model.n_latent}
        tables[variant] = pg.tl.distribution_distances(adata, model=model, test_key="test", seed=seed, layer=layer)
        models[variant] = model
    return tables, training, models


def _single_fit(adata, models: dict, community_of: dict, seed: int) -> dict:
    """Training-cell fit of the singles per variant, and how alike the predicted effects within a community are."""
    counts = check_counts(adata, None)
    expression = to_dense(log_normalize(counts, target_sum=1e4)).astype(np.float64)
    conditions = adata.obs["pertgrn_condition"].astype(str).to_numpy()
    train = ~adata.obs["test"].to_numpy()
    singles = sorted(set(adata.uns["simulation"]["perturbed_genes"]))
    control = expression[train & (conditions == "control")].mean(0)
    observed = {g: expression[train & (conditions == g)].mean(0) for g in singles}
    groups: dict[int, list[str]] = {}
    for g in singles:
        if int(community_of.get(g, -1)) >= 0:
            groups.setdefault(int(community_of[g]), []).append(g)

    def within_cos(effects: dict) -> dict:
        out = {}
        for k, genes in sorted(groups.items()):
            if len(genes) < 2:
                continue
            E = np.array([effects[g] for g in genes])
            E = E / np.linalg.norm(E, axis=1, keepdims=True)
            C = E @ E.T
            out[str(k)] = float(C[~np.eye(len(genes), dtype=bool)].mean())
        return out

    report = {
        "control": {g: float(np.linalg.norm(control - observed[g])) for g in singles},
        "observed_within_community_cos": within_cos({g: observed[g] - control for g in singles}),
    }
    report["control_mean"] = float(np.mean(list(report["control"].values())))
    for variant, model in models.items():
        pred = model.predict_log_normalized(perturbations=["control", *singles], n_cells=200, seed=seed)
        labels = pred.obs["perturbation"].astype(str).to_numpy()
        X = np.asarray(pred.X, dtype=np.float64)
        mean = {label: X[labels == label].mean(0) for label in ("control", *singles)}
        distance = {g: float(np.linalg.norm(mean[g] - observed[g])) for g in singles}
        report[variant] = {
            "per_single": distance,
            "mean": float(np.mean(list(distance.values()))),
            "predicted_within_community_cos": within_cos({g: mean[g] - mean["control"] for g in singles}),
        }
    return report


def _pooled(runs: list[dict]) -> dict:
    """AECD over the held-out doubles of every seed, paired Wilcoxon against gCRL-VAE on the pooled doubles."""
    frame = pd.concat(
        [
            pd.DataFrame(run["aecd"]["per_double"]).set_axis(
                [f"{run['seed']}:{d}" for d in run["aecd"]["per_double"]["gcrl"]]
            )
            for run in runs
        ]
    )
    same = np.concatenate(
        [[run["aecd"]["same_community"][d] for d in run["aecd"]["per_double"]["gcrl"]] for run in runs]
    )
    out: dict = {"n_doubles": len(frame)}
    for name, values in frame.items():
        row = {
            "aecd": float(values.mean()),
            "se": float(values.std(ddof=1) / np.sqrt(len(values))),
            "aecd_same_community": float(values[same].mean()) if same.any() else None,
            "aecd_two_communities": float(values[~same].mean()) if (~same).any() else None,
        }
        if name != "gcrl" and not np.allclose(values, frame["gcrl"]):
            row["wilcoxon_p_vs_gcrl"] = float(stats.wilcoxon(frame["gcrl"], values).pvalue)
            row["gcrl_lower_on"] = int((frame["gcrl"] < values).sum())
        if name in VARIANTS:
            row["below_worst_case"] = int((values < frame["control"]).sum())
        out[name] = row
    return out


def _tmex_report(adata, model, n_perm: int, seed: int) -> dict:
    """T-MEX of gCRL-VAE's aligned latents: recovered communities, permuted ones, planted modules."""
    train_controls = np.flatnonzero((adata.obs["pertgrn_condition"] == "control").to_numpy() & ~adata.obs["test"])
    u = model.get_latent_representation(indices=train_controls, latent="u")
    aligned = u[:, model.permutation]  # column k = the latent paired with activity column k
    activity = np.asarray(adata.obsm["X_tf_activity"])
    real = tmex(aligned, activity[train_controls], absolute=False)
    # permuted communities, TFA recomputed with the frozen scaling, global column fixed, same pairing
    record = adata.uns["tf_activity"]
    tfs, Z = _zscored_tfs(adata, record, None)
    table = pd.DataFrame(adata.uns["tf_communities"]["communities"])
    community_of = dict(zip(table["tf"].astype(str), table["community"].astype(int), strict=True))
    labels = np.array([community_of.get(t, -1) for t in tfs])
    partitioned = np.flatnonzero(labels >= 0)
    fit = ~adata.obs["test"].to_numpy()
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(n_perm):
        shuffled = labels.copy()
        shuffled[partitioned] = rng.permutation(labels[partitioned])
        permuted = np.column_stack([community_activities(Z, shuffled, fit), activity[:, -1]])[train_controls]
        null.append(tmex(aligned, permuted, absolute=False))
    null = np.asarray(null)
    out = {
        "recovered_communities": float(real),
        "permuted_mean": float(null.mean()),
        "permuted_sd": float(null.std(ddof=1)),
        "permuted_max": float(null.max()),
        "n_perm": n_perm,
        "fraction_permuted_below": float((null < real).mean()),
    }
    if "true_tf_module_activity" in adata.obsm:
        truth = np.asarray(adata.obsm["true_tf_module_activity"])
        K = truth.shape[1]
        corr = np.corrcoef(activity[fit][:, :K].T, truth[fit].T)[:K, K:]
        rows, cols = linear_sum_assignment(-np.abs(corr))
        planted = truth[:, cols[np.argsort(rows)]][train_controls]  # column k: module matched to community k
        # the global activity is close to a sum of the communities, so it is left out of this check
        out["planted_modules"] = {
            "tmex_communities_only": float(tmex(aligned[:, :K], planted, absolute=False)),
            "abs_corr": [float(abs(np.corrcoef(aligned[:, k], planted[:, k])[0, 1])) for k in range(K)],
        }
    # the paper's protocol on the VAE latents: closed-form A, permutation test
    adata.obsm["X_gcrlvae_u"] = model.get_latent_representation(latent="u")
    pg.tl.community_permutation_test(
        adata, latent_key="X_gcrlvae_u", n_perm=n_perm, fit_mask=fit, seed=seed, key_added="gcrl_permutation_test"
    )
    test = adata.uns["gcrl_permutation_test"]
    out["permutation_test_closed_form"] = {
        k: float(test[k]) for k in ("observed_mean", "null_mean", "null_sd", "t", "pvalue")
    }
    return out


def simulated(seed: int, args) -> dict:
    adata = pg.datasets.simulate(
        n_genes=args.n_genes,
        n_regulators=args.n_regulators,
        n_tf_modules=args.n_modules,
        n_perturbed=args.n_perturbed,
        n_doubles=args.n_doubles,
        n_unmeasured_targets=0,
        n_control=args.n_control,
        cells_per_condition=args.cells_per_condition,
        seed=seed,
    )
    pg.pp.annotate_perturbations(adata, control="control")
    adata.obs["test"] = (adata.obs["pertgrn_n_targets"] > 1).to_numpy()
    tfs = adata.var_names[adata.var["true_tf_module"].to_numpy() >= 0]
    start = time.perf_counter()
    pg.pp.reference_grn(adata, tfs=tfs, test_key="test")
    pg.pp.tf_communities(adata, seed=seed)
    pg.pp.tf_activity(adata, fit_mask=~adata.obs["test"].to_numpy())
    prep = time.perf_counter() - start
    planted = adata.var["true_tf_module"].to_numpy()
    found = adata.var["pertgrn_tf_community"].to_numpy()
    measured = planted >= 0
    table = pd.DataFrame(adata.uns["tf_communities"]["communities"]).set_index("tf")
    perturbed = adata.uns["simulation"]["perturbed_genes"]
    out = {
        "seed": seed,
        "shape": list(adata.shape),
        "n_doubles_held_out": int(adata.obs.loc[adata.obs["test"], "pertgrn_condition"].nunique()),
        "preprocessing_seconds": prep,
        "communities": {
            "K": int(adata.uns["tf_communities"]["n_communities"]),
            "ari_vs_planted": float(adjusted_rand_score(planted[measured], found[measured])),
            "perturbed_in_communities": int((table.loc[perturbed, "community"] >= 0).sum()),
            "n_perturbed": len(perturbed),
        },
    }
    tables, training, models = _fit_variants(adata, args.epochs, seed)
    out["aecd"] = _aecd_table(tables)
    community_of = table["community"].to_dict()
    out["aecd"]["same_community"] = {
        d: len({int(community_of[g]) for g in d.split("+")}) == 1 and int(community_of[d.split("+")[0]]) >= 0
        for d in out["aecd"]["per_double"]["gcrl"]
    }
    out["single_fit"] = _single_fit(adata, models, community_of, seed)
    out["training"] = training
    out["tmex"] = _tmex_report(adata, models["gcrl"], args.n_perm, seed)
    out["permutation"] = models["gcrl"].permutation.tolist()
    return out


def norman(args) -> dict:
    path = SHARED_DATA / "norman2019_perturbench_devel.h5ad"
    if not path.exists():
        return {"skipped": f"{path} is absent"}
    full = ad.read_h5ad(path)
    full = full[full.obs["dataset"] == "norman19"].copy()
    tfs = SHARED_DATA / "priors" / "human_tfs_lambert2018.txt"
    out: dict = {}
    for prior_name, prior in (("none", None), ("collectri", SHARED_DATA / "priors" / "collectri_human.csv")):
        adata = full.copy()
        pg.pp.annotate_perturbations(adata, perturbation_key="condition", control="control")
        adata.obs["test"] = (adata.obs["pertgrn_n_targets"] > 1).to_numpy()
        entry: dict = {}
        pg.pp.reference_grn(adata, tfs=tfs, prior=prior, layer="counts", test_key="test")
        summary = adata.uns["reference_grn"]["summary"]
        entry["reference_grn"] = {k: summary[k] for k in ("n_tfs_measured", "n_regulators", "n_tested", "n_kept")}
        try:
            pg.pp.tf_communities(adata)
        except ValueError as error:
            entry["tf_communities"] = f"failed: {error}"
            out[prior_name] = entry
            continue
        pg.pp.tf_activity(adata, layer="counts", fit_mask=~adata.obs["test"].to_numpy())
        table = pd.DataFrame(adata.uns["tf_communities"]["communities"])
        targets = [str(t) for t in PerturbationDesign.from_adata(adata).targets]
        in_community = set(table.loc[table["community"] >= 0, "tf"])
        entry["communities"] = {
            "K": int(adata.uns["tf_communities"]["n_communities"]),
            "n_tfs_in_grn": len(adata.uns["tf_communities"]["tfs"]),
            "n_tfs_partitioned": int((table["community"] >= 0).sum()),
            "sizes": np.bincount(table.loc[table["community"] >= 0, "community"]).tolist(),
            "targets_in_communities": sorted(set(targets) & in_community),
            "n_targets": len(targets),
        }
        tables, training, _ = _fit_variants(
            adata, args.epochs, 0, {"unassigned_targets": args.norman_unassigned}, layer="counts"
        )
        entry["aecd"] = _aecd_table(tables)
        entry["training"] = training
        out[prior_name] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gcrl_quality.json"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--n-perm", type=int, default=100)
    parser.add_argument("--n-genes", type=int, default=216)
    parser.add_argument("--n-regulators", type=int, default=40)
    parser.add_argument("--n-modules", type=int, default=4)
    parser.add_argument("--n-perturbed", type=int, default=16)
    parser.add_argument("--n-doubles", type=int, default=8)
    parser.add_argument("--n-control", type=int, default=1500)
    parser.add_argument("--cells-per-condition", type=int, default=100)
    parser.add_argument("--norman-unassigned", default="soft", choices=("global", "soft"))
    parser.add_argument("--skip-norman", action="store_true")
    parser.add_argument("--skip-simulated", action="store_true")
    args = parser.parse_args()
    pg.settings.progress_bar = False
    scvi.settings.verbosity = 40
    result = {"platform": platform.platform(), "args": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_simulated:
        result["simulated"] = [simulated(seed, args) for seed in args.seeds]
        result["pooled"] = _pooled(result["simulated"])
    if not args.skip_norman:
        result["norman"] = norman(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    for run in result.get("simulated", []):
        aecd = {k: round(v["aecd"], 3) for k, v in run["aecd"].items() if isinstance(v, dict) and "aecd" in v}
        print(f"seed {run['seed']}: ARI {run['communities']['ari_vs_planted']:.3f}, AECD {aecd}, T-MEX {run['tmex']}")
    if "pooled" in result:
        print("pooled:", {k: round(v["aecd"], 3) for k, v in result["pooled"].items() if isinstance(v, dict)})
    if "norman" in result:
        print(json.dumps(result["norman"], indent=1, default=float)[:3000])


if __name__ == "__main__":
    main()

"""Quality of GPO-VAE on simulated screens with a known GRN, against the baselines pertgrn ships.

For each screen (``pertgrn.datasets.simulate``; several seeds at the default size and one large
screen), the split is: 20 % of the cells of every single perturbation and of the controls are
held out (``obs["test"]``), and every cell of every double perturbation is held out too, so the
doubles are unseen combinations. Extended genes are chosen on the training cells; the model is
fitted with ``tl.fit_gpovae(test_key="test")`` and its defaults (or ``--preset reference``).

Reported per screen:

- ``auprc``: AUPRC of regulator → gene pairs (every singly perturbed target × every measured GRN
  node, self-loops excluded) against the simulator's direct edges, for the model's edge
  probabilities, the differential-expression ranking (``tl.baseline_grn(method="de")`` on the
  training cells), the correlation ranking and random (the positive fraction).
- ``auprc_indirect``: the same restricted to pairs that are either direct edges or *indirect* in
  the truth (the target descends from the regulator, but not through a direct edge): can the
  ranking tell direct from indirect effects?
- ``ate_singles``: Pearson and R² of predicted against held-out average treatment effects of the
  singles (``log2(1 + CP10k)``, all genes), for the model, the mean shift (training-cell effects)
  and the half split of the held-out cells (the noise ceiling).
- ``ate_doubles``: the same for the unseen doubles: the model against the additive baseline (sum of
  the two training single effects), plus how non-additive the simulator's doubles are
  (``nonadditivity``: 1 - R² of additive against the simulator's noise-free truth).
- ``stability``: correlation of ``get_ate`` between two seeds, and equality for the same seed.
- ``training``: steps, epochs, wall time, fraction of target-row edge probabilities outside
  [0.4, 0.6].

Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/gpovae_quality.py --seeds 0 1 2 --large \\
        --out benchmarks/results/gpovae_quality.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scvi
from sklearn.metrics import average_precision_score, r2_score

import pertgrn as pg

LARGE = {
    "n_genes": 300,
    "n_regulators": 60,
    "n_perturbed": 45,
    "n_doubles": 8,
    "n_unmeasured_targets": 3,
    "n_control": 1500,
    "cells_per_condition": 180,
}


#: the screen of issue 9's time budget: 20,000 cells × 100 genes, a default fit within 15 minutes on 2 cores
TIMING = {
    "n_genes": 100,
    "n_regulators": 20,
    "n_perturbed": 12,
    "n_doubles": 4,
    "n_unmeasured_targets": 2,
    "n_control": 4000,
    "cells_per_condition": 1000,
}


def split(adata, fraction: float, seed: int) -> np.ndarray:
    """Held out: ``fraction`` of the cells of every single and the controls, and every double."""
    rng = np.random.default_rng(seed)
    condition = adata.obs["pertgrn_condition"].astype(str).to_numpy()
    delimiter = adata.uns["pertgrn"]["delimiter"]
    test = np.zeros(adata.n_obs, dtype=bool)
    for label in np.unique(condition):
        cells = np.flatnonzero(condition == label)
        if delimiter in label:
            test[cells] = True
        else:
            test[rng.choice(cells, size=round(fraction * cells.size), replace=False)] = True
    return test


def descendants(truth: pd.DataFrame) -> dict[str, set[str]]:
    children: dict[str, set[str]] = {}
    for s, t in truth[["source", "target"]].itertuples(index=False):
        children.setdefault(s, set()).add(t)
    out = {}
    for node in children:
        seen, frontier = set(), list(children[node])
        while frontier:
            n = frontier.pop()
            if n not in seen:
                seen.add(n)
                frontier += list(children.get(n, ()))
        out[node] = seen
    return out


def grn_quality(model, adata) -> dict:
    truth = adata.uns["simulation"]["grn"]
    direct = set(zip(truth["source"], truth["target"], strict=True))
    reach = descendants(truth)
    design = model.design
    singles = [c for c in adata.obs["pertgrn_condition"].cat.categories if design.is_single(c)]
    measured = [n for n in model.nodes if n in adata.var_names]
    pairs = [(s, t) for s in singles for t in measured if s != t]
    y = np.array([p in direct for p in pairs])
    indirect = np.array([(t in reach.get(s, ())) and (s, t) not in direct for s, t in pairs])

    def scores(key: str) -> np.ndarray:
        table = pg.get.grn_df(adata, key=key).pivot(index="source", columns="target", values="weight")
        table = table.reindex(index=singles, columns=measured).fillna(0.0)
        return np.array([abs(table.loc[s, t]) for s, t in pairs])

    grn = model.get_grn()
    ranked = {
        "gpovae": np.array([grn.loc[s, t] for s, t in pairs]),
        "de": scores("baseline_de"),
        "correlation": scores("baseline_correlation"),
    }
    keep = y | indirect
    out = {
        "n_pairs": len(pairs),
        "n_direct": int(y.sum()),
        "n_indirect": int(indirect.sum()),
        "auprc": {k: float(average_precision_score(y, v)) for k, v in ranked.items()} | {"random": float(y.mean())},
        "auprc_indirect": {k: float(average_precision_score(y[keep], v[keep])) for k, v in ranked.items()}
        | {"random": float(y[keep].mean())},
    }
    top = np.sort(ranked["gpovae"])[::-1][:10]
    out["top10_distinct"] = int(len(np.unique(np.round(top, 6))))
    return out


def effects(pred: pd.DataFrame, observed: pd.DataFrame) -> dict:
    pred = pred.loc[observed.index, observed.columns]
    x, y = pred.to_numpy().ravel(), observed.to_numpy().ravel()
    return {"pearson": float(np.corrcoef(x, y)[0, 1]), "r2": float(r2_score(y, x))}


def ate_quality(model, adata, n_cells: int = 2000) -> dict:
    design = model.design
    test = adata.obs["test"].to_numpy()
    observed = pg.get.ate_df(adata, mask=test)
    singles = [p for p in observed.index if design.is_single(p)]
    doubles = [p for p in observed.index if design.n_targets(p) == 2]
    model_ate = model.get_ate(singles + doubles, n_cells=n_cells)
    shift = pg.tl.baseline_predict(adata, method="mean_shift", test_key="test", perturbations=singles)
    half = pg.tl.baseline_predict(adata, method="half_split", test_key="test", perturbations=singles, key_added="half")
    out = {
        "ate_singles": {
            "gpovae": effects(model_ate.loc[singles], observed.loc[singles]),
            "mean_shift": effects(shift, observed.loc[singles]),
            "half_split": effects(half, adata.uns["half"]["ate_reference"]),
        }
    }
    if doubles:
        additive = pg.tl.baseline_predict(adata, method="additive", test_key="test", perturbations=doubles)
        truth = adata.uns["simulation"]["true_lfc"]
        true_doubles = truth.loc[doubles]
        true_additive = pd.DataFrame(
            [truth.loc[design.split(d)].sum(0) for d in doubles], index=doubles, columns=truth.columns
        )
        out["ate_doubles"] = {
            "n_doubles": len(doubles),
            "gpovae": effects(model_ate.loc[doubles], observed.loc[doubles]),
            "additive": effects(additive, observed.loc[doubles]),
            "per_double_model_beats_additive": int(
                sum(
                    np.corrcoef(model_ate.loc[d], observed.loc[d])[0, 1]
                    > np.corrcoef(additive.loc[d], observed.loc[d])[0, 1]
                    for d in doubles
                )
            ),
            "nonadditivity": float(1 - r2_score(true_doubles.to_numpy().ravel(), true_additive.to_numpy().ravel())),
        }
    a = model.get_ate(singles, seed=0, n_cells=n_cells).to_numpy().ravel()
    b = model.get_ate(singles, seed=1, n_cells=n_cells).to_numpy().ravel()
    out["stability"] = {
        "same_seed_identical": bool(
            np.array_equal(a, model.get_ate(singles, seed=0, n_cells=n_cells).to_numpy().ravel())
        ),
        "between_seed_pearson": float(np.corrcoef(a, b)[0, 1]),
        "between_seed_max_abs_diff": float(np.abs(a - b).max()),
        "effect_size_p90": float(np.quantile(np.abs(a), 0.9)),
    }
    return out


def run_screen(name: str, simulate_kwargs: dict, seed: int, preset: str | None, max_epochs: int | None) -> dict:
    scvi.settings.seed = seed
    adata = pg.datasets.simulate(seed=seed, **simulate_kwargs)
    pg.pp.annotate_perturbations(adata, control="control")
    pg.pp.annotate_qc(adata)
    adata.obs["test"] = split(adata, 0.2, seed)
    pg.pp.select_extended_genes(adata, test_key="test")
    t0 = time.perf_counter()
    pg.pp.ot_pairing(adata, seed=seed)
    pairing_s = time.perf_counter() - t0
    pg.tl.baseline_grn(adata, method="de", test_key="test")
    pg.tl.baseline_grn(adata, method="correlation", test_key="test")
    model_kwargs = {} if preset is None else {"preset": preset}
    t0 = time.perf_counter()
    model = pg.tl.fit_gpovae(
        adata,
        test_key="test",
        max_epochs=max_epochs,
        model_kwargs=model_kwargs,
        train_kwargs={"enable_progress_bar": False},
        random_state=seed,
    )
    fit_s = time.perf_counter() - t0
    history = model.history_summary()
    probs = model.get_grn().to_numpy()[: model.n_targets]
    result = {
        "screen": name,
        "seed": seed,
        "n_obs": int(adata.n_obs),
        "n_vars": int(adata.n_vars),
        "n_nodes": len(model.nodes),
        "n_targets": int(model.n_targets),
        "training": {
            "fit_seconds": round(fit_s, 1),
            "ot_pairing_seconds": round(pairing_s, 1),
            "epochs": int(history["train_loss"].notna().sum()),
            "steps": int(model.trainer.global_step) if getattr(model, "trainer", None) else None,
            "target_rows_outside_0.4_0.6": float(((probs < 0.4) | (probs > 0.6)).mean()),
        },
    }
    result.update(grn_quality(model, adata))
    result.update(ate_quality(model, adata))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--large", action="store_true", help="also run the large screen (seed 0)")
    parser.add_argument("--timing", action="store_true", help="also run the 20,000-cell × 100-gene screen (seed 0)")
    parser.add_argument("--preset", default=None, help="GPOVAE preset (default: the model's default)")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/gpovae_quality.json")
    args = parser.parse_args()

    runs = [("default", {}, seed) for seed in args.seeds]
    if args.large:
        runs.append(("large", LARGE, 0))
    if args.timing:
        runs.append(("timing_20k_x_100", TIMING, 0))
    results = []
    for name, kwargs, seed in runs:
        result = run_screen(name, kwargs, seed, args.preset, args.max_epochs)
        results.append(result)
        print(json.dumps(result, indent=1), flush=True)
    report = {
        "platform": platform.platform(),
        "pertgrn": pg.__version__,
        "preset": args.preset or "default",
        "runs": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Predicted effects of 2,000 conditions (``get_ate``): where the time goes, per decoded cell.

A GPO-VAE is built (not trained: the cost of prediction does not depend on the weights) on a
synthetic screen of the K562 shape (``benchmarks/gpovae.py``'s ``k562_screen``: 8,563 genes, 1,000
perturbed targets + 546 extended genes; ``--n-screen-cells`` cells), for each preset. Its
``get_ate`` is asked for ``--n-conditions`` conditions (default 2,000: the 1,000 singles and 1,000
random doubles of the targets) with ``--n-cells`` basal states each. The time is split by wrapping
the model's parts: parsing the labels into a design, the basal states (encoding control cells, or
prior draws), decoding (``_decode``: the module's ``generate``, rows of several conditions per
call), the unit conversion (``_log_expression``: counts drawn at the basal cells' library sizes
for ``preset="pertgrn"``) and the rest (chunking, accumulation into the per-condition sums).
Reported per part: seconds and microseconds per decoded cell (conditions × ``n_cells``), and the
time extrapolated to ``get_ate``'s default of 2,000 cells per condition.

Usage::

    nice python benchmarks/get_ate.py --out benchmarks/results/get_ate.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

PARTS = ("_parse_perturbations", "_basal_states", "_decode", "_log_expression")


def timed_get_ate(model, conditions: list[str], n_cells: int, batch_size: int) -> dict:
    seconds = defaultdict(float)
    calls = defaultdict(int)
    for name in PARTS:
        original = getattr(model, name)

        def wrapper(*a, _original=original, _name=name, **k):
            t0 = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                seconds[_name] += time.perf_counter() - t0
                calls[_name] += 1

        setattr(model, name, wrapper)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        ate = model.get_ate(conditions, n_cells=n_cells, batch_size=batch_size)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        for name in PARTS:
            delattr(model, name)
    decoded = (len(conditions) + 1) * n_cells  # + the control row
    parts = dict(seconds)
    parts["rest"] = total - sum(seconds.values())
    return {
        "n_conditions": len(conditions),
        "n_cells": n_cells,
        "batch_size": batch_size,
        "decoded_cells": decoded,
        "wall_s": total,
        "cpu_s": cpu,
        "parts_s": parts,
        "calls": dict(calls),
        "microseconds_per_decoded_cell": {k: v / decoded * 1e6 for k, v in parts.items()},
        "extrapolated_wall_s_at_2000_cells": sum(
            v * (2000 / n_cells) if k not in ("_parse_perturbations",) else v for k, v in parts.items()
        ),
        "finite": bool(np.isfinite(ate.to_numpy()).all()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-screen-cells", type=int, default=6000)
    parser.add_argument("--n-conditions", type=int, default=2000)
    parser.add_argument("--n-cells", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--presets", nargs="+", default=["pertgrn", "reference"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/get_ate.json")
    args = parser.parse_args()

    import logging

    import scvi
    import torch
    from gpovae import k562_screen

    from pertgrn.models import GPOVAE

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    scvi.settings.seed = args.seed
    import pertgrn as pg

    pg.settings.progress_bar = False
    adata = k562_screen(args.n_screen_cells, seed=args.seed)
    targets = list(adata.uns["pertgrn"]["targets"])
    rng = np.random.default_rng(args.seed)
    singles = targets[: args.n_conditions // 2]
    doubles = set()
    while len(doubles) < args.n_conditions - len(singles):
        a, b = sorted(rng.choice(len(targets), size=2, replace=False))
        doubles.add(f"{targets[a]}+{targets[b]}")
    conditions = singles + sorted(doubles)
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_start": os.getloadavg(),
            "torch": torch.__version__,
        },
        "params": vars(args),
        "shape": list(adata.shape),
        "presets": {},
    }
    for preset in args.presets:
        GPOVAE.setup_anndata(adata)
        model = GPOVAE(adata, preset=preset)
        model.module.eval()
        entry = timed_get_ate(model, conditions, args.n_cells, args.batch_size)
        result["presets"][preset] = entry
        print(preset, json.dumps(entry, indent=1), flush=True)
    result["machine"]["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""What a model fit adds to the user's AnnData, in bytes (in memory and in the .h5ad), at 20k cells × 300 nodes.

Run from the repository root (any checkout, so that two versions can be compared on the same screen):

    OMP_WAIT_POLICY=PASSIVE python benchmarks/anndata_footprint.py [--out benchmarks/results/footprint.json]

The screen is simulated (20,000 cells, 400 genes, 60 single perturbations); the GRN has 300 nodes
(the 60 targets and 240 extended genes). One epoch of GPO-VAE is trained: the size of what is written
does not depend on training length.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import sparse


def nbytes(value) -> int:
    """Memory held by an array, sparse matrix, DataFrame or nested dict/list of them."""
    import pandas as pd

    if sparse.issparse(value):
        return int(value.data.nbytes + value.indices.nbytes + value.indptr.nbytes)
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, pd.DataFrame):
        return int(value.memory_usage(deep=True).sum())
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(nbytes(v) for v in value)
    return 0


def snapshot(adata) -> dict[str, int]:
    out = {}
    for slot in ("obs", "obsm", "obsp", "varp", "uns", "layers", "varm"):
        mapping = getattr(adata, slot)
        if slot == "obs":
            for column in mapping.columns:
                out[f"obs/{column}"] = int(mapping[column].memory_usage(index=False, deep=True))
            continue
        for key in mapping.keys():
            out[f"{slot}/{key}"] = nbytes(mapping[key])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/anndata_footprint.json")
    args = parser.parse_args()

    import pertgrn as pg

    adata = pg.datasets.simulate(
        n_genes=400,
        n_regulators=70,
        n_perturbed=60,
        n_doubles=0,
        n_unmeasured_targets=0,
        n_control=2000,
        cells_per_condition=300,
        seed=0,
    )
    pg.pp.annotate_perturbations(adata)
    pg.pp.annotate_qc(adata)
    targets = set(adata.uns["pertgrn"]["targets"])
    candidates = [g for g in adata.var_names if g not in targets and not g.startswith(("MT-", "RP", "HB"))]
    adata.var["pertgrn_extended"] = adata.var_names.isin(candidates[:240])
    t0 = time.perf_counter()
    pg.pp.ot_pairing(adata, seed=0)
    pairing_s = time.perf_counter() - t0
    n_nodes = len(targets) + int(adata.var["pertgrn_extended"].sum())

    with tempfile.TemporaryDirectory() as folder:
        before_path = Path(folder) / "before.h5ad"
        adata.write_h5ad(before_path)
        before = snapshot(adata)
        pg.tl.fit_gpovae(
            adata,
            max_epochs=1,
            model_kwargs={"n_latent": 10, "decoder_n_hidden": 64, "encoder_n_hidden": 64, "embedding_n_hidden": 64},
            train_kwargs={"enable_progress_bar": False, "early_stopping": False},
        )
        after = snapshot(adata)
        after_path = Path(folder) / "after.h5ad"
        adata.write_h5ad(after_path)
        file_growth = after_path.stat().st_size - before_path.stat().st_size

    added = {k: v for k, v in after.items() if k not in before or v != before[k]}
    result = {
        "commit": os.popen("git rev-parse --short HEAD").read().strip(),
        "n_obs": int(adata.n_obs),
        "n_vars": int(adata.n_vars),
        "n_nodes": int(n_nodes),
        "ot_pairing_s": round(pairing_s, 1),
        "added_in_memory_bytes": dict(sorted(added.items(), key=lambda kv: -kv[1])),
        "added_in_memory_total_mb": round(sum(added.values()) / 2**20, 2),
        "h5ad_growth_mb": round(file_growth / 2**20, 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

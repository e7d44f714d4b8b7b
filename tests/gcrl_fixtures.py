"""A simulated screen with planted regulator modules, shared by the gCRL preprocessing tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

import pertgrn as pg

#: 40 regulators in 4 planted modules; 1,500 control cells carry their variation.
MODULAR_SCREEN = {
    "n_genes": 216,
    "n_regulators": 40,
    "n_tf_modules": 4,
    "n_control": 1500,
    "n_perturbed": 6,
    "n_doubles": 2,
    "cells_per_condition": 40,
    "seed": 0,
}


def modular_tfs(adata) -> list[str]:
    """The measured regulators of a simulated screen (its TF list)."""
    return list(adata.var_names[adata.var["true_tf_module"].to_numpy() >= 0])


def build_modular_screen():
    """The modular screen, annotated, with a reference GRN (defaults) and TF communities (defaults)."""
    adata = pg.datasets.simulate(**MODULAR_SCREEN)
    pg.pp.annotate_perturbations(adata, control="control")
    pg.pp.reference_grn(adata, tfs=modular_tfs(adata))
    pg.pp.tf_communities(adata)
    return adata


def factor_screen(
    seed: int = 0, *, n_cells: int = 1200, n_communities: int = 3, tfs_per_community: int = 8, n_hubs: int = 8
) -> ad.AnnData:
    """Counts generated from known factors: one per TF community, one global, and quadratic targets.

    Each community's TFs follow its factor; ``n_hubs`` TFs outside every community follow the
    global factor (so the global activity, over all TFs, is not the sum of the community
    activities); 40 target genes are a quadratic polynomial of all factors. The TF communities and
    activities (:func:`pertgrn.pp.tf_activity`) are set; ``obsm["true_factors"]`` holds the factors
    (communities first, global last).
    """
    rng = np.random.default_rng(seed)
    d = n_communities + 1
    factors = rng.normal(size=(n_cells, d))
    tfs = [f"TF{c}_{i}" for c in range(n_communities) for i in range(tfs_per_community)]
    tfs += [f"HUB{i}" for i in range(n_hubs)]
    community = np.concatenate([np.repeat(np.arange(n_communities), tfs_per_community), np.full(n_hubs, -1)])
    driver = np.where(community >= 0, community, n_communities)
    log_tf = 0.6 * factors[:, driver] + 0.1 * rng.normal(size=(n_cells, len(tfs)))
    quadratic = np.column_stack([factors[:, i] * factors[:, j] for i in range(d) for j in range(i, d)])
    features = np.hstack([factors, quadratic])
    log_targets = 0.5 * features @ rng.normal(size=(features.shape[1], 40)) / np.sqrt(features.shape[1])
    counts = rng.poisson(np.exp(np.hstack([log_tf, log_targets]) + 3.0)).astype(np.float32)
    adata = ad.AnnData(sparse.csr_matrix(counts), var=pd.DataFrame(index=tfs + [f"G{i}" for i in range(40)]))
    adata.obs["perturbation"] = "control"
    adata.obsm["true_factors"] = factors
    adata.uns["tf_communities"] = {
        "communities": pd.DataFrame({"tf": tfs, "community": community}),
        "tfs": tfs,
        "n_communities": n_communities,
    }
    pg.pp.tf_activity(adata)
    return adata

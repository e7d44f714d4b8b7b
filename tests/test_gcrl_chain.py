"""gCRL end to end on a small simulated screen with planted TF modules (spec §8.20)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import pertgrn as pg
from pertgrn.metrics import tmex
from pertgrn.models import GCRLAE
from pertgrn.tl._align import _zscored_tfs, community_activities


@pytest.mark.slow
def test_reference_grn_to_gcrl_vae_on_a_planted_screen():
    adata = pg.datasets.simulate(
        n_genes=96,
        n_regulators=18,
        n_tf_modules=3,
        n_perturbed=6,
        n_doubles=3,
        n_unmeasured_targets=0,
        n_control=400,
        cells_per_condition=64,
        seed=1,
    )
    pg.pp.annotate_perturbations(adata, control="control")
    held_out = (adata.obs["pertgrn_n_targets"] > 1).to_numpy()
    adata.obs["test"] = held_out
    pg.pp.reference_grn(adata, tfs=adata.var_names[adata.var["true_tf_module"] >= 0], test_key="test")
    pg.pp.tf_communities(adata, n_runs=10, n_perm=0)
    pg.pp.tf_activity(adata, fit_mask=~held_out)
    K = adata.uns["tf_communities"]["n_communities"]
    planted = adata.var["true_tf_module"].to_numpy()
    found = adata.var["pertgrn_tf_community"].to_numpy()
    assert K >= 3 and (found[planted >= 0] >= 0).mean() > 0.8

    # gCRL-AE on the training cells, aligned to the activities
    train = adata[~held_out].copy()
    GCRLAE.setup_anndata(train)
    ae = GCRLAE(train)
    ae.train(max_epochs=10, batch_size=256, enable_progress_bar=False)
    train.obsm["X_gcrlae"] = ae.get_latent_representation()
    pg.tl.align_latents(train)
    assert train.obsm["X_gcrlae_aligned"].shape == (train.n_obs, K + 1)

    # gCRL-VAE: predicted held-out doubles beat the worst case (control cells)
    model = pg.tl.fit_gcrlvae(
        adata,
        test_key="test",
        max_epochs=30,
        random_state=1,
        train_kwargs={"enable_progress_bar": False, "lr": 1e-2},
    )
    centroid = pg.tl.distribution_distances(adata, model=model, test_key="test", min_cells=8)["centroid"]
    assert len(centroid) == 3
    assert centroid["model"].mean() < centroid["control"].mean()

    # its aligned latents match the communities' activities better than those of permuted communities
    controls = np.flatnonzero((adata.obs["perturbation"] == "control").to_numpy() & ~held_out)
    aligned = model.get_latent_representation(indices=controls, latent="u")[:, model.permutation]
    activity = adata.obsm["X_tf_activity"]
    real = tmex(aligned, activity[controls], absolute=False)
    tfs, Z = _zscored_tfs(adata, adata.uns["tf_activity"], None)
    table = pd.DataFrame(adata.uns["tf_communities"]["communities"])
    community_of = dict(zip(table["tf"], table["community"], strict=True))
    labels = np.array([community_of.get(t, -1) for t in tfs])
    partitioned = np.flatnonzero(labels >= 0)
    rng = np.random.default_rng(0)
    null = []
    for _ in range(20):
        shuffled = labels.copy()
        shuffled[partitioned] = rng.permutation(labels[partitioned])
        permuted = np.column_stack([community_activities(Z, shuffled, ~held_out), activity[:, -1]])
        null.append(tmex(aligned, permuted[controls], absolute=False))
    assert real > 0.9 and real > np.mean(null)

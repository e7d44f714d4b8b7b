"""gCRL-AE: TF-only encoder, quadratic decoder, min-validation checkpoint, alignment on known factors (§8.9)."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch
from gcrl_fixtures import factor_screen

import pertgrn as pg
from pertgrn.models import GCRLAE
from pertgrn.models._gcrlvae._ae import quadratic_features


def test_quadratic_features_are_every_monomial_of_degree_one_and_two():
    z = torch.tensor([[2.0, 3.0, 5.0]])
    expected = [2, 3, 5, 4, 6, 10, 9, 15, 25]
    assert quadratic_features(z).tolist() == [expected]


@pytest.fixture(scope="module")
def trained():
    adata = factor_screen()
    GCRLAE.setup_anndata(adata)
    scvi.settings.seed = 0
    model = GCRLAE(adata)
    model.train(max_epochs=30, batch_size=256, lr=1e-2, enable_progress_bar=False)
    adata.obsm["X_gcrlae"] = model.get_latent_representation()
    return model, adata


def test_encoder_reads_only_tfs_and_decoder_is_quadratic(trained):
    model, adata = trained
    tfs = adata.uns["tf_communities"]["tfs"]
    d = adata.uns["tf_communities"]["n_communities"] + 1
    assert model.module.encoder[0].in_features == len(tfs)
    assert adata.var_names[model.module.input_index.numpy()].tolist() == list(tfs)
    assert model.module.decoder.in_features == d + d * (d + 1) // 2 and model.module.decoder.bias is not None
    assert adata.obsm["X_gcrlae"].shape == (adata.n_obs, d)
    # the kept state is the one of lowest validation loss
    history = model.history["validation_loss"]["validation_loss"].to_numpy()
    assert model.best_epoch == int(np.argmin(history))


def test_aligned_ae_latents_recover_the_communities_better_than_permutations(trained):
    _, adata = trained
    pg.tl.align_latents(adata)
    assert adata.uns["gcrlae_aligned"]["tmex"] > 0.9
    pg.tl.community_permutation_test(adata, n_perm=20)
    result = adata.uns["community_permutation_test"]
    assert result["observed_mean"] > result["null"].max()
    assert result["pvalue"] < 1e-4

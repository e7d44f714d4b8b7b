"""gCRL-AE alignment: T-MEX-optimal maps (closed form, gradient) and the community permutation test (§8.6–8.9)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from anndata_equal import assert_equal
from gcrl_fixtures import factor_screen

import pertgrn as pg
from pertgrn.metrics import tmex
from pertgrn.tl._align import (
    closed_form_alignment,
    correlations,
    gradient_alignment,
    one_tailed_ttest,
    tmex_forms,
)


def _mixed(seed: int = 0, n: int = 1500, d: int = 4, noise: float = 0.5):
    rng = np.random.default_rng(seed)
    tfa = rng.normal(size=(n, d))
    tfa[:, -1] += 0.5 * tfa[:, :-1].sum(1)  # a global column correlated with the others
    z = np.tanh(tfa @ rng.normal(size=(d, d))) + noise * rng.normal(size=(n, d))
    return z, tfa


def test_paper_summary_statistics_give_t_18_29_and_p_8e_34():
    # a null sample with exactly the paper's mean and SD (n = 100), against the observed mean 0.3937
    rng = np.random.default_rng(0)
    draws = rng.normal(size=100)
    null = 0.2812 + 0.0615 * (draws - draws.mean()) / draws.std(ddof=1)
    t, p = one_tailed_ttest(null, 0.3937)
    assert t == pytest.approx(18.29, abs=0.005)
    assert p == pytest.approx(8.0e-34, rel=0.01) and p < 1e-33
    # one-tailed: the null scores are tested for lying *below* the observed score
    t_flip, p_flip = one_tailed_ttest(null, 0.1687)
    assert t_flip == pytest.approx(-18.29, abs=0.005) and p_flip > 0.999


def test_closed_form_reaches_one_on_mixed_activities():
    rng = np.random.default_rng(0)
    tfa = rng.normal(size=(400, 4))
    forms = tmex_forms(tfa @ rng.normal(size=(4, 4)), tfa)
    A, rho = closed_form_alignment(forms)
    np.testing.assert_allclose(rho, 1.0, atol=1e-9)


def test_closed_form_is_the_optimum_and_adam_converges_to_it():
    z, tfa = _mixed()
    forms = tmex_forms(z, tfa)
    A, rho = closed_form_alignment(forms)
    best = rho.mean()
    # the metric agrees with the quadratic forms
    assert tmex(z @ A, tfa, given="activities", absolute=False) == pytest.approx(best, abs=1e-10)
    rng = np.random.default_rng(1)
    for _ in range(200):  # no random perturbation scores higher
        assert correlations(A + 0.1 * rng.normal(size=A.shape), forms).mean() <= best + 1e-12
    for seed in range(3):
        _, rho_adam = gradient_alignment(forms, seed=seed)
        assert rho_adam.mean() == pytest.approx(best, abs=1e-3)


def test_orthogonal_alignment_stays_orthogonal():
    z, tfa = _mixed(noise=0.2)
    forms = tmex_forms((z - z.mean(0)) / z.std(0), tfa)
    A, rho = gradient_alignment(forms, constraint="orthogonal", seed=0)
    np.testing.assert_allclose(A.T @ A, np.eye(4), atol=1e-8)
    _, free = closed_form_alignment(forms)
    assert np.abs(rho).mean() <= free.mean() + 1e-9  # a constrained map cannot beat the free one


def test_align_latents_writes_aligned_latents_and_summary(tmp_path):
    z, tfa = _mixed()
    adata = ad.AnnData(np.zeros((z.shape[0], 1), dtype=np.float32))
    adata.obsm["X_gcrlae"], adata.obsm["X_tf_activity"] = z, tfa
    fit = np.arange(adata.n_obs) % 10 != 0
    pg.tl.align_latents(adata, fit_mask=fit)
    result = adata.uns["gcrlae_aligned"]
    assert adata.obsm["X_gcrlae_aligned"].shape == tfa.shape
    assert result["tmex_fit"] == pytest.approx(tmex(adata.obsm["X_gcrlae_aligned"][fit], tfa[fit], absolute=False))
    assert result["tmex"] == pytest.approx(tmex(adata.obsm["X_gcrlae_aligned"], tfa, absolute=False))
    assert 0 < result["tmex_held_out"] <= 1
    pg.tl.align_latents(adata, constraint="orthogonal", n_init=3, key_added="X_rotated")
    assert np.allclose(adata.uns["rotated"]["A"].T @ adata.uns["rotated"]["A"], np.eye(4), atol=1e-8)
    adata.write_h5ad(tmp_path / "aligned.h5ad")
    back = ad.read_h5ad(tmp_path / "aligned.h5ad")
    np.testing.assert_array_equal(back.uns["gcrlae_aligned"]["A"], result["A"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"latent_key": "X_missing"}, KeyError, "X_missing"),
        ({"constraint": "rotation"}, ValueError, "`constraint` must be one of"),
        ({"constraint": "orthogonal", "solver": "closed_form"}, ValueError, "no closed form"),
        ({"fit_mask": np.ones(10, dtype=bool)}, ValueError, "must have shape"),
    ],
)
def test_align_latents_rejects_bad_input_before_writing(kwargs, error, match):
    z, tfa = _mixed(n=100)
    adata = ad.AnnData(np.zeros((100, 1), dtype=np.float32))
    adata.obsm["X_gcrlae"], adata.obsm["X_tf_activity"] = z, tfa
    before = adata.copy()
    with pytest.raises(error, match=match):
        pg.tl.align_latents(adata, **kwargs)
    assert_equal(adata, before)


# ------------------------------------------------------------------------------------------------
# the permutation test on counts generated from known community factors
# ------------------------------------------------------------------------------------------------
def test_permutation_test_prefers_the_true_communities():
    adata = factor_screen()
    adata.obsm["X_latents"] = adata.obsm["true_factors"] @ np.random.default_rng(1).normal(size=(4, 4))
    pg.tl.community_permutation_test(adata, latent_key="X_latents", n_perm=30)
    result = adata.uns["community_permutation_test"]
    assert result["observed_mean"] > 0.9 and result["observed_sd"] == 0.0  # the closed form needs one fit
    assert result["null"].shape == (30,) and result["null_mean"] < result["observed_mean"]
    assert result["t"] > 0 and result["pvalue"] < 1e-6
    assert result["pvalue_permutation"] == pytest.approx(1 / 31) and result["n_distinct_permutations"] == 30
    before = adata.copy()
    with pytest.raises(ValueError, match="`n_perm` must be >= 2, found 1"):
        pg.tl.community_permutation_test(adata, latent_key="X_latents", n_perm=1)
    assert_equal(adata, before)

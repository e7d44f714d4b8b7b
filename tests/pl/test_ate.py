from __future__ import annotations

import numpy as np
import pytest
from matplotlib.axes import Axes

import pertgrn as pg


def _target(adata):
    return adata.uns["pertgrn"]["measured_targets"][0]


def test_scatter_puts_observed_on_x_and_predicted_on_y(screen):
    p = _target(screen)
    ax = pg.pl.ate_scatter(screen, key="shift", perturbation=p, test_key="test", n_labels=4, show=False)
    assert isinstance(ax, Axes)
    points = next(c for c in ax.collections if c.get_gid() == "genes").get_offsets()
    observed = pg.get.ate_df(screen, mask="test", perturbations=[p]).loc[p]
    predicted = screen.uns["shift"]["ate"].loc[p]
    assert len(points) == screen.n_vars
    np.testing.assert_allclose(points[:, 0], observed.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(points[:, 1], predicted.to_numpy(), rtol=1e-6)
    r = np.corrcoef(observed.to_numpy(), predicted.to_numpy())[0, 1]
    box = next(t for t in ax.texts if t.get_gid() == "pearson").get_text()
    assert f"Pearson r = {r:.3f}" in box and f"{screen.n_vars} genes" in box
    assert [line.get_gid() for line in ax.lines].count("identity") == 1
    labels = [t.get_text() for t in ax.texts if t.get_gid() == "gene_label"]
    assert labels == observed.abs().sort_values(ascending=False, kind="stable").index[:4].tolist()
    assert (ax.get_xlabel(), ax.get_title()) == ("observed effect (Δ log2(1 + CP10k))", p)
    assert ax.get_ylabel() == "predicted effect, shift (Δ log2(1 + CP10k))"
    # predictions on the observed scale: no regression line, no legend
    assert "regression" not in [line.get_gid() for line in ax.lines] and ax.get_legend() is None


def test_scatter_draws_a_regression_line_when_scales_differ(screen):
    p = _target(screen)
    observed = pg.get.ate_df(screen, mask="test")
    noise = np.random.default_rng(0).normal(scale=0.01, size=observed.shape)
    screen.uns["shrunk"] = {"ate": 0.1 * observed + noise}  # right direction, a tenth of the size
    ax = pg.pl.ate_scatter(screen, key="shrunk", perturbation=p, test_key="test", show=False)
    (line,) = [line for line in ax.lines if line.get_gid() == "regression"]
    x = observed.loc[p].to_numpy()
    slope, intercept = np.polyfit(x, screen.uns["shrunk"]["ate"].loc[p].to_numpy(), 1)
    assert slope == pytest.approx(0.1, abs=0.02)
    assert line._slope == pytest.approx(slope) and line._xy1[1] == pytest.approx(intercept)
    assert f"slope {slope:.2g}" in next(t for t in ax.texts if t.get_gid() == "pearson").get_text()
    assert any(f"slope {slope:.2g}" in t.get_text() for t in ax.get_legend().get_texts())


def test_scatter_uses_ate_reference_and_gene_subset(screen):
    p = _target(screen)
    pg.tl.baseline_predict(screen, method="half_split", key_added="half")
    genes = list(screen.var_names[:7])
    ax = pg.pl.ate_scatter(screen, key="half", perturbation=p, genes=genes, n_labels=0, show=False)
    points = next(c for c in ax.collections if c.get_gid() == "genes").get_offsets()
    reference = screen.uns["half"]["ate_reference"].loc[p, genes].to_numpy()
    np.testing.assert_allclose(points[:, 0], reference, rtol=1e-6)
    assert [t for t in ax.texts if t.get_gid() == "gene_label"] == []


def test_scatter_errors(screen):
    with pytest.raises(KeyError, match="no predicted effects"):
        pg.pl.ate_scatter(screen, key="shift", perturbation="NOPE", show=False)
    with pytest.raises(KeyError, match="baseline_predict"):
        pg.pl.ate_scatter(screen, key="baseline_de", perturbation=_target(screen), show=False)
    with pytest.raises(KeyError, match="not found in adata.obs"):
        pg.pl.ate_scatter(screen, key="shift", perturbation=_target(screen), test_key="nope", show=False)
    with pytest.raises(KeyError, match="no observed and predicted"):
        pg.pl.ate_scatter(screen, key="shift", perturbation=_target(screen), genes=["nope"], show=False)


def test_heatmap_shows_observed_and_predicted_on_one_scale(screen):
    axes = pg.pl.ate_heatmap(screen, key="shift", n_genes=10, test_key="test", show=False)
    assert set(axes) == {"observed", "predicted", "colorbar"}
    predicted = screen.uns["shift"]["ate"]
    observed = pg.get.ate_df(screen, mask="test", perturbations=list(predicted.index))
    genes = observed.abs().max(axis=0).sort_values(ascending=False, kind="stable").index[:10]
    obs_img, pred_img = axes["observed"].get_images()[0], axes["predicted"].get_images()[0]
    assert obs_img.get_array().shape == pred_img.get_array().shape == (len(predicted), 10)
    np.testing.assert_allclose(obs_img.get_array(), observed[genes].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(pred_img.get_array(), predicted[genes].to_numpy(), rtol=1e-6)
    assert [t.get_text() for t in axes["observed"].get_xticklabels()] == list(genes)
    assert [t.get_text() for t in axes["observed"].get_yticklabels()] == list(predicted.index)
    vmax = max(np.abs(observed[genes].to_numpy()).max(), np.abs(predicted[genes].to_numpy()).max())
    for image in (obs_img, pred_img):
        assert image.norm.vmin == pytest.approx(-vmax) and image.norm.vmax == pytest.approx(vmax)
    assert pred_img.colorbar is not None and pred_img.colorbar.ax is axes["colorbar"]
    assert axes["observed"].get_ylabel() == "perturbation"


def test_heatmap_with_chosen_perturbations_and_genes(screen):
    perts = list(screen.uns["shift"]["ate"].index[:2])
    genes = list(screen.var_names[[5, 1, 3]])
    axes = pg.pl.ate_heatmap(screen, key="shift", perturbations=perts, genes=genes, vmax=2.0, show=False)
    assert axes["predicted"].get_images()[0].get_array().shape == (2, 3)
    assert [t.get_text() for t in axes["predicted"].get_xticklabels()] == genes
    assert axes["predicted"].get_images()[0].norm.vmax == 2.0
    with pytest.raises(ValueError, match="n_genes"):
        pg.pl.ate_heatmap(screen, key="shift", n_genes=0, show=False)

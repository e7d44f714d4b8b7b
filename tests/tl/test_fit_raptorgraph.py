"""tl.fit_raptorgraph and the RAPTORGraph analysis tools: what is written, h5ad round trips, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData, read_h5ad

import pertgrn as pg
from pertgrn._grn_store import read_grn, read_record
from pertgrn.models import RaptorGraph

SMALL = {"decoder_n_hidden": 32, "n_subgraphs": 3}
QUIET = {"enable_progress_bar": False, "batch_size": 64, "lr": 3e-3}
TINY = {
    "n_genes": 60,
    "n_regulators": 8,
    "n_perturbed": 5,
    "n_doubles": 6,
    "n_unmeasured_targets": 1,
    "n_control": 100,
    "cells_per_condition": 24,
}


def _prepared() -> AnnData:
    adata = pg.datasets.simulate(**TINY)
    pg.pp.annotate_perturbations(adata)
    adata.obs["test"] = (adata.obs["pertgrn_n_targets"] > 1).to_numpy()
    pg.pp.ot_pairing(adata)
    return adata


@pytest.fixture(scope="module")
def fitted() -> tuple[RaptorGraph, AnnData]:
    adata = _prepared()
    model = pg.tl.fit_raptorgraph(adata, test_key="test", max_epochs=3, model_kwargs=SMALL, train_kwargs=QUIET)
    return model, adata


def test_writes_the_contract_and_survives_h5ad(fitted, tmp_path):
    model, adata = fitted
    assert isinstance(model, RaptorGraph) and model.is_trained
    d = model.module.n_latent
    assert d == 5 + 4
    np.testing.assert_allclose(adata.obsm["X_raptorgraph"], model.get_latent_representation(), rtol=1e-5)
    record = adata.uns["raptorgraph"]
    assert record["level"] == "latent" and record["signed"]
    assert record["keys"] == {"obsm": "X_raptorgraph", "varp": "raptorgraph_grn", "varm": "raptorgraph_loadings"}
    assert list(record["latents"]) == model.latent_names
    assert record["edge_rule"]["min_weight"] == pytest.approx(0.3)
    np.testing.assert_allclose(record["dag"], model.module.dag.adjacency.detach().numpy(), rtol=1e-6)
    shifts = np.asarray(record["latent_shift"])
    np.testing.assert_allclose(shifts[:5], model.module.modulator.shift.detach().numpy(), rtol=1e-6)
    assert np.isnan(shifts[5:]).all()
    loadings = adata.varm["raptorgraph_loadings"]
    assert loadings.shape == (adata.n_vars, d) and loadings.dtype == np.float32
    np.testing.assert_allclose(loadings, model.get_loadings().to_numpy(), rtol=1e-4, atol=1e-6)
    # predicted effects of every observed condition, doubles included (their singles were trained)
    ate = record["ate"]
    doubles = [c for c in adata.obs["pertgrn_condition"].cat.categories if "+" in c]
    assert set(doubles) <= set(ate.index) and ate.shape[1] == adata.n_vars
    history = record["history"]
    assert len(history) == 3 and {"train_loss", "mmd_train", "acyclicity_train", "dagma_mu"} <= set(history.columns)
    assert record["params"]["setup"]["pairing"] == "ot" and record["params"]["test_key"] == "test"
    # the varp lift: A between target latents whose targets are measured, where |A| > 0.3
    lifted = read_grn(adata, "raptorgraph", level="gene")
    assert lifted.nodes == model.targets

    adata.write_h5ad(tmp_path / "fitted.h5ad")
    back = read_h5ad(tmp_path / "fitted.h5ad")
    np.testing.assert_allclose(back.varm["raptorgraph_loadings"], loadings)
    np.testing.assert_allclose(read_record(back, "raptorgraph").dag, record["dag"])
    pd.testing.assert_frame_equal(back.uns["raptorgraph"]["ate"], ate, check_dtype=False)


def test_held_out_doubles_never_train(fitted):
    model, adata = fitted
    test = adata.obs["test"].to_numpy()
    partners = adata.obsm["_pertgrn_partner_index"][:, 0]
    assert not test[partners[partners >= 0]].any()  # never a partner
    splitter_train = np.flatnonzero(~test)
    assert set(model.predictable_targets) == set(adata.uns["pertgrn"]["targets"])
    assert len(splitter_train) < adata.n_obs


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pairing": "sinkhorn"}, ValueError, "pairing"),
        ({"model_kwargs": {"beta": 0.4}}, TypeError, "Unknown RaptorGraph parameter"),
        ({"train_kwargs": {"learning_rate": 1e-3}}, TypeError, "Unknown training argument"),
        ({"test_key": "nope"}, KeyError, "test_key"),
        ({"pairing_key": "missing"}, KeyError, "missing"),
    ],
)
def test_bad_input_raises_before_writing(kwargs, error, match):
    adata = _prepared()
    before = {slot: sorted(getattr(adata, slot).keys()) for slot in ("obsm", "varm", "varp", "uns", "obsp")}
    columns = list(adata.obs.columns)
    with pytest.raises(error, match=match):
        pg.tl.fit_raptorgraph(adata, max_epochs=1, **kwargs)
    assert {slot: sorted(getattr(adata, slot).keys()) for slot in before} == before
    assert list(adata.obs.columns) == columns


def test_random_pairing_fits_without_a_plan():
    adata = _prepared()
    del adata.obsp["ot_pairing"]
    pg.tl.fit_raptorgraph(
        adata, test_key="test", pairing="random", max_epochs=1, model_kwargs=SMALL, train_kwargs=QUIET
    )
    assert adata.uns["raptorgraph"]["params"]["setup"]["pairing"] == "random"
    assert "_pertgrn_partner_index" not in adata.obsm


# ---------------------------------------------------------------------------------------------
# the analysis tools
# ---------------------------------------------------------------------------------------------
def test_distribution_distances_against_the_baselines(fitted):
    model, adata = fitted
    scores = pg.tl.distribution_distances(adata, model=model, test_key="test", seed=1)
    doubles = sorted(c for c in adata.obs["pertgrn_condition"].cat.categories if "+" in c)
    assert list(scores.index) == doubles
    assert list(scores["mk_mmd"].columns) == ["model", "control", "additive", "half_split"]
    assert (scores["n_cells"] == 12).all()
    assert (scores["mk_mmd"] >= 0).all().all() and (scores["centroid"] >= 0).all().all()
    # the half-split reference is closer to the held-out cells than untouched controls
    assert (scores[("mk_mmd", "half_split")] < scores[("mk_mmd", "control")]).mean() > 0.5
    again = pg.tl.distribution_distances(adata, model=model, test_key="test", seed=1)
    pd.testing.assert_frame_equal(scores, again)
    with pytest.raises(ValueError, match="Cannot score"):
        pg.tl.distribution_distances(adata, model=model, test_key="test", perturbations=["control"])


def test_distribution_distances_control_baseline_by_hand(fitted):
    """The control column is the MK-MMD of random training controls against the reference half."""
    model, adata = fitted
    label = sorted(c for c in adata.obs["pertgrn_condition"].cat.categories if "+" in c)[0]
    scores = pg.tl.distribution_distances(adata, model=model, test_key="test", perturbations=[label], seed=3)
    rng = np.random.default_rng(3)
    conditions = adata.obs["pertgrn_condition"].astype(str).to_numpy()
    test = adata.obs["test"].to_numpy()
    expression = pg._utils.log_normalize(adata.X, target_sum=float(model.module.target_sum)).toarray()
    cells = rng.permutation(np.flatnonzero(test & (conditions == label)))
    reference = cells[cells.size // 2 :]
    controls = np.flatnonzero(~test & (conditions == "control"))
    chosen = rng.choice(controls, size=reference.size, replace=reference.size > controls.size)
    expected = pg.metrics.mk_mmd(expression[chosen], expression[reference], kernel_num=10)
    assert scores.loc[label, ("mk_mmd", "control")] == pytest.approx(expected, rel=1e-6)


def test_genetic_interactions_and_plot(fitted):
    import matplotlib

    matplotlib.use("Agg")
    _, adata = fitted
    precision = pg.tl.genetic_interactions(adata, key="raptorgraph", k=3)
    assert list(precision.index) == ["synergy", "suppression", "neomorphism", "redundancy", "epistasis"]
    assert ((precision >= 0) & (precision <= 1)).all()
    entry = adata.uns["raptorgraph_interactions"]
    assert entry["params"]["n_doubles"] == 6 and entry["params"]["definition"] == "additive"
    observed = entry["observed"]
    ate = pg.get.ate_df(adata)
    label = observed.index[0]
    a, b = label.split("+")
    expected = pg.metrics.additive_interaction_scores(ate.loc[a], ate.loc[b], ate.loc[label])
    np.testing.assert_allclose(observed.loc[label, expected.index].to_numpy(dtype=float), expected.to_numpy())
    gears = pg.tl.genetic_interactions(adata, key="raptorgraph", k=3, definition="gears", key_added="gi_gears")
    assert set(gears.index) == set(precision.index)
    axes = pg.pl.interactions(adata, key="raptorgraph_interactions", show=False)
    assert set(axes) == set(precision.index)
    ax = pg.pl.interactions(adata, types="synergy", show=False)
    assert "P@3" in ax.get_title()
    with pytest.raises(ValueError, match="definition"):
        pg.tl.genetic_interactions(adata, key="raptorgraph", definition="norman")
    with pytest.raises(KeyError, match="fit_raptorgraph"):
        pg.tl.genetic_interactions(adata, key="nothing")


def test_reverse_perturbation_with_and_without_the_model(fitted):
    model, adata = fitted
    hits = pg.tl.reverse_perturbation(adata, key="raptorgraph", model=model, k=(1, 3, 5))
    assert list(hits.columns) == ["correct", "relevant"] and list(hits.index) == [1, 3, 5]
    assert (hits["relevant"] >= hits["correct"]).all() and hits["correct"].is_monotonic_increasing
    entry = adata.uns["raptorgraph_reverse_perturbation"]
    n_genes = len(entry["genes"])
    assert entry["n_candidates"] == n_genes * (n_genes - 1) // 2  # every pair, observed or not
    stored = pg.tl.reverse_perturbation(adata, key="raptorgraph", k=1, key_added="rp_stored")
    assert adata.uns["rp_stored"]["n_candidates"] == 6
    assert stored.loc[1, "relevant"] >= stored.loc[1, "correct"]
    with pytest.raises(ValueError, match="k"):
        pg.tl.reverse_perturbation(adata, key="raptorgraph", k=0)


def test_enrich_latents_and_plot(fitted):
    import matplotlib

    matplotlib.use("Agg")
    _, adata = fitted
    genes = list(adata.var_names)
    sets = {"first": genes[:20], "second": genes[20:40], "tiny": genes[:3]}
    table = pg.tl.enrich_latents(adata, key="raptorgraph", gene_sets=sets, min_size=10, n_permutations=100)
    entry = adata.uns["raptorgraph_enrichment"]
    assert list(entry["nes"].columns) == ["first", "second"]  # "tiny" is below min_size
    assert list(entry["nes"].index) == list(adata.uns["raptorgraph"]["latents"])
    assert set(table.columns) == {"latent", "gene_set", "nes", "fdr"} and len(table) == 2 * 9
    assert ((table["fdr"] >= 0) & (table["fdr"] <= 1)).all()
    # orientation: a target latent's perturbation signature is its loadings times its learned shift
    by_latent = pg.tl.enrich_latents(
        adata,
        key="raptorgraph",
        gene_sets=sets,
        min_size=10,
        orientation="latent",
        n_permutations=100,
        key_added="by_latent",
    )
    shifts = np.asarray(adata.uns["raptorgraph"]["latent_shift"])
    flipped = [n for n, s in zip(adata.uns["raptorgraph"]["latents"], shifts, strict=True) if np.isfinite(s) and s < 0]
    merged = table.merge(by_latent, on=["latent", "gene_set"], suffixes=("_p", "_l"))
    for name in flipped:
        rows = merged[merged["latent"] == name]
        np.testing.assert_allclose(rows["nes_p"], -rows["nes_l"], rtol=0.35)
    ax = pg.pl.enrichment(adata, show=False)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(entry["nes"].index)
    with pytest.raises(ValueError, match="No gene set"):
        pg.tl.enrich_latents(adata, key="raptorgraph", gene_sets={"x": ["NOT_A_GENE"] * 20})
    with pytest.raises(FileNotFoundError):
        pg.tl.enrich_latents(adata, key="raptorgraph", gene_sets="missing.gmt")


def test_latent_dag_plot(fitted):
    import matplotlib

    matplotlib.use("Agg")
    _, adata = fitted
    ax = pg.pl.latent_dag(adata, threshold=0.0, show=False)
    edges = [p for p in ax.patches if p.get_gid() == "dag_edge"]
    dag = np.asarray(adata.uns["raptorgraph"]["dag"])
    assert len(edges) == int((np.abs(dag) > 0).sum())
    ax = pg.pl.latent_dag(adata, threshold=0.0, top_edges=3, show=False)
    assert len([p for p in ax.patches if p.get_gid() == "dag_edge"]) == 3
    with pytest.raises(ValueError, match="gene-level"):
        adata_gene = adata.copy()
        pg.tl.baseline_grn(adata_gene, method="de", key_added="de")
        pg.pl.latent_dag(adata_gene, key="de", show=False)


@pytest.mark.realdata
def test_enrich_latents_reads_the_hallmark_gmt(shared_data):
    """Hallmark gene sets from the shared GMT (no network); genes named after Hallmark members."""
    gmt = shared_data / "priors" / "msigdb_hallmark_v7.0.gmt"
    sets = pg.tl._enrichment.read_gene_sets(gmt)
    assert sets["source"].nunique() == 50
    e2f = sets.loc[sets["source"] == "HALLMARK_E2F_TARGETS", "target"].tolist()
    other = sets.loc[sets["source"] != "HALLMARK_E2F_TARGETS", "target"].drop_duplicates()
    other = [g for g in other if g not in set(e2f)][:300]
    genes = e2f[:100] + other
    rng = np.random.default_rng(0)
    adata = AnnData(np.zeros((1, len(genes)), dtype=np.float32), var=pd.DataFrame(index=genes))
    loadings = rng.normal(size=(len(genes), 2))
    loadings[:100, 0] -= 2.0  # latent "EGR1" lowers E2F targets
    adata.varm["toy_loadings"] = loadings
    adata.uns["toy"] = {"latents": ["EGR1", "free_0"], "keys": {"varm": "toy_loadings"}}
    table = pg.tl.enrich_latents(adata, key="toy", gene_sets=gmt, orientation="latent", n_permutations=200)
    top = table.iloc[0]
    assert (top["latent"], top["gene_set"]) == ("EGR1", "HALLMARK_E2F_TARGETS")
    assert top["nes"] < 0 and top["fdr"] < 0.05

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata_equal import assert_equal
from scipy import sparse

import pertgrn as pg

TARGETS = ["IRF1", "JAK2", "STAT1", "STAT2"]


def _library():
    """Two guides per target and two non-targeting guides, with their targets."""
    guides = [f"{t}g{i}" for t in TARGETS for i in (1, 2)] + ["NTg1", "NTg2"]
    targets = [t for t in TARGETS for _ in (1, 2)] + ["non-targeting", "non-targeting"]
    return guides, targets


def _synthetic(n_cells=600, seed=0, *, background_max=3, foreground_min=12):
    """Guide counts with a known assignment: each cell carries 0, 1 or 2 guides.

    Carried guides get 12–200 UMIs (log-normal), every other entry a Poisson(0.4) background capped at 3,
    so thresholds between 4 and 12 recover the truth exactly.
    """
    rng = np.random.default_rng(seed)
    guides, targets = _library()
    n_guides = len(guides)
    carried = np.zeros((n_cells, n_guides), dtype=bool)
    n_carried = rng.choice([0, 1, 2], size=n_cells, p=[0.1, 0.75, 0.15])
    for i, k in enumerate(n_carried):
        carried[i, rng.choice(n_guides, size=k, replace=False)] = True
    background = np.minimum(rng.poisson(0.4, size=carried.shape), background_max)
    foreground = np.clip(np.round(np.exp(rng.normal(np.log(60), 0.6, size=carried.shape))), foreground_min, 200)
    counts = np.where(carried, foreground, background).astype(np.int64)
    gdo = ad.AnnData(
        sparse.csr_matrix(counts),
        obs=pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]),
        var=pd.DataFrame({"target": targets}, index=guides),
    )
    return gdo, carried


def _expected_label(row: np.ndarray, targets: list[str]) -> str:
    hit = sorted({targets[j] for j in np.flatnonzero(row) if targets[j] != "non-targeting"})
    if not row.any():
        return "unassigned"
    return "+".join(hit) if hit else "non-targeting"


def test_threshold_recovers_a_known_assignment():
    gdo, carried = _synthetic()
    _, targets = _library()
    pg.pp.assign_guides(gdo, method="threshold", min_umi=5)
    expected = [_expected_label(row, targets) for row in carried]
    assert gdo.obs["perturbation"].astype(str).tolist() == expected
    assert np.array_equal(gdo.obs["perturbation_n_guides"].to_numpy(), carried.sum(axis=1))
    names = np.asarray(gdo.var_names)
    assert gdo.obs["perturbation_guides"].astype(str).tolist() == ["+".join(names[row]) for row in carried]
    record = gdo.uns["pertgrn"]["assign_guides"]
    assert record["params"]["method"] == "threshold"
    assert record["guides"]["n_cells_assigned"].tolist() == carried.sum(axis=0).tolist()
    labels = np.asarray(expected)
    assert record["n_cells"]["unassigned"] == int((labels == "unassigned").sum())
    assert record["n_cells"]["combination"] == int(np.char.find(labels.astype(str), "+").__ge__(0).sum())
    assert sum(record["n_cells"].values()) == gdo.n_obs


def test_max_takes_the_strongest_guide():
    gdo, carried = _synthetic(seed=1)
    counts = gdo.X.toarray()
    pg.pp.assign_guides(gdo, method="max", min_umi=5)
    _, targets = _library()
    top = counts.argmax(axis=1)
    for i in range(gdo.n_obs):
        if not carried[i].any():
            assert gdo.obs["perturbation"].iloc[i] == "unassigned"  # background never reaches 5 UMIs
        else:
            assert gdo.obs["perturbation_n_guides"].iloc[i] == 1
            assert gdo.obs["perturbation_guides"].iloc[i] == gdo.var_names[top[i]]
            assert carried[i, top[i]]
            expected = targets[top[i]]
            assert gdo.obs["perturbation"].iloc[i] == expected


def test_mixture_recovers_a_known_assignment():
    # a background that is not capped: the mixture has to find the valley itself
    rng = np.random.default_rng(2)
    gdo, carried = _synthetic(n_cells=1500, seed=2, background_max=1000)
    counts = gdo.X.toarray()
    counts = np.where(carried, counts, rng.poisson(1.0, size=counts.shape))
    gdo.X = sparse.csr_matrix(counts)
    pg.pp.assign_guides(gdo, method="mixture", min_umi=1)
    called = np.zeros_like(carried)
    names = list(gdo.var_names)
    for i, text in enumerate(gdo.obs["perturbation_guides"].astype(str)):
        for g in filter(None, text.split("+")):
            called[i, names.index(g)] = True
    assert (called == carried).mean() > 0.995
    assert (called == carried).all(axis=1).mean() > 0.97
    fits = gdo.uns["pertgrn"]["assign_guides"]["guides"]
    # the foreground sits near log2(60) ≈ 5.9, the background rate near the log2 of 1–3 UMIs
    assert fits["gaussian_mean"].between(5.0, 6.8).all()
    assert (fits["poisson_rate"] < 2.0).all()


def test_labels_of_multiplets_controls_and_crowded_cells():
    guides = ["A1", "A2", "B1", "NT1", "C1"]
    var = pd.DataFrame({"target": ["A", "A", "B", "NT", "C"]}, index=guides)
    counts = np.array(
        [
            [9, 9, 0, 0, 0],  # two guides of one gene: "A"
            [9, 0, 0, 9, 0],  # a targeting and a non-targeting guide: "A"
            [0, 0, 0, 9, 0],  # non-targeting only
            [0, 0, 9, 0, 9],  # two genes: "B+C"
            [9, 9, 9, 9, 9],  # more than max_guides
            [0, 0, 0, 0, 0],  # nothing
        ]
    )
    gdo = ad.AnnData(counts, var=var)
    pg.pp.assign_guides(gdo, method="threshold", min_umi=5, max_guides=4, control="ctrl")
    assert gdo.obs["perturbation"].tolist() == ["A", "A", "ctrl", "B+C", "multiple", "unassigned"]
    assert gdo.obs["perturbation_n_guides"].tolist() == [2, 2, 1, 2, 5, 0]
    # control labels last, targets sorted first
    assert list(gdo.obs["perturbation"].cat.categories) == ["A", "B+C", "ctrl", "unassigned", "multiple"]
    assert gdo.uns["pertgrn"]["assign_guides"]["guides"]["non_targeting"].tolist() == [False, False, False, True, False]


def test_obsm_with_names_in_uns_and_a_target_pattern():
    gdo, carried = _synthetic(seed=3)
    guides, _ = _library()
    expression = ad.AnnData(np.ones((gdo.n_obs, 2)), obs=pd.DataFrame(index=gdo.obs_names))
    expression.obsm["grna_counts"] = gdo.X.copy()
    expression.uns["grna_names"] = np.asarray(guides)
    before = expression.copy()
    out = pg.pp.assign_guides(
        expression, guide_counts="grna_counts", target_pattern=r"^(.+)g\d+$", method="threshold", copy=True
    )
    assert_equal(expression, before)  # copy=True leaves the input alone
    reference = gdo.copy()
    pg.pp.assign_guides(reference, method="threshold")
    # NTg1 → "NT", a known control label: the control label is written for those cells
    assert out.obs["perturbation"].astype(str).tolist() == reference.obs["perturbation"].astype(str).tolist()
    assert out.uns["pertgrn"]["assign_guides"]["source"] == "adata.obsm['grna_counts']"
    # a DataFrame in obsm names its own columns
    frame = expression.copy()
    frame.obsm["guides"] = pd.DataFrame(gdo.X.toarray(), index=gdo.obs_names, columns=guides)
    pg.pp.assign_guides(frame, guide_counts="guides", targets=dict(zip(guides, reference.var["target"], strict=True)))
    assert frame.obs["perturbation"].astype(str).tolist() == reference.obs["perturbation"].astype(str).tolist()


def test_separate_guide_anndata_is_matched_by_obs_names():
    gdo, _ = _synthetic(n_cells=50, seed=4)
    expression = ad.AnnData(np.ones((60, 3)), obs=pd.DataFrame(index=[f"cell{i}" for i in range(59, -1, -1)]))
    pg.pp.assign_guides(expression, guide_counts=gdo, method="threshold")
    pg.pp.assign_guides(gdo, method="threshold")
    by_name = gdo.obs["perturbation"].astype(str)
    got = expression.obs["perturbation"].astype(str)
    for name in expression.obs_names:
        assert got[name] == (by_name[name] if name in by_name.index else "unassigned")
    assert "perturbation" not in gdo.var.columns


def test_mudata_writes_into_the_guide_and_expression_modalities(tmp_path):
    mudata = pytest.importorskip("mudata")
    gdo, _ = _synthetic(n_cells=80, seed=5)
    rna = ad.AnnData(np.ones((70, 4)), obs=pd.DataFrame(index=gdo.obs_names[:70]))
    mdata = mudata.MuData({"rna": rna, "gdo": gdo})
    pg.pp.assign_guides(mdata, method="threshold")
    expected = pg.pp.assign_guides(gdo, method="threshold", copy=True).obs["perturbation"].astype(str)
    assert mdata.mod["gdo"].obs["perturbation"].astype(str).tolist() == expected.tolist()
    assert mdata.mod["rna"].obs["perturbation"].astype(str).tolist() == expected.iloc[:70].tolist()
    assert mdata.obs["perturbation"].astype(str).reindex(gdo.obs_names).tolist() == expected.tolist()
    assert mdata.mod["rna"].uns["pertgrn"]["assign_guides"]["params"]["method"] == "threshold"
    path = tmp_path / "screen.h5mu"
    mdata.write(path)
    back = mudata.read_h5mu(path)
    assert back.mod["rna"].obs["perturbation"].astype(str).tolist() == expected.iloc[:70].tolist()
    with pytest.raises(KeyError, match="Did you mean 'gdo'"):
        pg.pp.assign_guides(mdata, guide_counts="gd0")


def test_round_trip(tmp_path):
    gdo, _ = _synthetic(n_cells=100, seed=6)
    pg.pp.assign_guides(gdo, method="mixture")
    path = tmp_path / "gdo.h5ad"
    gdo.write_h5ad(path)
    assert_equal(ad.read_h5ad(path), gdo)


def _with_obsm():
    gdo, _ = _synthetic(n_cells=40, seed=7)
    guides, _ = _library()
    adata = ad.AnnData(np.ones((gdo.n_obs, 2)), obs=pd.DataFrame(index=gdo.obs_names))
    adata.obsm["grna_counts"] = gdo.X.copy()
    adata.uns["grna_names"] = np.asarray(guides)
    return adata


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"guide_counts": "grna_count"}, KeyError, "Did you mean 'grna_counts'"),
        ({"guide_counts": "grna_counts", "method": "maximum"}, ValueError, "Did you mean 'max'"),
        ({"guide_counts": "grna_counts"}, KeyError, "target_pattern"),
        ({"guide_counts": "grna_counts", "target_pattern": r"^(.+)x\d+$"}, ValueError, "does not match"),
        ({"guide_counts": "grna_counts", "target_pattern": r"^.+$"}, ValueError, "exactly one group"),
        ({"guide_counts": "grna_counts", "target_pattern": r"^(.+)g\d+$", "min_umi": 0}, ValueError, "at least 1"),
        ({"guide_counts": "grna_counts", "target_pattern": r"^(.+)g\d+$", "delimiter": "A"}, ValueError, "delimiter"),
        (
            {"guide_counts": "grna_counts", "target_pattern": r"^(.+)g\d+$", "unassigned": "multiple"},
            ValueError,
            "must differ",
        ),
        ({"guide_counts": "grna_counts", "guide_names": ["a", "b"], "targets": ["A", "B"]}, ValueError, "columns"),
    ],
)
def test_bad_input_leaves_adata_untouched(kwargs, error, match):
    adata = _with_obsm()
    before = adata.copy()
    with pytest.raises(error, match=match):
        pg.pp.assign_guides(adata, **kwargs)
    assert_equal(adata, before)


def test_non_integer_and_duplicated_guides_are_rejected():
    gdo, _ = _synthetic(n_cells=20, seed=8)
    logged = gdo.copy()
    logged.X = sparse.csr_matrix(np.log1p(gdo.X.toarray()))
    with pytest.raises(ValueError, match="integer guide UMI counts"):
        pg.pp.assign_guides(logged)
    twice = gdo.copy()
    twice.var_names = ["g"] * twice.n_vars
    with pytest.raises(ValueError, match="unique"):
        pg.pp.assign_guides(twice)
    assert "perturbation" not in logged.obs and "perturbation" not in twice.obs


def test_summary_is_logged_at_the_default_verbosity(caplog):
    gdo, _ = _synthetic(n_cells=30, seed=9)
    with caplog.at_level(logging.NOTSET):
        pg.pp.assign_guides(gdo)  # the logger's own level: settings.verbosity (default: warnings and summaries)
    summaries = [r for r in caplog.records if r.name == "pertgrn" and r.getMessage().startswith("assign_guides")]
    assert len(summaries) == 1 and "cells assigned" in summaries[0].getMessage()


@pytest.mark.realdata
def test_papalexi_agrees_with_its_labels(shared_data):
    adata = ad.read_h5ad(shared_data / "papalexi2021_thp1_lowmoi.h5ad")
    truth = adata.obs["perturbation"].astype(str).to_numpy()
    common = {"guide_counts": "grna_counts", "target_pattern": r"^(.+)g\d+$", "copy": True}
    # its labels are the target of each cell's most-read guide: "max" must reproduce them
    best = pg.pp.assign_guides(adata, method="max", min_umi=1, **common)
    assert (best.obs["perturbation"].astype(str).to_numpy() == truth).all()
    assert best.uns["pertgrn"]["assign_guides"]["n_cells"]["control"] == int((truth == "non-targeting").sum())
    # threshold and mixture also see the background guides: most cells get one label, and it agrees
    for method, overall, single in (("threshold", 0.80, 0.98), ("mixture", 0.88, 0.98)):
        labels = pg.pp.assign_guides(adata, method=method, **common).obs["perturbation"].astype(str).to_numpy()
        one = ~np.isin(labels, ["unassigned", "multiple"]) & ~pd.Series(labels).str.contains("+", regex=False)
        assert (labels == truth).mean() > overall, method
        assert (labels[one] == truth[one]).mean() > single, method

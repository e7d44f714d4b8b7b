from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata_equal import assert_equal

import pertgrn as pg
from pertgrn.pp._split_cells import n_held_out


def _screen(sizes: dict[str, int], *, seed=0):
    labels = [label for label, n in sizes.items() for _ in range(n)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))  # conditions interleaved, as in a real screen
    obs = pd.DataFrame(
        {"perturbation": np.asarray(labels)[order], "replicate": rng.choice(["r1", "r2"], size=len(labels))},
        index=[f"c{i}" for i in range(len(labels))],
    )
    adata = ad.AnnData(np.ones((len(labels), 3), dtype=np.float32), obs=obs)
    pg.pp.annotate_perturbations(adata, control="control")
    return adata


SIZES = {"control": 100, "A": 40, "B": 23, "A+B": 11, "C": 3, "D": 2, "E": 1}


def test_every_condition_is_split_in_proportion():
    adata = _screen(SIZES)
    pg.pp.split_cells(adata, fraction=0.2, seed=0)
    test = adata.obs["test"]
    assert test.dtype == bool
    per_condition = test.groupby(adata.obs["pertgrn_condition"], observed=True).agg(["sum", "size"])
    # round(0.2 n), halves up, at least one test and one training cell from two cells on; a lone cell trains
    expected = {"control": 20, "A": 8, "B": 5, "A+B": 2, "C": 1, "D": 1, "E": 0}
    assert per_condition["sum"].to_dict() == expected
    assert (per_condition["size"] - per_condition["sum"] >= 1).all()
    record = adata.uns["pertgrn"]["split_cells"]
    assert record["n_test"] == sum(expected.values()) and record["n_train"] == adata.n_obs - record["n_test"]
    assert record["params"]["by"] == ["pertgrn_condition"]
    assert record["strata"].loc["A", "n_test"] == 8 and record["strata"].loc["E", "n_cells"] == 1
    # the design recorded by annotate_perturbations is kept
    assert adata.uns["pertgrn"]["control"] == "control"


def test_n_held_out_rule():
    assert n_held_out(np.array([0, 1, 2, 3, 4, 5, 7, 8, 100]), 0.2).tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 20]
    assert n_held_out(np.array([2, 10]), 0.9).tolist() == [1, 9]  # always one training cell


def test_seed_reproducibility():
    adata = _screen(SIZES)
    first = pg.pp.split_cells(adata, seed=3, copy=True).obs["test"]
    again = pg.pp.split_cells(adata, seed=3, copy=True).obs["test"]
    other = pg.pp.split_cells(adata, seed=4, copy=True).obs["test"]
    pd.testing.assert_series_equal(first, again)
    assert not first.equals(other)
    assert first.sum() == other.sum()  # the seed changes which cells, not how many


def test_single_cell_strata_are_logged(caplog):
    adata = _screen(SIZES)
    with caplog.at_level(logging.NOTSET):  # the logger's own level: settings.verbosity, default 1
        pg.pp.split_cells(adata)
    messages = [r.getMessage() for r in caplog.records if r.name == "pertgrn"]
    assert any("1 stratum has a single cell" in m and "'E'" in m for m in messages)


def test_by_several_columns_and_by_nothing():
    adata = _screen(SIZES)
    pg.pp.split_cells(adata, by=["condition", "replicate"], key_added="held_out")
    strata = adata.obs["pertgrn_condition"].astype(str) + " | " + adata.obs["replicate"].astype(str)
    sizes = strata.value_counts()
    counts = adata.obs["held_out"].groupby(strata).sum()
    for stratum, n in sizes.items():
        assert counts[stratum] == n_held_out(np.array([n]), 0.2)[0], stratum
    pg.pp.split_cells(adata, by=None, fraction=0.25, key_added="flat")
    assert adata.obs["flat"].sum() == round(0.25 * adata.n_obs)
    assert adata.uns["pertgrn"]["split_cells"]["params"]["by"] == "none"


def test_condition_alias_falls_back_to_an_obs_column():
    obs = pd.DataFrame({"condition": ["x"] * 10 + ["y"] * 10}, index=[f"c{i}" for i in range(20)])
    adata = ad.AnnData(np.zeros((20, 2)), obs=obs)
    pg.pp.split_cells(adata, fraction=0.5)
    assert adata.obs["test"].groupby(adata.obs["condition"]).sum().tolist() == [5, 5]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fraction": 0.0}, ValueError, "between 0 and 1"),
        ({"fraction": 1.0}, ValueError, "between 0 and 1"),
        ({"fraction": "0.2"}, TypeError, "number"),
        ({"by": "replicat"}, KeyError, "Did you mean 'replicate'"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"by": ["replicate", "replicate"]}, ValueError, "twice"),
    ],
)
def test_bad_input_leaves_adata_untouched(kwargs, error, match):
    adata = _screen(SIZES)
    before = adata.copy()
    with pytest.raises(error, match=match):
        pg.pp.split_cells(adata, **kwargs)
    assert_equal(adata, before)


def test_condition_alias_without_annotation_says_what_to_run():
    adata = ad.AnnData(np.zeros((4, 2)), obs=pd.DataFrame({"perturbation": list("aabb")}, index=list("wxyz")))
    with pytest.raises(KeyError, match="annotate_perturbations"):
        pg.pp.split_cells(adata)


def test_round_trip(tmp_path):
    adata = _screen(SIZES)
    pg.pp.split_cells(adata)
    path = tmp_path / "split.h5ad"
    adata.write_h5ad(path)
    assert_equal(ad.read_h5ad(path), adata)


def test_evaluate_warns_without_test_key(caplog):
    adata = pg.datasets.simulate(n_genes=30, n_regulators=5, n_perturbed=3, n_doubles=0, seed=0)
    pg.pp.annotate_perturbations(adata, control="control")
    pg.tl.baseline_grn(adata, method="de")
    with caplog.at_level(logging.NOTSET):
        pg.tl.evaluate(adata, key="baseline_de", metrics=["n_edges"])
    assert any("including the cells it was fitted on" in r.getMessage() for r in caplog.records)
    caplog.clear()
    pg.pp.split_cells(adata)
    with caplog.at_level(logging.NOTSET):
        pg.tl.evaluate(adata, key="baseline_de", metrics=["n_edges"], test_key="test")
    assert not any("fitted on" in r.getMessage() for r in caplog.records)

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import pertgrn as pg


def _screen(labels, genes=("A", "B", "C", "D", "E")) -> ad.AnnData:
    rng = np.random.default_rng(0)
    X = sparse.csr_matrix(rng.poisson(2.0, size=(len(labels), len(genes))).astype(np.float32))
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(genes)))


def _snapshot(adata):
    return adata.obs.copy(), adata.var.copy(), dict(adata.uns), adata.X.copy()


def _assert_untouched(adata, snap):
    obs, var, uns, X = snap
    pd.testing.assert_frame_equal(adata.obs, obs)
    pd.testing.assert_frame_equal(adata.var, var)
    assert dict(adata.uns).keys() == uns.keys()
    assert (adata.X != X).nnz == 0


def test_records_design():
    adata = _screen(["ctrl", "A", "B", "A+B", "B+A", "ctrl", "Z", "A+ctrl"])
    pg.pp.annotate_perturbations(adata)  # detects "ctrl"
    cond = adata.obs["pertgrn_condition"]
    assert list(cond.cat.categories) == ["ctrl", "A", "B", "Z", "A+B"]
    # "B+A" and "A+B" are one condition; "A+ctrl" is the single A
    assert cond.tolist() == ["ctrl", "A", "B", "A+B", "A+B", "ctrl", "Z", "A"]
    assert adata.obs["pertgrn_n_targets"].tolist() == [0, 1, 1, 2, 2, 0, 1, 1]
    assert adata.var["pertgrn_perturbed"].tolist() == [True, True, False, False, False]
    design = adata.uns["pertgrn"]
    assert design["control"] == "ctrl"
    assert design["targets"] == ["A", "B", "Z"]
    assert design["measured_targets"] == ["A", "B"]
    assert design["unmeasured_targets"] == ["Z"]
    assert design["n_cells"] == {"ctrl": 2, "A": 2, "B": 1, "Z": 1, "A+B": 2}


def test_several_control_labels_and_custom_delimiter():
    adata = _screen(["NT", "safe", "A_B", "C"])
    pg.pp.annotate_perturbations(adata, control=["NT", "safe"], delimiter="_")
    assert adata.obs["pertgrn_condition"].tolist() == ["NT", "NT", "A_B", "C"]
    assert adata.uns["pertgrn"]["control_labels"] == ["NT", "safe"]


def test_h5ad_round_trip(tmp_path):
    adata = _screen(["control", "A", "A+B", "Z"])
    pg.pp.annotate_perturbations(adata)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    pd.testing.assert_series_equal(back.obs["pertgrn_condition"], adata.obs["pertgrn_condition"])
    assert list(back.uns["pertgrn"]["targets"]) == ["A", "B", "Z"]
    assert dict(back.uns["pertgrn"]["n_cells"]) == {"control": 1, "A": 1, "Z": 1, "A+B": 1}


@pytest.mark.parametrize(
    ("labels", "kwargs", "error", "match"),
    [
        (["control", "A"], {"perturbation_key": "guide"}, KeyError, "not found in adata.obs"),
        (["control", None, "A"], {}, ValueError, "missing"),
        (["control", "", "A"], {}, ValueError, "empty label"),
        (["foo", "A"], {}, ValueError, "Could not detect the control"),
        (["control", "ctrl", "A"], {}, ValueError, "Several labels look like controls"),
        (["control", "A"], {"control": "non-targeting"}, ValueError, r"Labels seen.*'A', 'control'"),
        (["control", "A+"], {}, ValueError, "empty target name"),
        (["control", "A"], {"delimiter": ""}, ValueError, "non-empty string"),
    ],
)
def test_bad_input_leaves_adata_untouched(labels, kwargs, error, match):
    adata = _screen(labels)
    snap = _snapshot(adata)
    with pytest.raises(error, match=match):
        pg.pp.annotate_perturbations(adata, **kwargs)
    _assert_untouched(adata, snap)


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicated_var_names():
    adata = _screen(["control", "A"], genes=("A", "A", "B"))
    snap = _snapshot(adata)
    with pytest.raises(ValueError, match="duplicated"):
        pg.pp.annotate_perturbations(adata)
    _assert_untouched(adata, snap)


def test_design_matrix_matches_conditions():
    from pertgrn._design import PerturbationDesign

    adata = _screen(["control", "A", "A+B", "Z", "control"])
    pg.pp.annotate_perturbations(adata)
    design = PerturbationDesign.from_adata(adata)
    D = design.multi_hot(adata.obs["pertgrn_condition"], list(design.targets))
    np.testing.assert_array_equal(D.toarray(), [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]])
    with pytest.raises(KeyError, match="'Q'"):
        design.multi_hot(["A+Q"], list(design.targets))


def test_design_parses_any_delimiter():
    from pertgrn._design import PerturbationDesign

    adata = _screen(["ctrl", "A", "A_B", "B"])
    pg.pp.annotate_perturbations(adata, control="ctrl", delimiter="_")
    design = PerturbationDesign.from_adata(adata)
    assert design.split("A_B") == ["A", "B"] and design.split("ctrl") == [] and design.is_single("B")
    assert design.join(["B", "A"]) == "A_B" and design.join([]) == "ctrl"
    D = design.multi_hot(adata.obs["pertgrn_condition"], ["A", "B"]).toarray()
    np.testing.assert_array_equal(D, [[0, 0], [1, 0], [1, 1], [0, 1]])

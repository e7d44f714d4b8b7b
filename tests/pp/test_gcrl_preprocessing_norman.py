"""The gCRL preprocessing chain on the real Norman subset in ../shared/data (skipped where absent)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata_equal import assert_equal

import pertgrn as pg


@pytest.fixture(scope="module")
def norman(request):
    shared = request.getfixturevalue("shared_data")
    adata = ad.read_h5ad(shared / "norman2019_perturbench_devel.h5ad")
    adata = adata[adata.obs["dataset"] == "norman19"].copy()
    pg.pp.annotate_perturbations(adata, perturbation_key="condition", control="control")
    return adata


def test_chain_without_prior_round_trips(norman, shared_data, tmp_path):
    adata = norman.copy()
    tfs = shared_data / "priors" / "human_tfs_lambert2018.txt"
    pg.pp.reference_grn(adata, tfs=tfs, layer="counts")
    summary = adata.uns["reference_grn"]["summary"]
    # 100 control cells; 31 of the 500 genes are listed TFs, only a few of them vary in the controls
    assert summary["n_fit_cells"] == 100 and summary["n_tfs_measured"] == 31
    assert 2 <= summary["n_regulators"] < 31 and summary["n_kept"] > 0
    pg.pp.tf_communities(adata)
    K = adata.uns["tf_communities"]["n_communities"]
    assert K >= 1
    controls = (adata.obs["condition"] == "control").to_numpy()
    pg.pp.tf_activity(adata, layer="counts", fit_mask=controls)
    assert adata.obsm["X_tf_activity"].shape == (adata.n_obs, K + 1)
    assert np.isfinite(adata.obsm["X_tf_activity"]).all()
    path = tmp_path / "norman_gcrl.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(pg.get.reference_grn_df(back), pg.get.reference_grn_df(adata))
    pd.testing.assert_series_equal(back.var["pertgrn_tf_community"], adata.var["pertgrn_tf_community"])
    np.testing.assert_array_equal(back.obsm["X_tf_activity"], adata.obsm["X_tf_activity"])


def test_curated_priors_leave_too_few_edges_for_communities(norman, shared_data):
    adata = norman.copy()
    tfs = shared_data / "priors" / "human_tfs_lambert2018.txt"
    for prior in ("collectri_human.csv", "trrust_human.tsv"):
        pg.pp.reference_grn(adata, tfs=tfs, prior=shared_data / "priors" / prior, layer="counts")
        summary = adata.uns["reference_grn"]["summary"]
        assert summary["n_kept"] >= 1 and summary["n_tested"] < 10  # a handful of prior edges among 500 genes
        before = adata.copy()
        with pytest.raises(ValueError, match="no edge between two of them"):
            pg.pp.tf_communities(adata)
        assert_equal(adata, before)

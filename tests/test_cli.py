"""The ``pertgrn`` command: demo, fit, predict, evaluate; exit statuses; run files.

The commands run in a subprocess (``python -m pertgrn.cli`` with this checkout's sources first) on
a tiny simulated screen, and their output files are read back. The model is tiny and trains for
two epochs; the fitted screen is shared by the tests of one module.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata_equal import assert_equal

import pertgrn as pg
from pertgrn import cli
from pertgrn.cli import build_parser, main
from pertgrn.cli._fit import FIT_ARGUMENTS
from pertgrn.cli._models import MODELS, ModelEntry
from pertgrn.cli._options import FIT_OPTIONS, UsageError, read_run_file, resolve_fit_options
from pertgrn.cli._steps import STEPS, plan_step

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "n_latent": 8,
    "decoder_n_hidden": 32,
    "encoder_n_hidden": 32,
    "embedding_n_hidden": 32,
    "embedding_n_layers": 2,
}
#: the flags of the shared run; RUN_FILE says the same
FLAGS = [
    "--test-key",
    "test",
    "--max-epochs",
    "2",
    "--accelerator",
    "cpu",
    "--model-kwargs",
    json.dumps(SMALL),
    "--train-kwargs",
    json.dumps({"enable_progress_bar": False}),
    "--pp-kwargs",
    json.dumps({"annotate_qc": {"doublets": False}}),
]
RUN_FILE = """\
test_key = "test"
max_epochs = 2
accelerator = "cpu"

[setup]
pairing_key = "ot_pairing"

[model]
n_latent = 8
decoder_n_hidden = 32
encoder_n_hidden = 32
embedding_n_hidden = 32
embedding_n_layers = 2

[train]
enable_progress_bar = false

[pp.annotate_qc]
doublets = false
"""


def pertgrn(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``pertgrn ARGS`` in a fresh interpreter on this checkout's sources."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_WAIT_POLICY": "PASSIVE",
        "MPLBACKEND": "Agg",
    }
    return subprocess.run(
        [sys.executable, "-m", "pertgrn.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def _without_uuids(adata: ad.AnnData) -> ad.AnnData:
    for key in ("_scvi_uuid", "_scvi_manager_uuid"):  # scvi-tools draws these at random at set-up
        del adata.uns[key]
    return adata


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    screen = pg.datasets.simulate(
        n_genes=60,
        n_regulators=6,
        n_perturbed=4,
        n_doubles=1,
        n_unmeasured_targets=1,
        n_control=80,
        cells_per_condition=30,
        seed=0,
    )
    screen.write_h5ad(folder / "screen.h5ad")
    (folder / "run.toml").write_text(RUN_FILE)
    return folder


@pytest.fixture(scope="module")
def fitted(workdir) -> subprocess.CompletedProcess:
    result = pertgrn("fit", "gpovae", "screen.h5ad", "-o", "fit.h5ad", *FLAGS, cwd=workdir)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def refitted(workdir, fitted) -> subprocess.CompletedProcess:
    """A second fit on the output of the first (every step present), under another key, into other paths."""
    (workdir / "old_model").mkdir()
    (workdir / "old_model" / "model.pt").write_text("a model saved before, replaced")
    result = pertgrn(
        "fit",
        "gpovae",
        "fit.h5ad",
        "-o",
        "refit.h5ad",
        "--key-added",
        "gpovae_b",
        "--seed",
        "1",
        "--model-dir",
        "old_model",
        "--summary",
        "refit_summary.json",
        *FLAGS,
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    return result


# ---------------------------------------------------------------------------------------------- fit
@pytest.mark.slow
def test_fit_writes_screen_model_and_summary(workdir, fitted):
    adata = ad.read_h5ad(workdir / "fit.h5ad")
    test = adata.obs["test"].to_numpy()
    # the preprocessing chain ran, held-out cells kept out of the pairing
    assert test.dtype == bool and 0.1 < test.mean() < 0.3
    assert {"pertgrn_condition", "pertgrn_qc_fail"} <= set(adata.obs.columns)
    assert "pertgrn_extended" in adata.var.columns
    pairing = adata.obsp["ot_pairing"].tocsr()
    assert pairing[test].nnz == 0 and pairing[:, test].nnz == 0
    assert adata.uns["ot_pairing"]["params"]["test_key"] == "test"
    assert "doublets" in adata.uns["pertgrn"]["qc"]["params"] and not adata.uns["pertgrn"]["qc"]["params"]["doublets"]
    # the fit, with the options given
    params = adata.uns["gpovae"]["params"]
    assert params["test_key"] == "test" and params["model"]["n_latent"] == 8
    assert params["n_epochs_trained"] == 2 and params["train"]["accelerator"] == "cpu"
    assert adata.obsm["X_gpovae"].shape == (adata.n_obs, 8)
    assert (workdir / "fit_model" / "model.pt").is_file()

    summary = json.loads((workdir / "fit.json").read_text())
    assert [s["step"] for s in summary["preprocessing"]] == [
        "annotate_perturbations",
        "split_cells",
        "annotate_qc",
        "select_extended_genes",
        "ot_pairing",
    ]
    assert all(s["ran"] and s["reason"] == "absent" for s in summary["preprocessing"])
    assert summary["n_epochs"] == 2 and summary["n_steps"] > 0
    assert summary["edge_threshold"] == adata.uns["gpovae"]["edge_rule"]["min_weight"] == 0.01
    assert summary["n_edges"] == len(pg.get.grn_df(adata, key="gpovae")) >= summary["n_edges_stored"]
    assert summary["n_edges_stored"] == adata.varp["gpovae_grn"].nnz > 0
    assert summary["n_held_out"] == int(test.sum()) and summary["n_cells"] == adata.n_obs
    assert summary["wall_time_s"] >= summary["seconds"]["fit"] > 0
    assert summary["model_dir"] == str((workdir / "fit_model").resolve())
    written = summary["keys_written"]
    assert {"test", "pertgrn_qc_fail", "pertgrn_condition"} <= set(written["obs"])
    assert written["obsp"] == ["ot_pairing"] and written["varp"] == ["gpovae_grn"]
    assert {"X_gpovae", "_pertgrn_design"} <= set(written["obsm"])
    assert summary["options"]["model_kwargs"] == SMALL and summary["options"]["test_key"] == "test"
    # stdout carries the result only; the logs (and Lightning's lines) went to stderr
    assert fitted.stdout.startswith("pertgrn fit gpovae: 230 cells x 60 genes, 5 preprocessing step(s) run")
    assert "fit.json" in fitted.stdout and "annotate_qc" not in fitted.stdout and "GPU available" not in fitted.stdout
    assert "ot_pairing" in fitted.stderr and "pertgrn: error" not in fitted.stderr  # its progress bar


@pytest.mark.slow
def test_run_file_gives_the_same_run_as_the_flags(workdir, fitted):
    result = pertgrn("fit", "gpovae", "screen.h5ad", "-o", "from_file.h5ad", "--config", "run.toml", cwd=workdir)
    assert result.returncode == 0, result.stderr
    by_flags = _without_uuids(ad.read_h5ad(workdir / "fit.h5ad"))
    by_file = _without_uuids(ad.read_h5ad(workdir / "from_file.h5ad"))
    assert_equal(by_file, by_flags)  # the whole screen: pp keys, latents, GRN, history, predicted effects
    pd.testing.assert_frame_equal(pg.get.grn_df(by_file, key="gpovae"), pg.get.grn_df(by_flags, key="gpovae"))
    options = [json.loads((workdir / name).read_text())["options"] for name in ("fit.json", "from_file.json")]
    assert options[0] == options[1]


@pytest.mark.slow
def test_fit_skips_present_steps_and_replaces_a_saved_model(workdir, refitted):
    summary = json.loads((workdir / "refit_summary.json").read_text())
    assert [(s["ran"], s["reason"]) for s in summary["preprocessing"]] == [(False, "present")] * 5
    assert summary["key_added"] == "gpovae_b" and summary["options"]["seed"] == 1
    before = ad.read_h5ad(workdir / "fit.h5ad")
    after = ad.read_h5ad(workdir / "refit.h5ad")
    # the preprocessing is the first run's, the first model's keys are kept, the second's added beside them
    assert (after.obsp["ot_pairing"] != before.obsp["ot_pairing"]).nnz == 0
    np.testing.assert_array_equal(after.obsm["X_gpovae"], before.obsm["X_gpovae"])
    assert after.uns["gpovae_b"]["params"]["random_state"] == 1 and "gpovae_b_grn" in after.varp
    assert set(summary["keys_written"]) == {"obsm", "varp", "uns"}  # no pp key rewritten
    saved = workdir / "old_model" / "model.pt"
    assert saved.stat().st_size > 1000 and "refit_summary.json" in refitted.stdout
    assert not list(workdir.glob(".*pertgrn-*"))  # no temporary file left


def test_plan_step_skips_what_matches_and_reruns_what_does_not(workdir):
    adata = pg.datasets.simulate(n_genes=40, n_regulators=4, n_perturbed=3, n_doubles=0, n_control=60, seed=1)
    pg.pp.annotate_perturbations(adata)
    pg.pp.split_cells(adata, key_added="test")
    pg.pp.select_extended_genes(adata, test_key="test")
    opts = resolve_fit_options(argparse.Namespace(test_key="test"))
    extended, split = STEPS["select_extended_genes"], STEPS["split_cells"]
    assert plan_step(extended, adata, opts, earlier_ran=False) == (False, "present")
    assert plan_step(extended, adata, opts, earlier_ran=True) == (True, "an earlier step ran")
    runs, reason = plan_step(extended, adata, {**opts, "test_key": None}, earlier_ran=False)
    assert runs and reason == "present but computed with test_key='test' (asked: None)"
    runs, reason = plan_step(
        extended, adata, {**opts, "pp_kwargs": {"select_extended_genes": {"min_abs_logfc": 2.0}}}, earlier_ran=False
    )
    assert runs and "min_abs_logfc=1.0 (asked: 2.0)" in reason
    assert plan_step(extended, adata, {**opts, "redo": True}, earlier_ran=False) == (True, "--redo")
    # a held-out column is kept, even with --redo
    assert plan_step(split, adata, {**opts, "redo": True}, earlier_ran=True)[0] is False
    assert plan_step(STEPS["ot_pairing"], adata, opts, earlier_ran=False) == (True, "absent")
    # the recorded perturbation design is compared with the labels asked for
    perturbations = STEPS["annotate_perturbations"]
    assert plan_step(perturbations, adata, {**opts, "control": "control"}, earlier_ran=False)[0] is False
    assert plan_step(perturbations, adata, {**opts, "delimiter": "_"}, earlier_ran=False)[0] is True


# ---------------------------------------------------------------------------------------- gcrlvae
#: gCRL-VAE's run: a small model, two epochs, a quick community scan
GCRL_FLAGS = [
    "--tfs",
    "tfs.txt",
    "--test-key",
    "test",
    "--max-epochs",
    "2",
    "--accelerator",
    "cpu",
    "--model-kwargs",
    json.dumps({"n_hidden": 32}),
    "--train-kwargs",
    json.dumps({"enable_progress_bar": False, "batch_size": 32}),
    "--pp-kwargs",
    json.dumps({"tf_communities": {"n_runs": 10, "n_perm": 0}}),
]
GCRL_STEPS = ["reference_grn", "tf_communities", "tf_activity"]


def _modular_screen() -> ad.AnnData:
    """The screen of ``tests/models/cases.py::modular_screen`` before its preprocessing."""
    return pg.datasets.simulate(
        n_genes=60,
        n_regulators=12,
        n_tf_modules=2,
        n_perturbed=4,
        n_doubles=1,
        n_unmeasured_targets=0,
        n_control=200,
        cells_per_condition=30,
        seed=0,
    )


@pytest.fixture(scope="module")
def gcrl_workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli_gcrl")
    screen = _modular_screen()
    screen.write_h5ad(folder / "screen.h5ad")
    tfs = screen.var_names[screen.var["true_tf_module"] >= 0]
    (folder / "tfs.txt").write_text("\n".join(tfs) + "\n")
    (folder / "unmeasured_tfs.txt").write_text("NOT_A_TF\nNEITHER\n")
    return folder


@pytest.fixture(scope="module")
def gcrl_fitted(gcrl_workdir) -> subprocess.CompletedProcess:
    result = pertgrn("fit", "gcrlvae", "screen.h5ad", "-o", "fit.h5ad", *GCRL_FLAGS, cwd=gcrl_workdir)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
def test_fit_gcrlvae_runs_gcrls_chain_without_the_held_out_cells(gcrl_workdir, gcrl_fitted):
    adata = ad.read_h5ad(gcrl_workdir / "fit.h5ad")
    test = adata.obs["test"].to_numpy()
    assert test.dtype == bool and 0.1 < test.mean() < 0.3
    # the chain, held-out cells kept out of the reference GRN and the activities' fit
    grn = adata.uns["reference_grn"]
    assert grn["params"]["test_key"] == "test" and grn["params"]["tfs"] == str((gcrl_workdir / "tfs.txt").resolve())
    controls = (adata.obs["pertgrn_condition"] == "control").to_numpy()
    assert grn["summary"]["n_fit_cells"] == int((controls & ~test).sum())
    assert adata.uns["tf_activity"]["n_fit_cells"] == int((~test).sum())
    n_communities = int(adata.uns["tf_communities"]["n_communities"])
    assert n_communities >= 1 and adata.uns["tf_communities"]["params"]["n_runs"] == 10
    assert adata.obsm["X_tf_activity"].shape == (adata.n_obs, n_communities + 1)
    # the fit: one latent per activity column, the lifted GRN, the record
    assert adata.obsm["X_gcrlvae"].shape == (adata.n_obs, n_communities + 1)
    assert adata.varp["gcrlvae_grn"].shape == (adata.n_vars, adata.n_vars)
    record = adata.uns["gcrlvae"]
    assert record["level"] == "latent" and record["variant"] == "gcrl"
    assert record["params"]["test_key"] == "test" and record["params"]["n_epochs_trained"] == 2
    # gCRL's default: random control partners, no OT pairing
    assert record["params"]["setup"].get("pairing_key") is None and "_pertgrn_partner_index" not in adata.obsm
    assert (gcrl_workdir / "fit_model" / "model.pt").is_file()

    summary = json.loads((gcrl_workdir / "fit.json").read_text())
    assert summary["model"] == "gcrlvae" and summary["model_class"] == "GCRLVAE"
    steps = {s["step"]: (s["ran"], s["reason"]) for s in summary["preprocessing"]}
    assert list(steps) == ["annotate_perturbations", "split_cells", *GCRL_STEPS, "ot_pairing"]
    assert all(steps[name] == (True, "absent") for name in GCRL_STEPS)
    assert steps["ot_pairing"] == (False, "not needed")
    assert summary["options"]["pairing_key"] is None and summary["options"]["variant"] == "gcrl"
    assert summary["n_epochs"] == 2 and summary["n_edges_stored"] == adata.varp["gcrlvae_grn"].nnz
    written = summary["keys_written"]
    assert {"X_gcrlvae", "X_tf_activity"} <= set(written["obsm"]) and written["varp"] == ["gcrlvae_grn"]
    assert {"gcrlvae", "reference_grn", "tf_communities", "tf_activity"} <= set(written["uns"])
    assert "pertgrn_tf_community" in written["var"]
    assert gcrl_fitted.stdout.startswith("pertgrn fit gcrlvae: 350 cells x 60 genes, 5 preprocessing step(s) run")


@pytest.mark.slow
def test_fit_gcrlvae_again_skips_gcrls_steps_and_reruns_what_changed(gcrl_workdir, gcrl_fitted):
    result = pertgrn(
        "fit", "gcrlvae", "fit.h5ad", "-o", "refit.h5ad", "--key-added", "g2", *GCRL_FLAGS, cwd=gcrl_workdir
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((gcrl_workdir / "refit.json").read_text())
    assert [(s["ran"], s["reason"]) for s in summary["preprocessing"]] == [(False, "present")] * 5 + [
        (False, "not needed")
    ]
    written = summary["keys_written"]  # the second model's keys, no pp key rewritten
    assert {"X_g2"} <= set(written["obsm"]) and "X_tf_activity" not in written["obsm"]
    assert not {"reference_grn", "tf_communities", "tf_activity"} & set(written["uns"]) and "var" not in written
    before, after = ad.read_h5ad(gcrl_workdir / "fit.h5ad"), ad.read_h5ad(gcrl_workdir / "refit.h5ad")
    np.testing.assert_array_equal(after.obsm["X_tf_activity"], before.obsm["X_tf_activity"])
    assert "X_gcrlvae" in after.obsm and after.obsm["X_g2"].shape == before.obsm["X_gcrlvae"].shape
    # the evaluation reads the model's record as for the other models
    evaluated = pertgrn("evaluate", "refit.h5ad", "--keys", "gcrlvae,g2", "--test-key", "test", cwd=gcrl_workdir)
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.split()[:2] == ["gcrlvae", "g2"] and "tmex" in evaluated.stdout


def test_gcrl_steps_are_skipped_when_their_records_agree(gcrl_workdir):
    adata = _modular_screen()
    pg.pp.annotate_perturbations(adata)
    pg.pp.split_cells(adata, key_added="test")
    opts = resolve_fit_options(
        argparse.Namespace(model="gcrlvae", test_key="test", tfs=str(gcrl_workdir / "tfs.txt")),
        MODELS["gcrlvae"].defaults,
    )
    steps = [STEPS[name] for name in GCRL_STEPS]
    for step in steps:
        assert step.needed(opts) and plan_step(step, adata, opts, earlier_ran=False) == (True, "absent")
        step.function()(
            adata,
            **step.call_arguments(adata, opts),
            **({"n_runs": 10, "n_perm": 0} if step.name == "tf_communities" else {}),
        )
    assert adata.uns["tf_activity"]["n_fit_cells"] == int((~adata.obs["test"]).sum())
    opts = {**opts, "pp_kwargs": {"tf_communities": {"n_runs": 10}}}
    assert [plan_step(step, adata, opts, earlier_ran=False) for step in steps] == [(False, "present")] * 3
    grn, communities, activity = steps
    # another TF list, a prior, other held-out cells, another scan: the step reruns
    runs, reason = plan_step(grn, adata, {**opts, "tfs": "other.txt"}, earlier_ran=False)
    assert runs and reason.startswith("present but computed with tfs=") and "other.txt" in reason
    runs, reason = plan_step(grn, adata, {**opts, "prior": "prior.csv"}, earlier_ran=False)
    assert runs and "prior=None" in reason
    assert plan_step(grn, adata, {**opts, "test_key": None}, earlier_ran=False)[0]
    assert plan_step(communities, adata, {**opts, "pp_kwargs": {"tf_communities": {"n_runs": 20}}}, earlier_ran=False)[
        0
    ]
    runs, reason = plan_step(activity, adata, {**opts, "test_key": None}, earlier_ran=False)
    assert runs and reason == "present but computed with test_key=\"<fit_mask 'array' of 280 cells>\" (asked: None)"
    # activities fitted on other cells (here the controls) are not those of the held-out split
    pg.pp.tf_activity(adata, fit_mask=(adata.obs["pertgrn_condition"] == "control").to_numpy())
    runs, reason = plan_step(activity, adata, opts, earlier_ran=False)
    assert runs and "fit_mask 'array'" in reason
    # --activity-key none (d-VAE, id-VAE): no gCRL step; other communities: no GRN, activities from them
    assert not any(step.needed({**opts, "activity_key": None}) for step in steps)
    mine = {**opts, "communities_key": "my_communities"}
    assert not grn.needed(mine) and not communities.needed(mine) and activity.needed(mine)
    assert activity.call_arguments(adata, mine)["key"] == "my_communities"


@pytest.mark.slow
def test_predict_loads_a_saved_gcrlvae(gcrl_workdir, gcrl_fitted):
    adata = ad.read_h5ad(gcrl_workdir / "fit.h5ad")
    single, other = adata.uns["pertgrn"]["targets"][:2]
    labels = [single, f"{single}+{other}", "control"]
    result = pertgrn(
        "predict",
        "fit_model",
        "fit.h5ad",
        "--perturbations",
        ",".join(labels),
        "-n",
        "5",
        "-o",
        "pred.h5ad",
        cwd=gcrl_workdir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pertgrn predict: 15 cells x 60 genes from GCRLVAE for 3 perturbation(s)")
    predicted = ad.read_h5ad(gcrl_workdir / "pred.h5ad")
    from pertgrn.models import GCRLVAE

    model = GCRLVAE.load(str(gcrl_workdir / "fit_model"), adata=adata, accelerator="cpu")
    np.testing.assert_allclose(predicted.X, model.predict(perturbations=labels, n_cells=5, seed=0).X, rtol=1e-5)


def test_fit_gcrlvae_with_no_measured_tf_exits_2_and_leaves_the_input(gcrl_workdir, capsys, monkeypatch):
    monkeypatch.chdir(gcrl_workdir)
    (gcrl_workdir / "mine.h5ad").write_bytes((gcrl_workdir / "screen.h5ad").read_bytes())
    before, content = _files(gcrl_workdir), (gcrl_workdir / "mine.h5ad").read_bytes()
    args = ["fit", "gcrlvae", "mine.h5ad", "-o", "mine.h5ad", "--tfs", "unmeasured_tfs.txt", "--max-epochs", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("pertgrn: error: fit: None of the 2 listed TFs") and "NOT_A_TF" in err
    assert _files(gcrl_workdir) == before and (gcrl_workdir / "mine.h5ad").read_bytes() == content
    (gcrl_workdir / "mine.h5ad").unlink()


# -------------------------------------------------------------------------------------- predict
@pytest.mark.slow
def test_predict_writes_the_cells_the_saved_model_predicts(workdir, fitted):
    adata = ad.read_h5ad(workdir / "fit.h5ad")
    single, other = adata.uns["pertgrn"]["targets"][:2]
    labels = [single, f"{single}+{other}", "control"]
    result = pertgrn(
        "predict",
        "fit_model",
        "fit.h5ad",
        "--perturbations",
        ",".join(labels),
        "-n",
        "7",
        "-o",
        "pred.h5ad",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pertgrn predict: 21 cells x 60 genes from GPOVAE for 3 perturbation(s)")
    predicted = ad.read_h5ad(workdir / "pred.h5ad")
    assert list(predicted.obs["perturbation"].cat.categories) == labels
    assert predicted.obs["perturbation"].value_counts().to_dict() == dict.fromkeys(labels, 7)
    assert list(predicted.var_names) == list(adata.var_names)
    # the same cells as the Python API gives with the same model and seed
    from pertgrn.models import GPOVAE

    model = GPOVAE.load(str(workdir / "fit_model"), adata=adata, accelerator="cpu")
    expected = model.predict(perturbations=labels, n_cells=7, seed=0)
    np.testing.assert_allclose(predicted.X, expected.X, rtol=1e-5)
    assert not np.allclose(predicted[predicted.obs["perturbation"] == single].X.mean(0), predicted[-7:].X.mean(0))


# ------------------------------------------------------------------------------------- evaluate
@pytest.mark.slow
def test_evaluate_writes_metrics_json_and_prints_a_table(workdir, refitted):
    result = pertgrn(
        "evaluate", "refit.h5ad", "--keys", "gpovae,gpovae_b", "--test-key", "test", "-o", "metrics.json", cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    document = json.loads((workdir / "metrics.json").read_text())
    table = pd.DataFrame(document["metrics"])
    assert list(table.columns) == ["key", "metric", "value"]
    assert list(pd.unique(table["key"])) == ["gpovae", "gpovae_b"]
    assert document["options"]["test_key"] == "test"
    # the values tl.evaluate gives (NaN written as null)
    adata = ad.read_h5ad(workdir / "refit.h5ad")
    for key in ("gpovae", "gpovae_b"):
        expected = pg.tl.evaluate(adata, key=key, test_key="test")["value"]
        got = table[table["key"] == key].set_index("metric")["value"].astype(float)
        pd.testing.assert_series_equal(got.reindex(expected.index), expected, check_names=False)
    # stdout: the metric x key table only
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["gpovae", "gpovae_b"]
    assert {line.split()[0] for line in lines[2:]} == set(table["metric"])
    assert "WARNING" not in result.stdout


# ------------------------------------------------------------------------------ exit statuses
def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "nomodel", "screen.h5ad", "-o", "out.h5ad"], "invalid choice: 'nomodel'"),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--model-kwargs", "{n_latent: 8}"], "not valid JSON"),
        (
            ["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--perturbation-key", "guide"],
            "'guide' is not a column of obs",
        ),
    ],
    ids=["unknown-model", "bad-json", "missing-column"],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(workdir, args, message):
    before = _files(workdir)
    result = pertgrn(*args, cwd=workdir)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("pertgrn: error: ") and message in errors[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert _files(workdir) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "gpovae", "absent.h5ad", "-o", "out.h5ad"], "input file 'absent.h5ad' does not exist"),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--model-kwargs", '{"n_latnt": 8}'], "n_latnt"),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--model-kwargs", '{"n_latent": 0}'], "positive integer"),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--train-kwargs", '{"batch_sise": 8}'], "batch_sise"),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--train-kwargs", '{"max_epochs": 8}'], "--max-epochs"),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--pp-kwargs", '{"ot_pairng": {}}'], "'ot_pairng'"),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--pp-kwargs", '{"ot_pairing": {"seed": 1}}'], "--seed"),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--pp-kwargs", '{"annotate_qc": {"n_mad": 2}}'], "n_mad"),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--qc-key", "my_qc"], "'my_qc' is not a column"),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--layer", "counts"], "'counts' is not a layer"),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--test-key", "perturbation"], "boolean obs column"),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--control", "ctrl"], "Did you mean 'control'?"),
        (["fit", "gpovae", "screen.h5ad", "-o", "no_folder/out.h5ad"], "does not exist"),
        (
            ["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--model-dir", "screen.h5ad"],
            "does not hold a saved model",
        ),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--config", "absent.toml"], "does not exist"),
        (
            ["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--devices", "auto", "--train-kwargs", '{"devices": 1}'],
            "disagrees",
        ),
        (["predict", "screen.h5ad", "screen.h5ad", "--perturbations", "A", "-o", "p.h5ad"], "no model.pt"),
        (["evaluate", "screen.h5ad", "--keys", "gpovae", "-o", "m.json"], "no model or baseline output under"),
        (["fit", "gcrlvae", "screen.h5ad", "-o", "out.h5ad"], "gcrlvae needs --tfs PATH"),
        (["fit", "gcrlvae", "screen.h5ad", "-o", "out.h5ad", "--tfs", "absent.txt"], "--tfs file 'absent.txt'"),
        (["fit", "gcrlvae", "screen.h5ad", "-o", "out.h5ad", "--tfs", "run.toml", "--variant", "e"], "'gcrl', 'id'"),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--tfs", "run.toml"], "--tfs does not apply to gpovae"),
        (["fit", "raptorgraph", "screen.h5ad", "-o", "out.h5ad", "--variant", "d"], "--variant does not apply"),
        (["fit", "gpovae", "screen.h5ad", "-o", "out.h5ad", "--grn-min-weight", "-1"], "non-negative number"),
        (["fit", "raptorgraph", "screen.h5ad", "-o", "out.h5ad", "--grn-min-weight", "0"], "does not apply"),
        (
            ["fit", "gcrlvae", "screen.h5ad", "-o", "out.h5ad", "--tfs", "run.toml", "--activity-key", "X_mine"],
            "'X_mine' is not a key of obsm",
        ),
        (
            [
                "fit",
                "gcrlvae",
                "screen.h5ad",
                "-o",
                "o.h5ad",
                "--tfs",
                "run.toml",
                "--pp-kwargs",
                '{"tf_activity": {"fit_mask": "test"}}',
            ],
            "fit_mask: --test-key",
        ),
    ],
)
def test_bad_input_found_in_process_exits_2(workdir, capsys, monkeypatch, args, message):
    monkeypatch.chdir(workdir)
    before = _files(workdir)
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1].startswith(f"pertgrn: error: {args[0]}: ")
    assert message in captured.err and "Traceback" not in captured.err and captured.out == ""
    assert _files(workdir) == before


@pytest.mark.slow
def test_unknown_perturbation_in_predict_exits_2(workdir, fitted, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    assert main(["predict", "fit_model", "fit.h5ad", "--perturbations", "NOT_A_GENE", "-o", "p.h5ad"]) == 2
    assert "NOT_A_GENE" in capsys.readouterr().err.splitlines()[-1]
    assert not (workdir / "p.h5ad").exists()


def test_unexpected_failure_exits_1_with_a_traceback(monkeypatch, capsys):
    def broken(args, stdout):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cli, "_evaluate", broken)
    assert main(["evaluate", "x.h5ad", "--keys", "k"]) == 1
    err = capsys.readouterr().err
    assert (
        "Traceback" in err
        and err.strip().splitlines()[-1] == "pertgrn: unexpected error: evaluate: RuntimeError: disk full"
    )


def test_only_pertgrns_own_checks_count_as_bad_input():
    adata = pg.datasets.simulate(n_genes=30, n_regulators=3, n_perturbed=2, n_doubles=0, n_control=40, seed=0)
    with pytest.raises(ValueError) as checked:
        pg.pp.split_cells(adata, fraction=2.0)
    assert cli._rejected_by_pertgrn(checked.value)
    with pytest.raises(KeyError) as lookup:
        {}["missing"]
    assert not cli._rejected_by_pertgrn(lookup.value)  # raised outside pertgrn
    # a KeyError from a lookup inside pertgrn (not a `raise` of a check) is a bug, not bad input
    module = Path(pg.pp.__file__).parent / "_split_cells.py"
    with pytest.raises(KeyError) as accident:
        exec(compile("{}['missing']", str(module), "exec"))  # line 1 of the module is its docstring
    assert not cli._rejected_by_pertgrn(accident.value)


# --------------------------------------------------------------------------- options and run files
def test_run_file_sections_aliases_and_precedence(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'random_state = 3\nqc-key = false\ncontrol = ["NT", "ctrl"]\n[setup]\nlayer = "counts"\n'
        '[model]\nn_latent = 4\n[train]\nbatch_size = 16\n[pp.ot_pairing]\nmethod = "sinkhorn"\n'
    )
    assert read_run_file(path) == {
        "seed": 3,
        "qc_key": None,
        "control": ["NT", "ctrl"],
        "layer": "counts",
        "model_kwargs": {"n_latent": 4},
        "train_kwargs": {"batch_size": 16},
        "pp_kwargs": {"ot_pairing": {"method": "sinkhorn"}},
    }
    args = build_parser().parse_args(
        [
            "fit",
            "gpovae",
            "in.h5ad",
            "-o",
            "o.h5ad",
            "--config",
            str(path),
            "--seed",
            "5",
            "--model-kwargs",
            '{"preset": "reference"}',
        ]
    )
    opts = resolve_fit_options(args)
    assert opts["seed"] == 5 and opts["layer"] == "counts" and opts["qc_key"] is None
    assert opts["model_kwargs"] == {"n_latent": 4, "preset": "reference"}  # merged, the command line over the file
    assert opts["test_key"] is None and opts["pairing_key"] == "ot_pairing"  # defaults
    # a model's own default (gCRL pairs with random controls) gives way to the file and the command line
    assert resolve_fit_options(args, MODELS["gcrlvae"].defaults)["pairing_key"] is None
    args.pairing_key = "ot_pairing"
    assert resolve_fit_options(args, MODELS["gcrlvae"].defaults)["pairing_key"] == "ot_pairing"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("test_ky = 'test'\n", "Did you mean 'test_key'?"),
        ("layer = 'a'\n[setup]\nlayer = 'b'\n", "'layer' is given twice"),
        ("[setup]\nmax_epochs = 3\n", "[setup] holds"),
        ("max_epochs = 0\n", "positive integer"),
        ("grn_min_weight = 'low'\n", "non-negative number"),
        ("max_epochs = \n", "cannot read the run file"),
    ],
)
def test_bad_run_files(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=None) as error:
        read_run_file(path)
    assert message in str(error.value)


def test_the_model_table_is_all_a_model_needs(monkeypatch):
    import pertgrn.tl
    from pertgrn.cli._models import import_object

    for name, entry in MODELS.items():
        assert callable(getattr(pertgrn.tl, entry.fit)) and entry.fit == f"fit_{name}"
        assert import_object(entry.model_class).__name__ == entry.class_name
        assert set(entry.steps) <= set(STEPS)
        # every argument of the fit function is an option of the same name (the seed sets random_state)
        arguments = set(inspect.signature(getattr(pertgrn.tl, entry.fit)).parameters) - {"adata"}
        assert arguments <= {*FIT_ARGUMENTS, "random_state"} and set(FIT_ARGUMENTS) <= {o.name for o in FIT_OPTIONS}
    # one more line, and the command line offers it
    monkeypatch.setitem(MODELS, "another", ModelEntry("fit_gpovae", "pertgrn.models.GPOVAE", ("ot_pairing",)))
    assert build_parser().parse_args(["fit", "another", "in.h5ad", "-o", "o.h5ad"]).model == "another"


def test_help_lists_exit_statuses_and_docs_list_every_option():
    parser = build_parser()
    text = parser.format_help()
    assert "exit status" in text and "0  success" in text and "2  bad usage" in text and "1  unexpected" in text
    docs = (ROOT / "docs" / "cli.md").read_text()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in subcommands.items():
        assert f"pertgrn {name}" in docs
        for action in command._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}" in docs, f"docs/cli.md does not document {name} {flag}"
    fit = subcommands["fit"].format_help()
    for option in FIT_OPTIONS:
        assert option.flags[0] in fit


# ------------------------------------------------------------------------------------------ demo
def test_demo_writes_an_annotated_screen(tmp_path, capsys):
    out = tmp_path / "demo.h5ad"
    assert main(["demo", "--steps", "30", "--out", str(out), "--top-edges", "3"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    for field in ("cells", "QC failures", "extended genes", "OT pairing cost", "AUPRC vs truth", "->"):
        assert field in printed
    # stdout holds the results only: scvi-tools' training progress bar (drawn on stdout) went to stderr
    assert printed.startswith("pertgrn demo:") and "Epoch" not in printed and "Epoch" in captured.err
    adata = ad.read_h5ad(out)
    assert {"pertgrn_condition", "pertgrn_qc_fail"} <= set(adata.obs.columns)
    assert "pertgrn_extended" in adata.var.columns
    assert "ot_pairing" in adata.obsp and "gpovae_grn" in adata.varp
    assert adata.obsm["X_gpovae"].shape[0] == adata.n_obs
    assert len(adata.uns["gpovae"]["nodes"]) > len(adata.uns["pertgrn"]["targets"])


def test_demo_without_training(tmp_path, capsys):
    out = tmp_path / "pp.h5ad"
    assert main(["demo", "--steps", "0", "--out", str(out)]) == 0
    assert "AUPRC" not in capsys.readouterr().out
    assert "gpovae" not in ad.read_h5ad(out).uns


def test_parser_requires_a_command():
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_stdout_carries_only_results(monkeypatch, capsys):
    def command(args, stdout):
        print("chatter of a library")  # e.g. a progress bar drawn on stdout
        print("the result", file=stdout)
        return 0

    monkeypatch.setattr(cli, "_demo", command)
    assert main(["demo", "--steps", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "the result\n"
    assert "chatter of a library" in captured.err

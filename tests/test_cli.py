from __future__ import annotations

import anndata as ad
import pytest

from pertgrn import cli
from pertgrn.cli import build_parser, main


def test_demo_writes_an_annotated_screen(tmp_path, capsys):
    out = tmp_path / "demo.h5ad"
    assert main(["demo", "--epochs", "2", "--out", str(out), "--top-edges", "3"]) == 0
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
    assert main(["demo", "--epochs", "0", "--out", str(out)]) == 0
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
    assert main(["demo", "--epochs", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "the result\n"
    assert "chatter of a library" in captured.err

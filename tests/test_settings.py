"""pertgrn.settings.verbosity, the one logger that follows it, and what the user sees on stderr."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scanpy as sc

import pertgrn as pg
from pertgrn._settings import SUMMARY
from pertgrn._utils import did_you_mean, logger, preview, suggest

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def verbosity():
    """Restore scanpy's and pertgrn's verbosity after a test."""
    before_sc, before_pg = sc.settings.verbosity, pg.settings._verbosity
    yield
    sc.settings.verbosity = before_sc
    pg.settings._verbosity = before_pg


def _run(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with this checkout first on the path."""
    env = {"PYTHONPATH": SRC, "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120
    )


def test_verbosity_follows_scanpy_until_set(verbosity):
    sc.settings.verbosity = 3
    assert pg.settings.verbosity == 3
    assert logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(15)
    sc.settings.verbosity = 1
    assert pg.settings.verbosity == 1
    assert not logger.isEnabledFor(logging.INFO)
    assert logger.isEnabledFor(SUMMARY) and logger.isEnabledFor(logging.WARNING)
    sc.settings.verbosity = 0
    assert not logger.isEnabledFor(SUMMARY) and logger.isEnabledFor(logging.ERROR)
    pg.settings.verbosity = "info"  # pertgrn's own setting wins over scanpy's
    assert pg.settings.verbosity == 2 and logger.isEnabledFor(logging.INFO)
    pg.settings.verbosity = None
    assert pg.settings.verbosity == 0


@pytest.mark.parametrize(
    ("value", "error"), [(5, ValueError), ("loud", ValueError), (True, TypeError), (1.0, TypeError)]
)
def test_bad_verbosity(value, error, verbosity):
    with pytest.raises(error, match="verbosity"):
        pg.settings.verbosity = value


def test_summaries_show_at_scanpy_verbosity_3(verbosity, caplog):
    adata = pg.datasets.simulate(n_genes=40, n_regulators=6, n_perturbed=4, n_doubles=1, seed=0)
    sc.settings.verbosity = 1
    with caplog.at_level(logging.NOTSET):
        pg.pp.annotate_perturbations(adata, control="control")
        pg.pp.filter_weak_perturbations(adata)
    messages = [r.getMessage() for r in caplog.records if r.name == "pertgrn"]
    # at the default verbosity: only the step that removes cells, in one line
    assert len(messages) == 1 and messages[0].startswith("filter_weak_perturbations: kept ")
    caplog.clear()
    sc.settings.verbosity = 3
    with caplog.at_level(logging.NOTSET):
        pg.pp.annotate_perturbations(adata, control="control")
    assert any(m.getMessage().startswith("annotate_perturbations: ") for m in caplog.records)


def test_internal_scanpy_calls_do_not_announce_private_keys(verbosity, monkeypatch):
    """scanpy runs at verbosity ≤ 1 on pertgrn's throw-away AnnDatas, so "added 'x' to adata.uns" stays silent."""
    adata = pg.datasets.simulate(n_genes=40, n_regulators=6, n_perturbed=4, n_doubles=0, seed=0)
    pg.pp.annotate_perturbations(adata, control="control")
    seen = []
    for module, name in ((sc.tl, "rank_genes_groups"), (sc.pp, "highly_variable_genes"), (sc.pp, "scrublet")):
        original = getattr(module, name)

        def spy(*args, _original=original, **kwargs):
            seen.append(int(sc.settings.verbosity))
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    sc.settings.verbosity = 4
    pg.pp.select_extended_genes(adata)
    pg.pp.annotate_qc(adata)
    assert len(seen) >= 3 and max(seen) <= 1
    assert sc.settings.verbosity == 4  # restored afterwards


def test_stderr_once_without_and_with_a_logging_configuration():
    """pertgrn prints its own messages to stderr, and leaves them to the root handler once there is one."""
    result = _run(
        """
        import logging
        import pertgrn
        from pertgrn._settings import logger  # what pertgrn._utils re-exports, without importing anndata
        logger.warning("alone")
        logger.info("hidden at the default verbosity")
        pertgrn.settings.verbosity = "info"
        logger.info("shown at info")
        logging.basicConfig(format="ROOT %(message)s")
        logger.warning("configured")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == ["WARNING: alone", "shown at info", "ROOT configured"]


def test_cli_leaves_the_root_logger_alone_so_lightning_lines_print_once():
    # Lightning adds its own stderr handler (and stops propagating) only when the root logger has none at
    # import; `logging.basicConfig` in the CLI used to defeat that, and scvi-tools' handler doubled each line
    result = _run(
        """
        import logging
        from pertgrn.cli import _configure_logging
        _configure_logging(verbose=True)
        assert not logging.getLogger().handlers
        from pertgrn._settings import logger
        logger.info("pertgrn line")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["pertgrn line"]


def test_suggestions():
    assert suggest("stat1", ["STAT1", "STAT2", "IRF1"])[0] == "STAT1"
    assert suggest("STAT1+JAK2", ["JAK2+STAT1", "JAK2"], delimiter="+")[0] == "JAK2+STAT1"
    assert suggest("XYZ123", ["STAT1", "IRF1"]) == []
    assert did_you_mean(["stat1"], ["STAT1"]) == " Did you mean 'STAT1'?"
    assert preview(["A", "B"]) == "['A', 'B']"
    assert preview(list(range(26)), n=30) == repr(list(range(26)))  # never "first 30 of 26"
    assert preview(list(range(40)), n=3).endswith("(first 3 of 40)")


def test_unknown_perturbations_get_a_suggestion():
    adata = pg.datasets.simulate(n_genes=40, n_regulators=6, n_perturbed=4, n_doubles=1, seed=0)
    pg.pp.annotate_perturbations(adata, control="control")
    target = adata.uns["pertgrn"]["targets"][0]
    with pytest.raises(KeyError, match=f"Did you mean {target!r}"):
        pg.get.ate_df(adata, perturbations=[target.lower()])
    with pytest.raises(KeyError, match=f"Did you mean {target!r}"):
        pg.tl.baseline_predict(adata, method="mean_shift", perturbations=[target.lower()])
    with pytest.raises(ValueError, match="Did you mean 'control'"):
        pg.pp.annotate_perturbations(adata, control="Control")
    assert np.all(adata.obs["pertgrn_condition"].notna())

"""`import pertgrn` and `pertgrn --help` stay quick: torch, scvi-tools and Lightning load only with the models."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
#: Generous bound (seconds) for `import pertgrn` in a fresh interpreter; it takes well under a second
#: (the subpackages load on first use), so only a heavy import at the top level can break it.
IMPORT_BOUND_S = 10.0
HEAVY = ("torch", "scvi", "lightning")


def _run(code: str) -> dict:
    env = {"PYTHONPATH": SRC, "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_pertgrn_is_quick_and_light():
    out = _run(
        """
        import json, sys, time
        start = time.perf_counter()
        import pertgrn
        seconds = time.perf_counter() - start
        heavy = [m for m in ("torch", "scvi", "lightning", "ot", "anndata", "scanpy") if m in sys.modules]
        print(json.dumps({"seconds": seconds, "heavy": heavy, "file": pertgrn.__file__}))
        """
    )
    assert out["file"].startswith(SRC)
    assert out["seconds"] < IMPORT_BOUND_S, f"import pertgrn took {out['seconds']:.1f} s"
    assert out["heavy"] == []


def test_cli_help_imports_nothing_heavy():
    out = _run(
        """
        import json, sys, time
        start = time.perf_counter()
        from pertgrn.cli import build_parser
        text = build_parser().format_help()
        seconds = time.perf_counter() - start
        loaded = [m for m in ("numpy", "anndata", "torch", "scvi", "lightning", "ot") if m in sys.modules]
        print(json.dumps({"seconds": seconds, "loaded": loaded, "help": text}))
        """
    )
    assert out["loaded"] == []
    assert out["seconds"] < IMPORT_BOUND_S
    assert "--version" in out["help"] and "demo" in out["help"]


def test_readers_metrics_plots_and_tools_do_not_load_the_models():
    out = _run(
        f"""
        import json, sys
        import pertgrn
        for name in ("get", "metrics", "datasets", "pl", "pp", "tl"):
            getattr(pertgrn, name)
        print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))
        """
    )
    assert out == []


def test_version_flag(capsys):
    from pertgrn import __version__
    from pertgrn.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"pertgrn {__version__}"

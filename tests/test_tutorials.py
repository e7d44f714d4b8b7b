"""The tutorials: stored executed (full mode) and clean, and they still run top to bottom (quick mode)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
#: plotting calls whose cells must leave a PNG, per notebook
FIGURES = {
    "gpovae_papalexi": ("grn_heatmap", "grn_network", "ate_scatter", "metrics"),
    "raptorgraph_norman": ("pairing", "training_history", "latent_dag", "interactions", "enrichment"),
    "gcrl_norman": ("tf_communities", "training_history", "latent_dag"),
}
#: seconds one cell may run in quick mode
CELL_TIMEOUT = 300
#: seconds the whole notebook may run in quick mode (the target is well under 3 minutes on 2 cores)
NOTEBOOK_BUDGET = 300
MAX_STORED_MB = 4.0


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _parameters_index(nb) -> int:
    found = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(found) == 1, f"expected exactly one cell tagged 'parameters', found {len(found)}"
    cell = nb.cells[found[0]]
    assert cell.cell_type == "code" and re.search(r"^QUICK\s*=\s*False\b", cell.source, re.M), (
        "the parameters cell must set QUICK = False (the stored notebook is the full run)"
    )
    return found[0]


def _errors(nb) -> list[str]:
    return [
        f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
        for i, c in enumerate(_code_cells(nb))
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def _figure_cells_without_png(nb, path: Path) -> list[str]:
    """Names of the required plotting calls whose cells have no PNG output (or that no cell makes)."""
    missing = []
    for name in FIGURES.get(path.stem, ()):
        cells = [c for c in _code_cells(nb) if re.search(rf"\bpl\.{name}\(", c.source)]
        has_png = any("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))
        if not has_png:
            missing.append(name)
    return missing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_stored_notebook_is_executed_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    _parameters_index(nb)
    # stored executed, in order, without errors, with its figures
    counts = [c.execution_count for c in _code_cells(nb)]
    assert all(isinstance(n, int) for n in counts), "every code cell must have been executed"
    assert counts == sorted(counts), "cells must have been executed top to bottom"
    assert not _errors(nb), _errors(nb)
    missing = _figure_cells_without_png(nb, path)
    assert not missing, f"figures without PNG output: {missing}"
    assert path.stat().st_size < MAX_STORED_MB * 1e6, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB"
    # the docs render it with myst-nb, warnings as errors: one title, then no skipped heading level
    first = nb.cells[0]
    assert first.cell_type == "markdown" and re.match(r"# \S", first.source), "start with a '# Title' cell"
    levels = [
        len(m.group(1))
        for c in nb.cells
        if c.cell_type == "markdown"
        for m in re.finditer(r"^(#{1,6}) ", c.source, re.M)
    ]
    assert levels.count(1) == 1, f"exactly one '#' heading expected, found {levels.count(1)}"
    assert all(b - a <= 1 for a, b in zip(levels, levels[1:], strict=False)), f"heading levels skip: {levels}"


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_in_quick_mode(path, shared_data, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    for cell in _code_cells(nb):
        cell.outputs, cell.execution_count = [], None
    where = _parameters_index(nb)
    injected = nbformat.v4.new_code_cell(f"QUICK = True\nDATA_DIR = {str(shared_data)!r}")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(where + 1, injected)

    # the kernel inherits these: no GUI backend, no busy-waiting OpenMP threads on a shared machine
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:  # keep the traceback short and readable
        pytest.fail(f"{path.name} failed in quick mode:\n{str(error)[-3000:]}")
    elapsed = time.perf_counter() - start
    print(f"{path.name}: quick mode ran in {elapsed:.0f} s")

    assert not _errors(nb), _errors(nb)
    missing = _figure_cells_without_png(nb, path)
    assert not missing, f"figures without PNG output: {missing}"
    assert elapsed < NOTEBOOK_BUDGET, f"quick mode took {elapsed:.0f} s"

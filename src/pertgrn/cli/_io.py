"""Reading a command's input, and writing its files all at once at the end, so that a failed run leaves none behind."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pertgrn.cli._options import UsageError

if TYPE_CHECKING:
    from anndata import AnnData


def read_h5ad(path: str | Path) -> AnnData:
    """Read an ``.h5ad`` file; a missing or unreadable file is a usage error."""
    import anndata

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"input file {str(path)!r} does not exist.")
    try:
        return anndata.read_h5ad(path)
    except Exception as err:  # h5py and anndata raise many kinds for a file that is not an h5ad
        raise UsageError(f"cannot read {str(path)!r} as an .h5ad file: {type(err).__name__}: {err}") from None


def check_output_path(path: Path, what: str) -> Path:
    """``path`` can be written: its folder exists and it is not a folder itself."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(f"the folder of the {what} {str(path)!r} does not exist.")
    if path.is_dir():
        raise UsageError(f"the {what} {str(path)!r} is a folder.")
    return path


def check_model_dir(path: Path) -> Path:
    """``path`` may receive a saved model: absent, empty, or a model saved before (which it replaces)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(f"the folder of the model directory {str(path)!r} does not exist.")
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or (path / "model.pt").is_file())):
        raise UsageError(
            f"the model directory {str(path)!r} exists and does not hold a saved model; "
            "pass --model-dir naming a new folder."
        )
    return path


def plain_json(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python values and NaN / infinity as ``None`` (valid JSON)."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array
        return plain_json(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON."""
    with Path(path).open("w") as handle:
        json.dump(plain_json(value), handle, indent=2, allow_nan=False)
        handle.write("\n")


class StagedOutputs:
    """Files and folders written under temporary names beside their targets, moved into place by :meth:`commit`.

    Used as a context manager: leaving it without :meth:`commit` (an error) removes what was staged.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def stage(self, target: Path) -> Path:
        """A temporary path beside ``target`` (same suffix) to write ``target``'s content to."""
        target = Path(target)
        temporary = target.with_name(f".{target.stem}.pertgrn-{os.getpid()}-{len(self._staged)}.tmp{target.suffix}")
        self._staged.append((temporary, target))
        return temporary

    def commit(self) -> None:
        """Move every staged file or folder onto its target (a saved model folder there is replaced)."""
        for temporary, target in self._staged:
            if temporary.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(temporary, target)
        self._staged = []

    def discard(self) -> None:
        """Remove whatever was staged."""
        for temporary, _ in self._staged:
            if temporary.is_dir():
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                temporary.unlink(missing_ok=True)
        self._staged = []

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.discard()

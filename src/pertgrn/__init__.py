"""pertgrn: gene regulatory networks and perturbation-response models for single-cell CRISPR screens."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from pertgrn._settings import settings

try:
    __version__ = version("pertgrn")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["datasets", "get", "metrics", "models", "nn", "pl", "pp", "tl", "settings", "__version__"]

#: Subpackages, each imported on first use: `import pertgrn` (and the `pertgrn` command) stays quick,
#: and torch, scvi-tools and Lightning load only with the models that need them.
_SUBMODULES = frozenset({"datasets", "get", "metrics", "models", "nn", "pl", "pp", "tl"})

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports them
    from pertgrn import datasets, get, metrics, models, nn, pl, pp, tl


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f"pertgrn.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'pertgrn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES})

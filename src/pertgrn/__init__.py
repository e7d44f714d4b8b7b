"""pertgrn: gene regulatory networks and perturbation-response models for single-cell CRISPR screens."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from pertgrn import datasets, get, metrics, pl, pp, tl
from pertgrn._settings import settings

try:
    __version__ = version("pertgrn")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["datasets", "get", "metrics", "models", "nn", "pl", "pp", "tl", "settings", "__version__"]


def __getattr__(name: str):
    # the models and their layers import torch and scvi-tools: load them on first use, so that
    # `import pertgrn` stays quick for preprocessing, metrics and plotting
    if name in {"models", "nn"}:
        import importlib

        return importlib.import_module(f"pertgrn.{name}")
    raise AttributeError(f"module 'pertgrn' has no attribute {name!r}")

"""The models ``pertgrn fit`` and ``pertgrn predict`` know: one line each.

A model joins the command line with one entry: the name users type, its ``pertgrn.tl`` fit function,
the dotted path of its model class (what ``pertgrn predict`` loads, matched by the class name that
scvi-tools records in a saved model), the preprocessing steps it needs after
``annotate_perturbations`` (see :mod:`pertgrn.cli._steps`) and, where its fit function's defaults
differ from the options', its own. Names only: nothing is imported until a command runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pertgrn.cli._options import UsageError


@dataclass(frozen=True)
class ModelEntry:
    """How the command line fits and loads one model."""

    fit: str
    model_class: str
    steps: tuple[str, ...]
    #: option name → this model's default, where the fit function's default differs from the option's
    defaults: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def class_name(self) -> str:
        """The class name scvi-tools records in a saved model (``registry["model_name"]``)."""
        return self.model_class.rsplit(".", 1)[1]


#: name → fit function of ``pertgrn.tl``, model class, preprocessing steps, own defaults
MODELS: dict[str, ModelEntry] = {
    "gpovae": ModelEntry("fit_gpovae", "pertgrn.models.GPOVAE", ("annotate_qc", "select_extended_genes", "ot_pairing")),
    "raptorgraph": ModelEntry("fit_raptorgraph", "pertgrn.models.RaptorGraph", ("ot_pairing",)),
    # gCRL pairs perturbed cells with random training controls unless --pairing-key names an OT pairing
    "gcrlvae": ModelEntry(
        "fit_gcrlvae",
        "pertgrn.models.GCRLVAE",
        ("reference_grn", "tf_communities", "tf_activity", "ot_pairing"),
        defaults={"pairing_key": None},
    ),
}


def import_object(path: str) -> Any:
    """The object at a dotted path such as ``"pertgrn.models.GPOVAE"``."""
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def entry_for_class(class_name: str) -> ModelEntry:
    """The entry of the model whose class is named ``class_name``."""
    for entry in MODELS.values():
        if entry.class_name == class_name:
            return entry
    known = [entry.class_name for entry in MODELS.values()]
    raise UsageError(f"the saved model is a {class_name!r}, which pertgrn cannot load; it loads {known}.")

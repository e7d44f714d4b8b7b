"""Options of ``pertgrn fit``: one table for the command line and the TOML run file.

Every option has the name of the Python argument it sets (``test_key``, ``max_epochs``, …); the
command line spells it with dashes (``--test-key``), a TOML file with the name itself. A value
given on the command line wins over the file, the file over the default. Standard library only:
the parser is built from this table without importing anything heavy.
"""

from __future__ import annotations

import argparse
import difflib
import json
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pertgrn._constants import EXTENDED_KEY, OT_PAIRING_KEY, QC_FAIL_KEY


class UsageError(Exception):
    """Bad usage or input found by the command line itself: exit status 2, nothing written."""


#: The word that means ``None`` for options that name a key (``--qc-key none``); ``false`` in TOML.
NONE_WORD = "none"
#: Keys of gCRL's chain: ``pp.reference_grn``'s, ``pp.tf_communities``' and ``pp.tf_activity``'s defaults.
REFERENCE_GRN_KEY = "reference_grn"
TF_COMMUNITIES_KEY = "tf_communities"
TF_ACTIVITY_KEY = "X_tf_activity"
#: The variants of ``tl.fit_gcrlvae``.
GCRL_VARIANTS = ("gcrl", "id", "d")


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{name} must be a non-empty string, found {value!r}.")
    return value


def _key_or_none(value: Any, name: str) -> str | None:
    if value is False or (isinstance(value, str) and value.lower() == NONE_WORD):
        return None
    return _text(value, name)


def _integer(value: Any, name: str) -> int:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"{name} must be an integer, found {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"{name} must be an integer, found {value!r}.")
    return int(value)


def _epochs(value: Any, name: str) -> int | None:
    if isinstance(value, str) and value.lower() in ("auto", NONE_WORD):
        return None
    epochs = _integer(value, name)
    if epochs < 1:
        raise UsageError(f"{name} must be a positive integer or 'auto', found {value!r}.")
    return epochs


def _weight_or_none(value: Any, name: str) -> float | None:
    """A non-negative number, or ``None`` (``'none'``, ``'auto'``: the model's own rule)."""
    if isinstance(value, str):
        if value.lower() in ("auto", NONE_WORD):
            return None
        try:
            value = float(value)
        except ValueError:
            raise UsageError(f"{name} must be a non-negative number or 'auto', found {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0 or value == float("inf"):
        raise UsageError(f"{name} must be a non-negative number or 'auto', found {value!r}.")
    return float(value)


def _controls(value: Any, name: str) -> str | list[str] | None:
    """One control label, several (comma-separated on the command line, a list in TOML), or ``None`` (detect)."""
    if isinstance(value, str):
        labels = [part.strip() for part in value.split(",")]
    elif isinstance(value, list):
        labels = value
    else:
        raise UsageError(f"{name} must be a label or a list of labels, found {value!r}.")
    if not labels or not all(isinstance(label, str) and label for label in labels):
        raise UsageError(f"{name} must name one or more non-empty labels, found {value!r}.")
    return labels[0] if len(labels) == 1 else labels


def _devices(value: Any, name: str) -> int | str | list[int]:
    """Lightning's ``devices``: a count (``2``), a list of indices (``0,1``) or a word (``auto``)."""
    if isinstance(value, bool):
        raise UsageError(f"{name} must be a count, a list of device indices or 'auto', found {value!r}.")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [int(v) for v in value]
    if isinstance(value, str) and value:
        if value.isdigit():
            return int(value)
        if "," in value:
            parts = [p.strip() for p in value.split(",")]
            if all(p.isdigit() for p in parts):
                return [int(p) for p in parts]
        return value
    raise UsageError(f"{name} must be a count, a list of device indices or 'auto', found {value!r}.")


def _one_of(choices: tuple[str, ...]) -> Callable[[Any, str], str]:
    """A converter accepting one of ``choices``."""

    def convert(value: Any, name: str) -> str:
        if value not in choices:
            raise UsageError(f"{name} must be one of {list(choices)}, found {value!r}.")
        return value

    return convert


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{name} must be true or false, found {value!r}.")
    return value


def _mapping(value: Any, name: str) -> dict[str, Any]:
    """A dict of keyword arguments: JSON text on the command line, a table in TOML."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise UsageError(f"{name} is not valid JSON ({err.msg} at character {err.pos}): {value!r}.") from None
    if not isinstance(value, Mapping):
        raise UsageError(f"{name} must be a JSON object / TOML table of keyword arguments, found {value!r}.")
    return dict(value)


def _step_mappings(value: Any, name: str) -> dict[str, dict[str, Any]]:
    """Keyword arguments per preprocessing step: ``{"annotate_qc": {"doublets": false}}``."""
    steps = _mapping(value, name)
    for step, kwargs in steps.items():
        steps[step] = _mapping(kwargs, f"{name}[{step!r}]")
    return steps


@dataclass(frozen=True)
class Option:
    """One option of ``pertgrn fit``."""

    name: str
    flags: tuple[str, ...]
    convert: Callable[[Any, str], Any]
    default: Any
    help: str
    #: TOML table that may hold it instead of the top level
    table: str | None = None
    metavar: str | None = None


#: The options of ``pertgrn fit`` that a run file can hold too, in the order ``--help`` lists them.
FIT_OPTIONS: tuple[Option, ...] = (
    Option(
        "perturbation_key",
        ("--perturbation-key",),
        _text,
        "perturbation",
        "obs column of perturbation labels (pp.annotate_perturbations; default: %(default)s)",
        metavar="COLUMN",
    ),
    Option(
        "control",
        ("--control",),
        _controls,
        None,
        "control label(s), comma-separated; default: detected among the usual names",
        metavar="LABEL",
    ),
    Option(
        "delimiter",
        ("--delimiter",),
        _text,
        "+",
        "string joining the targets of a combination (default: %(default)s)",
        metavar="TEXT",
    ),
    Option(
        "layer",
        ("--layer",),
        _key_or_none,
        None,
        "layer of raw counts for every step and the model (default: X)",
        table="setup",
        metavar="LAYER",
    ),
    Option(
        "test_key",
        ("--test-key",),
        _key_or_none,
        None,
        "bool obs column of held-out cells, kept out of every step and the fit; "
        "created by pp.split_cells when absent (default: none)",
        metavar="COLUMN",
    ),
    Option(
        "qc_key",
        ("--qc-key",),
        _key_or_none,
        QC_FAIL_KEY,
        "bool obs column of QC-failing cells: pp.annotate_qc writes the default; another column must exist; "
        "'none': no artifact latent (default: %(default)s)",
        table="setup",
        metavar="COLUMN",
    ),
    Option(
        "pairing_key",
        ("--pairing-key",),
        _key_or_none,
        OT_PAIRING_KEY,
        "obsp key of the OT pairing (pp.ot_pairing); 'none' needs a gpo_loss without the fit term "
        "(default: %(default)s; gcrlvae: none, random control partners)",
        table="setup",
        metavar="KEY",
    ),
    Option(
        "pairing",
        ("--pairing",),
        _text,
        "ot",
        "RAPTORGraph's training partners: 'ot' (the plan's heaviest control) or 'random' (the paper's "
        "ablation) (default: %(default)s)",
        table="setup",
        metavar="KIND",
    ),
    Option(
        "tfs",
        ("--tfs",),
        _text,
        None,
        "text file of TF symbols, one per line, for pp.reference_grn (gCRL-VAE; required there)",
        metavar="PATH",
    ),
    Option(
        "prior",
        ("--prior",),
        _text,
        None,
        "prior TF -> target network for pp.reference_grn: a long CSV/TSV table with source and target "
        "columns (gCRL-VAE; default: every measured TF may regulate every gene)",
        metavar="PATH",
    ),
    Option(
        "communities_key",
        ("--communities-key",),
        _text,
        TF_COMMUNITIES_KEY,
        "uns key of the TF communities: pp.reference_grn and pp.tf_communities write the default; another key "
        "must exist (default: %(default)s)",
        table="setup",
        metavar="KEY",
    ),
    Option(
        "activity_key",
        ("--activity-key",),
        _key_or_none,
        TF_ACTIVITY_KEY,
        "obsm key of the TF-community activities: pp.tf_activity writes the default; another key must exist; "
        "'none': no activities and no gCRL step (--variant id or d) (default: %(default)s)",
        table="setup",
        metavar="KEY",
    ),
    Option(
        "variant",
        ("--variant",),
        _one_of(GCRL_VARIANTS),
        "gcrl",
        "gCRL-VAE's variant: 'gcrl' (gCRL-VAE), 'id' (id-VAE) or 'd' (d-VAE) (default: %(default)s)",
        metavar="NAME",
    ),
    Option(
        "extended_key",
        ("--extended-key",),
        _key_or_none,
        EXTENDED_KEY,
        "bool var column of extended genes: pp.select_extended_genes writes the default; another column must "
        "exist; 'none': targets only (default: %(default)s)",
        table="setup",
        metavar="COLUMN",
    ),
    Option(
        "key_added",
        ("--key-added",),
        _text,
        None,
        "names the outputs: obsm['X_<key>'], varp['<key>_grn'], uns['<key>'] (default: the model's name)",
        metavar="KEY",
    ),
    Option(
        "max_epochs",
        ("--max-epochs",),
        _epochs,
        None,
        "training epochs; 'auto': the model's default (GPOVAE: 2,000 optimisation steps)",
        metavar="N",
    ),
    Option(
        "grn_min_weight",
        ("--grn-min-weight",),
        _weight_or_none,
        None,
        "GPO-VAE: edge probabilities above this are stored; 0 stores every pair; 'auto': the model's rule "
        "(default: auto)",
        metavar="W",
    ),
    Option(
        "accelerator",
        ("--accelerator",),
        _text,
        None,
        "Lightning accelerator: cpu, gpu, mps or auto (default: auto, a GPU when present)",
        metavar="NAME",
    ),
    Option(
        "devices",
        ("--devices",),
        _devices,
        None,
        "Lightning devices: a count, comma-separated indices or auto (default: auto)",
        metavar="DEVICES",
    ),
    Option(
        "seed",
        ("--seed", "--random-state"),
        _integer,
        0,
        "seed of the fit (random_state) and of every preprocessing step that runs (default: %(default)s)",
        metavar="N",
    ),
    Option(
        "model_kwargs",
        ("--model-kwargs",),
        _mapping,
        None,
        "JSON object of model arguments, e.g. '{\"n_latent\": 8}'; over the run file's [model] table",
        table="model",
        metavar="JSON",
    ),
    Option(
        "train_kwargs",
        ("--train-kwargs",),
        _mapping,
        None,
        "JSON object of training arguments, e.g. '{\"batch_size\": 64}'; over the run file's [train] table",
        table="train",
        metavar="JSON",
    ),
    Option(
        "pp_kwargs",
        ("--pp-kwargs",),
        _step_mappings,
        None,
        'JSON object of arguments per preprocessing step, e.g. \'{"annotate_qc": {"doublets": false}}\'; '
        "over the run file's [pp.<step>] tables",
        table="pp",
        metavar="JSON",
    ),
    Option(
        "redo",
        ("--redo",),
        _flag,
        False,
        "rerun every preprocessing step, even those whose keys are present",
    ),
)
OPTIONS_BY_NAME = {option.name: option for option in FIT_OPTIONS}
#: Names a run file may use besides the options' own (the Python argument of ``tl.fit_*``).
ALIASES = {"random_state": "seed"}
#: Options whose values are keyword-argument tables, merged key by key (the command line wins).
MAPPING_OPTIONS = ("model_kwargs", "train_kwargs", "pp_kwargs")


def add_fit_options(parser: argparse.ArgumentParser) -> None:
    """Add every option of :data:`FIT_OPTIONS`; an option not given is absent from the parsed namespace."""
    for option in FIT_OPTIONS:
        kwargs: dict[str, Any] = {"dest": option.name, "default": argparse.SUPPRESS}
        if option.convert is _flag:
            kwargs["action"] = "store_const"
            kwargs["const"] = True
        else:
            kwargs["metavar"] = option.metavar
        # %(default)s in a help text shows the option's real default, not SUPPRESS
        parser.add_argument(*option.flags, help=option.help % {"default": option.default}, **kwargs)


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def read_run_file(path: str | Path) -> dict[str, Any]:
    """The options held by a TOML run file, by option name, converted and checked.

    Top-level keys are option names (``test_key = "test"``); ``[setup]`` may hold the set-up
    options (``layer``, ``qc_key``, ``pairing_key``, ``pairing``, ``communities_key``,
    ``activity_key``, ``extended_key``) instead, ``[model]`` and
    ``[train]`` the model's and training arguments, ``[pp.<step>]`` a preprocessing step's.
    """
    import tomllib

    path = Path(path)
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"run file {str(path)!r} does not exist.") from None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"cannot read the run file {str(path)!r}: {err}.") from None

    options: dict[str, Any] = {}
    tables = {option.table: option.name for option in FIT_OPTIONS if option.table in ("model", "train", "pp")}
    setup_names = [option.name for option in FIT_OPTIONS if option.table == "setup"]
    top_level = [o.name for o in FIT_OPTIONS] + list(ALIASES) + ["setup", *tables]

    def put(name: str, value: Any, where: str) -> None:
        option = OPTIONS_BY_NAME[name]
        if name in options:
            raise UsageError(f"{path}: {name!r} is given twice (at {where} too).")
        options[name] = option.convert(value, f"{where} in {path}")

    for raw_key, value in document.items():
        key = raw_key.replace("-", "_")
        if key in tables:
            put(tables[key], value, f"[{key}]")
        elif key == "setup":
            if not isinstance(value, Mapping):
                raise UsageError(f"{path}: [setup] must be a table.")
            for raw_name, setting in value.items():
                name = raw_name.replace("-", "_")
                if name not in setup_names:
                    raise UsageError(
                        f"{path}: [setup] holds {setup_names}, found {raw_name!r}.{_suggest(name, setup_names)}"
                    )
                put(name, setting, f"setup.{name}")
        elif key in OPTIONS_BY_NAME or key in ALIASES:
            put(ALIASES.get(key, key), value, key)
        else:
            raise UsageError(
                f"{path}: unknown setting {raw_key!r}; a run file holds {sorted(top_level)}.{_suggest(key, top_level)}"
            )
    return options


def resolve_fit_options(args: argparse.Namespace, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every option of ``pertgrn fit``: the command line over the run file over the defaults.

    Keyword-argument tables are merged key by key (per step for ``pp_kwargs``). ``defaults``
    replaces the defaults of some options, for a model whose fit function has other defaults
    (:attr:`pertgrn.cli._models.ModelEntry.defaults`).
    """
    given = {option.name: getattr(args, option.name) for option in FIT_OPTIONS if hasattr(args, option.name)}
    command_line = {
        name: OPTIONS_BY_NAME[name].convert(value, OPTIONS_BY_NAME[name].flags[0]) for name, value in given.items()
    }
    from_file = read_run_file(args.config) if getattr(args, "config", None) else {}
    resolved = {option.name: option.default for option in FIT_OPTIONS}
    resolved.update(defaults or {})
    resolved.update(from_file)
    resolved.update(command_line)
    for name in MAPPING_OPTIONS:
        merged = dict(from_file.get(name) or {})
        for key, value in (command_line.get(name) or {}).items():
            if name == "pp_kwargs" and isinstance(merged.get(key), Mapping):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        resolved[name] = merged
    return resolved

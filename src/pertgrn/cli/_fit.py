"""``pertgrn fit MODEL IN.h5ad -o OUT.h5ad``: preprocess, fit, write the screen, the model and a summary."""

from __future__ import annotations

import argparse
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pertgrn.cli._io import StagedOutputs, check_model_dir, check_output_path, read_h5ad, write_json
from pertgrn.cli._models import MODELS, import_object
from pertgrn.cli._options import (
    FIT_OPTIONS,
    OPTIONS_BY_NAME,
    TF_ACTIVITY_KEY,
    TF_COMMUNITIES_KEY,
    UsageError,
    add_fit_options,
    resolve_fit_options,
)
from pertgrn.cli._steps import COMMON_STEPS, STEP_OPTIONS, STEPS, plan_step

if TYPE_CHECKING:
    from anndata import AnnData

#: Arguments of a ``tl.fit_*`` function that options set under the same name (``seed`` sets ``random_state``).
FIT_ARGUMENTS = (
    "key_added",
    "test_key",
    "layer",
    "qc_key",
    "pairing_key",
    "pairing",
    "extended_key",
    "variant",
    "activity_key",
    "communities_key",
    "max_epochs",
    "grn_min_weight",
    "model_kwargs",
    "train_kwargs",
)
SLOTS = ("obs", "var", "obsm", "varm", "obsp", "varp", "layers", "uns")

DESCRIPTION = """\
Run the preprocessing chain MODEL needs on IN.h5ad (pp.annotate_perturbations, pp.split_cells when
--test-key names a column that is absent, then e.g. annotate_qc, select_extended_genes, ot_pairing;
for gcrlvae reference_grn with --tfs, tf_communities, tf_activity),
fit the model with pertgrn.tl.fit_<MODEL>, and write the annotated screen (OUT.h5ad), the saved
model (--model-dir) and a JSON summary (--summary). A step is skipped when its keys are present and
were computed with what this run asks for; --redo reruns every step. Options can also come from a
TOML run file (--config): top-level keys are the options' names (test_key = "test"), [setup] may
hold the set-up options (layer, qc_key, pairing_key, ...), [model] and [train] the model's and training
arguments, [pp.<step>] a step's arguments; the command line wins over the file.
"""


def add_parser(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> argparse.ArgumentParser:
    """Add ``pertgrn fit`` to the subcommands."""
    parser = sub.add_parser(
        "fit",
        help="preprocess a screen, fit a model, write the .h5ad, the saved model and a JSON summary",
        description=DESCRIPTION,
        formatter_class=formatter,
    )
    parser.add_argument("model", choices=sorted(MODELS), help="the model to fit")
    parser.add_argument("input", metavar="IN.h5ad", help="the screen: raw counts, a perturbation column")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.h5ad", help="the annotated screen written")
    parser.add_argument(
        "--model-dir", metavar="DIR", help="folder of the saved model (default: OUT_model beside OUT.h5ad)"
    )
    parser.add_argument("--summary", metavar="FILE.json", help="JSON summary of the run (default: OUT.json)")
    parser.add_argument("--config", metavar="RUN.toml", help="TOML run file with any of the options below")
    add_fit_options(parser)
    return parser


def _fit_arguments(fit: Callable[..., Any], opts: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The keyword arguments of ``fit`` from the options; an option it has no argument for must be left alone."""
    parameters = inspect.signature(fit).parameters
    kwargs: dict[str, Any] = {}
    for name in (*FIT_ARGUMENTS, "random_state"):
        option = "seed" if name == "random_state" else name
        value = opts[option]
        if name in parameters:
            if not (name == "key_added" and value is None):
                kwargs[name] = value
        elif value != OPTIONS_BY_NAME[option].default and value != {}:
            raise UsageError(f"{OPTIONS_BY_NAME[option].flags[0]} does not apply to {model}.")
    return kwargs


def _train_kwargs(opts: Mapping[str, Any]) -> dict[str, Any]:
    """``train_kwargs`` with ``--accelerator`` and ``--devices`` put in."""
    train = dict(opts["train_kwargs"])
    if "max_epochs" in train:
        raise UsageError("give the number of epochs with --max-epochs (max_epochs in a run file), not in train_kwargs.")
    for name in ("accelerator", "devices"):
        if opts[name] is None:
            continue
        if name in train and train[name] != opts[name]:
            raise UsageError(f"--{name} {opts[name]!r} disagrees with train_kwargs[{name!r}] = {train[name]!r}.")
        train[name] = opts[name]
    return train


def _check_arguments(model_cls: type, opts: Mapping[str, Any]) -> None:
    """Reject what would fail later, before the first step runs: model, training and step arguments."""
    from pertgrn.models._base._fit import allowed_train_kwargs

    if hasattr(model_cls, "check_params"):
        model_cls.check_params(**opts["model_kwargs"])  # raises pertgrn's TypeError / ValueError
    unknown = sorted(set(opts["train_kwargs"]) - allowed_train_kwargs(model_cls))
    if unknown:
        raise UsageError(
            f"unknown training argument(s) {unknown} in train_kwargs; see {model_cls.__name__}.train and "
            "scvi.train.Trainer."
        )
    for name, kwargs in opts["pp_kwargs"].items():
        step = STEPS[name]
        parameters = inspect.signature(step.function()).parameters
        unknown = sorted(set(kwargs) - set(parameters) - {"adata"})
        if unknown:
            raise UsageError(f"pp.{name} has no argument(s) {unknown}.")
        managed = sorted(set(kwargs) & ({"adata", "copy"} | set(step.arguments(opts)) | set(step.prepared)))
        if managed:
            flags = {
                "random_state": "--seed",
                "seed": "--seed",
                "key_added": {"split_cells": "--test-key", "ot_pairing": "--pairing-key"}.get(name, "fixed"),
                "key": "--communities-key" if name == "tf_activity" else "fixed",
                "fit_mask": "--test-key",
            }
            hints = ", ".join(f"{arg}: {flags.get(arg, '--' + arg.replace('_', '-'))}" for arg in managed)
            raise UsageError(f"pp_kwargs[{name!r}] sets {managed}, which the command line sets ({hints}).")


def _check_step_options(opts: Mapping[str, Any], steps: list[str], model: str) -> None:
    """Options only a step reads: refused where the model's chain lacks the step, required where it runs it."""
    for name, step in STEP_OPTIONS.items():
        flag = OPTIONS_BY_NAME[name].flags[0]
        if opts[name] is not None and step not in steps:
            raise UsageError(f"{flag} does not apply to {model}: pp.{step} is not a step of its chain {steps}.")
    if "reference_grn" in steps and STEPS["reference_grn"].needed(opts) and opts["tfs"] is None:
        raise UsageError(
            f"{model} needs --tfs PATH, a text file of TF symbols one per line, for pp.reference_grn "
            "(or --communities-key naming TF communities of the input; or --activity-key none, with --variant "
            "id or d)."
        )
    for name in STEP_OPTIONS:
        if opts[name] is not None and not Path(opts[name]).is_file():
            raise UsageError(f"{OPTIONS_BY_NAME[name].flags[0]} file {opts[name]!r} does not exist.")


def _check_keys(adata: AnnData, opts: Mapping[str, Any]) -> None:
    """Keys the run reads but no step writes must be present."""
    import difflib

    import pandas as pd

    from pertgrn._constants import EXTENDED_KEY, QC_FAIL_KEY

    key = opts["perturbation_key"]
    if key not in adata.obs and plan_step(STEPS["annotate_perturbations"], adata, opts, earlier_ran=False)[0]:
        close = difflib.get_close_matches(key, list(map(str, adata.obs.columns)), n=1)
        raise UsageError(
            f"--perturbation-key {key!r} is not a column of obs{f' (did you mean {close[0]!r}?)' if close else ''}; "
            f"columns: {list(map(str, adata.obs.columns))}."
        )
    if opts["qc_key"] not in (None, QC_FAIL_KEY) and opts["qc_key"] not in adata.obs:
        raise UsageError(
            f"--qc-key {opts['qc_key']!r} is not a column of obs; leave it at {QC_FAIL_KEY!r} to run "
            "pp.annotate_qc, or 'none' to fit without an artifact latent."
        )
    if opts["extended_key"] not in (None, EXTENDED_KEY) and opts["extended_key"] not in adata.var:
        raise UsageError(
            f"--extended-key {opts['extended_key']!r} is not a column of var; leave it at {EXTENDED_KEY!r} to run "
            "pp.select_extended_genes, or 'none' for the targets only."
        )
    test_key = opts["test_key"]
    if test_key is not None and test_key in adata.obs and not pd.api.types.is_bool_dtype(adata.obs[test_key]):
        raise UsageError(
            f"--test-key {test_key!r} must name a boolean obs column (True = held-out cell), "
            f"found dtype {adata.obs[test_key].dtype}."
        )
    if opts["communities_key"] != TF_COMMUNITIES_KEY and opts["communities_key"] not in adata.uns:
        raise UsageError(
            f"--communities-key {opts['communities_key']!r} is not a key of uns; leave it at {TF_COMMUNITIES_KEY!r} "
            "to run pp.reference_grn and pp.tf_communities."
        )
    if opts["activity_key"] not in (None, TF_ACTIVITY_KEY) and opts["activity_key"] not in adata.obsm:
        raise UsageError(
            f"--activity-key {opts['activity_key']!r} is not a key of obsm; leave it at {TF_ACTIVITY_KEY!r} to run "
            "pp.tf_activity, or 'none' for no activities (--variant id or d)."
        )
    if opts["layer"] is not None and opts["layer"] not in adata.layers:
        raise UsageError(f"--layer {opts['layer']!r} is not a layer of the input; layers: {sorted(adata.layers)}.")


def _key_sets(adata: AnnData) -> dict[str, set[str]]:
    return {
        slot: set(map(str, getattr(adata, slot).columns if slot in ("obs", "var") else getattr(adata, slot).keys()))
        for slot in SLOTS
    }


def _add_keys(written: dict[str, set[str]], keys: Mapping[str, Any]) -> None:
    for slot, names in keys.items():
        written.setdefault(slot, set()).update(names)


def run(args: argparse.Namespace, stdout: TextIO) -> int:
    """Run ``pertgrn fit``."""
    start = time.perf_counter()
    entry = MODELS[args.model]
    opts = resolve_fit_options(args, entry.defaults)
    output = check_output_path(Path(args.output), "output file")
    model_dir = check_model_dir(Path(args.model_dir) if args.model_dir else output.with_name(f"{output.stem}_model"))
    summary_path = check_output_path(Path(args.summary) if args.summary else output.with_suffix(".json"), "summary")
    if len({output.resolve(), model_dir.resolve(), summary_path.resolve()}) < 3:
        raise UsageError("the output file, the model directory and the summary must be three different paths.")
    steps = [*COMMON_STEPS, *entry.steps]
    unknown_steps = sorted(set(opts["pp_kwargs"]) - set(steps))
    if unknown_steps:
        raise UsageError(f"pp_kwargs names {unknown_steps}, which are not steps of {entry.fit}'s chain {steps}.")
    _check_step_options(opts, steps, args.model)
    train_kwargs = _train_kwargs(opts)
    opts = {**opts, "train_kwargs": train_kwargs}
    # the input first (quick), then the model's arguments (which import the model: torch, scvi-tools)
    adata = read_h5ad(args.input)
    _check_keys(adata, opts)

    import pertgrn
    import pertgrn.tl
    from pertgrn._utils import SUMMARY, logger

    fit = getattr(pertgrn.tl, entry.fit)
    model_cls = import_object(entry.model_class)
    fit_kwargs = _fit_arguments(fit, opts, args.model)
    _check_arguments(model_cls, opts)

    ready = time.perf_counter()
    before = _key_sets(adata)
    written: dict[str, set[str]] = {}
    records: list[dict[str, Any]] = []
    earlier_ran = False
    for name in steps:
        step = STEPS[name]
        if not step.needed(opts):
            records.append({"step": name, "ran": False, "reason": "not needed", "seconds": 0.0})
            continue
        runs, reason = plan_step(step, adata, opts, earlier_ran=earlier_ran)
        seconds = 0.0
        if runs:
            # a step that reruns over present keys changes what the user had: say so at the default verbosity
            level = SUMMARY if reason.startswith("present but") else logging.INFO
            logger.log(level, "pertgrn fit: running pp.%s (%s)", name, reason)
            t0 = time.perf_counter()
            step.function()(adata, **step.call_arguments(adata, opts), **opts["pp_kwargs"].get(name, {}))
            seconds = time.perf_counter() - t0
            _add_keys(written, step.keys(opts))
            earlier_ran = earlier_ran or not step.keep_existing
        else:
            logger.info("pertgrn fit: skipping pp.%s (%s)", name, reason)
        records.append({"step": name, "ran": runs, "reason": reason, "seconds": round(seconds, 3)})
    preprocessing_seconds = time.perf_counter() - ready

    t0 = time.perf_counter()
    model = fit(adata, **fit_kwargs)
    fit_seconds = time.perf_counter() - t0
    key = fit_kwargs.get("key_added", inspect.signature(fit).parameters["key_added"].default)
    record = adata.uns[key]
    _add_keys(written, {slot: [name] for slot, name in record["keys"].items()})
    _add_keys(written, {"uns": [key]})
    after = _key_sets(adata)
    _add_keys(written, {slot: after[slot] - before[slot] for slot in SLOTS})
    # the record's own rule: a cut at 0.5 means nothing for GPO-VAE's default preset or a latent DAG
    edge_threshold = float(record["edge_rule"]["min_weight"])
    n_edges = len(pertgrn.get.grn_df(adata, key=key))
    n_stored = int(adata.varp[record["keys"]["varp"]].nnz) if record["keys"].get("varp") in adata.varp else None
    trainer = getattr(model, "trainer", None)
    test_key = opts["test_key"]
    summary: dict[str, Any] = {
        "command": "fit",
        "argv": list(args.argv),
        "pertgrn_version": pertgrn.__version__,
        "model": args.model,
        "model_class": type(model).__name__,
        "input": str(Path(args.input).resolve()),
        "output": str(output.resolve()),
        "model_dir": str(model_dir.resolve()),
        "summary": str(summary_path.resolve()),
        "key_added": key,
        "options": {option.name: opts[option.name] for option in FIT_OPTIONS},
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_held_out": int(adata.obs[test_key].sum()) if test_key is not None else 0,
        "preprocessing": records,
        "n_epochs": int(record["params"]["n_epochs_trained"]),
        "n_steps": int(trainer.global_step) if trainer is not None else None,
        "n_edges": n_edges,
        "edge_threshold": edge_threshold,
        "n_edges_stored": n_stored,
        "keys_written": {slot: sorted(written[slot]) for slot in SLOTS if written.get(slot)},
        # start: imports, reading and checking the input; preprocessing: the steps that ran
        "seconds": {
            "start": round(ready - start, 3),
            "preprocessing": round(preprocessing_seconds, 3),
            "fit": round(fit_seconds, 3),
        },
    }

    with StagedOutputs() as staged:
        t0 = time.perf_counter()
        model.save(str(staged.stage(model_dir)), overwrite=True, save_anndata=False)
        adata.write_h5ad(staged.stage(output))
        summary["seconds"]["write"] = round(time.perf_counter() - t0, 3)
        summary["seconds"]["total"] = round(time.perf_counter() - start, 3)
        summary["wall_time_s"] = summary["seconds"]["total"]
        write_json(staged.stage(summary_path), summary)
        staged.commit()

    n_ran = sum(r["ran"] for r in records)
    lines = [
        f"pertgrn fit {args.model}: {adata.n_obs:,} cells x {adata.n_vars:,} genes, "
        f"{n_ran} preprocessing step(s) run, {len(records) - n_ran} skipped",
        f"  trained     {summary['n_epochs']} epochs ({summary['n_steps']} steps) in {fit_seconds:.1f} s",
        f"  GRN         {n_edges} edges with weight above {edge_threshold:g} "
        f"({n_stored} between measured genes in varp[{record['keys']['varp']!r}])",
        f"  wall time   {summary['wall_time_s']:.1f} s",
        f"  written     {output}",
        f"              {model_dir}",
        f"              {summary_path}",
    ]
    print("\n".join(lines), file=stdout)
    return 0

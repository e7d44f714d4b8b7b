"""The preprocessing chain of ``pertgrn fit``: which ``pp`` step runs, with what, and which is skipped.

A step is skipped when what it writes is present and was computed with what this run asks for
(the options the command line passes to it, and the step's own arguments given in ``pp_kwargs``);
otherwise it runs, and every later step runs after it, since it read what changed. ``--redo``
runs every step, except that an existing held-out column (``test_key``) is always kept: it defines
what the evaluation scores. pertgrn is imported inside the functions only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pertgrn._constants import (
    CONDITION_KEY,
    EXTENDED_KEY,
    N_TARGETS_KEY,
    PERTURBED_KEY,
    QC_FAIL_KEY,
    UNS_KEY,
)
from pertgrn.cli._options import REFERENCE_GRN_KEY, TF_ACTIVITY_KEY, TF_COMMUNITIES_KEY

if TYPE_CHECKING:
    from anndata import AnnData

Options = Mapping[str, Any]


def _plain(value: Any) -> Any:
    """A recorded value as plain Python (h5ad gives back lists as arrays, numbers as numpy scalars)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, tuple):
        value = list(value)
    return value


def _pertgrn_record(adata: AnnData, entry: str) -> Mapping[str, Any] | None:
    record = adata.uns.get(UNS_KEY)
    if not isinstance(record, Mapping) or not isinstance(record.get(entry), Mapping):
        return None
    params = record[entry].get("params")
    return params if isinstance(params, Mapping) else {}


@dataclass(frozen=True)
class Step:
    """One ``pp`` step as the command line runs it."""

    name: str
    #: whether this run needs the step
    needed: Callable[[Options], bool]
    #: the arguments the command line passes, from its options
    arguments: Callable[[Options], dict[str, Any]]
    #: which of those arguments must agree with the record of a previous run for the step to be skipped
    compared: tuple[str, ...]
    #: the parameters a previous run recorded (normalised to the function's arguments), None when absent
    record: Callable[[AnnData, Options], Mapping[str, Any] | None]
    #: the keys the step writes, by slot
    keys: Callable[[Options], dict[str, list[str]]]
    #: an existing result is kept, even with ``--redo`` (it may be the user's), and running the step
    #: does not make later steps rerun
    keep_existing: bool = False
    #: turns ``arguments`` into the function's keyword arguments where they depend on the data
    #: (``tf_activity``: ``test_key`` → ``fit_mask``); None: they are passed as they are
    prepare: Callable[[AnnData, dict[str, Any]], dict[str, Any]] | None = None
    #: arguments of the function that ``prepare`` sets (refused in ``pp_kwargs`` like ``arguments``)
    prepared: tuple[str, ...] = ()

    def function(self) -> Callable[..., Any]:
        """The ``pertgrn.pp`` function."""
        import pertgrn.pp

        return getattr(pertgrn.pp, self.name)

    def call_arguments(self, adata: AnnData, opts: Options) -> dict[str, Any]:
        """The keyword arguments the command line passes to :meth:`function` on ``adata``."""
        arguments = self.arguments(opts)
        return self.prepare(adata, arguments) if self.prepare is not None else arguments


def _perturbations_record(adata: AnnData, opts: Options) -> dict[str, Any] | None:
    record = adata.uns.get(UNS_KEY)
    if not isinstance(record, Mapping) or "targets" not in record or CONDITION_KEY not in adata.obs:
        return None
    labels = _plain(record.get("control_labels", []))
    return {
        "perturbation_key": record.get("perturbation_key"),
        "delimiter": record.get("delimiter"),
        "control": sorted(labels) if isinstance(labels, list) else [labels],
    }


def _perturbations_arguments(opts: Options) -> dict[str, Any]:
    return {"perturbation_key": opts["perturbation_key"], "control": opts["control"], "delimiter": opts["delimiter"]}


def _qc_record(adata: AnnData, opts: Options) -> Mapping[str, Any] | None:
    return _pertgrn_record(adata, "qc") if QC_FAIL_KEY in adata.obs else None


def _qc_keys(opts: Options) -> dict[str, list[str]]:
    from pertgrn.pp._qc import QC_FLAG_KEYS, QC_METRIC_KEYS

    return {"obs": [*QC_METRIC_KEYS.values(), *QC_FLAG_KEYS.values(), QC_FAIL_KEY], "uns": [UNS_KEY]}


def _extended_record(adata: AnnData, opts: Options) -> Mapping[str, Any] | None:
    return _pertgrn_record(adata, "extended_genes") if EXTENDED_KEY in adata.var else None


def _pairing_record(adata: AnnData, opts: Options) -> dict[str, Any] | None:
    key = opts["pairing_key"]
    entry = adata.uns.get(key)
    if key not in adata.obsp or not isinstance(entry, Mapping):
        return None
    params = dict(entry.get("params", {}))
    # ot_pairing records "no value" as a word or a zero
    for name, meaning_none in (("layer", "X"), ("test_key", ""), ("use_rep", "pca_controls")):
        if params.get(name) == meaning_none:
            params[name] = None
    for name in ("max_partners", "max_iter"):
        if params.get(name) == 0:
            params[name] = None
    return params


def _path(value: str | None) -> str | None:
    """An option's file as an absolute path (what ``pp.reference_grn`` records), or None."""
    return None if value is None else str(Path(value).resolve())


def _gcrl_needed(opts: Options) -> bool:
    """Whether ``reference_grn`` and ``tf_communities`` run: the fit reads the communities they write."""
    return opts["activity_key"] is not None and opts["communities_key"] == TF_COMMUNITIES_KEY


def _reference_grn_arguments(opts: Options) -> dict[str, Any]:
    return {
        "tfs": _path(opts["tfs"]),
        "prior": _path(opts["prior"]),
        "layer": opts["layer"],
        "test_key": opts["test_key"],
        "seed": opts["seed"],
        "key_added": REFERENCE_GRN_KEY,
    }


def _reference_grn_record(adata: AnnData, opts: Options) -> dict[str, Any] | None:
    entry = adata.uns.get(REFERENCE_GRN_KEY)
    if not isinstance(entry, Mapping) or "edges" not in entry:
        return None
    params = dict(entry.get("params", {}))
    # reference_grn records "no value" as a word (tfs and prior given as paths are recorded as such)
    for name, meaning_none in (("layer", "X"), ("test_key", ""), ("prior", "none"), ("edge_threshold", "none")):
        if isinstance(params.get(name), str) and params[name] == meaning_none:
            params[name] = None
    return params


def _communities_record(adata: AnnData, opts: Options) -> Mapping[str, Any] | None:
    from pertgrn.pp._tf_communities import community_column

    entry = adata.uns.get(TF_COMMUNITIES_KEY)
    if not isinstance(entry, Mapping) or "communities" not in entry:
        return None
    if community_column(TF_COMMUNITIES_KEY) not in adata.var:
        return None
    params = entry.get("params")
    return params if isinstance(params, Mapping) else {}


def _communities_keys(opts: Options) -> dict[str, list[str]]:
    from pertgrn.pp._tf_communities import community_column

    return {"var": [community_column(TF_COMMUNITIES_KEY)], "uns": [TF_COMMUNITIES_KEY]}


def _activity_prepare(adata: AnnData, arguments: dict[str, Any]) -> dict[str, Any]:
    """``tf_activity`` fits on the cells that are not held out: ``test_key`` becomes ``fit_mask``."""
    arguments = dict(arguments)
    test_key = arguments.pop("test_key")
    arguments["fit_mask"] = None if test_key is None else ~adata.obs[test_key].to_numpy(dtype=bool)
    return arguments


def _activity_record(adata: AnnData, opts: Options) -> dict[str, Any] | None:
    from pertgrn.pp._tf_activity import activity_names

    entry = adata.uns.get(activity_names(TF_ACTIVITY_KEY)[0])
    if TF_ACTIVITY_KEY not in adata.obsm or not isinstance(entry, Mapping):
        return None
    params = dict(entry.get("params", {}))
    if params.get("layer") == "X":
        params["layer"] = None
    # tf_activity records its fit cells as "all", an obs column or "array" (the command line's mask):
    # an array is the asked test_key's when it holds as many cells as are not held out
    fit_mask, n_fit = params.pop("fit_mask", None), entry.get("n_fit_cells")
    test_key = opts["test_key"]
    if fit_mask == "all":
        params["test_key"] = None
    elif fit_mask == "array" and test_key in adata.obs and n_fit == int((~adata.obs[test_key].to_numpy(bool)).sum()):
        params["test_key"] = test_key
    else:
        params["test_key"] = f"<fit_mask {fit_mask!r} of {n_fit} cells>"
    return params


def _activity_keys(opts: Options) -> dict[str, list[str]]:
    from pertgrn.pp._tf_activity import activity_names

    base, loadings = activity_names(TF_ACTIVITY_KEY)
    return {"obsm": [TF_ACTIVITY_KEY], "varm": [loadings], "uns": [base]}


#: Every step the command line can run, by ``pertgrn.pp`` name.
STEPS: dict[str, Step] = {
    step.name: step
    for step in (
        Step(
            "annotate_perturbations",
            needed=lambda o: True,
            arguments=_perturbations_arguments,
            compared=("perturbation_key", "delimiter", "control"),
            record=_perturbations_record,
            keys=lambda o: {"obs": [CONDITION_KEY, N_TARGETS_KEY], "var": [PERTURBED_KEY], "uns": [UNS_KEY]},
        ),
        Step(
            "split_cells",
            needed=lambda o: o["test_key"] is not None,
            arguments=lambda o: {"key_added": o["test_key"], "seed": o["seed"]},
            compared=(),
            record=lambda adata, o: {} if o["test_key"] in adata.obs else None,
            keys=lambda o: {"obs": [o["test_key"]], "uns": [UNS_KEY]},
            keep_existing=True,
        ),
        Step(
            "annotate_qc",
            needed=lambda o: o["qc_key"] == QC_FAIL_KEY,
            arguments=lambda o: {"layer": o["layer"], "random_state": o["seed"]},
            compared=("layer",),
            record=_qc_record,
            keys=_qc_keys,
        ),
        Step(
            "select_extended_genes",
            needed=lambda o: o["extended_key"] == EXTENDED_KEY,
            arguments=lambda o: {"layer": o["layer"], "test_key": o["test_key"]},
            compared=("layer", "test_key"),
            record=_extended_record,
            keys=lambda o: {"var": [EXTENDED_KEY], "uns": [UNS_KEY]},
        ),
        Step(
            "ot_pairing",
            needed=lambda o: o["pairing_key"] is not None,
            arguments=lambda o: {
                "layer": o["layer"],
                "test_key": o["test_key"],
                "seed": o["seed"],
                "key_added": o["pairing_key"],
            },
            compared=("layer", "test_key"),
            record=_pairing_record,
            keys=lambda o: {"obsp": [o["pairing_key"]], "uns": [o["pairing_key"]]},
        ),
        Step(
            "reference_grn",
            needed=_gcrl_needed,
            arguments=_reference_grn_arguments,
            compared=("tfs", "prior", "layer", "test_key"),
            record=_reference_grn_record,
            keys=lambda o: {"uns": [REFERENCE_GRN_KEY]},
        ),
        Step(
            "tf_communities",
            needed=_gcrl_needed,
            arguments=lambda o: {"key": REFERENCE_GRN_KEY, "seed": o["seed"], "key_added": TF_COMMUNITIES_KEY},
            compared=("key",),
            record=_communities_record,
            keys=_communities_keys,
        ),
        Step(
            "tf_activity",
            needed=lambda o: o["activity_key"] == TF_ACTIVITY_KEY,
            arguments=lambda o: {
                "key": o["communities_key"],
                "test_key": o["test_key"],
                "layer": o["layer"],
                "key_added": TF_ACTIVITY_KEY,
            },
            compared=("key", "test_key", "layer"),
            record=_activity_record,
            keys=_activity_keys,
            prepare=_activity_prepare,
            prepared=("fit_mask",),
        ),
    )
}
#: Options that only a step reads, by the step: refused for a model whose chain lacks it.
STEP_OPTIONS = {"tfs": "reference_grn", "prior": "reference_grn"}
#: Steps every model's chain starts with.
COMMON_STEPS = ("annotate_perturbations", "split_cells")


def _same(recorded: Any, requested: Any) -> bool:
    recorded, requested = _plain(recorded), _plain(requested)
    if isinstance(recorded, list) or isinstance(requested, list):
        as_list = lambda v: sorted(map(str, v)) if isinstance(v, list) else [str(v)]
        return as_list(recorded) == as_list(requested)
    return recorded == requested


def differences(
    step: Step, record: Mapping[str, Any], kwargs: Mapping[str, Any], pp_kwargs: Mapping[str, Any]
) -> list[str]:
    """What this run asks of ``step`` that its record disagrees with, as ``name=recorded (asked: value)``."""
    asked = {name: kwargs[name] for name in step.compared}
    if step.name == "annotate_perturbations" and asked.get("control") is None:
        del asked["control"]  # detected: any recorded label does
    asked.update(pp_kwargs)
    return [
        f"{name}={_plain(record.get(name))!r} (asked: {value!r})"
        for name, value in asked.items()
        if not _same(record.get(name), value)
    ]


def plan_step(step: Step, adata: AnnData, opts: Options, *, earlier_ran: bool) -> tuple[bool, str]:
    """Whether ``step`` runs in this run, and why (a short phrase for the log and the summary)."""
    record = step.record(adata, opts)
    if record is None:
        return True, "absent"
    if step.keep_existing:
        return False, "present (kept even with --redo)" if opts["redo"] else "present"
    if opts["redo"]:
        return True, "--redo"
    if earlier_ran:
        return True, "an earlier step ran"
    changed = differences(step, record, step.arguments(opts), opts["pp_kwargs"].get(step.name, {}))
    if changed:
        return True, "present but computed with " + ", ".join(changed)
    return False, "present"

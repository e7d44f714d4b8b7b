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
from typing import TYPE_CHECKING, Any

from pertgrn._constants import (
    CONDITION_KEY,
    EXTENDED_KEY,
    N_TARGETS_KEY,
    PERTURBED_KEY,
    QC_FAIL_KEY,
    UNS_KEY,
)

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

    def function(self) -> Callable[..., Any]:
        """The ``pertgrn.pp`` function."""
        import pertgrn.pp

        return getattr(pertgrn.pp, self.name)


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
    )
}
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

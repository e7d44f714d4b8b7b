"""Parse and record the design of a CRISPR screen: which cells are controls, which genes each cell perturbs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from pertgrn._constants import CONDITION_KEY, KNOWN_CONTROL_LABELS, N_TARGETS_KEY, PERTURBED_KEY, UNS_KEY
from pertgrn._design import PerturbationDesign
from pertgrn._utils import logger, preview, suggest


def _detect_control(labels: Sequence[str]) -> str:
    known = {c.lower() for c in KNOWN_CONTROL_LABELS}
    found = [label for label in labels if label.lower() in known]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(
            "Could not detect the control label: none of the perturbation labels is one of "
            f"{list(KNOWN_CONTROL_LABELS)} (case-insensitive). Pass `control=` explicitly. "
            f"Labels seen: {preview(labels)}."
        )
    raise ValueError(f"Several labels look like controls: {found}. Pass `control=` naming the one (or ones) to use.")


def _canonical_condition(label: str, controls: set[str], delimiter: str) -> tuple[str, ...]:
    """Targets of a label, sorted and de-duplicated; control tokens inside combinations (``"KLF1+ctrl"``) dropped."""
    if label in controls:
        return ()
    parts = PerturbationDesign(control="", delimiter=delimiter).split(label)
    if any(p == "" for p in parts):
        raise ValueError(
            f"Perturbation label {label!r} splits on delimiter {delimiter!r} into an empty target name. "
            "Fix the label or pass the right `delimiter=`."
        )
    return tuple(sorted({p for p in parts if p not in controls}))


def annotate_perturbations(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str | Sequence[str] | None = None,
    delimiter: str = "+",
    copy: bool = False,
) -> AnnData | None:
    """Validate and record the perturbation design of a screen.

    Parses each cell's perturbation label into its targets (combinations such as ``"KLF1+MAP2K6"``
    are split on ``delimiter``), identifies the control cells and records every target, measured
    or not (CRISPRa targets are often absent from the expression panel). Every later step of
    pertgrn reads what this function writes. Labels are canonicalised: targets of a combination
    are sorted, repeated targets and control tokens inside a combination (the GEARS style
    ``"KLF1+ctrl"``) are dropped, so ``"B+A"``, ``"A+B"`` and ``"A+B+ctrl"`` are one condition.

    Parameters
    ----------
    adata
        Annotated data matrix of a screen, cells × genes.
    perturbation_key
        Column of ``adata.obs`` holding each cell's perturbation label.
    control
        Label (or labels) of the control cells. ``None`` detects one of the usual labels
        (``control``, ``ctrl``, ``non-targeting``, ``NT``, …, case-insensitive) and raises if
        none or several are present.
    delimiter
        String joining the targets of a combinatorial perturbation.
    copy
        Return an annotated copy instead of annotating ``adata`` in place.

    Returns
    -------
    The annotated copy if ``copy=True``, else ``None``; the annotated object gets

    ``obs["pertgrn_condition"]``
        Categorical canonical condition, the control category first, then singles, then
        combinations; control cells carry the (first) control label.
    ``obs["pertgrn_n_targets"]``
        Number of targets perturbed in the cell (0 for controls).
    ``var["pertgrn_perturbed"]``
        Whether the gene is the target of some perturbation.
    ``uns["pertgrn"]``
        ``perturbation_key``, ``control``, ``delimiter``, ``targets`` (every target in order,
        measured or not), ``measured_targets``, ``unmeasured_targets`` and ``n_cells`` per
        condition.

    Raises
    ------
    KeyError
        If ``perturbation_key`` is not a column of ``adata.obs``.
    ValueError
        If labels are missing or empty, ``var_names`` are duplicated, the control label is absent
        or ambiguous, or a label splits into an empty target name. ``adata`` is left untouched. A
        misspelt control label gets a suggestion (``"Non-targeting"`` → ``"non-targeting"``).

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(seed=0)
    >>> pg.pp.annotate_perturbations(adata, perturbation_key="perturbation", control="control")
    >>> adata.obs["pertgrn_condition"].cat.categories[0]
    'control'
    """
    if perturbation_key not in adata.obs.columns:
        raise KeyError(
            f"Column {perturbation_key!r} not found in adata.obs; available columns: {list(adata.obs.columns)}."
        )
    if not isinstance(delimiter, str) or delimiter == "":
        raise ValueError(f"`delimiter` must be a non-empty string, got {delimiter!r}.")
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:10].tolist()
        raise ValueError(
            f"adata.var_names must be unique to map targets to genes; duplicated: {dup}. "
            "Call `adata.var_names_make_unique()` first."
        )
    raw = adata.obs[perturbation_key]
    n_missing = int(raw.isna().sum())
    if n_missing:
        raise ValueError(f"{n_missing} cells have a missing (NaN) label in adata.obs[{perturbation_key!r}].")
    labels = raw.astype(str).str.strip()
    n_empty = int((labels == "").sum())
    if n_empty:
        raise ValueError(f"{n_empty} cells have an empty label in adata.obs[{perturbation_key!r}].")
    unique_labels = sorted(pd.unique(labels))

    if control is None:
        controls = [_detect_control(unique_labels)]
    else:
        controls = [control] if isinstance(control, str) else list(control)
        absent = [c for c in controls if c not in set(unique_labels)]
        if absent or not controls:
            close = [s for c in absent for s in suggest(c, unique_labels, n=1)]
            hint = f" Did you mean {close[0]!r}?" if len(close) == 1 else (f" Did you mean {close}?" if close else "")
            raise ValueError(
                f"Control label(s) {absent or controls} not found in adata.obs[{perturbation_key!r}].{hint} "
                f"Labels seen: {preview(unique_labels, n=30)}."
            )
    if not isinstance(copy, bool | np.bool_):
        raise TypeError(f"`copy` must be a bool, got {copy!r}.")
    control_set = set(controls)
    canonical_control = controls[0]

    parsed = {label: _canonical_condition(label, control_set, delimiter) for label in unique_labels}
    name_of = {label: (delimiter.join(t) if t else canonical_control) for label, t in parsed.items()}
    n_targets_of = {label: len(t) for label, t in parsed.items()}
    conditions = sorted(set(name_of.values()) - {canonical_control}, key=lambda c: (c.count(delimiter), c))
    categories = [canonical_control, *conditions]
    targets = sorted({t for ts in parsed.values() for t in ts})
    if canonical_control in targets:
        raise ValueError(f"The control label {canonical_control!r} is also used as a target name.")
    measured = set(adata.var_names)
    measured_targets = [t for t in targets if t in measured]
    unmeasured_targets = [t for t in targets if t not in measured]

    condition = pd.Categorical(labels.map(name_of).to_numpy(), categories=categories)
    n_cells = pd.Series(condition).value_counts().reindex(categories).fillna(0).astype(int)

    # every check passed: write
    if copy:
        adata = adata.copy()
    adata.obs[CONDITION_KEY] = condition
    adata.obs[N_TARGETS_KEY] = labels.map(n_targets_of).astype(np.int64).to_numpy()
    adata.var[PERTURBED_KEY] = adata.var_names.isin(targets)
    previous = dict(adata.uns.get(UNS_KEY, {}))
    previous.update(
        perturbation_key=perturbation_key,
        control=canonical_control,
        control_labels=list(controls),
        delimiter=delimiter,
        targets=targets,
        measured_targets=measured_targets,
        unmeasured_targets=unmeasured_targets,
        n_cells={str(k): int(v) for k, v in n_cells.items()},
    )
    adata.uns[UNS_KEY] = previous
    logger.info(
        "annotate_perturbations: %d control cells, %d conditions (%d combinations), %d targets (%d not measured)",
        n_cells.iloc[0],
        len(conditions),
        sum(c.count(delimiter) > 0 for c in conditions),
        len(targets),
        len(unmeasured_targets),
    )
    return adata if copy else None

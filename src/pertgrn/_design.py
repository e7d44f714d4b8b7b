"""The perturbation design of a screen: one definition of how a condition label names its targets.

:func:`pertgrn.pp.annotate_perturbations` records the design in ``uns["pertgrn"]``; everything else
(``pp``, the models, the baselines, ``tl.evaluate`` and the metrics it calls) reads it back through
:class:`PerturbationDesign`, so a screen written with ``"_"`` between targets is parsed the same
way everywhere. It lives outside :mod:`pertgrn.models` so that preprocessing does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from pertgrn._constants import CONDITION_KEY, UNS_KEY


@dataclass(frozen=True)
class PerturbationDesign:
    """Control label, delimiter and targets of a screen, with the parsing every step shares.

    Parameters
    ----------
    control
        Canonical control label (``obs["pertgrn_condition"]`` of control cells).
    delimiter
        String joining the targets of a combination (``"A+B"``).
    targets
        Every perturbation target of the screen, measured or not.
    control_labels
        Every label that means control (the canonical one first).

    Examples
    --------
    >>> from pertgrn._design import PerturbationDesign
    >>> design = PerturbationDesign(control="ctrl", delimiter="_", targets=("A", "B"))
    >>> design.split("A_B"), design.split("ctrl")
    (['A', 'B'], [])
    >>> design.multi_hot(["A", "A_B", "ctrl"], ["A", "B"]).toarray().tolist()
    [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    """

    control: str
    delimiter: str = "+"
    targets: tuple[str, ...] = ()
    control_labels: tuple[str, ...] = field(default=())

    @classmethod
    def from_adata(cls, adata: AnnData) -> PerturbationDesign:
        """The design recorded by :func:`pertgrn.pp.annotate_perturbations`, or an error saying to run it."""
        record = adata.uns.get(UNS_KEY)
        if not isinstance(record, Mapping) or "control" not in record:
            raise KeyError(
                f"adata.uns[{UNS_KEY!r}] holds no perturbation design. "
                "Run `pertgrn.pp.annotate_perturbations(adata, ...)` first."
            )
        if CONDITION_KEY not in adata.obs:
            raise KeyError(
                f"adata.obs[{CONDITION_KEY!r}] is missing. Run `pertgrn.pp.annotate_perturbations(adata, ...)` first."
            )
        control = str(record["control"])
        labels = record.get("control_labels")
        labels = [str(x) for x in labels] if labels is not None and len(labels) else [control]
        return cls(
            control=control,
            delimiter=str(record.get("delimiter", "+")),
            targets=tuple(str(t) for t in record.get("targets", ())),
            control_labels=tuple(labels),
        )

    def is_control(self, label: str) -> bool:
        """Whether ``label`` names control cells (the canonical label or a recorded control label)."""
        return str(label) == self.control or str(label) in self.control_labels

    def split(self, label: str) -> list[str]:
        """Targets of a condition label (empty for control)."""
        if self.is_control(label):
            return []
        return [t.strip() for t in str(label).split(self.delimiter)]

    def n_targets(self, label: str) -> int:
        """Number of targets a label perturbs (0 for control)."""
        return len(self.split(label))

    def is_single(self, label: str) -> bool:
        """Whether ``label`` perturbs exactly one target."""
        return self.n_targets(label) == 1

    def join(self, targets: Sequence[str]) -> str:
        """The canonical label of a set of targets (sorted, joined by the delimiter; control when empty)."""
        return self.delimiter.join(sorted(set(map(str, targets)))) if len(targets) else self.control

    def multi_hot(self, labels: Sequence[str] | pd.Series | np.ndarray, columns: Sequence[str]) -> sparse.csr_matrix:
        """Multi-hot ``len(labels) × len(columns)`` design: ``(i, j)`` is 1 when label ``i`` perturbs ``columns[j]``.

        Built once per distinct label and gathered for all rows (no loop over cells). Raises a
        :class:`KeyError` naming the targets that are not among ``columns``.
        """
        index = {str(c): j for j, c in enumerate(columns)}
        categorical = pd.Categorical(np.asarray(labels, dtype=object).astype(str))
        rows, cols, unknown = [], [], {}
        for code, label in enumerate(categorical.categories):
            for target in self.split(label):
                if target in index:
                    rows.append(code)
                    cols.append(index[target])
                else:
                    unknown.setdefault(target, label)
        if unknown:
            examples = ", ".join(f"{t!r} (in {label!r})" for t, label in list(unknown.items())[:5])
            raise KeyError(
                f"Unknown perturbation target(s): {examples}. Known targets: {len(index)} "
                f"(e.g. {list(index)[:5]}), combined with {self.delimiter!r}, or {self.control!r} for control."
            )
        per_label = sparse.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(categorical.categories), len(index))
        )
        per_label.sum_duplicates()
        per_label.data[:] = 1.0
        return per_label[categorical.codes]

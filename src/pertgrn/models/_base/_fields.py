"""scvi-tools fields that pertgrn models derive from the AnnData: the perturbation design and OT partners.

scvi-tools has no field for ``.obsp`` or for arrays computed from several parts of an AnnData. A
:class:`DerivedObsmField` computes its array when a screen is registered, writes it under a
private ``.obsm`` key and recomputes it from its sources when a saved model is set up on another
(or a re-read) AnnData. Two kinds are shared by every model:

- the multi-hot **design** of each cell over the model's design columns (sparse CSR,
  one or two non-zeros per row);
- the **OT partners** of each cell: a few control partners (indices, int32) and their weights
  (float32) from the transport plan in ``obsp``, the small per-cell field the paired data loader
  reads. Nothing of size ``n_obs × genes`` is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from anndata import AnnData
from scipy import sparse
from scvi.data.fields import ObsmField

from pertgrn._constants import CONDITION_KEY
from pertgrn._design import PerturbationDesign
from pertgrn._utils import logger

#: Registry keys shared by pertgrn models.
DESIGN_KEY = "design"
CONDITION_REGISTRY_KEY = "condition"
QC_KEY = "qc"
PARTNER_INDEX_KEY = "partner_index"
PARTNER_WEIGHT_KEY = "partner_weight"

#: Private ``.obsm`` keys the derived fields write.
DESIGN_OBSM_KEY = "_pertgrn_design"
PARTNER_INDEX_OBSM_KEY = "_pertgrn_partner_index"
PARTNER_WEIGHT_OBSM_KEY = "_pertgrn_partner_weight"


class DerivedObsmField(ObsmField):
    """An :class:`~scvi.data.fields.ObsmField` whose array pertgrn computes from the AnnData.

    Parameters
    ----------
    registry_key
        Key in the data registry.
    attr_key
        Private ``.obsm`` key the array is written to.
    compute
        ``compute(adata, state) -> array`` (``n_obs × n_columns``, dense or CSR), where ``state``
        is the field's state registry (its ``column_names`` and ``extra_state``).
    columns
        Names of the columns (stored in the state registry, so a transfer recomputes the same ones).
    precomputed
        The array for the AnnData being registered, when the caller already computed it while
        validating (avoids computing it twice).
    extra_state
        Further entries of the state registry (str / int / float / list values), kept on transfer.
    """

    def __init__(
        self,
        registry_key: str,
        attr_key: str,
        *,
        compute: Callable[[AnnData, dict], np.ndarray | sparse.csr_matrix],
        columns: Sequence[str],
        precomputed: np.ndarray | sparse.csr_matrix | None = None,
        extra_state: dict | None = None,
    ):
        super().__init__(registry_key, attr_key)
        self._compute = compute
        self._columns = [str(c) for c in columns]
        self._precomputed = precomputed
        self._extra_state = dict(extra_state or {})

    def _setup_column_names(self, adata: AnnData) -> np.ndarray:
        """The registered column names."""
        return np.asarray(self._columns, dtype=object)

    def register_field(self, adata: AnnData) -> dict:
        """Write the derived array, then register it with the column names."""
        state = {self.COLUMN_NAMES_KEY: self._columns, **self._extra_state}
        values = self._precomputed if self._precomputed is not None else self._compute(adata, state)
        self._precomputed = None
        adata.obsm[self.attr_key] = values
        state = super().register_field(adata)
        state.update(self._extra_state)
        return state

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs) -> dict:
        """Recompute the array on ``adata_target`` for the registered columns."""
        adata_target.obsm[self.attr_key] = self._compute(adata_target, dict(state_registry))
        state = super().transfer_field(state_registry, adata_target, **kwargs)
        state.update({k: v for k, v in state_registry.items() if k != self.COLUMN_NAMES_KEY})
        return state


# ------------------------------------------------------------------------------------------------
# perturbation design
# ------------------------------------------------------------------------------------------------
def compute_design(adata: AnnData, state: dict) -> sparse.csr_matrix:
    """Cells × design-columns multi-hot design of ``obs["pertgrn_condition"]`` (controls have empty rows)."""
    design = PerturbationDesign.from_adata(adata)
    return design.multi_hot(adata.obs[CONDITION_KEY], list(state["column_names"])).astype(np.float32)


def design_field(adata: AnnData, columns: Sequence[str]) -> DerivedObsmField:
    """The design field over ``columns``, validated (and computed) now; raises before anything is written."""
    design = PerturbationDesign.from_adata(adata)
    values = compute_design(adata, {"column_names": list(columns)})
    return DerivedObsmField(
        DESIGN_KEY,
        DESIGN_OBSM_KEY,
        compute=compute_design,
        columns=columns,
        precomputed=values,
        extra_state={"control": design.control, "delimiter": design.delimiter},
    )


# ------------------------------------------------------------------------------------------------
# optimal-transport partners
# ------------------------------------------------------------------------------------------------
def validate_pairing(adata: AnnData, pairing_key: str, is_control: np.ndarray) -> sparse.csr_matrix:
    """Check ``obsp[pairing_key]`` against the OT-pairing contract and return it as CSR.

    The plan must be ``n_obs × n_obs`` and non-negative, and perturbed cells may only point at
    control cells.
    """
    if pairing_key not in adata.obsp:
        raise KeyError(
            f"adata.obsp[{pairing_key!r}] is missing. Run `pertgrn.pp.ot_pairing(adata)` first, "
            "or pass `pairing_key=None` where the model allows training without partners."
        )
    plan = sparse.csr_matrix(adata.obsp[pairing_key], dtype=np.float64)
    if plan.shape != (adata.n_obs, adata.n_obs):
        raise ValueError(f"adata.obsp[{pairing_key!r}] must be n_obs × n_obs, found shape {plan.shape}.")
    if plan.nnz and (plan.data < 0).any():
        raise ValueError(f"adata.obsp[{pairing_key!r}] holds negative weights; expected a transport plan.")
    columns_used = np.unique(plan[~is_control].indices)
    if columns_used.size and not is_control[columns_used].all():
        raise ValueError(
            f"adata.obsp[{pairing_key!r}] pairs perturbed cells with non-control cells; expected the plan of "
            "`pertgrn.pp.ot_pairing` (perturbed rows pointing at control cells)."
        )
    return plan


def top_partners(
    plan: sparse.csr_matrix, *, max_partners: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``max_partners`` heaviest partners in ``plan``, weights renormalised to sum to one.

    Parameters
    ----------
    plan
        ``n_obs × n_obs`` CSR transport plan (row = perturbed cell, column = control partner).
    max_partners
        Partners kept per cell (the heaviest; ties by column index).
    allowed
        Boolean mask of the cells that may be partners (e.g. training cells only); ``None`` allows all.

    Returns
    -------
    ``(index, weight)``: ``n_obs × max_partners`` int32 partner indices (``-1`` where a cell has
    fewer partners) and float32 weights (``0`` there); rows with a partner sum to one.
    """
    plan = sparse.csr_matrix(plan)
    plan.eliminate_zeros()
    rows = np.repeat(np.arange(plan.shape[0]), np.diff(plan.indptr))
    cols, vals = plan.indices, plan.data
    if allowed is not None:
        keep = allowed[cols]
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
    # one sort over all stored entries: by row, heaviest first, ties by column — no loop over cells
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.searchsorted(rows, np.arange(plan.shape[0]))
    rank = np.arange(rows.size) - starts[rows]
    keep = rank < max_partners
    index = np.full((plan.shape[0], max_partners), -1, dtype=np.int32)
    weight = np.zeros((plan.shape[0], max_partners), dtype=np.float64)
    index[rows[keep], rank[keep]] = cols[keep]
    weight[rows[keep], rank[keep]] = vals[keep]
    total = weight.sum(axis=1, keepdims=True)
    np.divide(weight, total, out=weight, where=total > 0)
    return index, weight.astype(np.float32)


def compute_partners(adata: AnnData, state: dict) -> tuple[np.ndarray, np.ndarray]:
    """Partner indices and weights of every cell from ``obsp[state["pairing_key"]]``.

    Control cells and cells without a partner get ``-1`` / ``0``. When ``state["test_key"]`` names a
    boolean ``obs`` column of ``adata``, held-out cells are never partners. On an AnnData without
    the pairing (embedding or predicting on new cells), every cell is left without partners.
    """
    pairing_key = state["pairing_key"]
    max_partners = int(state["max_partners"])
    design = PerturbationDesign.from_adata(adata)
    is_control = np.asarray(adata.obs[CONDITION_KEY] == design.control)
    if pairing_key not in adata.obsp and state.get("transfer", False):
        logger.debug("adata.obsp[%r] is absent: cells are set up without OT partners.", pairing_key)
        return np.full((adata.n_obs, max_partners), -1, dtype=np.int32), np.zeros(
            (adata.n_obs, max_partners), np.float32
        )
    plan = validate_pairing(adata, pairing_key, is_control)
    allowed = is_control.copy()
    test_key = state.get("test_key") or None
    if test_key is not None and test_key in adata.obs:
        allowed &= ~adata.obs[test_key].to_numpy(dtype=bool)
    plan = plan.multiply(~is_control[:, None]).tocsr()  # only perturbed cells have partners
    index, weight = top_partners(plan, max_partners=max_partners, allowed=allowed)
    unpaired = int(((~is_control) & (index[:, 0] < 0)).sum())
    if unpaired:
        logger.info("%d perturbed cells have no (training) partner in adata.obsp[%r].", unpaired, pairing_key)
    return index, weight


class _PartnerArray:
    """``compute`` of a partner field: the indices (``part=0``) or weights (``part=1``) of :func:`compute_partners`.

    A class rather than a closure, so that a registered manager pickles (Lightning's ``ddp_spawn``
    sends the model to the processes it starts).
    """

    def __init__(self, part: int, state: dict):
        self.part = part
        self.state = dict(state)

    def __call__(self, adata: AnnData, state: dict) -> np.ndarray:
        return compute_partners(adata, {**self.state, **state})[self.part]


def partner_fields(
    adata: AnnData, *, pairing_key: str, max_partners: int, test_key: str | None, transfer: bool = False
) -> list[DerivedObsmField]:
    """The two partner fields (indices, weights), computed now so that errors come before any write.

    ``transfer=True`` (a saved model set up on new cells) tolerates a missing pairing.
    """
    state = {"pairing_key": pairing_key, "max_partners": int(max_partners), "test_key": test_key or ""}
    transfer_state = {**state, "transfer": True}
    index, weight = compute_partners(adata, transfer_state if transfer else state)
    columns = [str(k) for k in range(max_partners)]
    return [
        DerivedObsmField(
            PARTNER_INDEX_KEY,
            PARTNER_INDEX_OBSM_KEY,
            compute=_PartnerArray(0, transfer_state),
            columns=columns,
            precomputed=index,
            extra_state=state,
        ),
        DerivedObsmField(
            PARTNER_WEIGHT_KEY,
            PARTNER_WEIGHT_OBSM_KEY,
            compute=_PartnerArray(1, transfer_state),
            columns=columns,
            precomputed=weight,
            extra_state=state,
        ),
    ]

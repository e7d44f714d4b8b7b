"""What every pertgrn model shares: fields, paired loading, the model base and the fitting path."""

from pertgrn._design import PerturbationDesign
from pertgrn.models._base._fields import (
    CONDITION_REGISTRY_KEY,
    DESIGN_KEY,
    PARTNER_INDEX_KEY,
    PARTNER_WEIGHT_KEY,
    QC_KEY,
    DerivedObsmField,
    compute_partners,
    design_field,
    partner_fields,
    top_partners,
)
from pertgrn.models._base._fit import fit_model, result_keys, write_results
from pertgrn.models._base._model import PerturbationModel, check_bool_column, check_positive_int
from pertgrn.models._base._pairing import (
    PARTNER_LIBRARY_KEY,
    PARTNER_X_KEY,
    ConditionBatchSampler,
    DistributedConditionBatchSampler,
    PairedAnnDataLoader,
    PairedDataSplitter,
    control_cells,
)

__all__ = [
    "CONDITION_REGISTRY_KEY",
    "ConditionBatchSampler",
    "DistributedConditionBatchSampler",
    "DESIGN_KEY",
    "PARTNER_INDEX_KEY",
    "PARTNER_LIBRARY_KEY",
    "PARTNER_WEIGHT_KEY",
    "PARTNER_X_KEY",
    "QC_KEY",
    "DerivedObsmField",
    "PairedAnnDataLoader",
    "PairedDataSplitter",
    "PerturbationDesign",
    "PerturbationModel",
    "check_bool_column",
    "check_positive_int",
    "compute_partners",
    "control_cells",
    "design_field",
    "fit_model",
    "partner_fields",
    "result_keys",
    "top_partners",
    "write_results",
]

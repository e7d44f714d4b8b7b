"""Preprocessing: parse the screen's design, flag QC artifacts, choose genes, pair cells with controls."""

from pertgrn.pp._annotate_perturbations import annotate_perturbations
from pertgrn.pp._extended_genes import select_extended_genes
from pertgrn.pp._ot_pairing import ot_pairing
from pertgrn.pp._qc import annotate_qc
from pertgrn.pp._reference_grn import reference_grn
from pertgrn.pp._tf_activity import tf_activity
from pertgrn.pp._tf_communities import tf_communities
from pertgrn.pp._weak_perturbations import filter_weak_perturbations

__all__ = [
    "annotate_perturbations",
    "annotate_qc",
    "filter_weak_perturbations",
    "ot_pairing",
    "reference_grn",
    "select_extended_genes",
    "tf_activity",
    "tf_communities",
]

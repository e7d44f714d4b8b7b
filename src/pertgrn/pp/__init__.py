"""Preprocessing: assign guides, parse the design, flag QC artifacts, choose genes, hold cells out, pair cells."""

from pertgrn.pp._annotate_perturbations import annotate_perturbations
from pertgrn.pp._assign_guides import assign_guides
from pertgrn.pp._extended_genes import select_extended_genes
from pertgrn.pp._ot_pairing import ot_pairing
from pertgrn.pp._qc import annotate_qc
from pertgrn.pp._reference_grn import reference_grn
from pertgrn.pp._split_cells import split_cells
from pertgrn.pp._tf_activity import tf_activity
from pertgrn.pp._tf_communities import tf_communities
from pertgrn.pp._weak_perturbations import filter_weak_perturbations

__all__ = [
    "annotate_perturbations",
    "annotate_qc",
    "assign_guides",
    "filter_weak_perturbations",
    "ot_pairing",
    "reference_grn",
    "select_extended_genes",
    "split_cells",
    "tf_activity",
    "tf_communities",
]

"""Plots in the scanpy idiom: GRNs, treatment effects, metrics, training history, OT pairings."""

from pertgrn.pl._ate import ate_heatmap, ate_scatter
from pertgrn.pl._enrichment import enrichment
from pertgrn.pl._grn_heatmap import grn_heatmap
from pertgrn.pl._grn_network import grn_network
from pertgrn.pl._interactions import interactions
from pertgrn.pl._latent_dag import latent_dag
from pertgrn.pl._metrics import metrics
from pertgrn.pl._pairing import pairing
from pertgrn.pl._tf_communities import tf_communities
from pertgrn.pl._training_history import training_history

__all__ = [
    "ate_heatmap",
    "ate_scatter",
    "enrichment",
    "grn_heatmap",
    "grn_network",
    "interactions",
    "latent_dag",
    "metrics",
    "pairing",
    "tf_communities",
    "training_history",
]

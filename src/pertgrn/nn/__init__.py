"""Neural-network building blocks shared by two or more pertgrn models."""

from pertgrn.nn._dagma import (
    DAGMALayer,
    DAGMALoss,
    ThresholdedDAG,
    dagma_acyclicity,
    dagma_domain_guard_,
    dagma_loss,
    dagma_mu_schedule,
    dagma_score,
    squared_spectral_radius,
    threshold_dag,
)
from pertgrn.nn._graph_pathway import GraphPathwayEncoder, order_perturbed_first, preconditioning_mask
from pertgrn.nn._latent_modulator import LatentModulator
from pertgrn.nn._masked_linear import MaskedLinear
from pertgrn.nn._mlp import GaussianHead, ResidualMLP
from pertgrn.nn._mmd import mk_mmd_loss
from pertgrn.nn._relaxed_bernoulli import bernoulli_kl, relaxed_bernoulli_straight_through

__all__ = [
    "DAGMALayer",
    "DAGMALoss",
    "GaussianHead",
    "GraphPathwayEncoder",
    "LatentModulator",
    "MaskedLinear",
    "ResidualMLP",
    "ThresholdedDAG",
    "bernoulli_kl",
    "dagma_acyclicity",
    "dagma_domain_guard_",
    "dagma_loss",
    "dagma_mu_schedule",
    "dagma_score",
    "mk_mmd_loss",
    "order_perturbed_first",
    "preconditioning_mask",
    "relaxed_bernoulli_straight_through",
    "squared_spectral_radius",
    "threshold_dag",
]

"""Tools: fit models, predict perturbation responses, evaluate against baselines."""

from pertgrn.tl._align import align_latents, community_permutation_test
from pertgrn.tl._baselines import baseline_grn, baseline_predict
from pertgrn.tl._distances import distribution_distances
from pertgrn.tl._enrichment import enrich_latents
from pertgrn.tl._evaluate import evaluate
from pertgrn.tl._fit_gcrlvae import fit_gcrlvae
from pertgrn.tl._fit_gpovae import fit_gpovae
from pertgrn.tl._fit_raptorgraph import fit_raptorgraph
from pertgrn.tl._interactions import genetic_interactions
from pertgrn.tl._reverse import reverse_perturbation

__all__ = [
    "align_latents",
    "baseline_grn",
    "baseline_predict",
    "community_permutation_test",
    "distribution_distances",
    "enrich_latents",
    "evaluate",
    "fit_gcrlvae",
    "fit_gpovae",
    "fit_raptorgraph",
    "genetic_interactions",
    "reverse_perturbation",
]

"""Tools: fit models, predict perturbation responses, evaluate against baselines."""

from pertgrn.tl._baselines import baseline_grn, baseline_predict
from pertgrn.tl._distances import distribution_distances
from pertgrn.tl._enrichment import enrich_latents
from pertgrn.tl._evaluate import evaluate
from pertgrn.tl._fit_gpovae import fit_gpovae
from pertgrn.tl._fit_raptorgraph import fit_raptorgraph
from pertgrn.tl._interactions import genetic_interactions
from pertgrn.tl._reverse import reverse_perturbation

__all__ = [
    "baseline_grn",
    "baseline_predict",
    "distribution_distances",
    "enrich_latents",
    "evaluate",
    "fit_gpovae",
    "fit_raptorgraph",
    "genetic_interactions",
    "reverse_perturbation",
]

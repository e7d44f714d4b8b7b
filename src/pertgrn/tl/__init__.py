"""Tools: fit models, predict perturbation responses, evaluate against baselines."""

from pertgrn.tl._align import align_latents, community_permutation_test
from pertgrn.tl._baselines import baseline_grn, baseline_predict
from pertgrn.tl._evaluate import evaluate
from pertgrn.tl._fit_gcrlvae import fit_gcrlvae
from pertgrn.tl._fit_gpovae import fit_gpovae

__all__ = [
    "align_latents",
    "baseline_grn",
    "baseline_predict",
    "community_permutation_test",
    "evaluate",
    "fit_gcrlvae",
    "fit_gpovae",
]

"""Metrics of the GPO-VAE, RAPTORGraph and gCRL papers and of CausalBench, with one definition each."""

from pertgrn.metrics._ate import ate_pearson, ate_r2, topk_jaccard
from pertgrn.metrics._causalbench import false_omission_rate, mean_wasserstein, mean_wasserstein_at_k
from pertgrn.metrics._centroid import aecd
from pertgrn.metrics._distribution import mk_mmd, mse
from pertgrn.metrics._grn import grn_auprc, grn_early_precision, grn_precision_at_k
from pertgrn.metrics._interactions import additive_interaction_scores, interaction_precision_at_k, interaction_scores
from pertgrn.metrics._reverse import reverse_perturbation_hit_rate
from pertgrn.metrics._tmex import tmex

__all__ = [
    "additive_interaction_scores",
    "aecd",
    "ate_pearson",
    "ate_r2",
    "false_omission_rate",
    "grn_auprc",
    "grn_early_precision",
    "grn_precision_at_k",
    "interaction_precision_at_k",
    "interaction_scores",
    "mean_wasserstein",
    "mean_wasserstein_at_k",
    "mk_mmd",
    "mse",
    "reverse_perturbation_hit_rate",
    "tmex",
    "topk_jaccard",
]

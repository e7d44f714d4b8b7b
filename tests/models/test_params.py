"""The shared check of a model's keyword arguments (``models._base._params``)."""

from __future__ import annotations

import pytest

from pertgrn.models import GCRLVAE, GPOVAE, RaptorGraph


@pytest.mark.parametrize(
    ("model_cls", "params", "error", "message"),
    [
        (GPOVAE, {"n_latnt": 8}, TypeError, r"Unknown GPOVAE parameter\(s\) \['n_latnt'\]"),
        (GPOVAE, {"n_hops": -1}, ValueError, "`n_hops` must be an integer >= 0, found -1"),
        (GPOVAE, {"decoder_n_layers": 1.5}, ValueError, "`decoder_n_layers` must be a positive integer"),
        (GPOVAE, {"mask_prior": 1.0}, ValueError, r"`mask_prior` must be a number in \(0, 1\)"),
        (GPOVAE, {"max_effect": float("inf")}, ValueError, "`max_effect` must be a positive number"),
        (GPOVAE, {"deterministic_prediction": 1}, ValueError, "`deterministic_prediction` must be True or False"),
        (GPOVAE, {"gpo_loss": "all"}, ValueError, "`gpo_loss` must be one of"),
        # None is "the model decides" only where the signature's default is None
        (GPOVAE, {"gpo_offset": None}, ValueError, "`gpo_offset` must be a finite number, found None"),
        (RaptorGraph, {"sparsity_weight": 0.1}, TypeError, "Unknown RaptorGraph parameter"),
        (RaptorGraph, {"n_interaction_layers": True}, ValueError, "`n_interaction_layers` must be an integer >= 0"),
        (RaptorGraph, {"beta_kl": -0.1}, ValueError, "`beta_kl` must be a finite number >= 0"),
        (RaptorGraph, {"norm": "group"}, ValueError, "`norm` must be one of"),
        (GCRLVAE, {"n_hidden": 0}, ValueError, "`n_hidden` must be a positive integer"),
        (GCRLVAE, {"sinkhorn_tau": 0.0}, ValueError, "`sinkhorn_tau` must be a positive number"),
        (GCRLVAE, {"alpha_max": None}, ValueError, "`alpha_max` must be a finite number >= 0, found None"),
    ],
)
def test_bad_parameters_are_named(model_cls, params, error, message):
    with pytest.raises(error, match=message):
        model_cls.check_params(**params)


def test_none_where_the_model_decides_and_valid_values_pass():
    GPOVAE.check_params(n_latent=None, gpo_weight=None, deterministic_prediction=None, n_hops=0, mask_prior=0.5)
    RaptorGraph.check_params(n_latent=None, n_interaction_layers=0, shift_init=-1.0, norm="none")
    GCRLVAE.check_params(alignment_weight=None, routing="hybrid", n_latent=4)

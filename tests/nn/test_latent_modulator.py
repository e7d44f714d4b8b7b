"""Latent modulator: the intervention shifts exactly the target's coordinate (spec §8 test 3, A6)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from pertgrn.nn import GraphPathwayEncoder, LatentModulator

K, D = 3, 5


def _labels(*targets, batch=4):
    c = torch.zeros(batch, K)
    c[:, list(targets)] = 1.0
    return c


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_shift_touches_one_coordinate_and_is_the_same_for_every_cell(norm):
    torch.manual_seed(0)
    mod = LatentModulator(K, D, norm=norm)
    with torch.no_grad():
        mod.shift.copy_(torch.tensor([0.7, -1.3, 2.1]))
    z = torch.randn(4, D) * 3
    for targets, shifts in (((1,), (-1.3,)), ((0, 2), (0.7, 2.1))):  # a single, then a double (shifts add)
        z_obs, z_int = mod(z, _labels(*targets))
        untouched = [latent for latent in range(D) if latent not in targets]
        assert torch.equal(z_int[:, untouched], z_obs[:, untouched])  # every other coordinate: bit-identical
        expected = torch.tensor(shifts).expand(4, -1)  # the same shift for every cell, independent of z
        torch.testing.assert_close(z_int[:, list(targets)] - z_obs[:, list(targets)], expected)
    assert torch.equal(mod(z, None)[1], z_obs)


def test_shift_is_initialised_to_one_and_learnable():
    mod = LatentModulator(K, D, norm="none")
    assert torch.equal(mod.shift.detach(), torch.ones(K))
    z_obs, z_int = mod(torch.zeros(2, D), _labels(2, batch=2))
    z_int.sum().backward()
    assert mod.shift.grad.tolist() == [0.0, 0.0, 2.0]  # only the applied target's shift gets gradient
    assert torch.equal(mod.intervention(_labels(0, 1, batch=1)), torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]]))


def test_batch_norm_is_per_latent_and_uses_running_stats_at_eval():
    torch.manual_seed(1)
    mod = LatentModulator(K, D)  # norm="batch"
    z = torch.randn(64, D) * 4 + 2
    z_obs, _ = mod(z)
    torch.testing.assert_close(z_obs.mean(0), torch.zeros(D), atol=1e-6, rtol=0)
    mod.eval()
    z_eval, _ = mod(z[:1])
    rm, rv = mod.norm.running_mean, mod.norm.running_var
    torch.testing.assert_close(z_eval, (z[:1] - rm) / torch.sqrt(rv + mod.norm.eps))


def test_batch_norm_keeps_the_zero_jacobian_block_and_layer_norm_does_not():
    """With the per-latent standardiser, perturbed gene j still reaches only z̄_j (every cell of the batch)."""
    torch.manual_seed(2)
    n_input = 8
    enc = GraphPathwayEncoder(n_input, K, D, n_subgraphs=2).double()
    x = torch.randn(6, n_input, dtype=torch.float64)

    def z_bar(mod):
        return lambda v: mod(enc(v)[0])[0]

    batch_mod = LatentModulator(K, D, norm="batch").double()
    jac = jacobian(z_bar(batch_mod), x)  # (cells, latents, cells, genes)
    for j in range(K):
        others = [latent for latent in range(D) if latent != j]
        assert bool((jac[:, others, :, j] == 0).all())
        assert bool((jac[:, j, :, j] != 0).any())

    layer_mod = LatentModulator(K, D, norm="layer").double()
    jac = jacobian(z_bar(layer_mod), x)
    assert bool(jac[0, 1, 0, 0] != 0)  # A6: LayerNorm mixes coordinates (documented)


def test_modulator_validates():
    with pytest.raises(ValueError, match="norm"):
        LatentModulator(K, D, norm="group")
    with pytest.raises(ValueError, match="n_latent"):
        LatentModulator(4, 3)
    with pytest.raises(ValueError, match="columns"):
        LatentModulator(K, D, norm="none")(torch.zeros(2, D), torch.zeros(2, K + 1))

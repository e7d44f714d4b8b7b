"""GraphPathway encoder: the preconditioning of RAPTORGraph eq. 4 holds exactly (spec §8 tests 1–2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd.functional import jacobian

from pertgrn.nn import GraphPathwayEncoder, MaskedLinear, order_perturbed_first, preconditioning_mask

N_INPUT, N_TARGETS, N_LATENT, N_SUB = 9, 4, 6, 3  # 4 perturbed genes, 5 unperturbed, 2 free latents


def _encoder(seed=0, **kwargs):
    torch.manual_seed(seed)
    return GraphPathwayEncoder(N_INPUT, N_TARGETS, N_LATENT, n_subgraphs=N_SUB, **kwargs).double()


def _jacobians(enc, x):
    """∂loc/∂x and ∂scale/∂x of one cell, each (n_latent, n_input)."""
    return jacobian(lambda v: enc(v[None])[0][0], x), jacobian(lambda v: enc(v[None])[1][0], x)


def test_mask_is_eq4():
    mask = preconditioning_mask(5, 2, 4).int()
    expected = torch.tensor(
        [
            [1, 0, 1, 1, 1],  # latent 0: its own perturbed gene + every unperturbed gene
            [0, 1, 1, 1, 1],
            [0, 0, 1, 1, 1],  # free latents: no perturbed gene
            [0, 0, 1, 1, 1],
        ]
    )
    assert torch.equal(mask, expected.int())
    # an unmeasured target loses its diagonal entry: its column feeds nothing
    mask = preconditioning_mask(5, 2, 4, unmeasured_targets=[1])
    assert not mask[:, 1].any() and mask[1, 2:].all() and mask[0, 0]
    assert torch.equal(mask, preconditioning_mask(5, 2, 4, unmeasured_targets=[False, True]))


def test_mask_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_latent"):
        preconditioning_mask(5, 3, 2)
    with pytest.raises(ValueError, match="n_input"):
        preconditioning_mask(2, 3, 4)
    with pytest.raises(ValueError, match="indices"):
        preconditioning_mask(5, 2, 3, unmeasured_targets=[2])
    with pytest.raises(ValueError, match="length"):
        preconditioning_mask(5, 2, 3, unmeasured_targets=[True])


def test_masked_weights_are_zero_at_init_and_repeat_per_subgraph():
    enc = _encoder()
    w = enc.subgraphs.weight
    assert w.shape == (N_LATENT * N_SUB, N_INPUT)
    assert torch.equal(enc.mask, preconditioning_mask(N_INPUT, N_TARGETS, N_LATENT))
    assert bool((w[~enc.subgraphs.mask] == 0).all())
    # subgraphs of one latent share the mask but not the weights (independent initialisation)
    rows = w[N_SUB * 0 : N_SUB * 1]
    assert (rows[:, 0] != 0).all() and (rows[:, 1:N_TARGETS] == 0).all()
    assert len(set(rows[:, 0].tolist())) == N_SUB


def test_zero_jacobian_from_perturbed_gene_to_other_latents():
    """∂(μ_l, σ_l)/∂x_j = 0 exactly for every perturbed column j and every l ≠ j (incl. free latents)."""
    enc = _encoder()
    torch.manual_seed(1)
    for _ in range(3):
        x = torch.randn(N_INPUT, dtype=torch.float64)
        for jac in _jacobians(enc, x):
            block = jac[:, :N_TARGETS]  # latents × perturbed genes
            off_diagonal = block[~torch.eye(N_LATENT, N_TARGETS, dtype=torch.bool)]
            assert bool((off_diagonal == 0).all()), "a perturbed gene reaches another latent"
            assert bool((block[N_TARGETS:] == 0).all()), "a perturbed gene reaches a free latent"
            assert bool((torch.diagonal(block) != 0).all()), "perturbed gene i does not reach latent i"
            assert bool((jac[:, N_TARGETS:] != 0).all()), "an unperturbed gene does not reach every latent"


def test_unmeasured_target_column_is_ignored():
    enc = _encoder(unmeasured_targets=[2])
    x = torch.randn(N_INPUT, dtype=torch.float64)
    loc_jac, scale_jac = _jacobians(enc, x)
    assert bool((loc_jac[:, 2] == 0).all()) and bool((scale_jac[:, 2] == 0).all())
    assert bool((loc_jac[2, N_TARGETS:] != 0).all())  # its latent is fed by the unperturbed genes
    x2 = x.clone()
    x2[2] = 123.0  # whatever the column holds
    assert torch.equal(enc(x[None])[0], enc(x2[None])[0])


def test_mask_survives_adamw_steps_with_weight_decay():
    enc = _encoder()
    opt = torch.optim.AdamW(enc.parameters(), lr=0.05, weight_decay=0.1)
    torch.manual_seed(2)
    for _ in range(5):
        x = torch.randn(16, N_INPUT, dtype=torch.float64)
        loc, scale = enc(x)
        loss = (loc**2).sum() + scale.sum() - (loc[:, :1] * x[:, 1:2]).sum()  # pushes latent 0 towards gene 1
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert bool((enc.subgraphs.weight[~enc.subgraphs.mask] == 0).all())
    loc_jac, _ = _jacobians(enc, torch.randn(N_INPUT, dtype=torch.float64))
    assert bool((loc_jac[0, 1] == 0).all())


def test_grouped_aggregation_is_per_latent_and_interleaved():
    """Changing only latent i's subgraph / interaction weights moves only (μ_i, σ_i); channels alternate μ, σ."""
    enc = _encoder()
    x = torch.randn(5, N_INPUT, dtype=torch.float64)
    loc, scale = enc(x)
    i = 3
    with torch.no_grad():
        enc.subgraphs.weight[i * N_SUB : (i + 1) * N_SUB] *= 1.7
        enc.interaction_weight[0][i] += 0.3
    loc2, scale2 = enc(x)
    changed_loc = (loc2 != loc).any(dim=0)
    changed_scale = (scale2 != scale).any(dim=0)
    assert changed_loc.tolist() == [j == i for j in range(N_LATENT)]
    assert changed_scale.tolist() == [j == i for j in range(N_LATENT)]

    # channel order of the grouped convolution: μ_i from channel 2i, σ_i² = softplus(channel 2i + 1) + eps
    h = enc.subgraph_activations(x)
    w, b = enc.aggregate.weight, enc.aggregate.bias  # (2d, 1, m), (2d,)
    loc_ref = torch.einsum("bdm,dm->bd", h, w[0::2, 0]) + b[0::2]
    var_ref = torch.nn.functional.softplus(torch.einsum("bdm,dm->bd", h, w[1::2, 0]) + b[1::2]) + enc.var_eps
    loc, scale = enc(x)
    torch.testing.assert_close(loc, loc_ref)
    torch.testing.assert_close(scale, var_ref.sqrt())


def test_aggregation_is_the_grouped_convolution_with_its_gradients():
    """The batched-product aggregation gives the Conv1d's outputs and the same parameter gradients."""
    enc = _encoder(seed=2)
    h = enc.subgraph_activations(torch.randn(7, N_INPUT, dtype=torch.float64)).detach()
    ours = enc._aggregated(h)
    conv = enc.aggregate(h).squeeze(-1).reshape(7, N_LATENT, 2)  # channel 2i + o -> [i, o]
    torch.testing.assert_close(ours, conv, rtol=1e-12, atol=1e-12)
    weights = torch.randn(7, N_LATENT, 2, dtype=torch.float64)
    grads = []
    for out in (ours, conv):
        enc.zero_grad()
        (out * weights).sum().backward(retain_graph=True)
        grads.append((enc.aggregate.weight.grad.clone(), enc.aggregate.bias.grad.clone()))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_interaction_block_depth_and_shapes():
    for depth in (0, 2):
        enc = _encoder(n_interaction_layers=depth)
        assert len(enc.interaction_weight) == depth
        loc, scale = enc(torch.randn(2, 7, N_INPUT, dtype=torch.float64))  # leading batch dims
        assert loc.shape == scale.shape == (2, 7, N_LATENT)
    with pytest.raises(ValueError, match="columns"):
        _encoder()(torch.randn(3, N_INPUT + 1, dtype=torch.float64))


def test_order_perturbed_first():
    x = torch.arange(12.0).reshape(2, 6)
    out = order_perturbed_first(x, target_columns=[4, -1, 1], other_columns=[0, 2, 3, 5])
    expected = torch.tensor([[4.0, 0.0, 1.0, 0.0, 2.0, 3.0, 5.0], [10.0, 0.0, 7.0, 6.0, 8.0, 9.0, 11.0]])
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="Column indices"):
        order_perturbed_first(x, target_columns=[6], other_columns=[0])
    for columns in (np.array, torch.tensor):  # arrays and tensors (of any device) as well as lists
        again = order_perturbed_first(x, target_columns=columns([4, -1, 1]), other_columns=columns([0, 2, 3, 5]))
        assert torch.equal(again, expected)


def test_masked_linear_validates_mask():
    with pytest.raises(ValueError, match="2-D"):
        MaskedLinear(torch.ones(3))
    with pytest.raises(ValueError, match="0/1"):
        MaskedLinear(torch.full((2, 2), 2.0))
    layer = MaskedLinear(torch.tensor([[True, False]]))
    layer.reset_parameters()
    assert float(layer.weight.detach()[0, 1]) == 0.0

"""The MK-MMD training loss equals the MK-MMD metric (spec §5.1, §8 test 10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pertgrn.metrics import mk_mmd
from pertgrn.nn import mk_mmd_loss


@pytest.fixture
def log_expression():
    """Two samples on the scale of log-normalised expression (non-negative, mostly small, some zeros)."""
    rng = np.random.default_rng(0)
    x = np.log1p(rng.poisson(rng.gamma(0.6, 3.0, size=200), size=(48, 200)).astype(np.float64))
    y = np.log1p(rng.poisson(rng.gamma(0.6, 3.5, size=200), size=(40, 200)).astype(np.float64))
    return x, y


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"kernel_num": 10},  # SENA / RAPTORGraph training setting
        {"fix_sigma": 20.0, "kernel_num": 3, "kernel_mul": 3.0},
        {"fix_sigma": None},
        {"unbiased": True},
        {"unbiased": True, "kernel_num": 10, "fix_sigma": 50.0},
    ],
)
def test_loss_agrees_with_metric(log_expression, kwargs):
    x, y = log_expression
    expected = mk_mmd(x, y, **kwargs)
    value64 = mk_mmd_loss(torch.tensor(x), torch.tensor(y), **kwargs)
    assert value64.dtype == torch.float64
    assert float(value64) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    value32 = float(mk_mmd_loss(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), **kwargs))
    assert value32 == pytest.approx(expected, abs=1e-6)


def test_loss_agrees_with_metric_on_random_normal_data():
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.normal(size=(32, 50)) * 2 + 3
        y = rng.normal(loc=rng.normal(scale=0.5, size=50), size=(32, 50)) * 2 + 3
        expected = mk_mmd(x, y, kernel_num=10)
        assert float(mk_mmd_loss(torch.tensor(x), torch.tensor(y), kernel_num=10)) == pytest.approx(expected, rel=1e-10)
        value32 = mk_mmd_loss(torch.tensor(x).float(), torch.tensor(y).float(), kernel_num=10)
        assert float(value32) == pytest.approx(expected, abs=1e-6)


def test_float32_loss_is_accurate_far_from_the_origin(log_expression):
    """Distances are taken after centring, so an offset of every gene does not cost float32 precision."""
    x, y = log_expression
    x, y = x + 20.0, y + 20.0
    expected = mk_mmd(x, y, kernel_num=10)
    value32 = mk_mmd_loss(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), kernel_num=10)
    assert float(value32) == pytest.approx(expected, abs=1e-6)


def test_sena_bandwidth_ladder():
    """fix_sigma=200, kernel_num=10, kernel_mul=2 uses bandwidths 6.25 … 3200: check one kernel at a time."""
    x, y = torch.zeros(1, 1, dtype=torch.float64), torch.full((1, 1), 3.0, dtype=torch.float64)
    ladder = [6.25, 12.5, 25, 50, 100, 200, 400, 800, 1600, 3200]
    expected = sum(2.0 - 2.0 * np.exp(-9.0 / bw) for bw in ladder)
    assert float(mk_mmd_loss(x, y, kernel_num=10)) == pytest.approx(expected, rel=1e-12)


def test_loss_properties_and_gradient():
    torch.manual_seed(2)
    x = torch.randn(20, 6, dtype=torch.float64) * 5
    y = torch.randn(20, 6, dtype=torch.float64) * 5 + 1
    assert float(mk_mmd_loss(x, x)) == pytest.approx(0.0, abs=1e-12)
    assert float(mk_mmd_loss(x, y)) == pytest.approx(float(mk_mmd_loss(y, x)), rel=1e-12)
    assert float(mk_mmd_loss(x, y + 20)) > float(mk_mmd_loss(x, y)) > 0

    pred = torch.cat([x[:10], x[:10]]).requires_grad_(True)  # duplicated rows: zero distances off the diagonal
    mk_mmd_loss(pred, y, fix_sigma=10.0).backward()
    assert bool(torch.isfinite(pred.grad).all()) and bool((pred.grad != 0).any())
    assert torch.autograd.gradcheck(lambda a: mk_mmd_loss(a, y, fix_sigma=10.0), (x[:6].clone().requires_grad_(),))

    # a step along the negative gradient lowers the loss
    pred = x.clone().requires_grad_(True)
    loss = mk_mmd_loss(pred, y, fix_sigma=50.0)
    loss.backward()
    assert float(mk_mmd_loss(pred.detach() - 0.5 * pred.grad, y, fix_sigma=50.0)) < float(loss.detach())


def test_unbiased_can_be_negative_for_same_distribution():
    rng = np.random.default_rng(3)
    values = [
        float(
            mk_mmd_loss(
                torch.tensor(rng.normal(size=(15, 3))),
                torch.tensor(rng.normal(size=(15, 3))),
                fix_sigma=2.0,
                unbiased=True,
            )
        )
        for _ in range(20)
    ]
    assert min(values) < 0 < max(values)
    assert abs(np.mean(values)) < 0.1


def test_loss_validates():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="columns"):
        mk_mmd_loss(x, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="rows"):
        mk_mmd_loss(x[:1], x, unbiased=True)
    with pytest.raises(ValueError, match="kernel_num"):
        mk_mmd_loss(x, x, kernel_num=0)
    with pytest.raises(ValueError, match="fix_sigma"):
        mk_mmd_loss(x, x, fix_sigma=0.0)
    with pytest.raises(ValueError, match="identical"):
        mk_mmd_loss(x, x, fix_sigma=None)

"""DAGMA layer and loss: propagation, acyclicity function, detach, domain guard, recovery (spec §8 tests 4–9)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pertgrn.nn import (
    DAGMALayer,
    GraphPathwayEncoder,
    LatentModulator,
    dagma_acyclicity,
    dagma_domain_guard_,
    dagma_loss,
    dagma_mu_schedule,
    dagma_score,
    squared_spectral_radius,
    threshold_dag,
)

D = 5


def _layer(adjacency: torch.Tensor) -> DAGMALayer:
    layer = DAGMALayer(adjacency.shape[0]).double()
    with torch.no_grad():
        layer.weight.copy_(adjacency)
    return layer


def _random_dag(rng: np.random.Generator, d: int, scale: float = 1.0) -> np.ndarray:
    """A permuted strictly upper-triangular matrix: a DAG whose node order is not the index order."""
    a = np.triu(rng.normal(scale=scale, size=(d, d)), 1)
    perm = rng.permutation(d)
    return a[np.ix_(perm, perm)]


# ---------------------------------------------------------------------------------------------- propagation


def test_layer_init_and_diagonal_mask():
    torch.manual_seed(0)
    layer = DAGMALayer(D)
    w = layer.weight.detach()
    assert bool((w.abs() <= 0.1).all()) and bool((torch.diagonal(w) == 0).all())
    assert (w != 0).sum() == D * (D - 1)
    with torch.no_grad():
        layer.weight.fill_(0.3)  # a diagonal entry in the weight plays no role
    assert bool((torch.diagonal(layer.adjacency) == 0).all())
    z = torch.randn(3, D)
    layer(z).sum().backward()
    assert bool((torch.diagonal(layer.weight.grad) == 0).all())


def test_propagation_equals_delta_times_inverse():
    """u_int − u_obs = Δ (I − A)⁻¹ for a learned-shift intervention; with A = 0 only coordinate g moves."""
    torch.manual_seed(1)
    k = 3
    mod = LatentModulator(k, D, norm="none").double()
    with torch.no_grad():
        mod.shift.copy_(torch.tensor([0.5, -2.0, 1.5], dtype=torch.float64))
    a = torch.randn(D, D, dtype=torch.float64) * 0.3
    a.fill_diagonal_(0.0)
    layer = _layer(a)
    z = torch.randn(7, D, dtype=torch.float64)
    c = torch.zeros(7, k, dtype=torch.float64)
    c[:, 1] = 1.0
    z_obs, z_int = mod(z, c)
    delta = mod.intervention(c)
    inverse = torch.linalg.inv(torch.eye(D, dtype=torch.float64) - a)
    torch.testing.assert_close(layer(z_int) - layer(z_obs), delta @ inverse)
    torch.testing.assert_close(layer(z_obs), z_obs @ inverse)  # u = z (I − A)⁻¹ solves u = uA + z
    u = layer(z_obs)
    torch.testing.assert_close(u, u @ a + z_obs)

    zero = _layer(torch.zeros(D, D, dtype=torch.float64))
    moved = (zero(z_int) - zero(z_obs)).abs().sum(0) > 0
    assert moved.tolist() == [j == 1 for j in range(D)]
    assert torch.equal(layer(z_obs, propagate=False), z_obs)


def test_orientation_row_convention():
    """A single edge A_ij = w (i → j): shifting z_i by δ moves u_j by w δ; shifting z_j leaves u_i alone."""
    i, j, w, delta = 3, 1, 0.8, 2.5
    a = torch.zeros(D, D, dtype=torch.float64)
    a[i, j] = w
    layer = _layer(a)
    z = torch.randn(4, D, dtype=torch.float64)
    shift_i = torch.zeros(D, dtype=torch.float64)
    shift_i[i] = delta
    change = layer(z + shift_i) - layer(z)
    torch.testing.assert_close(change[:, j], torch.full((4,), w * delta, dtype=torch.float64))
    torch.testing.assert_close(change[:, i], torch.full((4,), delta, dtype=torch.float64))
    shift_j = torch.zeros(D, dtype=torch.float64)
    shift_j[j] = delta
    change = layer(z + shift_j) - layer(z)
    torch.testing.assert_close(change[:, i], torch.zeros(4, dtype=torch.float64))


def test_latent_additivity_of_doubles():
    """(u_{A+B} − u_obs) = (u_A − u_obs) + (u_B − u_obs): non-additivity can only come from the decoder."""
    torch.manual_seed(2)
    mod = LatentModulator(3, D, norm="batch").double()
    with torch.no_grad():
        mod.shift.uniform_(-2, 2)
    layer = _layer(torch.tensor(_random_dag(np.random.default_rng(2), D, 0.5)))
    z = torch.randn(6, D, dtype=torch.float64)

    def label(*t):
        c = torch.zeros(6, 3, dtype=torch.float64)
        c[:, list(t)] = 1.0
        return c

    u_obs = layer(mod(z)[0])
    u_a, u_b, u_ab = (layer(mod(z, label(*t))[1]) for t in ((0,), (2,), (0, 2)))
    torch.testing.assert_close(u_ab - u_obs, (u_a - u_obs) + (u_b - u_obs))


def test_singular_system_falls_back_to_pseudo_inverse():
    a = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # I − A = [[1, −1], [−1, 1]] is singular
    layer = _layer(a)
    z = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    u = layer(z)
    assert layer.n_pinv_fallbacks == 1
    torch.testing.assert_close(u, z @ torch.linalg.pinv(torch.eye(2, dtype=torch.float64) - a))
    assert bool(torch.isfinite(u).all())
    layer(torch.zeros(1, 2, dtype=torch.float64), propagate=False)
    layer.weight.data.mul_(0.5)  # now invertible: no new fallback
    layer(z)
    assert layer.n_pinv_fallbacks == 1


# ---------------------------------------------------------------------------------------------- h_s(A)


@pytest.mark.parametrize("s", [1.0, 0.7])
def test_h_is_zero_on_permuted_triangular_matrices(s):
    rng = np.random.default_rng(3)
    for _ in range(5):
        a = torch.tensor(_random_dag(rng, 8, scale=2.0))  # large weights: still a DAG, ρ(A∘A) = 0
        assert abs(float(dagma_acyclicity(a, s=s, clamp=False))) < 1e-10
        assert squared_spectral_radius(a) < 1e-6


def test_h_on_a_two_cycle_matches_closed_form_and_numpy():
    a, b = 0.6, 0.9
    adj = torch.tensor([[0.0, a], [b, 0.0]], dtype=torch.float64)
    expected = -math.log(1.0 - a**2 * b**2)  # det(I − A∘A) = 1 − a² b²
    assert float(dagma_acyclicity(adj)) == pytest.approx(expected, rel=1e-12)
    assert expected > 0

    rng = np.random.default_rng(4)
    for s in (1.0, 0.8, 2.0):
        m = rng.normal(scale=0.25, size=(6, 6))
        ref = -np.linalg.slogdet(s * np.eye(6) - m * m)[1] + 6 * np.log(s)
        assert float(dagma_acyclicity(torch.tensor(m), s=s, clamp=False)) == pytest.approx(ref, rel=1e-10, abs=1e-12)
        assert ref > 0


def test_h_gradient_is_two_a_times_inverse_transpose():
    rng = np.random.default_rng(5)
    for s in (1.0, 0.6):
        m = rng.normal(scale=0.2, size=(6, 6))
        adj = torch.tensor(m, requires_grad=True)
        (grad,) = torch.autograd.grad(dagma_acyclicity(adj, s=s), adj)
        closed = 2.0 * m * np.linalg.inv(s * np.eye(6) - m * m).T
        np.testing.assert_allclose(grad.numpy(), closed, rtol=1e-10, atol=1e-12)
        assert torch.autograd.gradcheck(lambda x, s=s: dagma_acyclicity(x, s=s, clamp=False), (adj,))


def test_h_clamp_outside_the_domain():
    """Outside ρ(A∘A) < s the log-det can be negative: the clamp returns 0 (and the guard must act)."""
    adj = torch.tensor([[0.0, 3.0], [3.0, 0.0]], dtype=torch.float64)  # det(I − A∘A) = 1 − 81 = −80
    assert float(dagma_acyclicity(adj, clamp=False)) == pytest.approx(-math.log(80.0))
    assert float(dagma_acyclicity(adj)) == 0.0
    assert squared_spectral_radius(adj) == pytest.approx(9.0)


# ---------------------------------------------------------------------------------------------- loss


def test_score_is_least_squares_on_centred_latents():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(20, D)) + 5.0  # an offset the centring removes
    a = rng.normal(scale=0.3, size=(D, D))
    zc = z - z.mean(0)
    expected = 0.5 * np.sum((zc - zc @ a) ** 2) / 20
    assert float(dagma_score(torch.tensor(a), torch.tensor(z))) == pytest.approx(expected, rel=1e-12)
    # DAGMA's l2 score 0.5 tr((I − A)ᵀ cov (I − A)) with cov = ZcᵀZc / n is the same number
    cov = zc.T @ zc / 20
    assert expected == pytest.approx(0.5 * np.trace((np.eye(D) - a).T @ cov @ (np.eye(D) - a)), rel=1e-12)

    terms = dagma_loss(torch.tensor(a), torch.tensor(z), mu=0.27, lambda1=0.052)
    assert float(terms.l1) == pytest.approx(np.abs(a).sum())
    assert float(terms.loss) == pytest.approx(0.27 * (expected + 0.052 * np.abs(a).sum()) + float(terms.acyclicity))


def test_dagma_loss_sends_no_gradient_to_the_encoder():
    """∇_θenc L_DAGMA ≡ 0 (detached latents), ∇_A L_DAGMA ≠ 0; the forward pass does reach the encoder."""
    torch.manual_seed(7)
    enc = GraphPathwayEncoder(8, 3, D, n_subgraphs=2)
    mod = LatentModulator(3, D)
    layer = DAGMALayer(D)
    x = torch.randn(16, 8)
    loc, scale = enc(x)
    z_obs, _ = mod(loc + scale * torch.randn_like(loc))
    layer.loss(z_obs, mu=0.27).loss.backward()
    assert all(p.grad is None or bool((p.grad == 0).all()) for p in enc.parameters())
    assert layer.weight.grad is not None and bool((layer.weight.grad != 0).any())

    loc, _ = enc(x)
    layer(mod(loc)[0]).pow(2).sum().backward()  # the propagation term is not detached
    assert any(p.grad is not None and bool((p.grad != 0).any()) for p in enc.parameters())


def test_mu_schedule():
    assert [dagma_mu_schedule(e, 100) for e in (0, 24, 25, 49, 50, 74, 75, 99, 150)] == pytest.approx(
        [0.27, 0.27, 0.027, 0.027, 0.0027, 0.0027, 0.00027, 0.00027, 0.00027]
    )
    staged = [dagma_mu_schedule(e, 10) for e in range(10)]
    assert staged == pytest.approx([0.27] * 3 + [0.027] * 2 + [0.0027] * 3 + [0.00027] * 2)
    smooth = [dagma_mu_schedule(e, 100, smooth=True) for e in range(101)]
    assert smooth[0] == pytest.approx(0.27) and smooth[-1] == pytest.approx(0.00027)
    assert smooth[50] == pytest.approx(0.27 * 10**-1.5)
    assert all(x > y for x, y in zip(smooth, smooth[1:], strict=False))
    assert dagma_mu_schedule(3, 8, mu_init=1.0, factor=0.5, n_stages=2) == 1.0
    with pytest.raises(ValueError, match="factor"):
        dagma_mu_schedule(0, 10, factor=2.0)


# ---------------------------------------------------------------------------------------------- domain guard


def _is_m_matrix(adj: np.ndarray, s: float) -> bool:
    m = s * np.eye(len(adj)) - adj * adj
    sign, _ = np.linalg.slogdet(m)
    return bool(sign > 0 and (np.linalg.inv(m) >= -1e-12).all())


@pytest.mark.parametrize("s", [1.0, 0.5])
def test_guard_restores_the_m_matrix_domain(s):
    rng = np.random.default_rng(8)
    for _ in range(5):
        w = torch.tensor(rng.normal(scale=1.5, size=(6, 6)))
        assert not _is_m_matrix(w.numpy(), s)
        rho = dagma_domain_guard_(w, s=s)
        assert rho >= s
        assert squared_spectral_radius(w) == pytest.approx(0.9 * s, rel=1e-9)
        assert _is_m_matrix(w.numpy(), s)
        assert float(dagma_acyclicity(w, s=s, clamp=False)) > 0  # valid h: positive on a cyclic graph
    inside = torch.tensor(rng.normal(scale=0.1, size=(6, 6)))
    before = inside.clone()
    assert dagma_domain_guard_(inside, s=s) < s
    assert torch.equal(inside, before)  # a valid A is left untouched
    # a DAG with large weights: the cheap row-sum bound exceeds s but ρ(A∘A) = 0, so nothing changes
    dag = torch.tensor(_random_dag(rng, 6, scale=3.0))
    before = dag.clone()
    assert float((dag**2).sum(1).max()) >= s
    assert dagma_domain_guard_(dag, s=s) < 1e-6
    assert torch.equal(dag, before)


def test_guard_keeps_the_domain_during_aggressive_optimisation():
    """Steps that would push A∘A past s (large learning rate on the score alone) are pulled back each time."""
    torch.manual_seed(9)
    z = torch.randn(64, D) @ torch.randn(D, D)  # strongly correlated latents: the score wants dense A
    layer = DAGMALayer(D)
    opt = torch.optim.SGD(layer.parameters(), lr=2.0)
    rescaled = 0
    for _ in range(30):
        loss = dagma_score(layer.adjacency, z)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rescaled += layer.domain_guard_() >= layer.s
        assert _is_m_matrix(layer.adjacency.detach().double().numpy(), layer.s)
    assert rescaled > 0  # the test did leave the domain


# ---------------------------------------------------------------------------------------------- export


def test_threshold_dag_and_topological_order(caplog):
    a = np.array([[0.0, 0.0, 0.1, 0.0], [0.9, 0.0, 0.0, 0.0], [0.0, -0.5, 0.0, 0.0], [0.0, 0.0, 0.31, 0.7]])
    dag = threshold_dag(torch.tensor(a), threshold=0.3)
    assert dag.adjacency[0, 2] == 0.0 and dag.adjacency[3, 3] == 0.0  # below threshold, diagonal
    assert dag.adjacency[3, 2] == 0.31 and dag.adjacency[2, 1] == -0.5
    position = {node: i for i, node in enumerate(dag.order)}
    assert sorted(position) == [0, 1, 2, 3]
    for i, j in zip(*np.nonzero(dag.adjacency), strict=True):
        assert position[i] < position[j]

    cyclic = np.array([[0.0, 0.5], [0.4, 0.0]])
    with caplog.at_level("WARNING", logger="pertgrn"):
        assert threshold_dag(cyclic).order is None
    assert "cycle" in caplog.text
    assert threshold_dag(cyclic, threshold=0.45).order.tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------- recovery

TRUE_EDGES = [(0, 1, 1.2), (1, 2, -0.9), (0, 3, 1.0), (3, 4, -1.4), (2, 4, 0.8)]  # indices before permutation


def _sem(seed: int, n: int = 500):
    rng = np.random.default_rng(seed)
    w = np.zeros((D, D))
    for i, j, weight in TRUE_EDGES:
        w[i, j] = weight
    perm = rng.permutation(D)
    w = w[np.ix_(perm, perm)]  # the causal order is not the index order
    z = rng.normal(size=(n, D)) @ np.linalg.inv(np.eye(D) - w)  # u = uW + e, equal noise variances
    return w, torch.tensor(z, dtype=torch.float32)


def fit_latent_sem(seed: int, n_steps: int = 600, lr: float = 0.02) -> tuple[np.ndarray, DAGMALayer]:
    """Adam on μ_t (S + λ₁ ‖A‖₁) + h with the staged μ schedule and the domain guard after every step."""
    w, z = _sem(seed)
    torch.manual_seed(seed)
    layer = DAGMALayer(D)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    for step in range(n_steps):
        terms = layer.loss(z, mu=dagma_mu_schedule(step, n_steps), lambda1=0.052)
        opt.zero_grad()
        terms.loss.backward()
        opt.step()
        layer.domain_guard_()
    return w, layer


def test_small_linear_sem_recovers_an_acyclic_graph():
    w, layer = fit_latent_sem(seed=0)
    dag = layer.threshold(0.3)
    assert dag.order is not None  # acyclic after thresholding
    assert float(layer.acyclicity().detach()) < 1e-3
    true, found = w != 0, dag.adjacency != 0
    true_positives = int((true & found).sum())
    assert true_positives >= 4  # of 5 true edges
    assert int((found & ~true).sum()) <= 1
    signs = np.sign(dag.adjacency[true & found]) == np.sign(w[true & found])
    assert signs.all()

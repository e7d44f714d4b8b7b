"""A linear structural-equation layer over latents with DAGMA's log-determinant acyclicity (Bello et al. 2022)."""

from __future__ import annotations

import math
from typing import NamedTuple

import igraph as ig
import numpy as np
import torch
from torch import nn

from pertgrn._utils import logger


def _check_square(adjacency: torch.Tensor) -> int:
    if adjacency.ndim != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise ValueError(f"`adjacency` must be a square matrix, found shape {tuple(adjacency.shape)}.")
    return adjacency.shape[0]


def dagma_acyclicity(adjacency: torch.Tensor, *, s: float = 1.0, clamp: bool = True) -> torch.Tensor:
    """DAGMA's acyclicity function ``h_s(A) = −log det(sI − A∘A) + d log s``.

    Inside the M-matrix domain ``ρ(A∘A) < s``, ``h_s(A) ≥ 0`` with equality exactly when ``A`` is
    the weighted adjacency matrix of a DAG (Bello et al. 2022, eq. 5). Its gradient is
    ``∇h = 2 A ∘ (sI − A∘A)^{−T}``. Outside the domain the value has no meaning and can be
    negative; keep ``A`` inside with :func:`dagma_domain_guard_` after each optimizer step.

    Parameters
    ----------
    adjacency
        Weighted adjacency ``A`` (``d × d``), row convention: ``A_ij ≠ 0`` is an edge ``i → j``.
    s
        Scale of the log-determinant (spec: 1.0).
    clamp
        Return ``max(h, 0)`` (RAPTORGraph E.3.4), which removes round-off below 0; the gradient
        is then 0 where ``h < 0``.

    Returns
    -------
    Scalar tensor.

    Examples
    --------
    >>> import torch
    >>> from pertgrn.nn import dagma_acyclicity
    >>> float(dagma_acyclicity(torch.tensor([[0.0, 0.5], [0.0, 0.0]])))  # 0 → 1: a DAG
    0.0
    >>> float(dagma_acyclicity(torch.tensor([[0.0, 0.5], [0.5, 0.0]]))) > 0  # a 2-cycle
    True
    """
    d = _check_square(adjacency)
    if not s > 0:
        raise ValueError(f"`s` must be positive, found {s}.")
    eye = torch.eye(d, dtype=adjacency.dtype, device=adjacency.device)
    _, logabsdet = torch.linalg.slogdet(s * eye - adjacency * adjacency)
    h = -logabsdet + d * math.log(s)
    return torch.clamp(h, min=0.0) if clamp else h


def dagma_score(adjacency: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """DAGMA's least-squares score ``S(A; Z) = ‖Z − ZA‖²_F / (2B)`` on detached, centred latents.

    ``Z`` is detached, so the score trains only ``A`` (RAPTORGraph E.3.3, principle 2: no gradient
    reaches the encoder), and its columns are centred within the batch, as DAGMA centres its data.

    Parameters
    ----------
    adjacency
        Weighted adjacency ``A`` (``d × d``), row convention.
    z
        Observational latents ``(B, d)`` (RAPTORGraph: the normalised ``z̄`` of control cells).

    Returns
    -------
    Scalar tensor.

    Examples
    --------
    >>> import torch
    >>> from pertgrn.nn import dagma_score
    >>> z = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    >>> float(dagma_score(torch.tensor([[0.0, 2.0], [0.0, 0.0]]), z))  # z_1 = 2 z_0 exactly
    0.5
    """
    d = _check_square(adjacency)
    if z.ndim != 2 or z.shape[1] != d:
        raise ValueError(f"`z` must have shape (B, {d}), found {tuple(z.shape)}.")
    z = z.detach()
    z = z - z.mean(dim=0, keepdim=True)
    residual = z - z @ adjacency
    return 0.5 * (residual * residual).sum() / z.shape[0]


class DAGMALoss(NamedTuple):
    """Terms of ``L_DAGMA = μ (S + λ₁ ‖A‖₁) + h_s(A)``; every field is a scalar tensor."""

    loss: torch.Tensor
    score: torch.Tensor
    l1: torch.Tensor
    acyclicity: torch.Tensor


def dagma_loss(
    adjacency: torch.Tensor,
    z: torch.Tensor,
    *,
    mu: float,
    lambda1: float = 0.052,
    s: float = 1.0,
) -> DAGMALoss:
    """RAPTORGraph's graph loss ``L_DAGMA = μ (S(A; Z) + λ₁ ‖A‖₁) + h_s(A)`` (eq. 7).

    Parameters
    ----------
    adjacency
        Weighted adjacency ``A`` (``d × d``), row convention, diagonal already masked.
    z
        Observational latents ``(B, d)``; detached and centred by :func:`dagma_score`.
    mu
        Weight of the score and sparsity terms, decreased over training (:func:`dagma_mu_schedule`).
    lambda1
        L1 weight (RAPTORGraph: 0.052).
    s
        Scale of :func:`dagma_acyclicity`.

    Returns
    -------
    :class:`DAGMALoss` ``(loss, score, l1, acyclicity)``, with ``l1 = ‖A‖₁`` (sum of absolute
    values) and ``acyclicity`` clamped at 0.

    Examples
    --------
    >>> import torch
    >>> from pertgrn.nn import dagma_loss
    >>> terms = dagma_loss(torch.zeros(3, 3), torch.randn(8, 3), mu=0.27)
    >>> float(terms.acyclicity), float(terms.l1)
    (0.0, 0.0)
    """
    if mu < 0 or lambda1 < 0:
        raise ValueError(f"`mu` and `lambda1` must be non-negative, found {mu} and {lambda1}.")
    score = dagma_score(adjacency, z)
    l1 = adjacency.abs().sum()
    h = dagma_acyclicity(adjacency, s=s)
    return DAGMALoss(mu * (score + lambda1 * l1) + h, score, l1, h)


def dagma_mu_schedule(
    epoch: int,
    n_epochs: int,
    *,
    mu_init: float = 0.27,
    factor: float = 0.1,
    n_stages: int = 4,
    smooth: bool = False,
) -> float:
    """Weight ``μ`` of DAGMA's score at an epoch: path following from ``mu_init`` down (spec §3, A8).

    Staged (default): ``μ = mu_init · factor^⌊n_stages · epoch / n_epochs⌋``, as DAGMA multiplies
    ``μ`` by ``mu_factor`` after each stage; with 100 epochs: 0.27 for epochs 0–24, 0.027 for
    25–49, 0.0027 for 50–74 and 0.00027 for 75–99. ``smooth=True``:
    ``μ = mu_init · factor^{(n_stages − 1) · epoch / n_epochs}``, which decays continuously to
    the last stage's value. Epochs past ``n_epochs`` keep the last value.

    Parameters
    ----------
    epoch
        Current epoch, from 0.
    n_epochs
        Number of training epochs.
    mu_init
        First value (RAPTORGraph: 0.27).
    factor
        Decay per stage (DAGMA's ``mu_factor``: 0.1).
    n_stages
        Number of stages.
    smooth
        Continuous decay instead of stages.

    Returns
    -------
    ``μ`` (float).

    Examples
    --------
    >>> from pertgrn.nn import dagma_mu_schedule
    >>> [round(dagma_mu_schedule(e, 100), 5) for e in (0, 24, 25, 99)]
    [0.27, 0.27, 0.027, 0.00027]
    """
    if n_epochs < 1 or n_stages < 1 or epoch < 0:
        raise ValueError(f"Need n_epochs >= 1, n_stages >= 1, epoch >= 0; found {n_epochs}, {n_stages}, {epoch}.")
    if not 0 < factor <= 1:
        raise ValueError(f"`factor` must lie in (0, 1], found {factor}.")
    epoch = min(epoch, n_epochs)
    if smooth:
        return float(mu_init * factor ** ((n_stages - 1) * epoch / n_epochs))
    stage = min((n_stages * epoch) // n_epochs, n_stages - 1)
    return float(mu_init * factor**stage)


def squared_spectral_radius(adjacency: torch.Tensor) -> float:
    """``ρ(A∘A)``, the spectral radius of the elementwise square (computed in float64 on the CPU).

    Parameters
    ----------
    adjacency
        Weighted adjacency ``A`` (``d × d``).

    Returns
    -------
    ``ρ(A∘A)`` (float); ``sI − A∘A`` is a non-singular M-matrix exactly when it is ``< s``.

    Examples
    --------
    >>> import torch
    >>> from pertgrn.nn import squared_spectral_radius
    >>> round(squared_spectral_radius(torch.tensor([[0.0, 2.0], [0.5, 0.0]])), 6)  # 2-cycle, 4 · 0.25
    1.0
    """
    _check_square(adjacency)
    sq = (adjacency.detach() ** 2).to(device="cpu", dtype=torch.float64)
    if sq.shape[0] == 0:
        return 0.0
    return float(torch.linalg.eigvals(sq).abs().max())


@torch.no_grad()
def dagma_domain_guard_(weight: torch.Tensor, *, s: float = 1.0, target: float = 0.9) -> float:
    """Keep ``sI − A∘A`` an M-matrix: if ``ρ(A∘A) ≥ s``, rescale ``A ← A · sqrt(target · s / ρ(A∘A))`` in place.

    ``sI − A∘A`` is a Z-matrix, and a non-singular M-matrix exactly when ``ρ(A∘A) < s``; only
    there is ``h_s`` a valid acyclicity function (spec §3, A10). Call this after every optimizer
    step. After a rescale ``ρ(A∘A) = target · s``. (DAGMA itself backtracks with a smaller
    learning rate instead, which a stochastic training loop cannot do.)

    Parameters
    ----------
    weight
        The adjacency parameter, modified in place.
    s
        Scale of :func:`dagma_acyclicity`.
    target
        Fraction of ``s`` that ``ρ(A∘A)`` is brought to, in (0, 1).

    Returns
    -------
    ``ρ(A∘A)`` before the guard (float); ``>= s`` means ``weight`` was rescaled. When the cheap
    bound ``ρ(A∘A) ≤ min(max row sum, max column sum)`` of ``A∘A`` already lies below ``s``, the
    eigenvalues are not computed and that bound is returned instead.

    Examples
    --------
    >>> import torch
    >>> from pertgrn.nn import dagma_domain_guard_, squared_spectral_radius
    >>> a = torch.tensor([[0.0, 2.0], [2.0, 0.0]])
    >>> dagma_domain_guard_(a)
    4.0
    >>> round(squared_spectral_radius(a), 6)
    0.9
    """
    if not 0 < target < 1:
        raise ValueError(f"`target` must lie in (0, 1), found {target}.")
    if not s > 0:
        raise ValueError(f"`s` must be positive, found {s}.")
    sq = weight.detach() ** 2
    bound = float(torch.minimum(sq.sum(dim=1).max(), sq.sum(dim=0).max())) if sq.numel() else 0.0
    if bound < s:  # Gershgorin-type bound: already inside the domain, skip the eigendecomposition
        return bound
    rho = squared_spectral_radius(weight)
    if rho >= s:
        weight.mul_(math.sqrt(target * s / rho))
        logger.debug("DAGMA domain guard: rho(A∘A) = %.4g >= s = %g, rescaled A to rho = %g.", rho, s, target * s)
    return rho


class ThresholdedDAG(NamedTuple):
    """A thresholded latent graph: ``adjacency`` (``d × d`` array) and a topological ``order`` (``None`` if cyclic)."""

    adjacency: np.ndarray
    order: np.ndarray | None


def threshold_dag(adjacency: torch.Tensor | np.ndarray, *, threshold: float = 0.3) -> ThresholdedDAG:
    """The analysis-time graph: keep edges with ``|A_ij| > threshold`` and find a topological order.

    DAGMA reports its graph at ``w_threshold = 0.3`` (spec §3); the forward pass keeps the
    weighted ``A``. The diagonal is always dropped. If the thresholded graph still has a cycle,
    ``order`` is ``None`` and a warning is logged.

    Parameters
    ----------
    adjacency
        Weighted adjacency ``A`` (``d × d``), row convention: ``A_ij ≠ 0`` is an edge ``i → j``.
    threshold
        Edges with ``|A_ij| <= threshold`` are removed.

    Returns
    -------
    :class:`ThresholdedDAG` with ``adjacency`` (float64 array, removed edges set to 0) and
    ``order`` (int array of node indices, every edge pointing forward in it) or ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> from pertgrn.nn import threshold_dag
    >>> dag = threshold_dag(np.array([[0.0, 0.0, 0.1], [0.9, 0.0, 0.0], [0.0, -0.5, 0.0]]))
    >>> dag.order.tolist()
    [2, 1, 0]
    """
    if isinstance(adjacency, torch.Tensor):
        adjacency = adjacency.detach().cpu().numpy()
    a = np.array(adjacency, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"`adjacency` must be a square matrix, found shape {a.shape}.")
    if threshold < 0:
        raise ValueError(f"`threshold` must be non-negative, found {threshold}.")
    np.fill_diagonal(a, 0.0)
    a[np.abs(a) <= threshold] = 0.0
    graph = ig.Graph.Adjacency((a != 0).astype(int).tolist(), mode="directed")
    if not graph.is_dag():
        logger.warning("The graph thresholded at |A| > %g has a cycle; no topological order.", threshold)
        return ThresholdedDAG(a, None)
    return ThresholdedDAG(a, np.asarray(graph.topological_sorting(mode="out"), dtype=np.int64))


class DAGMALayer(nn.Module):
    """Linear structural equations between latents: ``u = uA + z``, i.e. ``u = z (I − A)⁻¹`` (spec §2.5).

    Row-vector convention: ``A_ij ≠ 0`` is an edge ``i → j``, so shifting ``z_i`` by ``δ`` moves
    ``u_j`` by ``A_ij δ`` through a single edge. The diagonal is masked (no self-loops); the
    entries start from ``U[−init_range, init_range]``. There is no triangular mask: acyclicity
    comes from the DAGMA loss (:meth:`loss`) and the domain guard (:meth:`domain_guard_`, to call
    after every optimizer step). The solve uses ``torch.linalg.solve``; if ``I − A`` is singular
    (or the result is not finite), the pseudo-inverse is used instead and
    ``n_pinv_fallbacks`` counts it. A DAG always gives an invertible ``I − A`` (det = 1).

    Parameters
    ----------
    n_latent
        Number of latents ``d``.
    init_range
        Half-width of the uniform initialisation (RAPTORGraph: 0.1).
    s
        Scale of the acyclicity function and of the domain guard (spec: 1.0).

    Examples
    --------
    >>> import torch
    >>> from pertgrn.nn import DAGMALayer
    >>> layer = DAGMALayer(3)
    >>> with torch.no_grad():
    ...     _ = layer.weight.zero_()
    ...     layer.weight[0, 1] = 0.5  # edge 0 → 1
    >>> layer(torch.tensor([[2.0, 0.0, 0.0]])).detach()
    tensor([[2., 1., 0.]])
    """

    def __init__(self, n_latent: int, *, init_range: float = 0.1, s: float = 1.0):
        super().__init__()
        if n_latent < 1:
            raise ValueError(f"`n_latent` must be >= 1, found {n_latent}.")
        if not s > 0:
            raise ValueError(f"`s` must be positive, found {s}.")
        self.n_latent, self.s = n_latent, s
        self.register_buffer("off_diagonal", 1.0 - torch.eye(n_latent))
        self.weight = nn.Parameter(torch.empty(n_latent, n_latent).uniform_(-init_range, init_range))
        with torch.no_grad():
            self.weight.fill_diagonal_(0.0)
        self.n_pinv_fallbacks = 0

    @property
    def adjacency(self) -> torch.Tensor:
        """The weighted adjacency ``A`` with its diagonal masked."""
        return self.weight * self.off_diagonal

    def forward(self, z: torch.Tensor, *, propagate: bool = True) -> torch.Tensor:
        """Return ``u = z (I − A)⁻¹`` for latents ``z`` of shape ``(..., n_latent)``.

        ``propagate=False`` returns ``z`` unchanged (``A`` treated as 0).
        """
        if z.shape[-1] != self.n_latent:
            raise ValueError(f"Expected latents with {self.n_latent} columns, found {z.shape[-1]}.")
        if not propagate:
            return z
        eye = torch.eye(self.n_latent, dtype=z.dtype, device=z.device)
        system = eye - self.adjacency.to(z.dtype)
        u, info = torch.linalg.solve_ex(system, z, left=False)  # solves u (I − A) = z
        if bool(info.any()) or not bool(torch.isfinite(u).all()):
            self.n_pinv_fallbacks += 1
            logger.debug("I − A is singular; DAGMA layer falls back to the pseudo-inverse.")
            u = z @ torch.linalg.pinv(system)
        return u

    def loss(self, z_obs: torch.Tensor, *, mu: float, lambda1: float = 0.052) -> DAGMALoss:
        """:func:`dagma_loss` of this layer's adjacency on the observational latents ``z_obs`` (detached)."""
        return dagma_loss(self.adjacency, z_obs, mu=mu, lambda1=lambda1, s=self.s)

    def acyclicity(self) -> torch.Tensor:
        """:func:`dagma_acyclicity` of this layer's adjacency (clamped at 0)."""
        return dagma_acyclicity(self.adjacency, s=self.s)

    def domain_guard_(self, *, target: float = 0.9) -> float:
        """:func:`dagma_domain_guard_` on this layer's weight; returns ``ρ(A∘A)`` before the guard."""
        with torch.no_grad():
            self.weight.fill_diagonal_(0.0)  # the diagonal plays no role; keep it at 0
        return dagma_domain_guard_(self.weight, s=self.s, target=target)

    def threshold(self, threshold: float = 0.3) -> ThresholdedDAG:
        """:func:`threshold_dag` of this layer's adjacency."""
        return threshold_dag(self.adjacency, threshold=threshold)

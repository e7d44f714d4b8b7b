"""A learned latent ↔ community permutation: Hungarian matching forward, Sinkhorn gradients backward.

gCRL (appendix A.5) derives its permutation as the row argmax of a learned score matrix ``S``. A row
argmax need not be a permutation, and it gives ``S`` no gradient, so from ``S = I`` the permutation
would stay the identity forever. Here the forward pass uses the Hungarian assignment of ``S`` (always
a permutation) and the backward pass the gradient of its Sinkhorn relaxation (a straight-through
estimator), so ``S`` learns from every term the permutation enters.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn


def hungarian(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    """The permutation ``π`` maximising ``Σ_k S[k, π[k]]`` (``linear_sum_assignment``; ties to the first optimum)."""
    values = scores.detach().cpu().double().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    rows, cols = linear_sum_assignment(values, maximize=True)
    perm = np.empty(values.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def permutation_matrix(perm: np.ndarray, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """``P`` with ``P[k, π[k]] = 1``: row ``k`` (community) → column ``π[k]`` (latent)."""
    d = len(perm)
    matrix = torch.zeros(d, d, device=device, dtype=dtype)
    matrix[torch.arange(d, device=device), torch.as_tensor(perm, device=device)] = 1.0
    return matrix


def sinkhorn(log_alpha: torch.Tensor, n_iterations: int) -> torch.Tensor:
    """Doubly stochastic matrix from ``exp(log_alpha)`` by alternating row and column normalisation (log domain).

    Each iteration is ``x ← x − logsumexp(x, rows)``, then ``x ← x − logsumexp(x, columns)``; the
    result is ``exp(x)``. Differentiable in ``log_alpha`` through the unrolled iterations.
    :class:`_UnrolledSinkhorn` computes exactly this, and its gradient, in NumPy (float64) with the
    backward pass written out: the ``d × d`` matrix is tiny, and as 4·``n_iterations`` torch
    operations with their autograd nodes the relaxation cost 1.8–2.7 ms per training step (forward
    and backward, ``d = 5``, 20 iterations), about a fifth of a gCRL-VAE step on the simulator;
    written out it costs 0.8 ms.

    Examples
    --------
    >>> import torch
    >>> from pertgrn.models._gcrlvae._permutation import sinkhorn
    >>> soft = sinkhorn(torch.randn(4, 4), 50)
    >>> torch.allclose(soft.sum(0), torch.ones(4), atol=1e-5), torch.allclose(soft.sum(1), torch.ones(4), atol=1e-3)
    (True, True)
    """
    return _UnrolledSinkhorn.apply(log_alpha, int(n_iterations))


def _normalise(x: np.ndarray, axis: int) -> np.ndarray:
    """``x − logsumexp(x, axis)``."""
    top = x.max(axis=axis, keepdims=True)
    return x - (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True)))


class _UnrolledSinkhorn(torch.autograd.Function):
    """:func:`sinkhorn`'s iterations with their exact vector-Jacobian product, in NumPy.

    A normalisation ``y = x − logsumexp(x, axis)`` has ``∂L/∂x = g − softmax(x) · Σ_axis g`` with
    ``softmax(x) = exp(y)``, so the backward pass walks the saved ``y`` in reverse.
    """

    @staticmethod
    def forward(ctx, log_alpha: torch.Tensor, n_iterations: int) -> torch.Tensor:
        x = log_alpha.detach().cpu().double().numpy()
        steps = []
        for _ in range(n_iterations):
            for axis in (1, 0):
                x = _normalise(x, axis)
                steps.append(x)
        out = np.exp(x)
        ctx.steps = steps
        ctx.out = out
        return torch.as_tensor(out, dtype=log_alpha.dtype, device=log_alpha.device)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        g = grad_output.detach().cpu().double().numpy() * ctx.out  # through exp
        axes = [1, 0] * (len(ctx.steps) // 2)
        for y, axis in zip(reversed(ctx.steps), reversed(axes), strict=True):
            g = g - np.exp(y) * g.sum(axis=axis, keepdims=True)
        return torch.as_tensor(g, dtype=grad_output.dtype, device=grad_output.device), None


class LatentPermutation(nn.Module):
    """The permutation between the ``d`` TF-community activity columns and the ``d`` latents.

    Parameters
    ----------
    n_latent
        ``d``.
    learned
        ``True``: scores ``S`` (initialised to ``I``) define ``π = Hungarian(S)``; the forward pass
        returns the hard permutation matrix and the backward pass the gradient of
        ``Sinkhorn(exp(S / τ))``. ``False``: the identity, fixed (the paper's literal argmax, whose
        ``S`` never leaves ``I``).
    tau
        Temperature ``τ`` of the Sinkhorn relaxation.
    n_iterations
        Sinkhorn iterations.
    """

    def __init__(self, n_latent: int, *, learned: bool = True, tau: float = 0.1, n_iterations: int = 20):
        super().__init__()
        self.n_latent = int(n_latent)
        self.learned = bool(learned)
        self.tau = float(tau)
        self.n_iterations = int(n_iterations)
        self.scores = nn.Parameter(torch.eye(self.n_latent), requires_grad=self.learned)

    def perm(self) -> np.ndarray:
        """Current ``π`` (``π[k]`` = latent of community column ``k``)."""
        if not self.learned:
            return np.arange(self.n_latent)
        return hungarian(self.scores)

    def forward(self) -> torch.Tensor:
        """``P`` (``d × d``, ``P[k, π[k]] = 1``), straight-through to the Sinkhorn relaxation when learned."""
        hard = permutation_matrix(self.perm(), device=self.scores.device, dtype=self.scores.dtype)
        if not self.learned:
            return hard
        soft = sinkhorn(self.scores / self.tau, self.n_iterations)
        return hard + soft - soft.detach()

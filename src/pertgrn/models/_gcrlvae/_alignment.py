"""T-MEX as a differentiable loss: the mean partial correlation of each latent with its community activity.

gCRL (appendix A.4) scores latents ``Z`` against TF-community activities ``TFA`` by

``T-MEX(TFA, Z) = (1/d) Σ_i ρ(Z_i, TFA_i | TFA_{−i})``,

the partial correlation given the other activities: the Pearson correlation of the residuals of
least-squares regressions (with intercept) of ``Z_i`` and ``TFA_i`` on ``[1, TFA_{−i}]``. This is
:func:`pertgrn.metrics.tmex` with ``given="activities"``; here in torch, signed, with ``ε`` added to
the residual norms so that a column the others explain (the global activity is nearly collinear
with the communities on a small batch) gives 0 instead of NaN.
"""

from __future__ import annotations

import torch


def _others(d: int, device: torch.device) -> torch.Tensor:
    """``d × (d − 1)``: row ``i`` lists every column but ``i``."""
    index = torch.arange(d, device=device).expand(d, d)
    return index[~torch.eye(d, dtype=torch.bool, device=device)].reshape(d, d - 1)


def residualise(values: torch.Tensor, tfa: torch.Tensor, ridge: float = 1e-8) -> torch.Tensor:
    """Residuals of ``values[:, i]`` on ``[1, tfa[:, ≠ i]]`` for every ``i``.

    ``tfa`` is ``B × d``; ``values`` is ``B × d`` (returns ``d × B``) or ``B × d × k``, ``k``
    quantities regressed on the same design at once (returns ``d × B × k``).
    """
    n, d = tfa.shape
    others = _others(d, tfa.device)
    design = torch.cat([tfa.new_ones(d, n, 1), tfa.T[others].transpose(1, 2)], dim=2)  # d × B × d
    gram = design.transpose(1, 2) @ design
    gram = gram + ridge * torch.eye(d, device=tfa.device, dtype=tfa.dtype) * gram.diagonal(dim1=1, dim2=2).mean(1).view(
        d, 1, 1
    ).clamp_min(1.0)
    target = values.T.unsqueeze(2) if values.dim() == 2 else values.transpose(0, 1)  # d × B × k
    coef = torch.linalg.solve(gram, design.transpose(1, 2) @ target)
    residuals = target - design @ coef
    return residuals.squeeze(2) if values.dim() == 2 else residuals


def tmex_torch(z: torch.Tensor, tfa: torch.Tensor, *, eps: float = 1e-8, per_component: bool = False) -> torch.Tensor:
    """Signed T-MEX of latents ``z`` (``B × d``) against activities ``tfa`` (``B × d``), differentiable in both.

    Computed in float64. ``per_component=True`` returns the ``d`` partial correlations.
    """
    dtype = z.dtype
    z64, t64 = z.double(), tfa.double()
    residuals = residualise(torch.stack([z64, t64], dim=2), t64)  # both on one design: one solve
    res_z, res_t = residuals[..., 0], residuals[..., 1]
    rho = (res_z * res_t).sum(1) / ((res_z.norm(dim=1) + eps) * (res_t.norm(dim=1) + eps))
    rho = rho.to(dtype)
    return rho if per_component else rho.mean()

"""RAPTORGraph's latent modulator: a learned shift on the target latent only, after normalisation."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

_NORMS = ("batch", "layer", "none")


class LatentModulator(nn.Module):
    """Normalise the exogenous latents, then shift the latent of each perturbed target (spec §2.4, A6).

    ``z̄ = Norm(z)`` and ``z_int = z̄ + P_d(c ⊙ s)``, where ``c ∈ {0, 1}^k`` is the multi-hot
    perturbation label, ``s ∈ R^k`` one learnable shift per target (initialised to ``shift_init``)
    and ``P_d`` pads ``R^k`` to ``R^d`` with zeros on the ``d − k`` free latents. A single
    perturbation of target ``g`` moves coordinate ``g`` only, by ``s_g``; a double ``A + B`` moves
    ``A`` by ``s_A`` and ``B`` by ``s_B`` (additive, as in the discrepancy-VAE). The shift is the
    same for every cell (a soft, shift intervention, not ``do()``).

    The shift is added **after** the normalisation (spec A6): normalising ``z_int`` itself, as the
    paper's LayerNorm on ``z_int`` does, would spread a one-coordinate shift over every latent.

    Parameters
    ----------
    n_targets
        Number of perturbation targets ``k`` (latents ``0 … k − 1``).
    n_latent
        Number of latents ``d ≥ k``.
    norm
        ``"batch"`` (default): a per-latent standardiser, ``BatchNorm1d(d, affine=False)`` with
        running statistics at evaluation, which keeps every latent a function of its own
        coordinate only, so the encoder's zero-Jacobian block survives. ``"layer"``:
        ``LayerNorm(d, elementwise_affine=False)`` across the latents of a cell, as the paper
        writes (E.3.4); each normalised latent then depends on every latent, so a perturbed gene
        reaches every ``z̄`` (the shift itself stays on one coordinate). ``"none"``: identity.
    shift_init
        Initial value of every shift ``s_g`` (spec: 1.0, as the discrepancy-VAE's ``c_shift``).

    Examples
    --------
    >>> import torch
    >>> from pertgrn.nn import LatentModulator
    >>> mod = LatentModulator(n_targets=2, n_latent=3, norm="none")
    >>> z = torch.zeros(1, 3)
    >>> z_obs, z_int = mod(z, torch.tensor([[0.0, 1.0]]))
    >>> (z_int - z_obs).detach()
    tensor([[0., 1., 0.]])
    """

    def __init__(
        self,
        n_targets: int,
        n_latent: int,
        *,
        norm: Literal["batch", "layer", "none"] = "batch",
        shift_init: float = 1.0,
    ):
        super().__init__()
        if n_targets < 1:
            raise ValueError(f"`n_targets` must be >= 1, found {n_targets}.")
        if n_latent < n_targets:
            raise ValueError(f"`n_latent` must be >= n_targets ({n_targets}), found {n_latent}.")
        if norm not in _NORMS:
            raise ValueError(f"`norm` must be one of {_NORMS}, found {norm!r}.")
        self.n_targets, self.n_latent, self.norm_kind = n_targets, n_latent, norm
        if norm == "batch":
            self.norm = nn.BatchNorm1d(n_latent, affine=False)
        elif norm == "layer":
            self.norm = nn.LayerNorm(n_latent, elementwise_affine=False)
        else:
            self.norm = nn.Identity()
        self.shift = nn.Parameter(torch.full((n_targets,), float(shift_init)))

    def intervention(self, perturbation: torch.Tensor) -> torch.Tensor:
        """The additive shift ``Δ = P_d(c ⊙ s)`` of shape ``(B, n_latent)`` for labels ``c`` of shape ``(B, k)``."""
        if perturbation.shape[-1] != self.n_targets:
            raise ValueError(
                f"Expected perturbation labels with {self.n_targets} columns, found {perturbation.shape[-1]}."
            )
        delta = perturbation.to(self.shift.dtype) * self.shift
        return nn.functional.pad(delta, (0, self.n_latent - self.n_targets))

    def forward(self, z: torch.Tensor, perturbation: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(z̄, z_int)``.

        ``z`` has shape ``(B, n_latent)``; ``perturbation`` is the multi-hot label ``(B, n_targets)``
        (``None``: no intervention, ``z_int = z̄``).
        """
        z_obs = self.norm(z)
        if perturbation is None:
            return z_obs, z_obs
        return z_obs, z_obs + self.intervention(perturbation)

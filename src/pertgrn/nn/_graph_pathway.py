"""RAPTORGraph's preconditioned GraphPathway encoder: each perturbed gene feeds exactly one latent."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pertgrn.nn._masked_linear import MaskedLinear

_TargetSelection = Sequence[int] | Sequence[bool] | np.ndarray | None


def _unmeasured_mask(unmeasured_targets: _TargetSelection, n_targets: int) -> np.ndarray:
    """Boolean vector of length ``n_targets`` from indices or a boolean mask (``None``: all measured)."""
    if unmeasured_targets is None:
        return np.zeros(n_targets, dtype=bool)
    arr = np.asarray(unmeasured_targets)
    if arr.dtype == bool:
        if arr.shape != (n_targets,):
            raise ValueError(
                f"A boolean `unmeasured_targets` must have length n_targets={n_targets}, found shape {arr.shape}."
            )
        return arr.copy()
    if arr.size == 0:
        return np.zeros(n_targets, dtype=bool)
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 1:
        raise TypeError(f"`unmeasured_targets` must be target indices or a boolean mask, found dtype {arr.dtype}.")
    if arr.min() < 0 or arr.max() >= n_targets:
        raise ValueError(f"`unmeasured_targets` indices must lie in [0, {n_targets}), found {arr.tolist()}.")
    out = np.zeros(n_targets, dtype=bool)
    out[arr] = True
    return out


def preconditioning_mask(
    n_input: int,
    n_targets: int,
    n_latent: int,
    *,
    unmeasured_targets: _TargetSelection = None,
) -> torch.Tensor:
    """The ``n_latent × n_input`` mask of RAPTORGraph's preconditioned weight (eq. 4).

    With the ``n_targets`` (k) perturbed genes in the first input columns, in the order of their
    latents, ``W = [[Λ₁₁, W₁₂], [0, W₂₂]]`` becomes the mask

    - ``M[i, j] = 1`` for ``j ≥ k``: an unperturbed gene feeds every latent;
    - ``M[i, i] = 1`` for ``i < k``: perturbed gene ``i`` feeds only latent ``i`` (the diagonal Λ₁₁);
    - every other entry is 0, including the block of the ``n_latent − k`` extra latents over the
      perturbed genes (the zero block that prevents intervention spillover).

    A target listed in ``unmeasured_targets`` has no expression column: its input column is
    ignored (its diagonal entry is 0 too), so its latent is fed by the unperturbed genes only.

    Parameters
    ----------
    n_input
        Number of input columns ``n`` (the ``k`` target columns, then the unperturbed genes).
    n_targets
        Number of perturbed genes ``k``.
    n_latent
        Number of latents ``d ≥ k``.
    unmeasured_targets
        Indices (or a boolean mask of length ``k``) of targets without a measured column.

    Returns
    -------
    Boolean tensor of shape ``(n_latent, n_input)``.

    Examples
    --------
    >>> from pertgrn.nn import preconditioning_mask
    >>> preconditioning_mask(4, 2, 3).int()
    tensor([[1, 0, 1, 1],
            [0, 1, 1, 1],
            [0, 0, 1, 1]], dtype=torch.int32)
    """
    if n_targets < 1:
        raise ValueError(f"`n_targets` must be >= 1, found {n_targets}.")
    if n_latent < n_targets:
        raise ValueError(f"`n_latent` must be >= n_targets ({n_targets}), found {n_latent}.")
    if n_input < n_targets:
        raise ValueError(f"`n_input` must be >= n_targets ({n_targets}), found {n_input}.")
    unmeasured = _unmeasured_mask(unmeasured_targets, n_targets)
    mask = torch.zeros(n_latent, n_input, dtype=torch.bool)
    mask[:, n_targets:] = True
    idx = torch.as_tensor(np.flatnonzero(~unmeasured), dtype=torch.long)
    mask[idx, idx] = True
    return mask


def perturbed_first_gather(
    target_columns: Sequence[int] | np.ndarray | torch.Tensor,
    other_columns: Sequence[int] | np.ndarray | torch.Tensor,
    n_genes: int,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The checked gather of :func:`order_perturbed_first`: column indices and a 0/1 mask of measured columns.

    ``x[..., columns] * measured`` is ``order_perturbed_first(x, ...)``; a module that reorders
    every minibatch computes the pair once (the checks here wait on a GPU).
    """
    tcol, ocol = (
        c.to(device=device, dtype=torch.long).reshape(-1)
        if isinstance(c, torch.Tensor)
        else torch.as_tensor(np.asarray(c), dtype=torch.long, device=device).reshape(-1)
        for c in (target_columns, other_columns)
    )
    if bool((tcol >= n_genes).any()) or bool((ocol < 0).any()) or bool((ocol >= n_genes).any()):
        raise ValueError(f"Column indices must lie in [0, {n_genes}) (targets may be -1 for unmeasured).")
    measured = torch.cat([tcol >= 0, torch.ones_like(ocol, dtype=torch.bool)])
    return torch.cat([tcol.clamp(min=0), ocol]), measured


def order_perturbed_first(
    x: torch.Tensor,
    *,
    target_columns: Sequence[int] | np.ndarray | torch.Tensor,
    other_columns: Sequence[int] | np.ndarray | torch.Tensor,
) -> torch.Tensor:
    """Reorder expression columns for :class:`GraphPathwayEncoder`: targets first, zeros where unmeasured.

    Column ``i < k`` of the result is ``x[:, target_columns[i]]``, or all zeros when
    ``target_columns[i] < 0`` (a target that is not a measured gene, spec §1.3); the remaining
    columns are ``x[:, other_columns]``.

    Parameters
    ----------
    x
        Expression, shape ``(..., n_genes)`` in the AnnData's gene order.
    target_columns
        For each of the ``k`` targets in latent order, its column in ``x``, or ``-1`` if unmeasured.
    other_columns
        Columns of ``x`` of the unperturbed genes, in the order the encoder should see them.

    Returns
    -------
    Tensor of shape ``(..., k + len(other_columns))`` with the dtype and device of ``x``.

    Examples
    --------
    >>> import torch
    >>> from pertgrn.nn import order_perturbed_first
    >>> x = torch.tensor([[10.0, 11.0, 12.0]])
    >>> order_perturbed_first(x, target_columns=[2, -1], other_columns=[0, 1])
    tensor([[12.,  0., 10., 11.]])
    """
    columns, measured = perturbed_first_gather(target_columns, other_columns, x.shape[-1], x.device)
    return x[..., columns] * measured.to(x.dtype)


class GraphPathwayEncoder(nn.Module):
    """RAPTORGraph's preconditioned GraphPathway encoder (``InteractingGraphPathwayLayer``).

    For inputs ``x`` whose first ``k`` columns are the perturbed genes (in latent order) followed
    by the unperturbed genes (spec §1.3, §2.1–2.3):

    1. ``S = act(x (W ⊙ M_rep)ᵀ + b)``, reshaped to ``(B, d, m)``: one masked linear map to
       ``d · m`` units, where every latent owns ``m`` subgraphs, each an independently initialised
       copy of the preconditioning mask :func:`preconditioning_mask` (row ``i · m + g`` is
       subgraph ``g`` of latent ``i``). Perturbed gene ``i`` reaches only latent ``i``; the
       ``d − k`` extra latents see no perturbed gene.
    2. Interaction block: ``S ← act(einsum('bdm,dmh->bdh', S, W_int) + b_int)`` with weights
       unique to each latent, ``n_interaction_layers`` times.
    3. Aggregation: a grouped ``Conv1d(d → 2d, kernel_size=m, groups=d)``, i.e. a per-latent
       ``Linear(m → 2)``. Group ``i`` writes output channels ``2i`` and ``2i + 1``, so
       ``μ = o[:, 0::2]`` and ``σ² = softplus(o[:, 1::2]) + var_eps``. The layer keeps the
       convolution's parameters (``aggregate.weight``, ``aggregate.bias``) but applies them as one
       batched matrix product over latents, which is the same map: on CPU, oneDNN's grouped
       convolution took 2.6 ms per forward and backward at ``d = 16`` and 18 ms at ``d = 109``
       (batch 128), the batched product 0.3 ms and 0.85 ms.

    Every operation after step 1 acts within one latent, so ``(μ_l, σ_l)`` depends on perturbed
    gene ``j`` only if ``l = j``: the Jacobian from a perturbed gene to every other latent is
    exactly zero.

    Targets that are not measured genes (spec §1.3) are named in ``unmeasured_targets``: their
    input column is still present (fill it with zeros, :func:`order_perturbed_first` does), but
    the layer gives it no weight at all, so the column's content cannot matter and the latent is
    fed by the unperturbed genes only.

    Parameters
    ----------
    n_input
        Number of input columns ``n`` (``k`` target columns, then the unperturbed genes).
    n_targets
        Number of perturbed genes ``k``.
    n_latent
        Number of latents ``d ≥ k``; the last ``d − k`` are free latents.
    n_subgraphs
        Subgraphs per latent ``m`` (spec: 8).
    n_interaction_layers
        Depth of the per-latent interaction block (spec: 1); 0 skips it.
    unmeasured_targets
        Indices (or a boolean mask of length ``k``) of targets without an expression column.
    activation
        Activation module class (the paper uses SiLU).
    var_eps
        Variance floor added after the softplus.

    Examples
    --------
    >>> import torch
    >>> from pertgrn.nn import GraphPathwayEncoder
    >>> enc = GraphPathwayEncoder(n_input=6, n_targets=2, n_latent=3, n_subgraphs=4)
    >>> loc, scale = enc(torch.randn(5, 6))
    >>> loc.shape, bool((scale > 0).all())
    (torch.Size([5, 3]), True)
    """

    def __init__(
        self,
        n_input: int,
        n_targets: int,
        n_latent: int,
        *,
        n_subgraphs: int = 8,
        n_interaction_layers: int = 1,
        unmeasured_targets: _TargetSelection = None,
        activation: type[nn.Module] = nn.SiLU,
        var_eps: float = 1e-6,
    ):
        super().__init__()
        if n_subgraphs < 1:
            raise ValueError(f"`n_subgraphs` must be >= 1, found {n_subgraphs}.")
        if n_interaction_layers < 0:
            raise ValueError(f"`n_interaction_layers` must be >= 0, found {n_interaction_layers}.")
        if not var_eps > 0:
            raise ValueError(f"`var_eps` must be positive, found {var_eps}.")
        mask = preconditioning_mask(n_input, n_targets, n_latent, unmeasured_targets=unmeasured_targets)
        self.n_input, self.n_targets, self.n_latent, self.n_subgraphs = n_input, n_targets, n_latent, n_subgraphs
        self.var_eps = var_eps
        self.register_buffer(
            "unmeasured_targets", torch.as_tensor(_unmeasured_mask(unmeasured_targets, n_targets)), persistent=False
        )
        # row i * m + g is subgraph g of latent i, so a reshape to (B, d, m) groups rows by latent
        self.subgraphs = MaskedLinear(mask.repeat_interleave(n_subgraphs, dim=0))
        bound = 1.0 / np.sqrt(n_subgraphs)  # nn.Linear's default range for fan-in m
        self.interaction_weight = nn.ParameterList(
            nn.Parameter(torch.empty(n_latent, n_subgraphs, n_subgraphs).uniform_(-bound, bound))
            for _ in range(n_interaction_layers)
        )
        self.interaction_bias = nn.ParameterList(
            nn.Parameter(torch.empty(n_latent, n_subgraphs).uniform_(-bound, bound))
            for _ in range(n_interaction_layers)
        )
        self.activation = activation()
        self.aggregate = nn.Conv1d(n_latent, 2 * n_latent, kernel_size=n_subgraphs, groups=n_latent)

    @property
    def mask(self) -> torch.Tensor:
        """The ``n_latent × n_input`` preconditioning mask (without the subgraph repetition)."""
        return self.subgraphs.mask[:: self.n_subgraphs]

    def subgraph_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Per-latent subgraph features after the interaction block, shape ``(B, n_latent, n_subgraphs)``."""
        if x.shape[-1] != self.n_input:
            raise ValueError(f"Expected inputs with {self.n_input} columns, found {x.shape[-1]}.")
        s = self.activation(self.subgraphs(x.reshape(-1, self.n_input)))
        s = s.reshape(-1, self.n_latent, self.n_subgraphs)
        for weight, bias in zip(self.interaction_weight, self.interaction_bias, strict=True):
            s = self.activation(torch.einsum("bdm,dmh->bdh", s, weight) + bias)
        return s

    def _aggregated(self, s: torch.Tensor) -> torch.Tensor:
        """``self.aggregate(s).squeeze(-1)`` for ``s`` of shape ``(B, d, m)``, as a batched product over latents.

        Returns shape ``(B, d, 2)``: ``[..., i, 0]`` is output channel ``2i`` of the grouped
        convolution (``μ_i``), ``[..., i, 1]`` channel ``2i + 1``.
        """
        weight = self.aggregate.weight.view(self.n_latent, 2, self.n_subgraphs)  # (2d, 1, m): channel 2i + o
        bias = self.aggregate.bias.view(self.n_latent, 1, 2)
        return torch.baddbmm(bias, s.transpose(0, 1), weight.transpose(1, 2)).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)`` of the latent Gaussian, each of shape ``(..., n_latent)``."""
        lead = x.shape[:-1]
        o = self._aggregated(self.subgraph_activations(x))  # (B, d, 2): (μ_i, pre-softplus σ²_i)
        loc = o[..., 0]
        scale = torch.sqrt(F.softplus(o[..., 1]) + self.var_eps)
        return loc.reshape(*lead, self.n_latent), scale.reshape(*lead, self.n_latent)

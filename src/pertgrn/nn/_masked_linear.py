"""A linear layer whose weight is multiplied by a fixed binary mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedLinear(nn.Linear):
    """``y = x (W ⊙ M)ᵀ + b`` with a fixed 0/1 mask ``M`` of the weight's shape.

    The mask is applied in every forward pass, so an entry with ``M_ij = 0`` has exactly zero
    influence on the output and receives exactly zero gradient. The masked entries of the weight
    are also set to zero at initialisation, so that weight decay, optimizer state and a saved
    state dict never carry values that play no role.

    Parameters
    ----------
    mask
        Boolean or 0/1 tensor of shape ``(out_features, in_features)``; ``True`` / 1 keeps a weight.
        Stored as a buffer (it moves with the module and is saved in its state dict).
    bias
        Whether the layer has a bias (never masked).

    Examples
    --------
    >>> import torch
    >>> from pertgrn.nn import MaskedLinear
    >>> layer = MaskedLinear(torch.tensor([[1, 0], [1, 1]]))
    >>> float(layer.weight.detach()[0, 1])
    0.0
    >>> x = torch.zeros(1, 2, requires_grad=True)
    >>> layer(x)[0, 0].backward()
    >>> float(x.grad[0, 1])
    0.0
    """

    def __init__(self, mask: torch.Tensor, bias: bool = True):
        mask = torch.as_tensor(mask)
        if mask.ndim != 2:
            raise ValueError(f"`mask` must be 2-D (out_features, in_features), found shape {tuple(mask.shape)}.")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("`mask` must contain only 0/1 (or False/True) values.")
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.to(torch.bool))
        with torch.no_grad():
            self.weight.masked_fill_(~self.mask, 0.0)

    def reset_parameters(self) -> None:
        """Re-draw the weights as :class:`torch.nn.Linear` does, then zero the masked entries."""
        super().reset_parameters()
        if hasattr(self, "mask"):  # nn.Linear.__init__ calls this before the mask exists
            with torch.no_grad():
                self.weight.masked_fill_(~self.mask, 0.0)

    @property
    def masked_weight(self) -> torch.Tensor:
        """The effective weight ``W ⊙ M``."""
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the masked linear map to the last dimension of ``x``."""
        return F.linear(x, self.masked_weight, self.bias)

"""scvi-tools models: GPO-VAE, RAPTORGraph and gCRL."""

from pertgrn.models._gcrlvae import GCRLAE, GCRLVAE
from pertgrn.models._gpovae import GPOVAE

__all__ = ["GCRLAE", "GCRLVAE", "GPOVAE"]

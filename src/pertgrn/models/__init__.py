"""scvi-tools models: GPO-VAE, RAPTORGraph and gCRL."""

from pertgrn.models._gcrlvae import GCRLAE, GCRLVAE
from pertgrn.models._gpovae import GPOVAE
from pertgrn.models._raptorgraph import RaptorGraph

__all__ = ["GCRLAE", "GCRLVAE", "GPOVAE", "RaptorGraph"]

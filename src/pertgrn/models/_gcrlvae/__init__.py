"""gCRL (ICML 2026 GenBio workshop): gCRL-VAE with its d-VAE and id-VAE variants, and gCRL-AE."""

from pertgrn.models._gcrlvae._ae import GCRLAE, GCRLAEModule
from pertgrn.models._gcrlvae._model import GCRLVAE
from pertgrn.models._gcrlvae._module import GCRLVAEModule
from pertgrn.models._gcrlvae._trainingplan import GCRLVAETrainingPlan

__all__ = ["GCRLAE", "GCRLAEModule", "GCRLVAE", "GCRLVAEModule", "GCRLVAETrainingPlan"]

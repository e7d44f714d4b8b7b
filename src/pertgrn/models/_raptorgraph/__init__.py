"""RAPTORGraph: preconditioned GraphPathway encoder, latent modulator and DAGMA latent DAG."""

from pertgrn.models._raptorgraph._model import RaptorGraph

__all__ = ["RaptorGraph"]

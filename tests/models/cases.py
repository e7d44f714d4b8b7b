"""The models every conformance test runs on: a new model joins by adding one entry to ``CASES``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from anndata import AnnData

import pertgrn as pg


@dataclass(frozen=True)
class ModelCase:
    """How to build, fit and probe one model on a tiny screen."""

    name: str
    model_cls: Callable[[], type]
    fit: Callable[..., Any]
    key: str
    n_latent: int
    level: str
    model_kwargs: dict = field(default_factory=dict)
    train_kwargs: dict = field(default_factory=dict)
    screen: Callable[[], AnnData] | None = None


def tiny_screen(seed: int = 0) -> AnnData:
    """The whole preprocessing chain on a small simulated screen with a held-out split."""
    adata = pg.datasets.simulate(
        n_genes=60,
        n_regulators=6,
        n_perturbed=4,
        n_doubles=1,
        n_unmeasured_targets=1,
        n_control=80,
        cells_per_condition=30,
        seed=seed,
    )
    pg.pp.annotate_perturbations(adata)
    pg.pp.annotate_qc(adata)
    rng = np.random.default_rng(seed)
    adata.obs["test"] = rng.random(adata.n_obs) < 0.2
    pg.pp.select_extended_genes(adata, test_key="test")
    pg.pp.ot_pairing(adata)
    return adata


def _gpovae():
    from pertgrn.models import GPOVAE

    return GPOVAE


def _raptorgraph():
    from pertgrn.models import RaptorGraph

    return RaptorGraph


def _gcrlvae():
    from pertgrn.models import GCRLVAE

    return GCRLVAE


def modular_screen(seed: int = 0) -> AnnData:
    """A small screen with two planted regulator modules, gCRL's preprocessing chain and a held-out split.

    The reference GRN and the activities are fitted without the held-out cells. Seed 0 gives
    three TF communities (so four latents) and every perturbed regulator in one of them.
    """
    adata = pg.datasets.simulate(
        n_genes=60,
        n_regulators=12,
        n_tf_modules=2,
        n_perturbed=4,
        n_doubles=1,
        n_unmeasured_targets=0,
        n_control=200,
        cells_per_condition=30,
        seed=seed,
    )
    pg.pp.annotate_perturbations(adata)
    rng = np.random.default_rng(seed)
    adata.obs["test"] = rng.random(adata.n_obs) < 0.2
    tfs = adata.var_names[adata.var["true_tf_module"] >= 0]
    pg.pp.reference_grn(adata, tfs=tfs, test_key="test")
    pg.pp.tf_communities(adata, n_runs=10, n_perm=0)
    pg.pp.tf_activity(adata, fit_mask=~adata.obs["test"].to_numpy())
    pg.pp.select_extended_genes(adata, test_key="test")  # not used by the model; the contract test checks it
    return adata


CASES = [
    ModelCase(
        name="GPOVAE",
        model_cls=_gpovae,
        fit=pg.tl.fit_gpovae,
        key="gpovae",
        n_latent=8,
        level="gene",
        model_kwargs={
            "n_latent": 8,
            "decoder_n_hidden": 32,
            "encoder_n_hidden": 32,
            "embedding_n_hidden": 32,
            "embedding_n_layers": 2,
        },
        train_kwargs={"enable_progress_bar": False, "batch_size": 64, "n_particles": 1, "early_stopping": False},
    ),
    ModelCase(
        name="RaptorGraph",
        model_cls=_raptorgraph,
        fit=pg.tl.fit_raptorgraph,
        key="raptorgraph",
        n_latent=8,  # 4 targets + 4 free latents
        level="latent",
        model_kwargs={"decoder_n_hidden": 32, "n_subgraphs": 3},
        train_kwargs={"enable_progress_bar": False, "batch_size": 64},
    ),
    # GCRLAE is not a case: it reads no perturbation labels, so it predicts nothing and has no GRN
    ModelCase(
        name="GCRLVAE",
        model_cls=_gcrlvae,
        fit=pg.tl.fit_gcrlvae,
        key="gcrlvae",
        n_latent=4,
        level="latent",
        model_kwargs={"n_hidden": 32},
        train_kwargs={"enable_progress_bar": False, "batch_size": 8},
        screen=modular_screen,
    ),
]

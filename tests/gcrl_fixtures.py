"""A simulated screen with planted regulator modules, shared by the gCRL preprocessing tests."""

from __future__ import annotations

import pertgrn as pg

#: 40 regulators in 4 planted modules; 1,500 control cells carry their variation.
MODULAR_SCREEN = {
    "n_genes": 216,
    "n_regulators": 40,
    "n_tf_modules": 4,
    "n_control": 1500,
    "n_perturbed": 6,
    "n_doubles": 2,
    "cells_per_condition": 40,
    "seed": 0,
}


def modular_tfs(adata) -> list[str]:
    """The measured regulators of a simulated screen (its TF list)."""
    return list(adata.var_names[adata.var["true_tf_module"].to_numpy() >= 0])


def build_modular_screen():
    """The modular screen, annotated, with a reference GRN (defaults) and TF communities (defaults)."""
    adata = pg.datasets.simulate(**MODULAR_SCREEN)
    pg.pp.annotate_perturbations(adata, control="control")
    pg.pp.reference_grn(adata, tfs=modular_tfs(adata))
    pg.pp.tf_communities(adata)
    return adata

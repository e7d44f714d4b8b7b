"""The reference GRN written by :func:`pertgrn.pp.reference_grn`, as a long table."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData


def reference_grn_df(adata: AnnData, *, key: str = "reference_grn") -> pd.DataFrame:
    """Return the reference GRN as a ``source, target, weight, pvalue, qvalue`` table.

    The table is decoupler's network format (plus the two statistics), so it can be passed on as a
    ``net``; it is a copy, and nothing is written to ``adata``.

    Parameters
    ----------
    adata
        AnnData holding the output of :func:`pertgrn.pp.reference_grn`.
    key
        The ``key_added`` the reference GRN was written with.

    Returns
    -------
    :class:`pandas.DataFrame` with columns ``source`` (TF, str), ``target`` (str), ``weight`` (mean
    ridge coefficient), ``pvalue`` and ``qvalue`` (Benjamini–Hochberg), one row per kept edge,
    sorted by ``|weight|``, largest first.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(n_tf_modules=3, seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> pg.pp.reference_grn(adata, tfs=adata.var_names[adata.var["true_tf_module"] >= 0])
    >>> edges = pg.get.reference_grn_df(adata)
    >>> bool((edges["qvalue"] <= 0.05).all())
    True
    """
    from pertgrn.pp._reference_grn import reference_grn_record  # pp imports POT, and POT imports torch

    record = reference_grn_record(adata, key)
    edges = record["edges"].copy()
    for column in ("source", "target"):
        edges[column] = edges[column].astype(str)
    return edges.reset_index(drop=True)

"""Pathway enrichment of latent factors (RAPTORGraph D.6): preranked GSEA of each latent's decoded signature."""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from pertgrn._utils import logger

ORIENTATIONS = ("perturbation", "latent")


def read_gene_sets(gene_sets: str | os.PathLike | Mapping[str, Sequence[str]] | pd.DataFrame) -> pd.DataFrame:
    """Gene sets as a long ``source, target`` table (decoupler's network format).

    Accepts a GMT file path (read by :func:`decoupler.pp.read_gmt`), a mapping ``{set: genes}`` or a
    DataFrame with ``source`` and ``target`` columns.
    """
    if isinstance(gene_sets, str | os.PathLike):
        import decoupler as dc

        if not os.path.exists(gene_sets):
            raise FileNotFoundError(f"Gene-set file {str(gene_sets)!r} does not exist (expected a GMT file).")
        table = dc.pp.read_gmt(str(gene_sets))
    elif isinstance(gene_sets, pd.DataFrame):
        missing = {"source", "target"} - set(gene_sets.columns)
        if missing:
            raise ValueError(f"A gene-set table needs `source` and `target` columns; missing {sorted(missing)}.")
        table = gene_sets
    elif isinstance(gene_sets, Mapping):
        table = pd.DataFrame(
            [(str(name), str(g)) for name, genes in gene_sets.items() for g in genes], columns=["source", "target"]
        )
    else:
        raise TypeError(
            f"`gene_sets` must be a GMT path, a dict of gene lists or a source/target DataFrame, "
            f"found {type(gene_sets).__name__}."
        )
    return table[["source", "target"]].astype(str).drop_duplicates().reset_index(drop=True)


def enrich_latents(
    adata: AnnData,
    *,
    key: str = "raptorgraph",
    gene_sets: str | os.PathLike | Mapping[str, Sequence[str]] | pd.DataFrame,
    latents: Sequence[str] | None = None,
    orientation: str = "perturbation",
    min_size: int = 15,
    max_size: int = 500,
    n_permutations: int = 1000,
    seed: int = 0,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Preranked GSEA of each latent's decoded signature against gene sets (e.g. MSigDB Hallmark).

    The signature of a latent is its gene loadings ``varm["<key>_loadings"]``, written by
    :func:`pertgrn.tl.fit_raptorgraph`: the decoded change of every gene when that one latent is
    shifted (averaged over control cells, propagated through the latent DAG). Genes are ranked by
    it and every gene set is tested by GSEA (:func:`decoupler.mt.gsea`: running-sum enrichment
    score normalised by permutations of the genes, Benjamini–Hochberg FDR across sets).

    With ``orientation="perturbation"`` (default, RAPTORGraph D.6: the latent is "activated" by its
    perturbation), the loadings of a target's latent are multiplied by the target's learned shift
    ``uns[key]["latent_shift"]``, so a positive NES means the set goes up when the target is
    perturbed (to first order; GSEA's score does not change under positive rescaling). Free
    latents and ``orientation="latent"`` use the loadings as they are (a positive NES: the set
    rises with the latent).

    Parameters
    ----------
    adata
        AnnData holding a fitted model's loadings (``tl.fit_raptorgraph``).
    key
        The model's ``key_added``.
    gene_sets
        A GMT file (e.g. MSigDB Hallmark), a dict ``{set: genes}`` or a ``source, target`` table.
        Gene names must match ``var_names``; nothing is downloaded.
    latents
        Latents to test (names in ``uns[key]["latents"]``); ``None`` tests all.
    orientation
        ``"perturbation"`` or ``"latent"`` (see above).
    min_size
        Gene sets with fewer genes among ``var_names`` are left out (spec: 15).
    max_size
        Gene sets with more genes among ``var_names`` are left out (spec: 500).
    n_permutations
        Gene permutations behind NES and p-values.
    seed
        Seed of the permutations (passed to decoupler as ``seed + 1``: its seed 0 disables them).
    key_added
        ``uns`` key written; ``None`` uses ``"<key>_enrichment"``.

    Returns
    -------
    Long :class:`pandas.DataFrame` with columns ``latent``, ``gene_set``, ``nes``, ``fdr``, sorted
    by FDR, then by ``|NES|`` (largest first). Also writes ``uns[key_added]``: ``nes`` and ``fdr``
    (DataFrames latents × gene sets), ``sizes`` (genes of each tested set among ``var_names``) and ``params``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from anndata import AnnData
    >>> import pertgrn as pg
    >>> rng = np.random.default_rng(0)
    >>> adata = AnnData(np.zeros((2, 300), dtype=np.float32), var=pd.DataFrame(index=[f"g{i}" for i in range(300)]))
    >>> loadings = rng.normal(size=(300, 2))
    >>> loadings[:30, 0] += 3.0  # latent A raises the first 30 genes
    >>> adata.varm["toy_loadings"] = loadings
    >>> adata.uns["toy"] = {"latents": ["A", "B"], "keys": {"varm": "toy_loadings"}}
    >>> sets = {"first": [f"g{i}" for i in range(30)], "other": [f"g{i}" for i in range(100, 130)]}
    >>> table = pg.tl.enrich_latents(adata, key="toy", gene_sets=sets, orientation="latent")
    >>> table.iloc[0][["latent", "gene_set"]].tolist(), bool(table.iloc[0]["nes"] > 0)
    (['A', 'first'], True)
    """
    import decoupler as dc

    if orientation not in ORIENTATIONS:
        raise ValueError(f"`orientation` must be one of {ORIENTATIONS}, found {orientation!r}.")
    for name, value in (("min_size", min_size), ("max_size", max_size), ("n_permutations", n_permutations)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, found {value!r}.")
    if min_size > max_size:
        raise ValueError(f"`min_size` ({min_size}) exceeds `max_size` ({max_size}).")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, found {seed!r}.")
    entry = adata.uns.get(key)
    if not isinstance(entry, Mapping) or "latents" not in entry:
        raise KeyError(f"adata.uns[{key!r}] holds no latent model; fit one with `pertgrn.tl.fit_raptorgraph`.")
    keys = entry.get("keys", {})
    varm_key = keys.get("varm", f"{key}_loadings") if isinstance(keys, Mapping) else f"{key}_loadings"
    if varm_key not in adata.varm:
        raise KeyError(
            f"adata.varm[{varm_key!r}] (the latents' gene loadings) is missing; refit with `tl.fit_raptorgraph`."
        )
    names = [str(n) for n in entry["latents"]]
    loadings = pd.DataFrame(np.asarray(adata.varm[varm_key], dtype=np.float64), index=adata.var_names, columns=names)
    if orientation == "perturbation" and "latent_shift" in entry:
        shift = np.asarray(entry["latent_shift"], dtype=np.float64)
        factor = np.where(np.isfinite(shift), shift, 1.0)
        loadings = loadings * factor[None, :]
    if latents is not None:
        latents = [str(x) for x in latents]
        unknown = sorted(set(latents) - set(names))
        if unknown:
            raise KeyError(f"Unknown latents {unknown}; the model's latents are {names[:10]} ….")
        loadings = loadings[latents]
    net = read_gene_sets(gene_sets)
    net = net[net["target"].isin(adata.var_names)]
    sizes = net.groupby("source")["target"].nunique()
    kept = sizes[(sizes >= min_size) & (sizes <= max_size)]
    if kept.empty:
        raise ValueError(
            f"No gene set has between {min_size} and {max_size} genes among the {adata.n_vars} genes of `adata` "
            f"(largest overlap: {int(sizes.max()) if len(sizes) else 0}). Check the gene names or lower `min_size`."
        )
    logger.info("enrich_latents: %d of %d gene sets have %d–%d genes here", len(kept), len(sizes), min_size, max_size)
    net = net[net["source"].isin(kept.index)]
    data = loadings.T
    nes, fdr = dc.mt.gsea(data, net, tmin=int(min_size), times=int(n_permutations), seed=int(seed) + 1)
    nes.index.name = fdr.index.name = "latent"
    adata.uns[key_added or f"{key}_enrichment"] = {
        "nes": nes,
        "fdr": fdr,
        "sizes": kept.astype(np.int64).to_frame("n_genes"),
        "params": {
            "key": key,
            "orientation": orientation,
            "min_size": int(min_size),
            "max_size": int(max_size),
            "n_permutations": int(n_permutations),
            "seed": int(seed),
        },
    }
    long = nes.stack().rename("nes").to_frame().join(fdr.stack().rename("fdr"))
    long.index.names = ["latent", "gene_set"]
    long = long.reset_index().assign(_strength=lambda t: -t["nes"].abs())
    return long.sort_values(["fdr", "_strength"], kind="stable").drop(columns="_strength").reset_index(drop=True)

"""Latents × gene sets heatmap of normalised enrichment scores."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pertgrn.pl._utils import as_frame, check_flags, figure_and_axes, show_or_return, uns_entry


def enrichment(
    adata: AnnData,
    *,
    key: str = "raptorgraph_enrichment",
    latents: Sequence[str] | None = None,
    gene_sets: Sequence[str] | None = None,
    n_sets: int | None = 20,
    max_fdr: float = 0.05,
    strip_prefix: str = "HALLMARK_",
    cmap: str = "RdBu_r",
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Heatmap of normalised enrichment scores (NES), latents as rows and gene sets as columns.

    Reads what :func:`pertgrn.tl.enrich_latents` wrote. Colours are NES on a diverging map centred
    at 0 (red: the set goes up with the latent's signature); a dot marks ``FDR < max_fdr``.

    Parameters
    ----------
    adata
        AnnData holding ``uns[key]`` from :func:`pertgrn.tl.enrich_latents`.
    key
        The ``uns`` key (``"<model key>_enrichment"`` by default).
    latents
        Latents (rows) to draw; ``None``: all.
    gene_sets
        Gene sets (columns) to draw; ``None``: the ``n_sets`` sets with the smallest FDR in any
        drawn latent.
    n_sets
        Number of gene sets drawn when ``gene_sets`` is ``None`` (``None``: all).
    max_fdr
        Cells with FDR below it are marked.
    strip_prefix
        Prefix removed from gene-set names on the axis (MSigDB's ``"HALLMARK_"``).
    cmap
        Colormap.
    figsize
        Size of a new figure; ignored when ``ax`` is given.
    ax
        Axes to draw into; ``None`` creates a new figure.
    show
        Show the figure; ``None`` follows ``scanpy.settings.autoshow``.
    return_fig
        Return the Figure instead of showing it.

    Returns
    -------
    The Figure if ``return_fig``; else, if not shown, the Axes; otherwise ``None``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import pandas as pd
    >>> from anndata import AnnData
    >>> import pertgrn as pg
    >>> adata = AnnData(var=pd.DataFrame(index=["g0"]))
    >>> nes = pd.DataFrame([[2.1, -0.3], [0.2, -1.9]], index=["A", "B"], columns=["HALLMARK_X", "HALLMARK_Y"])
    >>> fdr = pd.DataFrame([[0.01, 0.9], [0.8, 0.02]], index=["A", "B"], columns=["HALLMARK_X", "HALLMARK_Y"])
    >>> adata.uns["toy"] = {"nes": nes, "fdr": fdr}
    >>> ax = pg.pl.enrichment(adata, key="toy", show=False)
    >>> [t.get_text() for t in ax.get_xticklabels()]
    ['X', 'Y']
    """
    check_flags(show=show, return_fig=return_fig)
    if n_sets is not None and (isinstance(n_sets, bool) or not isinstance(n_sets, numbers.Integral) or n_sets < 1):
        raise ValueError(f"`n_sets` must be a positive integer or None, found {n_sets!r}.")
    how = "run `pertgrn.tl.enrich_latents` first"
    nes = as_frame(uns_entry(adata, key, "nes", how=how), what=f"adata.uns[{key!r}]['nes']")
    fdr = as_frame(uns_entry(adata, key, "fdr", how=how), what=f"adata.uns[{key!r}]['fdr']").loc[nes.index, nes.columns]
    if latents is not None:
        latents = [str(x) for x in latents]
        missing = sorted(set(latents) - set(nes.index.astype(str)))
        if missing:
            raise KeyError(f"Latents {missing} were not tested; tested: {list(nes.index)[:10]}.")
        nes, fdr = nes.loc[latents], fdr.loc[latents]
    if gene_sets is not None:
        gene_sets = [str(g) for g in gene_sets]
        missing = sorted(set(gene_sets) - set(nes.columns.astype(str)))
        if missing:
            raise KeyError(f"Gene sets {missing} were not tested; tested: {list(nes.columns)[:10]}.")
        nes, fdr = nes[gene_sets], fdr[gene_sets]
    elif n_sets is not None and nes.shape[1] > n_sets:
        best = fdr.min(axis=0).sort_values(kind="stable").index[:n_sets]
        nes, fdr = nes[best], fdr[best]
    values = nes.to_numpy(dtype=float)
    limit = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    fig, ax = figure_and_axes(ax, figsize or (0.35 * nes.shape[1] + 2.5, 0.3 * nes.shape[0] + 2.0))
    image = ax.imshow(values, cmap=cmap, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    significant = np.argwhere(fdr.to_numpy(dtype=float) < max_fdr)
    if significant.size:
        ax.scatter(significant[:, 1], significant[:, 0], s=8, c="black", marker="o", label=f"FDR < {max_fdr:g}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, -0.02), fontsize=7, frameon=False)
    names = [
        c[len(strip_prefix) :] if strip_prefix and c.startswith(strip_prefix) else c for c in nes.columns.astype(str)
    ]
    ax.set_xticks(np.arange(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(nes.shape[0]), nes.index.astype(str), fontsize=7)
    ax.set_xlabel("gene set")
    ax.set_ylabel("latent")
    fig.colorbar(image, ax=ax, label="NES", shrink=0.8)
    return show_or_return(fig, ax, show=show, return_fig=return_fig)

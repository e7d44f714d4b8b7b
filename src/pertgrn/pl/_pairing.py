"""Optimal-transport partners of one condition's cells, drawn on an embedding."""

from __future__ import annotations

import numbers

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from scipy import sparse

from pertgrn._constants import CONDITION_KEY, OT_PAIRING_KEY
from pertgrn._utils import get_design, unknown_names_message
from pertgrn.pl._utils import check_flags, figure_and_axes, show_or_return

CONTROL_COLOR = "#9e9e9e"
OTHER_COLOR = "#e6e6e6"
CONDITION_COLOR = "#d62728"
LINE_COLOR = "#1f1f1f"


def embedding(adata: AnnData, basis: str) -> np.ndarray:
    """First two columns of ``obsm["X_<basis>"]``, or a KeyError that says how to compute it."""
    if not isinstance(basis, str):
        raise TypeError(f"`basis` must be a str such as 'umap' or 'pca', found {type(basis).__name__}.")
    name = basis if basis.startswith("X_") else f"X_{basis}"
    if name not in adata.obsm:
        how = {"X_umap": "sc.pp.neighbors(adata) and sc.tl.umap(adata)", "X_pca": "sc.pp.pca(adata)"}.get(
            name, f"the tool that writes obsm[{name!r}]"
        )
        raise KeyError(
            f"adata.obsm[{name!r}] not found: run {how} first (on log-normalised data). "
            f"Available bases: {list(adata.obsm.keys())}."
        )
    coords = np.asarray(adata.obsm[name].toarray() if sparse.issparse(adata.obsm[name]) else adata.obsm[name])
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"adata.obsm[{name!r}] must have at least two columns, found shape {coords.shape}.")
    return coords[:, :2].astype(float)


def pairing(
    adata: AnnData,
    *,
    condition: str,
    basis: str = "umap",
    key: str = OT_PAIRING_KEY,
    n_lines: int = 200,
    size: float | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Optimal-transport partners of a condition's cells on an embedding.

    Control cells are grey, the cells of ``condition`` coloured, all other cells faint. A line
    joins each perturbed cell to each control cell it is paired with, its opacity proportional to
    the transport weight; only the ``n_lines`` heaviest pairs are drawn so the picture stays legible.

    Parameters
    ----------
    adata
        Screen after :func:`pertgrn.pp.annotate_perturbations` and :func:`pertgrn.pp.ot_pairing`,
        with an embedding in ``obsm["X_<basis>"]``.
    condition
        Condition label (canonical, as in ``obs["pertgrn_condition"]``) whose pairs are drawn.
    basis
        Embedding to draw on: ``obsm["X_<basis>"]`` (``"umap"`` or ``"pca"``; first two components).
    key
        ``obsp`` key of the pairing: an n_obs × n_obs sparse matrix, perturbed cell × control cell,
        rows of perturbed cells summing to 1.
    n_lines
        Draw at most this many pairs, the heaviest first.
    size
        Marker area in points²; defaults to a size that suits the number of cells.
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
    >>> import numpy as np
    >>> import scanpy as sc
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> pg.pp.ot_pairing(adata)
    >>> adata.obsm["X_pca"] = sc.pp.pca(np.log1p(adata.X.toarray()), n_comps=10)
    >>> p = adata.uns["pertgrn"]["targets"][0]
    >>> ax = pg.pl.pairing(adata, condition=p, basis="pca", n_lines=50, show=False)
    >>> ax.get_title() == f"OT pairing: {p}"
    True
    """
    check_flags(show=show, return_fig=return_fig)
    if not isinstance(condition, str):
        raise TypeError(f"`condition` must be a condition label (str), found {type(condition).__name__}.")
    if isinstance(n_lines, bool) or not isinstance(n_lines, numbers.Integral) or n_lines < 0:
        raise ValueError(f"`n_lines` must be a non-negative integer, found {n_lines!r}.")
    design = get_design(adata)
    control = str(design["control"])
    coords = embedding(adata, basis)
    if key not in adata.obsp:
        raise KeyError(
            f"adata.obsp[{key!r}] not found: run `pertgrn.pp.ot_pairing(adata)` first. "
            f"Available: {list(adata.obsp.keys())}."
        )
    conditions = adata.obs[CONDITION_KEY].astype(str).to_numpy()
    if condition == control:
        raise ValueError(f"`condition` must be a perturbation, not the control label {control!r}.")
    if condition not in set(conditions):
        known = [c for c in adata.obs[CONDITION_KEY].cat.categories if c != control]
        raise KeyError(
            unknown_names_message(
                [condition],
                known,
                what="Condition",
                problem=f"not found in adata.obs[{CONDITION_KEY!r}]",
                delimiter=str(design.get("delimiter", "+")),
            )
        )
    plan = sparse.csr_matrix(adata.obsp[key])
    in_condition = conditions == condition
    is_control = conditions == control

    rows = np.flatnonzero(in_condition)
    block = plan[rows].tocoo()
    keep = block.data > 0
    sources, partners, weights = rows[block.row[keep]], block.col[keep], block.data[keep]
    order = np.argsort(-weights, kind="stable")[: int(n_lines)]
    sources, partners, weights = sources[order], partners[order], weights[order]

    fig, ax = figure_and_axes(ax, figsize or (5.5, 5.0))
    size = size if size is not None else float(np.clip(12000.0 / max(adata.n_obs, 1), 3.0, 30.0))
    other = ~(in_condition | is_control)
    if other.any():
        ax.scatter(*coords[other].T, s=size * 0.6, c=OTHER_COLOR, linewidths=0, label="other cells", zorder=1)
    ax.scatter(*coords[is_control].T, s=size, c=CONTROL_COLOR, linewidths=0, label=control, zorder=2)
    if len(weights):
        rgba = np.tile(to_rgba(LINE_COLOR), (len(weights), 1))
        rgba[:, 3] = 0.1 + 0.8 * weights / weights.max()
        segments = np.stack([coords[sources], coords[partners]], axis=1)
        ax.add_collection(LineCollection(segments, colors=rgba, linewidths=0.6, zorder=3, gid="ot_pairs"))
    ax.scatter(*coords[in_condition].T, s=size * 1.5, c=CONDITION_COLOR, linewidths=0, label=condition, zorder=4)
    name = basis[2:] if basis.startswith("X_") else basis
    prefix = "PC" if name == "pca" else name.upper()
    ax.set_xlabel(f"{prefix}1")
    ax.set_ylabel(f"{prefix}2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, frameon=False, markerscale=2.0, loc="best")
    ax.set_title(f"OT pairing: {condition}")
    return show_or_return(fig, ax, show=show, return_fig=return_fig)

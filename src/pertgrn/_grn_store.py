"""How a GRN lives in an AnnData: one writer, one reader and one edge rule, shared by models and baselines.

A GRN is recorded at one of two levels.

``"gene"``
    A graph over named nodes — every perturbation target, measured or not, and other genes —
    with a weight per ordered pair (row = regulator, column = target). Edges among measured genes
    go to ``varp[f"{key}_grn"]`` (sparse ``n_vars × n_vars``); edges with an endpoint that has no
    ``var`` row (an unmeasured target) go to the long table ``uns[key]["unmeasured_edges"]``.
    Each edge is stored once; ``uns[key]["nodes"]`` lists the nodes.
``"latent"``
    A signed DAG among latent factors, kept small in ``uns[key]["dag"]`` (``d × d``) with
    ``uns[key]["latents"]``, and a lift to genes, the long table ``uns[key]["lift"]``
    (``latent, gene, weight``: the genes that anchor each latent). The lifted graph — edge
    ``g → h`` of weight ``Σ A_ab · α_ag · α_bh`` over DAG edges ``a → b`` — is what
    ``varp[f"{key}_grn"]`` holds among measured genes.

Only edges that pass the record's stated rule are stored: an edge is kept when its strength
exceeds ``uns[key]["edge_rule"]["min_weight"]``. Strength is ``|weight|`` for signed graphs and the
weight itself for probabilities or scores (:func:`edge_strength`); the same rule selects edges in
:func:`pertgrn.get.grn_df`, the models' ``get_grn``, the plots and :func:`pertgrn.tl.evaluate`.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

Level = Literal["gene", "latent"]
LEVELS = ("gene", "latent")


def grn_varp_key(key: str) -> str:
    """``varp`` key of the GRN written under ``key``."""
    return f"{key}_grn"


# ------------------------------------------------------------------------------------------------
# the edge rule
# ------------------------------------------------------------------------------------------------
def edge_strength(weights: np.ndarray | pd.Series, signed: bool) -> np.ndarray:
    """How strong an edge is: ``|weight|`` for a signed GRN, the weight itself for probabilities or scores."""
    weights = np.asarray(weights, dtype=np.float64)
    return np.abs(weights) if signed else weights


def check_edge_selection(threshold: object, top_edges: object) -> None:
    """Validate ``threshold`` and ``top_edges`` of the edge rule (a TypeError/ValueError naming the argument)."""
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not np.isfinite(threshold)
    ):
        raise ValueError(f"`threshold` must be a finite number or None, found {threshold!r}.")
    if top_edges is not None and (
        isinstance(top_edges, bool) or not isinstance(top_edges, numbers.Integral) or top_edges < 0
    ):
        raise ValueError(f"`top_edges` must be a non-negative integer or None, found {top_edges!r}.")


def select_edges(
    edges: pd.DataFrame, *, signed: bool, threshold: float | None = None, top_edges: int | None = None
) -> pd.DataFrame:
    """Apply the edge rule to a long ``source, target, weight`` table.

    An edge is kept when its strength (:func:`edge_strength`: ``|weight|`` when ``signed``, else the
    weight) exceeds ``threshold``; then the ``top_edges`` strongest are kept. The result is sorted
    by strength, strongest first, ties by source then target, so repressive edges of a signed
    graph rank by their magnitude and are never dropped for their sign.

    Parameters
    ----------
    edges
        Long table with ``source``, ``target`` and ``weight`` columns.
    signed
        Whether weights carry a sign (activation > 0, repression < 0).
    threshold
        Keep edges whose strength exceeds it; ``None`` keeps all.
    top_edges
        Keep at most this many of the strongest edges; ``None`` keeps all.

    Returns
    -------
    The selected rows, re-indexed from 0.

    Examples
    --------
    >>> import pandas as pd
    >>> from pertgrn._grn_store import select_edges
    >>> edges = pd.DataFrame({"source": ["A", "A", "B"], "target": ["B", "C", "C"], "weight": [0.4, -0.9, 0.2]})
    >>> select_edges(edges, signed=True, threshold=0.3)["weight"].tolist()
    [-0.9, 0.4]
    """
    check_edge_selection(threshold, top_edges)
    strength = edge_strength(edges["weight"], signed)
    table = edges.assign(_strength=strength)
    if threshold is not None:
        table = table[table["_strength"] > threshold]
    table = table.sort_values(["_strength", "source", "target"], ascending=[False, True, True], kind="stable")
    if top_edges is not None:
        table = table.iloc[: int(top_edges)]
    return table.drop(columns="_strength").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------
# what a model or baseline hands to the store
# ------------------------------------------------------------------------------------------------
@dataclass
class NodeGRN:
    """A GRN over named nodes (genes or targets, measured or not): ``weights[i, j]`` is the edge ``i → j``.

    ``min_weight`` states which edges are stored (strength above it); ``signed`` says how strength is read.
    """

    nodes: Sequence[str]
    weights: np.ndarray
    signed: bool = False
    min_weight: float = 0.0
    level: Level = "gene"

    def __post_init__(self) -> None:
        self.nodes = [str(n) for n in self.nodes]
        self.weights = np.asarray(self.weights, dtype=np.float64)
        if self.weights.shape != (len(self.nodes), len(self.nodes)):
            raise ValueError(
                f"GRN weights of shape {self.weights.shape} do not match its {len(self.nodes)} nodes "
                f"(expected {len(self.nodes)} × {len(self.nodes)}, row = regulator, column = target)."
            )
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError("GRN node names must be unique.")

    def edges(self) -> pd.DataFrame:
        """Every stored edge (strength above ``min_weight``) as ``source, target, weight``."""
        strength = edge_strength(self.weights, self.signed)
        rows, cols = np.nonzero((strength > self.min_weight) & (self.weights != 0))
        nodes = np.asarray(self.nodes, dtype=object)
        return pd.DataFrame({"source": nodes[rows], "target": nodes[cols], "weight": self.weights[rows, cols]})


@dataclass
class LatentGRN:
    """A signed DAG among latent factors and its lift to genes.

    ``dag[a, b]`` is the edge ``a → b`` between latents; ``lift`` is a long ``latent, gene, weight``
    table of the genes that anchor each latent. DAG edges whose ``|weight|`` exceeds ``min_weight``
    are lifted to genes.
    """

    latents: Sequence[str]
    dag: np.ndarray
    lift: pd.DataFrame
    min_weight: float = 0.0
    signed: bool = True
    level: Level = "latent"

    def __post_init__(self) -> None:
        self.latents = [str(n) for n in self.latents]
        self.dag = np.asarray(self.dag, dtype=np.float32)
        if self.dag.shape != (len(self.latents), len(self.latents)):
            raise ValueError(
                f"The latent DAG must be {len(self.latents)} × {len(self.latents)} (latents × latents), "
                f"got {self.dag.shape}."
            )
        missing = {"latent", "gene", "weight"} - set(self.lift.columns)
        if missing:
            raise ValueError(f"The latent → gene lift needs columns latent, gene, weight; missing {sorted(missing)}.")
        unknown = sorted(set(self.lift["latent"].astype(str)) - set(self.latents))
        if unknown:
            raise ValueError(f"The lift names latents {unknown[:5]} that are not in the DAG.")
        self.lift = pd.DataFrame(
            {
                "latent": self.lift["latent"].astype(str).to_numpy(),
                "gene": self.lift["gene"].astype(str).to_numpy(),
                "weight": self.lift["weight"].to_numpy(dtype=np.float32),
            }
        )

    def dag_edges(self) -> pd.DataFrame:
        """DAG edges with ``|weight| > min_weight`` as ``source, target, weight`` (latent names)."""
        rows, cols = np.nonzero((np.abs(self.dag) > self.min_weight) & (self.dag != 0))
        latents = np.asarray(self.latents, dtype=object)
        return pd.DataFrame({"source": latents[rows], "target": latents[cols], "weight": self.dag[rows, cols]})

    def lifted(self) -> NodeGRN:
        """The DAG lifted to the anchor genes: ``w(g → h) = Σ_{a → b} A_ab · α_ag · α_bh``."""
        genes = list(dict.fromkeys(self.lift["gene"]))
        latent_index = {n: i for i, n in enumerate(self.latents)}
        gene_index = {g: j for j, g in enumerate(genes)}
        anchors = sparse.csr_matrix(
            (
                self.lift["weight"].to_numpy(dtype=np.float64),
                (self.lift["latent"].map(latent_index).to_numpy(), self.lift["gene"].map(gene_index).to_numpy()),
            ),
            shape=(len(self.latents), len(genes)),
        )
        kept = np.where(np.abs(self.dag) > self.min_weight, self.dag, 0.0)
        weights = (anchors.T @ sparse.csr_matrix(kept) @ anchors).toarray()
        return NodeGRN(nodes=genes, weights=weights, signed=True, min_weight=0.0)


GRNRecord = NodeGRN | LatentGRN


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def _split_measured(adata: AnnData, edges: pd.DataFrame) -> tuple[sparse.csr_matrix, pd.DataFrame]:
    """Edges among measured genes as an ``n_vars × n_vars`` CSR, the others as a long table."""
    rows = adata.var_names.get_indexer(edges["source"].astype(str))
    cols = adata.var_names.get_indexer(edges["target"].astype(str))
    measured = (rows >= 0) & (cols >= 0)
    matrix = sparse.csr_matrix(
        (edges["weight"].to_numpy(dtype=np.float32)[measured], (rows[measured], cols[measured])),
        shape=(adata.n_vars, adata.n_vars),
    )
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    rest = edges.loc[~measured, ["source", "target", "weight"]].reset_index(drop=True)
    rest = rest.astype({"source": str, "target": str, "weight": np.float32})
    return matrix, rest


def write_grn(
    adata: AnnData,
    *,
    key: str,
    grn: GRNRecord,
    params: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a GRN record into ``varp[f"{key}_grn"]`` and ``uns[key]`` (merging with what ``uns[key]`` holds).

    Everything is computed before anything is written. ``uns[key]`` receives ``params``, ``keys``
    (pointers to the slots written), ``level``, ``signed``, ``edge_rule``, ``version`` and the
    level's small parts (see the module docstring); entries of an earlier record under ``key``
    that belong to the other level are removed.
    """
    from pertgrn import __version__

    if isinstance(grn, LatentGRN):
        lifted = grn.lifted()
        matrix, _ = _split_measured(adata, lifted.edges())
        level_entries: dict[str, Any] = {
            "latents": list(grn.latents),
            "dag": grn.dag,
            "lift": grn.lift,
        }
    elif isinstance(grn, NodeGRN):
        matrix, unmeasured = _split_measured(adata, grn.edges())
        level_entries = {"nodes": list(grn.nodes), "unmeasured_edges": unmeasured}
    else:
        raise TypeError(f"`grn` must be a NodeGRN or LatentGRN, found {type(grn).__name__}.")
    varp_key = grn_varp_key(key)
    entry = {k: v for k, v in dict(adata.uns.get(key, {})).items() if k not in _LEVEL_ENTRIES}
    keys = dict(entry.get("keys", {}))
    keys["varp"] = varp_key
    entry.update(
        params=dict(params),
        keys=keys,
        level=grn.level,
        signed=bool(grn.signed),
        edge_rule={"min_weight": float(grn.min_weight)},
        version=__version__,
        **level_entries,
    )
    if extra:
        entry.update(extra)
    adata.varp[varp_key] = matrix
    adata.uns[key] = entry


#: entries of ``uns[key]`` that belong to one level of record (and the pre-0.1 dense ``grn``)
_LEVEL_ENTRIES = ("nodes", "unmeasured_edges", "latents", "dag", "lift", "grn")


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
def _varp_only(adata: AnnData, entry: Mapping[str, Any]) -> str | None:
    """The ``varp`` key of a record that points at a gene × gene matrix and holds nothing else."""
    keys = entry.get("keys")
    varp_key = keys.get("varp") if isinstance(keys, Mapping) else None
    return varp_key if varp_key in adata.varp else None


def _record(adata: AnnData, key: str) -> Mapping[str, Any]:
    entry = adata.uns.get(key)
    if not isinstance(entry, Mapping) or not ({"nodes", "latents", "grn"} & set(entry) or _varp_only(adata, entry)):
        found = [k for k, v in adata.uns.items() if isinstance(v, Mapping) and ({"nodes", "latents"} & set(v))]
        what = "is missing" if entry is None else "holds no GRN record"
        raise KeyError(
            f"No GRN under adata.uns[{key!r}]: the entry {what}. Fit a model with key_added={key!r} (e.g. "
            f"`pertgrn.tl.fit_gpovae`) or a baseline (`pertgrn.tl.baseline_grn`) first. Keys holding a GRN: {found}."
        )
    return entry


def grn_level(adata: AnnData, key: str) -> Level:
    """Level (``"gene"`` or ``"latent"``) of the GRN record under ``key``."""
    return "latent" if "latents" in _record(adata, key) else "gene"


def read_record(adata: AnnData, key: str) -> GRNRecord:
    """The GRN record under ``key`` as written by :func:`write_grn` (only stored edges carry weight)."""
    entry = _record(adata, key)
    rule = entry.get("edge_rule", {})
    min_weight = float(rule.get("min_weight", 0.0)) if isinstance(rule, Mapping) else 0.0
    if "latents" in entry:
        return LatentGRN(
            latents=list(entry["latents"]),
            dag=np.asarray(entry["dag"]),
            lift=pd.DataFrame(entry["lift"]),
            min_weight=min_weight,
        )
    signed = bool(entry.get("signed", False))
    if "nodes" not in entry and "grn" not in entry:  # a bare gene × gene matrix in varp
        matrix = sparse.csr_matrix(adata.varp[_varp_only(adata, entry)])
        used = np.flatnonzero(np.asarray((abs(matrix).sum(0) + abs(matrix).sum(1).T) > 0).ravel())
        weights = matrix[used][:, used].toarray()
        return NodeGRN(nodes=adata.var_names[used], weights=weights, signed=signed, min_weight=min_weight)
    nodes = [str(n) for n in entry["nodes"]]
    if "grn" in entry:  # records written before the GRN store kept edges only: signed when a weight is negative
        weights = np.asarray(entry["grn"])
        signed = bool(entry.get("signed", (weights < 0).any()))
        return NodeGRN(nodes=nodes, weights=weights, signed=signed, min_weight=min_weight)
    index = {n: i for i, n in enumerate(nodes)}
    weights = np.zeros((len(nodes), len(nodes)), dtype=np.float32)
    varp_key = entry.get("keys", {}).get("varp", grn_varp_key(key))
    if varp_key in adata.varp:
        position = adata.var_names.get_indexer(pd.Index(nodes))
        measured = np.flatnonzero(position >= 0)
        block = sparse.csr_matrix(adata.varp[varp_key])[position[measured]][:, position[measured]]
        weights[np.ix_(measured, measured)] = block.toarray()
    unmeasured = entry.get("unmeasured_edges")
    if unmeasured is not None and len(unmeasured):
        table = pd.DataFrame(unmeasured)
        rows = table["source"].astype(str).map(index).to_numpy()
        cols = table["target"].astype(str).map(index).to_numpy()
        weights[rows.astype(int), cols.astype(int)] = table["weight"].to_numpy(dtype=np.float32)
    return NodeGRN(nodes=nodes, weights=weights, signed=signed, min_weight=min_weight)


def read_grn(adata: AnnData, key: str, *, level: Level | None = None) -> NodeGRN:
    """The GRN under ``key`` as a node × node graph at ``level``.

    ``None`` reads the record at its own level: a gene-level graph, or the DAG among latents of a
    latent-level record. ``"gene"`` on a latent-level record returns its lift to genes.
    """
    if level is not None and level not in LEVELS:
        raise ValueError(f"`level` must be one of {LEVELS} or None, found {level!r}.")
    record = read_record(adata, key)
    if isinstance(record, LatentGRN):
        if level == "gene":
            return record.lifted()
        return NodeGRN(nodes=record.latents, weights=record.dag, signed=True, min_weight=record.min_weight)
    if level == "latent":
        raise ValueError(f"The GRN under {key!r} is gene-level; it has no latent DAG.")
    return record

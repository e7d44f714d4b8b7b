"""Score a fitted model or a baseline with the metrics that apply to what it wrote."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from pertgrn._constants import CONDITION_KEY
from pertgrn._design import PerturbationDesign
from pertgrn._grn_store import grn_level, read_grn
from pertgrn._utils import logger
from pertgrn.get._ate import ate_df
from pertgrn.get._grn import grn_df

ATE_METRICS = ("ate_pearson", "ate_r2", "topk_jaccard", "ate_mse", "aecd")
GRN_METRICS = ("mean_wasserstein", "false_omission_rate", "n_edges", "grn_auprc", "grn_early_precision")
#: checks of a latent-level GRN's DAG among latents
DAG_METRICS = ("dag_is_acyclic", "dag_n_edges")
#: alignment of a model's latents with reference factors (gCRL's TF-community activities)
ALIGNMENT_METRICS = ("tmex",)
METRIC_GROUPS = {"ate": ATE_METRICS, "grn": GRN_METRICS, "dag": DAG_METRICS, "alignment": ALIGNMENT_METRICS}
ALL_METRICS = (*ATE_METRICS, *GRN_METRICS, *DAG_METRICS, *ALIGNMENT_METRICS)


def _expand(metrics: Sequence[str] | str | None) -> list[str]:
    if metrics is None:
        return list(ALL_METRICS)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    out: list[str] = []
    for m in metrics:
        if m in METRIC_GROUPS:
            out += [x for x in METRIC_GROUPS[m] if x not in out]
        elif m in ALL_METRICS:
            out.append(m)
        else:
            raise ValueError(
                f"Unknown metric {m!r}; choose among the groups {list(METRIC_GROUPS)} "
                f"or the metrics {list(ALL_METRICS)}."
            )
    return out


def _truth_table(adata: AnnData, truth: pd.DataFrame | str | None) -> pd.DataFrame | None:
    """The reference GRN as a long ``source, target`` table, or ``None`` when there is none.

    ``truth`` may be a long table (``source, target[, weight]``; CollecTRI's ``tf``/``source``
    columns are accepted), or a key: ``"true_grn"`` reads the simulator's full edge list (which
    includes unmeasured nodes), any other key a gene × gene ``varp`` matrix.
    """
    if truth is None:
        return None
    if isinstance(truth, pd.DataFrame):
        table = truth.rename(columns={"tf": "source", "regulator": "source", "gene": "target"})
        missing = {"source", "target"} - set(table.columns)
        if missing:
            raise ValueError(f"`truth` must have `source` and `target` columns; missing {sorted(missing)}.")
        return table[["source", "target"]].astype(str)
    if not isinstance(truth, str):
        raise TypeError(f"`truth` must be a DataFrame, a key or None, found {type(truth).__name__}.")
    sim = adata.uns.get("simulation")
    if truth == "true_grn" and isinstance(sim, Mapping) and isinstance(sim.get("grn"), pd.DataFrame):
        return sim["grn"][["source", "target"]].astype(str)
    if truth not in adata.varp:
        return None
    matrix = sparse.coo_matrix(adata.varp[truth])
    names = adata.var_names.astype(str).to_numpy()
    keep = matrix.data != 0
    return pd.DataFrame({"source": names[matrix.row[keep]], "target": names[matrix.col[keep]]})


def _truth_matrix(nodes: list[str], truth: pd.DataFrame) -> np.ndarray:
    """Binary nodes × nodes matrix of the reference edges among ``nodes``."""
    index = {n: i for i, n in enumerate(nodes)}
    rows = truth["source"].map(index)
    cols = truth["target"].map(index)
    keep = rows.notna().to_numpy() & cols.notna().to_numpy()
    matrix = np.zeros((len(nodes), len(nodes)))
    matrix[rows[keep].astype(int), cols[keep].astype(int)] = 1.0
    return matrix


def _is_acyclic(weights: np.ndarray) -> bool:
    """Whether the graph of non-zero off-diagonal entries has a topological order (Kahn's algorithm)."""
    adjacency = (weights != 0) & ~np.eye(len(weights), dtype=bool)
    indegree = adjacency.sum(0)
    frontier = list(np.flatnonzero(indegree == 0))
    seen = 0
    while frontier:
        node = frontier.pop()
        seen += 1
        for child in np.flatnonzero(adjacency[node]):
            indegree[child] -= 1
            if indegree[child] == 0:
                frontier.append(child)
    return seen == len(weights)


def evaluate(
    adata: AnnData,
    *,
    key: str,
    metrics: Sequence[str] | str | None = None,
    test_key: str | None = None,
    perturbations: Sequence[str] | None = None,
    grn_threshold: float = 0.5,
    n_edges: int | None = None,
    truth: pd.DataFrame | str | None = "true_grn",
    k: int = 50,
    layer: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Evaluate what a model or baseline wrote under ``key`` with every metric that applies to it.

    Prediction metrics apply when ``uns[key]["ate"]`` holds predicted treatment effects (written by
    ``tl.fit_*`` and ``tl.baseline_predict(..., key_added=key)``); they compare with the effects
    observed on the held-out cells (or with ``uns[key]["ate_reference"]`` for the half-split
    reference). GRN metrics apply when ``uns[key]`` holds a GRN: CausalBench's mean Wasserstein
    distance and false omission rate on the held-out cells (negatives for the FOR are sampled among
    pairs of a perturbed source and a measured node of the graph), and, where a reference GRN is
    given (the simulator's truth, or a table such as CollecTRI), AUPRC and early precision over all
    node pairs. A latent-level GRN (a DAG among latents) is scored on its lift to genes, and its DAG
    is checked (``dag_is_acyclic``, ``dag_n_edges``). Labels are parsed with the screen's own
    control label and delimiter (``uns["pertgrn"]``). Edges are selected by pertgrn's edge rule
    (:func:`pertgrn.get.grn_df`).

    Parameters
    ----------
    adata
        Screen after :func:`pertgrn.pp.annotate_perturbations`, with a model's or baseline's output under ``key``.
    key
        The ``key_added`` of the model or baseline.
    metrics
        Metric names or groups (``"ate"``: ``ate_pearson``, ``ate_r2``, ``topk_jaccard``,
        ``ate_mse``, ``aecd`` (mean Euclidean distance between predicted and observed effect
        vectors, i.e. between centroids relative to control, in ``log2(1 + CP10k)`` units; the
        paper's AECD in the model's own space is :func:`pertgrn.tl.distribution_distances`'
        ``centroid``); ``"grn"``: ``mean_wasserstein`` (reported with ``n_edges_evaluated``, the
        number of edges it averages over), ``false_omission_rate``, ``n_edges``, ``grn_auprc``,
        ``grn_early_precision``; ``"dag"``: ``dag_is_acyclic``, ``dag_n_edges`` for latent-level
        GRNs; ``"alignment"``: ``tmex``, the mean partial correlation of a gCRL model's latents
        with their TF-community activities, ``uns[key]["alignment"]``). ``None`` computes every
        metric that applies.
    test_key
        Boolean ``obs`` column marking held-out cells; ``None`` evaluates on all cells.
    perturbations
        Restrict prediction metrics to these conditions.
    grn_threshold
        Edges whose strength exceeds this enter µWD and FOR (0.5 on probabilities is GPO-VAE's
        binary GRN), and the DAG checks of a latent-level GRN.
    n_edges
        Compare graphs at a matched size instead of a threshold (µWD grows with the number of
        edges): µWD over exactly the ``n_edges`` strongest edges that can be evaluated
        (:func:`pertgrn.metrics.mean_wasserstein_at_k`; NaN if fewer exist), FOR on the graph of
        the ``n_edges`` strongest edges.
    truth
        Reference GRN for AUPRC and early precision: a long ``source, target`` table (regulators
        need not be measured genes, e.g. CollecTRI TFs knocked out in the screen), or a key —
        ``"true_grn"`` reads the simulator's truth, any other a gene × gene ``varp`` matrix; ``None``
        (or a key that is absent) skips them.
    k
        Number of top genes in ``topk_jaccard``.
    layer
        Layer holding raw counts; ``None`` uses ``X``.
    seed
        Seed of the negatives sampled by the false omission rate.

    Returns
    -------
    DataFrame indexed by metric name with a ``value`` column; also written to ``uns[key]["metrics"]``.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> pg.tl.baseline_grn(adata, method="de")
    >>> table = pg.tl.evaluate(adata, key="baseline_de", metrics="grn", grn_threshold=1.0)
    >>> "mean_wasserstein" in table.index
    True
    """
    from pertgrn import metrics as M

    design = PerturbationDesign.from_adata(adata)
    wanted = _expand(metrics)
    entry = adata.uns.get(key)
    if not isinstance(entry, Mapping):
        raise KeyError(f"Nothing to evaluate under adata.uns[{key!r}]; fit a model or baseline with key_added={key!r}.")
    has_ate = "ate" in entry
    has_grn = bool({"nodes", "latents"} & set(entry))
    if not (has_ate or has_grn):
        raise KeyError(f"adata.uns[{key!r}] holds neither predicted effects ('ate') nor a GRN ('grn').")
    if test_key is not None:
        if test_key not in adata.obs.columns or adata.obs[test_key].dtype != bool:
            raise KeyError(f"test_key {test_key!r} must name a boolean column of adata.obs.")
        test = adata.obs[test_key].to_numpy()
    else:
        test = np.ones(adata.n_obs, dtype=bool)
        logger.warning(
            "evaluate: no `test_key`, so %r is scored on every cell, including the cells it was fitted on; "
            "hold cells out with `pertgrn.pp.split_cells` and pass `test_key=`",
            key,
        )

    values: dict[str, float] = {}
    if has_ate and any(m in ATE_METRICS for m in wanted):
        pred = entry["ate"]
        if perturbations is not None:
            pred = pred.loc[[p for p in perturbations if p in pred.index]]
        if "ate_reference" in entry:
            true = entry["ate_reference"].loc[pred.index]
        else:
            observed = ate_df(adata, layer=layer, mask=test)
            pred = pred.loc[[p for p in pred.index if p in observed.index]]
            true = observed.loc[pred.index, pred.columns]
        if len(pred) == 0:
            raise ValueError(f"No predicted perturbation of {key!r} has held-out cells to compare with.")
        if "ate_pearson" in wanted:
            values["ate_pearson"] = float(M.ate_pearson(pred, true))
        if "ate_r2" in wanted:
            values["ate_r2"] = float(M.ate_r2(pred, true))
        if "topk_jaccard" in wanted:
            values["topk_jaccard"] = float(M.topk_jaccard(pred, true, k=min(k, pred.shape[1])))
        if "ate_mse" in wanted:
            values["ate_mse"] = float(M.mse(pred.to_numpy(), true.to_numpy()))
        if "aecd" in wanted:
            values["aecd"] = float(M.aecd(pred, true))
    if "tmex" in wanted and isinstance(entry.get("alignment"), pd.DataFrame):
        values["tmex"] = float(entry["alignment"]["partial_correlation"].mean())
    if has_grn and any(m in GRN_METRICS or m in DAG_METRICS for m in wanted):
        level = grn_level(adata, key)
        # the graph: edges above the threshold, or the n_edges strongest for comparisons at matched size
        edges = grn_df(
            adata, key=key, level="gene", threshold=None if n_edges is not None else grn_threshold, top_edges=n_edges
        )
        test_adata = adata[test]
        common = {
            "perturbation_key": CONDITION_KEY,
            "control": design.control,
            "delimiter": design.delimiter,
            "layer": layer,
        }
        if "n_edges" in wanted:
            values["n_edges"] = float(len(edges))
        if "mean_wasserstein" in wanted:
            if n_edges is None:
                details = M.mean_wasserstein(test_adata, edges, return_details=True, **common)
            else:
                # µWD grows with the number of edges: rank only edges that can be evaluated, take exactly n_edges
                try:
                    details = M.mean_wasserstein_at_k(
                        test_adata, grn_df(adata, key=key, level="gene"), n_edges, return_details=True, **common
                    )
                except ValueError as err:
                    logger.warning("evaluate: µWD at %d edges is undefined for %r: %s", n_edges, key, err)
                    details = {"mean_wasserstein": np.nan, "n_edges_evaluated": 0}
            values["mean_wasserstein"] = float(details["mean_wasserstein"])
            values["n_edges_evaluated"] = float(details["n_edges_evaluated"])
        graph = read_grn(adata, key, level="gene")
        if "false_omission_rate" in wanted:
            # negatives are sampled over the graph's own universe: perturbed sources, measured nodes as targets
            measured_nodes = [n for n in graph.nodes if n in adata.var_names]
            values["false_omission_rate"] = float(
                M.false_omission_rate(test_adata, edges, seed=seed, targets=measured_nodes, **common)
            )
        reference = _truth_table(adata, truth)
        truth_matrix = None if reference is None else _truth_matrix(graph.nodes, reference)
        if truth_matrix is not None and not (truth_matrix * ~np.eye(len(graph.nodes), dtype=bool)).any():
            logger.warning("evaluate: the reference GRN has no edge among the nodes of %r; AUPRC is undefined.", key)
            values.update({m: np.nan for m in ("grn_auprc", "grn_early_precision") if m in wanted})
            truth_matrix = None
        if truth_matrix is not None:
            scores = pd.DataFrame(np.abs(graph.weights), index=graph.nodes, columns=graph.nodes)
            truth_df = pd.DataFrame(truth_matrix, index=graph.nodes, columns=graph.nodes)
            if "grn_auprc" in wanted:
                values["grn_auprc"] = float(M.grn_auprc(scores, truth_df))
            if "grn_early_precision" in wanted:
                values["grn_early_precision"] = float(M.grn_early_precision(scores, truth_df))
        if level == "latent":
            dag = grn_df(adata, key=key, level="latent", threshold=grn_threshold)
            latents = read_grn(adata, key, level="latent")
            kept = pd.DataFrame(0.0, index=latents.nodes, columns=latents.nodes)
            for source, target, weight in dag.itertuples(index=False):
                kept.loc[source, target] = weight
            if "dag_is_acyclic" in wanted:
                values["dag_is_acyclic"] = float(_is_acyclic(kept.to_numpy()))
            if "dag_n_edges" in wanted:
                values["dag_n_edges"] = float(len(dag))
    table = pd.DataFrame({"value": pd.Series(values, dtype=float)})
    table.index.name = "metric"
    entry = dict(adata.uns[key])
    entry["metrics"] = table
    adata.uns[key] = entry
    return table

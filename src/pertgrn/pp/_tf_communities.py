"""TF communities: stable Leiden partitions of the TF–TF subnetwork of a reference GRN."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from pertgrn._settings import progress
from pertgrn._utils import check_int, logger
from pertgrn.pp._reference_grn import reference_grn_record

#: The paper's resolution grid, 0.9 to 2.0 by 0.1 (12 values).
RESOLUTIONS = tuple(float(g) for g in np.round(np.arange(0.9, 2.05, 0.1), 1))
#: Communities smaller than this are logged (the paper states no size filter; spec R4).
SMALL_COMMUNITY = 3
#: Relative tolerance under which two stability scores count as tied.
SCORE_TIE_RTOL = 1e-9


def community_column(key_added: str) -> str:
    """The ``var`` column written by :func:`tf_communities` for ``key_added``."""
    return "pertgrn_tf_community" if key_added == "tf_communities" else f"pertgrn_{key_added}"


# ---- graph ---------------------------------------------------------------------------------------


def tf_tf_graph(edges: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """The GRN's TFs (sources, sorted) and its undirected TF–TF graph as ``source < target, weight``.

    The weight of a TF pair is ``|w_ab| + |w_ba|`` (an absent direction counts 0); self-loops are
    dropped.
    """
    source = edges["source"].astype(str).to_numpy()
    target = edges["target"].astype(str).to_numpy()
    tfs = sorted(set(source.tolist()))
    among = np.isin(target, tfs) & (source != target)
    a, b = source[among], target[among]
    lo, hi = np.where(a < b, a, b), np.where(a < b, b, a)
    graph = (
        pd.DataFrame({"source": lo, "target": hi, "weight": np.abs(edges["weight"].to_numpy(float)[among])})
        .groupby(["source", "target"], as_index=False, sort=True)["weight"]
        .sum()
    )
    return tfs, graph


def canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel a partition by order of first appearance (so equal partitions get equal arrays)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse]


def leiden_runs(graph, resolution: float, n_runs: int, seed: int, flavor: str = "igraph") -> np.ndarray:
    """``n_runs`` Leiden partitions (RB configuration, seeds ``seed .. seed + n_runs - 1``), canonical labels.

    ``flavor="leidenalg"`` calls ``leidenalg.find_partition`` with ``RBConfigurationVertexPartition``;
    ``"igraph"`` calls igraph's C implementation (``Graph.community_leiden`` with the modularity
    objective, which with a resolution is the same RB-configuration quality) with a private
    :class:`random.Random` per run, leaving the user's random state alone.
    """
    runs = np.empty((n_runs, graph.vcount()), dtype=np.int64)
    if flavor == "leidenalg":
        import leidenalg

        for r in range(n_runs):
            partition = leidenalg.find_partition(
                graph,
                leidenalg.RBConfigurationVertexPartition,
                weights="weight",
                resolution_parameter=resolution,
                seed=seed + r,
                n_iterations=-1,
            )
            runs[r] = canonical(np.asarray(partition.membership))
        return runs
    import random

    import igraph as ig

    try:
        for r in range(n_runs):
            ig.set_random_number_generator(random.Random(seed + r))
            partition = graph.community_leiden(
                objective_function="modularity", weights="weight", resolution=resolution, n_iterations=-1
            )
            runs[r] = canonical(np.asarray(partition.membership))
    finally:
        ig.set_random_number_generator(random)
    return runs


def unique_partitions(runs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct partitions among canonical runs: ``(partitions, counts, run → partition index)``."""
    partitions, inverse, counts = np.unique(runs, axis=0, return_inverse=True, return_counts=True)
    return partitions, counts, inverse.ravel()


def _ari(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def _vi(a: np.ndarray, b: np.ndarray) -> float:
    import igraph as ig

    return float(ig.compare_communities(a.tolist(), b.tolist(), method="vi"))


def stability(runs: np.ndarray, pairs: np.ndarray) -> tuple[float, float]:
    """Mean ARI and mean variation of information (natural log) over the given pairs of runs."""
    _, _, which = unique_partitions(runs)
    cache: dict[tuple[int, int], tuple[float, float]] = {}
    ari, vi = [], []
    for i, j in pairs:
        u, v = sorted((int(which[i]), int(which[j])))
        if (u, v) not in cache:
            cache[(u, v)] = (1.0, 0.0) if u == v else (_ari(runs[i], runs[j]), _vi(runs[i], runs[j]))
        ari.append(cache[(u, v)][0])
        vi.append(cache[(u, v)][1])
    return float(np.mean(ari)), float(np.mean(vi))


def choose_resolution(table: pd.DataFrame) -> int:
    """Row of the largest stability score; ties go to fewer communities, then to the smaller resolution."""
    score = table["score"].to_numpy(float)
    best = np.max(score)
    if np.isinf(best):
        tied = np.isinf(score)
    else:
        tied = np.abs(score - best) <= SCORE_TIE_RTOL * abs(best)
    rows = np.flatnonzero(tied)
    order = np.lexsort((table["resolution"].to_numpy()[rows], table["n_communities"].to_numpy()[rows]))
    return int(rows[order[0]])


def consensus_partition(runs: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote over runs after aligning each to the medoid run; communities numbered by size.

    The medoid is the run with the highest mean ARI to the other runs. Each run's labels are matched
    to the medoid's by the Hungarian algorithm on their contingency table (maximal overlap; labels
    left unmatched stay distinct); each TF takes its most frequent aligned label, ties going to the
    medoid's label. Communities are then numbered 0, 1, … by decreasing size, ties by their
    alphabetically first TF. Returns the labels and, per TF, the share of runs that agree.
    """
    from scipy.optimize import linear_sum_assignment

    partitions, counts, _ = unique_partitions(runs)
    n_runs = counts.sum()
    n_unique = partitions.shape[0]
    similarity = np.eye(n_unique)
    for i in range(n_unique):
        for j in range(i + 1, n_unique):
            similarity[i, j] = similarity[j, i] = _ari(partitions[i], partitions[j])
    # mean ARI of a run to the *other* runs (its own copies included, itself excluded)
    mean_to_others = (similarity @ counts - 1.0) / max(n_runs - 1, 1)
    reference = partitions[int(np.argmax(mean_to_others))]
    n_ref = reference.max() + 1
    votes: dict[int, np.ndarray] = {}
    next_label = n_ref
    for partition, count in zip(partitions, counts, strict=True):
        n_own = partition.max() + 1
        overlap = np.zeros((n_own, n_ref))
        np.add.at(overlap, (partition, reference), 1.0)
        rows, cols = linear_sum_assignment(overlap, maximize=True)
        mapping = np.full(n_own, -1, dtype=np.int64)
        mapping[rows] = cols
        for label in np.flatnonzero(mapping < 0):
            mapping[label] = next_label
            next_label += 1
        aligned = mapping[partition]
        for label in np.unique(aligned):
            votes.setdefault(int(label), np.zeros(partition.size))[aligned == label] += count
    labels_sorted = np.array(sorted(votes))
    tally = np.vstack([votes[label] for label in labels_sorted])  # labels × TFs
    top = tally.max(axis=0)
    consensus = np.empty(reference.size, dtype=np.int64)
    for node in range(reference.size):
        tied = labels_sorted[tally[:, node] == top[node]]
        consensus[node] = reference[node] if reference[node] in tied else tied.min()
    agreement = top / n_runs
    # number by decreasing size, ties by the alphabetically first member
    names = np.asarray(names, dtype=object)
    groups = np.unique(consensus)
    keys = [(-(consensus == g).sum(), min(names[consensus == g])) for g in groups]
    order = sorted(range(groups.size), key=lambda i: keys[i])
    relabel = {int(groups[i]): rank for rank, i in enumerate(order)}
    return np.array([relabel[int(g)] for g in consensus], dtype=np.int64), agreement


def cohesion_ratios(weights: np.ndarray, labels: np.ndarray, n_communities: int) -> np.ndarray:
    """``w_int / (w_int + w_bnd)`` of each community on a symmetric weight matrix with zero diagonal.

    ``w_int`` sums the weights inside the community (each undirected edge once), ``w_bnd`` the
    weights with exactly one end in it. Works on a stack of label vectors (``perms × nodes``) too.
    """
    labels = np.atleast_2d(labels)
    onehot = np.eye(n_communities)[labels]  # perms × nodes × K
    strength = weights.sum(axis=1)
    internal = 0.5 * (onehot * np.matmul(weights, onehot)).sum(axis=1)  # perms × K
    total = np.matmul(strength, onehot)  # 2 w_int + w_bnd
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(total - internal > 0, internal / (total - internal), 0.0)
    return ratio


def cohesion_test(weights: np.ndarray, labels: np.ndarray, *, n_perm: int, rng: np.random.Generator) -> dict[str, Any]:
    """Mean cohesion of the communities against random relabellings that preserve community sizes.

    ``p = (1 + #{null ≥ observed}) / (1 + n_perm)``.
    """
    k = int(labels.max()) + 1
    ratio = cohesion_ratios(weights, labels, k)[0]
    observed = float(ratio.mean())
    null = np.empty(n_perm)
    batch = 100
    for start in range(0, n_perm, batch):
        size = min(batch, n_perm - start)
        perms = np.stack([rng.permutation(labels) for _ in range(size)])
        null[start : start + size] = cohesion_ratios(weights, perms, k).mean(axis=1)
    pvalue = (1.0 + float(np.sum(null >= observed))) / (1.0 + n_perm) if n_perm else float("nan")
    return {
        "w_ratio": ratio,
        "statistic": observed,
        "null": null,
        "null_mean": float(null.mean()) if n_perm else float("nan"),
        "null_sd": float(null.std(ddof=1)) if n_perm > 1 else float("nan"),
        "pvalue": pvalue,
        "n_perm": int(n_perm),
    }


# ---- the public function -------------------------------------------------------------------------


def tf_communities(
    adata: AnnData,
    *,
    key: str = "reference_grn",
    resolutions: Sequence[float] = RESOLUTIONS,
    n_runs: int = 100,
    n_pairs: int = 200,
    n_perm: int = 1000,
    flavor: str = "igraph",
    seed: int = 0,
    key_added: str = "tf_communities",
    copy: bool = False,
) -> AnnData | None:
    """Partition the TFs of a reference GRN into communities by stable Leiden clustering (gCRL).

    1. **Graph.** The TFs are the sources of the reference GRN of :func:`pertgrn.pp.reference_grn`
       (``uns[key]``). Restricted to TF → TF edges, the GRN becomes an undirected graph whose edge
       weight is ``|w_ab| + |w_ba|``, an absent direction counting 0, without self-loops. TFs
       without a TF–TF edge are left out of the partition (community ``-1``) but stay in the TF
       list that :func:`pertgrn.pp.tf_activity` uses for the global activity.
    2. **Runs.** For each resolution γ, ``n_runs`` Leiden runs (Traag et al. 2019)
       (RB-configuration modularity ``Q_γ = Σ_ij (A_ij − γ k_i k_j / 2m) δ(c_i, c_j)`` on the weighted
       graph, iterated to convergence, seeds ``seed``, ``seed + 1``, …; see ``flavor``).
    3. **Stability.** ``n_pairs`` random pairs of runs (the same pairs for every γ) give the mean
       adjusted Rand index (ARI) and the mean variation of information (VI, natural log). The score
       is mean ARI / mean VI, infinite when every pair agrees. The chosen γ has the largest score;
       ties go to fewer communities (mean over runs), then to the smaller γ.
    4. **Consensus.** At the chosen γ, every run is aligned to the medoid run (highest mean ARI to
       the others) by Hungarian matching of their labels, and each TF takes its majority label
       (ties: the medoid's). Communities are numbered 0, 1, … by decreasing size (ties: the
       alphabetically first TF), so community 0 is the largest.
    5. **Cohesion.** Per community, ``w_ratio = w_int / (w_int + w_bnd)`` (internal weight over
       internal plus boundary weight); the mean over communities is compared with ``n_perm``
       random relabellings of the TFs that keep the community sizes,
       ``p = (1 + #{null ≥ observed}) / (1 + n_perm)``.

    The paper runs 1000 initialisations per resolution (``n_runs=1000``); the default of 100 gives
    the same choice on well-separated communities in a fraction of the time. Communities of fewer
    than 3 TFs are kept and logged as a warning; a single-TF community's activity is that TF's
    z-scored expression (:func:`pertgrn.pp.tf_activity`).

    Parameters
    ----------
    adata
        AnnData holding a reference GRN under ``uns[key]``.
    key
        The ``key_added`` of :func:`pertgrn.pp.reference_grn`.
    resolutions
        Resolutions γ to scan; default the paper's grid 0.9, 1.0, …, 2.0.
    n_runs
        Leiden runs (random initialisations) per resolution; at least 2.
    n_pairs
        Random pairs of runs for the stability score (all pairs when there are fewer).
    n_perm
        Permutations of the cohesion test; 0 skips the test.
    flavor
        Leiden implementation, as in :func:`scanpy.tl.leiden`: ``"igraph"`` (default;
        ``igraph.Graph.community_leiden`` with the modularity objective at resolution γ, the same
        RB-configuration quality, about ten times faster) or ``"leidenalg"``
        (``leidenalg.find_partition`` with ``RBConfigurationVertexPartition``, the paper's call).
        Both run until no move improves the partition (``n_iterations=-1``).
    seed
        Seed of the Leiden runs, of the pair sampling and of the permutations.
    key_added
        Key of ``adata.uns`` written; the ``var`` column is ``pertgrn_tf_community`` for the default
        key and ``pertgrn_<key_added>`` otherwise.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``; writes

    ``var["pertgrn_tf_community"]``
        ``(n_vars,)`` int64: the community (0 = largest) of each partitioned TF, ``-1`` for every
        other gene (genes that are no TF of the GRN and TFs without a TF–TF edge).
    ``uns[key_added]``
        ``communities``: DataFrame with one row per GRN TF (sorted), columns ``tf``, ``community``
        (``-1`` when not partitioned), ``strength`` (weighted TF–TF degree), ``agreement`` (share
        of runs that put the TF in its consensus community after alignment, NaN when not
        partitioned); ``graph``: the TF–TF graph as ``source``, ``target``, ``weight``
        (``source < target``); ``stability``: DataFrame, one row per resolution, columns
        ``resolution``, ``mean_ari``, ``mean_vi``, ``score``, ``n_communities`` (mean over runs),
        ``chosen``; ``resolution`` (the chosen γ), ``n_communities`` (K); ``cohesion``: ``w_ratio``
        (per community), ``statistic`` (their mean), ``null`` (the permutation means),
        ``null_mean``, ``null_sd``, ``pvalue``, ``n_perm``; ``tfs``: every GRN TF (the global
        activity's set); ``params``; ``keys`` (``{"var": column, "grn": key}``).

    Raises
    ------
    KeyError
        If ``uns[key]`` holds no reference GRN.
    TypeError, ValueError
        On bad arguments or a GRN without any edge between two TFs; ``adata`` is left untouched.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(n_tf_modules=3, seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> pg.pp.reference_grn(adata, tfs=adata.var_names[adata.var["true_tf_module"] >= 0])
    >>> pg.pp.tf_communities(adata, n_runs=10, n_perm=100)
    >>> K = adata.uns["tf_communities"]["n_communities"]
    >>> bool(K == adata.var["pertgrn_tf_community"].max() + 1)
    True
    """
    # ---- arguments
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, found {type(adata).__name__}.")
    if not isinstance(copy, bool):
        raise TypeError(f"`copy` must be True or False, found {copy!r}.")
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"`key_added` must be a non-empty string, found {key_added!r}.")
    n_runs = check_int("n_runs", n_runs, 2)
    n_pairs = check_int("n_pairs", n_pairs, 1)
    n_perm = check_int("n_perm", n_perm, 0)
    seed = check_int("seed", seed, 0)
    if flavor not in ("igraph", "leidenalg"):
        raise ValueError(f"`flavor` must be 'igraph' or 'leidenalg', found {flavor!r}.")
    if isinstance(resolutions, str | bytes) or not isinstance(resolutions, Sequence | np.ndarray):
        raise TypeError(f"`resolutions` must be a sequence of numbers, found {type(resolutions).__name__}.")
    grid = []
    for g in resolutions:
        if isinstance(g, bool) or not isinstance(g, numbers.Real) or not np.isfinite(g) or g <= 0:
            raise ValueError(f"`resolutions` must hold positive finite numbers, found {g!r}.")
        grid.append(float(g))
    if not grid:
        raise ValueError("`resolutions` is empty.")
    if len(set(grid)) < len(grid):
        raise ValueError(f"`resolutions` holds duplicates: {grid}.")
    record = reference_grn_record(adata, key)

    # ---- graph
    tfs, graph = tf_tf_graph(record["edges"])
    if graph.empty:
        raise ValueError(
            f"The reference GRN under {key!r} has {len(tfs)} TFs but no edge between two of them, so there is "
            "no TF–TF network to partition. Use more TFs, a denser prior or a looser edge filter."
        )
    nodes = sorted(set(graph["source"]) | set(graph["target"]))
    isolated = [t for t in tfs if t not in set(nodes)]
    if isolated:
        logger.info(
            "tf_communities: %d of %d TFs have no TF–TF edge and are left out of the partition: %s",
            len(isolated),
            len(tfs),
            isolated[:10],
        )
    index = {name: i for i, name in enumerate(nodes)}
    src = graph["source"].map(index).to_numpy()
    dst = graph["target"].map(index).to_numpy()
    weight = graph["weight"].to_numpy(float)

    import igraph as ig

    g = ig.Graph(n=len(nodes), edges=list(zip(src.tolist(), dst.tolist(), strict=True)), directed=False)
    g.es["weight"] = weight.tolist()
    W = np.zeros((len(nodes), len(nodes)))
    W[src, dst] = weight
    W[dst, src] = weight

    # ---- resolution scan
    rng = np.random.default_rng(seed)
    all_pairs = n_runs * (n_runs - 1) // 2
    chosen_pairs = rng.choice(all_pairs, size=min(n_pairs, all_pairs), replace=False)
    iu = np.triu_indices(n_runs, k=1)
    pairs = np.column_stack([iu[0][chosen_pairs], iu[1][chosen_pairs]])
    rows, runs_by_resolution = [], []
    for gamma in progress(grid, desc="tf_communities", unit="resolution"):
        runs = leiden_runs(g, gamma, n_runs, seed, flavor)
        mean_ari, mean_vi = stability(runs, pairs)
        score = np.inf if mean_vi == 0 else mean_ari / mean_vi
        rows.append(
            {
                "resolution": gamma,
                "mean_ari": mean_ari,
                "mean_vi": mean_vi,
                "score": score,
                "n_communities": float((runs.max(axis=1) + 1).mean()),
            }
        )
        runs_by_resolution.append(runs)
    table = pd.DataFrame(rows)
    best = choose_resolution(table)
    table["chosen"] = np.arange(len(table)) == best
    resolution = float(table["resolution"].iloc[best])

    # ---- consensus and cohesion
    labels, agreement = consensus_partition(runs_by_resolution[best], nodes)
    n_communities = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=n_communities)
    small = np.flatnonzero(sizes < SMALL_COMMUNITY)
    if small.size:
        logger.warning(
            "tf_communities: %d of %d communities have fewer than %d TFs (communities %s, sizes %s); they are kept, "
            "and a single-TF community's activity is that TF's z-scored expression.",
            small.size,
            n_communities,
            SMALL_COMMUNITY,
            small.tolist(),
            sizes[small].tolist(),
        )
    cohesion = cohesion_test(W, labels, n_perm=n_perm, rng=rng)
    logger.info(
        "tf_communities: resolution %.2g, %d communities of sizes %s; mean cohesion %.3f (permutation p = %.3g)",
        resolution,
        n_communities,
        sizes.tolist(),
        cohesion["statistic"],
        cohesion["pvalue"],
    )

    community_of = dict(zip(nodes, labels.tolist(), strict=True))
    agreement_of = dict(zip(nodes, agreement.tolist(), strict=True))
    strength_of = dict(zip(nodes, W.sum(axis=1).tolist(), strict=True))
    communities = pd.DataFrame(
        {
            "tf": np.asarray(tfs, dtype=object),
            "community": np.array([community_of.get(t, -1) for t in tfs], dtype=np.int64),
            "strength": np.array([strength_of.get(t, 0.0) for t in tfs], dtype=np.float64),
            "agreement": np.array([agreement_of.get(t, np.nan) for t in tfs], dtype=np.float64),
        }
    )
    column = community_column(key_added)
    var_labels = np.array([community_of.get(str(v), -1) for v in adata.var_names], dtype=np.int64)
    result: dict[str, Any] = {
        "communities": communities,
        "graph": graph.astype({"source": object, "target": object}),
        "stability": table,
        "resolution": resolution,
        "n_communities": n_communities,
        "cohesion": cohesion,
        "tfs": list(tfs),
        "params": {
            "key": key,
            "resolutions": np.asarray(grid, dtype=np.float64),
            "n_runs": n_runs,
            "n_pairs": int(pairs.shape[0]),
            "n_perm": n_perm,
            "flavor": flavor,
            "seed": seed,
        },
        "keys": {"var": column, "grn": key},
    }

    # ---- write
    out = adata.copy() if copy else adata
    out.var[column] = var_labels
    out.uns[key_added] = result
    return out if copy else None

"""Honest baselines: what a model has to beat before its GRN or its predictions mean anything."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from pertgrn._constants import CONDITION_KEY, EXTENDED_KEY
from pertgrn._design import PerturbationDesign
from pertgrn._grn_store import NodeGRN, write_grn
from pertgrn._utils import (
    check_counts,
    did_you_mean,
    get_design,
    log_normalize,
    to_dense,
    unknown_names_message,
)
from pertgrn.get._ate import ate_df

GRN_METHODS = ("de", "correlation", "random")
PREDICT_METHODS = ("control", "mean_shift", "additive", "half_split")


def grn_nodes(adata: AnnData) -> list[str]:
    """The nodes of a pertgrn GRN: every target (measured or not), then the extended genes in ``var`` order."""
    design = get_design(adata)
    targets = list(design["targets"])
    extended = []
    if EXTENDED_KEY in adata.var.columns:
        taken = set(targets)
        extended = [g for g in adata.var_names[adata.var[EXTENDED_KEY].to_numpy(bool)] if g not in taken]
    return targets + extended


def _test_mask(adata: AnnData, test_key: str | None) -> np.ndarray:
    if test_key is None:
        return np.zeros(adata.n_obs, dtype=bool)
    if test_key not in adata.obs.columns:
        raise KeyError(
            f"test_key {test_key!r} not found in adata.obs.{did_you_mean([test_key], adata.obs.columns)} "
            f"Available: {list(adata.obs.columns)}."
        )
    mask = adata.obs[test_key].to_numpy()
    if mask.dtype != bool:
        raise TypeError(f"adata.obs[{test_key!r}] must be boolean (True = held-out cell), got dtype {mask.dtype}.")
    return mask


def _de_scores(adata: AnnData, nodes: list[str], layer: str | None, cells: np.ndarray) -> np.ndarray:
    ate = ate_df(adata, layer=layer, mask=cells).abs()
    scores = np.zeros((len(nodes), len(nodes)))
    col = {g: j for j, g in enumerate(nodes) if g in ate.columns}
    cols_nodes = list(col)
    for i, regulator in enumerate(nodes):
        if regulator in ate.index:
            scores[i, [col[g] for g in cols_nodes]] = ate.loc[regulator, cols_nodes].to_numpy()
    np.fill_diagonal(scores, 0.0)
    return scores


def _correlation_scores(adata: AnnData, nodes: list[str], layer: str | None, cells: np.ndarray) -> np.ndarray:
    design = get_design(adata)
    controls = (adata.obs[CONDITION_KEY] == design["control"]).to_numpy() & cells
    measured = [g for g in nodes if g in adata.var_names]
    X = to_dense(log_normalize(check_counts(adata, layer)[controls][:, adata.var_names.get_indexer(measured)]))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.abs(np.nan_to_num(np.corrcoef(X, rowvar=False)))
    scores = np.zeros((len(nodes), len(nodes)))
    idx = [nodes.index(g) for g in measured]
    scores[np.ix_(idx, idx)] = corr
    np.fill_diagonal(scores, 0.0)
    return scores


def _random_scores(n_nodes: int, n_edges: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    off_diagonal = np.flatnonzero(~np.eye(n_nodes, dtype=bool))
    chosen = rng.choice(off_diagonal, size=n_edges, replace=False)
    scores = np.zeros(n_nodes * n_nodes)
    scores[chosen] = rng.uniform(0.5, 1.0, size=n_edges)
    return scores.reshape(n_nodes, n_nodes)


def _random_halves(conditions: np.ndarray, cells: np.ndarray, seed: int) -> np.ndarray:
    """Boolean mask putting a random half (rounded down) of each condition's selected cells in the first half."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"condition": conditions[cells], "key": rng.random(int(cells.sum()))})
    rank = frame.groupby("condition", observed=True)["key"].rank(method="first").to_numpy()
    size = frame.groupby("condition", observed=True)["key"].transform("size").to_numpy()
    half = np.zeros(len(conditions), dtype=bool)
    half[np.flatnonzero(cells)] = rank <= size // 2
    return half


def baseline_grn(
    adata: AnnData,
    *,
    method: str = "de",
    key_added: str | None = None,
    n_edges: int | None = None,
    test_key: str | None = None,
    layer: str | None = None,
    seed: int = 0,
) -> None:
    """Score a GRN by a baseline, written in the same format as the models' GRNs.

    Nodes are those of the models: every perturbation target (measured or not) followed by the
    extended genes. Scores are not probabilities; they only rank edges.

    - ``"de"``: edge A → B scored by the observed absolute average treatment effect of A's single
      perturbation on B (:func:`pertgrn.get.ate_df`). The plain differential-expression reading of
      a screen, and the baseline a learned GRN must beat on perturbation data.
    - ``"correlation"``: absolute Pearson correlation of log-normalised expression among control cells
      (symmetric: it cannot orient edges).
    - ``"random"``: ``n_edges`` edges drawn uniformly among ordered pairs of distinct nodes, with
      random weights; the null a metric has to separate from.

    Parameters
    ----------
    adata
        Screen after :func:`pertgrn.pp.annotate_perturbations` (and usually
        :func:`pertgrn.pp.select_extended_genes`), raw counts in ``X`` or ``layer``.
    method
        One of ``"de"``, ``"correlation"``, ``"random"``.
    key_added
        Key under which the GRN is written; defaults to ``"baseline_<method>"``.
    n_edges
        Number of edges of the ``"random"`` graph (required there, ignored otherwise).
    test_key
        Boolean ``obs`` column marking held-out cells (True); the scores use the other cells only,
        so that evaluating on the held-out cells (:func:`pertgrn.tl.evaluate`) does not reward a
        graph for having seen them.
    layer
        Layer holding raw counts; ``None`` uses ``X``.
    seed
        Seed of the ``"random"`` graph.

    Returns
    -------
    Nothing; writes, like the models,

    ``varp["<key_added>_grn"]``
        Sparse n_vars × n_vars scores among measured nodes, row = regulator, column = target.
    ``uns["<key_added>"]``
        ``params``, ``nodes`` (all nodes, measured or not), ``grn`` (nodes × nodes scores) and
        ``keys`` pointing at the ``varp`` entry. :func:`pertgrn.get.grn_df` reads it.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> pg.tl.baseline_grn(adata, method="de")
    >>> pg.get.grn_df(adata, key="baseline_de").columns.tolist()
    ['source', 'target', 'weight']
    """
    if method not in GRN_METHODS:
        raise ValueError(f"Unknown GRN baseline {method!r}; choose one of {GRN_METHODS}.")
    nodes = grn_nodes(adata)
    train = ~_test_mask(adata, test_key)
    if method == "random":
        max_edges = len(nodes) * (len(nodes) - 1)
        if n_edges is None or not 0 <= int(n_edges) <= max_edges:
            raise ValueError(f"The random baseline needs `n_edges` between 0 and {max_edges}; got {n_edges!r}.")
        scores = _random_scores(len(nodes), int(n_edges), seed)
    elif method == "de":
        scores = _de_scores(adata, nodes, layer, train)
    else:
        scores = _correlation_scores(adata, nodes, layer, train)
    key_added = key_added or f"baseline_{method}"
    params = {"method": method, "seed": int(seed), "test_key": test_key or ""}
    if n_edges is not None:
        params["n_edges"] = int(n_edges)
    write_grn(adata, key=key_added, grn=NodeGRN(nodes=nodes, weights=scores, signed=False), params=params)


def baseline_predict(
    adata: AnnData,
    *,
    method: str,
    perturbations: Sequence[str] | None = None,
    test_key: str | None = None,
    layer: str | None = None,
    key_added: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Predict average treatment effects with a baseline, in the units of the models' ``get_ate``.

    - ``"control"``: every effect is zero (the control profile is the prediction) — the worst case.
    - ``"mean_shift"``: the effect observed on the training cells of the same perturbation.
    - ``"additive"``: a combination ``A+B`` is predicted as the sum of the training effects of
      ``A`` and ``B``; singles as in ``"mean_shift"``. The standard reference for combinations.
    - ``"half_split"``: the held-out cells of each perturbation (and the held-out controls) are
      split at random into two halves of equal size; the effect in one half predicts the other. It measures the
      noise no model can remove; the other half is stored as ``ate_reference`` so that
      :func:`pertgrn.tl.evaluate` compares against it rather than against cells it has seen.

    Parameters
    ----------
    adata
        Screen after :func:`pertgrn.pp.annotate_perturbations`, raw counts in ``X`` or ``layer``.
    method
        One of ``"control"``, ``"mean_shift"``, ``"additive"``, ``"half_split"``.
    perturbations
        Canonical condition labels to predict; ``None`` predicts every condition with held-out
        cells (or every condition when ``test_key`` is ``None``).
    test_key
        Boolean ``obs`` column marking held-out cells (True). Training effects use the other cells.
    layer
        Layer holding raw counts; ``None`` uses ``X``.
    key_added
        If given, write ``uns[key_added]`` with ``params``, ``ate`` (the returned table) and, for
        ``"half_split"``, ``ate_reference``.
    seed
        Seed of the ``"half_split"`` halves.

    Returns
    -------
    DataFrame perturbation × gene of predicted average treatment effects (log2(1 + CP10k),
    control subtracted).

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> pred = pg.tl.baseline_predict(adata, method="mean_shift")
    >>> pred.shape[1] == adata.n_vars
    True
    """
    if method not in PREDICT_METHODS:
        raise ValueError(f"Unknown prediction baseline {method!r}; choose one of {PREDICT_METHODS}.")
    design = get_design(adata)
    control = design["control"]
    test = _test_mask(adata, test_key)
    train = ~test if test_key is not None else np.ones(adata.n_obs, dtype=bool)
    held_out = test if test_key is not None else np.ones(adata.n_obs, dtype=bool)
    if perturbations is None:
        present = pd.Series(adata.obs[CONDITION_KEY].to_numpy()[held_out]).value_counts()
        perturbations = [c for c in adata.obs[CONDITION_KEY].cat.categories if c != control and present.get(c, 0) > 0]
    perturbations = [perturbations] if isinstance(perturbations, str) else list(perturbations)
    # every target must be known (a combination need not have been measured: the additive baseline predicts it)
    known_targets = [str(t) for t in design["targets"]]
    parser = PerturbationDesign.from_adata(adata)
    unknown = sorted({t for p in perturbations for t in parser.split(p)} - set(known_targets))
    if unknown:
        raise KeyError(
            unknown_names_message(unknown, known_targets, what="Targets", problem="are not targets of this screen")
        )
    reference = None
    if method == "control":
        pred = pd.DataFrame(0.0, index=perturbations, columns=adata.var_names)
    elif method == "half_split":
        half = _random_halves(adata.obs[CONDITION_KEY].to_numpy(), held_out, seed)
        pred = ate_df(adata, layer=layer, mask=held_out & half, perturbations=perturbations)
        reference = ate_df(adata, layer=layer, mask=held_out & ~half, perturbations=perturbations)
    else:
        train_ate = ate_df(adata, layer=layer, mask=train)
        rows = []
        for p in perturbations:
            if method == "mean_shift":
                if p not in train_ate.index:
                    raise KeyError(f"{p!r} has no training cells; the mean_shift baseline cannot predict it.")
                rows.append(train_ate.loc[p].to_numpy())
                continue
            parts = PerturbationDesign.from_adata(adata).split(p)
            missing = [t for t in parts if t not in train_ate.index]
            if missing:
                raise KeyError(f"The additive baseline needs training cells of the singles {missing} to predict {p!r}.")
            rows.append(train_ate.loc[parts].sum(axis=0).to_numpy())
        pred = pd.DataFrame(
            np.vstack(rows) if rows else np.zeros((0, adata.n_vars)), index=perturbations, columns=adata.var_names
        )
    pred.index.name = "perturbation"
    if key_added is not None:
        entry = {"params": {"method": method, "seed": int(seed), "test_key": test_key or ""}, "ate": pred}
        if reference is not None:
            entry["ate_reference"] = reference
        adata.uns[key_added] = entry
    return pred

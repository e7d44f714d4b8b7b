"""Reverse perturbation prediction (RAPTORGraph appendix D.5): which double produced an observed profile?"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import pandas as pd
from anndata import AnnData

from pertgrn._design import PerturbationDesign
from pertgrn._utils import logger
from pertgrn.get._ate import ate_df
from pertgrn.metrics import reverse_perturbation_hit_rate
from pertgrn.tl._interactions import predicted_effects

if TYPE_CHECKING:
    from pertgrn.models._base import PerturbationModel

#: genes of the candidate database when none are given (the paper's subset has 20)
DEFAULT_N_GENES = 20


def default_genes(doubles: Sequence[str], design: PerturbationDesign, allowed: set[str], n: int) -> list[str]:
    """The ``n`` allowed targets with the most observed doubles among allowed targets (ties alphabetical)."""
    pairs = [design.split(d) for d in doubles]
    pairs = [p for p in pairs if len(p) == 2 and set(p) <= allowed]
    counts = pd.Series([t for p in pairs for t in p], dtype=object).value_counts()
    ranked = sorted(counts.index, key=lambda t: (-counts[t], t))
    return ranked[:n]


def reverse_perturbation(
    adata: AnnData,
    *,
    key: str = "raptorgraph",
    genes: Sequence[str] | None = None,
    model: PerturbationModel | None = None,
    k: int | Iterable[int] = (1, 3, 5),
    metric: str = "euclidean",
    layer: str | None = None,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Correct and relevant hit rate@k of reverse perturbation prediction among the doubles of a gene set.

    Following RAPTORGraph's appendix D.5 (after scGPT): a database holds a predicted profile for
    every unordered pair of ``genes``; each observed double of two ``genes`` is a query, ranked
    against the database by Euclidean distance. *Correct* hit@k: the true double is among the
    ``k`` nearest; *relevant* hit@k: one of the ``k`` nearest shares a gene with it
    (:func:`pertgrn.metrics.reverse_perturbation_hit_rate`). Relevant ≥ correct.

    Profiles are treatment effects (``log2(1 + CP10k)`` means minus the control mean): observed
    from every cell of ``adata``, predicted as the model's prediction minus its own prediction for
    control from the same basal states (the paper feeds the mean control profile to the model and
    compares absolute profiles; the difference cancels decoder bias and does not change the
    question).

    Parameters
    ----------
    adata
        The screen (raw counts in ``X`` or ``layer``).
    key
        ``key_added`` of the model; without ``model``, the database is the predicted effects of
        the observed doubles stored in ``uns[key]["ate"]``.
    genes
        The gene subset; ``None``: the 20 targets (the paper's size) with the most observed
        doubles among themselves, ties alphabetical, among the targets the model can predict.
    model
        A trained model; the database then holds every pair of ``genes``
        (:meth:`~pertgrn.models.RaptorGraph.get_ate`), including pairs never observed.
    k
        One cut-off or several.
    metric
        Distance or similarity of :func:`pertgrn.metrics.reverse_perturbation_hit_rate` (paper: ``"euclidean"``).
    layer
        Layer holding the counts; ``None`` uses ``X``.
    key_added
        ``uns`` key written; ``None`` uses ``"<key>_reverse_perturbation"``.

    Returns
    -------
    :class:`pandas.DataFrame` indexed by ``k`` with columns ``correct`` and ``relevant``. Also
    writes ``uns[key_added]``: ``hit_rate`` (that table, ``k`` as strings), ``genes``, ``queries`` (the observed
    doubles), ``n_candidates``.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(n_perturbed=6, n_doubles=8, n_control=100, cells_per_condition=40)
    >>> pg.pp.annotate_perturbations(adata)
    >>> adata.uns["oracle"] = {"ate": pg.get.ate_df(adata)}  # predictions equal to the observations
    >>> pg.tl.reverse_perturbation(adata, key="oracle", k=[1, 3])["correct"].tolist()
    [1.0, 1.0]
    """
    ks = [k] if isinstance(k, numbers.Integral) and not isinstance(k, bool) else list(k)
    if not ks or any(isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 1 for x in ks):
        raise ValueError(f"`k` must be a positive integer or a list of them, found {k!r}.")
    design = PerturbationDesign.from_adata(adata)
    observed = ate_df(adata, layer=layer)
    observed_doubles = [c for c in observed.index if design.n_targets(c) == 2]
    if model is not None:
        allowed = set(model.predictable_targets)
    else:
        stored = predicted_effects(adata, key)
        allowed = {t for c in stored.index if design.n_targets(c) == 2 for t in design.split(c)}
    if genes is None:
        genes = default_genes(observed_doubles, design, allowed, DEFAULT_N_GENES)
    genes = list(dict.fromkeys(str(g) for g in genes))
    unknown = sorted(set(genes) - allowed)
    if unknown:
        raise ValueError(f"Genes {unknown} are not targets the predictions cover; choose among {sorted(allowed)[:10]}.")
    if len(genes) < 2:
        raise ValueError(f"Need at least 2 genes to form doubles, found {genes}.")
    gene_set = set(genes)
    queries = [d for d in observed_doubles if set(design.split(d)) <= gene_set]
    if not queries:
        raise ValueError(f"No observed double has both its targets among {genes}.")
    if model is not None:
        pairs = [design.delimiter.join(p) for p in itertools.combinations(genes, 2)]
        candidates = model.get_ate(pairs)
    else:
        candidates = stored.loc[
            [c for c in stored.index if design.n_targets(c) == 2 and set(design.split(c)) <= gene_set]
        ]
        logger.info(
            "reverse_perturbation: without a model the database is the %d stored doubles, not all pairs of %d genes.",
            len(candidates),
            len(genes),
        )
    if max(ks) > len(candidates):
        raise ValueError(f"k = {max(ks)} exceeds the {len(candidates)} candidates in the database.")
    common = dict(k=ks, metric=metric, delimiter=design.delimiter)
    query_profiles = observed.loc[queries]
    table = pd.DataFrame(
        {
            "correct": reverse_perturbation_hit_rate(query_profiles, candidates, mode="correct", **common),
            "relevant": reverse_perturbation_hit_rate(query_profiles, candidates, mode="relevant", **common),
        }
    )
    table.index.name = "k"
    stored_table = table.copy()
    stored_table.index = stored_table.index.astype(str)  # h5ad stores string indices
    adata.uns[key_added or f"{key}_reverse_perturbation"] = {
        "hit_rate": stored_table,
        "genes": genes,
        "queries": list(queries),
        "n_candidates": int(len(candidates)),
    }
    return table

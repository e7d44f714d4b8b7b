"""Genetic interactions of double perturbations: observed against predicted, precision@k per interaction type."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import pandas as pd
from anndata import AnnData

from pertgrn._design import PerturbationDesign
from pertgrn._utils import logger
from pertgrn.get._ate import ate_df
from pertgrn.metrics import additive_interaction_scores, interaction_precision_at_k, interaction_scores

DEFINITIONS = ("additive", "gears")


def predicted_effects(adata: AnnData, key: str) -> pd.DataFrame:
    """The predicted effects ``uns[key]["ate"]`` (conditions × genes), or a KeyError saying what writes them."""
    entry = adata.uns.get(key)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("ate"), pd.DataFrame):
        raise KeyError(
            f"adata.uns[{key!r}] holds no predicted effects ('ate'). Fit a model with key_added={key!r} "
            "(e.g. `pertgrn.tl.fit_raptorgraph`) or a baseline (`pertgrn.tl.baseline_predict(..., key_added=...)`)."
        )
    return entry["ate"]


def genetic_interactions(
    adata: AnnData,
    *,
    key: str = "raptorgraph",
    doubles: Sequence[str] | None = None,
    definition: str = "additive",
    layer: str | None = None,
    k: int = 10,
    quantile: float = 0.25,
    key_added: str | None = None,
) -> pd.Series:
    """Genetic-interaction scores of observed and predicted doubles, and the precision@k of each interaction type.

    Effects are treatment effects in ``log2(1 + CP10k)`` (mean of the condition's cells minus the
    control mean): observed ones from every cell of ``adata`` (:func:`pertgrn.get.ate_df`),
    predicted ones from ``uns[key]["ate"]`` (written by ``tl.fit_*``: the model's prediction
    minus its own prediction for control from the same basal states, so decoder bias cancels).
    For every double ``A+B`` observed in ``adata`` and predicted under ``key``, with both singles
    observed and predicted, the scores are computed from ``(δA, δB, δAB)`` for the observed and for
    the predicted effects:

    - ``definition="additive"`` (default): RAPTORGraph's scores against the naive additive
      reference ``δA + δB`` (appendix D.4; :func:`pertgrn.metrics.additive_interaction_scores`):
      synergy ratio, neomorphism, redundancy, epistasis (suppression: the low synergy ratios);
    - ``definition="gears"``: GEARS' regression-based scores (:func:`pertgrn.metrics.interaction_scores`).

    Precision@k (:func:`pertgrn.metrics.interaction_precision_at_k`): for each type, the doubles
    whose observed score is in the top ``quantile`` (bottom for suppression) are its true
    members; precision@k is the fraction of them among the ``k`` doubles with the highest
    predicted score (lowest for suppression). A random ranking scores about ``quantile``.

    Parameters
    ----------
    adata
        The screen (raw counts in ``X`` or ``layer``) holding predicted effects under ``uns[key]``.
    key
        ``key_added`` of the model (or baseline) whose ``uns[key]["ate"]`` holds the predictions.
    doubles
        Doubles to score; ``None``: every double that can be scored.
    definition
        ``"additive"`` (RAPTORGraph) or ``"gears"`` (GEARS / Norman et al.).
    layer
        Layer holding the counts; ``None`` uses ``X``.
    k
        Number of top-ranked doubles per type; lowered (and logged) to the number of doubles when
        fewer are scored.
    quantile
        Fraction of doubles, by observed score, that are a type's true members.
    key_added
        ``uns`` key written; ``None`` uses ``"<key>_interactions"``.

    Returns
    -------
    :class:`pandas.Series` of precision@k indexed by interaction type. Also writes
    ``uns[key_added]``: ``observed`` and ``predicted`` (DataFrames doubles × scores),
    ``precision`` (DataFrame type × ``precision``), ``params`` (``key``, ``definition``, ``k``
    used, ``quantile``, ``n_doubles``).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(n_perturbed=6, n_doubles=8, n_control=100, cells_per_condition=40)
    >>> pg.pp.annotate_perturbations(adata)
    >>> observed = pg.get.ate_df(adata)
    >>> adata.uns["oracle"] = {"ate": observed}  # predictions equal to the observations
    >>> precision = pg.tl.genetic_interactions(adata, key="oracle", k=2)  # top 25 % of 8 doubles: 2 per type
    >>> precision.tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    if definition not in DEFINITIONS:
        raise ValueError(f"`definition` must be one of {DEFINITIONS}, found {definition!r}.")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"`k` must be a positive integer, found {k!r}.")
    if not 0 < quantile < 1:
        raise ValueError(f"`quantile` must lie in (0, 1), found {quantile!r}.")
    predicted = predicted_effects(adata, key)
    design = PerturbationDesign.from_adata(adata)
    observed = ate_df(adata, layer=layer)
    genes = predicted.columns.intersection(observed.columns)
    if len(genes) < 3:
        raise ValueError(f"Observed and predicted effects share {len(genes)} genes; at least 3 are needed.")

    def scorable(label: str) -> bool:
        parts = design.split(label)
        return len(parts) == 2 and all(p in observed.index and p in predicted.index for p in [*parts, label])

    candidates = [c for c in observed.index if design.n_targets(c) == 2]
    if doubles is None:
        doubles = [c for c in candidates if scorable(c)]
        dropped = sorted(set(candidates) - set(doubles))
        if dropped:
            logger.info("genetic_interactions: %d observed doubles cannot be scored: %s", len(dropped), dropped[:10])
    else:
        doubles = [str(d) for d in doubles]
        bad = [d for d in doubles if not scorable(d)]
        if bad:
            raise ValueError(
                f"Doubles {bad} cannot be scored: each needs observed and predicted effects of itself and its singles."
            )
    if len(doubles) < 2:
        raise ValueError(f"At least 2 scorable doubles are needed for precision@k, found {len(doubles)}.")

    def tables(effects: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        firsts = [design.split(d)[0] for d in doubles]
        seconds = [design.split(d)[1] for d in doubles]
        index = pd.Index(doubles, name="double")
        a = effects.loc[firsts, genes].set_axis(index, axis=0)
        b = effects.loc[seconds, genes].set_axis(index, axis=0)
        return a, b, effects.loc[doubles, genes].set_axis(index, axis=0)

    score = additive_interaction_scores if definition == "additive" else interaction_scores
    observed_scores = score(*tables(observed))
    predicted_scores = score(*tables(predicted))
    k_used = int(min(k, len(doubles)))
    if k_used < k:
        logger.info("genetic_interactions: only %d doubles; precision@%d computed instead of @%d.", k_used, k_used, k)
    precision = interaction_precision_at_k(predicted_scores, observed_scores, k=k_used, quantile=quantile)
    adata.uns[key_added or f"{key}_interactions"] = {
        "observed": observed_scores,
        "predicted": predicted_scores,
        "precision": precision.to_frame("precision"),
        "params": {
            "key": key,
            "definition": definition,
            "k": k_used,
            "quantile": float(quantile),
            "n_doubles": len(doubles),
        },
    }
    return precision

"""Distribution-level scores of a model's predictions for held-out conditions, next to three baselines."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from pertgrn._constants import CONDITION_KEY
from pertgrn._design import PerturbationDesign
from pertgrn._utils import check_counts, library_size, log_normalize, logger, to_dense
from pertgrn.metrics import mk_mmd

if TYPE_CHECKING:
    from pertgrn.models._base import PerturbationModel

METHODS = ("model", "control", "additive", "half_split")


def _held_out_mask(adata: AnnData, test_key: str) -> np.ndarray:
    if not isinstance(test_key, str) or test_key not in adata.obs.columns:
        raise KeyError(f"`test_key` {test_key!r} is not a column of adata.obs; available: {list(adata.obs.columns)}.")
    values = adata.obs[test_key]
    if not pd.api.types.is_bool_dtype(values):
        raise TypeError(f"adata.obs[{test_key!r}] must be boolean (True = held-out cell), found {values.dtype}.")
    return values.to_numpy(dtype=bool)


def distribution_distances(
    adata: AnnData,
    *,
    model: PerturbationModel,
    test_key: str,
    perturbations: Sequence[str] | None = None,
    layer: str | None = None,
    target_sum: float | None = None,
    kernel_num: int = 10,
    fix_sigma: float = 200.0,
    min_cells: int = 4,
    sample: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """MK-MMD and centroid distance of predicted cells of held-out conditions, next to control, additive and half-split.

    For every held-out condition ``q`` (e.g. a double perturbation never trained on), its held-out
    cells are split at random into two halves; the second half ``Y_q`` is the reference, and each
    method supplies as many cells as ``Y_q`` has, in log-normalised expression
    ``log1p(counts / library · T)``:

    ``model``
        The model's predicted cells (basal states from its training controls): its expectation in
        log-normalised units (``predict_log_normalized``: the papers' protocol, the decoder's
        output), or counts drawn around it with ``sample=True`` (:meth:`predict`), which adds the
        counting noise observed cells have.
    ``control``
        Random training control cells: no effect at all, the worst case.
    ``additive``
        The same control cells shifted by the sum of the training effects (mean log-normalised
        expression minus the control mean) of the condition's single perturbations: the standard
        reference for combinations.
    ``half_split``
        The first half of ``q``'s held-out cells: the noise floor no model can go below.

    Parameters
    ----------
    adata
        The screen the model was trained on (raw counts in ``X`` or ``layer``), with ``test_key``.
    model
        A trained pertgrn model (:class:`~pertgrn.models.RaptorGraph`, :class:`~pertgrn.models.GPOVAE`).
    test_key
        Bool ``obs`` column of the held-out cells.
    perturbations
        Conditions to score; ``None``: every held-out condition with at least ``2 · min_cells``
        held-out cells whose targets the model can predict and whose singles have training cells.
    layer
        Layer holding the counts; ``None`` uses the layer the model was set up with.
    target_sum
        ``T``; ``None`` uses the model's (RaptorGraph: the median library size of its training
        cells), else the median library size of the training cells.
    kernel_num
        Number of kernels of :func:`pertgrn.metrics.mk_mmd` (RAPTORGraph trains with 10).
    fix_sigma
        Central bandwidth of :func:`pertgrn.metrics.mk_mmd` (RAPTORGraph trains with 200).
    min_cells
        Smallest half of held-out cells scored.
    sample
        Score counts drawn around the model's expectation (Poisson for RAPTORGraph) instead of
        the expectation itself.
    seed
        Seed of the halves, the control cells and the model's draws.

    Returns
    -------
    :class:`pandas.DataFrame` indexed by condition, with columns ``(metric, method)``: metrics
    ``mk_mmd`` (squared MK-MMD, V-statistic) and ``centroid`` (Euclidean distance between mean
    profiles), methods ``model``, ``control``, ``additive``, ``half_split``; plus ``("n_cells", "")``,
    the size of the reference half. Lower is better.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(n_genes=60, n_regulators=6, n_perturbed=4, n_doubles=2,
    ...                              n_unmeasured_targets=1, n_control=80, cells_per_condition=30)
    >>> pg.pp.annotate_perturbations(adata)
    >>> adata.obs["test"] = (adata.obs["pertgrn_n_targets"] > 1).to_numpy()
    >>> pg.pp.ot_pairing(adata)
    >>> model = pg.tl.fit_raptorgraph(adata, test_key="test", max_epochs=2,
    ...                               model_kwargs={"decoder_n_hidden": 32},
    ...                               train_kwargs={"enable_progress_bar": False})
    >>> scores = pg.tl.distribution_distances(adata, model=model, test_key="test")
    >>> scores["mk_mmd"].columns.tolist()
    ['model', 'control', 'additive', 'half_split']
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, found {type(adata).__name__}.")
    if not hasattr(model, "predict") or not hasattr(model, "predictable_targets"):
        raise TypeError(f"`model` must be a trained pertgrn model, found {type(model).__name__}.")
    for name, value in (("kernel_num", kernel_num), ("min_cells", min_cells)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, found {value!r}.")
    held_out = _held_out_mask(adata, test_key)
    design = PerturbationDesign.from_adata(adata)
    if layer is None:
        layer = model.registry["setup_args"].get("layer")
    counts = check_counts(adata, layer)
    train = ~held_out
    if target_sum is None:
        module_sum = getattr(getattr(model, "module", None), "target_sum", None)
        if module_sum is not None:
            target_sum = float(module_sum)
        else:
            size = library_size(counts[train])
            target_sum = float(np.median(size[size > 0]))
    expression = to_dense(log_normalize(counts, target_sum=target_sum)).astype(np.float64)
    conditions = adata.obs[CONDITION_KEY].astype(str).to_numpy()
    is_control = conditions == design.control
    controls = np.flatnonzero(is_control & train)
    if controls.size == 0:
        raise ValueError("There are no training control cells to build the control and additive baselines from.")
    control_mean = expression[controls].mean(axis=0)
    trained_singles = {c for c in np.unique(conditions[train & ~is_control]) if design.is_single(c)}
    learned = set(model.predictable_targets)

    def scorable(label: str) -> bool:
        targets = design.split(label)
        return bool(targets) and set(targets) <= learned and set(targets) <= trained_singles

    if perturbations is None:
        counts_held = pd.Series(conditions[held_out & ~is_control]).value_counts()
        perturbations = [c for c, n in counts_held.items() if n >= 2 * min_cells and scorable(c)]
        perturbations = sorted(perturbations)
        skipped = sorted(set(counts_held.index) - set(perturbations))
        if skipped:
            logger.info("distribution_distances: %d held-out conditions not scored: %s", len(skipped), skipped[:10])
    perturbations = [str(p) for p in perturbations]
    bad = [p for p in perturbations if not scorable(p)]
    if bad:
        raise ValueError(
            f"Cannot score {bad}: every target must have single-perturbation training cells the model learned from."
        )
    if not perturbations:
        raise ValueError("No held-out condition to score (see `perturbations`, `test_key` and `min_cells`).")

    single_effect = {
        t: expression[np.flatnonzero(train & (conditions == t))].mean(axis=0) - control_mean
        for t in {t for p in perturbations for t in design.split(p)}
    }
    rng = np.random.default_rng(seed)
    rows = []
    for i, label in enumerate(perturbations):
        cells = rng.permutation(np.flatnonzero(held_out & (conditions == label)))
        half = cells.size // 2
        if half < min_cells:
            raise ValueError(f"{label!r} has {cells.size} held-out cells; at least {2 * min_cells} are needed.")
        first, reference = cells[:half], cells[half:]
        n = reference.size
        chosen = rng.choice(controls, size=n, replace=n > controls.size)
        control_cells = expression[chosen]
        additive = control_cells + sum(single_effect[t] for t in design.split(label))
        if sample:
            predicted = model.predict(
                perturbations=[label], n_cells=n, library_size=target_sum, sample=True, seed=seed + i
            )
            model_cells = np.log1p(np.asarray(predicted.X, dtype=np.float64))
        else:  # the model's expectation in log-normalised units (its decoder's output where it works in them)
            predicted = model.predict_log_normalized(
                perturbations=[label], n_cells=n, target_sum=target_sum, seed=seed + i
            )
            model_cells = np.asarray(predicted.X, dtype=np.float64)
        samples = {
            "model": model_cells,
            "control": control_cells,
            "additive": additive,
            "half_split": expression[first],
        }
        observed = expression[reference]
        row = {("n_cells", ""): n}
        for method, cells_of_method in samples.items():
            row[("mk_mmd", method)] = mk_mmd(cells_of_method, observed, fix_sigma=fix_sigma, kernel_num=int(kernel_num))
            row[("centroid", method)] = float(np.linalg.norm(cells_of_method.mean(axis=0) - observed.mean(axis=0)))
        rows.append(row)
    table = pd.DataFrame(rows, index=pd.Index(perturbations, name="perturbation"))
    columns = [("mk_mmd", m) for m in METHODS] + [("centroid", m) for m in METHODS] + [("n_cells", "")]
    return table[columns].set_axis(pd.MultiIndex.from_tuples(columns), axis=1)

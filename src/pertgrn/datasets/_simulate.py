"""A Perturb-seq screen simulator with a known, nonlinear gene regulatory network."""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from pertgrn._utils import check_int, logger

#: Measured genes that are not part of the GRN; they carry the usual QC signals.
MT_GENES = ("MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3", "MT-ND3")
RIBO_GENES = ("RPL3", "RPL4", "RPL5", "RPS3", "RPS6", "RPS8")
HB_GENES = ("HBA1", "HBB")
QC_GENES = MT_GENES + RIBO_GENES + HB_GENES

#: Share of a healthy cell's expected counts that go to mitochondrial / ribosomal / haemoglobin genes.
_MT_SHARE = 0.04
_RIBO_SHARE = 0.10
_HB_SHARE = 0.002

CONTROL_LABEL = "control"

#: Basal expression of GRN nodes: log-normal with this log-sd, clipped to +- _BASAL_LOG_CLIP.
_BASAL_LOG_SD = 1.2
_BASAL_LOG_CLIP = 3.0
#: Median library size per measured gene (median library size = _COUNTS_PER_GENE * n_genes).
_COUNTS_PER_GENE = 20.0
_LIBRARY_LOG_SD = 0.35

#: Regulator modules (``n_tf_modules > 0``): probability that a regulator has one parent in another
#: module, share of activating regulator -> regulator edges, standard deviation of a module's per-cell
#: activity and of each regulator's own per-cell noise (both on the sigmoid's input scale).
_CROSS_MODULE_PROB = 0.2
_MODULE_ACTIVATION_PROB = 0.8
_MODULE_ACTIVITY_SD = 1.0
_TF_NOISE_SD = 0.5


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number in [0, 1), found {type(value).__name__} ({value!r}).")
    if not (0.0 <= float(value) < 1.0):
        raise ValueError(f"`{name}` must lie in [0, 1), found {value}.")
    return float(value)


def _sample_dag(
    rng: np.random.Generator, n_nodes: int, n_regulators: int, n_modules: int = 0, module_density: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random DAG on positions ``0..n_nodes-1`` in topological order; regulators are ``0..n_regulators-1``.

    Every regulator gets at least one child among the targets (positions ``>= n_regulators``),
    targets have in-degree at most 3. Without modules (``n_modules == 0``), regulators have at most
    2 parents among earlier regulators. With modules, regulators are split at random into
    ``n_modules`` groups of near-equal size (module 0 the largest); each earlier regulator of the same
    module is a parent with probability ``module_density`` and each regulator has, with probability
    :data:`_CROSS_MODULE_PROB`, one parent among the earlier regulators of other modules.
    Returns ``(parent, child, weight, module)`` arrays: the edges and the module of each regulator
    (all ``-1`` without modules).
    """
    n_targets = n_nodes - n_regulators
    parents: list[list[int]] = [[] for _ in range(n_nodes)]
    module = np.full(n_regulators, -1, dtype=np.int64)
    if n_modules:
        for k, members in enumerate(np.array_split(rng.permutation(n_regulators), n_modules)):
            module[members] = k
        for q in range(1, n_regulators):
            earlier = np.arange(q)
            same = earlier[module[:q] == module[q]]
            other = earlier[module[:q] != module[q]]
            chosen = same[rng.random(same.size) < module_density].tolist()
            if other.size and rng.random() < _CROSS_MODULE_PROB:
                chosen.append(int(rng.choice(other)))
            parents[q] = sorted(chosen)
    else:
        # regulator hierarchy: each regulator may be regulated by up to two earlier regulators
        for p in range(1, n_regulators):
            d = min(int(rng.choice(3, p=[0.5, 0.35, 0.15])), p)
            parents[p] = sorted(rng.choice(p, size=d, replace=False).tolist())
    # one anchor target per regulator (distinct targets), so every regulator has a measured child
    anchors = rng.choice(n_targets, size=n_regulators, replace=False) + n_regulators
    for reg, tgt in enumerate(anchors):
        parents[int(tgt)].append(reg)
    # sparse extra in-edges for the targets
    in_degree = rng.choice(4, size=n_targets, p=[0.25, 0.35, 0.25, 0.15])
    for t, d in zip(range(n_regulators, n_nodes), in_degree, strict=True):
        extra = int(d) - len(parents[t])
        if extra <= 0:
            continue
        pool = np.setdiff1d(np.arange(n_regulators), parents[t])
        parents[t].extend(rng.choice(pool, size=min(extra, pool.size), replace=False).tolist())
        parents[t].sort()
    child = np.array([c for c in range(n_nodes) for _ in parents[c]], dtype=np.int64)
    parent = np.array([p for c in range(n_nodes) for p in parents[c]], dtype=np.int64)
    # signed weights: 60 % activation, 40 % repression, |w| in [1, 2.5]
    sign = np.where(rng.random(parent.size) < 0.6, 1.0, -1.0)
    weight = sign * rng.uniform(1.0, 2.5, size=parent.size)
    if n_modules:
        # regulator -> regulator edges: mostly activating, |w| in [1, 2.5] shared out over the parents
        among = child < n_regulators
        n_parents = np.bincount(child[among], minlength=n_regulators)[child[among]]
        sign = np.where(rng.random(int(among.sum())) < _MODULE_ACTIVATION_PROB, 1.0, -1.0)
        weight[among] = sign * rng.uniform(1.0, 2.5, size=int(among.sum())) / n_parents
    return parent, child, weight, module


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _steady_state(
    knocked_down: np.ndarray,
    parent: np.ndarray,
    child: np.ndarray,
    weight: np.ndarray,
    threshold: np.ndarray,
    knockdown_strength: float,
    drive: np.ndarray | None = None,
) -> np.ndarray:
    """Expression of every node relative to control (rows × nodes), nodes in topological order.

    ``drive`` (rows × ``m``) is an extra input to the sigmoid of the first ``m`` nodes (the
    regulators' module activity plus their own noise); ``None`` means none.
    """
    n_conditions, n_nodes = knocked_down.shape
    n_driven = 0 if drive is None else drive.shape[1]
    ratio = np.ones((n_conditions, n_nodes))
    order = np.argsort(child, kind="stable")
    parent, child, weight = parent[order], child[order], weight[order]
    starts = np.searchsorted(child, np.arange(n_nodes + 1))
    remaining = np.where(knocked_down, 1.0 - knockdown_strength, 1.0)
    for j in range(n_nodes):  # positions are a topological order: parents precede children
        lo, hi = starts[j], starts[j + 1]
        if hi > lo or j < n_driven:
            activity = (ratio[:, parent[lo:hi]] - 1.0) @ weight[lo:hi]
            if j < n_driven:
                activity = activity + drive[:, j]
            ratio[:, j] = _sigmoid(threshold[j] + activity) / _sigmoid(threshold[j])
        ratio[:, j] *= remaining[:, j]
    return ratio


def simulate(
    *,
    n_genes: int = 200,
    n_regulators: int = 20,
    n_perturbed: int = 12,
    n_doubles: int = 4,
    n_control: int = 400,
    cells_per_condition: int = 80,
    n_unmeasured_targets: int = 2,
    knockdown_strength: float = 0.85,
    qc_fail_fraction: float = 0.05,
    n_tf_modules: int = 0,
    tf_module_density: float = 0.5,
    seed: int = 0,
) -> AnnData:
    """Simulate a Perturb-seq screen whose gene regulatory network is known.

    The generative model, in the order it is sampled from ``numpy.random.default_rng(seed)``:

    1. **Genes.** ``n_genes`` measured genes: :data:`QC_GENES` (8 ``MT-`` genes, 3 ``RPL`` and
       3 ``RPS`` genes, ``HBA1`` and ``HBB``; not part of the GRN) and ``n_genes - 16`` GRN genes.
       The GRN also holds ``n_unmeasured_targets`` nodes without an expression column. GRN nodes are
       named ``G000``, ``G001``, … (zero-padded to at least 3 digits) in random order, so unmeasured
       nodes take names that are absent from ``var_names``.
    2. **GRN.** A random DAG. ``n_regulators`` nodes are regulators (the only nodes with out-edges);
       they come first in a topological order. Each regulator has up to 2 parents among earlier
       regulators, each target has up to 3 regulator parents, and every regulator has at least one
       child among the targets (which are all measured). Edge weights ``w_ij`` are signed
       (60 % activation, 40 % repression) with ``|w_ij|`` uniform in [1, 2.5].
    3. **Structural model.** Node ``j`` has basal (control) expression ``b_j``, log-normal with
       log-sd 1.2 clipped to ±3 (regulators at least the median), and an operating point
       ``theta_j ~ U(-1.5, 0)``. Evaluated in topological order, its expression relative to
       control is the sigmoid (Hill-type) response to the weighted activity of its parents,

       ``r_j = sigmoid(theta_j + sum_i w_ij (r_i - 1)) / sigmoid(theta_j)``,

       so ``r_j = 1`` exactly in control cells and for every gene that does not descend from a
       perturbed gene. A knockdown of gene ``g`` multiplies ``r_g`` by ``1 - knockdown_strength``
       and propagates to the descendants of ``g``; a double knocks down both genes. Activators
       (``w > 0``) that are knocked down lower their targets, repressors raise them.
    4. **Conditions.** ``n_perturbed`` regulators are perturbed singly; ``n_unmeasured_targets`` of
       them are unmeasured nodes (as CRISPRa targets often are). ``n_doubles`` distinct pairs of them
       are perturbed together. Control gets ``n_control`` cells, every other condition
       ``cells_per_condition`` cells; cells are shuffled.
    5. **Counts.** Cell ``c`` has a library size ``L_c`` (log-normal, median ``20 * n_genes``,
       log-sd 0.35). Its expected count of measured gene ``g`` is ``L_c p_g r_g``, where ``p_g`` is the
       control proportion of ``g``: ``MT-`` genes hold about 4 % of the counts (times a per-cell
       log-normal factor, log-sd 0.15), ribosomal genes 10 %, ``HB`` genes 0.2 %, and GRN genes the rest
       in proportion to ``b_g``. Counts are negative-binomial with a per-gene
       inverse dispersion ``phi_g`` log-uniform in [2, 20].
    6. **Regulator modules** (only when ``n_tf_modules > 0``; with the default 0 nothing below is
       drawn and the screen is the one described above, bit for bit). The regulators are split at
       random into ``n_tf_modules`` planted modules of near-equal size (module 0 the largest), and
       the regulator hierarchy of step 2 is replaced by dense intra-module regulation: each earlier
       regulator of the same module is a parent with probability ``tf_module_density``, and a
       regulator has, with probability 0.2, one parent in another module. Regulator → regulator
       weights are activating with probability 0.8, with ``|w|`` uniform in [1, 2.5] divided by the
       regulator's number of regulator parents (so dense modules do not saturate the sigmoid).
       Cells then vary within a condition: cell ``c`` has a module activity ``a_cm ~ N(0, 1)`` for
       each module and each regulator ``j`` an own noise ``e_cj ~ N(0, 0.5²)``, added to its sigmoid's
       input, ``r_j = sigmoid(theta_j + a_c,m(j) + e_cj + sum_i w_ij (r_i - 1)) / sigmoid(theta_j)``;
       this variation propagates to the targets through the GRN, in control cells too, which is
       what lets a GRN be inferred from unperturbed cells. ``true_lfc`` stays the noise-free
       effect at zero module activity and noise.
    7. **QC artefacts.** ``round(qc_fail_fraction * n_cells)`` cells, drawn uniformly over all
       conditions including control, are damaged: their non-mitochondrial expression is scaled by
       ``U(0.05, 0.2)``, each non-mitochondrial count is dropped (set to zero) with probability 0.5, and
       ``MT-`` genes take a fraction ``U(0.25, 0.6)`` of the cell's expected counts. They are flagged in
       ``obs["true_qc_fail"]``.

    The noise-free log fold change of condition ``k`` and measured gene ``g`` is ``log2 r_g(k)``:
    the log ratio of expected counts per unit library size, i.e. of expected normalised expression.
    It is exactly 0 for genes that do not descend from a perturbed gene.

    Parameters
    ----------
    n_genes
        Number of measured genes (columns of ``X``), including the 16 QC genes.
    n_regulators
        Number of GRN nodes with out-edges, including the unmeasured targets.
    n_perturbed
        Number of regulators knocked down singly.
    n_doubles
        Number of double knockdowns, distinct pairs of the single targets.
    n_control
        Number of control cells.
    cells_per_condition
        Number of cells in each perturbed condition.
    n_unmeasured_targets
        Number of perturbed regulators that have no expression column.
    knockdown_strength
        Fraction of the target's expression removed by a knockdown, in [0, 1).
    qc_fail_fraction
        Fraction of cells that are damaged (QC artefacts), in [0, 1).
    n_tf_modules
        Number of planted regulator modules (step 6); 0 (default) plants none.
    tf_module_density
        Probability, in (0, 1], that an earlier regulator of the same module regulates a regulator.
    seed
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same data.

    Returns
    -------
    AnnData of ``n_cells = n_control + (n_perturbed + n_doubles) * cells_per_condition`` cells ×
    ``n_genes`` genes with

    ``X``
        Raw counts, :class:`scipy.sparse.csr_matrix` of dtype float32 holding integers.
    ``obs["perturbation"]``
        Categorical condition: ``"control"``, ``"G012"`` or ``"G012+G034"`` (sorted targets joined by
        ``+``); categories ordered control, singles, doubles.
    ``obs["true_qc_fail"]``
        Bool, the cell is a damaged-cell artefact.
    ``obs["true_library_size"]``
        Float, the expected non-mitochondrial count scale ``L_c`` of the cell (after damage for
        artefacts); equal to the expected total counts of a healthy control cell.
    ``varp["true_grn"]``
        :class:`scipy.sparse.csr_matrix` (n_genes × n_genes), row = regulator, column = target,
        value = signed weight ``w_ij``; edges touching unmeasured nodes are absent.
    ``uns["simulation"]["parameters"]``
        Dict of the arguments and of the model constants (ints and floats).
    ``uns["simulation"]["grn"]``
        :class:`pandas.DataFrame` with columns ``source``, ``target``, ``weight``: every edge, over all
        nodes including unmeasured targets (decoupler's network format).
    ``uns["simulation"]["true_lfc"]``
        :class:`pandas.DataFrame`, perturbed conditions (rows, in category order) × measured genes
        (columns, ``var_names`` order), noise-free log2 fold change versus control.
    ``uns["simulation"]["perturbed_genes"]``
        Sorted list of the ``n_perturbed`` single targets (str).
    ``uns["simulation"]["unmeasured_targets"]``
        Sorted list of the perturbed targets that are not in ``var_names`` (str).

    With ``n_tf_modules > 0`` also

    ``var["true_tf_module"]``
        Int64, the planted module (``0..n_tf_modules-1``) of each measured regulator; ``-1`` for
        every other gene.
    ``obsm["true_tf_module_activity"]``
        ``(n_cells, n_tf_modules)`` float64, the module activities ``a_cm`` of each cell.
    ``uns["simulation"]["tf_modules"]``
        :class:`pandas.DataFrame` with columns ``tf`` (every regulator, unmeasured ones included),
        ``module`` (int) and ``measured`` (bool), sorted by module then name.

    Examples
    --------
    >>> import pertgrn
    >>> adata = pertgrn.datasets.simulate(seed=1)
    >>> adata.shape
    (1680, 200)
    >>> adata.obs["perturbation"].cat.categories[0]
    'control'
    >>> len(adata.obs["perturbation"].cat.categories)
    17
    >>> adata.varp["true_grn"].shape
    (200, 200)
    >>> set(adata.uns["simulation"]["grn"].columns) == {"source", "target", "weight"}
    True
    >>> modular = pertgrn.datasets.simulate(n_tf_modules=3, seed=1)
    >>> sorted(set(modular.var["true_tf_module"]))
    [-1, 0, 1, 2]
    >>> modular.obsm["true_tf_module_activity"].shape
    (1680, 3)
    """
    # ---- validation -------------------------------------------------------------------------
    n_genes = check_int("n_genes", n_genes, 0)
    n_regulators = check_int("n_regulators", n_regulators, 1)
    n_perturbed = check_int("n_perturbed", n_perturbed, 0)
    n_doubles = check_int("n_doubles", n_doubles, 0)
    n_control = check_int("n_control", n_control, 1)
    cells_per_condition = check_int("cells_per_condition", cells_per_condition, 1)
    n_unmeasured_targets = check_int("n_unmeasured_targets", n_unmeasured_targets, 0)
    n_tf_modules = check_int("n_tf_modules", n_tf_modules, 0)
    if isinstance(tf_module_density, bool) or not isinstance(tf_module_density, numbers.Real):
        raise TypeError(
            f"`tf_module_density` must be a number in (0, 1], found {type(tf_module_density).__name__} "
            f"({tf_module_density!r})."
        )
    if not (0.0 < float(tf_module_density) <= 1.0):
        raise ValueError(f"`tf_module_density` must lie in (0, 1], found {tf_module_density}.")
    tf_module_density = float(tf_module_density)
    seed = check_int("seed", seed, 0)
    knockdown_strength = _check_fraction("knockdown_strength", knockdown_strength)
    qc_fail_fraction = _check_fraction("qc_fail_fraction", qc_fail_fraction)
    if n_perturbed > n_regulators:
        raise ValueError(
            f"`n_perturbed` ({n_perturbed}) exceeds the number of eligible regulators "
            f"(`n_regulators` = {n_regulators}); every perturbed gene must be a regulator."
        )
    n_pairs = n_perturbed * (n_perturbed - 1) // 2
    if n_doubles > n_pairs:
        raise ValueError(
            f"`n_doubles` ({n_doubles}) exceeds the {n_pairs} distinct pairs of the {n_perturbed} perturbed genes."
        )
    if n_unmeasured_targets > n_perturbed:
        raise ValueError(
            f"`n_unmeasured_targets` ({n_unmeasured_targets}) exceeds `n_perturbed` ({n_perturbed}); "
            "unmeasured targets are chosen among the perturbed genes."
        )
    if n_tf_modules and n_regulators < 2 * n_tf_modules:
        raise ValueError(
            f"`n_tf_modules` ({n_tf_modules}) needs at least 2 regulators per module, "
            f"found `n_regulators` = {n_regulators}."
        )
    n_measured_regulators = n_regulators - n_unmeasured_targets
    min_genes = len(QC_GENES) + n_measured_regulators + n_regulators
    if n_genes < min_genes:
        raise ValueError(
            f"`n_genes` must be at least {min_genes} (the {len(QC_GENES)} QC genes, the {n_measured_regulators} "
            f"measured regulators and at least as many targets as the {n_regulators} regulators), found {n_genes}."
        )

    rng = np.random.default_rng(seed)
    median_library_size = _COUNTS_PER_GENE * n_genes
    library_log_sd = _LIBRARY_LOG_SD

    # ---- GRN over nodes in topological order (regulators first) ------------------------------
    n_grn_measured = n_genes - len(QC_GENES)
    n_nodes = n_grn_measured + n_unmeasured_targets
    parent, child, weight, module = _sample_dag(rng, n_nodes, n_regulators, n_tf_modules, tf_module_density)
    perturbed_pos = np.sort(rng.choice(n_regulators, size=n_perturbed, replace=False))
    unmeasured_pos = np.sort(rng.choice(perturbed_pos, size=n_unmeasured_targets, replace=False))
    width = max(3, len(str(n_nodes - 1)))
    names = np.array([f"G{i:0{width}d}" for i in rng.permutation(n_nodes)], dtype=object)
    measured = np.ones(n_nodes, dtype=bool)
    measured[unmeasured_pos] = False

    # ---- node parameters ---------------------------------------------------------------------
    log_basal = np.clip(rng.normal(0.0, _BASAL_LOG_SD, size=n_nodes), -_BASAL_LOG_CLIP, _BASAL_LOG_CLIP)
    log_basal[:n_regulators] = np.maximum(log_basal[:n_regulators], 0.0)  # regulators: at least median expression
    basal = np.exp(log_basal)
    threshold = rng.uniform(-1.5, 0.0, size=n_nodes)
    dispersion = np.exp(rng.uniform(np.log(2.0), np.log(20.0), size=n_genes))

    # measured genes: GRN genes sorted by name, then the QC genes; control proportions p_g
    grn_cols = np.flatnonzero(measured)[np.argsort(names[measured])]
    var_names = np.concatenate([names[grn_cols], np.array(QC_GENES, dtype=object)])
    is_mt = np.isin(var_names, MT_GENES)
    proportion = np.empty(n_genes)
    proportion[:n_grn_measured] = basal[grn_cols] / basal[grn_cols].sum() * (1 - _MT_SHARE - _RIBO_SHARE - _HB_SHARE)
    qc_part = {
        MT_GENES: _MT_SHARE * rng.dirichlet(np.full(len(MT_GENES), 5.0)),
        RIBO_GENES: _RIBO_SHARE * rng.dirichlet(np.full(len(RIBO_GENES), 5.0)),
        HB_GENES: _HB_SHARE * rng.dirichlet(np.full(len(HB_GENES), 5.0)),
    }
    proportion[n_grn_measured:] = np.concatenate([qc_part[MT_GENES], qc_part[RIBO_GENES], qc_part[HB_GENES]])

    # ---- conditions and their noise-free expression ------------------------------------------
    singles = sorted(names[perturbed_pos].tolist())
    pair_index = rng.choice(n_pairs, size=n_doubles, replace=False) if n_doubles else np.array([], dtype=int)
    all_pairs = [(a, b) for i, a in enumerate(singles) for b in singles[i + 1 :]]
    doubles = sorted(f"{all_pairs[k][0]}+{all_pairs[k][1]}" for k in pair_index)
    conditions = [CONTROL_LABEL, *singles, *doubles]
    position = {name: i for i, name in enumerate(names)}
    knocked_down = np.zeros((len(conditions), n_nodes), dtype=bool)
    for k, cond in enumerate(conditions[1:], start=1):
        for target in cond.split("+"):
            knocked_down[k, position[target]] = True
    ratio_nodes = _steady_state(knocked_down, parent, child, weight, threshold, knockdown_strength)
    ratio = np.ones((len(conditions), n_genes))
    ratio[:, :n_grn_measured] = ratio_nodes[:, grn_cols]

    # ---- cells -------------------------------------------------------------------------------
    sizes = np.array([n_control] + [cells_per_condition] * (len(conditions) - 1))
    code = rng.permutation(np.repeat(np.arange(len(conditions)), sizes))
    n_cells = code.size
    if n_tf_modules:
        # per-cell module activity and regulator noise, propagated through the GRN cell by cell
        module_activity = rng.normal(0.0, _MODULE_ACTIVITY_SD, size=(n_cells, n_tf_modules))
        drive = module_activity[:, module] + rng.normal(0.0, _TF_NOISE_SD, size=(n_cells, n_regulators))
        cell_nodes = _steady_state(knocked_down[code], parent, child, weight, threshold, knockdown_strength, drive)
        cell_ratio = np.ones((n_cells, n_genes))
        cell_ratio[:, :n_grn_measured] = cell_nodes[:, grn_cols]
        del cell_nodes, drive
    else:
        cell_ratio = ratio[code]
    library = median_library_size * np.exp(rng.normal(0.0, library_log_sd, size=n_cells))
    n_fail = int(round(qc_fail_fraction * n_cells))
    qc_fail = np.zeros(n_cells, dtype=bool)
    qc_fail[rng.choice(n_cells, size=n_fail, replace=False)] = True

    # healthy cells: MT share varies a little per cell; damaged cells: little cytoplasmic RNA, much MT
    mean = cell_ratio * proportion  # cells × genes, per unit library size
    mean[:, is_mt] *= np.exp(rng.normal(0.0, 0.15, size=(n_cells, 1)))
    damage = rng.uniform(0.05, 0.2, size=n_fail)
    library[qc_fail] *= damage
    mt_fraction = rng.uniform(0.25, 0.6, size=n_fail)
    dropout = 0.5
    non_mt = mean[qc_fail][:, ~is_mt].sum(axis=1) * (1 - dropout)
    mt_target = mt_fraction / (1 - mt_fraction) * non_mt
    mt_block = mean[np.ix_(qc_fail, is_mt)]
    mean[np.ix_(qc_fail, is_mt)] = mt_block * (mt_target / mt_block.sum(axis=1))[:, None]
    mean *= library[:, None]

    counts = rng.negative_binomial(dispersion, dispersion / (dispersion + mean))
    dropped = rng.random((n_fail, n_genes)) < dropout
    dropped[:, is_mt] = False
    counts[qc_fail] = np.where(dropped, 0, counts[qc_fail])

    # ---- assemble ----------------------------------------------------------------------------
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical.from_codes(code, categories=conditions),
            "true_qc_fail": qc_fail,
            "true_library_size": library,
        },
        index=pd.Index([f"cell{i:05d}" for i in range(n_cells)]),
    )
    adata = AnnData(
        X=sparse.csr_matrix(counts.astype(np.float32)),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(var_names.astype(str))),
    )

    order = np.lexsort((names[child], names[parent]))
    grn = pd.DataFrame(
        {
            "source": names[parent][order].astype(str),
            "target": names[child][order].astype(str),
            "weight": weight[order],
        }
    )
    gene_index = {g: i for i, g in enumerate(var_names)}
    keep = measured[parent] & measured[child]
    rows = np.array([gene_index[n] for n in names[parent[keep]]], dtype=np.int64)
    cols = np.array([gene_index[n] for n in names[child[keep]]], dtype=np.int64)
    adata.varp["true_grn"] = sparse.csr_matrix((weight[keep], (rows, cols)), shape=(n_genes, n_genes))

    true_lfc = pd.DataFrame(np.log2(ratio[1:]), index=pd.Index(conditions[1:]), columns=pd.Index(var_names.astype(str)))
    adata.uns["simulation"] = {
        "parameters": {
            "n_genes": n_genes,
            "n_regulators": n_regulators,
            "n_perturbed": n_perturbed,
            "n_doubles": n_doubles,
            "n_control": n_control,
            "cells_per_condition": cells_per_condition,
            "n_unmeasured_targets": n_unmeasured_targets,
            "knockdown_strength": knockdown_strength,
            "qc_fail_fraction": qc_fail_fraction,
            "seed": seed,
            "median_library_size": median_library_size,
            "library_log_sd": library_log_sd,
            "qc_dropout": dropout,
            "mt_share": _MT_SHARE,
            "basal_log_sd": _BASAL_LOG_SD,
            "n_tf_modules": n_tf_modules,
            "tf_module_density": tf_module_density,
            "tf_module_activity_sd": _MODULE_ACTIVITY_SD,
            "tf_noise_sd": _TF_NOISE_SD,
        },
        "grn": grn,
        "true_lfc": true_lfc,
        "perturbed_genes": singles,
        "unmeasured_targets": sorted(names[unmeasured_pos].astype(str).tolist()),
    }
    if n_tf_modules:
        regulator_module = dict(zip(names[:n_regulators].tolist(), module.tolist(), strict=True))
        adata.var["true_tf_module"] = np.array([regulator_module.get(g, -1) for g in var_names], dtype=np.int64)
        adata.obsm["true_tf_module_activity"] = module_activity
        modules = pd.DataFrame(
            {"tf": names[:n_regulators].astype(str), "module": module, "measured": measured[:n_regulators]}
        )
        adata.uns["simulation"]["tf_modules"] = modules.sort_values(["module", "tf"]).reset_index(drop=True)
    logger.info(
        "simulated %d cells × %d genes: %d conditions, %d GRN edges, %d damaged cells",
        n_cells,
        n_genes,
        len(conditions),
        len(grn),
        n_fail,
    )
    return adata

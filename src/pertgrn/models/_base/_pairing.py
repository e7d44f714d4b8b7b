"""Two kinds of cells per step: a data loader that puts each cell's control partners in its minibatch.

In the shape of scvi-tools' contrastiveVI loaders, but driven by the OT plan: every minibatch of
cells carries the counts of the control partners named by the partner field (see
:mod:`pertgrn.models._base._fields`), so a module can compare a perturbed cell with its paired
controls without anything dense being stored in the AnnData. Partners shared by cells of a batch
are read once.

Keys added to each minibatch (``B`` cells, ``k`` partner slots):

``partner_x``
    ``B × k × C`` counts of each cell's partners (``C`` = all genes, or the columns the model
    asked for); zeros in empty slots.
``partner_library``
    ``B × k`` total counts of each partner over all genes (for normalisation); 0 in empty slots.

``partner_<registry key>``
    ``B × k × …`` rows of further registered per-cell fields of each partner, for the registry
    keys a model asks for (``partner_keys``; e.g. its controls' TF-community activities); zeros
    in empty slots.

``partner_weight`` (``B × k``, 0 in empty slots) comes from the registry with the indices.
Every tensor keeps the cells on its first axis, as Lightning expects of a batch.

Two options serve models whose losses compare a condition's cells as a population (MMD):

- ``group_by_condition=True``: every minibatch holds cells of **one** condition
  (:class:`ConditionBatchSampler`), in a new random order every epoch, as the discrepancy-VAE and
  SENA samplers do; under data-parallel training each process takes its share of the batches
  (:class:`DistributedConditionBatchSampler`);
- ``random_partners=True``: each perturbed cell gets one control partner drawn uniformly (with
  replacement) from the *training* controls every time its minibatch is loaded, instead of its
  OT partners: the random-pairing baseline the OT papers compare against.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager
from scvi.data._utils import registry_key_to_default_dtype
from scvi.dataloaders import AnnDataLoader, DataSplitter
from torch.utils.data import Sampler, default_convert
from torch.utils.data.distributed import DistributedSampler

from pertgrn.models._base._fields import CONDITION_REGISTRY_KEY, DESIGN_KEY, PARTNER_INDEX_KEY, PARTNER_WEIGHT_KEY

PARTNER_X_KEY = "partner_x"
PARTNER_LIBRARY_KEY = "partner_library"


# ------------------------------------------------------------------------------------------------
# one condition per minibatch
# ------------------------------------------------------------------------------------------------
class ConditionBatchSampler(Sampler[list[int]]):
    """Minibatches of positions that each hold cells of a single condition.

    The cells of every condition are cut into ``ceil(n / batch_size)`` chunks of near-equal size
    (sizes differ by at most one, none exceeds ``batch_size``), so a condition of 300 cells with
    ``batch_size=256`` gives two batches of 150 rather than 256 + 44. Chunks smaller than
    ``min_batch_size`` (only possible for conditions with fewer cells) are left out. With
    ``shuffle=True`` the cells within each condition and the order of the batches are drawn anew
    at every pass (epoch) from a generator seeded once, so a run is reproducible.

    Parameters
    ----------
    conditions
        Integer condition code of every position of the dataset; negative codes are never sampled
        (e.g. control cells, or cells without a partner).
    batch_size
        Largest number of cells in a batch.
    shuffle
        Shuffle cells and batches at every pass; ``False`` yields batches in condition order.
    min_batch_size
        Smallest batch kept (an MMD between one cell and another says little, and batch
        normalisation needs two).
    seed
        Seed of the shuffling; ``None`` uses :attr:`scvi.settings.seed`.

    Examples
    --------
    >>> import numpy as np
    >>> from pertgrn.models._base import ConditionBatchSampler
    >>> sampler = ConditionBatchSampler(np.array([0, 1, 0, 1, -1, 0]), batch_size=2, shuffle=False)
    >>> [sorted(b) for b in sampler]
    [[0, 2], [1, 3]]
    """

    def __init__(
        self,
        conditions: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = True,
        min_batch_size: int = 2,
        seed: int | None = None,
    ):
        conditions = np.asarray(conditions).reshape(-1)
        if not np.issubdtype(conditions.dtype, np.integer):
            raise TypeError(f"`conditions` must hold integer codes, found dtype {conditions.dtype}.")
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"`batch_size` must be a positive integer, found {batch_size!r}.")
        if isinstance(min_batch_size, bool) or not 1 <= int(min_batch_size) <= int(batch_size):
            raise ValueError(f"`min_batch_size` must lie in [1, batch_size={batch_size}], found {min_batch_size!r}.")
        self.batch_size, self.min_batch_size, self.shuffle = int(batch_size), int(min_batch_size), bool(shuffle)
        order = np.argsort(conditions, kind="stable")
        codes = conditions[order]
        keep = codes >= 0
        order, codes = order[keep], codes[keep]
        bounds = np.flatnonzero(np.diff(codes)) + 1
        self.groups = [g.astype(np.int64) for g in np.split(order, bounds)] if order.size else []
        self._rng = np.random.default_rng(settings.seed if seed is None else seed)

    def _chunks(self, members: np.ndarray) -> list[np.ndarray]:
        n_chunks = -(-members.size // self.batch_size)
        return [c for c in np.array_split(members, n_chunks) if c.size >= self.min_batch_size]

    def batches(self) -> list[np.ndarray]:
        """The batches of one pass (advances the shuffling generator when ``shuffle``)."""
        batches = []
        for members in self.groups:
            if self.shuffle:
                members = self._rng.permutation(members)
            batches.extend(self._chunks(members))
        if self.shuffle and batches:
            batches = [batches[i] for i in self._rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches():
            yield batch.tolist()

    def __len__(self) -> int:
        return sum(len(self._chunks(members)) for members in self.groups)


class DistributedConditionBatchSampler(DistributedSampler):
    """One process's share of a :class:`ConditionBatchSampler`'s batches under data-parallel training.

    Every process draws the same pass of condition batches (the samplers share one seed) and takes
    every ``num_replicas``-th of them, starting at its ``rank``; the pass is first extended by
    repeating its first batches so that it divides evenly, as :class:`~torch.utils.data.DistributedSampler`
    does, because every process must take the same number of optimisation steps. A batch stays
    one condition's cells, so a loss over a condition's population (MMD) sees the same kind of
    batch as in a single process; the processes' gradients are averaged by the strategy.

    A :class:`~torch.utils.data.DistributedSampler`, so that Lightning does not wrap it in a
    sampler of its own.

    Parameters
    ----------
    sampler
        The condition batches of the whole training set (seeded identically in every process).
    num_replicas, rank
        Number of processes and this one's rank; ``None`` reads them from the initialised
        :mod:`torch.distributed` process group.

    Examples
    --------
    >>> import numpy as np
    >>> from pertgrn.models._base import ConditionBatchSampler, DistributedConditionBatchSampler
    >>> batches = ConditionBatchSampler(np.array([0, 0, 1, 1, 2, 2]), batch_size=2, shuffle=False)
    >>> [list(DistributedConditionBatchSampler(batches, num_replicas=2, rank=r)) for r in (0, 1)]
    [[[0, 1], [4, 5]], [[2, 3], [0, 1]]]
    """

    def __init__(self, sampler: ConditionBatchSampler, num_replicas: int | None = None, rank: int | None = None):
        super().__init__(range(len(sampler)), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.sampler.batches()
        if not batches:
            return
        total = -(-len(batches) // self.num_replicas) * self.num_replicas
        batches = (batches * (-(-total // len(batches))))[:total]
        for batch in batches[self.rank : total : self.num_replicas]:
            yield batch.tolist()

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: the condition batches are reshuffled at every pass by the wrapped sampler."""
        self.epoch = epoch


# ------------------------------------------------------------------------------------------------
# partners in the batch
# ------------------------------------------------------------------------------------------------
class AttachPartners:
    """Collate function: adds the counts of each cell's partners to a minibatch dictionary.

    On the first minibatch, every cell that is anyone's partner (the control pool) is read once,
    in chunks of rows: its library size (total counts over all genes) and, when ``columns``
    selects genes or the counts live on disk, its counts on those columns, kept as a CSR matrix
    (or dense array, for dense counts). A minibatch then gathers its distinct partners' rows from
    that pool and makes only them dense. The counts may be an array, a sparse matrix or a backed
    AnnData's ``X`` (``anndata.read_h5ad(..., backed="r")``): minibatches never read the disk for
    partners, and nothing of size ``n_obs × genes`` is loaded.

    Parameters
    ----------
    adata_manager
        Manager of the registered AnnData (its counts are read by global cell index).
    columns
        Gene columns of ``partner_x``; ``None`` keeps all genes.
    random_partners
        Global indices of the control cells to draw partners from; when given, every perturbed
        cell (non-empty design row) of a batch gets one partner drawn uniformly with replacement
        each time the batch is built, and the partner field (if any) is ignored.
    seed
        Seed of those draws; ``None`` uses :attr:`scvi.settings.seed`.
    keys
        Further registry keys whose rows of each partner are attached as ``partner_<key>``.
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        columns: Sequence[int] | None = None,
        *,
        random_partners: np.ndarray | None = None,
        seed: int | None = None,
        keys: Sequence[str] = (),
    ):
        self.counts = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        fields = adata_manager.data_registry
        self.partner_index = adata_manager.get_from_registry(PARTNER_INDEX_KEY) if PARTNER_INDEX_KEY in fields else None
        self.columns = None if columns is None else np.asarray(columns, dtype=np.int64)
        self.fields = {key: _registry_array(adata_manager, key).astype(np.float32) for key in keys}
        self.random_partners = None if random_partners is None else np.asarray(random_partners, dtype=np.int64)
        if self.random_partners is not None and self.random_partners.size == 0:
            raise ValueError("`random_partners` is empty: there are no (training) control cells to pair with.")
        self._rng = np.random.default_rng(settings.seed if seed is None else seed)
        self._pool: tuple[np.ndarray, np.ndarray | sparse.csr_matrix | None, np.ndarray] | None = None

    def __deepcopy__(self, memo: dict) -> AttachPartners:
        """The same object, not a copy.

        scvi-tools deep-copies a loader's arguments, which would copy the count matrix for every
        loader (or fail on a backed one); the collate function only reads it.
        """
        return self

    @property
    def pool(self) -> tuple[np.ndarray, np.ndarray | sparse.csr_matrix | None, np.ndarray]:
        """The partner pool: ``(cells, rows, library)``.

        The sorted partner cells, their counts on ``columns`` (``None`` when minibatches read the
        in-memory counts directly) and their library sizes (float32).
        """
        if self._pool is None:
            if self.random_partners is not None:
                cells = np.unique(self.random_partners)
            else:
                index = np.asarray(self.partner_index)
                cells = np.unique(index[index >= 0]).astype(np.int64)
            in_memory = sparse.issparse(self.counts) or isinstance(self.counts, np.ndarray)
            keep_rows = not (in_memory and self.columns is None)
            rows, library = read_rows(self.counts, cells, self.columns, keep=keep_rows)
            self._pool = (cells, rows, library)
        return self._pool

    def partner_rows(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense float32 counts of ``cells`` (sorted, distinct partners) on the columns, and their library sizes."""
        pool_cells, pool_rows, pool_library = self.pool
        position = np.searchsorted(pool_cells, cells)
        if position.size and (position.max() >= pool_cells.size or (pool_cells[position] != cells).any()):
            raise KeyError("A minibatch names partners that are not in the registered partner field.")
        if pool_rows is None:
            rows = self.counts[cells]
            if self.columns is not None:
                rows = rows[:, self.columns]
        else:
            rows = pool_rows[position]
        rows = rows.toarray() if sparse.issparse(rows) else np.asarray(rows)
        return rows.astype(np.float32, copy=False), pool_library[position]

    def _draw_partners(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        design = np.asarray(batch[DESIGN_KEY])
        perturbed = design.reshape(design.shape[0], -1).sum(axis=1) > 0
        index = np.full((design.shape[0], 1), -1, dtype=np.int64)
        index[perturbed, 0] = self._rng.choice(self.random_partners, size=int(perturbed.sum()), replace=True)
        return index, (index >= 0).astype(np.float32)

    def __call__(self, batch: dict[str, np.ndarray] | list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        """Attach ``partner_x`` and ``partner_library``, then convert every array to a tensor."""
        if isinstance(batch, list):  # a batch sampler's batch comes wrapped in a list of one
            (batch,) = batch
        batch = dict(batch)
        if self.random_partners is not None:
            batch[PARTNER_INDEX_KEY], batch[PARTNER_WEIGHT_KEY] = self._draw_partners(batch)
        index = np.asarray(batch[PARTNER_INDEX_KEY]).astype(np.int64)
        valid = index >= 0
        unique, slots = np.unique(index[valid], return_inverse=True)
        rows, library = self.partner_rows(unique)
        partner_x = np.zeros((*index.shape, rows.shape[1]), dtype=np.float32)
        partner_library = np.zeros(index.shape, dtype=np.float32)
        partner_x[valid] = rows[slots]
        partner_library[valid] = library[slots]
        batch[PARTNER_X_KEY] = partner_x
        batch[PARTNER_LIBRARY_KEY] = partner_library
        for key, values in self.fields.items():
            attached = np.zeros((*index.shape, *values.shape[1:]), dtype=np.float32)
            if unique.size:
                attached[valid] = values[unique][slots]
            batch[f"partner_{key}"] = attached
        return default_convert(batch)


def _registry_array(adata_manager: AnnDataManager, key: str) -> np.ndarray:
    values = adata_manager.get_from_registry(key)
    values = values.toarray() if sparse.issparse(values) else np.asarray(values)
    return values


def control_cells(adata_manager: AnnDataManager, indices: np.ndarray | None = None) -> np.ndarray:
    """Global indices (among ``indices``, default all cells) of the cells with an empty design row: the controls."""
    design = sparse.csr_matrix(adata_manager.get_from_registry(DESIGN_KEY))
    indices = np.arange(design.shape[0]) if indices is None else np.asarray(indices, dtype=np.int64)
    empty = np.diff(design.indptr)[indices] == 0
    return indices[empty]


def read_rows(
    counts, cells: np.ndarray, columns: np.ndarray | None = None, *, keep: bool = True, chunk_size: int = 10_000
) -> tuple[np.ndarray | sparse.csr_matrix | None, np.ndarray]:
    """Rows ``cells`` (sorted) of an array, sparse matrix or backed matrix, read ``chunk_size`` rows at a time.

    Returns the rows on ``columns`` (float32; CSR for sparse or backed sparse counts, ``None``
    unless ``keep``) and their totals over all columns (float32).
    """
    blocks, totals = [], []
    for start in range(0, cells.size, chunk_size):
        block = counts[cells[start : start + chunk_size]]
        totals.append(np.asarray(block.sum(axis=1), dtype=np.float64).ravel())
        if keep:
            if sparse.issparse(block):
                block = sparse.csr_matrix(block, dtype=np.float32)
            else:
                block = np.asarray(block, dtype=np.float32)
            blocks.append(block if columns is None else block[:, columns])
    library = np.concatenate(totals).astype(np.float32) if totals else np.zeros(0, np.float32)
    if not keep:
        return None, library
    n_columns = counts.shape[1] if columns is None else columns.size
    if not blocks:
        return np.zeros((0, n_columns), np.float32), library
    rows = sparse.vstack(blocks, format="csr") if sparse.issparse(blocks[0]) else np.vstack(blocks)
    return rows, library


class PairedAnnDataLoader(AnnDataLoader):
    """:class:`~scvi.dataloaders.AnnDataLoader` whose minibatches carry each cell's control partners.

    Parameters
    ----------
    adata_manager
        Manager of an AnnData registered with a partner field (or, with ``random_partners``, with a
        design field only).
    partner_columns
        Gene columns of the partners' counts to load (``None``: all genes).
    group_by_condition
        Minibatches hold cells of one condition (:class:`ConditionBatchSampler`); only cells with
        a partner (with ``random_partners``: perturbed cells) enter a batch. ``shuffle`` then
        shuffles cells and batches every epoch and ``drop_last`` is ignored (the sampler keeps
        chunks of at least ``min_batch_size`` cells).
    min_batch_size
        Smallest condition batch kept (with ``group_by_condition``).
    random_partners
        Global indices of the control cells partners are drawn from (random pairing); ``None``
        uses the OT partners of the partner field.
    partner_keys
        Further registry keys whose rows of each partner go into the minibatch (``partner_<key>``).
    sampler_seed
        Seed of the condition batches' shuffling (with ``group_by_condition``); ``None`` uses
        :attr:`scvi.settings.seed`. Data-parallel processes need one they all share.
    **kwargs
        Arguments of :class:`~scvi.dataloaders.AnnDataLoader` (``indices``, ``batch_size``, ``shuffle``, …).
        With ``group_by_condition``, ``distributed_sampler=True`` (what scvi-tools passes under a
        data-parallel strategy) gives this process its share of the condition batches
        (:class:`DistributedConditionBatchSampler`).
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        *,
        partner_columns: Sequence[int] | None = None,
        group_by_condition: bool = False,
        min_batch_size: int = 2,
        random_partners: np.ndarray | None = None,
        partner_keys: Sequence[str] = (),
        sampler_seed: int | None = None,
        **kwargs,
    ):
        registry = adata_manager.data_registry
        if random_partners is None and PARTNER_INDEX_KEY not in registry:
            raise KeyError("The AnnData was set up without OT partners; the paired loader needs them.")
        if kwargs.get("data_and_attributes") is None:
            # partner indices are integers: load them as such, everything else with scvi-tools' default
            kwargs["data_and_attributes"] = {
                key: (np.int64 if key == PARTNER_INDEX_KEY else registry_key_to_default_dtype(key)) for key in registry
            }
        if group_by_condition:
            if CONDITION_REGISTRY_KEY not in registry:
                raise KeyError("Grouping minibatches by condition needs the condition field in the registry.")
            indices = kwargs.get("indices")
            indices = np.arange(adata_manager.adata.n_obs) if indices is None else np.asarray(indices)
            if indices.dtype == bool:
                indices = np.flatnonzero(indices)
            codes = _registry_array(adata_manager, CONDITION_REGISTRY_KEY).reshape(-1).astype(np.int64)[indices]
            if random_partners is None:
                eligible = _registry_array(adata_manager, PARTNER_INDEX_KEY)[indices, 0] >= 0
            else:
                eligible = ~np.isin(indices, control_cells(adata_manager, indices))
            sampler = ConditionBatchSampler(
                np.where(eligible, codes, -1),
                kwargs.pop("batch_size", 128),
                shuffle=kwargs.pop("shuffle", False),
                min_batch_size=min_batch_size,
                seed=sampler_seed,
            )
            if kwargs.pop("distributed_sampler", False):
                sampler = DistributedConditionBatchSampler(sampler)
            kwargs["sampler"] = sampler
            kwargs.pop("drop_last", None)
        kwargs["collate_fn"] = AttachPartners(
            adata_manager, partner_columns, random_partners=random_partners, keys=partner_keys
        )
        super().__init__(adata_manager, **kwargs)


class PairedDataSplitter(DataSplitter):
    """:class:`~scvi.dataloaders.DataSplitter` whose loaders are :class:`PairedAnnDataLoader`.

    Held-out cells are kept out through ``external_indexing`` (training, validation and test
    indices), as scvi-tools does; their partners were already removed from the partner field.

    Parameters
    ----------
    adata_manager
        Manager of an AnnData registered with a partner field (or a design field, for ``random_partners``).
    partner_columns
        Gene columns of the partners' counts to load (``None``: all genes).
    group_by_condition
        Every minibatch holds cells of one condition (see :class:`PairedAnnDataLoader`).
    min_batch_size
        Smallest condition batch kept.
    random_partners
        Pair each perturbed cell with a control drawn uniformly from the **training** controls
        (the cells of the training split with an empty design row), anew every time its batch is
        built, instead of its OT partners; validation batches draw from the same training controls.
    partner_keys
        Further registry keys whose rows of each partner go into the minibatch (``partner_<key>``).
    sampler_seed
        Seed of the condition batches' shuffling (with ``group_by_condition``); ``None`` uses
        :attr:`scvi.settings.seed`.
    **kwargs
        Arguments of :class:`~scvi.dataloaders.DataSplitter`.
    """

    data_loader_cls = PairedAnnDataLoader

    def __init__(
        self,
        adata_manager: AnnDataManager,
        *,
        partner_columns: Sequence[int] | None = None,
        group_by_condition: bool = False,
        min_batch_size: int = 2,
        random_partners: bool = False,
        partner_keys: Sequence[str] = (),
        sampler_seed: int | None = None,
        **kwargs,
    ):
        if group_by_condition:
            # condition batches are not cut from one stream of cells: scvi's warning about a small
            # last batch does not apply, and the sampler ignores drop_last
            kwargs.setdefault("drop_last", True)
        super().__init__(
            adata_manager,
            partner_columns=partner_columns,
            group_by_condition=group_by_condition,
            min_batch_size=min_batch_size,
            partner_keys=tuple(partner_keys),
            sampler_seed=sampler_seed,
            **kwargs,
        )
        self.random_partners = bool(random_partners)

    def setup(self, stage: str | None = None):
        """Split the indices; with random partners, collect the training controls to draw from."""
        super().setup(stage)
        if self.random_partners:
            pool = control_cells(self.adata_manager, np.asarray(self.train_idx, dtype=np.int64))
            if pool.size == 0:
                raise ValueError("The training split holds no control cells to draw random partners from.")
            self.data_loader_kwargs["random_partners"] = pool

    def val_dataloader(self):
        """The validation loader; an empty list when it would hold no batch (e.g. no paired validation cell)."""
        loader = super().val_dataloader()
        return loader if loader is not None and len(loader) > 0 else []

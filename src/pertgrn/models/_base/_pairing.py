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

``partner_weight`` (``B × k``, 0 in empty slots) comes from the registry with the indices.
Every tensor keeps the cells on its first axis, as Lightning expects of a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data._utils import registry_key_to_default_dtype
from scvi.dataloaders import AnnDataLoader, DataSplitter
from torch.utils.data import default_convert

from pertgrn.models._base._fields import PARTNER_INDEX_KEY

PARTNER_X_KEY = "partner_x"
PARTNER_LIBRARY_KEY = "partner_library"


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
    """

    def __init__(self, adata_manager: AnnDataManager, columns: Sequence[int] | None = None):
        self.counts = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        self.partner_index = adata_manager.get_from_registry(PARTNER_INDEX_KEY)
        self.columns = None if columns is None else np.asarray(columns, dtype=np.int64)
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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Attach ``partner_x`` and ``partner_library``, then convert every array to a tensor."""
        index = np.asarray(batch[PARTNER_INDEX_KEY]).astype(np.int64)
        valid = index >= 0
        unique, slots = np.unique(index[valid], return_inverse=True)
        rows, library = self.partner_rows(unique)
        partner_x = np.zeros((*index.shape, rows.shape[1]), dtype=np.float32)
        partner_library = np.zeros(index.shape, dtype=np.float32)
        partner_x[valid] = rows[slots]
        partner_library[valid] = library[slots]
        batch = dict(batch)
        batch[PARTNER_X_KEY] = partner_x
        batch[PARTNER_LIBRARY_KEY] = partner_library
        return default_convert(batch)


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
        Manager of an AnnData registered with a partner field.
    partner_columns
        Gene columns of the partners' counts to load (``None``: all genes).
    **kwargs
        Arguments of :class:`~scvi.dataloaders.AnnDataLoader`.
    """

    def __init__(self, adata_manager: AnnDataManager, *, partner_columns: Sequence[int] | None = None, **kwargs):
        if PARTNER_INDEX_KEY not in adata_manager.data_registry:
            raise KeyError("The AnnData was set up without OT partners; the paired loader needs them.")
        if kwargs.get("data_and_attributes") is None:
            # partner indices are integers: load them as such, everything else with scvi-tools' default
            kwargs["data_and_attributes"] = {
                key: (np.int64 if key == PARTNER_INDEX_KEY else registry_key_to_default_dtype(key))
                for key in adata_manager.data_registry
            }
        kwargs["collate_fn"] = AttachPartners(adata_manager, partner_columns)
        super().__init__(adata_manager, **kwargs)


class PairedDataSplitter(DataSplitter):
    """:class:`~scvi.dataloaders.DataSplitter` whose loaders are :class:`PairedAnnDataLoader`.

    Held-out cells are kept out through ``external_indexing`` (training, validation and test
    indices), as scvi-tools does; their partners were already removed from the partner field.

    Parameters
    ----------
    adata_manager
        Manager of an AnnData registered with a partner field.
    partner_columns
        Gene columns of the partners' counts to load (``None``: all genes).
    **kwargs
        Arguments of :class:`~scvi.dataloaders.DataSplitter`.
    """

    data_loader_cls = PairedAnnDataLoader

    def __init__(self, adata_manager: AnnDataManager, *, partner_columns: Sequence[int] | None = None, **kwargs):
        super().__init__(adata_manager, partner_columns=partner_columns, **kwargs)

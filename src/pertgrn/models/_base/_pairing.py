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

    Every cell's library size (total counts over all genes) is computed once, on the first
    minibatch, in chunks of rows; a minibatch then reads only its distinct partners' rows and,
    for sparse counts, only the requested columns before anything is made dense. The counts may
    be an in-memory array, a sparse matrix or a backed (on-disk) AnnData's ``X``.

    Parameters
    ----------
    adata_manager
        Manager of the registered AnnData (its counts are read by global cell index).
    columns
        Gene columns of ``partner_x``; ``None`` keeps all genes.
    """

    def __init__(self, adata_manager: AnnDataManager, columns: Sequence[int] | None = None):
        self.counts = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        self.columns = None if columns is None else np.asarray(columns, dtype=np.int64)
        self._library: np.ndarray | None = None

    @property
    def library(self) -> np.ndarray:
        """Total counts of every cell (float32), computed on first use."""
        if self._library is None:
            self._library = row_sums(self.counts)
        return self._library

    def partner_rows(self, cells: np.ndarray) -> np.ndarray:
        """Dense float32 counts of ``cells`` (sorted, distinct) on the requested columns."""
        rows = self.counts[cells]
        if sparse.issparse(rows):
            rows = sparse.csr_matrix(rows)
            if self.columns is not None:
                rows = rows[:, self.columns]
            return rows.toarray().astype(np.float32, copy=False)
        rows = np.asarray(rows)
        if self.columns is not None:
            rows = rows[:, self.columns]
        return rows.astype(np.float32, copy=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Attach ``partner_x`` and ``partner_library``, then convert every array to a tensor."""
        index = np.asarray(batch[PARTNER_INDEX_KEY]).astype(np.int64)
        valid = index >= 0
        unique, slots = np.unique(index[valid], return_inverse=True)
        rows = self.partner_rows(unique)
        partner_x = np.zeros((*index.shape, rows.shape[1]), dtype=np.float32)
        partner_library = np.zeros(index.shape, dtype=np.float32)
        partner_x[valid] = rows[slots]
        partner_library[valid] = self.library[unique][slots]
        batch = dict(batch)
        batch[PARTNER_X_KEY] = partner_x
        batch[PARTNER_LIBRARY_KEY] = partner_library
        return default_convert(batch)


def row_sums(counts, chunk_size: int = 10_000) -> np.ndarray:
    """Total of every row of an array, sparse matrix or backed (on-disk) matrix, read ``chunk_size`` rows at a time."""
    if isinstance(counts, np.ndarray) or sparse.issparse(counts):
        return np.asarray(counts.sum(axis=1), dtype=np.float64).ravel().astype(np.float32)
    n = counts.shape[0]
    totals = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk_size):
        block = counts[start : start + chunk_size]
        totals[start : start + chunk_size] = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
    return totals


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

"""What every pertgrn model shares: design, held-out cells, training defaults, prediction and GRN export.

A model subclasses :class:`PerturbationModel` and writes only what is specific to it: its
``setup_anndata`` (the fields it needs, built with :mod:`pertgrn.models._base._fields`), how it
builds its module, how it encodes cells (``get_latent_representation``), where basal states come
from (``_basal_states``), how it decodes a design from basal states (``_decode``) and what its
GRN is (``_grn_record``). Training is scvi-tools' :class:`~scvi.model.base.UnsupervisedTrainingMixin`
with the model's defaults from one class attribute.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi.dataloaders import DataSplitter
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from pertgrn._design import PerturbationDesign
from pertgrn._grn_store import LatentGRN, NodeGRN, edge_strength
from pertgrn._settings import progress
from pertgrn._utils import did_you_mean
from pertgrn.models._base._fields import DESIGN_KEY, PARTNER_INDEX_KEY
from pertgrn.models._base._pairing import PairedDataSplitter

#: target sum of the normalisation behind every treatment effect (log2(1 + CP10k), as ``pertgrn.get.ate_df``)
ATE_TARGET_SUM = 1e4


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an int, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, found {value!r}.")
    return int(value)


def check_bool_column(values: pd.Series, where: str) -> np.ndarray:
    """A bool array from a bool or 0/1 column, or a TypeError/ValueError naming ``where``."""
    if pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=bool)
    if pd.api.types.is_numeric_dtype(values):
        array = values.to_numpy()
        if np.isnan(array.astype(float)).any() or not np.isin(array, (0, 1)).all():
            raise ValueError(f"{where} must hold booleans (or 0/1), found other values.")
        return array.astype(bool)
    raise TypeError(f"{where} must be boolean, found dtype {values.dtype}.")


class PerturbationModel(UnsupervisedTrainingMixin, BaseModelClass):
    """Base of pertgrn's models: a screen's design, held-out cells, training defaults, predictions and GRN.

    Subclasses set ``_module_cls``, ``_training_plan_cls``, ``grn_level`` and ``_train_defaults``,
    call :meth:`_init_design` after ``super().__init__(adata)``, and implement
    ``get_latent_representation``, :meth:`_basal_states`, :meth:`_decode` and :meth:`_grn_record`.
    """

    #: ``"gene"`` (a GRN over genes and targets) or ``"latent"`` (a DAG among latents lifted to genes)
    grn_level: ClassVar[str] = "gene"
    #: training defaults: ``batch_size``, ``early_stopping``, ``plan_kwargs``, ``trainer_kwargs``
    _train_defaults: ClassVar[dict[str, Any]] = {
        "batch_size": 128,
        "early_stopping": False,
        "plan_kwargs": {},
        "trainer_kwargs": {},
    }

    design: PerturbationDesign
    design_columns: list[str]

    # ------------------------------------------------------------------------------------------
    # design and held-out cells
    # ------------------------------------------------------------------------------------------
    def _init_design(self) -> None:
        """Read the design columns, control and delimiter from the registry."""
        state = self.adata_manager.get_state_registry(DESIGN_KEY)
        self.design_columns = [str(c) for c in state["column_names"]]
        self.design = PerturbationDesign(
            control=str(state["control"]), delimiter=str(state["delimiter"]), targets=tuple(self.design_columns)
        )

    @property
    def test_key(self) -> str | None:
        """The ``obs`` column of held-out cells given at set-up (``None`` when every cell may train)."""
        return self.registry["setup_args"].get("test_key") or None

    def training_mask(self, adata: AnnData | None = None) -> np.ndarray:
        """Boolean mask of the cells that may influence the fit: all but ``obs[test_key] == True``."""
        adata = self.adata if adata is None else adata
        if self.test_key is None or self.test_key not in adata.obs:
            return np.ones(adata.n_obs, dtype=bool)
        return ~check_bool_column(adata.obs[self.test_key], f"adata.obs[{self.test_key!r}]")

    @property
    def has_partners(self) -> bool:
        """Whether the AnnData was set up with OT partners."""
        return PARTNER_INDEX_KEY in self.adata_manager.data_registry

    @property
    def _data_splitter_cls(self) -> type[DataSplitter]:  # read by UnsupervisedTrainingMixin.train
        return PairedDataSplitter if self.has_partners else DataSplitter

    def _partner_columns(self) -> np.ndarray | None:
        """Gene columns of the partners' counts the module needs (``None``: all genes)."""
        return None

    @property
    def predictable_targets(self) -> list[str]:
        """Targets whose effect the model learned and can predict (alone or combined); default: every design column."""
        return list(self.design_columns)

    # ------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------
    def _default_max_epochs(self, n_train: int, batch_size: int) -> int:
        """Epochs when the user gives none: scvi-tools' heuristic on the training cells."""
        from scvi.model._utils import get_max_epochs_heuristic

        return get_max_epochs_heuristic(n_train)

    def _split_indices(
        self, train_size: float | None, validation_size: float | None, shuffle: bool, *, seed: int | None = None
    ) -> list[np.ndarray]:
        """Training / validation / test indices with every held-out cell in the test set.

        The shuffle draws from ``seed``, or from ``scvi.settings.seed`` when ``seed`` is ``None``.
        """
        from scvi import settings

        seed = settings.seed if seed is None else seed

        train = np.flatnonzero(self.training_mask())
        test = np.flatnonzero(~self.training_mask())
        train_size = 0.9 if train_size is None else float(train_size)
        validation_size = 1.0 - train_size if validation_size is None else float(validation_size)
        if not (0 < train_size <= 1 and 0 <= validation_size and train_size + validation_size <= 1 + 1e-9):
            raise ValueError(
                f"`train_size` ({train_size}) and `validation_size` ({validation_size}) must be fractions "
                "of the training cells that sum to at most 1."
            )
        if shuffle:
            train = np.random.default_rng(seed).permutation(train)
        n_val = int(np.ceil(validation_size * train.size)) if validation_size > 0 else 0
        n_train = int(np.floor(train_size * train.size))
        validation, training, rest = train[:n_val], train[n_val : n_val + n_train], train[n_val + n_train :]
        return [np.sort(training), np.sort(validation), np.sort(np.concatenate([test, rest]))]

    def train(
        self,
        max_epochs: int | None = None,
        *,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        batch_size: int | None = None,
        early_stopping: bool | None = None,
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train the model (GPU when present, CPU otherwise) through scvi-tools' training loop.

        Cells held out at set-up (``test_key``) are never training or validation cells: they go to
        the data splitter's test indices. Defaults not given here come from the model's
        ``_train_defaults``.

        Parameters
        ----------
        max_epochs
            Maximum number of epochs; ``None`` lets the model choose from the number of training cells.
        accelerator, devices
            Lightning accelerator and devices; ``"auto"`` picks a GPU when one is available.
        train_size, validation_size, shuffle_set_split
            Split of the training cells (default 90 % training, 10 % validation).
        batch_size
            Minibatch size; ``None`` uses the model's default.
        early_stopping
            Stop when ``validation_loss`` stops improving; ``None`` uses the model's default.
        datasplitter_kwargs
            Further arguments of the data splitter (scvi-tools' :class:`~scvi.dataloaders.DataSplitter`,
            or :class:`~pertgrn.models._base.PairedDataSplitter` when the screen has OT partners).
        plan_kwargs
            Arguments of the training plan (e.g. ``lr``, ``n_epochs_kl_warmup``), over the model's defaults.
        **trainer_kwargs
            Further arguments of :class:`scvi.train.Trainer` (e.g. ``enable_progress_bar=False``),
            over the model's defaults.

        Returns
        -------
        ``None``; the model is trained in place and ``model.history`` holds per-epoch values of the loss terms.
        """
        defaults = self._train_defaults
        batch_size = check_positive_int(defaults["batch_size"] if batch_size is None else batch_size, "batch_size")
        early_stopping = defaults["early_stopping"] if early_stopping is None else bool(early_stopping)
        plan_kwargs = {**defaults.get("plan_kwargs", {}), **(plan_kwargs or {})}
        for name, value in defaults.get("trainer_kwargs", {}).items():
            trainer_kwargs.setdefault(name, value)
        datasplitter_kwargs = self._datasplitter_kwargs(
            datasplitter_kwargs,
            train_size=train_size,
            validation_size=validation_size,
            shuffle_set_split=shuffle_set_split,
            strategy=trainer_kwargs.get("strategy"),
        )
        held_out = ~self.training_mask()
        if early_stopping and validation_size is not None and validation_size <= 0:
            raise ValueError("Early stopping monitors the validation loss: pass a validation_size > 0.")
        if max_epochs is None:
            max_epochs = self._default_max_epochs(int((~held_out).sum()), batch_size)
        max_epochs = check_positive_int(max_epochs, "max_epochs")
        # predictions leave the module in eval mode, and Lightning keeps the modes it finds: train in train mode
        self.module.train()
        super().train(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            train_size=train_size,
            validation_size=validation_size,
            shuffle_set_split=shuffle_set_split,
            batch_size=batch_size,
            early_stopping=early_stopping,
            datasplitter_kwargs=datasplitter_kwargs,
            plan_kwargs=plan_kwargs,
            **trainer_kwargs,
        )

    def _datasplitter_kwargs(
        self,
        datasplitter_kwargs: dict | None,
        *,
        train_size: float | None,
        validation_size: float | None,
        shuffle_set_split: bool,
        strategy: object = None,
    ) -> dict:
        """Arguments of the data splitter: partner columns, and the split when it must be fixed here.

        The split is drawn here (``external_indexing``) when cells are held out (they go to the
        test indices) and under a data-parallel strategy (``"ddp"``, ``"ddp_spawn"``, …): scvi-tools'
        splitter draws its split inside every process, from ``scvi.settings.seed``, which spawned
        processes do not inherit, so processes could train on different cells and one's
        validation cells be another's training cells. Under DDP the split is drawn from
        ``scvi.settings.seed``, or from 0 when it is unset, so that every process (including the
        copies of a script that ``strategy="ddp"`` starts) draws the same one; so is the
        shuffling of condition batches (``sampler_seed``), which the processes share out.
        """
        from scvi.model._utils import use_distributed_sampler

        datasplitter_kwargs = dict(datasplitter_kwargs or {})
        if self.has_partners:
            datasplitter_kwargs.setdefault("partner_columns", self._partner_columns())
        held_out = ~self.training_mask()
        distributed = strategy is not None and use_distributed_sampler(strategy)
        if "external_indexing" in datasplitter_kwargs:
            used = np.concatenate([np.asarray(i, dtype=np.int64) for i in datasplitter_kwargs["external_indexing"][:2]])
            if held_out[used].any():
                raise ValueError(
                    f"`external_indexing` puts {int(held_out[used].sum())} held-out cells "
                    f"(adata.obs[{self.test_key!r}]) in the training or validation set."
                )
        elif held_out.any() or distributed:
            datasplitter_kwargs["external_indexing"] = self._split_indices(
                train_size, validation_size, shuffle_set_split, seed=_shared_seed() if distributed else None
            )
        if distributed and issubclass(self._data_splitter_cls, PairedDataSplitter):
            # condition batches are shuffled in every process: from one seed, so processes share them out
            datasplitter_kwargs.setdefault("sampler_seed", _shared_seed())
        return datasplitter_kwargs

    def history_summary(self) -> pd.DataFrame:
        """Per-epoch training history as one table (h5ad-writable).

        Returns
        -------
        :class:`pandas.DataFrame` indexed by epoch (index name ``"epoch"``), one float column per
        metric logged once per epoch (e.g. ``train_loss``, ``validation_loss``); empty when the
        model was not trained.
        """
        columns = []
        for name, frame in (self.history or {}).items():
            frame = pd.DataFrame(frame)
            if frame.shape[1] != 1 or str(name).endswith("_step") or not frame.index.is_unique:
                continue
            series = frame.iloc[:, 0].astype(np.float64)
            series.index = pd.Index(np.asarray(frame.index, dtype=np.int64))
            columns.append(series.rename(str(name)))
        if not columns:
            return pd.DataFrame(index=pd.Index([], dtype=np.int64, name="epoch"))
        table = pd.concat(columns, axis=1).sort_index()
        table.index.name = "epoch"
        return table

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True) -> AnnData:
        """Register ``adata`` against this model's setup; on failure, remove every key the attempt added.

        Transferring the registry writes the derived fields one by one, so a screen that lacks one
        input would otherwise keep the fields written before it.
        """
        if adata is None or adata is self.adata:
            return super()._validate_anndata(adata, copy_if_view=copy_if_view)
        before = {slot: set(getattr(adata, slot).keys()) for slot in ("obs", "obsm", "uns")}
        try:
            return super()._validate_anndata(adata, copy_if_view=copy_if_view)
        except Exception:
            for slot, keys in before.items():
                mapping = getattr(adata, slot)
                for key in [k for k in mapping.keys() if k not in keys]:
                    del mapping[key]
            raise

    # ------------------------------------------------------------------------------------------
    # what a model implements
    # ------------------------------------------------------------------------------------------
    def _basal_states(
        self, adata: AnnData | None, n_cells: int
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """``n_cells`` basal states to decode designs from (prior draws, or encoded control cells of ``adata``).

        A model may return ``(states, library_sizes)``: the library sizes of the cells the states
        come from, which :meth:`_log_expression` can use to put predictions in observed units.
        """
        raise NotImplementedError  # pragma: no cover - every model implements it

    def _log_expression(self, rho: torch.Tensor, library: torch.Tensor | None) -> torch.Tensor:
        """``log2(1 + 10^4 · x / Σx)`` of the predicted cells, the unit of :func:`pertgrn.get.ate_df`.

        The default takes the expected normalised expression ``x = ρ``. A count model overrides it
        to average over counts drawn at the basal cells' library sizes, since the observed effect is
        a mean of logs of counts, not the log of their mean.
        """
        return torch.log2(1.0 + ATE_TARGET_SUM * rho)

    def _decode(self, design: torch.Tensor, basal: torch.Tensor) -> torch.Tensor:
        """Expected normalised expression (rows sum to one over genes) of each design row from each basal state."""
        raise NotImplementedError  # pragma: no cover - every model implements it

    def _sample_counts(self, mean: torch.Tensor) -> torch.Tensor:
        """Counts drawn around expected counts ``mean`` (Poisson unless the model has a count likelihood)."""
        return torch.poisson(mean)

    def _grn_record(self) -> NodeGRN | LatentGRN:
        """The model's GRN: a :class:`~pertgrn._grn_store.NodeGRN` or :class:`~pertgrn._grn_store.LatentGRN`."""
        raise NotImplementedError  # pragma: no cover - every model implements it

    #: whether :meth:`get_loadings` gives gene loadings of the latents (written to ``varm`` by ``tl.fit_*``)
    has_loadings: ClassVar[bool] = False

    def get_loadings(self) -> pd.DataFrame:
        """Gene loadings of the latent factors, genes × latents (models with ``has_loadings``)."""
        raise NotImplementedError(f"{type(self).__name__} has no gene loadings of its latents.")

    def _uns_extra(self) -> dict[str, Any]:
        """Further small, h5ad-writable entries of ``uns[key_added]`` that ``tl.fit_*`` writes (default: none)."""
        return {}

    # ------------------------------------------------------------------------------------------
    # prediction
    # ------------------------------------------------------------------------------------------
    def _parse_perturbations(self, perturbations: Sequence[str] | str) -> tuple[list[str], np.ndarray]:
        """Validated labels and their ``n × len(design_columns)`` multi-hot design.

        ``"control"`` (or the screen's control label) gives an empty row; combinations join
        targets with the screen's delimiter. Unknown names raise a :class:`KeyError` with a suggestion.
        """
        if isinstance(perturbations, str):
            perturbations = [perturbations]
        labels = [str(p) for p in perturbations]
        if not labels:
            raise ValueError("`perturbations` is empty; pass labels such as ['control', 'GENE', 'GENE1+GENE2'].")
        duplicated = pd.Index(labels)[pd.Index(labels).duplicated()].unique().tolist()
        if duplicated:
            raise ValueError(f"`perturbations` contains duplicates: {duplicated}.")
        known = set(self.design_columns)
        unknown = [t for label in labels if label != "control" for t in self.design.split(label) if t not in known]
        if unknown:
            hints = did_you_mean(list(dict.fromkeys(unknown)), self.design_columns)
            raise KeyError(
                f"Unknown perturbation target(s) {sorted(set(unknown))}. The model can perturb its "
                f"{len(self.design_columns)} targets (e.g. {self.design_columns[:5]}), combined with "
                f"{self.design.delimiter!r}, or {self.design.control!r} for control.{hints}"
            )
        rows = [self.design.control if label == "control" else label for label in labels]
        return labels, self.design.multi_hot(rows, self.design_columns).toarray().astype(np.float32)

    @contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        """Seed torch's draws with ``seed`` and restore the global random state afterwards (``None``: global draws)."""
        if seed is None:
            yield
            return
        devices = [self.module.device.index or 0] if self.module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            yield

    def _decoded_chunks(
        self, design: np.ndarray, basal: torch.Tensor, batch_size: int
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Decode every (design row, basal state) pair in chunks of ``batch_size``: several rows per call."""
        n_cells = basal.shape[0]
        total = design.shape[0] * n_cells
        design_t = torch.as_tensor(design, device=self.module.device)
        self.module.eval()
        starts = range(0, total, batch_size)
        if len(starts) >= 20:  # long work (many conditions): show progress
            starts = progress(starts, desc=f"{type(self).__name__}: decoding", unit="batch")
        for start in starts:
            flat = np.arange(start, min(start + batch_size, total))
            rows = torch.as_tensor(flat // n_cells, device=self.module.device)
            cells = torch.as_tensor(flat % n_cells, device=self.module.device)
            yield flat, self._decode(design_t[rows], basal[cells])

    @staticmethod
    def _check_generation_args(n_cells: object, library_size: object, batch_size: object) -> None:
        check_positive_int(n_cells, "n_cells")
        check_positive_int(batch_size, "batch_size")
        if isinstance(library_size, bool) or not isinstance(library_size, numbers.Real) or not library_size > 0:
            raise ValueError(f"`library_size` must be a positive number, found {library_size!r}.")

    def predict(
        self,
        adata: AnnData | None = None,
        *,
        perturbations: Sequence[str] | str,
        n_cells: int = 100,
        library_size: float = 1e4,
        sample: bool = False,
        batch_size: int = 1024,
        seed: int | None = 0,
    ) -> AnnData:
        """Predicted cells for each requested perturbation.

        Parameters
        ----------
        adata
            ``None`` decodes from the model's own basal states (see the model's notes); an AnnData
            set up like the training data uses the basal states of its (QC-passing) control cells,
            so the prediction is the counterfactual of those cells.
        perturbations
            Labels: ``"control"`` (or the screen's control label), a target, or a combination
            (``"GENE1+GENE2"``, with the screen's delimiter).
        n_cells
            Cells generated per perturbation.
        library_size
            Library size of the generated cells.
        sample
            Draw counts around the expectation instead of returning it.
        batch_size
            Cells decoded at once (rows of several perturbations share a call).
        seed
            Seed of every random draw, so two calls with the same seed return the same cells; the
            global random state is left as it was. ``None`` draws from the global state.

        Returns
        -------
        AnnData of ``len(perturbations) · n_cells`` cells × the model's genes: ``X`` holds expected
        counts (float32; drawn counts when ``sample=True``), ``obs["perturbation"]`` the
        categorical label (categories in the requested order).
        """
        self._check_generation_args(n_cells, library_size, batch_size)
        labels, design = self._parse_perturbations(perturbations)
        n_genes = self.adata.n_vars
        expression = np.empty((len(labels) * n_cells, n_genes), dtype=np.float32)
        with self._seeded(seed), torch.inference_mode():
            basal = self._basal_states(adata, int(n_cells))
            basal = basal[0] if isinstance(basal, tuple) else basal
            for flat, rho in self._decoded_chunks(design, basal, int(batch_size)):
                mean = float(library_size) * rho
                if sample:
                    mean = self._sample_counts(mean)
                expression[flat] = mean.cpu().numpy()
        obs = pd.DataFrame(
            {"perturbation": pd.Categorical(np.repeat(labels, n_cells), categories=labels)},
            index=pd.Index([f"{label}_{i}" for label in labels for i in range(n_cells)]),
        )
        var = pd.DataFrame(index=pd.Index(self.adata.var_names.astype(str)))
        return AnnData(X=expression, obs=obs, var=var)

    def predict_log_normalized(
        self,
        adata: AnnData | None = None,
        *,
        perturbations: Sequence[str] | str,
        n_cells: int = 100,
        target_sum: float = 1e4,
        batch_size: int = 1024,
        seed: int | None = 0,
    ) -> AnnData:
        """Predicted cells in log-normalised units, ``log(1 + T · counts / library)``, to compare with observed cells.

        The default is ``log1p`` of :meth:`predict`'s expected counts at library size ``T``; a model
        whose decoder works in log-normalised units (e.g. :class:`~pertgrn.models.GCRLVAE`) returns
        its decoder's output instead, the space its papers evaluate in.

        Parameters
        ----------
        adata
            Source of basal states, as in :meth:`predict`.
        perturbations
            Labels as in :meth:`predict`.
        n_cells
            Cells generated per perturbation.
        target_sum
            ``T``.
        batch_size
            Cells decoded at once.
        seed
            Seed of every random draw (``None``: the global state).

        Returns
        -------
        AnnData as :meth:`predict`'s, with float32 log-normalised expression in ``X``.
        """
        pred = self.predict(
            adata,
            perturbations=perturbations,
            n_cells=n_cells,
            library_size=target_sum,
            sample=False,
            batch_size=batch_size,
            seed=seed,
        )
        pred.X = np.log1p(np.asarray(pred.X, dtype=np.float32))
        return pred

    def get_ate(
        self,
        perturbations: Sequence[str] | str,
        *,
        adata: AnnData | None = None,
        n_cells: int = 2000,
        batch_size: int = 1024,
        seed: int | None = 0,
    ) -> pd.DataFrame:
        """Predicted average treatment effects against control, in the units of :func:`pertgrn.get.ate_df`.

        The effect of ``p`` on gene ``g`` is the mean over generated cells of ``log2(1 + CP10k)``
        under ``p`` minus the same under control (:meth:`_log_expression`: of the expected normalised
        expression, or, for count models, of counts drawn at the basal cells' library sizes); every
        perturbation shares the same basal states and draws.

        Parameters
        ----------
        perturbations
            Labels as in :meth:`predict`.
        adata
            Source of basal states as in :meth:`predict`.
        n_cells
            Basal states averaged over.
        batch_size
            Cells decoded at once (rows of several perturbations share a call).
        seed
            Seed of every random draw (same seed, same answer); ``None`` draws from the global state.

        Returns
        -------
        :class:`pandas.DataFrame`, perturbations × genes (model ``var_names``).
        """
        self._check_generation_args(n_cells, 1.0, batch_size)
        labels, design = self._parse_perturbations(perturbations)
        design = np.vstack([design, np.zeros((1, design.shape[1]), dtype=design.dtype)])
        # summed where the cells are decoded: only conditions × genes leave a GPU, not cells × genes
        sums = torch.zeros(design.shape[0], self.adata.n_vars, dtype=torch.float64, device=self.module.device)
        with self._seeded(seed), torch.inference_mode():
            basal, library = self._basal_states(adata, int(n_cells)), None
            if isinstance(basal, tuple):
                basal, library = basal
            for flat, rho in self._decoded_chunks(design, basal, int(batch_size)):
                cells = torch.as_tensor(flat % n_cells, device=rho.device)
                sizes = None if library is None else library[cells]
                normalised = self._log_expression(rho, sizes).double()
                sums.index_add_(0, torch.as_tensor(flat // n_cells, device=sums.device), normalised)
        means = (sums / n_cells).cpu().numpy()
        ate = means[:-1] - means[-1]
        ate[~design[:-1].any(axis=1)] = 0.0  # control against control, whatever the Monte Carlo draws
        table = pd.DataFrame(ate, index=pd.Index(labels), columns=pd.Index(self.adata.var_names.astype(str)))
        table.index.name = "perturbation"
        return table

    # ------------------------------------------------------------------------------------------
    # GRN export
    # ------------------------------------------------------------------------------------------
    def get_grn(self, threshold: float | None = None, *, level: str | None = None) -> pd.DataFrame:
        """The learned GRN as a square table (row = regulator, column = target).

        Parameters
        ----------
        threshold
            ``None`` returns the weights; a number returns the binary GRN: 1 where the edge's
            strength (``|weight|`` for signed GRNs, the weight for probabilities) exceeds it —
            pertgrn's edge rule, as in :func:`pertgrn.get.grn_df`.
        level
            ``None``: the model's own level (GPO-VAE: nodes × nodes over genes and targets; models
            with a latent DAG: latents × latents). ``"gene"`` lifts a latent DAG to genes.

        Returns
        -------
        :class:`pandas.DataFrame` indexed and columned by node (or latent) names; self-loops (the
        diagonal) are included as learned.
        """
        record = self._grn_record()
        if level not in (None, "gene", "latent"):
            raise ValueError(f"`level` must be None, 'gene' or 'latent', found {level!r}.")
        if isinstance(record, LatentGRN):
            if level == "gene":
                graph = record.lifted()
            else:
                graph = NodeGRN(nodes=record.latents, weights=record.dag, signed=True)
        elif level == "latent":
            raise ValueError(f"{type(self).__name__} learns a gene-level GRN; it has no latent DAG.")
        else:
            graph = record
        weights = graph.weights
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold < np.inf:
                raise ValueError(f"`threshold` must be a non-negative number or None, found {threshold!r}.")
            weights = (edge_strength(weights, graph.signed) > threshold).astype(np.int8)
        return pd.DataFrame(weights, index=pd.Index(graph.nodes), columns=pd.Index(graph.nodes))


def _shared_seed() -> int:
    """The seed every data-parallel process uses for what they must agree on: ``scvi.settings.seed``, or 0."""
    from scvi import settings

    return 0 if settings.seed is None else int(settings.seed)

"""gCRL-AE: an auto-encoder from TF expression to every gene through a quadratic polynomial decoder."""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from lightning.pytorch.callbacks import Callback
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import LayerField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.train import TrainingPlan
from torch import nn

from pertgrn._utils import check_counts, library_size, to_dense
from pertgrn.models._gcrlvae._module import TARGET_SUM, log_normalise


def quadratic_features(z: torch.Tensor) -> torch.Tensor:
    """``[z, (z_i z_j)_{i ≤ j}]``: the ``d + d(d+1)/2`` monomials of a quadratic polynomial (without the constant)."""
    rows, cols = torch.triu_indices(z.shape[1], z.shape[1], device=z.device)
    return torch.cat([z, z[:, rows] * z[:, cols]], dim=1)


class GCRLAEModule(BaseModuleClass):
    """Encoder ``ẑ = W₂ ReLU(W₁ x_TF + b₁) + b₂`` and decoder ``x̂ = b + W [ẑ, q(ẑ)]``; MSE on z-scored genes.

    Parameters
    ----------
    input_index
        Gene columns of the TFs (the encoder's input).
    mean, sd
        Per-gene mean and standard deviation of log-normalised expression (z-scoring of inputs and targets).
    n_latent
        ``d``.
    n_hidden
        Hidden units of the encoder (64).
    """

    def __init__(
        self, *, input_index: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor, n_latent: int, n_hidden: int = 64
    ):
        super().__init__()
        self.n_latent = int(n_latent)
        self.register_buffer("input_index", torch.as_tensor(input_index, dtype=torch.long))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("sd", torch.as_tensor(sd, dtype=torch.float32))
        n_genes = int(self.mean.numel())
        self.encoder = nn.Sequential(
            nn.Linear(int(self.input_index.numel()), n_hidden), nn.ReLU(), nn.Linear(n_hidden, self.n_latent)
        )
        self.n_features = self.n_latent + self.n_latent * (self.n_latent + 1) // 2
        self.decoder = nn.Linear(self.n_features, n_genes)

    def standardise(self, counts: torch.Tensor) -> torch.Tensor:
        """z-scored ``log(1 + 10^4 · counts / library)`` of every gene."""
        return (log_normalise(counts, counts.sum(1)) - self.mean) / self.sd

    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    @auto_move_data
    def inference(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Latents ``ẑ`` from the z-scored TF expression."""
        target = self.standardise(x)
        return {"z": self.encoder(target[:, self.input_index]), "target": target}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict[str, torch.Tensor]:
        return {"z": inference_outputs["z"]}

    @auto_move_data
    def generative(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Quadratic polynomial decoder."""
        return {"x_hat": self.decoder(quadratic_features(z))}

    def loss(self, tensors, inference_outputs, generative_outputs, **kwargs) -> LossOutput:
        """MSE averaged over genes and cells."""
        per_cell = (generative_outputs["x_hat"] - inference_outputs["target"]).pow(2).mean(1)
        return LossOutput(loss=per_cell.mean(), reconstruction_loss=per_cell, n_obs_minibatch=per_cell.shape[0])


class BestValidationState(Callback):
    """Keep the module's state at the lowest ``validation_loss`` and restore it when training ends."""

    def __init__(self):
        self.best = np.inf
        self.state: Mapping[str, torch.Tensor] | None = None
        self.epoch = -1

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get("validation_loss")
        if value is not None and float(value) < self.best:
            self.best = float(value)
            self.state = copy.deepcopy(pl_module.module.state_dict())
            self.epoch = int(trainer.current_epoch)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.state is not None:
            pl_module.module.load_state_dict(self.state)


class GCRLAE(UnsupervisedTrainingMixin, BaseModelClass):
    """gCRL-AE: an auto-encoder from TF expression to every gene with a quadratic polynomial decoder (gCRL §2.7).

    Following Ahuja et al. (2023), an auto-encoder with a polynomial decoder trained on
    interventional data recovers the causal factors up to an affine map ``Ẑ = ZA``. gCRL-AE reads
    only the TFs of the reference GRN, z-scored, through one hidden layer of 64 ReLU units into
    ``d = K + 1`` latents (one per TF community and one for the global activity), and decodes every
    gene, z-scored, with a quadratic polynomial ``x̂ = b + W_lin ẑ + W_quad (ẑ_i ẑ_j)_{i ≤ j}``.
    :func:`pertgrn.tl.align_latents` then finds the map ``A`` that aligns ``ẐA`` with the
    community activities, and :func:`pertgrn.tl.community_permutation_test` asks whether the true
    communities align better than permuted ones.

    Perturbation labels are not used (the paper trains on control cells and single perturbations
    of community TFs: subset the AnnData to those cells first), so GCRLAE predicts no perturbation
    and has no GRN: it is not a :class:`~pertgrn.models._base.PerturbationModel`.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_latent
        ``d``; ``None``: ``K + 1`` from the communities.
    n_hidden
        Hidden units of the encoder (64).

    Notes
    -----
    Expression is ``log(1 + 10^4 · counts / library)``, z-scored per gene with the mean and
    standard deviation of all registered cells (constant genes get standard deviation 1). The
    model at the epoch of lowest validation loss is kept (spec R9); training defaults are the
    paper's: Adam at ``lr = 1e-3`` (PyTorch's defaults otherwise), 100 epochs, minibatches of
    1,024, 10 % of the cells for validation.

    Examples
    --------
    >>> import pertgrn as pg
    >>> from pertgrn.models import GCRLAE
    >>> adata = pg.datasets.simulate(n_tf_modules=3, seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> pg.pp.reference_grn(adata, tfs=adata.var_names[adata.var["true_tf_module"] >= 0])
    >>> pg.pp.tf_communities(adata, n_runs=10, n_perm=0)
    >>> GCRLAE.setup_anndata(adata)
    >>> model = GCRLAE(adata)
    >>> model.train(max_epochs=2, enable_progress_bar=False)
    >>> model.get_latent_representation().shape[1] == adata.uns["tf_communities"]["n_communities"] + 1
    True
    """

    _module_cls = GCRLAEModule
    _training_plan_cls = TrainingPlan

    def __init__(self, adata: AnnData, *, n_latent: int | None = None, n_hidden: int = 64):
        for name, value in (("n_latent", n_latent), ("n_hidden", n_hidden)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
                raise ValueError(f"`{name}` must be a positive integer, found {value!r}.")
        super().__init__(adata)
        key = self.registry["setup_args"]["communities_key"]
        record = self.adata.uns.get(key)
        if not isinstance(record, Mapping) or "communities" not in record:
            raise KeyError(f"adata.uns[{key!r}] holds no TF communities; run `pertgrn.pp.tf_communities` first.")
        table = pd.DataFrame(record["communities"])
        n_communities = int(table["community"].max()) + 1
        if n_latent is None:
            n_latent = n_communities + 1
        self.tfs = [t for t in (str(t) for t in record["tfs"]) if t in self.adata.var_names]
        if not self.tfs:
            raise ValueError(f"No TF of adata.uns[{key!r}]['tfs'] is among the AnnData's genes.")
        counts = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        lib = library_size(counts)
        scale = np.divide(TARGET_SUM, lib, out=np.zeros_like(lib, dtype=np.float64), where=lib > 0)
        scaled = counts.multiply(scale[:, None]).tocsr() if hasattr(counts, "multiply") else counts * scale[:, None]
        expression = np.log1p(to_dense(scaled).astype(np.float64))
        mean = expression.mean(0)
        sd = expression.std(0)
        sd[sd == 0] = 1.0
        self.module = GCRLAEModule(
            input_index=torch.as_tensor(self.adata.var_names.get_indexer(pd.Index(self.tfs))),
            mean=torch.as_tensor(mean),
            sd=torch.as_tensor(sd),
            n_latent=int(n_latent),
            n_hidden=int(n_hidden),
        )
        self.n_latent = int(n_latent)
        self.best_epoch: int | None = None
        self._model_summary_string = (
            f"GCRLAE with {len(self.tfs)} TF inputs, {self.n_latent} latents and a quadratic decoder "
            f"({self.module.n_features} features) onto {self.adata.n_vars} genes."
        )
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def setup_anndata(
        cls, adata: AnnData, *, layer: str | None = None, communities_key: str = "tf_communities", **kwargs
    ) -> None:
        """Register the cells the auto-encoder trains on (raw counts; TF communities in ``uns``).

        Parameters
        ----------
        adata
            Raw integer UMI counts in ``X`` or ``layer``; the genes are the decoder's outputs (the
            paper: the reference GRN's genes) and must include the GRN's TFs.
        layer
            Layer holding the counts; ``None`` uses ``X``.
        communities_key
            ``uns`` key of :func:`pertgrn.pp.tf_communities`.
        **kwargs
            Passed on by scvi-tools when a saved model is set up on new data.

        Returns
        -------
        ``None``; writes scvi-tools' registration identifiers ``uns["_scvi_uuid"]`` and
        ``uns["_scvi_manager_uuid"]``.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        check_counts(adata, layer)
        if kwargs.get("source_registry") is None:
            record = adata.uns.get(communities_key)
            if not isinstance(record, Mapping) or "communities" not in record or "tfs" not in record:
                raise KeyError(
                    f"adata.uns[{communities_key!r}] holds no TF communities; run `pertgrn.pp.reference_grn` and "
                    "`pertgrn.pp.tf_communities` first."
                )
            if not any(str(t) in adata.var_names for t in record["tfs"]):
                raise ValueError(f"No TF of adata.uns[{communities_key!r}]['tfs'] is among var_names.")
        adata_manager = AnnDataManager(
            fields=[LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True)], setup_method_args=setup_method_args
        )
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    def train(
        self,
        max_epochs: int = 100,
        *,
        lr: float = 1e-3,
        batch_size: int = 1024,
        train_size: float = 0.9,
        validation_size: float | None = None,
        plan_kwargs: dict | None = None,
        **kwargs,
    ) -> None:
        """Train (GPU when present) and keep the state of lowest validation loss.

        Parameters
        ----------
        max_epochs
            Epochs (paper: 100).
        lr
            Adam learning rate (1e-3).
        batch_size
            Minibatch size (1,024).
        train_size, validation_size
            Split of the cells (90 % training, 10 % validation).
        plan_kwargs
            Further arguments of :class:`scvi.train.TrainingPlan`.
        **kwargs
            Arguments of :meth:`scvi.model.base.UnsupervisedTrainingMixin.train` and of
            :class:`scvi.train.Trainer` (e.g. ``enable_progress_bar=False``).

        Returns
        -------
        ``None``; :attr:`best_epoch` is the epoch kept (``None`` without validation cells).
        """
        plan_kwargs = {"lr": lr, "weight_decay": 0.0, "eps": 1e-8, "n_epochs_kl_warmup": None, **(plan_kwargs or {})}
        best = BestValidationState()
        callbacks = [*kwargs.pop("callbacks", []), best]
        kwargs.setdefault("check_val_every_n_epoch", 1)
        kwargs.setdefault("log_every_n_steps", 1)
        super().train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_size=train_size,
            validation_size=validation_size,
            plan_kwargs=plan_kwargs,
            callbacks=callbacks,
            **kwargs,
        )
        self.best_epoch = best.epoch if best.state is not None else None

    @torch.inference_mode()
    def get_latent_representation(
        self, adata: AnnData | None = None, indices: Sequence[int] | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """Latents ``ẑ`` of each cell.

        Parameters
        ----------
        adata
            AnnData set up like the training data; ``None`` uses the model's.
        indices
            Cells to use; ``None`` uses all.
        batch_size
            Minibatch size; ``None`` uses scvi-tools' default.

        Returns
        -------
        ``n_cells × n_latent`` float32 array.
        """
        adata = self._validate_anndata(adata)
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size, shuffle=False)
        self.module.eval()
        latents = [self.module.inference(tensors[REGISTRY_KEYS.X_KEY])["z"].cpu() for tensors in loader]
        return torch.cat(latents).numpy().astype(np.float32)

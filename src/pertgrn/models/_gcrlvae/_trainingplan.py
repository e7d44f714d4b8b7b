"""Training plan of the gCRL VAEs: the reference's per-epoch ramps of α, β and the softmax temperature."""

from __future__ import annotations

import numpy as np
from scvi.train import TrainingPlan

from pertgrn.models._base._logging import EpochTermsMixin
from pertgrn.models._base._optim import FusedOptimizerMixin
from pertgrn.models._gcrlvae._module import GCRLVAEModule
from pertgrn.models._gcrlvae._schedules import alpha_schedule, beta_schedule, temperature_schedule


class GCRLVAETrainingPlan(FusedOptimizerMixin, EpochTermsMixin, TrainingPlan):
    """:class:`scvi.train.TrainingPlan` that sets the epoch's loss weights before each epoch.

    At epoch ``n`` of ``T`` (``trainer.max_epochs``) the module's centroid weight, KL weight and
    softmax temperature are ``α_n``, ``β_n`` and ``temp_n`` of
    :mod:`pertgrn.models._gcrlvae._schedules`. The optimiser is Adam with PyTorch's defaults
    (``eps = 1e-8``, no weight decay) at ``lr = 1e-3``, as in the reference, run as PyTorch's fused
    kernel where the device has one; scvi-tools' KL warm-up is off (``β`` has its own ramp).

    Parameters
    ----------
    module
        A :class:`~pertgrn.models._gcrlvae._module.GCRLVAEModule`.
    alpha_max
        Largest centroid-loss weight (gCRL: 20; discrepancy-VAE's MMD weight: 10).
    beta_max
        Largest KL weight (2).
    temperature_max
        Final softmax temperature of the intervention encoder (5).
    beta_schedule
        ``"ramp"`` (the reference) or ``"constant"`` (``β_max`` from the first epoch).
    lr, weight_decay, eps
        Adam settings.
    **kwargs
        Further keyword arguments of :class:`scvi.train.TrainingPlan`.
    """

    def __init__(
        self,
        module: GCRLVAEModule,
        *,
        alpha_max: float = 20.0,
        beta_max: float = 2.0,
        temperature_max: float = 5.0,
        beta_schedule: str = "ramp",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        **kwargs,
    ):
        for name, value in (("alpha_max", alpha_max), ("beta_max", beta_max)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative number, found {value!r}.")
        if not np.isfinite(temperature_max) or temperature_max <= 0:
            raise ValueError(f"`temperature_max` must be a positive number, found {temperature_max!r}.")
        if beta_schedule not in ("ramp", "constant"):
            raise ValueError(f"`beta_schedule` must be 'ramp' or 'constant', found {beta_schedule!r}.")
        kwargs.setdefault("n_epochs_kl_warmup", None)
        super().__init__(module, lr=lr, weight_decay=weight_decay, eps=eps, **kwargs)
        self.alpha_max = float(alpha_max)
        self.beta_max = float(beta_max)
        self.temperature_max = float(temperature_max)
        self.beta_kind = beta_schedule

    def schedules(self, n_epochs: int) -> dict[str, np.ndarray]:
        """``alpha``, ``beta`` and ``temperature`` for every epoch of a run of ``n_epochs``."""
        return {
            "alpha": alpha_schedule(n_epochs, self.alpha_max),
            "beta": beta_schedule(n_epochs, self.beta_max, self.beta_kind),
            "temperature": temperature_schedule(n_epochs, self.temperature_max),
        }

    def on_train_epoch_start(self) -> None:
        """Set this epoch's ``α``, ``β`` and temperature on the module."""
        n_epochs = int(self.trainer.max_epochs)
        epoch = min(int(self.current_epoch), n_epochs - 1)
        for name, values in self.schedules(n_epochs).items():
            getattr(self.module, name).fill_(float(values[epoch]))
        super().on_train_epoch_start()

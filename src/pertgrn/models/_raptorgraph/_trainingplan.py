"""Training plan of RAPTORGraph: AdamW, DAGMA's μ schedule and the M-matrix domain guard."""

from __future__ import annotations

from typing import Literal

import torch
from scvi.train import TrainingPlan

from pertgrn.models._base._logging import EpochTermsMixin
from pertgrn.models._base._optim import fused_where_possible
from pertgrn.models._raptorgraph._module import RaptorGraphModule
from pertgrn.nn import dagma_mu_schedule

MU_SCHEDULES = ("staged", "smooth", "constant")


class RaptorGraphTrainingPlan(EpochTermsMixin, TrainingPlan):
    """:class:`scvi.train.TrainingPlan` with RAPTORGraph's optimiser and DAGMA path following.

    - AdamW (paper Table S5; ``lr`` defaults to the paper's 1e-4 here, the model passes 1e-3),
      PyTorch's ``eps``, and weight decay 0.01 on every parameter except the DAG ``A`` (which has
      its own L1 penalty) and the learned shifts; PyTorch's fused kernel where the device has one
      (:func:`~pertgrn.models._base._optim.fused_where_possible`).
    - The DAGMA score weight ``μ_t`` follows :func:`~pertgrn.nn.dagma_mu_schedule` over the
      epochs of the run (staged: ``μ_0 · 0.1^⌊4e/E⌋``), passed to the module's loss.
    - After every optimiser step the domain guard keeps ``sI − A∘A`` an M-matrix
      (:meth:`~pertgrn.nn.DAGMALayer.domain_guard_`); rescales are counted in ``dagma_rescales``.
    - No KL warm-up and no gradient clipping (spec §4).

    Parameters
    ----------
    module
        A :class:`~pertgrn.models._raptorgraph._module.RaptorGraphModule`.
    lr, weight_decay, eps
        AdamW settings.
    mu_schedule
        ``"staged"`` (DAGMA's stages), ``"smooth"`` (continuous decay to the last stage) or
        ``"constant"`` (``μ_0`` throughout).
    mu_factor, mu_stages
        Decay per stage and number of stages.
    guard_target
        Fraction of ``s`` that ``ρ(A∘A)`` is rescaled to when it leaves the domain.
    **kwargs
        Further keyword arguments of :class:`scvi.train.TrainingPlan`.
    """

    #: the module's terms are logged once per epoch (``<term>_train`` …), which already report the
    #: loss's parts; scvi-tools' ELBO metrics would repeat them
    log_elbo_metrics = False

    def __init__(
        self,
        module: RaptorGraphModule,
        *,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        eps: float = 1e-8,
        mu_schedule: Literal["staged", "smooth", "constant"] = "staged",
        mu_factor: float = 0.1,
        mu_stages: int = 4,
        guard_target: float = 0.9,
        **kwargs,
    ):
        if mu_schedule not in MU_SCHEDULES:
            raise ValueError(f"`mu_schedule` must be one of {MU_SCHEDULES}, found {mu_schedule!r}.")
        if not 0 < mu_factor <= 1 or int(mu_stages) < 1:
            raise ValueError(f"Need 0 < mu_factor <= 1 and mu_stages >= 1, found {mu_factor} and {mu_stages}.")
        kwargs.setdefault("n_epochs_kl_warmup", None)
        super().__init__(module, optimizer="AdamW", lr=lr, weight_decay=weight_decay, eps=eps, **kwargs)
        self.mu_schedule, self.mu_factor, self.mu_stages = mu_schedule, float(mu_factor), int(mu_stages)
        self.guard_target = float(guard_target)
        self.loss_kwargs["dagma_mu"] = float(module.mu_init)
        if kwargs.get("n_epochs_kl_warmup") is None and kwargs.get("n_steps_kl_warmup") is None:
            self.loss_kwargs.pop("kl_weight", None)  # no warm-up: nothing to pass (or log) every step
        self._rescales = 0

    def dagma_mu(self, epoch: int) -> float:
        """``μ_t`` at ``epoch`` of a run of ``trainer.max_epochs`` epochs."""
        if self.mu_schedule == "constant":
            return float(self.module.mu_init)
        n_epochs = max(int(self.trainer.max_epochs or 1), 1)
        return dagma_mu_schedule(
            epoch,
            n_epochs,
            mu_init=float(self.module.mu_init),
            factor=self.mu_factor,
            n_stages=self.mu_stages,
            smooth=self.mu_schedule == "smooth",
        )

    def on_validation_epoch_start(self) -> None:
        """Validation uses the ``μ_t`` of the epoch it follows."""
        self.loss_kwargs["dagma_mu"] = self.dagma_mu(self.current_epoch)

    def configure_optimizers(self):
        """AdamW, without weight decay on ``A`` and on the shifts."""
        exempt = {id(self.module.dag.weight), id(self.module.modulator.shift)}
        params = [p for p in self.module.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if id(p) not in exempt], "weight_decay": self.weight_decay},
            {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0},
        ]
        return {"optimizer": fused_where_possible(torch.optim.AdamW, groups, lr=self.lr, eps=self.eps)}

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """Keep ``A`` inside DAGMA's domain after the optimiser step."""
        rho = self.module.dag.domain_guard_(target=self.guard_target)
        self._rescales += int(rho >= self.module.dag.s)

    def on_train_epoch_start(self) -> None:
        """Set this epoch's ``μ_t``."""
        self._rescales = 0
        self.loss_kwargs["dagma_mu"] = self.dagma_mu(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        """Log the training terms, ``μ_t`` and the number of domain-guard rescales of the epoch."""
        super().on_train_epoch_end()
        for name, value in (("dagma_mu", self.loss_kwargs["dagma_mu"]), ("dagma_rescales", self._rescales)):
            # the same in every process (A is kept in sync by the strategy)
            self.log(name, float(value), on_step=False, on_epoch=True, batch_size=1, sync_dist=self.use_sync_dist)

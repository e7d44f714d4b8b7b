"""Per-epoch logging of a module's loss terms, the same in one process and under data parallelism."""

from __future__ import annotations

import copy

import torch
from scvi.module.base import LossOutput


class EpochTermsMixin:
    """Log a module's extra loss terms once per epoch, as cell-weighted means over every process.

    Mix into a :class:`scvi.train.TrainingPlan` (before it in the bases). scvi-tools logs every
    entry of ``LossOutput.extra_metrics`` with one Lightning ``log`` call per term and step, inside
    ``torch.inference_mode``: on a CPU those calls cost more than a small model's step, and under a
    data-parallel strategy Lightning cannot synchronise the values it accumulated (they are
    inference tensors, which it must update in place). Here the terms of every minibatch are
    summed into one tensor, weighted by the minibatch's cells, and at the end of the epoch the sums
    are added over the processes and logged as ``<term>_train`` / ``<term>_validation``: the
    weighted mean that Lightning's per-epoch logging computes, over all cells of all processes.

    scvi-tools' ELBO metrics (torchmetrics objects, which synchronise themselves) are still logged
    its way unless :attr:`log_elbo_metrics` is ``False``.
    """

    #: Also log scvi-tools' ELBO metrics (``elbo_*``, ``reconstruction_loss_*``, ``kl_local_*``, …).
    log_elbo_metrics: bool = True

    @torch.inference_mode()
    def compute_and_log_metrics(self, loss_output: LossOutput, metrics: dict, mode: str) -> None:
        """Sum this minibatch's terms (weighted by its cells); log the ELBO metrics as scvi-tools does."""
        if self.on_step or not self.on_epoch:
            return super().compute_and_log_metrics(loss_output, metrics, mode)
        if self.log_elbo_metrics:
            without_terms = copy.copy(loss_output)
            object.__setattr__(without_terms, "extra_metrics", {})  # LossOutput is a frozen dataclass
            super().compute_and_log_metrics(without_terms, metrics, mode)
        if not loss_output.extra_metrics:
            return
        terms = getattr(self, "_epoch_terms", None)
        if terms is None:
            terms = self._epoch_terms = {}
        names = list(loss_output.extra_metrics)
        values = torch.stack([torch.as_tensor(loss_output.extra_metrics[k]).detach().reshape(()) for k in names])
        n = float(loss_output.n_obs_minibatch)
        values = values.to(torch.float64) * n
        if mode in terms:
            previous, total, count = terms[mode]
            if previous != names:
                raise RuntimeError(
                    f"The module's loss terms changed within an epoch: {previous} before, {names} now. "
                    "Every minibatch of a mode must report the same extra metrics."
                )
            values, n = total + values, count + n
        terms[mode] = (names, values, n)

    def log_epoch_terms(self, mode: str) -> None:
        """Log the epoch's cell-weighted mean of every term of ``mode`` (summed over processes) and reset it."""
        names, total, count = (getattr(self, "_epoch_terms", None) or {}).pop(mode, (None, None, None))
        if names is None:
            return
        total = torch.cat([total, total.new_tensor([count])])  # a normal tensor: synchronised in place
        if self.use_sync_dist:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        means = (total[:-1] / total[-1]).float().cpu()
        for name, value in zip(names, means, strict=True):
            # every process holds the same value now; sync_dist only tells Lightning so
            self.log(f"{name}_{mode}", value, on_step=False, on_epoch=True, batch_size=1, sync_dist=self.use_sync_dist)

    def on_train_epoch_end(self) -> None:
        """Log the epoch's loss terms of the training cells."""
        super().on_train_epoch_end()
        self.log_epoch_terms("train")

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's loss terms of the validation cells."""
        super().on_validation_epoch_end()
        self.log_epoch_terms("validation")

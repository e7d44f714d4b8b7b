"""Per-epoch logging of a module's loss terms, the same in one process and under data parallelism."""

from __future__ import annotations

import torch
from scvi.module.base import LossOutput

#: the loss's place among the summed terms (logged as ``train_loss`` / ``validation_loss``)
_LOSS = "\0loss"


class EpochTermsMixin:
    """Log a module's loss terms once per epoch, as cell-weighted means over every process.

    Mix into a :class:`scvi.train.TrainingPlan` (before it in the bases). scvi-tools logs every
    entry of ``LossOutput.extra_metrics`` and each of its four ELBO metrics with one Lightning
    ``log`` call per step, inside ``torch.inference_mode``: on a CPU those calls (about a
    millisecond each) cost more than a small model's step, and under a data-parallel strategy
    Lightning cannot synchronise the extra terms it accumulated (they are inference tensors, which
    it must update in place). Here every minibatch's terms are added to one tensor and, at the end
    of the epoch, the sums are added over the processes and logged once:

    - ``<term>_train`` / ``<term>_validation``: the mean of each extra term weighted by the
      minibatches' cells, as Lightning's per-epoch logging computes it;
    - ``train_loss`` / ``validation_loss``: the loss, weighted by the minibatches' cells (as
      Lightning weights it by the batch size it finds);
    - with :attr:`log_elbo_metrics`, scvi-tools' ELBO metrics (``elbo_*``,
      ``reconstruction_loss_*``, ``kl_local_*``, ``kl_global_*``): its own ``ElboMetric`` objects,
      updated every minibatch as scvi-tools updates them and logged once, at the end of the epoch
      (torchmetrics synchronises them over processes);
    - ``kl_weight`` (when the loss takes one) at the end of each training epoch, not every step.

    With ``on_step=True`` in the plan, scvi-tools' per-step logging is used unchanged.
    """

    #: Also log scvi-tools' ELBO metrics (``elbo_*``, ``reconstruction_loss_*``, ``kl_local_*``, …).
    log_elbo_metrics: bool = True

    def _per_epoch(self) -> bool:
        return self.on_epoch and not self.on_step

    def training_step(self, batch, batch_idx):
        """scvi-tools' training step, its loss and metrics added to the epoch's sums instead of logged."""
        if not self._per_epoch():
            return super().training_step(batch, batch_idx)
        if "kl_weight" in self.loss_kwargs:
            self.loss_kwargs.update({"kl_weight": self.kl_weight})
        _, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self.compute_and_log_metrics(loss_output, self.train_metrics, "train")
        return loss_output.loss

    def validation_step(self, batch, batch_idx):
        """scvi-tools' validation step, its loss and metrics added to the epoch's sums instead of logged."""
        if not self._per_epoch():
            return super().validation_step(batch, batch_idx)
        _, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self.compute_and_log_metrics(loss_output, self.val_metrics, "validation")

    @torch.inference_mode()
    def compute_and_log_metrics(self, loss_output: LossOutput, metrics: dict, mode: str) -> None:
        """Add this minibatch's terms to the epoch's sums (logged at the end of the epoch)."""
        if not self._per_epoch():
            return super().compute_and_log_metrics(loss_output, metrics, mode)
        if self.log_elbo_metrics:  # as scvi-tools updates them; logged in log_epoch_terms
            metrics[f"elbo_{mode}"].update(
                reconstruction_loss=loss_output.reconstruction_loss_sum,
                kl_local=loss_output.kl_local_sum,
                kl_global=loss_output.kl_global_sum,
                n_obs_minibatch=loss_output.n_obs_minibatch,
            )
        names = [_LOSS, *loss_output.extra_metrics]
        n = float(loss_output.n_obs_minibatch)
        device = torch.as_tensor(loss_output.loss).device  # the sums stay there: no copy per step
        values = {_LOSS: loss_output.loss, **loss_output.extra_metrics}
        parts = [torch.as_tensor(values[k], device=device).reshape(()) for k in names]
        # the loss and the terms are per-cell means: weight them by the minibatch's cells
        values = torch.stack(parts).detach().to(torch.float64) * n
        terms = getattr(self, "_epoch_terms", None)
        if terms is None:
            terms = self._epoch_terms = {}
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
        """Log the epoch's means of ``mode`` (sums added over processes first) and reset them."""
        names, total, count = (getattr(self, "_epoch_terms", None) or {}).pop(mode, (None, None, None))
        if names is None:
            return
        total = torch.cat([total, total.new_tensor([count])])  # a normal tensor: synchronised in place
        if self.use_sync_dist:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        means = (total[:-1] / total[-1]).float().cpu()
        keys = [f"{mode}_loss" if name == _LOSS else f"{name}_{mode}" for name in names]
        logged = dict(zip(keys, means, strict=True))
        if self.log_elbo_metrics:
            metrics = self.train_metrics if mode == "train" else self.val_metrics
            self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=self.use_sync_dist)
        if mode == "train" and "kl_weight" in self.loss_kwargs:
            logged["kl_weight"] = torch.as_tensor(float(self.kl_weight))
        for name, value in logged.items():
            # every process holds the same value now; sync_dist only tells Lightning so
            self.log(
                name,
                value,
                on_step=False,
                on_epoch=True,
                batch_size=1,
                sync_dist=self.use_sync_dist,
                prog_bar=name == "train_loss",
            )

    def on_train_epoch_end(self) -> None:
        """Log the epoch's loss terms of the training cells."""
        super().on_train_epoch_end()
        self.log_epoch_terms("train")

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's loss terms of the validation cells."""
        super().on_validation_epoch_end()
        self.log_epoch_terms("validation")

"""Training plan of GPO-VAE: scvi-tools' plan with particles and the reference optimiser settings."""

from __future__ import annotations

import copy

import torch
from scvi.module.base import LossOutput
from scvi.train import TrainingPlan

from pertgrn.models._gpovae._module import GPOVAEModule

#: parameters of the GRN part of the module, optimised at ``grn_lr``
GRN_PARAMETERS = ("grn_logits", "grn_effects")


class GPOVAETrainingPlan(TrainingPlan):
    """:class:`scvi.train.TrainingPlan` that draws ``n_particles`` samples of the global latents per step.

    Defaults follow the reference implementation (dmis-lab/GPO-VAE,
    ``PerturbationLightningModule`` and ``demo/gpo_vae_replogle.yaml``): Adam with ``lr = 3e-4``,
    ``weight_decay = 1e-6`` and PyTorch's ``eps = 1e-8`` (scvi-tools' default of ``0.01`` would
    damp the small gradients that reach ``A`` through the K-hop term), no KL warm-up.
    Every term of the loss is logged per epoch as ``<term>_train`` / ``<term>_validation``.

    Two things make a step cheaper without changing what is computed: Adam runs as PyTorch's fused
    kernel where the parameters' device has one (CPU with PyTorch ≥ 2.4, CUDA), the same update in
    one pass over each parameter instead of about ten; and the loss terms are summed over the
    epoch in one tensor and logged once at its end (the minibatch-size-weighted mean, what
    Lightning's per-epoch logging computes), instead of one Lightning ``log`` call per term and step.

    Parameters
    ----------
    module
        A :class:`~pertgrn.models._gpovae._module.GPOVAEModule`.
    n_particles
        Samples of ``M``, ``E``, ``u`` and ``z_b`` per minibatch.
    lr, weight_decay, eps
        Adam settings.
    grn_lr
        Learning rate of the GRN parameters (edge logits, signed effects, knockdowns); ``None``
        uses ``lr`` for every parameter, as the reference does.
    **kwargs
        Further keyword arguments of :class:`scvi.train.TrainingPlan`.
    """

    def __init__(
        self,
        module: GPOVAEModule,
        *,
        n_particles: int = 5,
        lr: float = 3e-4,
        grn_lr: float | None = None,
        weight_decay: float = 1e-6,
        eps: float = 1e-8,
        **kwargs,
    ):
        if int(n_particles) < 1:
            raise ValueError(f"`n_particles` must be a positive integer, found {n_particles}.")
        if grn_lr is not None and not grn_lr > 0:
            raise ValueError(f"`grn_lr` must be a positive number or None, found {grn_lr!r}.")
        if grn_lr is not None and kwargs.get("reduce_lr_on_plateau"):
            raise ValueError("`grn_lr` and `reduce_lr_on_plateau` cannot be combined; pass grn_lr=None.")
        kwargs.setdefault("n_epochs_kl_warmup", None)
        super().__init__(module, lr=lr, weight_decay=weight_decay, eps=eps, **kwargs)
        self.n_particles = int(n_particles)
        self.grn_lr = grn_lr
        #: per mode ("train", "validation"): term names, Σ value · minibatch size, Σ minibatch size
        self._epoch_terms: dict[str, tuple[list[str], torch.Tensor, float]] = {}

    def _optimizer_creator_fn(self, optimizer_cls):
        """scvi-tools' optimizer (``lr``, ``eps``, ``weight_decay``), fused where the parameters' device allows it."""

        def create(params):
            params = list(params)
            settings = {"lr": self.lr, "eps": self.eps, "weight_decay": self.weight_decay}
            devices = {p.device.type for p in params}
            if devices <= {"cpu", "cuda"} and all(p.dtype in (torch.float32, torch.float64) for p in params):
                try:
                    return optimizer_cls(params, fused=True, **settings)
                except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device in this PyTorch
                    pass
            return optimizer_cls(params, **settings)

        return create

    @torch.inference_mode()
    def compute_and_log_metrics(self, loss_output: LossOutput, metrics: dict, mode: str) -> None:
        """scvi-tools' ELBO metrics per step; the module's other terms summed here and logged at the epoch's end."""
        if self.on_step or not self.on_epoch or not loss_output.extra_metrics:
            return super().compute_and_log_metrics(loss_output, metrics, mode)
        without_terms = copy.copy(loss_output)
        object.__setattr__(without_terms, "extra_metrics", {})  # LossOutput is a frozen dataclass
        super().compute_and_log_metrics(without_terms, metrics, mode)
        names = list(loss_output.extra_metrics)
        values = torch.stack([torch.as_tensor(loss_output.extra_metrics[k]).detach().reshape(()) for k in names])
        n = float(loss_output.n_obs_minibatch)
        values = values.to(torch.float64) * n
        if mode in self._epoch_terms:
            _, total, count = self._epoch_terms[mode]
            values, n = total + values, count + n
        self._epoch_terms[mode] = (names, values, n)

    def _log_epoch_terms(self, mode: str) -> None:
        """Log the epoch's minibatch-size-weighted mean of every term (over all processes under DDP)."""
        if mode not in self._epoch_terms:
            return
        names, total, count = self._epoch_terms.pop(mode)
        total = torch.cat([total, total.new_tensor([count])])
        if self.use_sync_dist:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        means = (total[:-1] / total[-1]).float().cpu()
        for name, value in zip(names, means, strict=True):
            # every process holds the same value now; sync_dist only tells Lightning so
            self.log(f"{name}_{mode}", value, on_step=False, on_epoch=True, sync_dist=self.use_sync_dist)

    def on_train_epoch_end(self) -> None:
        """Log the epoch's loss terms of the training cells."""
        super().on_train_epoch_end()
        self._log_epoch_terms("train")

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's loss terms of the validation cells."""
        super().on_validation_epoch_end()
        self._log_epoch_terms("validation")

    def configure_optimizers(self):
        """scvi-tools' optimizer, with the GRN parameters in a group of their own at ``grn_lr`` when it is set.

        The edge logits receive small, consistent gradients; at the networks' learning rate Adam moves
        them by about ``lr`` per step, too little to leave the prior within a CPU-sized training run.
        """
        config = super().configure_optimizers()
        if self.grn_lr is None:
            return config
        grn = [p for name, p in self.module.named_parameters() if name in GRN_PARAMETERS and p.requires_grad]
        ids = {id(p) for p in grn}
        optimizer = config["optimizer"]
        optimizer.param_groups[0]["params"] = [p for p in optimizer.param_groups[0]["params"] if id(p) not in ids]
        optimizer.add_param_group({"params": grn, "lr": self.grn_lr})
        return config

    def forward(self, *args, **kwargs):
        """Run the module with ``n_particles`` samples."""
        kwargs.pop("get_inference_input_kwargs", None)
        inference_kwargs = dict(kwargs.pop("inference_kwargs", None) or {})
        inference_kwargs.setdefault("n_particles", self.n_particles)
        return self.module(*args, inference_kwargs=inference_kwargs, **kwargs)

"""The discrepancy-VAE core with gCRL's changes, as a pure-torch scvi-tools module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from pertgrn.models._base import CONDITION_REGISTRY_KEY, DESIGN_KEY, PARTNER_LIBRARY_KEY, PARTNER_X_KEY
from pertgrn.models._gcrlvae._alignment import tmex_torch
from pertgrn.models._gcrlvae._permutation import LatentPermutation

#: registry key of the TF-community activities (``obsm``)
ACTIVITY_KEY = "tf_activity"
PARTNER_ACTIVITY_KEY = f"partner_{ACTIVITY_KEY}"
ROUTINGS = ("hard", "soft", "hybrid")
#: normalisation of expression inside the module: log(1 + 10^4 · counts / library)
TARGET_SUM = 1e4


def log_normalise(counts: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
    """``log(1 + 10^4 · counts / library)`` (0 for an empty cell)."""
    scale = torch.where(library > 0, TARGET_SUM / library.clamp_min(1e-12), torch.zeros_like(library))
    return torch.log1p(counts * scale.unsqueeze(-1))


def _init_reference(layer: nn.Linear) -> nn.Linear:
    """The reference's initialisation of encoder and decoder layers: weights N(0, 0.02²), bias 0."""
    nn.init.normal_(layer.weight, mean=0.0, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


class GCRLVAEModule(BaseModuleClass):
    """Discrepancy-VAE (Zhang et al. 2023) with gCRL's latent alignment (see :class:`~pertgrn.models.GCRLVAE`).

    A control cell ``x`` is encoded to an exogenous latent ``z ~ q(z | x)``; its causal latent is
    ``u = z (I − triu(G, 1))⁻¹`` and ``x̂ = dec(u)``. A perturbation shifts the exogenous latent,
    ``z̃ = z + Σ_g b_g s_g`` over the perturbed targets ``g``, and ``ŷ = dec(z̃ (I − triu(G, 1))⁻¹)``
    predicts the perturbed cells. ``b_g`` routes target ``g`` to latents: the softmax of the
    intervention encoder (``"soft"``, the discrepancy-VAE), the one-hot latent ``π[k(g)]`` of the
    target's community ``k(g)`` (``"hard"``, gCRL) or their mean (``"hybrid"``); ``s_g`` is a learned
    shift per target.

    Parameters
    ----------
    n_genes
        Genes of the expression (output) space.
    n_targets
        Perturbation targets (design columns).
    n_latent
        ``d``.
    input_index
        Gene columns the encoder reads (``None``: all genes).
    target_community
        ``n_targets × n_columns`` one-hot community column of each target (for hard routing and the
        alignment); ``None`` without communities.
    target_assigned
        ``n_targets`` booleans: targets routed through their community; the others (rows of
        ``target_community`` that are 0) use the intervention encoder's softmax. ``None``: all.
    routing
        ``"hard"``, ``"soft"`` or ``"hybrid"``.
    learned_permutation
        Learn ``π`` (Hungarian + Sinkhorn straight-through) or keep the identity.
    alignment_weight
        ``λ_MCC`` of the alignment loss ``1 − T-MEX(TFA P, U)``; 0 switches it off.
    sparsity_weight
        ``λ`` of ``‖triu(G, 1)‖₁``.
    align_latent
        ``"u"`` (causal latent ``μ (I − triu G)⁻¹``) or ``"z"`` (``μ``) is aligned.
    n_hidden
        Width of every hidden layer (reference: 128).
    sinkhorn_tau, sinkhorn_iterations
        Relaxation of the learned permutation.
    """

    def __init__(
        self,
        *,
        n_genes: int,
        n_targets: int,
        n_latent: int,
        input_index: torch.Tensor | None = None,
        target_community: torch.Tensor | None = None,
        target_assigned: torch.Tensor | None = None,
        routing: str = "hard",
        learned_permutation: bool = True,
        alignment_weight: float = 1.0,
        sparsity_weight: float = 1e-3,
        align_latent: str = "u",
        n_hidden: int = 128,
        sinkhorn_tau: float = 0.1,
        sinkhorn_iterations: int = 20,
    ):
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"`routing` must be one of {ROUTINGS}, found {routing!r}.")
        if routing != "soft" and target_community is None:
            raise ValueError(f"routing={routing!r} routes targets through their communities; none were given.")
        self.n_genes = int(n_genes)
        self.n_targets = int(n_targets)
        #: library size behind the log-normalised expression (read by ``tl.distribution_distances``)
        self.target_sum = TARGET_SUM
        self.n_latent = int(n_latent)
        self.routing = routing
        self.alignment_weight = float(alignment_weight)
        self.sparsity_weight = float(sparsity_weight)
        self.align_latent = align_latent
        if input_index is None:
            input_index = torch.arange(self.n_genes)
        self.register_buffer("input_index", torch.as_tensor(input_index, dtype=torch.long))
        if target_community is not None:
            if target_community.shape[1] != self.n_latent:
                raise ValueError(
                    f"{target_community.shape[1]} community activity columns for {self.n_latent} latents; "
                    "gCRL needs one latent per column."
                )
            self.register_buffer("target_community", torch.as_tensor(target_community, dtype=torch.float32))
            if target_assigned is None:
                target_assigned = torch.ones(self.n_targets, dtype=torch.bool)
            self.register_buffer(
                "target_assigned", torch.as_tensor(target_assigned, dtype=torch.float32).reshape(-1, 1)
            )
        else:
            self.target_community = None
            self.target_assigned = None
        # the training plan sets these each epoch (the ramps of the reference); kept in the state dict
        self.register_buffer("alpha", torch.tensor(0.0))
        self.register_buffer("beta", torch.tensor(0.0))
        self.register_buffer("temperature", torch.tensor(1.0))

        n_input = int(self.input_index.numel())
        leaky = nn.LeakyReLU(0.2)
        self.encoder = nn.Sequential(_init_reference(nn.Linear(n_input, n_hidden)), leaky)
        self.fc_mean = _init_reference(nn.Linear(n_hidden, self.n_latent))
        self.fc_var = _init_reference(nn.Linear(n_hidden, self.n_latent))
        self.decoder = nn.Sequential(
            _init_reference(nn.Linear(self.n_latent, n_hidden)),
            leaky,
            _init_reference(nn.Linear(n_hidden, self.n_genes)),
            nn.LeakyReLU(0.2),
        )
        self.G = nn.Parameter(0.1 * torch.randn(self.n_latent, self.n_latent))
        # intervention encoder (PyTorch's default initialisation, as in the reference)
        self.c1 = nn.Linear(self.n_targets, n_hidden)
        self.c2 = nn.Linear(n_hidden, self.n_latent)
        self.c_shift = nn.Parameter(torch.ones(self.n_targets))
        self.permutation = LatentPermutation(
            self.n_latent,
            learned=learned_permutation and target_community is not None,
            tau=sinkhorn_tau,
            n_iterations=sinkhorn_iterations,
        )

    # ------------------------------------------------------------------------------------------
    # pieces
    # ------------------------------------------------------------------------------------------
    def dag(self) -> torch.Tensor:
        """``triu(G, 1)``: the weighted DAG among latents (row = cause, column = effect)."""
        return torch.triu(self.G, diagonal=1)

    def causal(self, z: torch.Tensor) -> torch.Tensor:
        """``u = z (I − triu(G, 1))⁻¹`` by triangular solve (``I − triu(G, 1)`` is unit upper-triangular)."""
        eye = torch.eye(self.n_latent, device=z.device, dtype=z.dtype)
        return torch.linalg.solve_triangular(eye - self.dag().to(z.dtype), z, upper=True, left=False)

    def encode(self, expression: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, var)`` of ``q(z | x)`` from log-normalised expression (all genes; the encoder picks its inputs)."""
        hidden = self.encoder(expression[:, self.input_index])
        return self.fc_mean(hidden), F.softplus(self.fc_var(hidden))

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        """Log-normalised expression from causal latents."""
        return self.decoder(u)

    def soft_routing(self) -> torch.Tensor:
        """``n_targets × d``: the intervention encoder's softmax over latents for each target (one-hot input)."""
        eye = torch.eye(self.n_targets, device=self.c_shift.device)
        logits = self.c2(F.leaky_relu(self.c1(eye), 0.2))
        return torch.softmax(logits * self.temperature, dim=1)

    def routing_matrix(self, permutation: torch.Tensor | None = None) -> torch.Tensor:
        """``n_targets × d``: the latent direction ``b_g`` each target shifts (before its magnitude ``s_g``)."""
        if self.routing == "soft":
            return self.soft_routing()
        routed = self.target_community @ (self.permutation() if permutation is None else permutation)
        all_assigned = bool((self.target_assigned > 0).all())
        if self.routing == "hybrid" or not all_assigned:
            soft = self.soft_routing()
            if self.routing == "hybrid":
                routed = 0.5 * (routed + soft)
            if not all_assigned:  # targets in no community: the intervention encoder routes them
                routed = self.target_assigned * routed + (1.0 - self.target_assigned) * soft
        return routed

    def shift(self, design: torch.Tensor, permutation: torch.Tensor | None = None) -> torch.Tensor:
        """``Σ_g D_g b_g s_g``: the exogenous shift of each design row (additive over a combination's targets)."""
        return design @ (self.routing_matrix(permutation) * self.c_shift.unsqueeze(1))

    # ------------------------------------------------------------------------------------------
    # scvi-tools module interface
    # ------------------------------------------------------------------------------------------
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        return {
            "x": tensors[PARTNER_X_KEY][:, 0],
            "library": tensors[PARTNER_LIBRARY_KEY][:, 0],
        }

    @auto_move_data
    def inference(self, x: torch.Tensor, library: torch.Tensor, deterministic: bool = False) -> dict[str, torch.Tensor]:
        """Encode the control partners: ``μ``, ``var`` and a sample ``z``."""
        expression = log_normalise(x, library)
        mu, var = self.encode(expression)
        z = mu if deterministic else mu + var.sqrt() * torch.randn_like(mu)
        return {"x_norm": expression, "mu": mu, "var": var, "z": z}

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict[str, torch.Tensor], **kwargs
    ) -> dict[str, torch.Tensor]:
        return {"z": inference_outputs["z"], "design": tensors[DESIGN_KEY]}

    @auto_move_data
    def generative(self, z: torch.Tensor, design: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x̂ = dec(z (I − triu G)⁻¹)`` and ``ŷ = dec((z + shift) (I − triu G)⁻¹)``; ``P`` once per step."""
        permutation = self.permutation() if self.target_community is not None else None
        # both decodings in one pass: row-wise maps, so stacking the rows changes nothing but the call count
        decoded = self.decode(self.causal(torch.cat([z, z + self.shift(design, permutation)])))
        x_hat, y_hat = decoded[: z.shape[0]], decoded[z.shape[0] :]
        return {"x_hat": x_hat, "y_hat": y_hat, "permutation": permutation}

    def alignment(
        self, mu: torch.Tensor, activity: torch.Tensor, permutation: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``T-MEX(TFA P, U)``: community column ``k`` is compared with latent ``π[k]``."""
        latent = self.causal(mu) if self.align_latent == "u" else mu
        permutation = self.permutation() if permutation is None else permutation
        return tmex_torch(latent, activity @ permutation)

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.Tensor],
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """``MSE(x̂, x) + β KL + α L_cent + λ ‖triu G‖₁ + λ_MCC (1 − T-MEX)`` (gCRL appendix A.6).

        ``L_cent`` is the squared distance between the mean ``ŷ`` and the mean observed ``y`` per
        gene, averaged over genes, per condition of the minibatch (the reference's minibatches hold
        one condition), then averaged over conditions.
        """
        x_norm = inference_outputs["x_norm"]
        mu, var = inference_outputs["mu"], inference_outputs["var"]
        y = log_normalise(tensors[REGISTRY_KEYS.X_KEY], tensors[REGISTRY_KEYS.X_KEY].sum(1))
        batch = y.shape[0]
        reconstruction = F.mse_loss(generative_outputs["x_hat"], x_norm)
        kl = -0.5 * (1.0 + var.log() - mu.pow(2) - var).sum() / batch
        centroid = self.centroid_loss(generative_outputs["y_hat"], y, tensors[CONDITION_REGISTRY_KEY])
        l1 = self.dag().abs().sum()
        loss = reconstruction + self.beta * kl_weight * kl + self.alpha * centroid + self.sparsity_weight * l1
        terms = {
            "mse": reconstruction.detach(),
            "kl": kl.detach(),
            "centroid": centroid.detach(),
            "l1_dag": l1.detach(),
            "alpha": self.alpha.detach().clone(),
            "beta": self.beta.detach().clone(),
        }
        if self.alignment_weight > 0 and PARTNER_ACTIVITY_KEY in tensors:
            activity = tensors[PARTNER_ACTIVITY_KEY][:, 0].to(mu.dtype)
            tmex = self.alignment(mu, activity, generative_outputs.get("permutation"))
            loss = loss + self.alignment_weight * (1.0 - tmex)
            terms["tmex"] = tmex.detach()
        return LossOutput(
            loss=loss,
            reconstruction_loss=reconstruction.detach().expand(batch),
            kl_local=kl.detach().expand(batch),
            extra_metrics=terms,
            n_obs_minibatch=batch,
        )

    @staticmethod
    def centroid_loss(y_hat: torch.Tensor, y: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Mean over the minibatch's conditions of ``mean_genes((mean ŷ − mean y)²)``."""
        codes, groups = torch.unique(condition.reshape(-1).long(), return_inverse=True)
        onehot = F.one_hot(groups, codes.numel()).to(y.dtype)  # B × C
        counts = onehot.sum(0).unsqueeze(1)
        delta = (onehot.T @ (y_hat - y)) / counts
        return delta.pow(2).mean(1).mean()

    # ------------------------------------------------------------------------------------------
    # prediction
    # ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_expression(self, design: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Log-normalised expression ``dec((z + shift) (I − triu G)⁻¹)`` of each design row and exogenous latent."""
        return self.decode(self.causal(z + self.shift(design)))

"""RAPTORGraph as an scvi-tools module: pure torch, sees tensor dictionaries only."""

from __future__ import annotations

from typing import Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from pertgrn.models._base import DESIGN_KEY, PARTNER_LIBRARY_KEY, PARTNER_X_KEY
from pertgrn.nn import DAGMALayer, GraphPathwayEncoder, LatentModulator, mk_mmd_loss
from pertgrn.nn._graph_pathway import perturbed_first_gather

#: ``|A_ij|`` above which an edge of the latent DAG is reported (DAGMA's ``w_threshold``)
EDGE_THRESHOLD = 0.3


class RaptorGraphModule(BaseModuleClass):
    """Generative model and loss of RAPTORGraph (spec §2–§4).

    For a minibatch of perturbed cells ``y`` of one condition with multi-hot label ``c`` and their
    OT-paired control cells ``x_c``:

    1. both are log-normalised, ``log1p(counts / library · target_sum)``;
    2. the preconditioned :class:`~pertgrn.nn.GraphPathwayEncoder` maps ``x_c`` (targets first)
       to ``(μ_z, σ_z)``, ``z = μ_z + σ_z ε``;
    3. the :class:`~pertgrn.nn.LatentModulator` normalises, ``z̄ = Norm(z)``, and shifts the
       targets' latents, ``z_int = z̄ + P_d(c ⊙ s)``;
    4. the :class:`~pertgrn.nn.DAGMALayer` propagates, ``u = z (I − A)⁻¹``, for ``z̄`` and ``z_int``;
    5. a dense decoder ``Linear(d → h) → SiLU → Linear(h → n)`` returns log-normalised expression
       ``x̂_obs`` and ``x̂_int``.

    The loss is ``α · MSE(x̂_obs, x_c) + β · KL(q(z) ‖ N(0, I)) + γ · MK-MMD(x̂_int, y) +
    δ · L_DAGMA`` with ``L_DAGMA = μ_t (S(A; z̄) + λ₁ ‖A‖₁) + h_s(A)`` on the detached ``z̄``.

    Parameters
    ----------
    n_genes
        Number of genes (decoder outputs, in ``var`` order).
    target_columns
        For each of the ``k`` targets (latents ``0 … k − 1``), its gene column, or ``-1`` when the
        target is not a measured gene.
    other_columns
        Gene columns of the genes that are not targets (the encoder's unperturbed inputs).
    target_sum
        Counts per cell of the log-normalisation.
    n_latent
        Number of latents ``d ≥ k``.
    n_subgraphs, n_interaction_layers
        GraphPathway encoder sizes (``m`` and the depth of the interaction block).
    decoder_n_hidden
        Width of the decoder's hidden layer.
    norm
        Normalisation of ``z`` before the shift (:class:`~pertgrn.nn.LatentModulator`).
    shift_init
        Initial learned shift of every target latent.
    dag_init_range, dagma_s
        Initialisation half-width of ``A`` and the DAGMA scale ``s``.
    alpha_rec, beta_kl, gamma_mmd, delta_dagma
        Weights of the four terms of eq. 6.
    mu_init
        DAGMA score weight used when the training plan passes none (``μ_0``).
    lambda1
        L1 weight of ``A`` in ``L_DAGMA``.
    mmd_fix_sigma, mmd_kernel_num
        Bandwidth ladder of the MK-MMD (:func:`~pertgrn.nn.mk_mmd_loss`).
    gamma_pair
        Weight of the optional paired term ``MSE(x̂_int, y)`` (an extension, spec A12; 0 = off).
    """

    def __init__(
        self,
        n_genes: int,
        target_columns: torch.Tensor,
        other_columns: torch.Tensor,
        target_sum: float,
        *,
        n_latent: int,
        n_subgraphs: int = 8,
        n_interaction_layers: int = 1,
        decoder_n_hidden: int = 904,
        norm: Literal["batch", "layer", "none"] = "batch",
        shift_init: float = 1.0,
        dag_init_range: float = 0.1,
        dagma_s: float = 1.0,
        alpha_rec: float = 1.0,
        beta_kl: float = 0.447,
        gamma_mmd: float = 1.0,
        delta_dagma: float = 1.0,
        mu_init: float = 0.27,
        lambda1: float = 0.052,
        mmd_fix_sigma: float = 200.0,
        mmd_kernel_num: int = 10,
        gamma_pair: float = 0.0,
    ):
        super().__init__()
        target_columns = torch.as_tensor(target_columns, dtype=torch.long).reshape(-1)
        other_columns = torch.as_tensor(other_columns, dtype=torch.long).reshape(-1)
        self.n_genes, self.n_targets, self.n_latent = int(n_genes), int(target_columns.numel()), int(n_latent)
        self.alpha_rec, self.beta_kl, self.gamma_mmd, self.delta_dagma = alpha_rec, beta_kl, gamma_mmd, delta_dagma
        self.mu_init, self.lambda1, self.gamma_pair = mu_init, lambda1, gamma_pair
        self.mmd_fix_sigma, self.mmd_kernel_num = float(mmd_fix_sigma), int(mmd_kernel_num)
        self.register_buffer("target_columns", target_columns)
        self.register_buffer("other_columns", other_columns)
        # encoder_input's gather, checked once here rather than at every step, where the checks would
        # wait on the GPU; not saved, rebuilt from the columns
        columns, measured = perturbed_first_gather(target_columns, other_columns, self.n_genes)
        self.register_buffer("_encoder_columns", columns, persistent=False)
        self.register_buffer("_encoder_measured", measured.to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("target_sum", torch.tensor(float(target_sum)))

        self.encoder = GraphPathwayEncoder(
            n_input=self.n_targets + other_columns.numel(),
            n_targets=self.n_targets,
            n_latent=self.n_latent,
            n_subgraphs=n_subgraphs,
            n_interaction_layers=n_interaction_layers,
            unmeasured_targets=(target_columns < 0).numpy(),
        )
        self.modulator = LatentModulator(self.n_targets, self.n_latent, norm=norm, shift_init=shift_init)
        self.dag = DAGMALayer(self.n_latent, init_range=dag_init_range, s=dagma_s)
        self.decoder = nn.Sequential(
            nn.Linear(self.n_latent, decoder_n_hidden), nn.SiLU(), nn.Linear(decoder_n_hidden, self.n_genes)
        )

    # ------------------------------------------------------------------------------------------
    # building blocks
    # ------------------------------------------------------------------------------------------
    def log_normalise(self, counts: torch.Tensor, library: torch.Tensor | None = None) -> torch.Tensor:
        """``log1p(counts / library · target_sum)`` (``library`` = the row sums when ``None``)."""
        if library is None:
            library = counts.sum(dim=-1)
        return torch.log1p(counts / library.clamp_min(1.0).unsqueeze(-1) * self.target_sum)

    def encoder_input(self, x_log: torch.Tensor) -> torch.Tensor:
        """Reorder log-normalised expression for the encoder: targets first (zeros where unmeasured).

        :func:`~pertgrn.nn.order_perturbed_first` with the module's columns, its gather computed once.
        """
        return x_log[..., self._encoder_columns] * self._encoder_measured.to(x_log.dtype)

    def decode(
        self, z_bar: torch.Tensor, design: torch.Tensor | None = None, *, propagate: bool = True
    ) -> torch.Tensor:
        """Log-normalised expression decoded from latents ``z̄``, shifted by ``design`` (``B × k``) if given."""
        z = z_bar if design is None else z_bar + self.modulator.intervention(design)
        return self.decoder(self.dag(z, propagate=propagate))

    # ------------------------------------------------------------------------------------------
    # scvi-tools module interface
    # ------------------------------------------------------------------------------------------
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor | None]:
        """Encode each cell's (first) control partner when the batch carries partners, else the cell itself."""
        if PARTNER_X_KEY in tensors:
            return {"x": tensors[PARTNER_X_KEY][:, 0], "library": tensors[PARTNER_LIBRARY_KEY][:, 0]}
        return {"x": tensors[REGISTRY_KEYS.X_KEY], "library": None}

    @auto_move_data
    def inference(
        self, x: torch.Tensor, library: torch.Tensor | None = None, deterministic: bool = False
    ) -> dict[str, torch.Tensor]:
        """Encode counts ``x``: ``μ_z``, ``σ_z``, a sample ``z`` (``μ_z`` if ``deterministic``), ``z̄ = Norm(z)``."""
        x_log = self.log_normalise(x, library)
        loc, scale = self.encoder(self.encoder_input(x_log))
        z = loc if deterministic else loc + scale * torch.randn_like(scale)
        z_bar, _ = self.modulator(z)
        return {"x_log": x_log, "qz_loc": loc, "qz_scale": scale, "z": z, "z_bar": z_bar}

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict[str, torch.Tensor], **kwargs
    ) -> dict[str, torch.Tensor]:
        return {"z_bar": inference_outputs["z_bar"], "design": tensors[DESIGN_KEY]}

    @auto_move_data
    def generative(self, z_bar: torch.Tensor, design: torch.Tensor) -> dict[str, torch.Tensor]:
        """Observational and interventional decodings ``x̂_obs = Dec(z̄ (I − A)⁻¹)``, ``x̂_int = Dec(z_int (I − A)⁻¹)``."""
        z_int = z_bar + self.modulator.intervention(design)
        # both in one pass: row-wise maps, so stacking the rows changes nothing but the call count
        n = z_bar.shape[0]
        u = self.dag(torch.cat([z_bar, z_int]))
        x = self.decoder(u)
        return {"u_obs": u[:n], "u_int": u[n:], "x_obs": x[:n], "x_int": x[n:]}

    def mmd_by_condition(self, predicted: torch.Tensor, observed: torch.Tensor, design: torch.Tensor) -> torch.Tensor:
        """MK-MMD between predicted and observed cells of each condition (design row), averaged weighted by cells.

        A minibatch of one condition (the paired loader's condition batches) gives the MK-MMD of that condition.
        """
        if bool((design == design[:1]).all()):  # one condition: the usual minibatch, no grouping needed
            return mk_mmd_loss(predicted, observed, fix_sigma=self.mmd_fix_sigma, kernel_num=self.mmd_kernel_num)
        _, group = torch.unique(design, dim=0, return_inverse=True)
        total = predicted.new_zeros(())
        for g in torch.unique(group):
            members = group == g
            mmd = mk_mmd_loss(
                predicted[members],
                observed[members],
                fix_sigma=self.mmd_fix_sigma,
                kernel_num=self.mmd_kernel_num,
            )
            total = total + members.sum() * mmd
        return total / design.shape[0]

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.Tensor],
        kl_weight: float = 1.0,
        dagma_mu: float | None = None,
    ) -> LossOutput:
        """Eq. 6: ``α MSE + β KL + γ MK-MMD + δ L_DAGMA`` (``β`` times the plan's ``kl_weight``); terms logged."""
        y_log = self.log_normalise(tensors[REGISTRY_KEYS.X_KEY])
        design = tensors[DESIGN_KEY]
        x_log, loc, scale = inference_outputs["x_log"], inference_outputs["qz_loc"], inference_outputs["qz_scale"]
        batch = x_log.shape[0]

        squared = (generative_outputs["x_obs"] - x_log) ** 2
        reconstruction = squared.mean()
        kl_elements = 0.5 * (loc**2 + scale**2 - 2.0 * torch.log(scale) - 1.0)
        kl = kl_elements.mean()
        mmd = self.mmd_by_condition(generative_outputs["x_int"], y_log, design)
        mu = self.mu_init if dagma_mu is None else float(dagma_mu)
        dagma = self.dag.loss(inference_outputs["z_bar"], mu=mu, lambda1=self.lambda1)
        loss = (
            self.alpha_rec * reconstruction
            + self.beta_kl * kl_weight * kl
            + self.gamma_mmd * mmd
            + self.delta_dagma * dagma.loss
        )
        # few logged terms: Lightning's cost per logged value grows with the number of values
        terms = {
            "reconstruction": reconstruction.detach(),
            "kl": kl.detach(),
            "mmd": mmd.detach(),
            "dagma_score": dagma.score.detach(),
            "acyclicity": dagma.acyclicity.detach(),
            "n_edges": (self.dag.adjacency.detach().abs() > EDGE_THRESHOLD).sum().float(),
        }
        if self.gamma_pair > 0:
            paired = ((generative_outputs["x_int"] - y_log) ** 2).mean()
            loss = loss + self.gamma_pair * paired
            terms["paired_mse"] = paired.detach()
        return LossOutput(
            loss=loss,
            reconstruction_loss=squared.mean(dim=1),
            kl_local=kl_elements.mean(dim=1),
            extra_metrics=terms,
            n_obs_minibatch=batch,
        )

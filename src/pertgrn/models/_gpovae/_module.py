"""GPO-VAE as an scvi-tools module: pure torch, sees tensor dictionaries only."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.distributions import NegativeBinomial
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn
from torch.distributions import Normal, kl_divergence

from pertgrn.models._base import (
    CONDITION_REGISTRY_KEY,
    DESIGN_KEY,
    PARTNER_LIBRARY_KEY,
    PARTNER_WEIGHT_KEY,
    PARTNER_X_KEY,
    QC_KEY,
)
from pertgrn.nn import GaussianHead, ResidualMLP, bernoulli_kl, relaxed_bernoulli_straight_through


def _normal(loc, scale) -> Normal:
    """A Normal without argument checks, which would make the GPU wait twice per distribution and step.

    Its scales come from softplus or exp: positive by construction.
    """
    return Normal(loc, scale, validate_args=False)


GPO_LOSSES = ("full", "sparsity", "dge", "dge_khop", "none")
GPOLoss = Literal["full", "sparsity", "dge", "dge_khop", "none"]
GPO_FORMS = ("signed", "bounded_logits")
MASK_ESTIMATORS = ("expectation", "straight_through")


def khop_scores(logits: torch.Tensor, rows: torch.Tensor, n_hops: int) -> torch.Tensor:
    """Rows ``rows`` of the bounded K-hop accumulation ``S = T · Σ_{k=1..K+1} (A / T)^k``.

    Iterates row vectors times ``A`` (``v ← v A / T``), so the cost is ``O(|rows| · T² · K)``
    instead of the ``O(T³ · K)`` of matrix powers. ``n_hops = 0`` gives ``S = A``.

    Parameters
    ----------
    logits
        ``A``, the ``T × T`` edge logits (row = regulator, column = target).
    rows
        Long tensor of the row indices needed (the perturbed nodes of a minibatch).
    n_hops
        ``K``, the number of extra hops.

    Returns
    -------
    ``len(rows) × T`` tensor, differentiable with respect to ``logits``.
    """
    n = logits.shape[0]
    term = logits[rows]
    total = term
    for _ in range(n_hops):
        term = (term @ logits) / n
        total = total + term
    return total


def total_effects(effects: torch.Tensor, rows: torch.Tensor, n_hops: int) -> torch.Tensor:
    """Rows ``rows`` of the total effects ``I + Σ_{k=1..K+1} W^k`` of a signed direct-effect matrix ``W``.

    In a linear structural model with row convention (``W_ij`` is the direct effect of ``i`` on
    ``j``), shifting node ``i`` by ``δ`` shifts every node by ``δ`` times row ``i`` of
    ``(I - W)^{-1} = I + W + W² + …``; the sum is truncated after ``K + 1`` hops and computed by
    row-vector iteration (``O(|rows| · T² · K)``).

    Parameters
    ----------
    effects
        ``W``, ``T × T`` signed direct effects (row = regulator, column = target).
    rows
        Long tensor of the rows needed.
    n_hops
        ``K``, the number of hops after the first.

    Returns
    -------
    ``len(rows) × T`` tensor, differentiable with respect to ``effects``.
    """
    term = effects[rows]
    total = term
    for _ in range(n_hops):
        term = term @ effects
        total = total + term
    return total + F.one_hot(rows, effects.shape[0]).to(effects.dtype)


def _data_parallel() -> bool:
    """Whether this process trains as one of several data-parallel processes (``torch.distributed``)."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def khop_scores_dense(logits: torch.Tensor, n_hops: int) -> torch.Tensor:
    """All rows of :func:`khop_scores` through full matrix products (``O(T³ · K)``; for comparison only)."""
    n = logits.shape[0]
    term = logits
    total = logits
    for _ in range(n_hops):
        term = (term @ logits) / n
        total = total + term
    return total


class GPOVAEModule(BaseModuleClass):
    """Generative model, guide and loss of GPO-VAE (Baek et al. 2025).

    Latent perturbation effect ``Z_p = D (E ⊙ M)`` with a per-node mask ``M ~ Bernoulli(sigmoid(A))``
    (relaxed, straight-through samples) and embeddings ``E | M`` from a correlated normal guide;
    latent artifact effect ``Z_a = a u`` with a global ``u``; basal state ``z_b`` from an encoder on
    ``[log-standardised counts, Z_p, Z_a]``; counts from a negative binomial decoder on
    ``[z_b, Z_p, Z_a]`` scaled by the observed library size. The GPO loss pulls ``A`` towards a GRN.

    Parameters
    ----------
    n_genes
        Number of measured genes.
    n_nodes
        ``T``, the number of GRN nodes (perturbation targets and extended genes).
    measured_node_index
        Positions (in node order) of the nodes with an expression column.
    measured_gene_index
        Their expression columns (genes), aligned with ``measured_node_index`` and with the
        columns of the partners' counts that the paired loader puts in each minibatch.
    target_sum
        Counts per cell of the log-normalisation behind ``ΔX`` (median library size of the
        training cells).
    node_counts
        Number of cells perturbing each node (the plate size used to reweight the global KL terms).
    log_mean, log_std
        Per-gene mean and standard deviation of ``log(1 + counts)`` for the basal encoder input.
    n_conditions
        Number of conditions (categories of the condition field).
    cf_profiles
        ``(n_conditions · 2) × n_genes`` counterfactual count profiles (row ``2c + l``: median
        counts of cells of condition ``c`` with QC label ``l``), or ``None`` without artifact latent.
    cf_valid
        Bool per row of ``cf_profiles``: the profile exists.
    n_qc_fail
        Number of QC-failing cells (plate size of ``u``); ``0`` disables the artifact latent.
    n_latent, decoder_n_hidden, decoder_n_layers, encoder_n_hidden, encoder_n_layers,
    embedding_n_hidden, embedding_n_layers
        Network sizes.
    mask_prior, embedding_prior_scale, temperature
        Priors and relaxation temperature.
    gpo_loss, gpo_weight, gpo_offset, n_hops, sparsity_weight, ade_weight
        GPO and artifact-disentanglement terms (see :class:`pertgrn.models.GPOVAE`).
    """

    def __init__(
        self,
        n_genes: int,
        n_nodes: int,
        measured_node_index: torch.Tensor,
        measured_gene_index: torch.Tensor,
        target_sum: float,
        node_counts: torch.Tensor,
        log_mean: torch.Tensor,
        log_std: torch.Tensor,
        n_conditions: int,
        cf_profiles: torch.Tensor | None,
        cf_valid: torch.Tensor | None,
        n_qc_fail: int,
        *,
        n_latent: int = 100,
        decoder_n_hidden: int = 400,
        decoder_n_layers: int = 2,
        encoder_n_hidden: int = 200,
        encoder_n_layers: int = 1,
        embedding_n_hidden: int = 400,
        embedding_n_layers: int = 4,
        mask_prior: float = 0.3,
        embedding_prior_scale: float = 1.0,
        temperature: float = 1.0,
        gpo_loss: GPOLoss = "full",
        gpo_weight: float = 100.0,
        gpo_offset: float = 0.8,
        n_hops: int = 5,
        sparsity_weight: float = 5.0,
        ade_weight: float = 0.1,
        gpo_form: str = "bounded_logits",
        mask_estimator: str = "straight_through",
        mask_gradient: str = "all",
        max_effect: float = 5.0,
    ):
        super().__init__()
        if gpo_loss not in GPO_LOSSES:
            raise ValueError(f"`gpo_loss` must be one of {GPO_LOSSES}, found {gpo_loss!r}.")
        if gpo_form not in GPO_FORMS:
            raise ValueError(f"`gpo_form` must be one of {GPO_FORMS}, found {gpo_form!r}.")
        if mask_estimator not in MASK_ESTIMATORS:
            raise ValueError(f"`mask_estimator` must be one of {MASK_ESTIMATORS}, found {mask_estimator!r}.")
        if mask_gradient not in ("all", "gpo"):
            raise ValueError(f"`mask_gradient` must be 'all' or 'gpo', found {mask_gradient!r}.")
        self.gpo_form = gpo_form
        self.mask_estimator = mask_estimator
        self.mask_gradient = mask_gradient
        self.max_effect = max_effect
        self.n_genes = n_genes
        self.n_nodes = n_nodes
        self.n_latent = n_latent
        self.n_conditions = n_conditions
        self.mask_prior = mask_prior
        self.embedding_prior_scale = embedding_prior_scale
        self.temperature = temperature
        self.gpo_loss = gpo_loss
        self.gpo_weight = gpo_weight
        self.gpo_offset = gpo_offset
        self.n_hops = n_hops
        self.sparsity_weight = sparsity_weight
        self.ade_weight = ade_weight
        self.use_artifact = n_qc_fail > 0

        self.register_buffer("measured_node_index", measured_node_index.long())
        node_measured = torch.zeros(n_nodes, dtype=torch.bool)
        node_measured[measured_node_index.long()] = True
        self.register_buffer("node_measured", node_measured, persistent=False)
        self.register_buffer("measured_gene_index", measured_gene_index.long())
        self.register_buffer("target_sum", torch.tensor(float(target_sum)))
        self.register_buffer("node_counts", node_counts.float())
        self.register_buffer("log_mean", log_mean.float())
        self.register_buffer("log_std", log_std.float())
        self.register_buffer("n_qc_fail", torch.tensor(float(n_qc_fail)))
        self.register_buffer("node_one_hot", torch.eye(n_nodes), persistent=False)
        # counterfactual profiles depend on the data only; they are rebuilt from the AnnData on load
        if cf_profiles is None:
            cf_profiles = torch.zeros(0, n_genes)
            cf_valid = torch.zeros(0, dtype=torch.bool)
        self.register_buffer("cf_profiles", cf_profiles.float(), persistent=False)
        self.register_buffer("cf_valid", cf_valid.bool(), persistent=False)

        # q(M): logits A, every edge probability 0.5 at initialisation (reference: mask_init = 0)
        self.grn_logits = nn.Parameter(torch.zeros(n_nodes, n_nodes))
        self.register_buffer("off_diagonal", 1.0 - torch.eye(n_nodes), persistent=False)
        # max_effect on the off-diagonal (a signed effect's scale), one T × T product fewer per step
        self.register_buffer("effect_scale", self.off_diagonal * max_effect, persistent=False)
        if gpo_form == "signed":
            # signed direct effects W = sigmoid(A) ⊙ max_effect · tanh(B)
            self.grn_effects = nn.Parameter(torch.zeros(n_nodes, n_nodes))
            # running sums of the paired expression change of each condition's training cells: the fit's target
            n_measured = int(measured_node_index.numel())
            self.register_buffer("condition_delta_sum", torch.zeros(n_conditions, n_measured, dtype=torch.float64))
            self.register_buffer("condition_delta_count", torch.zeros(n_conditions, dtype=torch.float64))
        # q(E | M): correlated normal guide on [mask row, one-hot node]
        self.embedding_trunk = ResidualMLP(2 * n_nodes, embedding_n_hidden, embedding_n_layers)
        self.embedding_head = GaussianHead(embedding_n_hidden, n_nodes)
        # q(u): global artifact embedding
        self.artifact_loc = nn.Parameter(torch.zeros(n_latent))
        self.artifact_log_scale = nn.Parameter(torch.zeros(n_latent))
        # q(z_b | x, Z_p, Z_a): the first layer is split so that the counts part is computed once
        self.encoder_x = nn.Linear(n_genes, encoder_n_hidden)
        self.encoder_z = nn.Linear(n_nodes + n_latent, encoder_n_hidden, bias=False)
        self.encoder_trunk = (
            ResidualMLP(encoder_n_hidden, encoder_n_hidden, encoder_n_layers - 1) if encoder_n_layers > 1 else None
        )
        self.encoder_head = GaussianHead(encoder_n_hidden, n_latent)
        # p(x | z_b, Z_p, Z_a): negative binomial, softmax-normalised mean times library size
        self.decoder_trunk = ResidualMLP(2 * n_latent + n_nodes, decoder_n_hidden, decoder_n_layers)
        self.decoder_out = nn.Linear(decoder_n_hidden, n_genes)
        self.log_theta = nn.Parameter(torch.zeros(n_genes))

    # ------------------------------------------------------------------------------------------
    # building blocks
    # ------------------------------------------------------------------------------------------
    def active_nodes(self, design: torch.Tensor) -> torch.Tensor:
        """Indices of the nodes perturbed in at least one row of ``design``."""
        return torch.nonzero(design.abs().sum(0) > 0, as_tuple=False).flatten()

    def sample_masks(self, rows: torch.Tensor, n_particles: int, deterministic: bool = False) -> torch.Tensor:
        """``n_particles × len(rows) × T`` masks of the perturbed rows.

        ``mask_estimator="straight_through"`` (reference): hard relaxed-Bernoulli samples, or the
        mode when ``deterministic``. ``"expectation"``: the edge probabilities themselves, the same
        in training and prediction, with each perturbed node's own coordinate always on (a
        perturbation acts on its target). ``mask_gradient="gpo"`` keeps the ELBO from moving the
        edge logits, which then follow the GPO terms and the mask prior only.
        """
        logits = self.grn_logits[rows]
        if self.mask_gradient == "gpo":
            logits = logits.detach()
        if self.mask_estimator == "expectation":
            masks = torch.maximum(torch.sigmoid(logits), self.node_one_hot[rows])
            return masks.unsqueeze(0).expand(n_particles, -1, -1)
        if deterministic:
            return (logits > 0).to(logits.dtype).unsqueeze(0).expand(n_particles, -1, -1)
        return relaxed_bernoulli_straight_through(logits, temperature=self.temperature, sample_shape=(n_particles,))

    def direct_effects(self, probabilities: torch.Tensor | None = None) -> torch.Tensor:
        """Signed direct effects ``W = sigmoid(A) ⊙ max_effect · tanh(B)`` (diagonal 0) of ``gpo_form="signed"``.

        ``probabilities`` is ``sigmoid(A)`` when the caller already has it (the loss shares it with
        the sparsity term).
        """
        if probabilities is None:
            probabilities = torch.sigmoid(self.grn_logits)
        return probabilities * torch.tanh(self.grn_effects) * self.effect_scale

    def embedding_guide(self, masks: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of ``q(E_rows | M_rows)``, each ``n_particles × len(rows) × T``.

        The trunk's input is ``[mask row, one-hot node]``; its first layer is applied as
        ``masks W_mᵀ + W_o[:, rows]ᵀ + b`` (the one-hot half of the product is a gather of weight
        columns), and masks that are the same for every particle (an expanded tensor: expectation
        masks, or the mode) go through the network once.
        """
        if masks.shape[0] > 1 and masks.stride(0) == 0:
            loc, scale = self.embedding_guide(masks[:1], rows)
            return loc.expand(masks.shape[0], -1, -1), scale.expand(masks.shape[0], -1, -1)
        first, activation = self.embedding_trunk.layers[0]
        n = self.n_nodes
        node_part = first.weight[:, n:].t()[rows]  # len(rows) × hidden: the one-hot columns
        h = activation(F.linear(masks, first.weight[:, :n]) + (node_part + first.bias))
        for layer in self.embedding_trunk.layers[1:]:
            h = layer(h) + h
        return self.embedding_head(h)

    def artifact_guide(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of ``q(u)``."""
        return self.artifact_loc, F.softplus(self.artifact_log_scale) + 1e-4

    def perturbation_latent(
        self, design: torch.Tensor, n_particles: int, deterministic: bool = False
    ) -> dict[str, torch.Tensor]:
        """Sample ``M``, ``E`` for the nodes present in ``design`` and return ``Z_p = D (E ⊙ M)``."""
        rows = self.active_nodes(design)
        masks = self.sample_masks(rows, n_particles, deterministic=deterministic)
        e_loc, e_scale = self.embedding_guide(masks, rows)
        embedding = e_loc if deterministic else _normal(e_loc, e_scale).rsample()
        z_p = torch.einsum("br,prt->pbt", design[:, rows], embedding * masks)
        return {"rows": rows, "masks": masks, "e_loc": e_loc, "e_scale": e_scale, "z_p": z_p}

    def normalise_counts(self, x: torch.Tensor) -> torch.Tensor:
        """``(log(1 + x) - mean) / std`` per gene (the reference's ``log_standardize``)."""
        return (torch.log1p(x) - self.log_mean) / self.log_std

    def basal_posterior(
        self, x_normed_hidden: torch.Tensor, z_p: torch.Tensor, z_a: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z_b | x, Z_p, Z_a)`` from the precomputed counts projection ``encoder_x(x)``."""
        return self._basal_head(x_normed_hidden.unsqueeze(0) + self.encoder_z(torch.cat([z_p, z_a], dim=-1)))

    def _basal_head(self, pre_activation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The basal encoder after its first layer: activation, hidden layers and Gaussian head."""
        h = F.leaky_relu(pre_activation)
        if self.encoder_trunk is not None:
            h = self.encoder_trunk(h)
        return self.encoder_head(h)

    def decode(self, z_b: torch.Tensor, z_p: torch.Tensor, z_a: torch.Tensor) -> torch.Tensor:
        """Softmax-normalised expression ``rho`` (sums to one over genes)."""
        h = self.decoder_trunk(torch.cat([z_b, z_p, z_a], dim=-1))
        return torch.softmax(self.decoder_out(h), dim=-1)

    # ------------------------------------------------------------------------------------------
    # scvi-tools interface
    # ------------------------------------------------------------------------------------------
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor | None]:
        qc = tensors.get(QC_KEY)
        condition = tensors.get(CONDITION_REGISTRY_KEY)
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "design": tensors[DESIGN_KEY],
            "qc": qc.reshape(-1) if qc is not None else None,
            "condition": condition.reshape(-1).long() if condition is not None else None,
        }

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        design: torch.Tensor,
        qc: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
        n_particles: int = 1,
        deterministic: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Sample the guide: ``M``, ``E``, ``u`` and ``z_b`` for every particle.

        Parameters
        ----------
        x
            Counts, ``B × G``.
        design
            Multi-hot perturbation design, ``B × T``.
        qc
            QC-failure indicator ``a`` (``B``), or ``None`` without artifact latent.
        condition
            Condition codes (``B``), used to find counterfactual profiles.
        n_particles
            Number of samples of the global latents (and of ``z_b``).
        deterministic
            Use the mask mode, embedding means and posterior means instead of samples.

        Returns
        -------
        Dictionary with ``z_b``, ``qz_loc``, ``qz_scale``, ``z_p``, ``z_a`` (each
        ``n_particles × B × …``), ``rows``, ``masks``, ``e_loc``, ``e_scale``, ``u_loc``,
        ``u_scale``, ``library`` and, with an artifact latent, ``qz_cf_*`` / ``qz_partner_*``.
        """
        batch = x.shape[0]
        out = self.perturbation_latent(design, n_particles, deterministic=deterministic)
        u_loc, u_scale = self.artifact_guide()
        # the basal encoder's first layer on [Z_p, Z_a] = W_p Z_p + W_a Z_a: the Z_p part (T columns) is
        # shared by the encoding and both counterfactual encodings, and W_a Z_a = a · (W_a u)
        n = self.n_nodes
        hz_p = F.linear(out["z_p"], self.encoder_z.weight[:, :n])
        hz, hz_flipped = hz_p, None
        if self.use_artifact and qc is not None:
            u = u_loc.expand(n_particles, -1) if deterministic else _normal(u_loc, u_scale).rsample((n_particles,))
            a = qc.to(x.dtype).reshape(1, batch, 1)
            z_a = a * u.unsqueeze(1)
            z_a_flipped = (1.0 - a) * u.unsqueeze(1)
            hu = F.linear(u, self.encoder_z.weight[:, n:]).unsqueeze(1)  # n_particles × 1 × hidden
            hz = hz_p + a * hu
            hz_flipped = hz_p + (1.0 - a) * hu
        else:
            z_a = x.new_zeros(n_particles, batch, self.n_latent)
            z_a_flipped = None
        hx = self.encoder_x(self.normalise_counts(x))
        qz_loc, qz_scale = self._basal_head(hx.unsqueeze(0) + hz)
        z_b = qz_loc if deterministic else _normal(qz_loc, qz_scale).rsample()
        out.update(
            {
                "z_b": z_b,
                "qz_loc": qz_loc,
                "qz_scale": qz_scale,
                "z_a": z_a,
                "u_loc": u_loc,
                "u_scale": u_scale,
                "library": x.sum(-1, keepdim=True),
            }
        )
        if z_a_flipped is not None and condition is not None and self.cf_profiles.shape[0] > 0:
            # counterfactual partner: cells of the same condition with the opposite QC label
            partner_row = condition * 2 + (1 - qc.long())
            has_partner = self.cf_valid[partner_row]
            # each profile is encoded once, however many cells of the minibatch share it
            profiles, which = torch.unique(partner_row, return_inverse=True)
            hp = self.encoder_x(self.normalise_counts(self.cf_profiles[profiles]))[which]
            out["qz_cf_loc"], out["qz_cf_scale"] = self._basal_head(hx.unsqueeze(0) + hz_flipped)
            out["qz_partner_loc"], out["qz_partner_scale"] = self._basal_head(hp.unsqueeze(0) + hz_flipped)
            out["has_partner"] = has_partner
        return out

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict[str, torch.Tensor], **kwargs
    ) -> dict[str, torch.Tensor]:
        return {
            "z_b": inference_outputs["z_b"],
            "z_p": inference_outputs["z_p"],
            "z_a": inference_outputs["z_a"],
            "library": inference_outputs["library"],
        }

    @auto_move_data
    def generative(
        self, z_b: torch.Tensor, z_p: torch.Tensor, z_a: torch.Tensor, library: torch.Tensor
    ) -> dict[str, torch.Tensor | NegativeBinomial]:
        """Negative binomial ``p(x | z_b, Z_p, Z_a)`` with mean ``library · rho``."""
        rho = self.decode(z_b, z_p, z_a)
        mu = library.unsqueeze(0) * rho
        return {"rho": rho, "px": NegativeBinomial(mu=mu, theta=torch.exp(self.log_theta))}

    def paired_delta(
        self, x: torch.Tensor, tensors: dict[str, torch.Tensor], signed: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ΔX = |log-normalised x - weighted mean of the partners' log-normalised x|`` on the measured nodes.

        ``signed=True`` returns the difference itself instead of its absolute value.

        Expression is ``log1p(counts / library · target_sum)`` for the cell and each control
        partner; the partners' weights come from the OT plan. Returns ``ΔX`` (``B × T_measured``)
        and whether each cell has a partner (``B``, bool).
        """
        weight = tensors[PARTNER_WEIGHT_KEY].to(x.dtype)  # B × k, 0 in empty slots
        partner_x = tensors[PARTNER_X_KEY].to(x.dtype)  # B × k × T_measured
        partner_library = tensors[PARTNER_LIBRARY_KEY].to(x.dtype).clamp_min(1.0).unsqueeze(-1)
        partner_expr = torch.log1p(partner_x / partner_library * self.target_sum)
        paired = (weight.unsqueeze(-1) * partner_expr).sum(1) / weight.sum(1, keepdim=True).clamp_min(1e-12)
        library = x.sum(-1, keepdim=True).clamp_min(1.0)
        expr = torch.log1p(x[:, self.measured_gene_index] / library * self.target_sum)
        delta = expr - paired
        return (delta if signed else delta.abs()), weight.sum(1) > 0

    def condition_mean_delta(
        self, condition: torch.Tensor, delta: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean paired change of every condition over its training cells seen so far (``n_conditions × T_measured``).

        In training, the batch's cells (those with ``weights``) are first added to the running sums,
        so after one epoch a condition's row is the mean of ``ΔX`` over all its training cells: the
        per-cell noise of ``ΔX`` no longer reaches the fit, whose minimiser it would not change (the
        squared error's minimiser is the mean) but whose gradient it would swamp. Under data-parallel
        training (``torch.distributed`` initialised with several processes), every process adds the
        cells of every process's minibatch, so the running sums stay the same on all of them.

        ``rows`` (condition codes) returns those rows only (``len(rows) × T_measured``).
        """
        if self.training:
            w = weights.to(torch.float64).detach()
            added = delta.detach().to(torch.float64) * w[:, None]
            if _data_parallel():
                sums = torch.zeros_like(self.condition_delta_sum).index_add_(0, condition, added)
                counts = torch.zeros_like(self.condition_delta_count).index_add_(0, condition, w)
                torch.distributed.all_reduce(sums)
                torch.distributed.all_reduce(counts)
                self.condition_delta_sum += sums
                self.condition_delta_count += counts
            else:
                self.condition_delta_sum.index_add_(0, condition, added)
                self.condition_delta_count.index_add_(0, condition, w)
        total, count = self.condition_delta_sum, self.condition_delta_count
        if rows is not None:
            total, count = total[rows], count[rows]
        return (total / count.clamp_min(1.0)[:, None]).to(delta.dtype)

    def signed_fit_loss(
        self,
        design: torch.Tensor,
        target: torch.Tensor,
        n_hops: int | None = None,
        probabilities: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean squared error of the direct-plus-paths explanation of single perturbations' mean changes.

        In a linear structural model ``x = x W + ε`` (row convention), knocking node ``r`` down by
        ``δ_r`` changes every node by ``δ_r`` times row ``r`` of ``(I - W)^{-1}``, and since
        ``(I - W)^{-1} = I + (I - W)^{-1} W`` the change of node ``h`` is

        ``Δ_rh = δ_r W_rh + Σ_{g ≠ r} Δ_rg W_gh``:

        the direct effect of ``r`` plus the paths through every node ``g`` that ``r`` changes,
        every hop of them. ``Δ_rg`` and ``δ_r = Δ_rr`` are the observed mean changes (measured
        nodes; an unmeasured target's knockdown is one unit, its direct effects absorb the scale).
        A change that the paths explain needs no direct edge, which the sparsity term then removes:
        this is how the fit tells direct from indirect effects. ``n_hops = 0`` (the ``"dge"``
        ablation) leaves the paths out, so each direct effect fits the whole observed change.

        Parameters
        ----------
        design
            ``C × T`` multi-hot design of ``C`` conditions; only singles enter the fit.
        target
            ``C × T_measured`` mean paired change of each condition.
        n_hops
            ``0`` leaves the paths out; defaults to the module's (``0`` for the ``"dge"`` ablation).
        probabilities
            ``sigmoid(A)`` when the caller already has it.

        Returns
        -------
        Scalar tensor: the mean over single conditions and measured nodes other than the target
        (without ``gpo_weight``).
        """
        if n_hops is None:
            n_hops = 0 if self.gpo_loss == "dge" else self.n_hops
        single = design.sum(-1) == 1
        if not single.any():
            return self.grn_effects.sum() * 0.0
        design, target = design[single], target[single]
        rows = design.argmax(-1)
        index = torch.arange(rows.numel(), device=rows.device)
        observed = target.new_zeros(rows.numel(), self.n_nodes)
        observed[:, self.measured_node_index] = target
        unit = -torch.ones_like(rows, dtype=target.dtype)
        knockdown = torch.where(self.node_measured[rows], observed[index, rows], unit)
        observed[index, rows] = 0.0  # the target itself is the direct term, not a path
        effects = self.direct_effects(probabilities)
        predicted = knockdown[:, None] * effects[rows]
        if n_hops > 0:
            predicted = predicted + observed @ effects
        residual = (predicted - observed)[:, self.measured_node_index]
        own = self.node_one_hot[rows][:, self.measured_node_index].bool()
        return residual.masked_fill(own, 0.0).square().sum() / (~own).sum().clamp_min(1)

    def grn_fit_loss(
        self,
        design: torch.Tensor,
        delta_x: torch.Tensor,
        weights: torch.Tensor | None = None,
        n_hops: int | None = None,
    ) -> torch.Tensor:
        """Mean L1 distance between ``D S`` and ``ΔX - offset`` on the measured node columns.

        Parameters
        ----------
        design
            ``B × T`` multi-hot design.
        delta_x
            ``B × T_measured`` absolute expression change against the paired controls.
        weights
            Optional per-cell weights in {0, 1} (cells left out of the term get 0); the term is
            averaged over the cells with weight 1.
        n_hops
            ``K``; defaults to the module's, ``0`` for the ``"dge"`` ablation.

        Returns
        -------
        Scalar tensor (without ``gpo_weight``).
        """
        if n_hops is None:
            n_hops = 0 if self.gpo_loss == "dge" else self.n_hops
        rows = self.active_nodes(design)
        if rows.numel() == 0:
            return self.grn_logits.sum() * 0.0
        scores = khop_scores(self.grn_logits, rows, n_hops)
        predicted = (design[:, rows] @ scores)[:, self.measured_node_index]
        residual = (predicted - (delta_x - self.gpo_offset)).abs().mean(-1)
        if weights is None:
            return residual.mean()
        return (residual * weights).sum() / weights.sum().clamp_min(1.0)

    def sparsity_loss(self, probabilities: torch.Tensor | None = None) -> torch.Tensor:
        """``mean(sigmoid(A))`` (the reference's L1 norm of the edge probabilities over ``T²``).

        With ``gpo_form="signed"`` the diagonal is left out (self-loops are not edges there) and the
        sum is divided by the number of fitted conditions times measured nodes, the fit's own units.
        ``probabilities`` is ``sigmoid(A)`` when the caller already has it.
        """
        if probabilities is None:
            probabilities = torch.sigmoid(self.grn_logits)
        if self.gpo_form == "signed":
            # in the units of the fit: per condition and measured node, so that sparsity_weight sets the
            # smallest direct effect kept (about sparsity_weight / (2 · max_effect · gpo_weight · δ²))
            n_fitted = (self.condition_delta_count > 0).sum().clamp_min(1)
            off_diagonal = probabilities.sum() - probabilities.diagonal().sum()
            return off_diagonal / (n_fitted * self.measured_node_index.numel())
        return probabilities.mean()

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.Tensor | NegativeBinomial],
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Negative ELBO (plated global terms reweighted per cell, KL terms times ``kl_weight``) + ADE + GPO terms.

        The GPO fit term is averaged over the perturbed, QC-passing cells that have an OT partner:
        control cells have an empty design row and carry no information about ``A``, so counting
        them would only dilute the term by the control fraction of the minibatch.
        """
        x = tensors[REGISTRY_KEYS.X_KEY]
        design = tensors[DESIGN_KEY]
        qc = tensors.get(QC_KEY)
        qc = qc.reshape(-1).to(x.dtype) if qc is not None else None
        batch = x.shape[0]

        # reconstruction, averaged over particles; one particle at a time, so that the likelihood's
        # temporaries are cells × genes rather than particles × cells × genes (large temporaries are
        # fresh memory on every step, and touching fresh memory costs as much as the arithmetic)
        px = generative_outputs["px"]
        if px.mu.dim() == 3 and px.mu.shape[0] > 1:
            reconstruction = (
                sum(
                    -NegativeBinomial(mu=mu, theta=theta).log_prob(x).sum(-1)
                    for mu, theta in zip(px.mu.unbind(0), px.theta.unbind(0), strict=True)
                )
                / px.mu.shape[0]
            )
        else:
            reconstruction = -px.log_prob(x).sum(-1).mean(0)

        # local KL of the basal state
        qz = _normal(inference_outputs["qz_loc"], inference_outputs["qz_scale"])
        kl_basal = kl_divergence(qz, _normal(0.0, 1.0)).sum(-1).mean(0)

        # global KL terms of M and E, shared by the cells that perturb a node: weight D_ct / N_t per cell
        rows = inference_outputs["rows"]
        plate = design[:, rows] / self.node_counts[rows].clamp_min(1.0)
        kl_mask_rows = bernoulli_kl(self.grn_logits[rows], self.mask_prior).sum(-1)
        prior_e = _normal(0.0, self.embedding_prior_scale)
        q_e = _normal(inference_outputs["e_loc"], inference_outputs["e_scale"])
        kl_e_rows = kl_divergence(q_e, prior_e).sum(-1).mean(0)
        kl_mask = plate @ kl_mask_rows
        kl_embedding = plate @ kl_e_rows

        kl_artifact = x.new_zeros(batch)
        if self.use_artifact and qc is not None:
            q_u = _normal(inference_outputs["u_loc"], inference_outputs["u_scale"])
            kl_u = kl_divergence(q_u, prior_e).sum()
            kl_artifact = qc * kl_u / self.n_qc_fail.clamp_min(1.0)

        # counterfactual artifact disentanglement: KL(q(z_b | partner, flipped a) || q(z_b | x, flipped a))
        ade = x.new_zeros(())
        if "has_partner" in inference_outputs:
            q_partner = _normal(inference_outputs["qz_partner_loc"], inference_outputs["qz_partner_scale"])
            q_cf = _normal(inference_outputs["qz_cf_loc"], inference_outputs["qz_cf_scale"])
            kl_cf = kl_divergence(q_partner, q_cf).sum(-1).mean(0)
            ade = (kl_cf * inference_outputs["has_partner"].to(x.dtype)).sum() / batch

        # GPO terms
        gpo_fit = x.new_zeros(())
        probabilities = None
        if self.gpo_loss in ("full", "dge", "dge_khop"):
            if PARTNER_X_KEY not in tensors:
                raise KeyError(
                    f"gpo_loss={self.gpo_loss!r} needs each cell's OT partners in the minibatch; set the model "
                    "up with a `pairing_key` (run `pertgrn.pp.ot_pairing` first) and train with the paired loader."
                )
            delta_x, has_partner = self.paired_delta(x, tensors, signed=self.gpo_form == "signed")
            weights = (design.sum(-1) > 0) & has_partner
            if qc is not None and self.use_artifact:
                weights = weights & (qc < 0.5)
            if self.gpo_form == "signed":
                condition = tensors[CONDITION_REGISTRY_KEY].reshape(-1).long()
                fitted = condition[weights]
                # one row per condition of the batch (any of its cells carries its design)
                present, first = torch.unique(fitted, return_inverse=True)
                means = self.condition_mean_delta(condition, delta_x, weights, rows=present)
                if fitted.numel():
                    cell = torch.zeros(present.numel(), dtype=torch.long, device=x.device)
                    cell.scatter_(0, first, torch.nonzero(weights).flatten())
                    probabilities = torch.sigmoid(self.grn_logits)  # shared with the sparsity term
                    gpo_fit = self.signed_fit_loss(design[cell], means, probabilities=probabilities)
            else:
                gpo_fit = self.grn_fit_loss(design, delta_x, weights=weights.to(x.dtype))
        sparsity = self.sparsity_loss(probabilities) if self.gpo_loss in ("full", "sparsity") else x.new_zeros(())

        kl_local = {"kl_basal": kl_basal, "kl_mask": kl_mask, "kl_embedding": kl_embedding, "kl_artifact": kl_artifact}
        elbo_loss = (reconstruction + kl_weight * (kl_basal + kl_mask + kl_embedding + kl_artifact)).mean()
        loss = elbo_loss + self.ade_weight * ade + self.gpo_weight * gpo_fit + self.sparsity_weight * sparsity
        terms = {
            "reconstruction": reconstruction.mean().detach(),
            "kl_basal": kl_basal.mean().detach(),
            "kl_mask": kl_mask.mean().detach(),
            "kl_embedding": kl_embedding.mean().detach(),
            "kl_artifact": kl_artifact.mean().detach(),
            "ade": ade.detach(),
            "gpo_fit": gpo_fit.detach(),
            "sparsity": sparsity.detach(),
            "n_edges": (self.grn_logits > 0).sum().to(x.dtype).detach(),
        }
        return LossOutput(
            loss=loss,
            reconstruction_loss=reconstruction,
            kl_local=kl_local,
            extra_metrics=terms,
            n_obs_minibatch=batch,
        )

    # ------------------------------------------------------------------------------------------
    # generation
    # ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, design: torch.Tensor, z_b: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Artifact-free normalised expression ``rho`` (``B × G``) for each design row and basal state.

        ``deterministic=False`` (the reference): every cell gets its own draw of the masks and
        embeddings of its perturbed nodes. ``True``: the masks' mode (or expectation) and the
        embeddings' means, so that a perturbation's latent effect is the same for every cell and
        predictions vary only with the basal state.
        """
        batch = design.shape[0]
        rows = self.active_nodes(design)
        z_p = design.new_zeros(batch, self.n_nodes)
        if rows.numel() and deterministic:
            masks = self.sample_masks(rows, 1, deterministic=True)
            e_loc, _ = self.embedding_guide(masks, rows)
            z_p = design[:, rows] @ (e_loc * masks)[0]
        elif rows.numel():
            masks = self.sample_masks(rows, batch)  # one draw per cell
            e_loc, e_scale = self.embedding_guide(masks, rows)
            embedding = _normal(e_loc, e_scale).sample()
            z_p = torch.einsum("br,brt->bt", design[:, rows], embedding * masks)
        z_a = design.new_zeros(batch, self.n_latent)
        return self.decode(z_b, z_p, z_a)

    @torch.inference_mode()
    def sample(self, tensors: dict[str, torch.Tensor], n_samples: int = 1) -> torch.Tensor:
        """Posterior-predictive counts (``n_samples × B × G``) for the cells in ``tensors``."""
        inference_outputs = self.inference(**self._get_inference_input(tensors), n_particles=n_samples)
        generative_outputs = self.generative(**self._get_generative_input(tensors, inference_outputs))
        return generative_outputs["px"].sample()

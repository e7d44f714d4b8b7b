"""Scanpy-style entry point for GPO-VAE: set up, train, write the results into the AnnData."""

from __future__ import annotations

from typing import TYPE_CHECKING

from anndata import AnnData

from pertgrn._constants import EXTENDED_KEY, OT_PAIRING_KEY, QC_FAIL_KEY

if TYPE_CHECKING:
    from pertgrn.models import GPOVAE


def fit_gpovae(
    adata: AnnData,
    *,
    key_added: str = "gpovae",
    test_key: str | None = None,
    layer: str | None = None,
    qc_key: str | None = QC_FAIL_KEY,
    pairing_key: str | None = OT_PAIRING_KEY,
    extended_key: str | None = EXTENDED_KEY,
    max_epochs: int | None = None,
    model_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
    random_state: int | None = 0,
    grn_min_weight: float | None = None,
) -> GPOVAE:
    """Fit GPO-VAE to a CRISPR screen and write its latents and GRN into ``adata``.

    Sets the screen up with :meth:`pertgrn.models.GPOVAE.setup_anndata`, trains
    :class:`pertgrn.models.GPOVAE` (GPU when present, CPU otherwise) and writes the basal
    latent, the GRN and a summary. Run :func:`pertgrn.pp.annotate_perturbations`,
    :func:`pertgrn.pp.annotate_qc`, :func:`pertgrn.pp.select_extended_genes` and
    :func:`pertgrn.pp.ot_pairing` first.

    Parameters
    ----------
    adata
        Raw integer counts in ``X`` or ``layer``, annotated by :mod:`pertgrn.pp`.
    key_added
        Names the outputs: ``obsm["X_<key_added>"]``, ``varp["<key_added>_grn"]``, ``uns[key_added]``.
    test_key
        Bool ``obs`` column of held-out cells (True). They never influence the fit — not as
        training or validation cells, not as OT partners, not in the statistics computed at
        set-up — so that :func:`pertgrn.tl.evaluate` with the same ``test_key`` scores the model
        on cells it never saw. They still get latents in ``obsm``.
    layer
        Layer holding the counts; ``None`` uses ``X``.
    qc_key
        Bool ``obs`` column of QC-failing cells; ``None`` or absent: no artifact latent.
    pairing_key
        ``obsp`` key of the OT pairing; ``None`` needs ``model_kwargs={"gpo_loss": "sparsity"}``
        or ``"none"``. Only training reads it: embedding or predicting new cells does not.
    extended_key
        Bool ``var`` column of the extended genes (GRN nodes beside the targets); ``None``: targets only.
    max_epochs
        Epochs to train; ``None`` uses the model's default (the default preset: the epochs that
        make about 2,000 optimisation steps, whatever the screen's size; see
        :class:`pertgrn.models.GPOVAE`).
    model_kwargs
        Keyword arguments of :class:`pertgrn.models.GPOVAE` (e.g. ``gpo_loss``, ``gpo_offset``).
    train_kwargs
        Keyword arguments of :meth:`pertgrn.models.GPOVAE.train` (e.g. ``batch_size``,
        ``enable_progress_bar``).
    random_state
        Seed set through ``scvi.settings.seed`` (torch, numpy, Python) before building the model;
        ``None`` leaves the global seeds alone.
    grn_min_weight
        Edges whose probability exceeds this are stored in ``varp`` and the GRN record; ``None``
        uses the model's rule (0.01 for the default preset, whose non-edges go to about 0.001;
        0.05 for ``preset="reference"``). ``0`` stores every pair of distinct nodes, which is what
        rankings over all pairs (AUPRC, the strongest ``n`` edges in :func:`pertgrn.tl.evaluate`)
        need; at a few hundred nodes that is still small. :meth:`pertgrn.models.GPOVAE.get_grn`
        always returns the whole matrix.

    Returns
    -------
    The trained :class:`pertgrn.models.GPOVAE`. Writes into ``adata``:

    ``obsm["X_<key_added>"]``
        ``n_obs × n_latent`` float32 posterior mean of the basal state.
    ``varp["<key_added>_grn"]``
        ``n_vars × n_vars`` float32 CSR of the edge probabilities ``sigmoid(A)`` between measured
        nodes that exceed ``grn_min_weight`` (row = regulator, column = target; the default
        preset has no self-loops).
    ``uns[key_added]``
        The GRN record (:mod:`pertgrn._grn_store`): ``level`` (``"gene"``), ``signed`` (False),
        ``edge_rule``, ``nodes`` (every target, measured or not, then the extended genes) and
        ``unmeasured_edges`` (stored edges with an unmeasured endpoint, long table); ``ate``
        (DataFrame condition × gene of the predicted average treatment effects of every observed
        condition, :meth:`~pertgrn.models.GPOVAE.get_ate`), ``history`` (DataFrame indexed by
        epoch, one column per logged loss term), ``params`` (model, training and set-up arguments,
        ``test_key``, ``random_state``, ``n_epochs_trained``), ``keys`` and ``version``.

    plus what :meth:`~pertgrn.models.GPOVAE.setup_anndata` registers
    (``obsm["_pertgrn_design"]``, ``obsm["_pertgrn_partner_index"]``,
    ``obsm["_pertgrn_partner_weight"]``, ``obs["_scvi_condition"]``, ``uns["_scvi_uuid"]``,
    ``uns["_scvi_manager_uuid"]``).

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(n_genes=60, n_regulators=6, n_perturbed=4, n_doubles=1,
    ...                              n_unmeasured_targets=1, n_control=80, cells_per_condition=30)
    >>> pg.pp.annotate_perturbations(adata)
    >>> pg.pp.annotate_qc(adata)
    >>> pg.pp.select_extended_genes(adata)
    >>> pg.pp.ot_pairing(adata)
    >>> model = pg.tl.fit_gpovae(adata, max_epochs=2, model_kwargs={"n_latent": 8},
    ...                          train_kwargs={"enable_progress_bar": False})
    >>> adata.obsm["X_gpovae"].shape[1]
    8
    >>> pg.get.grn_df(adata, key="gpovae").columns.tolist()
    ['source', 'target', 'weight']
    """
    from pertgrn.models import GPOVAE
    from pertgrn.models._base import fit_model

    gpo_loss = model_kwargs.get("gpo_loss", "full") if isinstance(model_kwargs, dict) else "full"
    needs_pairing = gpo_loss in ("full", "dge", "dge_khop")
    if pairing_key is None and needs_pairing:
        raise ValueError(
            "pairing_key=None trains without the GPO fit term; also pass "
            "model_kwargs={'gpo_loss': 'sparsity'} (or 'none')."
        )
    setup = {"layer": layer, "qc_key": qc_key, "pairing_key": pairing_key, "extended_key": extended_key}
    model = fit_model(
        GPOVAE,
        adata,
        key_added=key_added,
        test_key=test_key,
        setup_kwargs=setup,
        model_kwargs=model_kwargs,
        train_kwargs=train_kwargs,
        max_epochs=max_epochs,
        random_state=random_state,
        grn_min_weight=grn_min_weight,
    )
    warn_if_near_prior(model)
    return model


def warn_if_near_prior(model: GPOVAE, *, band: float = 0.05, fraction: float = 0.5) -> bool:
    """Log a warning when most edge probabilities of the targets' rows are still near the mask prior.

    Returns whether it warned. A GRN whose probabilities have not moved from the prior says nothing
    about regulation: the model needs more optimisation steps or a larger learning rate for its
    GRN parameters.
    """
    import numpy as np

    from pertgrn._utils import logger

    probabilities = model.get_grn().to_numpy()[: model.n_targets]
    off_diagonal = ~np.eye(len(model.nodes), dtype=bool)[: model.n_targets]
    near = float((np.abs(probabilities[off_diagonal] - model.module.mask_prior) <= band).mean())
    if near > fraction:
        logger.warning(
            "GPOVAE: %.0f%% of the targets' edge probabilities are still within ±%.2f of the prior %.2f; the GRN "
            "has not learned. Train longer (max_epochs=...) or raise the GRN's learning rate "
            "(train_kwargs={'plan_kwargs': {'grn_lr': ...}}); with preset='reference' expect this on a CPU.",
            100 * near,
            band,
            model.module.mask_prior,
        )
        return True
    return False

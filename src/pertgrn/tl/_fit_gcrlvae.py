"""Scanpy-style entry point for gCRL-VAE and its discrepancy-VAE variants: set up, train, write back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from anndata import AnnData

if TYPE_CHECKING:
    from pertgrn.models import GCRLVAE


def fit_gcrlvae(
    adata: AnnData,
    *,
    key_added: str = "gcrlvae",
    test_key: str | None = None,
    variant: str = "gcrl",
    layer: str | None = None,
    activity_key: str | None = "X_tf_activity",
    communities_key: str = "tf_communities",
    pairing_key: str | None = None,
    max_epochs: int | None = None,
    model_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
    random_state: int | None = 0,
) -> GCRLVAE:
    """Fit gCRL-VAE (or the paper's d-VAE / id-VAE) to a CRISPR screen and write its latents and latent DAG.

    Sets the screen up with :meth:`pertgrn.models.GCRLVAE.setup_anndata`, trains
    :class:`pertgrn.models.GCRLVAE` (GPU when present, CPU otherwise) and writes the latents, the
    DAG among latents with its lift to the TFs of each community, gene loadings and a summary. Run
    :func:`pertgrn.pp.annotate_perturbations`, :func:`pertgrn.pp.reference_grn`,
    :func:`pertgrn.pp.tf_communities` and :func:`pertgrn.pp.tf_activity` first (``variant="d"``
    needs only the first, with ``activity_key=None``).

    Parameters
    ----------
    adata
        Raw integer counts in ``X`` or ``layer``, annotated by :mod:`pertgrn.pp`. Its genes are the
        model's output genes (the paper: the reference GRN's genes).
    key_added
        Names the outputs: ``obsm["X_<key_added>"]``, ``varp["<key_added>_grn"]``,
        ``varm["<key_added>_loadings"]``, ``uns[key_added]``.
    test_key
        Bool ``obs`` column of held-out cells (True), e.g. the double perturbations to predict.
        They never influence the fit (not as training cells, not as control partners); they still
        get latents in ``obsm``. Fit the activities on the other cells
        (``pp.tf_activity(fit_mask=~adata.obs[test_key])``) so they stay out of those too.
    variant
        ``"gcrl"`` (gCRL-VAE), ``"id"`` (id-VAE: discrepancy-VAE with ``K + 1`` latents) or ``"d"``
        (d-VAE: one latent per target perturbed singly in training); see :class:`pertgrn.models.GCRLVAE`.
    layer
        Layer holding the counts; ``None`` uses ``X``.
    activity_key
        ``obsm`` key of the TF-community activities of :func:`pertgrn.pp.tf_activity`; ``None``
        only with ``variant="d"``.
    communities_key
        ``uns`` key of :func:`pertgrn.pp.tf_communities`.
    pairing_key
        ``None``: each perturbed cell is paired with a random training control (the reference);
        an ``obsp`` key of :func:`pertgrn.pp.ot_pairing`: its heaviest OT partner.
    max_epochs
        Number of epochs (``None``: the paper's 100); the loss-weight ramps span them.
    model_kwargs
        Keyword arguments of :class:`pertgrn.models.GCRLVAE` (e.g. ``unassigned_targets``,
        ``permutation``, ``alpha_max``).
    train_kwargs
        Keyword arguments of :meth:`pertgrn.models.GCRLVAE.train` (e.g. ``batch_size``,
        ``enable_progress_bar``).
    random_state
        Seed set through ``scvi.settings.seed`` before building the model; the minibatch order and
        the random control partners follow it. ``None`` leaves the global seeds alone.

    Returns
    -------
    The trained :class:`pertgrn.models.GCRLVAE`. Writes into ``adata``:

    ``obsm["X_<key_added>"]``
        ``n_obs × d`` float32 posterior mean of the exogenous latents (column ``j`` = latent ``j``).
    ``varp["<key_added>_grn"]``
        ``n_vars × n_vars`` float32 CSR: the latent DAG lifted to genes, ``w(a → b) = G_ij`` for a TF
        ``a`` of latent ``i``'s community and a TF ``b`` of latent ``j``'s (d-VAE, id-VAE: the
        targets routed to each latent), over DAG edges with ``|G_ij| > GCRLVAE.grn_min_weight``.
    ``varm["<key_added>_loadings"]``
        ``n_vars × d`` float32: the decoder's Jacobian of each gene's log-expression with respect
        to each causal latent, averaged over training control cells.
    ``uns[key_added]``
        The latent-level GRN record (:mod:`pertgrn._grn_store`): ``level`` (``"latent"``),
        ``latents`` (names: the activity column paired with each latent, ``"C0"``, …, ``"global"``,
        or ``"Z0"``, … without alignment), ``dag`` (``d × d`` float32 ``triu(G, 1)``), ``lift`` (long
        ``latent, gene, weight`` table), ``edge_rule``; ``variant``, ``permutation`` (``π[k]`` =
        latent of activity column ``k``), ``latent_names``, ``trained_singles``, ``alignment``
        (gCRL: DataFrame per activity column, its ``latent`` and signed ``partial_correlation`` on the
        training controls; T-MEX is their mean); ``ate`` (DataFrame condition × gene of predicted
        effects, :meth:`~pertgrn.models.GCRLVAE.get_ate`), ``history`` (DataFrame per epoch),
        ``params``, ``keys`` and ``version``.

    plus what :meth:`~pertgrn.models.GCRLVAE.setup_anndata` registers (``obsm["_pertgrn_design"]``,
    ``obsm["_pertgrn_tf_activity"]``, with ``pairing_key`` ``obsm["_pertgrn_partner_index"]`` and
    ``obsm["_pertgrn_partner_weight"]``, ``obs["_scvi_condition"]``, ``uns["_scvi_uuid"]``,
    ``uns["_scvi_manager_uuid"]``).

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(n_genes=96, n_regulators=16, n_tf_modules=2, n_perturbed=4,
    ...                              n_doubles=1, n_unmeasured_targets=0, n_control=300, seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> pg.pp.reference_grn(adata, tfs=adata.var_names[adata.var["true_tf_module"] >= 0])
    >>> pg.pp.tf_communities(adata, n_runs=10, n_perm=0)
    >>> pg.pp.tf_activity(adata, fit_mask=(adata.obs["perturbation"] == "control").to_numpy())
    >>> model = pg.tl.fit_gcrlvae(adata, max_epochs=2, train_kwargs={"batch_size": 16, "enable_progress_bar": False})
    >>> adata.uns["gcrlvae"]["level"], adata.uns["gcrlvae"]["latents"][-1] in ("global", "C0", "C1")
    ('latent', True)
    """
    from pertgrn.models import GCRLVAE
    from pertgrn.models._base import fit_model
    from pertgrn.models._base._fit import check_test_key
    from pertgrn.models._gcrlvae._model import check_screen

    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"`model_kwargs` must be a dict or None, found {type(model_kwargs).__name__}.")
    model_kwargs = dict(model_kwargs or {})
    if "variant" in model_kwargs and model_kwargs["variant"] != variant:
        raise ValueError(f"`variant` is given twice ({variant!r} and model_kwargs {model_kwargs['variant']!r}).")
    model_kwargs["variant"] = variant
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, found {type(adata).__name__}.")
    check_test_key(adata, test_key)
    # everything the model would refuse is refused now, before set-up writes its fields
    check_screen(
        adata, activity_key=activity_key, communities_key=communities_key, test_key=test_key, model_kwargs=model_kwargs
    )
    setup = {
        "layer": layer,
        "activity_key": activity_key,
        "communities_key": communities_key,
        "pairing_key": pairing_key,
    }
    return fit_model(
        GCRLVAE,
        adata,
        key_added=key_added,
        test_key=test_key,
        setup_kwargs=setup,
        model_kwargs=model_kwargs,
        train_kwargs=train_kwargs,
        max_epochs=max_epochs,
        random_state=random_state,
    )

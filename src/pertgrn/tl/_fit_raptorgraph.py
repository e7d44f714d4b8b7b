"""Scanpy-style entry point for RAPTORGraph: set up, train, write the results into the AnnData."""

from __future__ import annotations

from typing import TYPE_CHECKING

from anndata import AnnData

from pertgrn._constants import OT_PAIRING_KEY

if TYPE_CHECKING:
    from pertgrn.models import RaptorGraph


def fit_raptorgraph(
    adata: AnnData,
    *,
    key_added: str = "raptorgraph",
    test_key: str | None = None,
    layer: str | None = None,
    pairing: str = "ot",
    pairing_key: str = OT_PAIRING_KEY,
    max_epochs: int | None = None,
    model_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
    random_state: int | None = 0,
) -> RaptorGraph:
    """Fit RAPTORGraph to a CRISPR screen and write its latents, latent DAG and loadings into ``adata``.

    Sets the screen up with :meth:`pertgrn.models.RaptorGraph.setup_anndata`, trains
    :class:`pertgrn.models.RaptorGraph` (GPU when present, CPU otherwise) and writes what it
    learned. Run :func:`pertgrn.pp.annotate_perturbations` and (for ``pairing="ot"``)
    :func:`pertgrn.pp.ot_pairing` first. Every argument and the screen itself (control cells, at
    least two targets, at least two training cells per perturbed condition) are checked before
    anything is written.

    Parameters
    ----------
    adata
        Raw integer counts in ``X`` or ``layer``, annotated by :mod:`pertgrn.pp`.
    key_added
        Names the outputs: ``obsm["X_<key_added>"]``, ``varp["<key_added>_grn"]``,
        ``varm["<key_added>_loadings"]``, ``uns[key_added]``.
    test_key
        Bool ``obs`` column of held-out cells (True), e.g. every double perturbation to test
        predictions of unseen combinations. They never influence the fit (not as training,
        validation or partner cells, not in the statistics computed at set-up); they still get
        latents in ``obsm``.
    layer
        Layer holding the counts; ``None`` uses ``X``.
    pairing
        ``"ot"``: each perturbed cell is paired with the heaviest control of its row of the OT plan
        ``obsp[pairing_key]``. ``"random"``: with a control drawn at random from the training
        controls (the paper's random-pairing ablation); no plan is needed.
    pairing_key
        ``obsp`` key of the OT plan (``pairing="ot"``).
    max_epochs
        Number of epochs; ``None``: ``max(100, ⌈6000 / batches per epoch⌉)``, at most 2,000.
    model_kwargs
        Keyword arguments of :class:`pertgrn.models.RaptorGraph` (e.g. ``n_latent``, ``beta_kl``).
    train_kwargs
        Keyword arguments of :meth:`pertgrn.models.RaptorGraph.train` (e.g. ``lr``, ``batch_size``,
        ``enable_progress_bar``).
    random_state
        Seed set through ``scvi.settings.seed`` (torch, numpy, Python) before building the model;
        ``None`` leaves the global seeds alone.

    Returns
    -------
    The trained :class:`pertgrn.models.RaptorGraph`. Writes into ``adata``:

    ``obsm["X_<key_added>"]``
        ``n_obs × n_latent`` float32 normalised exogenous latents ``z̄`` of every cell, encoded
        from its own expression (columns: the targets' latents, then the free latents).
    ``varm["<key_added>_loadings"]``
        ``n_vars × n_latent`` float32 gene loadings: the decoded change of log-normalised
        expression per unit shift of each latent, propagated through the DAG
        (:meth:`~pertgrn.models.RaptorGraph.get_loadings`).
    ``varp["<key_added>_grn"]``
        ``n_vars × n_vars`` float32 CSR: the latent DAG lifted to the measured targets, edge
        ``g → h`` of weight ``A_gh`` between the latents of targets ``g`` and ``h`` where
        ``|A_gh| > 0.3`` (row = regulator, column = target).
    ``uns[key_added]``
        The latent-level GRN record (:mod:`pertgrn._grn_store`): ``level`` (``"latent"``),
        ``latents`` (names), ``dag`` (``n_latent × n_latent`` float32 ``A``, row = parent),
        ``lift`` (long table ``latent, gene, weight``: each target latent anchored at its gene),
        ``signed``, ``edge_rule`` (``min_weight`` 0.3); ``latent_shift`` (float array, the learned
        shift of each latent, NaN for free latents and untrained targets); ``ate`` (DataFrame
        condition × gene of the predicted average treatment effects of every observed condition
        whose targets were trained); ``history`` (DataFrame indexed by epoch, one column per
        logged term); ``params``; ``keys``; ``version``.

    plus what :meth:`~pertgrn.models.RaptorGraph.setup_anndata` registers
    (``obsm["_pertgrn_design"]``, ``obsm["_pertgrn_partner_index"]``,
    ``obsm["_pertgrn_partner_weight"]``, ``obs["_scvi_condition"]``, ``uns["_scvi_uuid"]``,
    ``uns["_scvi_manager_uuid"]``).

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(n_genes=60, n_regulators=6, n_perturbed=4, n_doubles=1,
    ...                              n_unmeasured_targets=1, n_control=80, cells_per_condition=30)
    >>> pg.pp.annotate_perturbations(adata)
    >>> pg.pp.ot_pairing(adata)
    >>> model = pg.tl.fit_raptorgraph(adata, max_epochs=2, model_kwargs={"decoder_n_hidden": 32},
    ...                               train_kwargs={"enable_progress_bar": False})
    >>> adata.obsm["X_raptorgraph"].shape[1]
    8
    >>> pg.get.grn_df(adata, key="raptorgraph", level="latent").columns.tolist()
    ['source', 'target', 'weight']
    """
    from pertgrn.models import RaptorGraph
    from pertgrn.models._base import fit_model

    setup = {"layer": layer, "pairing": pairing, "pairing_key": pairing_key}
    return fit_model(
        RaptorGraph,
        adata,
        key_added=key_added,
        test_key=test_key,
        setup_kwargs=setup,
        model_kwargs=model_kwargs,
        train_kwargs=train_kwargs,
        max_epochs=max_epochs,
        random_state=random_state,
    )

"""Loaders for public Perturb-seq screens: cached download, or a local copy, then harmonised labels.

Each loader reads one scPerturb ``.h5ad`` file (see :mod:`pertgrn.datasets._registry` for the
addresses, checksums and label conventions), either from ``path=`` or from a cache folder that it
fills with :func:`pooch.retrieve` on first use. The cache folder is ``data_dir=`` if given, else the
``PERTGRN_DATA_DIR`` environment variable, else :attr:`scanpy.settings.datasetdir`.

Whatever the source's conventions, the returned ``obs["perturbation"]`` follows pertgrn's: the
control label is ``"control"``, a combination is its targets sorted and joined by ``"+"``,
guide or plasmid identifiers appended to a target are removed and control tokens inside a
combination (the GEARS style ``"KLF1+ctrl"``) are dropped. The source's own labels are kept in
``obs["perturbation_original"]``, and every other column of the source is kept as it is.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from pertgrn._constants import KNOWN_CONTROL_LABELS
from pertgrn._utils import logger
from pertgrn.datasets._registry import (
    ADAMSON_2016,
    NORMAN_2019,
    PAPALEXI_2021,
    REPLOGLE_2022_K562,
    REPLOGLE_2022_RPE1,
    ScreenSource,
)

#: Environment variable naming the folder where downloaded screens are cached.
DATA_DIR_ENV = "PERTGRN_DATA_DIR"
#: Label of control cells after harmonisation.
CONTROL = "control"
#: Delimiter of combinations after harmonisation.
DELIMITER = "+"
#: ``obs`` column holding the harmonised labels.
PERTURBATION_KEY = "perturbation"
#: ``obs`` column keeping the source's labels when they were read from ``obs["perturbation"]``.
ORIGINAL_KEY = "perturbation_original"


class DatasetDownloadError(ConnectionError):
    """A public dataset could not be downloaded (no network, server error); the message says where to put it."""


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """Cache folder: ``data_dir``, else ``$PERTGRN_DATA_DIR``, else ``scanpy.settings.datasetdir``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV, "").strip()
    if from_env:
        return Path(from_env).expanduser()
    import scanpy as sc

    return Path(sc.settings.datasetdir).expanduser()


def _download_message(source: ScreenSource, destination: Path, err: BaseException) -> str:
    return (
        f"Could not download the {source.name} screen from {source.url} ({type(err).__name__}: {err}). "
        f"Without network access, fetch that file by other means and save it as {destination} "
        f"(the path pertgrn.datasets.{source.name}() reads from its cache: the folder is `data_dir=`, else the "
        f"{DATA_DIR_ENV} environment variable, else scanpy.settings.datasetdir), or pass a copy kept anywhere "
        f"with path=: pertgrn.datasets.{source.name}(path='/path/to/{source.filename}')."
    )


def _fetch(source: ScreenSource, data_dir: str | os.PathLike | None) -> Path:
    """Path of the cached file, downloading it (checksum verified where known) if it is not there yet."""
    folder = _resolve_data_dir(data_dir)
    destination = (folder / source.filename).absolute()
    if destination.is_file():
        logger.info("%s: reading the cached copy %s", source.name, destination)
        return destination
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("%s: downloading %s to %s", source.name, source.url, destination)
    import pooch

    try:
        fetched = pooch.retrieve(
            source.url,
            known_hash=source.known_hash,
            fname=source.filename,
            path=folder,
            progressbar=logger.getEffectiveLevel() <= logging.INFO,
        )
    except OSError as err:  # requests' ConnectionError, Timeout and HTTPError are OSErrors
        raise DatasetDownloadError(_download_message(source, destination, err)) from err
    return Path(fetched)


def _harmonise_label(label: str, source: ScreenSource, controls: frozenset[str]) -> str | None:
    """One source label in pertgrn's grammar; ``None`` for cells without an assigned guide."""
    text = label.strip()
    if text == "" or text in source.unassigned_labels:
        return None
    if text.casefold() in controls:
        return CONTROL
    separators = [re.escape(DELIMITER)] + ([re.escape(source.delimiter)] if source.delimiter else [])
    targets = []
    for token in re.split("|".join(separators), text):
        target = token.strip()
        if source.guide_suffix is not None:
            target = re.sub(source.guide_suffix, "", target)
        if target == "":
            raise ValueError(
                f"Perturbation label {label!r} of the {source.name} screen contains an empty target name; expected "
                f"targets joined by {source.delimiter or DELIMITER!r}."
            )
        if target.casefold() not in controls:
            targets.append(target)
    return DELIMITER.join(sorted(set(targets))) if targets else CONTROL


def _harmonise(adata: AnnData, source: ScreenSource, origin: Path) -> None:
    """Write the harmonised ``obs["perturbation"]`` (and keep the source labels); validates first."""
    if source.perturbation_key not in adata.obs.columns:
        raise KeyError(
            f"{origin} has no obs[{source.perturbation_key!r}] column, which scPerturb's {source.filename} has; "
            f"columns found: {list(adata.obs.columns)}."
        )
    raw = adata.obs[source.perturbation_key]
    controls = frozenset(c.casefold() for c in (*KNOWN_CONTROL_LABELS, *source.control_tokens))
    present = raw.notna().to_numpy()
    mapping = {label: _harmonise_label(str(label), source, controls) for label in pd.unique(raw[present])}
    harmonised = raw.astype(object).map(mapping)
    conditions = sorted(
        {c for c in mapping.values() if c is not None and c != CONTROL}, key=lambda c: (c.count(DELIMITER), c)
    )
    categories = [CONTROL, *conditions]

    # every check passed: write
    if source.perturbation_key == PERTURBATION_KEY and ORIGINAL_KEY not in adata.obs.columns:
        adata.obs[ORIGINAL_KEY] = raw.copy()
    adata.obs[PERTURBATION_KEY] = pd.Categorical(harmonised.to_numpy(), categories=categories)
    counts = adata.obs[PERTURBATION_KEY].value_counts()
    logger.info(
        "%s: %d cells, %d control cells, %d perturbations (%d combinations), %d cells without an assigned guide",
        source.name,
        adata.n_obs,
        int(counts.get(CONTROL, 0)),
        len(conditions),
        sum(DELIMITER in c for c in conditions),
        int(adata.obs[PERTURBATION_KEY].isna().sum()),
    )


def _load(
    source: ScreenSource,
    *,
    path: str | os.PathLike | None,
    data_dir: str | os.PathLike | None,
) -> AnnData:
    if path is not None and data_dir is not None:
        raise ValueError(
            f"Pass either `path=` (a local copy of {source.filename}) or `data_dir=` (the cache folder), not both; "
            f"got path={str(path)!r} and data_dir={str(data_dir)!r}."
        )
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(
                f"No file at path={str(file)!r} (resolved to {file.absolute()}); expected a copy of {source.filename} "
                f"downloaded from {source.url}."
            )
    else:
        file = _fetch(source, data_dir)
    adata = ad.read_h5ad(file)
    _harmonise(adata, source, file)
    return adata


def norman_2019(
    *,
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> AnnData:
    """Norman et al. 2019: combinatorial CRISPRa screen in K562 cells (single and paired activations).

    K562 cells with dCas9-based CRISPR activation received one or two sgRNAs, activating about 100
    genes singly and about 130 gene pairs; more than 100,000 cells passed the authors' filter. Many
    activated genes are barely expressed in unperturbed K562 cells.

    Source paper: Norman, T. M., Horlbeck, M. A., Replogle, J. M. et al. Exploring genetic
    interaction manifolds constructed from rich single-cell phenotypes. *Science* 365, 786–793
    (2019). https://doi.org/10.1126/science.aax4438 (raw data: GEO GSE133344).

    File: ``NormanWeissman2019_filtered.h5ad`` of scPerturb (Peidli et al. 2024, *Nat Methods*,
    https://doi.org/10.1038/s41592-023-02144-y), Zenodo record 10044268,
    https://zenodo.org/records/10044268/files/NormanWeissman2019_filtered.h5ad?download=1
    (about 700 MB, md5 ``c870e6967d91c017d9da827bab183cd6``, CC BY 4.0): raw UMI counts of the
    authors' filtered cells, gene symbols as ``var_names``.

    Harmonisation: scPerturb writes ``"control"`` for cells with two negative-control guides, the
    target (``"KLF1"``) for a single activation and the two targets joined by ``"_"``
    (``"CBL_CNN1"``) for a pair. The pair becomes ``"CBL+CNN1"`` (targets sorted), a control token
    inside a combination (``"KLF1+ctrl"``) is dropped.

    Parameters
    ----------
    path
        A local copy of ``NormanWeissman2019_filtered.h5ad`` (as downloaded from Zenodo) to read
        instead of the cache; nothing is downloaded.
    data_dir
        Cache folder. ``None`` uses the ``PERTGRN_DATA_DIR`` environment variable, else
        ``scanpy.settings.datasetdir``. The file is read from ``<folder>/NormanWeissman2019_filtered.h5ad``
        and downloaded there (checksum verified) when absent.

    Returns
    -------
    A new :class:`~anndata.AnnData`, cells × genes, raw counts in ``X``, every column of the source
    kept (``guide_id``, ``UMI_count``, ``gemgroup``, …), with

    ``obs["perturbation"]``
        Categorical harmonised label, shape ``(n_obs,)``: ``"control"`` (first category), ``"KLF1"``,
        ``"CBL+CNN1"``.
    ``obs["perturbation_original"]``
        The source's labels, shape ``(n_obs,)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` is given but no file is there.
    DatasetDownloadError
        (a :class:`ConnectionError`) If the download fails; the message names the URL and the path
        where a copy fetched by other means should be saved.
    KeyError
        If the file has no ``obs["perturbation"]`` column.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.norman_2019()  # doctest: +SKIP
    >>> adata = pg.datasets.norman_2019(path="NormanWeissman2019_filtered.h5ad")  # doctest: +SKIP
    >>> pg.pp.annotate_perturbations(adata, control="control")  # doctest: +SKIP
    """
    return _load(NORMAN_2019, path=path, data_dir=data_dir)


def replogle_2022_k562(
    *,
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> AnnData:
    """Replogle et al. 2022: essential-scale CRISPRi Perturb-seq in K562 cells.

    K562 cells expressing dCas9-KRAB received a dual-sgRNA CRISPRi library against about 2,000
    common essential genes (DepMap 20Q1) and non-targeting controls; about 310,000 cells were
    profiled on day 6 after transduction, with one knockdown per cell.

    Source paper: Replogle, J. M., Saunders, R. A., Pogson, A. N. et al. Mapping information-rich
    genotype-phenotype landscapes with genome-scale Perturb-seq. *Cell* 185, 2559–2575.e28 (2022).
    https://doi.org/10.1016/j.cell.2022.05.013 (authors' files: figshare+ 20029387,
    ``K562_essential_raw_singlecell_01.h5ad``).

    File: ``ReplogleWeissman2022_K562_essential.h5ad`` of scPerturb (Peidli et al. 2024,
    *Nat Methods*, https://doi.org/10.1038/s41592-023-02144-y), Zenodo record 10044268,
    https://zenodo.org/records/10044268/files/ReplogleWeissman2022_K562_essential.h5ad?download=1
    (about 1.5 GB, md5 ``d8cba17576d1a8afc0f7d71b79cad0f7``, CC BY 4.0): raw UMI counts, gene
    symbols as ``var_names`` (Ensembl ids in ``var["ensembl_id"]``).

    Harmonisation: scPerturb copies the target gene (``obs["gene"]``) into ``obs["perturbation"]``;
    non-targeting cells read ``"non-targeting"`` or ``"control"`` depending on the scPerturb
    version and become ``"control"``. Targets are kept as written.

    Parameters
    ----------
    path
        A local copy of ``ReplogleWeissman2022_K562_essential.h5ad`` (as downloaded from Zenodo)
        to read instead of the cache; nothing is downloaded.
    data_dir
        Cache folder. ``None`` uses the ``PERTGRN_DATA_DIR`` environment variable, else
        ``scanpy.settings.datasetdir``. The file is read from
        ``<folder>/ReplogleWeissman2022_K562_essential.h5ad`` and downloaded there (checksum
        verified) when absent.

    Returns
    -------
    A new :class:`~anndata.AnnData`, cells × genes, raw counts in ``X``, every column of the source
    kept (``gene``, ``guide_id``, ``batch``, …), with

    ``obs["perturbation"]``
        Categorical harmonised label, shape ``(n_obs,)``: ``"control"`` (first category) or the
        knocked-down gene.
    ``obs["perturbation_original"]``
        The source's labels, shape ``(n_obs,)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` is given but no file is there.
    DatasetDownloadError
        (a :class:`ConnectionError`) If the download fails; the message names the URL and the path
        where a copy fetched by other means should be saved.
    KeyError
        If the file has no ``obs["perturbation"]`` column.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.replogle_2022_k562()  # doctest: +SKIP
    >>> adata.obs["perturbation"].cat.categories[0]  # doctest: +SKIP
    'control'
    """
    return _load(REPLOGLE_2022_K562, path=path, data_dir=data_dir)


def replogle_2022_rpe1(
    *,
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> AnnData:
    """Replogle et al. 2022: essential-scale CRISPRi Perturb-seq in hTERT RPE-1 cells.

    The essential-gene library of :func:`replogle_2022_k562` in non-cancerous RPE-1 cells expressing
    ZIM3 KRAB-dCas9, profiled on day 7 after transduction (about 250,000 cells, one knockdown per
    cell).

    Source paper: Replogle, J. M., Saunders, R. A., Pogson, A. N. et al. Mapping information-rich
    genotype-phenotype landscapes with genome-scale Perturb-seq. *Cell* 185, 2559–2575.e28 (2022).
    https://doi.org/10.1016/j.cell.2022.05.013 (authors' files: figshare+ 20029387,
    ``rpe1_raw_singlecell_01.h5ad``).

    File: ``ReplogleWeissman2022_rpe1.h5ad`` of scPerturb (Peidli et al. 2024, *Nat Methods*,
    https://doi.org/10.1038/s41592-023-02144-y), Zenodo record 10044268,
    https://zenodo.org/records/10044268/files/ReplogleWeissman2022_rpe1.h5ad?download=1
    (md5 ``cc7f1ec50aeb3a3e1b4a6cfa713d80fa``, CC BY 4.0): raw UMI counts, gene symbols as
    ``var_names`` (Ensembl ids in ``var["ensembl_id"]``).

    Harmonisation: as for :func:`replogle_2022_k562`: ``"non-targeting"`` (or ``"control"``)
    becomes ``"control"``, targets are kept as written.

    Parameters
    ----------
    path
        A local copy of ``ReplogleWeissman2022_rpe1.h5ad`` (as downloaded from Zenodo) to read
        instead of the cache; nothing is downloaded.
    data_dir
        Cache folder. ``None`` uses the ``PERTGRN_DATA_DIR`` environment variable, else
        ``scanpy.settings.datasetdir``. The file is read from ``<folder>/ReplogleWeissman2022_rpe1.h5ad``
        and downloaded there (checksum verified) when absent.

    Returns
    -------
    A new :class:`~anndata.AnnData`, cells × genes, raw counts in ``X``, every column of the source
    kept (``gene``, ``guide_id``, ``batch``, …), with

    ``obs["perturbation"]``
        Categorical harmonised label, shape ``(n_obs,)``: ``"control"`` (first category) or the
        knocked-down gene.
    ``obs["perturbation_original"]``
        The source's labels, shape ``(n_obs,)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` is given but no file is there.
    DatasetDownloadError
        (a :class:`ConnectionError`) If the download fails; the message names the URL and the path
        where a copy fetched by other means should be saved.
    KeyError
        If the file has no ``obs["perturbation"]`` column.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.replogle_2022_rpe1(data_dir="~/screens")  # doctest: +SKIP
    """
    return _load(REPLOGLE_2022_RPE1, path=path, data_dir=data_dir)


def adamson_2016(
    *,
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    drop_unassigned: bool = True,
) -> AnnData:
    """Adamson et al. 2016: Perturb-seq CRISPRi screen of the unfolded protein response in K562 cells.

    The "UPR Perturb-seq" experiment (GEO sample GSM2406681, 10x run 10X010): K562 cells with
    dCas9-KRAB received one of 91 sgRNAs against 82 genes (two or three guides for some genes) or a
    negative-control sgRNA; about 65,000 cells were profiled in one pooled experiment.

    Source paper: Adamson, B., Norman, T. M., Jost, M. et al. A multiplexed single-cell CRISPR
    screening platform enables systematic dissection of the unfolded protein response. *Cell* 167,
    1867–1882.e21 (2016). https://doi.org/10.1016/j.cell.2016.11.048 (raw data: GEO GSE90546).

    File: ``AdamsonWeissman2016_GSM2406681_10X010.h5ad`` of scPerturb (Peidli et al. 2024,
    *Nat Methods*, https://doi.org/10.1038/s41592-023-02144-y), Zenodo record 10044268,
    https://zenodo.org/records/10044268/files/AdamsonWeissman2016_GSM2406681_10X010.h5ad?download=1
    (about 450 MB, md5 ``2fa44ea61a8dd35742af618638ec65fc``, CC BY 4.0): raw UMI counts, gene
    symbols as ``var_names`` (Ensembl ids in ``var["ensembl_id"]``).

    Harmonisation: scPerturb keeps GEO's ``guide identity``, target and plasmid
    (``"ATF4_pBA576"``, ``"AARS_pDS381"``); the plasmid is removed, so the guides of one gene share
    one label (``"ATF4"``). The negative-control sgRNAs ``"62(mod)_pBA581"`` and ``"63(mod)_pBA580"``
    (non-targeting) and ``"Gal4-4(mod)_pBA582"`` (against the yeast *GAL4* gene, absent from the
    human genome) become ``"control"``. Cells without an assigned guide (label ``"*"`` or missing)
    have no label.

    Parameters
    ----------
    path
        A local copy of ``AdamsonWeissman2016_GSM2406681_10X010.h5ad`` (as downloaded from Zenodo)
        to read instead of the cache; nothing is downloaded.
    data_dir
        Cache folder. ``None`` uses the ``PERTGRN_DATA_DIR`` environment variable, else
        ``scanpy.settings.datasetdir``. The file is read from
        ``<folder>/AdamsonWeissman2016_GSM2406681_10X010.h5ad`` and downloaded there (checksum
        verified) when absent.
    drop_unassigned
        Remove the cells without an assigned guide, so that every cell has a label (as
        :func:`pertgrn.pp.annotate_perturbations` requires). With ``False`` they are kept with a
        missing ``obs["perturbation"]``.

    Returns
    -------
    A new :class:`~anndata.AnnData`, cells × genes, raw counts in ``X``, every column of the source
    kept, with

    ``obs["perturbation"]``
        Categorical harmonised label, shape ``(n_obs,)``: ``"control"`` (first category) or the
        knocked-down gene; missing for unassigned cells when ``drop_unassigned=False``.
    ``obs["perturbation_original"]``
        The source's labels (guide and plasmid), shape ``(n_obs,)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` is given but no file is there.
    DatasetDownloadError
        (a :class:`ConnectionError`) If the download fails; the message names the URL and the path
        where a copy fetched by other means should be saved.
    KeyError
        If the file has no ``obs["perturbation"]`` column.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.adamson_2016()  # doctest: +SKIP
    >>> adata.obs["perturbation_original"].iloc[0], adata.obs["perturbation"].iloc[0]  # doctest: +SKIP
    ('ATF4_pBA576', 'ATF4')
    """
    if not isinstance(drop_unassigned, bool | np.bool_):
        raise TypeError(f"`drop_unassigned` must be a bool, got {type(drop_unassigned).__name__}.")
    adata = _load(ADAMSON_2016, path=path, data_dir=data_dir)
    unassigned = adata.obs[PERTURBATION_KEY].isna().to_numpy()
    if drop_unassigned and unassigned.any():
        logger.info("adamson_2016: dropping %d cells without an assigned guide", int(unassigned.sum()))
        adata = adata[~unassigned].copy()
    return adata


def papalexi_2021(
    *,
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> AnnData:
    """Papalexi et al. 2021: ECCITE-seq CRISPR knockout screen of immune checkpoint regulators in THP-1 cells.

    THP-1 monocytic cells stimulated with interferon-γ received a CRISPR knockout sgRNA against
    one of 25 genes of the interferon-γ / PD-L1 pathways (up to four guides each) or a
    non-targeting guide; ECCITE-seq measured RNA, guide, hashtag and four surface proteins (CD86,
    PD-L1, PD-L2, CD366) in about 20,000 cells. This loader returns the RNA modality; the protein
    counts are a separate scPerturb file, ``PapalexiSatija2021_eccite_protein.h5ad`` (same cells,
    same order).

    Source paper: Papalexi, E., Mimitou, E. P., Butler, A. W. et al. Characterizing the molecular
    regulation of inhibitory immune checkpoints with multimodal single-cell screens. *Nat Genet* 53,
    322–331 (2021). https://doi.org/10.1038/s41588-021-00778-2 (raw data: GEO GSE153056).

    File: ``PapalexiSatija2021_eccite_RNA.h5ad`` of scPerturb (Peidli et al. 2024, *Nat Methods*,
    https://doi.org/10.1038/s41592-023-02144-y), Zenodo record 7041849,
    https://zenodo.org/records/7041849/files/PapalexiSatija2021_eccite_RNA.h5ad?download=1
    (sha256 ``03e9602d124c261281936717d5795445805e6e704a52b0310bcde94225aa0929``, CC BY 4.0): raw UMI
    counts, gene symbols as ``var_names``; the replicate hashtag is in ``obs["hto"]``.

    Harmonisation: scPerturb labels each cell with its most-read guide, ``"<target>g<n>"``
    (``"ATF2g1"``), and non-targeting guides as ``"control"``; the guide number is removed, so the
    guides of one gene share one label (``"ATF2"``). A label already at the target level, with
    ``"non-targeting"`` or ``"NT"`` controls, is read the same way.

    Parameters
    ----------
    path
        A local copy of ``PapalexiSatija2021_eccite_RNA.h5ad`` (as downloaded from Zenodo) to read
        instead of the cache; nothing is downloaded.
    data_dir
        Cache folder. ``None`` uses the ``PERTGRN_DATA_DIR`` environment variable, else
        ``scanpy.settings.datasetdir``. The file is read from ``<folder>/PapalexiSatija2021_eccite_RNA.h5ad``
        and downloaded there (checksum verified) when absent.

    Returns
    -------
    A new :class:`~anndata.AnnData` of the RNA modality, cells × genes, raw counts in ``X``, every
    column of the source kept (``guide_id``, ``hto``, ``gdo``, …), with

    ``obs["perturbation"]``
        Categorical harmonised label, shape ``(n_obs,)``: ``"control"`` (first category) or the
        knocked-out gene.
    ``obs["perturbation_original"]``
        The source's (guide-level) labels, shape ``(n_obs,)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` is given but no file is there.
    DatasetDownloadError
        (a :class:`ConnectionError`) If the download fails; the message names the URL and the path
        where a copy fetched by other means should be saved.
    KeyError
        If the file has no ``obs["perturbation"]`` column.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.papalexi_2021()  # doctest: +SKIP
    >>> pg.pp.annotate_perturbations(adata, control="control")  # doctest: +SKIP
    """
    return _load(PAPALEXI_2021, path=path, data_dir=data_dir)

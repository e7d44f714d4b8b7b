"""The activity field of the gCRL VAEs: TF-community activities, with their communities in the registry."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from anndata import AnnData

from pertgrn._utils import logger
from pertgrn.models._base import DerivedObsmField
from pertgrn.models._gcrlvae._module import ACTIVITY_KEY

ACTIVITY_OBSM_KEY = "_pertgrn_tf_activity"


# ------------------------------------------------------------------------------------------------
# TF-community activities and the communities behind them
# ------------------------------------------------------------------------------------------------
def community_record(adata: AnnData, communities_key: str) -> tuple[list[str], list[int], list[str]]:
    """``(tfs, community of each TF, every GRN TF)`` from :func:`pertgrn.pp.tf_communities`'s record."""
    record = adata.uns.get(communities_key)
    if not isinstance(record, Mapping) or "communities" not in record or "tfs" not in record:
        raise KeyError(
            f"adata.uns[{communities_key!r}] holds no TF communities. Run `pertgrn.pp.reference_grn`, "
            f"`pertgrn.pp.tf_communities(adata, key_added={communities_key!r})` and `pertgrn.pp.tf_activity` "
            "first, or use variant='d' (no communities) with activity_key=None."
        )
    table = pd.DataFrame(record["communities"])
    tfs = table["tf"].astype(str).tolist()
    labels = table["community"].to_numpy(np.int64).tolist()
    return tfs, labels, [str(t) for t in record["tfs"]]


def check_activity(adata: AnnData, activity_key: str, n_columns: int) -> np.ndarray:
    """``obsm[activity_key]`` as float32, checked against the number of community columns (``K + 1``)."""
    if activity_key not in adata.obsm:
        raise KeyError(
            f"adata.obsm[{activity_key!r}] is missing. Run `pertgrn.pp.tf_activity(adata, key_added={activity_key!r})` "
            "first (with fit_mask = the training cells)."
        )
    values = np.asarray(adata.obsm[activity_key], dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != n_columns:
        raise ValueError(
            f"adata.obsm[{activity_key!r}] has shape {values.shape}; expected (n_obs, {n_columns}): one activity per "
            "community and the global activity last, as `pertgrn.pp.tf_activity` writes for these communities."
        )
    if not np.isfinite(values).all():
        raise ValueError(f"adata.obsm[{activity_key!r}] holds NaN or infinite values.")
    return values.astype(np.float32)


def activity_field(
    adata: AnnData, *, activity_key: str, communities_key: str, transfer: bool = False
) -> DerivedObsmField:
    """The activity field; its state keeps the communities (so a saved model knows them without ``uns``)."""
    tfs, labels, all_tfs = community_record(adata, communities_key)
    n_communities = max(labels) + 1 if labels and max(labels) >= 0 else 0
    if n_communities == 0:
        raise ValueError(f"adata.uns[{communities_key!r}] has no community (every TF is unpartitioned).")
    sizes = np.bincount([c for c in labels if c >= 0], minlength=n_communities)
    if (sizes == 1).any():
        logger.warning(
            "GCRLVAE: communities %s have a single TF; their latent is aligned with that TF's z-scored expression.",
            np.flatnonzero(sizes == 1).tolist(),
        )
    columns = [f"C{c}" for c in range(n_communities)] + ["global"]
    state = {
        "activity_key": activity_key,
        "communities_key": communities_key,
        "community_tfs": tfs,
        "community_labels": [int(c) for c in labels],
        "grn_tfs": all_tfs,
        "transfer_ok": True,
    }
    precomputed = _activities(adata, {**state, "column_names": columns, "transfer_ok": transfer})
    return DerivedObsmField(
        ACTIVITY_KEY,
        ACTIVITY_OBSM_KEY,
        compute=_activities,
        columns=columns,
        precomputed=precomputed,
        extra_state=state,
    )


def _activities(adata: AnnData, state: Mapping) -> np.ndarray:
    """``compute`` of the activity field; zeros for new cells without activities when ``transfer_ok``.

    A module-level function, not a closure, so that a registered manager pickles (Lightning's
    ``ddp_spawn`` sends the model to the processes it starts).
    """
    if state.get("transfer_ok", False) and state["activity_key"] not in adata.obsm:
        logger.debug("adata.obsm[%r] is absent: cells are set up without activities.", state["activity_key"])
        return np.zeros((adata.n_obs, len(state["column_names"])), dtype=np.float32)
    return check_activity(adata, state["activity_key"], len(state["column_names"]))

"""The metrics that ``tl.evaluate`` wrote for several models and baselines, as one tidy table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from anndata import AnnData


def metrics_df(adata: AnnData, *, keys: Sequence[str] | str | None = None) -> pd.DataFrame:
    """Return the metrics written by :func:`pertgrn.tl.evaluate` as a long ``key, metric, value`` table.

    Parameters
    ----------
    adata
        AnnData on which :func:`pertgrn.tl.evaluate` was run for one or more keys.
    keys
        The ``key_added`` of the models and baselines to collect; ``None`` collects every entry of
        ``uns`` holding metrics (in ``uns`` order).

    Returns
    -------
    :class:`pandas.DataFrame` with columns ``key`` (str), ``metric`` (str) and ``value`` (float),
    one row per key and metric, keys in the order given. Pivot it
    (``df.pivot(index="metric", columns="key", values="value")``) for a side-by-side comparison.
    Nothing is written to ``adata``.

    Examples
    --------
    >>> import pertgrn as pg
    >>> adata = pg.datasets.simulate(seed=0)
    >>> pg.pp.annotate_perturbations(adata, control="control")
    >>> for method in ("de", "correlation"):
    ...     pg.tl.baseline_grn(adata, method=method)
    ...     _ = pg.tl.evaluate(adata, key=f"baseline_{method}", metrics=["grn_auprc", "n_edges"])
    >>> pg.get.metrics_df(adata)["key"].unique().tolist()
    ['baseline_de', 'baseline_correlation']
    """
    if keys is None:
        keys = [k for k, v in adata.uns.items() if isinstance(v, Mapping) and "metrics" in v]
    elif isinstance(keys, str):
        keys = [keys]
    frames = []
    for key in keys:
        entry = adata.uns.get(key)
        if not isinstance(entry, Mapping) or "metrics" not in entry:
            evaluated = [k for k, v in adata.uns.items() if isinstance(v, Mapping) and "metrics" in v]
            raise KeyError(
                f"No metrics under adata.uns[{key!r}]; run `pertgrn.tl.evaluate(adata, key={key!r})` first. "
                f"Evaluated keys: {evaluated}."
            )
        table = pd.DataFrame(entry["metrics"])
        frames.append(
            pd.DataFrame({"key": str(key), "metric": table.index.astype(str), "value": table["value"].to_numpy(float)})
        )
    if not frames:
        return pd.DataFrame({"key": pd.Series(dtype=str), "metric": pd.Series(dtype=str), "value": []})
    return pd.concat(frames, ignore_index=True)

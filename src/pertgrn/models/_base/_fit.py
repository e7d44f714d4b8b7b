"""One fitting path for every ``tl.fit_*``: validate, set up, train, write the results back.

A ``tl.fit_<model>`` function documents its model's arguments and calls :func:`fit_model`; what
is written (latents in ``obsm``, the GRN record in ``varp``/``uns``, history, predicted effects,
parameters) is the same for every model and comes from :func:`write_results`.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from pertgrn._constants import CONDITION_KEY
from pertgrn._grn_store import grn_varp_key, write_grn
from pertgrn._utils import logger

if TYPE_CHECKING:
    from pertgrn.models._base._model import PerturbationModel


def result_keys(key_added: str) -> dict[str, str]:
    """Every AnnData key a ``tl.fit_*`` writes, derived from ``key_added``."""
    return {
        "obsm": f"X_{key_added}",
        "varp": grn_varp_key(key_added),
        "varm": f"{key_added}_loadings",
        "uns": key_added,
    }


def h5ad_safe(value: Any) -> Any:
    """A parameter value as something h5ad can store (``None`` entries of mappings are dropped)."""
    if isinstance(value, bool | str | numbers.Number | np.ndarray):
        return value
    if isinstance(value, Mapping):
        return {str(k): h5ad_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        items = [h5ad_safe(v) for v in value]
        if all(isinstance(v, str) for v in items) or all(
            isinstance(v, numbers.Number) and not isinstance(v, bool) for v in items
        ):
            return items
        return [str(v) for v in items]
    return str(value)


def allowed_train_kwargs(model_cls: type[PerturbationModel]) -> set[str]:
    """Names ``model_cls.train`` accepts, including those it passes on to the scvi-tools / Lightning trainers."""
    import lightning.pytorch as pl
    from scvi.train import Trainer

    names: set[str] = set()
    # a model's train passes what it does not name on to the base class's train (and that to the trainers)
    for cls in model_cls.__mro__:
        if "train" in vars(cls):
            names |= {
                n
                for n, p in inspect.signature(vars(cls)["train"]).parameters.items()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            }
    for cls in (Trainer, pl.Trainer):
        names |= {
            n
            for n, p in inspect.signature(cls.__init__).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
    return names - {"self"}


def check_test_key(adata: AnnData, test_key: str | None) -> None:
    """``test_key`` must name a boolean ``obs`` column that leaves training cells."""
    if test_key is None:
        return
    if not isinstance(test_key, str) or test_key not in adata.obs.columns:
        raise KeyError(f"`test_key` {test_key!r} is not a column of adata.obs; available: {list(adata.obs.columns)}.")
    if not pd.api.types.is_bool_dtype(adata.obs[test_key]):
        raise TypeError(
            f"adata.obs[{test_key!r}] must be boolean (True = held-out cell), found {adata.obs[test_key].dtype}."
        )
    if adata.obs[test_key].all():
        raise ValueError(f"adata.obs[{test_key!r}] holds out every cell; nothing is left to train on.")


def fit_model(
    model_cls: type[PerturbationModel],
    adata: AnnData,
    *,
    key_added: str,
    test_key: str | None,
    setup_kwargs: Mapping[str, Any],
    model_kwargs: Mapping[str, Any] | None,
    train_kwargs: Mapping[str, Any] | None,
    max_epochs: int | None,
    random_state: int | None,
    grn_min_weight: float | None = None,
) -> PerturbationModel:
    """Validate, set up, train and write back; what every ``tl.fit_*`` does.

    Every argument is checked before ``adata`` is touched. Held-out cells (``obs[test_key]``) never
    influence the fit; they still get latents, since encoding a cell does not train on it.

    Returns
    -------
    The trained model; see :func:`write_results` for what is written.
    """
    import scvi

    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData, found {type(adata).__name__}.")
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"`key_added` must be a non-empty string, found {key_added!r}.")
    for name, value in (("model_kwargs", model_kwargs), ("train_kwargs", train_kwargs)):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(f"`{name}` must be a dict or None, found {type(value).__name__}.")
    model_kwargs = dict(model_kwargs or {})
    train_kwargs = dict(train_kwargs or {})
    if hasattr(model_cls, "check_params"):
        model_cls.check_params(**model_kwargs)
    unknown = sorted(set(train_kwargs) - allowed_train_kwargs(model_cls))
    if unknown:
        raise TypeError(
            f"Unknown training argument(s) {unknown}; see `{model_cls.__name__}.train` and `scvi.train.Trainer`."
        )
    if "max_epochs" in train_kwargs:
        raise TypeError("Pass `max_epochs` directly, not inside `train_kwargs`.")
    if max_epochs is not None and (
        isinstance(max_epochs, bool) or not isinstance(max_epochs, numbers.Integral) or max_epochs < 1
    ):
        raise ValueError(f"`max_epochs` must be a positive integer or None, found {max_epochs!r}.")
    if random_state is not None and (isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral)):
        raise TypeError(f"`random_state` must be an integer or None, found {random_state!r}.")
    if grn_min_weight is not None and (
        isinstance(grn_min_weight, bool)
        or not isinstance(grn_min_weight, numbers.Real)
        or not np.isfinite(grn_min_weight)
        or grn_min_weight < 0
    ):
        raise ValueError(f"`grn_min_weight` must be a non-negative number or None, found {grn_min_weight!r}.")
    check_test_key(adata, test_key)

    if random_state is not None:
        scvi.settings.seed = int(random_state)
    # set-up validates everything before it writes its registration fields
    model_cls.setup_anndata(adata, test_key=test_key, **setup_kwargs)
    model = model_cls(adata, **model_kwargs)
    model.train(max_epochs=max_epochs, **train_kwargs)
    params = {
        "model": dict(model.init_params_.get("non_kwargs", {})),
        "train": {**train_kwargs, "max_epochs": max_epochs if max_epochs is not None else "auto"},
        "setup": dict(setup_kwargs),
        "test_key": test_key,
        "random_state": random_state,
    }
    write_results(model, adata, key_added=key_added, params=params, grn_min_weight=grn_min_weight)
    return model


def predicted_condition_effects(model: PerturbationModel, adata: AnnData) -> pd.DataFrame:
    """Predicted effects of every observed condition the model can decode (others are logged and skipped)."""
    control = model.design.control
    known = set(model.predictable_targets)
    conditions, skipped = [], []
    for condition in adata.obs[CONDITION_KEY].cat.categories:
        if condition == control:
            continue
        (conditions if set(model.design.split(condition)) <= known else skipped).append(str(condition))
    if skipped:
        logger.info("%s cannot predict %d observed conditions: %s", type(model).__name__, len(skipped), skipped[:10])
    if not conditions:
        return pd.DataFrame(columns=adata.var_names, dtype=np.float32)
    ate = model.get_ate(conditions).astype(np.float32)
    ate.index.name = "perturbation"
    return ate


def write_results(
    model: PerturbationModel,
    adata: AnnData,
    *,
    key_added: str,
    params: Mapping[str, Any],
    grn_min_weight: float | None = None,
) -> None:
    """Write what a fitted model learned into ``adata`` (computed first, then written).

    ``grn_min_weight`` replaces the model's storage rule (edges whose strength exceeds it are
    stored); ``None`` keeps the model's own.

    ``obsm["X_<key_added>"]``
        ``n_obs × n_latent`` float32 latent of every cell (:meth:`get_latent_representation`).
    ``varm["<key_added>_loadings"]``
        ``n_vars × n_latent`` float32 gene loadings of the latents, for models that have them
        (:meth:`~pertgrn.models._base.PerturbationModel.get_loadings` returns a table).
    ``varp["<key_added>_grn"]`` and ``uns[key_added]``
        The GRN record (see :mod:`pertgrn._grn_store`), plus ``history`` (per-epoch loss terms),
        ``ate`` (predicted effects of every observed condition the model can decode), ``params``
        (model, training and set-up arguments, ``test_key``, ``random_state``, ``n_epochs_trained``),
        ``keys`` (pointers to the slots written) and what the model adds (``_uns_extra``).
    """
    keys = result_keys(key_added)
    latent = np.asarray(model.get_latent_representation(), dtype=np.float32)
    record = model._grn_record()
    if grn_min_weight is not None:
        record.min_weight = float(grn_min_weight)
    loadings = model.get_loadings() if model.has_loadings else None
    uns_extra = model._uns_extra()
    history = model.history_summary()
    ate = predicted_condition_effects(model, adata)
    params = {
        **params,
        "n_epochs_trained": int(history["train_loss"].notna().sum()) if "train_loss" in history else 0,
        "model_class": type(model).__name__,
    }
    written = {"obsm": keys["obsm"], "varp": keys["varp"]}
    if loadings is not None:
        loadings = loadings.reindex(adata.var_names.astype(str)).to_numpy(dtype=np.float32)
        written["varm"] = keys["varm"]
    adata.obsm[keys["obsm"]] = latent
    if loadings is not None:
        adata.varm[keys["varm"]] = loadings
    write_grn(
        adata,
        key=key_added,
        grn=record,
        params=h5ad_safe({k: v for k, v in params.items() if v is not None}),
        extra={**uns_extra, "keys": written, "history": history, "ate": ate},
    )
    logger.info(
        "%s: %s-level GRN with %d stored edges; wrote %s",
        type(model).__name__,
        record.level,
        int(adata.varp[keys["varp"]].nnz),
        ", ".join(f"{slot}[{key!r}]" for slot, key in {**written, "uns": keys["uns"]}.items()),
    )

"""Checking a model's keyword arguments before anything is built: one rule set for every model.

Each model's ``check_params`` states which arguments are integers (and their smallest value), which
are real numbers (and of what kind), which take one of a few words and which are flags; this module
applies the rules and words the errors. ``None`` passes only where the signature's default is
``None``: there it means "the model (or its preset) decides".
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Collection, Mapping
from typing import Any, Literal

import numpy as np

RealKind = Literal["finite", "non-negative", "positive", "open unit interval"]

_REAL_RULES: dict[str, tuple[Any, str]] = {
    "finite": (lambda v: True, "a finite number"),
    "non-negative": (lambda v: v >= 0, "a finite number >= 0"),
    "positive": (lambda v: v > 0, "a positive number"),
    "open unit interval": (lambda v: 0 < v < 1, "a number in (0, 1)"),
}


def check_model_params(
    model_cls: type,
    params: Mapping[str, Any],
    *,
    integers: Mapping[str, int] | None = None,
    reals: Mapping[str, RealKind] | None = None,
    choices: Mapping[str, Collection[Any]] | None = None,
    flags: Collection[str] = (),
) -> None:
    """Check the keyword arguments ``params`` of ``model_cls(adata, **params)``.

    Parameters
    ----------
    model_cls
        The model class; its ``__init__`` signature gives the allowed names and the defaults.
    params
        The arguments to check.
    integers
        Name → smallest allowed value (1: a positive integer, 0: a non-negative one).
    reals
        Name → kind of real number: ``"finite"``, ``"non-negative"``, ``"positive"`` or
        ``"open unit interval"``.
    choices
        Name → allowed values.
    flags
        Names of boolean arguments.

    Raises
    ------
    TypeError
        For a name the model does not take (listing those it takes).
    ValueError
        For a value outside its rule, naming the argument.

    Examples
    --------
    >>> from pertgrn.models import GPOVAE
    >>> check_model_params(GPOVAE, {"n_hops": 2}, integers={"n_hops": 0})
    >>> check_model_params(GPOVAE, {"n_hops": -1}, integers={"n_hops": 0})
    Traceback (most recent call last):
    ...
    ValueError: `n_hops` must be an integer >= 0, found -1.
    """
    signature = inspect.signature(model_cls.__init__).parameters
    allowed = set(signature) - {"self", "adata"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise TypeError(f"Unknown {model_cls.__name__} parameter(s) {unknown}; allowed: {sorted(allowed)}.")
    for name, value in params.items():
        if value is None and signature[name].default is None:
            continue
        if integers and name in integers:
            smallest = integers[name]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < smallest:
                wanted = "a positive integer" if smallest == 1 else f"an integer >= {smallest}"
                raise ValueError(f"`{name}` must be {wanted}, found {value!r}.")
        elif reals and name in reals:
            holds, wanted = _REAL_RULES[reals[name]]
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not np.isfinite(value)
                or not holds(value)
            ):
                raise ValueError(f"`{name}` must be {wanted}, found {value!r}.")
        elif choices and name in choices:
            if value not in choices[name]:
                raise ValueError(f"`{name}` must be one of {tuple(choices[name])}, found {value!r}.")
        elif name in flags and not isinstance(value, bool):
            raise ValueError(f"`{name}` must be True or False, found {value!r}.")

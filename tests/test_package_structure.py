"""Conventions over the whole public API, as scanpy's tests/test_package_structure.py does."""

from __future__ import annotations

import inspect
import re
from types import FunctionType

import pytest

import pertgrn as pg

SCANPY_STYLE_MODULES = ("pp", "tl", "pl", "get")


def _public_functions(module_names):
    for mod_name in module_names:
        mod = getattr(pg, mod_name)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if isinstance(obj, FunctionType):
                yield pytest.param(obj, id=f"{mod_name}.{name}")


def _sections(doc: str) -> set[str]:
    return set(re.findall(r"^\s*([A-Z][A-Za-z ]+)\n\s*-{3,}\s*$", doc, flags=re.M))


@pytest.mark.parametrize("module", ["datasets", "get", "metrics", "models", "nn", "pl", "pp", "tl"])
def test_all_is_sorted_and_resolves(module):
    mod = getattr(pg, module)
    assert list(mod.__all__) == sorted(mod.__all__)
    for name in mod.__all__:
        assert hasattr(mod, name), f"pertgrn.{module}.{name} is in __all__ but missing"


@pytest.mark.parametrize("func", list(_public_functions(SCANPY_STYLE_MODULES)))
def test_adata_first_then_keyword_only(func):
    params = list(inspect.signature(func).parameters.values())
    assert params, f"{func.__qualname__} takes no arguments"
    first, rest = params[0], params[1:]
    assert first.name in {"adata", "model_or_adata"}, f"{func.__qualname__}: first parameter is {first.name!r}"
    assert first.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    positional = [p.name for p in rest if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert not positional, f"{func.__qualname__}: parameters after adata must be keyword-only, found {positional}"


@pytest.mark.parametrize("func", list(_public_functions(("datasets", "get", "metrics", "pl", "pp", "tl"))))
def test_numpy_docstring(func):
    doc = inspect.getdoc(func)
    assert doc, f"{func.__qualname__} has no docstring"
    sections = _sections(doc)
    assert {"Parameters", "Returns", "Examples"} <= sections, f"{func.__qualname__}: sections {sorted(sections)}"
    documented = set(re.findall(r"^(\w+)\s*(?::.*)?$", doc.split("Returns")[0], flags=re.M))
    for name in inspect.signature(func).parameters:
        if name in {"args", "kwargs"}:
            continue
        assert name in documented, f"{func.__qualname__}: parameter {name!r} is not documented"


@pytest.mark.parametrize("func", list(_public_functions(("pp",))))
def test_pp_copy_contract(func):
    """scanpy's contract for writing functions: ``copy: bool = False``, keyword-only, returning ``AnnData | None``."""
    signature = inspect.signature(func)
    name = func.__qualname__
    assert "copy" in signature.parameters, f"pp.{name} writes into adata but has no `copy` parameter"
    copy = signature.parameters["copy"]
    assert copy.kind is inspect.Parameter.KEYWORD_ONLY, f"pp.{name}: `copy` must be keyword-only"
    assert copy.default is False, f"pp.{name}: `copy` must default to False, found {copy.default!r}"
    assert str(copy.annotation) == "bool", f"pp.{name}: `copy` must be annotated `bool`, found {copy.annotation!r}"
    returns = str(signature.return_annotation).replace(" ", "")
    parts = set(returns.split("|"))
    assert {"AnnData", "None"} <= parts, f"pp.{name}: must return `AnnData | None`, found {returns!r}"
    doc = inspect.getdoc(func)
    assert "copy=True" in doc.split("Returns")[1], f"pp.{name}: Returns must say what copy=True returns"

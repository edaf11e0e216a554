"""Distillation methods: one module per method, found and registered at import.

Adding a method is one file here (plus ``search_spaces/<name>.yaml``); nothing else in kdtune
names a method. ``build_method`` turns a spec and a flat config into a ready Method (or a
``Composite`` for ``compose:`` specs).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pydantic import ValidationError

from kdtune.spec import Spec, SpecError, format_error
from kdtune.training.context import Batch
from kdtune.methods._base import Method, MethodParams, NoParams, Stage
from kdtune.methods._compose import Composite
from kdtune.registry import METHODS
from kdtune.params.walk import split_config

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")


def make_method(name: str, params: dict[str, Any], prefix: str = "params.") -> Method:
    """Instantiate a registered method with validated params (SpecError on a bad value)."""
    cls = METHODS.get(name)
    try:
        return cls(cls.Params(**params))
    except ValidationError as e:
        raise SpecError(format_error(e, prefix)) from None


def build_method(spec: Spec, config: dict[str, Any]) -> Method:
    """The method (or composition) a flat config describes."""

    _, own, extra = split_config(spec, config)
    if spec.compose:
        members = [(m, w, make_method(m, own[m], f"params.{m}.")) for m, w in spec.compose.items()]
        return Composite(members, ce_weight=float(extra.get("ce_weight", 1.0)))
    (name, params), = own.items()
    return make_method(name, params, f"params.{name}." if spec.prefixed else "params.")


__all__ = ["Batch", "Composite", "Method", "MethodParams", "NoParams", "Stage", "METHODS",
           "build_method", "make_method"]

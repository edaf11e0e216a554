"""Hyperparameters: the common ones, and how a spec's or a trial's flat config resolves.

A flat config maps names to values: common names (``lr``, ``batch_size`` …, see
``search_spaces/_common.yaml``), method names (``temperature``), and, when the spec names
several methods (a searched choice or a composition), prefixed names (``kd.temperature``)
plus ``method`` (the choice) or ``ce_weight`` (the composition's one CE term).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdtune.config import SearchSpace, Spec, SpecError, common_space, format_error, method_space


class CommonParams(BaseModel):
    """Training hyperparameters every method shares (search_spaces/_common.yaml)."""

    model_config = ConfigDict(extra="forbid")
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    schedule: Literal["cosine", "step", "none"] = "cosine"


COMMON = tuple(CommonParams.model_fields)
COMPOSE_KEYS = ("ce_weight",)


def spaces_for(spec: Spec) -> tuple[SearchSpace, dict[str, SearchSpace]]:
    """The common space and each named method's space (search.space overrides a single one)."""
    override = spec.search.space if len(spec.methods) == 1 else None
    return common_space(), {m: method_space(m, override) for m in spec.methods}


def _prefix(spec: Spec, method: str, key: str) -> str:
    return f"{method}.{key}" if spec.prefixed else key


def resolve_params(spec: Spec) -> dict[str, Any]:
    """The flat config `kdtune train` uses: paper defaults, overridden by ``spec.params``."""
    common, spaces = spaces_for(spec)
    given = dict(spec.params)
    out: dict[str, Any] = common.defaults({k: v for k, v in given.items() if k in COMMON})
    out.update({k: v for k, v in given.items() if k in COMMON})  # also knobs not searched (schedule)
    if len(spec.methods) > 1 and not spec.compose:
        out["method"] = given.get("method", spec.methods[0])
    if spec.compose:
        out["ce_weight"] = given.get("ce_weight", 1.0)
    for m, space in spaces.items():
        if "method" in out and out["method"] != m:
            continue  # a searched choice: only the chosen method's parameters exist
        own = {k.removeprefix(f"{m}."): v for k, v in given.items()
               if (k.startswith(f"{m}.") if spec.prefixed else k not in COMMON)}
        for k, v in space.defaults(own).items():
            out[_prefix(spec, m, k)] = v
        for k, v in own.items():  # parameters not in the YAML (e.g. fixed-only knobs)
            out.setdefault(_prefix(spec, m, k), v)
    return out


def split_config(spec: Spec, config: dict[str, Any]) -> tuple[CommonParams, dict[str, dict[str, Any]], dict[str, Any]]:
    """Flat config → (common params, {method: its own params}, composition keys)."""
    common = {k: config[k] for k in COMMON if k in config}
    chosen = [config["method"]] if "method" in config and not spec.compose else spec.methods
    own: dict[str, dict[str, Any]] = {m: {} for m in chosen}
    extra: dict[str, Any] = {}
    for k, v in config.items():
        if k in COMMON or k == "method":
            continue
        if spec.compose and k in COMPOSE_KEYS:
            extra[k] = v
            continue
        if spec.prefixed:
            m, dot, rest = k.partition(".")
            if not dot or m not in spec.methods:
                raise SpecError(f"params.{k}: expected a method prefix, one of "
                                f"{', '.join(spec.methods)} (e.g. {spec.methods[0]}.{k})")
            if m in own:
                own[m][rest] = v
        else:
            own[chosen[0]][k] = v
    try:
        cp = CommonParams(**common)
    except ValidationError as e:
        raise SpecError(format_error(e, "params.")) from None
    return cp, own, extra

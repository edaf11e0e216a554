"""Search-space files checked against the method they belong to."""

from __future__ import annotations

from pathlib import Path

from kdtune.config import SpecError, load_space


def validate_space_file(path: Path) -> int:
    """Schema + (for a registered method) names equal its Params fields, defaults valid."""
    from kdtune.methods import METHODS
    from kdtune.params import CommonParams

    space = load_space(path)
    name = space.method or Path(path).stem
    if name == "_common" or Path(path).stem == "_common":
        target = CommonParams
    elif name in METHODS:
        target = METHODS.get(name).Params
    else:
        return len(space.params)
    fields = set(target.model_fields)
    names = set(space.params)
    if name != "_common" and Path(path).stem != "_common" and names != fields:
        missing, extra = sorted(fields - names), sorted(names - fields)
        raise SpecError(f"{Path(path).name}: parameters must equal {name}'s Params fields "
                        f"(missing {missing}, unknown {extra})")
    if not names <= fields:
        raise SpecError(f"{Path(path).name}: unknown parameters {sorted(names - fields)}")
    try:
        target(**space.defaults())
    except Exception as e:
        raise SpecError(f"{Path(path).name}: defaults rejected by {name}: {str(e).splitlines()[-1]}") from None
    check_bounds(space, target, Path(path).name)
    return len(space.params)


def check_bounds(space, target, where: str, prefix: str = "params.") -> None:
    """Every value a space can sample is one its ``Params`` accepts: both ends of a range, every
    choice (so `temperature: {low: 0}` for a `gt=0` field fails now, not in a trial). Field
    constraints only: cross-field rules are checked on the values a trial gets."""
    from typing import Annotated

    from pydantic import TypeAdapter, ValidationError

    for name, p in space.params.items():
        field = target.model_fields.get(name)
        if field is None:
            continue  # unknown names are reported by the Params check itself
        t = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        values = p.choices if p.type == "categorical" else [p.low, p.high]
        for v in values:
            try:
                TypeAdapter(t).validate_python(p.cast(v))
            except ValidationError as e:
                msg = e.errors()[0]["msg"].removeprefix("Value error, ")
                what = "choice" if p.type == "categorical" else ("low" if v == p.low else "high")
                raise SpecError(f"{prefix}{name}: {what} {v!r} in {where} is not allowed "
                                f"({msg})") from None


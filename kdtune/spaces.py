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
    return len(space.params)

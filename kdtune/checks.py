"""Checks that need the registries or the data, run before any training, Ray or MLflow.

``load_spec`` = read the YAML (``kdtune.spec``) + ``check_spec``. Each failure is a
``SpecError`` with one line naming the field and what is allowed (the CLI exits 2).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Annotated

from pydantic import TypeAdapter, ValidationError

import kdtune.models  # noqa: F401  (importing registers the model zoo)
from kdtune.data import raw_data, resolve_classes
from kdtune.methods import METHODS, build_method
from kdtune.params.space import load_space
from kdtune.params.walk import CommonParams, resolve_params, spaces_for
from kdtune.registry import DATASETS, MODELS, UnknownNameError
from kdtune.spec.load import read_spec
from kdtune.spec.schema import Spec, SpecError
from kdtune.train.checkpoint import read_meta


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Read a spec file, apply ``--set`` overrides, validate it and check it against the
    registries and the data. Raises SpecError (one line) for anything a run would trip on."""
    spec = read_spec(path, overrides)
    check_spec(spec)
    return spec


def check_spec(spec: Spec) -> None:
    for field, name, reg in [("data.name", spec.data.name, DATASETS),
                             ("teacher.model", spec.teacher.model, MODELS),
                             ("student.model", spec.student.model, MODELS),
                             *[("compose" if spec.compose else "method", m, METHODS)
                               for m in spec.methods]]:
        try:
            reg.get(name)
        except UnknownNameError as e:
            raise SpecError(f"{field}: {e}") from None

    config = resolve_params(spec)  # also validates every searched space file
    build_method(spec, config)  # validates fixed params against each Params model
    common, spaces = spaces_for(spec)  # what trials will sample: within each Params' limits
    check_bounds(common, CommonParams, "_common.yaml")
    for m, space in spaces.items():
        where = Path(spec.search.space).name if spec.search.space and len(spaces) == 1 else f"{m}.yaml"
        check_bounds(space, METHODS.get(m).Params, where, f"params.{m}." if spec.prefixed else "params.")
    known = set(config)
    for k in spec.params:
        if k not in known:
            raise SpecError(f"params.{k}: not a parameter of {'/'.join(spec.methods)} "
                            f"(known: {', '.join(sorted(known))})")

    ckpt = spec.teacher.checkpoint
    if ckpt and not ckpt.startswith("models:/") and not Path(ckpt).is_file():
        raise SpecError(f"teacher.checkpoint: file {ckpt!r} not found (fix the path or set null "
                        "to train the teacher)")
    if ckpt and not ckpt.startswith("models:/"):

        read_meta(Path(ckpt))  # weights-only load now: a foreign or planted file stops here

    try:
        raw = raw_data(spec.data.name, spec.data.root, spec.data.download)
    except (FileNotFoundError, RuntimeError, OSError, pickle.UnpicklingError) as e:
        raise SpecError(f"data.name: {spec.data.name} cannot be loaded: {str(e).splitlines()[0]}") from None
    try:
        t_cls = resolve_classes(spec.teacher.classes, raw.num_classes, "teacher.classes")
        s_cls = resolve_classes(spec.student.classes, raw.num_classes, "student.classes")
    except ValueError as e:
        raise SpecError(str(e)) from None
    relations = {METHODS.get(m).class_relation for m in spec.methods}
    if "subset" in relations and not ckpt and not set(s_cls) <= set(t_cls):
        raise SpecError(f"student.classes: {s_cls} must be a subset of teacher.classes {t_cls} "
                        f"for {'/'.join(spec.methods)} (G→S); use anti_distillation for S→G")
    if "superset" in relations and not ckpt and not set(t_cls) <= set(s_cls):
        raise SpecError(f"student.classes: {s_cls} must include teacher.classes {t_cls} (S→G)")
    for m in spec.methods:  # method-specific limits (e.g. KR's c vs the teacher's depth)
        METHODS.get(m)().check(spec)


def validate_space_file(path: Path) -> int:
    """Schema + (for a registered method) names equal its Params fields, defaults valid."""

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


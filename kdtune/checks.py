"""Spec checks that need the registries or the data: run before any training, Ray or MLflow.

Each failure is a ``SpecError`` with one line naming the field and what is allowed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from kdtune.config import Spec, SpecError


def check_spec(spec: Spec) -> None:
    import kdtune.models  # noqa: F401  (importing registers the model zoo)
    from kdtune.data import raw_data, resolve_classes
    from kdtune.methods import METHODS, build_method
    from kdtune.params import CommonParams, resolve_params, spaces_for
    from kdtune.registry import DATASETS, MODELS, UnknownNameError
    from kdtune.spaces import check_bounds

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
        from kdtune.teacher import read_meta

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

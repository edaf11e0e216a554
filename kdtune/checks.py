"""Checks that need the registries or the data, run before any training, Ray or MLflow.

``load_spec`` = read the YAML (``kdtune.spec``) + ``check_spec``. Each failure is a
``SpecError`` with one line naming the field and what is allowed (the CLI exits 2).
"""

from __future__ import annotations

import difflib
import fnmatch
import pickle
from pathlib import Path
from typing import Annotated, Any

import torch

from pydantic import TypeAdapter, ValidationError

import kdtune.models  # noqa: F401  (importing registers the model zoo)
from kdtune.data import raw_data, resolve_classes
from kdtune.methods import METHODS, Composite, Method, build_method
from kdtune.models import ModelArgumentError, create_model
from kdtune.params.space import load_space
from kdtune.params.walk import CommonParams, resolve_params, spaces_for
from kdtune.registry import DATASETS, MODELS, UnknownNameError
from kdtune.spec.load import read_spec
from kdtune.spec.schema import Spec, SpecError
from kdtune.training.checkpoint import read_meta
from kdtune.training.cost import costs
from kdtune.training.engine import ENGINE_METRICS
from kdtune.training.teacher import needs_teacher


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Read a spec file, apply ``--set`` overrides, validate it and check it against the
    registries and the data. Raises SpecError (one line) for anything a run would trip on."""
    spec = read_spec(path, overrides, teacher_free=True)
    check_spec(spec)
    if needs_teacher(spec):
        spec = read_spec(path, overrides)  # now `teacher:` must be there: a method uses it
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
    shape = (int(raw.train_x.shape[1]), int(raw.train_x.shape[2]))
    if not ckpt and needs_teacher(spec):
        check_model("teacher", spec.teacher.model, spec.teacher.kwargs, len(t_cls), *shape)
    own = [m for m in spec.methods if METHODS.get(m).build_student is not Method.build_student]
    if spec.search.student and own:  # finetune, prune, anti_distillation, pretrained
        raise SpecError(f"search.student: {', '.join(own)} builds the student from the teacher: "
                        "its architecture cannot be searched (remove search.student)")
    if not own and not spec.search.student:  # (a searched one is built per trial)
        check_model("student", spec.student.model, spec.student.kwargs, len(s_cls), *shape)
        if spec.constraints:
            check_constraints(spec, len(s_cls), *shape)
    check_metric(spec, build_method(spec, config))
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



def check_model(role: str, name: str, kwargs: dict[str, Any], num_classes: int, in_channels: int,
                input_size: int) -> None:
    """Build the model once on the meta device (shapes only: no memory, no init cost), so a typo
    or a value its factory refuses stops here, not in every trial."""
    try:
        with torch.device("meta"):
            create_model(name, num_classes, in_channels, input_size, **kwargs)
    except ModelArgumentError as e:
        raise SpecError(f"{role}.kwargs.{e.arg}: {e}") from None
    except (TypeError, ValueError) as e:
        msg = str(e).splitlines()[0]
        arg = msg.split(" ", 1)[0]  # factories name the argument first ("width must be > 0")
        field = f"{role}.kwargs.{arg}" if arg in kwargs else f"{role}.kwargs"
        raise SpecError(f"{field}: {name}: {msg}") from None


def reported_metrics(spec: Spec, method: Method) -> list[str]:
    """What a trial of ``spec`` reports per main epoch (fnmatch patterns): the engine's
    metrics, robustness accuracies, and the method's ``loss``/``ce`` and declared terms."""
    corr = [f"test_acc/{spec.corruption.kind}_{lvl:g}" for lvl in spec.corruption.levels]
    own = list(method.terms) if isinstance(method, Composite) else ["loss", "ce", *method.terms]
    return [*ENGINE_METRICS, *corr, *own]


def check_metric(spec: Spec, method: Method) -> None:
    """``metric`` names something every trial reports (a method choice: each choice does)."""
    methods = [method] if spec.compose or len(spec.methods) == 1 else \
        [METHODS.get(m)() for m in spec.methods]
    wanted = [("metric", name) for name, _ in spec.objectives] + \
        [(f"constraints.{name}", name) for name in spec.constraints]
    for field, metric in wanted:
        if metric == "latency_ms":
            raise SpecError(f"{field}: latency_ms is measured after the sweep (trials share cores): "
                            "search on flops or params_count, then use `kdtune best --max-latency-ms`")
    for m in methods:
        names = reported_metrics(spec, m)
        for field, metric in wanted:
            if not any(fnmatch.fnmatchcase(metric, p) for p in names):
                close = difflib.get_close_matches(metric, names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                who = getattr(m, "name", "") or "+".join(spec.methods)
                raise SpecError(f"{field}: {metric!r} is never reported by {who}; {hint}"
                                f"choose one of {', '.join(names)}")


def check_constraints(spec: Spec, num_classes: int, in_channels: int, input_size: int) -> None:
    """A fixed architecture that breaks ``constraints`` would make every trial infeasible."""
    model = create_model(spec.student.model, num_classes, in_channels, input_size, **spec.student.kwargs)
    c = costs(model, in_channels, input_size)
    for k, b in spec.constraints.items():
        if k in c and not b.holds(c[k]):
            raise SpecError(f"constraints.{k}: the student ({spec.student.model} "
                            f"{spec.student.kwargs}) has {k} {c[k]:g}, outside "
                            f"{b.model_dump(exclude_none=True)}; search the architecture "
                            "(search.student) or loosen the bound")

"""One training run from a flat config: what ``kdtune train`` and every Tune trial execute.

spec + config + teacher artefact → data view, method, context → ``engine.train``.
"""

from __future__ import annotations

from typing import Any

from kdtune.methods import build_method
from kdtune.models import create_model
from kdtune.params.walk import split_config, with_student
from kdtune.spec.schema import Spec, SpecError
from kdtune.training.cache import trial_data, use_teacher_outputs
from kdtune.training.cost import costs
from kdtune.training.context import Report, TrialContext, pick_device, student_data
from kdtune.training.engine import train
from kdtune.training.teacher import TeacherArtifact, class_index, load_teacher


def make_context(spec: Spec, config: dict[str, Any], teacher: TeacherArtifact | None, *,
                 seed: int, device: str | None = None, shared: dict[str, Any] | None = None):
    """(context, method) for one run; raises SpecError for a class relation the method refuses.

    ``shared``: what the sweep's driver prepared (``kdtune.training.cache.prepare_shared``): the data
    view to memory-map and the teacher-output cache."""
    spec = with_student(spec, config)  # a sampled architecture becomes the trial's student
    method = build_method(spec, config)
    common, _, _ = split_config(spec, config)
    data = trial_data(spec, shared) if shared else student_data(spec)
    dev = pick_device(device or spec.device)
    ctx = TrialContext(spec=spec, common=common, data=data, device=dev, seed=seed)
    if teacher is not None and method.uses_teacher:
        ctx.teacher = load_teacher(teacher, dev)
        ctx.teacher_classes = list(teacher.meta["classes"])
        ctx.teacher_index = class_index(teacher.meta["classes"], data.classes)
        if method.class_relation == "subset" and ctx.teacher_index is None:
            raise SpecError("student.classes: must be a subset of the teacher's classes "
                            f"{teacher.meta['classes']} for this method (G→S)")
        if shared:
            use_teacher_outputs(ctx, method, shared)
    return ctx, method


class Infeasible(Exception):
    """A sampled architecture that cannot be built, or whose costs break ``constraints``: the
    trial ends before it trains (recorded as infeasible; never ranked; not retried)."""

    def __init__(self, reason: str, costs: dict[str, float]) -> None:
        super().__init__(reason)
        self.reason, self.costs = reason, costs


def preflight(ctx: TrialContext) -> None:
    """Build the trial's student once and check its costs against ``constraints`` (a searched
    architecture's costs are known before training: an infeasible sample never trains)."""
    s = ctx.spec
    if not (s.search.student or s.constraints):
        return
    try:
        model = create_model(s.student.model, ctx.data.num_classes, ctx.data.in_channels,
                             ctx.data.input_size, **s.student.kwargs)
    except (TypeError, ValueError) as e:
        raise Infeasible(f"architecture {s.student.model} {s.student.kwargs} cannot be built: "
                         f"{str(e).splitlines()[0]}", {}) from None
    c = costs(model, ctx.data.in_channels, ctx.data.input_size)
    broken = [f"{k} {c[k]:g} outside {b.model_dump(exclude_none=True)}"
              for k, b in s.constraints.items() if k in c and not b.holds(c[k])]
    if broken:
        raise Infeasible("; ".join(broken), c)


def run_trial(spec: Spec, config: dict[str, Any], teacher: TeacherArtifact | None,
              report: Report, *, seed: int, restore: dict[str, Any] | None = None,
              device: str | None = None, shared: dict[str, Any] | None = None) -> dict[str, float]:
    ctx, method = make_context(spec, config, teacher, seed=seed, device=device, shared=shared)
    preflight(ctx)
    corr = [(spec.corruption.kind, lvl) for lvl in spec.corruption.levels]
    return train(ctx, method, report, epochs=spec.epochs, restore=restore, eval_corruption=corr)

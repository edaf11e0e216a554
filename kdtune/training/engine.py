"""The one train/eval loop for every method.

``train(ctx, method, report)`` runs a method's pre-stages (reported as ``stage/<name>/…``),
then the main stage: per epoch the named loss terms, ``val_acc``/``val_loss`` and a checkpoint
state go to ``report``; the last epoch adds ``test_acc``. ``report`` is the seam to the outside
world: ``kdtune train`` prints, a Ray Tune trainable calls ``tune.report``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdtune.methods import Method
from kdtune.models import count_params, create_model
from kdtune.training.checkpoint import state_dict
from kdtune.training.cost import costs
from kdtune.training.context import Report, TrialContext, seed_everything
from kdtune.training.ops import default_step, evaluate, make_optimizer, make_schedule, run_epoch

# What the engine reports every main epoch (a method's terms come on top: Method.terms).
ENGINE_METRICS = ("val_acc", "val_loss", "test_acc", "test_loss", "epoch", "lr", "params_count",
                  "flops", "size_mb")
# Cost metrics a multi-objective sweep may minimise (latency_ms is measured after the sweep).
COST_METRICS = ("params_count", "flops", "size_mb", "latency_ms")


def build_student(ctx: TrialContext, method: Method) -> nn.Module:
    student = method.build_student(ctx.teacher, ctx)
    if student is None:
        s = ctx.spec.student
        student = create_model(s.model, ctx.data.num_classes, ctx.data.in_channels,
                               ctx.data.input_size, **s.kwargs)
    return student.to(ctx.device)


def train(ctx: TrialContext, method: Method, report: Report, *, epochs: int,
          restore: dict[str, Any] | None = None, eval_corruption: list[tuple[str, float]] = ()) -> dict[str, float]:
    """Stages, then ``epochs`` main epochs; resumes from a checkpoint ``restore`` state."""
    seed_everything(ctx.seed)
    ctx.student = build_student(ctx, method)
    ctx.extras = method.build_extras(ctx.teacher, ctx.student, ctx).to(ctx.device)
    if ctx.device.type == "cuda":
        ctx.student = ctx.student.to(memory_format=torch.channels_last)
    if ctx.spec.compile:  # in place: state_dict keys and attributes (fc, groups) are unchanged
        ctx.student.compile()  # compiles forward (logits); forward_taps runs eagerly
    start, stages_done = 0, 0
    if restore is not None:
        ctx.student.load_state_dict(restore["student"])
        ctx.extras.load_state_dict(restore["extras"])
        method.load_state_dict(restore.get("method", {}))
        start, stages_done = restore["epoch"], restore["stages_done"]

    for i, stage in enumerate(method.stages(ctx)):
        if i < stages_done:
            continue
        for e in range(stage.epochs):
            metrics = {f"stage/{stage.name}/{k}": v for k, v in stage.run_epoch(ctx, e).items()}
            metrics[f"stage/{stage.name}/epoch"] = e + 1
            last = e == stage.epochs - 1
            report(metrics, state_dict(ctx, method, 0, i + 1) if last else None, stage=True)
        stages_done = i + 1

    ctx.optimizers = method.optimizers(ctx) or [
        make_optimizer(list(ctx.student.parameters()) + list(ctx.extras.parameters()), ctx.common)]
    schedules = [make_schedule(o, ctx.common, epochs) for o in ctx.optimizers]
    if restore is not None and restore.get("optimizers"):
        for o, s in zip(ctx.optimizers, restore["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(schedules, restore["schedules"]):
            sch.load_state_dict(s)
    step = (lambda c, m, b: m.train_step(c, b)) if method.has_train_step else default_step
    cost = costs(ctx.student, ctx.data.in_channels, ctx.data.input_size)
    val = ctx.loader("val")
    final: dict[str, float] = {}
    for epoch in range(start, epochs):
        ctx.epoch = epoch
        terms = {}
        if method.trains:  # e.g. `pretrained` is only evaluated: no steps, no schedule
            terms = run_epoch(ctx, method, step)
            for s in schedules:
                s.step()
        metrics = dict(terms)
        metrics.update(method.on_epoch_end(ctx, epoch))
        method.before_eval(ctx)
        metrics["val_acc"], metrics["val_loss"] = evaluate(ctx.student, val, ctx.device)
        metrics["epoch"] = epoch + 1
        metrics["lr"] = ctx.optimizers[0].param_groups[0]["lr"]
        metrics.update(cost)
        if ctx.teacher is not None:  # 1: the teacher's outputs came from the sweep's cache
            metrics["teacher_cache"] = float(ctx.teacher_cache)
        if epoch == epochs - 1:
            metrics.update(costs(ctx.student, ctx.data.in_channels, ctx.data.input_size))
            metrics["test_acc"], metrics["test_loss"] = evaluate(ctx.student, ctx.loader("test"), ctx.device)
            for kind, level in eval_corruption:
                acc, _ = evaluate(ctx.student, ctx.loader("test", corruption=(kind, level)), ctx.device)
                metrics[f"test_acc/{kind}_{level:g}"] = acc
        state = state_dict(ctx, method, epoch + 1, stages_done, schedules)
        report(metrics, state)
        final = metrics
    return final



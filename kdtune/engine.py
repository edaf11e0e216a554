"""The one train/eval loop for every method.

``train(ctx, method, report)`` runs a method's pre-stages (reported as ``stage/<name>/…``),
then the main stage: per epoch the named loss terms, ``val_acc``/``val_loss`` and a checkpoint
state go to ``report``; the last epoch adds ``test_acc``. ``report`` is the seam to the outside
world: ``kdtune train`` prints, a Ray Tune trainable calls ``tune.report``.

Checkpoints are plain state dicts (tensors, numbers, strings) so they load with
``torch.load(..., weights_only=True)``: a planted pickle cannot run code.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdtune.config import Spec
from kdtune.data import DataSplits, TensorLoader
from kdtune.methods import Batch, Method
from kdtune.models import TappedModel, count_params, create_model
from kdtune.params import CommonParams

CHECKPOINT = "checkpoint.pt"


class Report(Protocol):
    """Receives each epoch's metrics and checkpoint state. The state holds the live tensors:
    persist it (``save_state``) before returning, do not keep it."""

    def __call__(self, metrics: dict[str, float], state: dict[str, Any] | None = None, *,
                 stage: bool = False) -> None: ...


def pick_device(name: str = "auto") -> torch.device:
    """auto: the first visible GPU (Ray sets CUDA_VISIBLE_DEVICES per trial), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrialContext:
    """Everything one training run needs; methods read it in their hooks."""

    spec: Spec
    common: CommonParams
    data: DataSplits
    device: torch.device
    seed: int = 0
    teacher: TappedModel | None = None
    teacher_index: Tensor | None = None  # student label i → teacher logit column
    teacher_classes: list[int] | None = None  # the teacher's original class ids, in its label order
    teacher_view: Callable[[Batch, tuple[str, ...]], dict[str, Any]] | None = None
    student: nn.Module | None = None
    extras: nn.ModuleDict = field(default_factory=nn.ModuleDict)
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    epoch: int = 0
    _train_loader: TensorLoader | None = None

    @property
    def train_loader(self) -> TensorLoader:
        """The main stage's loader, built once (one copy of the data on the device)."""
        if self._train_loader is None:
            self._train_loader = self.loader("train")
        return self._train_loader

    def loader(self, split: str = "train", *, shuffle: bool | None = None,
               augment: bool | None = None, batch_size: int | None = None,
               corruption: tuple[str, float] | None = None) -> TensorLoader:
        train = split == "train"
        aug = self.data.augment if self.spec.data.augment is None else self.spec.data.augment
        return TensorLoader(
            getattr(self.data, split), self.data,
            batch_size or (self.common.batch_size if train else 512),
            shuffle=train if shuffle is None else shuffle,
            seed=self.seed, augment=(aug and train) if augment is None else augment,
            device=self.device, corruption=corruption)

    def teacher_outputs(self, batch: Batch, needs: tuple[str, ...]) -> dict[str, Any] | None:
        """The teacher's taps for a batch (no grad), logits restricted to the student's classes."""
        if not needs or self.teacher is None:
            return None
        if self.teacher_view is not None:  # the shared teacher-output cache (kdtune/shared.py)
            out = self.teacher_view(batch, needs)
            if out is not None:  # None: not cached for this batch/needs, run the teacher
                return out
        with torch.no_grad(), autocast(self.device):
            out = teacher_taps(self.teacher, batch.x, needs)
        return restrict(out, self.teacher_index)


def restrict(out: dict[str, Any], index: Tensor | None) -> dict[str, Any]:
    if index is not None and "logits" in out:
        out = dict(out, logits=out["logits"].index_select(1, index))
    return out


def taps(model: nn.Module, x: Tensor, needs: tuple[str, ...]) -> dict[str, Any]:
    """Only logits: the plain forward (cheaper, exportable); anything else: all taps."""
    if tuple(needs) == ("logits",) or not hasattr(model, "forward_taps"):
        return {"logits": model(x)}
    return model.forward_taps(x)


# Tiny batches take other kernels (one row: a GEMV-like conv path; the MLP's GEMM below 4
# rows) whose rounding differs in the last bit; from 4 rows up a row's output is the same in any
# batch (measured on CPU: cnn4, cnn_small, resnet20, vgg8, mlp). Running the teacher on at least
# this many rows makes its per-row outputs independent of batching: what lets a cache computed
# once in row order equal the live teacher on shuffled batches bit for bit.
MIN_TEACHER_ROWS = 8


def teacher_taps(model: nn.Module, x: Tensor, needs: tuple[str, ...]) -> dict[str, Any]:
    """``taps`` for the frozen teacher, on at least ``MIN_TEACHER_ROWS`` rows (a short batch is
    padded with copies of its first row, which are dropped from the outputs)."""
    n = len(x)
    if n >= MIN_TEACHER_ROWS or n == 0:
        return taps(model, x, needs)
    # Pad by indexing, not torch.cat: indexing keeps x's channels_last strides (TensorLoader),
    # which pick the conv kernel; a cat gives NCHW strides, another kernel, other last bits.
    pad = torch.zeros(MIN_TEACHER_ROWS - n, dtype=torch.long, device=x.device)
    out = taps(model, x[torch.cat([torch.arange(n, device=x.device), pad])], needs)
    return {k: [g[:n] for g in v] if isinstance(v, list) else v[:n] for k, v in out.items()}


def autocast(device: torch.device):
    # bf16 on CUDA only: CPU autocast is slower than fp32 for these small convnets.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def make_optimizer(params: Any, common: CommonParams) -> torch.optim.Optimizer:
    if common.optimizer == "sgd":
        return torch.optim.SGD(params, lr=common.lr, momentum=0.9, nesterov=True,
                               weight_decay=common.weight_decay)
    return torch.optim.AdamW(params, lr=common.lr, weight_decay=common.weight_decay)


def make_schedule(opt: torch.optim.Optimizer, common: CommonParams, epochs: int):
    """Per-epoch schedules: cosine to 0, or ×0.1 at 50 % and 75 % of the epochs."""
    if common.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if common.schedule == "step":
        marks = sorted({max(1, epochs // 2), max(1, (3 * epochs) // 4)})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=marks, gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)


@torch.no_grad()
def evaluate(model: nn.Module, loader: TensorLoader, device: torch.device) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over a loader."""
    was = model.training
    model.eval()
    correct = torch.zeros((), device=device)
    total_loss = torch.zeros((), device=device)
    n = 0
    for x, y, _ in loader:
        with autocast(device):
            logits = model(x).float()
        total_loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    model.train(was)
    if n == 0:
        return math.nan, math.nan
    return float(correct) / n, float(total_loss) / n


def build_student(ctx: TrialContext, method: Method) -> nn.Module:
    student = method.build_student(ctx.teacher, ctx)
    if student is None:
        s = ctx.spec.student
        student = create_model(s.model, ctx.data.num_classes, ctx.data.in_channels,
                               ctx.data.input_size, **s.kwargs)
    return student.to(ctx.device)


def arch_of(model: nn.Module) -> dict[str, Any]:
    """What rebuilds the student's architecture (stored beside its weights)."""
    spec = dict(getattr(model, "spec", {}))
    if isinstance(model, TappedModel):
        spec["num_classes"] = model.num_classes
    return spec


def default_step(ctx: TrialContext, method: Method, batch: Batch) -> dict[str, Tensor]:
    """Forward teacher and student, ask the method for its terms, add ``ce``, one update."""
    student = ctx.student
    with autocast(ctx.device):
        t_out = ctx.teacher_outputs(batch, method.teacher_needs)
        s_out = taps(student, batch.x, method.student_needs)
        terms = method.loss(batch, s_out, t_out, ctx.extras)
        total = terms.pop("loss")
        w = method.ce_weight()
        if w > 0:
            terms["ce"] = F.cross_entropy(s_out["logits"].float(), batch.y)
            total = total + w * terms["ce"]
    terms["loss"] = total
    for opt in ctx.optimizers:
        opt.zero_grad(set_to_none=True)
    total.backward()
    for opt in ctx.optimizers:
        opt.step()
    return terms


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN/inf: the trial fails with this reason (the sweep goes on)."""


def run_epoch(ctx: TrialContext, method: Method, step: Callable) -> dict[str, float]:
    ctx.student.train()
    ctx.extras.train()
    sums: dict[str, Tensor] = {}
    n = 0
    uses_y = method.uses_labels()
    loader = ctx.train_loader
    loader.epoch = ctx.epoch  # shuffle/augment seeded by (seed, epoch): a resumed run sees the same order
    for x, y, idx in loader:
        batch = Batch(x, y if uses_y else None, idx)
        terms = step(ctx, method, batch)
        for k, v in terms.items():
            v = v.detach().float()
            sums[k] = sums[k] + v if k in sums else v
        n += 1
    out = {k: float(v) / max(n, 1) for k, v in sums.items()}
    bad = [k for k, v in out.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteLoss(f"non-finite loss term(s) {', '.join(bad)} at epoch {ctx.epoch + 1}")
    return out


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
    params_count = count_params(ctx.student, nonzero=True)
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
        metrics["params_count"] = params_count
        if epoch == epochs - 1:
            metrics["params_count"] = count_params(ctx.student, nonzero=True)
            metrics["test_acc"], metrics["test_loss"] = evaluate(ctx.student, ctx.loader("test"), ctx.device)
            for kind, level in eval_corruption:
                acc, _ = evaluate(ctx.student, ctx.loader("test", corruption=(kind, level)), ctx.device)
                metrics[f"test_acc/{kind}_{level:g}"] = acc
        state = state_dict(ctx, method, epoch + 1, stages_done, schedules)
        report(metrics, state)
        final = metrics
    return final


def state_dict(ctx: TrialContext, method: Method, epoch: int, stages_done: int,
               schedules: list | None = None) -> dict[str, Any]:
    return {
        "student": ctx.student.state_dict(),
        "extras": ctx.extras.state_dict(),
        "optimizers": [o.state_dict() for o in ctx.optimizers] if schedules else [],
        "schedules": [s.state_dict() for s in schedules] if schedules else [],
        "method": method.state_dict(),
        "epoch": epoch,
        "stages_done": stages_done,
        "arch": arch_of(ctx.student),
        "classes": list(ctx.data.classes),
    }


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crash never leaves half a checkpoint
    return path


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Weights-only load: refuses pickled code (a planted payload raises)."""
    return torch.load(path, map_location=device, weights_only=True)


def refusal(e: BaseException) -> str:
    """Why a weights-only load refused a file, in one line. (torch's own message opens with
    advice to load it with ``weights_only=False``, i.e. to run whatever the file holds.)"""
    import re

    text = str(e)
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = found.group(1).split(". Please")[0].strip() if found else \
        (text.strip().splitlines() or [type(e).__name__])[0]
    return f"{type(e).__name__}: {reason[:200]}"


def load_student(path: str | Path, device: str | torch.device = "cpu") -> TappedModel:
    """Rebuild a student from a checkpoint (its architecture is stored beside the weights)."""
    state = load_state(path, device)
    arch = dict(state["arch"])
    model = create_model(arch.pop("name"), arch.pop("num_classes"), arch.pop("in_channels"),
                         arch.pop("input_size"), **arch.pop("kwargs", {}))
    model.load_state_dict(state["student"])
    return model.to(device).eval()

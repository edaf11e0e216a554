"""The training steps every method shares: optimiser, schedule, one step, one epoch, evaluation.

Methods with their own ``train_step`` or stages call these too, so a loop is written once.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdtune.data import TensorLoader
from kdtune.params.walk import CommonParams
from kdtune.training.context import Batch, TrialContext, autocast, taps


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


def default_step(ctx: TrialContext, method: Any, batch: Batch) -> dict[str, Tensor]:
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


def run_epoch(ctx: TrialContext, method: Any, step: Callable) -> dict[str, float]:
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



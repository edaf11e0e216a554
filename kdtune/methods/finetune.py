"""``finetune``: the teacher trained on G with a new classification layer for S (Knowledge
Factorization §5.1, baseline 3).

- ``mode: head`` (the paper's runs: "we just finetune the last layer, keeping the weights of the
  other layers fixed"): only the new ``fc`` trains. The body is frozen *including* its
  BatchNorm statistics: it stays in eval mode during training (a train-mode BN would keep
  re-estimating its statistics on S, which is changing the body).
- ``mode: all`` ("generally one also updates the lower layers albeit with a smaller learning
  rate"): every layer trains; the body at ``lr_scale × lr``, the new head at ``lr``.

The student is a copy of the teacher with ``fc`` replaced by a freshly initialised
``Linear(features, |S|)``: a plain model (its checkpoint loads with ``engine.load_student``).
Works for any class relation (the head is new), so G→S, same task and S→G all run.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from kdtune.methods._base import Method, MethodParams
from kdtune.registry import METHODS
from kdtune.training.ops import make_optimizer
from kdtune.training.ops import default_step


def new_head_copy(teacher: nn.Module, num_classes: int) -> nn.Module:
    """A trainable copy of ``teacher`` with a fresh ``fc`` for ``num_classes`` classes."""
    model = copy.deepcopy(teacher)
    old = model.fc
    model.fc = nn.Linear(old.in_features, num_classes).to(old.weight.device)
    model.spec = dict(getattr(model, "spec", {}), num_classes=num_classes)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def head_body_groups(model: nn.Module, lr: float, body_scale: float) -> list[dict[str, Any]]:
    """Optimiser parameter groups: ``fc`` at ``lr``, the rest at ``body_scale × lr`` (0: frozen)."""
    # Sorted by name, not registration order: `prune.remove` re-registers a pruned `weight`
    # after its `bias`, and optimiser state is matched to parameters by position on resume.
    named = sorted(model.named_parameters())
    head = [p for n, p in named if n.startswith("fc.")]
    body = [p for n, p in named if not n.startswith("fc.")]
    if body_scale == 0:
        for p in body:
            p.requires_grad_(False)
        return [{"params": head, "lr": lr}]
    return [{"params": head, "lr": lr}, {"params": body, "lr": lr * body_scale}]


class FinetuneParams(MethodParams):
    mode: Literal["head", "all"] = "head"
    lr_scale: float = Field(0.1, gt=0, le=1)  # body LR = lr_scale × lr (mode: all)


@METHODS.register("finetune")
class Finetune(Method):
    name = "finetune"
    Params = FinetuneParams
    teacher_needs = ()  # the teacher's weights start the student; it is never run per batch
    class_relation = "any"
    has_train_step = True  # only to keep a frozen body's BatchNorm in eval mode

    def build_student(self, teacher, ctx):
        if teacher is None:
            raise ValueError("finetune needs a teacher")
        return new_head_copy(teacher, ctx.data.num_classes)

    def optimizers(self, ctx):
        scale = self.p.lr_scale if self.p.mode == "all" else 0.0
        groups = head_body_groups(ctx.student, ctx.common.lr, scale)
        return [make_optimizer(groups, ctx.common)]

    def train_step(self, ctx, batch):
        if self.p.mode == "head":
            for m in ctx.student.children():
                if m is not ctx.student.fc:
                    m.eval()  # frozen body: BN uses (and keeps) the teacher's statistics
        return default_step(ctx, self, batch)

    def loss(self, batch, s_out, t_out, extras):
        return {"loss": torch.zeros((), device=batch.x.device)}  # CE only (the engine's term)

"""``pretrained``: the teacher trained on G, evaluated on S off the shelf (Knowledge
Factorization §5.1, baseline 2: "S is a subset of G, hence a network trained on G should be able
to classify S").

No training (``trains = False``). The student is a copy of the teacher whose ``fc`` keeps only
the rows of S's classes, in S's label order: a plain model of the teacher's architecture with
``num_classes = |S|``, so its checkpoint rebuilds with ``engine.load_student`` like any other.
Its argmax over S's logits is exactly the teacher's restricted prediction.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from kdtune.methods._base import Method
from kdtune.registry import METHODS


def restricted_copy(teacher: nn.Module, index: Tensor) -> nn.Module:
    """A trainable copy of ``teacher`` whose logits are its logits at columns ``index``."""
    model = copy.deepcopy(teacher)
    old = model.fc
    fc = nn.Linear(old.in_features, len(index), bias=old.bias is not None)
    idx = index.to(old.weight.device)
    with torch.no_grad():
        fc.weight.copy_(old.weight.index_select(0, idx))
        if old.bias is not None:
            fc.bias.copy_(old.bias.index_select(0, idx))
    model.fc = fc.to(old.weight.device)
    # `spec` is what rebuilds the architecture from a checkpoint (engine.arch_of)
    model.spec = dict(getattr(model, "spec", {}), num_classes=len(index))
    for p in model.parameters():
        p.requires_grad_(True)  # the cached teacher is frozen; its copy is a normal model
    return model


@METHODS.register("pretrained")
class Pretrained(Method):
    name = "pretrained"
    teacher_needs = ()  # the student *is* the teacher: nothing to run per batch
    class_relation = "subset"
    trains = False

    def build_student(self, teacher, ctx):
        if teacher is None or ctx.teacher_index is None:
            raise ValueError("pretrained needs a teacher whose classes include the student's")
        return restricted_copy(teacher, ctx.teacher_index).eval()

    def loss(self, batch, s_out, t_out, extras):
        return {"loss": torch.zeros((), device=batch.x.device)}  # never called: trains = False

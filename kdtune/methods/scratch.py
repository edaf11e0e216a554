"""``scratch``: the student trained with cross-entropy only (Knowledge Factorization §5.1 baseline)."""

from __future__ import annotations

import torch

from kdtune.methods._base import Method
from kdtune.registry import METHODS


@METHODS.register("scratch")
class Scratch(Method):
    name = "scratch"
    teacher_needs = ()  # the teacher is never run
    class_relation = "any"
    uses_teacher = False

    def loss(self, batch, s_out, t_out, extras):
        # The engine adds `ce`; scratch has nothing else to say.
        return {"loss": torch.zeros((), device=batch.x.device)}

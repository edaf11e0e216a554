"""``fitnet``: hints from a teacher's middle layer (Romero et al. 2014, "FitNets: Hints for Thin
Deep Nets").

A regressor r (a 1×1 or 3×3 conv + BN in ``build_extras``; a Linear for vector features) maps
the student's middle group output (the *guided* layer) to the teacher's middle group output
(the *hint*): ``hint = mean (u_h − r(v_g))²`` over batch × channels × positions, weighted by β
(the common default β = 100 goes with this mean, as in RepDistiller's HintLoss). "Middle" is
group ``(n − 1) // 2`` of each net; spatial sizes are matched by pooling/interpolating the
student's map. Romero's stage 1 (train the student up to the guided layer on the hint alone) is
the optional pre-stage ``hint`` (``hint_epochs``, 0 = off); the main stage is CE + β·hint.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdtune.methods._base import Method, MethodParams, Stage
from kdtune.methods._features import (
    accumulate, adapter, channels, mean_terms, probe, resize, sgd, size, stage_batches)
from kdtune.registry import METHODS
from kdtune.training.context import autocast, taps


class FitNetParams(MethodParams):
    beta: float = Field(100.0, gt=0, description="hint loss weight")
    hint_epochs: int = Field(0, ge=0, description="hint pre-stage epochs (0: none)")
    kernel: Literal[1, 3] = Field(3, description="regressor conv kernel size")


def middle(n: int) -> int:
    return (n - 1) // 2


@METHODS.register("fitnet")
class FitNet(Method):
    terms = ("hint",)
    name = "fitnet"
    Params = FitNetParams
    teacher_needs = ("groups",)
    student_needs = ("logits", "groups")
    class_relation = "any"  # features only: the teacher's logits are never read

    @classmethod
    def teacher_groups(cls, n_teacher: int, n_student: int) -> tuple[int, ...]:
        return (middle(n_teacher),)  # the hint layer

    def build_extras(self, teacher, student, ctx) -> nn.ModuleDict:
        t, s = probe(teacher, ctx)["groups"], probe(student, ctx)["groups"]
        self.ti, self.si = middle(len(t)), middle(len(s))
        ft, fs = t[self.ti], s[self.si]
        self.size = size(ft)
        vector = ft.dim() == 2
        if (fs.dim() == 2) != vector:
            raise ValueError("fitnet: the hint and guided layers must both be maps or both vectors")
        self.extras = nn.ModuleDict(
            {"regressor": adapter(channels(fs), channels(ft), self.p.kernel, vector)})
        return self.extras

    def hint(self, s_groups: list[Tensor], t_groups: list[Tensor], extras: nn.ModuleDict) -> Tensor:
        v = extras["regressor"](resize(s_groups[self.si], self.size))
        return F.mse_loss(v.float(), t_groups[self.ti].float())

    def loss(self, batch, s_out, t_out, extras):
        h = self.p.beta * self.hint(s_out["groups"], t_out["groups"], extras)
        return {"loss": h, "hint": h}

    def stages(self, ctx) -> list[Stage]:
        if self.p.hint_epochs == 0:
            return []
        opt = {}

        def run_epoch(ctx, epoch: int) -> dict[str, float]:
            if "opt" not in opt:  # only parameters up to the guided layer ever get a gradient
                opt["opt"] = sgd(list(ctx.student.parameters()) + list(self.extras.parameters()),
                                 ctx.common.lr, ctx.common)
            ctx.student.train()
            self.extras.train()
            sums, n = {}, 0
            for batch in stage_batches(ctx, epoch, labels=False):
                with autocast(ctx.device):
                    t = ctx.teacher_outputs(batch, ("groups",))
                    s = taps(ctx.student, batch.x, ("groups",))
                    h = self.p.beta * self.hint(s["groups"], t["groups"], self.extras)
                opt["opt"].zero_grad(set_to_none=True)
                h.backward()
                opt["opt"].step()
                accumulate(sums, {"hint": h})
                n += 1
            return mean_terms(sums, n)

        return [Stage("hint", self.p.hint_epochs, run_epoch)]

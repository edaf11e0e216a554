"""``logit_l2``: Knowledge Factorization §3.1 (Ashok, Gupta, Agrawal), logit matching by L2.

    L = (1/N) Σ_i ‖s_i − t_i‖²   (+ α·CE(s, y))

squared error summed over classes, mean over the batch, on un-normalised logits; in G→S the
teacher's logits are restricted to S's classes first. α = 0 (the paper's form) is label-free.
``teacher_dropout`` p is KF §3.2 (dropout on the teacher's logits, training only; paper 0.1),
shared with ``kd``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kdtune.methods._base import Method, MethodParams
from kdtune.methods.kd import TeacherDropout
from kdtune.registry import METHODS


class LogitL2Params(MethodParams):
    alpha: float = Field(0.0, ge=0)  # CE weight; 0 = the paper's label-free objective
    teacher_dropout: float = Field(0.0, ge=0, lt=1)  # KF §3.2 p


@METHODS.register("logit_l2")
class LogitL2(Method):
    terms = ("l2",)
    name = "logit_l2"
    Params = LogitL2Params
    teacher_needs = ("logits",)
    student_needs = ("logits",)
    class_relation = "subset"

    def __init__(self, params: LogitL2Params | None = None) -> None:
        super().__init__(params)
        self.dropout = TeacherDropout(self.p.teacher_dropout)

    def ce_weight(self) -> float:
        return self.p.alpha

    def build_extras(self, teacher, student, ctx):
        self.dropout.seed(ctx.seed)  # see kd: resumable dropout masks
        return super().build_extras(teacher, student, ctx)

    def loss(self, batch, s_out, t_out, extras):
        t = self.dropout(t_out["logits"].float(), extras.training)
        l2 = (s_out["logits"].float() - t).pow(2).sum(1).mean()
        return {"l2": l2, "loss": l2}

    def state_dict(self) -> dict[str, Any]:
        return self.dropout.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dropout.load_state_dict(state)

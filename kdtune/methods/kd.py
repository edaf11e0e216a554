"""``kd``: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".

    L = α·CE(s, y) + (1 − α)·T²·KL(softmax(t/T) ‖ softmax(s/T))

The KL is averaged over the batch (``batchmean``: summed over classes, mean over samples). The
T² keeps the soft term's gradient magnitude independent of T (Hinton §2.1). α = 0 is the
label-free variant (``y`` is never read); T = 1, α = 0 is Knowledge Factorization's "KL" (§3.1).
In G→S the teacher's logits arrive restricted to the student's classes (the engine's job), so
the soft targets are a softmax over S's classes only.

``teacher_dropout`` p is KF §3.2: dropout on the teacher's logits before the loss (paper:
p = 0.1), in training only. The masks come from the method's own seeded generator, saved in the
checkpoint, so a resumed run draws the same masks as an uninterrupted one.

Also home of the helpers the other output-matching methods share (``kl_div``,
``TeacherDropout``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdtune.methods._base import Method, MethodParams
from kdtune.registry import METHODS


def kl_div(p_logits: Tensor, q_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(softmax(p/T) ‖ softmax(q/T)): sum over classes, mean over the batch."""
    logp = F.log_softmax(p_logits.float() / temperature, dim=1)
    logq = F.log_softmax(q_logits.float() / temperature, dim=1)
    return (logp.exp() * (logp - logq)).sum(1).mean()


class TeacherDropout:
    """Inverted dropout with rate ``p`` on teacher outputs (KF §3.2), training only.

    Its own CPU generator (seeded per run, state checkpointed) instead of the global RNG: a run
    resumed from a checkpoint then draws exactly the masks the uninterrupted run drew.
    """

    def __init__(self, p: float) -> None:
        self.p = p
        self.gen = torch.Generator().manual_seed(0)

    def seed(self, seed: int) -> None:
        self.gen.manual_seed(seed)

    def __call__(self, t: Tensor, training: bool) -> Tensor:
        if not training or self.p == 0:
            return t
        keep = torch.rand(t.shape, generator=self.gen) >= self.p  # CPU draw: same on every device
        return t * keep.to(t.device, t.dtype) / (1 - self.p)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self.gen.set_state(state["rng"].cpu())


class KDParams(MethodParams):
    temperature: float = Field(4.0, gt=0)  # T
    alpha: float = Field(0.1, ge=0, le=1)  # weight of the hard-label CE
    teacher_dropout: float = Field(0.0, ge=0, lt=1)  # KF §3.2 p


@METHODS.register("kd")
class KD(Method):
    terms = ("soft",)
    name = "kd"
    Params = KDParams
    teacher_needs = ("logits",)
    student_needs = ("logits",)
    class_relation = "subset"

    def __init__(self, params: KDParams | None = None) -> None:
        super().__init__(params)
        self.dropout = TeacherDropout(self.p.teacher_dropout)

    def ce_weight(self) -> float:
        return self.p.alpha

    def build_extras(self, teacher, student, ctx):
        # The one hook that sees the run's seed before training: seed the dropout masks.
        self.dropout.seed(ctx.seed)
        return super().build_extras(teacher, student, ctx)

    def loss(self, batch, s_out, t_out, extras):
        T = self.p.temperature
        # `extras.training` follows the engine's train()/eval() calls: dropout only in training.
        t = self.dropout(t_out["logits"].float(), extras.training)
        soft = T * T * kl_div(t, s_out["logits"], T)
        return {"soft": soft, "loss": (1 - self.p.alpha) * soft}

    def state_dict(self) -> dict[str, Any]:
        return self.dropout.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dropout.load_state_dict(state)

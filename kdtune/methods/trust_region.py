"""``trust_region``: Knowledge Factorization §3.3 ("natural gradient").

Minimise ``KL(softmax(t) ‖ softmax(s))`` (+ α·CE) subject to, per update,
``KL(s_old ‖ s_new) ≤ ε`` on the batch, where ``s_old`` is the student before the step.

The paper states the constraint and no algorithm; ours is a backtracking line search on the
optimiser's own step (KF cites natural gradient only for intuition: we bound the step by the
output KL it causes instead of computing a Fisher matrix):

1. forward, loss, backward, ``optimizer.step()`` as usual: the proposed step Δ;
2. measure ``KL(p_old ‖ p_new)`` (softmax at T = 1, sum over classes, mean over the batch) on
   the same batch, in float32, with BatchNorm in the same (training) mode as the loss forward
   and its running statistics left untouched by the measuring passes;
3. while it exceeds ε, halve the step (θ = θ_old + Δ/2^k), at most ``MAX_BACKTRACKS`` times;
4. if even Δ/2^MAX_BACKTRACKS violates ε the update is **skipped** (θ = θ_old), so the
   constraint holds after every step without exception; skipped steps are reported
   (``skipped``, the fraction per epoch). The optimiser's momentum keeps the skipped gradient.

With a huge ε the first try is accepted: the update is exactly the unconstrained step.

ε can be annealed over the main epochs (the paper: "annealing the value as epochs increases
might solve this issue"): epoch e of E uses ``eps`` at e = 0 and ``eps_final`` at e = E − 1,
``linear`` (straight line in ε) or ``cosine`` (half cosine); ``none`` keeps ``eps``. The current
ε is method state (checkpointed) and reported per epoch as ``eps``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdtune.methods._base import Method, MethodParams
from kdtune.methods.kd import kl_div
from kdtune.registry import METHODS

MAX_BACKTRACKS = 10  # smallest tried step: Δ/1024 (KL shrinks ~quadratically with the step)


@contextmanager
def frozen_buffers(model: nn.Module) -> Iterator[None]:
    """Forward passes inside leave every buffer (BN running statistics) as it was."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


def annealed(eps: float, eps_final: float, schedule: str, epoch: int, epochs: int) -> float:
    """ε for main epoch ``epoch`` (0-based) of ``epochs``: ``eps`` first, ``eps_final`` last."""
    if schedule == "none" or epochs <= 1:
        return eps
    f = min(1.0, epoch / (epochs - 1))
    if schedule == "linear":
        return eps + (eps_final - eps) * f
    return eps_final + (eps - eps_final) * (1 + math.cos(math.pi * f)) / 2  # cosine


class TrustRegionParams(MethodParams):
    eps: float = Field(1e-2, gt=0)  # per-step bound on KL(s_old ‖ s_new) (nats)
    anneal: Literal["none", "linear", "cosine"] = "none"
    eps_final: float = Field(1e-3, gt=0)  # ε at the last epoch when annealing
    alpha: float = Field(0.0, ge=0)  # CE weight; 0 = label-free


@METHODS.register("trust_region")
class TrustRegion(Method):
    terms = ("kl", "eps")
    name = "trust_region"
    Params = TrustRegionParams
    teacher_needs = ("logits",)
    student_needs = ("logits",)
    class_relation = "subset"
    has_train_step = True

    def __init__(self, params: TrustRegionParams | None = None) -> None:
        super().__init__(params)
        self.eps = self.p.eps  # the ε in force this epoch

    def ce_weight(self) -> float:
        return self.p.alpha

    def loss(self, batch, s_out, t_out, extras):
        kl = kl_div(t_out["logits"], s_out["logits"])
        return {"kl": kl, "loss": kl}

    def train_step(self, ctx, batch) -> dict[str, Tensor]:
        student = ctx.student
        params = [p for p in list(student.parameters()) + list(ctx.extras.parameters())
                  if p.requires_grad]
        t_out = ctx.teacher_outputs(batch, self.teacher_needs)
        # float32, no autocast: the step KL is measured against these logits, and bf16 noise
        # alone could exceed a small ε
        s_logits = student(batch.x).float()
        terms = self.loss(batch, {"logits": s_logits}, t_out, ctx.extras)
        total = terms.pop("loss")
        if self.p.alpha > 0:
            terms["ce"] = F.cross_entropy(s_logits.float(), batch.y)
            total = total + self.p.alpha * terms["ce"]
        for opt in ctx.optimizers:
            opt.zero_grad(set_to_none=True)
        total.backward()

        old = [p.detach().clone() for p in params]
        for opt in ctx.optimizers:
            opt.step()
        delta = [p.detach() - o for p, o in zip(params, old)]
        s_old = s_logits.detach().float()

        scale, step_kl = 1.0, None
        with torch.no_grad(), frozen_buffers(student):
            for k in range(MAX_BACKTRACKS + 1):
                if k > 0:
                    scale = 0.5 ** k
                    for p, o, d in zip(params, old, delta):
                        p.copy_(o + scale * d)
                step_kl = kl_div(s_old, student(batch.x).float())
                if float(step_kl) <= self.eps:
                    break
            else:  # no step size satisfies the constraint: stay where we were
                for p, o in zip(params, old):
                    p.copy_(o)
                scale, step_kl = 0.0, torch.zeros((), device=s_old.device)
        dev = s_old.device
        terms.update(loss=total.detach(), step_kl=step_kl,
                     step_scale=torch.tensor(scale, device=dev),
                     skipped=torch.tensor(float(scale == 0.0), device=dev))
        return terms

    def on_epoch_end(self, ctx, epoch: int) -> dict[str, float]:
        used = self.eps
        self.eps = annealed(self.p.eps, self.p.eps_final, self.p.anneal, epoch + 1, ctx.spec.epochs)
        return {"eps": used}

    def state_dict(self) -> dict[str, Any]:
        return {"eps": self.eps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "eps" in state:
            self.eps = float(state["eps"])

"""``simultaneous``: Knowledge Factorization §3.4, simultaneous training and distillation.

The pretrained teacher is fine-tuned on S while the student matches the teacher's *current*
outputs, every step. Per trial a copy of the cached teacher (its ``fc`` cut to S's rows, as in
``pretrained``) lives in the extras as ``extras["teacher"]``: it is checkpointed with them, has
its own optimiser (SGD/AdamW as the common params say, learning rate ``teacher_lr``, the same
per-epoch schedule) and is trained with CE on S. The cached teacher (``ctx.teacher``) is never
touched.

One step: the copy's forward (train mode) gives its CE and its taps; the student is trained on
    L_s = β·( Σ_g mean((A_g(s_g) − t_g)²) + (1/N) Σ_i ‖s_i − t_i‖² ) + α·CE(s, y)
against those taps, detached (the copy's outputs of this step, before its own update). The
logit term is KF's L_KD (§3.1: squared error summed over classes, mean over the batch); a
feature map term is a mean over all its elements. Where g runs is ``points``:

- ``blocks`` (default, the paper's §5.4: the student matches "outputs at each residual block"):
  every block of ``model.blocks()`` (a residual block, or a conv/MLP layer in plain nets), read
  by running stem → blocks → head one block at a time (``block_forward``: exactly the forward);
- ``groups``: every group output (a residual stage: a coarser, cheaper reading);
- ``logits``: the logits only.

Our choices where the paper is silent: student point i (of n_s) is paired with teacher point
``round((i + 1)·n_t / n_s) − 1`` (the last with the last, the rest spread evenly); ``A_g`` is a
1×1 conv (a Linear for vector outputs) where channel counts differ, else the identity; a student
map of another spatial size is average-pooled (larger) or bilinearly resized (smaller) to the
teacher's. α = 0 (the paper's student objective is matching only) by default; labels are read
either way, by the teacher copy.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdtune.methods._base import Method, MethodParams
from kdtune.methods._features import block_forward
from kdtune.methods.pretrained import restricted_copy
from kdtune.registry import METHODS
from kdtune.training.ops import make_optimizer
from kdtune.training.context import autocast, taps
from kdtune.training.ops import evaluate


def pair_groups(n_student: int, n_teacher: int) -> list[int]:
    """Teacher point (group or block) index for each student point: last with last, spread evenly."""
    return [max(0, round((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)]


def resize_to(x: Tensor, size: tuple[int, ...]) -> Tensor:
    """A [B, C, H, W] map resized to ``size`` (H, W): average-pool down, bilinear up."""
    if x.dim() != 4 or tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def adapter(s_shape: torch.Size, t_shape: torch.Size) -> nn.Module:
    """1×1 conv (maps) or Linear (vectors) from student to teacher width; identity if equal."""
    cs, ct = s_shape[1], t_shape[1]
    if cs == ct:
        return nn.Identity()
    return nn.Conv2d(cs, ct, 1, bias=False) if len(s_shape) == 4 else nn.Linear(cs, ct, bias=False)


class SimultaneousParams(MethodParams):
    teacher_lr: float = Field(0.01, gt=0)  # learning rate of the teacher copy
    beta: float = Field(1.0, gt=0)  # weight of the matching terms
    # blocks / groups = every residual block / group + the logits (blocks: KF §5.4)
    points: Literal["blocks", "groups", "logits"] = "blocks"
    alpha: float = Field(0.0, ge=0)  # student CE weight; 0 = matching only (the paper)


@METHODS.register("simultaneous")
class Simultaneous(Method):
    terms = ("match/*", "teacher_ce", "teacher_val_acc")
    name = "simultaneous"
    Params = SimultaneousParams
    teacher_needs = ()  # the *cached* teacher is not run per batch; its copy is, in train_step
    student_needs = ("logits", "groups")
    class_relation = "subset"
    has_train_step = True

    def uses_labels(self) -> bool:
        return True  # the teacher copy is fine-tuned with CE on S

    def ce_weight(self) -> float:
        return self.p.alpha

    def build_extras(self, teacher, student, ctx) -> nn.ModuleDict:
        if teacher is None or ctx.teacher_index is None:
            raise ValueError("simultaneous needs a teacher whose classes include the student's")
        copy = restricted_copy(teacher, ctx.teacher_index).train()
        extras = nn.ModuleDict({"teacher": copy})
        if self.p.points != "logits":
            x = torch.zeros(2, ctx.data.in_channels, ctx.data.input_size, ctx.data.input_size,
                            device=next(student.parameters()).device)
            was = student.training
            with torch.no_grad():  # eval: shapes only, BN statistics untouched
                s_g = self.forward_points(student.eval(), x)[self.p.points]
                t_g = self.forward_points(copy.eval(), x)[self.p.points]
            student.train(was)
            copy.train()
            self.pairs = pair_groups(len(s_g), len(t_g))
            extras["adapters"] = nn.ModuleList(
                adapter(s_g[i].shape, t_g[j].shape) for i, j in enumerate(self.pairs))
        return extras

    def optimizers(self, ctx):
        own = [p for n, p in ctx.extras.named_parameters() if not n.startswith("teacher.")]
        student_opt = make_optimizer(list(ctx.student.parameters()) + own, ctx.common)
        teacher_opt = make_optimizer(ctx.extras["teacher"].parameters(),
                                     ctx.common.model_copy(update={"lr": self.p.teacher_lr}))
        return [student_opt, teacher_opt]  # [0] is the student's (the engine reports its lr)

    def forward_points(self, model: nn.Module, x: Tensor) -> dict[str, Any]:
        """``logits`` plus the outputs at the matching points (``groups`` or ``blocks``)."""
        if self.p.points == "blocks":
            _, outs, logits = block_forward(model, x)
            return {"logits": logits, "blocks": outs}
        return taps(model, x, ("logits", "groups") if self.p.points == "groups" else ("logits",))

    def loss(self, batch, s_out, t_out, extras) -> dict[str, Tensor]:
        """Matching terms of the student against the teacher copy's taps ``t_out``."""
        out: dict[str, Tensor] = {}
        total = (s_out["logits"].float() - t_out["logits"].float()).pow(2).sum(1).mean()
        out["match/logits"] = total
        if self.p.points != "logits":
            key, name = self.p.points, self.p.points[:-1]  # "blocks" → match/block<i>
            for i, (j, a) in enumerate(zip(self.pairs, extras["adapters"])):
                t = t_out[key][j].float()
                s = resize_to(a(s_out[key][i]).float(), tuple(t.shape[2:]))
                out[f"match/{name}{i}"] = term = (s - t).pow(2).mean()
                total = total + term
        out["loss"] = self.p.beta * total
        return out

    def train_step(self, ctx, batch) -> dict[str, Tensor]:
        copy = ctx.extras["teacher"]
        with autocast(ctx.device):
            t_out = self.forward_points(copy, batch.x)
            teacher_ce = F.cross_entropy(t_out["logits"].float(), batch.y)
            s_out = self.forward_points(ctx.student, batch.x)
            detached = {k: [g.detach() for g in v] if isinstance(v, list) else v.detach()
                        for k, v in t_out.items()}
            terms = self.loss(batch, s_out, detached, ctx.extras)
            total = terms.pop("loss")
            if self.p.alpha > 0:
                terms["ce"] = F.cross_entropy(s_out["logits"].float(), batch.y)
                total = total + self.p.alpha * terms["ce"]
        for opt in ctx.optimizers:
            opt.zero_grad(set_to_none=True)
        # Separate graphs (the taps are detached): one backward gives each its own gradients.
        (total + teacher_ce).backward()
        for opt in ctx.optimizers:
            opt.step()
        terms.update(loss=total.detach(), teacher_ce=teacher_ce.detach())
        return terms

    def on_epoch_end(self, ctx, epoch: int) -> dict[str, float]:
        acc, _ = evaluate(ctx.extras["teacher"], ctx.loader("val"), ctx.device)
        return {"teacher_val_acc": acc}

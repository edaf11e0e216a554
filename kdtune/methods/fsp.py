"""``fsp``: the flow of solution procedure (Yim, Joo, Bae & Kim 2017, "A Gift from Knowledge
Distillation: Fast Optimization, Network Minimization and Transfer Learning").

For two feature maps F¹ [h, w, m] and F² [h, w, n] of the same spatial size the FSP matrix is

    G_ij = Σ_{s,t} F¹_{s,t,i} · F²_{s,t,j} / (h·w)          (m × n)

Our layer pairs are each group's input and output (the paper's "sections that maintain the
same spatial size" start and end there): the input — the stem's output for the first group — is
average-pooled to the output's size where the group downsamples. Teacher and student groups are
paired from the last. Where the student's widths differ from the teacher's, learned 1×1
adapters (conv + BN, in ``build_extras``) map the student's maps to the teacher's widths; the
matrix itself does not depend on h·w, so the two nets' spatial sizes need not agree.

Stage 1 (``fsp``: ``stage1_epochs`` at ``stage1_lr``, SGD) trains the student (and adapters) on

    L_FSP = mean_batch Σ_i λ_i ‖G_i^T − G_i^S‖²₂     (λ_i = 1: the paper uses equal weights,
                                                     and one λ only rescales the step size)

stage 2 is the main stage: ordinary cross-entropy from the stage-1 weights (loss 0 besides the
engine's ``ce``). The teacher is not run in the main stage.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from kdtune.methods._base import Method, MethodParams, Stage
from kdtune.methods._features import (
    accumulate, adapter, channels, mean_terms, pair_from_last, probe, resize, sgd, size,
    stage_batches)
from kdtune.registry import METHODS
from kdtune.training.context import autocast, taps


class FSPParams(MethodParams):
    stage1_epochs: int = Field(3, ge=1, description="FSP stage-1 epochs")
    stage1_lr: float = Field(1e-3, gt=0, description="FSP stage-1 SGD learning rate")


def as_map(f: Tensor) -> Tensor:
    """A vector feature [B, C] is a 1×1 map [B, C, 1, 1] (MLP groups)."""
    return f[:, :, None, None] if f.dim() == 2 else f


def fsp_matrix(f1: Tensor, f2: Tensor) -> Tensor:
    """[B, m, h, w] × [B, n, h, w] → [B, m, n]; ``f1`` is pooled to ``f2``'s size first."""
    f1, f2 = as_map(f1).float(), as_map(f2).float()
    f1 = resize(f1, size(f2))
    h, w = f2.shape[2:]
    return torch.einsum("bmhw,bnhw->bmn", f1, f2) / (h * w)


def fsp_loss(g_s: list[Tensor], g_t: list[Tensor]) -> Tensor:
    """Σ_i ‖G_i^T − G_i^S‖²₂ (squared Frobenius norm per sample), mean over the batch."""
    return sum((t - s).pow(2).flatten(1).sum(1).mean() for s, t in zip(g_s, g_t))


def points(out: dict) -> list[tuple[Tensor, Tensor]]:
    """(input, output) of every group: the input of group 0 is the stem's output."""
    gs = out["groups"]
    return list(zip([out["stem"], *gs[:-1]], gs))


@METHODS.register("fsp")
class FSP(Method):
    name = "fsp"
    Params = FSPParams
    teacher_needs = ()  # the teacher is read in stage 1 only (its own call), never per main step
    student_needs = ("logits",)
    class_relation = "any"  # features only

    def build_extras(self, teacher, student, ctx) -> nn.ModuleDict:
        t, s = points(probe(teacher, ctx)), points(probe(student, ctx))
        self.pairs = pair_from_last(len(t), len(s))
        ad = nn.ModuleDict()
        for i, j in self.pairs:
            for end in (0, 1):  # 1×1 adapters only where the widths differ
                ct, cs = channels(t[i][end]), channels(s[j][end])
                if ct != cs:
                    ad[f"{j}_{end}"] = adapter(cs, ct, 1, vector=s[j][end].dim() == 2)
        self.extras = nn.ModuleDict({"adapters": ad})
        return self.extras

    def matrices(self, out: dict, student: bool) -> list[Tensor]:
        pts, ad = points(out), self.extras["adapters"]
        gs = []
        for i, j in self.pairs:
            k = j if student else i
            f1, f2 = pts[k]
            if student:
                f1 = ad[f"{j}_0"](f1) if f"{j}_0" in ad else f1
                f2 = ad[f"{j}_1"](f2) if f"{j}_1" in ad else f2
            gs.append(fsp_matrix(f1, f2))
        return gs

    def loss(self, batch, s_out, t_out, extras):
        return {"loss": torch.zeros((), device=batch.x.device)}  # stage 2: CE only

    def stages(self, ctx) -> list[Stage]:
        state = {}

        def run_epoch(ctx, epoch: int) -> dict[str, float]:
            if "opt" not in state:
                state["opt"] = sgd(list(ctx.student.parameters()) + list(self.extras.parameters()),
                                   self.p.stage1_lr, ctx.common)
            ctx.student.train()
            self.extras.train()
            sums, n = {}, 0
            for batch in stage_batches(ctx, epoch, labels=False):
                with autocast(ctx.device):
                    with torch.no_grad():
                        g_t = self.matrices(ctx.teacher_outputs(batch, ("stem", "groups")), False)
                    g_s = self.matrices(taps(ctx.student, batch.x, ("stem", "groups")), True)
                    loss = fsp_loss(g_s, g_t)
                state["opt"].zero_grad(set_to_none=True)
                loss.backward()
                state["opt"].step()
                accumulate(sums, {"fsp": loss})
                n += 1
            return mean_terms(sums, n)

        return [Stage("fsp", self.p.stage1_epochs, run_epoch)]

"""``at``: activation-based attention transfer (Zagoruyko & Komodakis 2016, "Paying More
Attention to Attention").

For a group output A ([B, C, H, W]) the attention map is ``Q = Σ_c |A_c|^p`` (p = 2, the
paper's choice), flattened and L2-normalised per sample. Groups are matched pairwise from the
last; a student map of another spatial size is resized to the teacher's before normalising.

    L_at = β/2 · Σ_groups mean_{batch, positions} (Q_s − Q_t)²

The mean over batch × H·W (not a per-sample sum) is what makes the usual β = 1e3 right.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdtune.methods._base import Method, MethodParams
from kdtune.methods._features import pair_from_last, conv_groups, resize, size
from kdtune.registry import METHODS

P = 2  # the exponent of the attention map; the paper's best (p = 1 and 4 were worse)


class ATParams(MethodParams):
    beta: float = Field(1000.0, gt=0, description="attention loss weight")


def attention(a: Tensor, to: tuple[int, int] | None = None, p: int = P) -> Tensor:
    """``Σ_c |A_c|^p`` resized to ``to`` (if given), flattened, L2-normalised per sample: [B, H·W]."""
    q = a.float().abs().pow(p).sum(1, keepdim=True)
    if to is not None:
        q = resize(q, to)
    return F.normalize(q.flatten(1), dim=1)


def at_loss(s_maps: list[Tensor], t_maps: list[Tensor], beta: float) -> Tensor:
    """β/2 · Σ over matched pairs of the mean squared attention difference."""
    total = 0.0
    for s, t in zip(s_maps, t_maps):
        total = total + (attention(s, size(t)) - attention(t)).pow(2).mean()
    return beta / 2 * total


@METHODS.register("at")
class AT(Method):
    terms = ("attention",)
    name = "at"
    Params = ATParams
    teacher_needs = ("groups",)
    student_needs = ("logits", "groups")
    class_relation = "any"  # features only

    @classmethod
    def teacher_groups(cls, n_teacher: int, n_student: int) -> tuple[int, ...]:
        return tuple(i for i, _ in pair_from_last(n_teacher, n_student))

    def build_extras(self, teacher, student, ctx) -> nn.ModuleDict:
        t, s = conv_groups(teacher, student, ctx, "at: attention maps")
        self.pairs = pair_from_last(len(t), len(s))
        return nn.ModuleDict()

    def loss(self, batch, s_out, t_out, extras):
        sg, tg = s_out["groups"], t_out["groups"]
        a = at_loss([sg[j] for _, j in self.pairs], [tg[i] for i, _ in self.pairs], self.p.beta)
        return {"loss": a, "attention": a}

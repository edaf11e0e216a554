"""``ft``: Factor Transfer (Kim, Park & Kwak 2018, "Paraphrasing Complex Network: Network
Compression via Factor Transfer").

1. Pre-stage ``paraphraser`` (``paraphraser_epochs``): for each teacher group in G an
   undercomplete convolutional autoencoder (3 conv + 3 transposed conv, 3×3, stride 1, pad 1,
   BN + LeakyReLU(0.1) after each of the six; the second conv and the second transposed conv
   change the width to/from ``round(k·C)``) is trained to reconstruct the group's output (MSE).
   The encoder's output is the *teacher factor*. Several autoencoders train side by side: their
   losses share no parameter, so this equals the paper's one-at-a-time training.
2. Main stage: the paraphrasers are frozen (eval mode, no gradient); a *translator* (3 conv,
   the encoder's layout) maps each student group output (resized to the teacher's spatial
   size) to the factor shape, trained end to end with the student:

       L = CE + β · Σ_{j∈G} ‖ F_T^j/‖F_T^j‖₂ − F_S^j/‖F_S^j‖₂ ‖_p

   with factors vectorised and L2-normalised per sample. The p-norm is taken as the *mean*
   per-entry |·|^p (mean over batch and factor entries), as the authors' code and RepDistiller
   do (``F.l1_loss`` / ``F.mse_loss`` of the normalised factors): β = 500 is set for that
   scale; a per-sample sum would be D (the factor size) times stronger. p = 2 is the paper's
   MSE ablation.

G is ``all`` (every teacher group with a student partner, paired from the last) or ``last``
(the last group only). Defaults are the paper's CIFAR setting (§4.3): k = 2/3 "for all
layers", every group (the CIFAR results add "multiple group losses"), and a paraphraser
learning rate of 0.01. The paper's ImageNet setting is k = 3/4, ``groups: last`` and a rate of
0.1 (500 iterations); both lie in the search ranges. The paraphraser is trained with SGD
(Nesterov, momentum 0.9, the common weight decay) at a constant ``paraphraser_lr`` for
``paraphraser_epochs``: the paper's CIFAR schedule starts at 0.01 and decays only after 50
epochs, and caps the last group's autoencoder at 10 epochs, so a stage of at most 20 epochs
never reaches a decay. The paper gave the other groups' autoencoders 150 epochs; here every
group shares ``paraphraser_epochs`` (one stage, one cost).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdtune.methods._base import Method, MethodParams, Stage
from kdtune.methods._features import (
    accumulate, channels, freeze, mean_terms, pair_from_last, conv_groups, resize, sgd, size, stage_batches)
from kdtune.registry import METHODS
from kdtune.training.context import autocast


class FTParams(MethodParams):
    beta: float = Field(500.0, gt=0, description="factor loss weight")
    k: float = Field(2 / 3, gt=0, le=1, description="factor channels / teacher channels")
    groups: Literal["last", "all"] = "all"
    paraphraser_epochs: int = Field(10, ge=1, description="autoencoder pre-stage epochs")
    paraphraser_lr: float = Field(0.01, gt=0, description="autoencoder pre-stage learning rate")
    p: Literal[1, 2] = Field(1, description="norm of the factor difference (2: MSE ablation)")


def _layer(conv: nn.Module, c_out: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)]


def encoder(c_in: int, c_factor: int) -> nn.Sequential:
    """conv(C→C), conv(C→kC), conv(kC→kC), each 3×3/1/1 + BN + LeakyReLU(0.1)."""
    return nn.Sequential(*_layer(nn.Conv2d(c_in, c_in, 3, 1, 1), c_in),
                         *_layer(nn.Conv2d(c_in, c_factor, 3, 1, 1), c_factor),
                         *_layer(nn.Conv2d(c_factor, c_factor, 3, 1, 1), c_factor))


class Paraphraser(nn.Module):
    """The teacher-side undercomplete autoencoder; ``encode`` gives the teacher factor."""

    def __init__(self, c: int, c_factor: int) -> None:
        super().__init__()
        self.encoder = encoder(c, c_factor)
        self.decoder = nn.Sequential(
            *_layer(nn.ConvTranspose2d(c_factor, c_factor, 3, 1, 1), c_factor),
            *_layer(nn.ConvTranspose2d(c_factor, c, 3, 1, 1), c),
            *_layer(nn.ConvTranspose2d(c, c, 3, 1, 1), c))

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def factor_loss(f_s: Tensor, f_t: Tensor, p: int = 1) -> Tensor:
    """Mean over batch × entries of |F_T/‖F_T‖₂ − F_S/‖F_S‖₂|^p, factors vectorised per sample."""
    d = F.normalize(f_t.float().flatten(1), dim=1) - F.normalize(f_s.float().flatten(1), dim=1)
    return d.abs().pow(p).mean()


@METHODS.register("ft")
class FT(Method):
    terms = ("factor",)
    name = "ft"
    Params = FTParams
    teacher_needs = ("groups",)
    student_needs = ("logits", "groups")
    class_relation = "any"  # features only

    @classmethod
    def teacher_groups(cls, n_teacher: int, n_student: int) -> tuple[int, ...]:
        # every pair (groups: all); groups: last reads the last of them
        return tuple(i for i, _ in pair_from_last(n_teacher, n_student))

    def build_extras(self, teacher, student, ctx) -> nn.ModuleDict:
        t, s = conv_groups(teacher, student, ctx, "ft: factor transfer")
        pairs = pair_from_last(len(t), len(s))
        self.pairs = pairs[-1:] if self.p.groups == "last" else pairs
        self.sizes = [size(t[i]) for i, _ in self.pairs]
        para, trans = nn.ModuleList(), nn.ModuleList()
        for i, j in self.pairs:
            c_factor = max(1, round(self.p.k * channels(t[i])))
            para.append(Paraphraser(channels(t[i]), c_factor))
            trans.append(encoder(channels(s[j]), c_factor))
        self.extras = nn.ModuleDict({"paraphrasers": para, "translators": trans})
        return self.extras

    def loss(self, batch, s_out, t_out, extras):
        para, trans = extras["paraphrasers"], extras["translators"]
        para.eval()  # frozen in the main stage: its BatchNorm statistics must not move either
        total = 0.0
        for n, (i, j) in enumerate(self.pairs):
            with torch.no_grad():
                f_t = para[n].encode(t_out["groups"][i])
            f_s = trans[n](resize(s_out["groups"][j], self.sizes[n]))
            total = total + factor_loss(f_s, f_t, self.p.p)
        f = self.p.beta * total
        return {"loss": f, "factor": f}

    def stages(self, ctx) -> list[Stage]:
        state = {}

        def run_epoch(ctx, epoch: int) -> dict[str, float]:
            para = self.extras["paraphrasers"]
            if "opt" not in state:
                state["opt"] = sgd(para.parameters(), self.p.paraphraser_lr, ctx.common)
            para.train()
            sums, n = {}, 0
            for batch in stage_batches(ctx, epoch, labels=False):
                with autocast(ctx.device):
                    t = ctx.teacher_outputs(batch, ("groups",))["groups"]
                    rec = sum(F.mse_loss(para[m](t[i]).float(), t[i].float())
                              for m, (i, _) in enumerate(self.pairs))
                state["opt"].zero_grad(set_to_none=True)
                rec.backward()
                state["opt"].step()
                accumulate(sums, {"reconstruction": rec})
                n += 1
            if epoch == self.p.paraphraser_epochs - 1:
                freeze(para)  # the main stage only reads the factors
            return mean_terms(sums, n)

        return [Stage("paraphraser", self.p.paraphraser_epochs, run_epoch)]

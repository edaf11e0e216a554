"""``mds``: Knowledge Factorization §3.5, multidimensional scaling of the teacher's embedding.

For a batch of N images with penultimate embeddings f_s (student) and f_t (teacher; the
dimensions may differ):

    L_mds = (2 / (N(N−1))) · Σ_{i<j} (‖f_s(i) − f_s(j)‖₂ − ‖f_t(i) − f_t(j)‖₂)²

plus ``lambda_ce``·CE (the engine's term). Normalisation (our choice): the paper writes the sum
over pairs; we take the **mean over the N(N−1)/2 pairs**, so the term does not grow with the
batch size (batch size is searched) and ``lambda_ce`` keeps one meaning. It is the paper's sum
divided by a constant.

``lambda_ce = 0`` is the paper's unsupervised MDS: the student's training never reads ``y``
(only the optional teacher fine-tuning below does) and the student's ``fc`` gets no gradient.
Such a student is scored with a **linear probe**: before every evaluation ``before_eval`` fits
a multinomial logistic regression (full-batch L-BFGS, ``PROBE_STEPS`` iterations, L2
``PROBE_L2``, on standardised features, folded back) on the frozen *training-set* embeddings
and installs it as the student's ``fc``. The probe reads the training
labels — only the probe, only for scoring; the reported accuracy is a linear-probe accuracy.
It runs only when the head had no training signal (``fc`` has no gradient), so in a
composition whose other terms train the head, the head is left alone.

**Teacher fine-tuning (§5.6, optional pre-stage ``teacher_finetune``).** The paper fine-tunes
its G-trained teacher on S for 50 epochs before MDS. With ``teacher_finetune_epochs`` > 0 a
per-trial copy of the teacher (its ``fc`` cut to S's rows when S ⊂ G, as in ``pretrained``; a
fresh head for S otherwise) lives in the extras as ``extras["teacher"]`` (checkpointed with
them) and is trained with CE on S's labels for that many epochs (the common optimiser family
and schedule, learning rate ``teacher_lr``); it is then frozen and MDS distils from *its*
embeddings (eval mode, no gradient). The cached teacher is never touched. Default 0 (no
fine-tuning), not the paper's 50: the stage runs in every trial, so 50 epochs would cost each
trial more than its main stage, and it reads S's labels, which the label-free default
(``lambda_ce = 0``) otherwise never does. Set 50 for the paper's §5.6 pipeline.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from kdtune.methods._base import Method, MethodParams, Stage
from kdtune.methods._features import accumulate, freeze, mean_terms, stage_batches
from kdtune.methods.pretrained import restricted_copy
from kdtune.registry import METHODS
from kdtune.training.context import autocast
from kdtune.training.ops import evaluate, make_optimizer, make_schedule

PROBE_STEPS = 200
PROBE_L2 = 1e-4  # on the standardised-feature weights: a little, against separable-data blow-up


def distance_matrix(f: Tensor) -> Tensor:
    """[N, N] Euclidean distances, with a finite gradient where a distance is 0."""
    sq = f.pow(2).sum(1)
    # Gram form, not f[i] − f[j] over index pairs: the backward of an index gather accumulates
    # in a thread-dependent order on the CPU, so two identical runs drifted apart.
    d2 = sq[:, None] + sq[None, :] - 2 * (f @ f.T)
    return d2.clamp_min(1e-12).sqrt()  # sqrt'(0) is infinite: the diagonal (and equal rows) would NaN


def mds_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Mean over pairs i < j of (d_s(i, j) − d_t(i, j))²."""
    n = len(f_s)
    if n < 2:
        return f_s.sum() * 0.0
    diff = distance_matrix(f_s.float().flatten(1)) - distance_matrix(f_t.float().flatten(1))
    upper = torch.ones(n, n, device=diff.device).triu(1)  # pairs i < j
    return (diff.pow(2) * upper).sum() / (n * (n - 1) / 2)


def fit_probe(z: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression on features ``z`` [N, D]: (weight [K, D], bias [K])."""
    mu, sd = z.mean(0), z.std(0).clamp_min(1e-6)
    zs = (z - mu) / sd
    w = torch.zeros(num_classes, z.shape[1], device=z.device, requires_grad=True)
    b = torch.zeros(num_classes, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=PROBE_STEPS, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(zs @ w.T + b, y) + PROBE_L2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, b = w.detach() / sd, b.detach()
    return w, b - w @ mu  # fc(z) = W (z − μ)/σ + b, folded into one Linear


class MDSParams(MethodParams):
    lambda_ce: float = Field(0.0, ge=0)  # CE weight; 0 = unsupervised (linear-probe scoring)
    teacher_finetune_epochs: int = Field(0, ge=0)  # §5.6 pre-stage on S; 0 = none
    teacher_lr: float = Field(0.01, gt=0)  # learning rate of that fine-tuning


def teacher_for_s(teacher: nn.Module, ctx) -> nn.Module:
    """A trainable copy of ``teacher`` with a head for S: its own rows if S ⊂ G, else fresh."""
    if ctx.teacher_index is not None:
        return restricted_copy(teacher, ctx.teacher_index)
    model = copy.deepcopy(teacher)
    old = model.fc
    model.fc = nn.Linear(old.in_features, ctx.data.num_classes).to(old.weight.device)
    model.spec = dict(getattr(model, "spec", {}), num_classes=ctx.data.num_classes)
    for p in model.parameters():
        p.requires_grad_(True)  # the cached teacher is frozen; its copy is a normal model
    return model


@METHODS.register("mds")
class MDS(Method):
    terms = ("mds",)
    name = "mds"
    Params = MDSParams
    teacher_needs = ("penultimate",)
    student_needs = ("logits", "penultimate")
    class_relation = "any"  # embeddings only: any class relation works

    def __init__(self, params: BaseModel | None = None) -> None:
        super().__init__(params)
        if self.p.teacher_finetune_epochs > 0:
            self.teacher_needs = ()  # the embeddings come from the fine-tuned copy, not the cache

    def ce_weight(self) -> float:
        return self.p.lambda_ce

    def build_extras(self, teacher, student, ctx) -> nn.ModuleDict:
        self.extras = nn.ModuleDict()
        if self.p.teacher_finetune_epochs > 0:
            if teacher is None:
                raise ValueError("mds: teacher_finetune_epochs > 0 needs a teacher")
            self.extras["teacher"] = teacher_for_s(teacher, ctx).train()
        return self.extras

    def stages(self, ctx) -> list[Stage]:
        if self.p.teacher_finetune_epochs == 0:
            return []
        state = {}
        common = ctx.common.model_copy(update={"lr": self.p.teacher_lr})

        def run_epoch(ctx, epoch: int) -> dict[str, float]:
            model = self.extras["teacher"]
            if "opt" not in state:
                state["opt"] = make_optimizer(model.parameters(), common)
                state["schedule"] = make_schedule(state["opt"], common,
                                                  self.p.teacher_finetune_epochs)
            model.train()
            sums, n = {}, 0
            for batch in stage_batches(ctx, epoch, labels=True):  # S's labels: the copy's CE
                with autocast(ctx.device):
                    ce = F.cross_entropy(model(batch.x).float(), batch.y)
                state["opt"].zero_grad(set_to_none=True)
                ce.backward()
                state["opt"].step()
                accumulate(sums, {"ce": ce})
                n += 1
            state["schedule"].step()
            out = mean_terms(sums, n)
            out["val_acc"], _ = evaluate(model, ctx.loader("val"), ctx.device)
            if epoch == self.p.teacher_finetune_epochs - 1:
                freeze(model)  # MDS only reads its embeddings from here on
            return out

        return [Stage("teacher_finetune", self.p.teacher_finetune_epochs, run_epoch)]

    def loss(self, batch, s_out, t_out, extras):
        if "teacher" in extras:  # the §5.6 copy fine-tuned on S (eval mode, like the cache)
            with torch.no_grad():
                f_t = extras["teacher"].eval().forward_taps(batch.x)["penultimate"]
        else:
            f_t = t_out["penultimate"]
        m = mds_loss(s_out["penultimate"], f_t)
        return {"mds": m, "loss": m}

    @torch.no_grad()
    def before_eval(self, ctx) -> None:
        fc = ctx.student.fc
        if self.p.lambda_ce > 0 or fc.weight.grad is not None:
            return  # the head was trained: score it as it is
        was = ctx.student.training
        ctx.student.eval()
        feats = [ctx.student.forward_taps(x)["penultimate"].float()
                 for x, _, _ in ctx.loader("train", shuffle=False, augment=False, batch_size=512)]
        ctx.student.train(was)
        y = ctx.data.train.y.to(ctx.device)  # the probe's labels: training split, scoring only
        w, b = fit_probe(torch.cat(feats), y, ctx.data.num_classes)
        fc.weight.copy_(w.to(fc.weight.dtype))
        fc.bias.copy_(b.to(fc.bias.dtype))

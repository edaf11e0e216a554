"""``kr``: Knowledge Representing (Liu, Wen, Gao, Tao, Chen, Osa & Kato 2019, "Knowledge
Representing: Efficient, Sparse Representation of Prior Knowledge for Knowledge Distillation").

The paper is loose; this is the reading implemented (each step names the equation it reads).

**Knowledge aggregation (Eq. 9), optimiser 1 (``agg_lr``, SGD momentum 0.9, weight decay 1e-5
as in §4.3).** The teacher's blocks (``teacher.blocks()``) are cut into segments of ``c``
consecutive blocks (the last segment may be shorter), and each segment k is represented by one
*aggregated block* W̃ₖ mapping the segment's input shape to its output shape. The aggregated
blocks form a network: teacher stem (frozen) → W̃₁ → … → W̃ₘ → teacher head (frozen). It is
trained on

    posterior loss  +  γ · Σₖ μ(Wᵗₖ) · ‖F_{Wᵗₖ} − F_{W̃ₖ}‖₂

where the posterior loss is the cross-entropy of the aggregated network's softmax against the
teacher's softmax (the paper's L(yᵗ, ·), the only reading under which it depends on W̃), F_{Wᵗₖ}
is the teacher's output at the end of segment k, F_{W̃ₖ} the aggregated network's output at the
same point, ‖·‖₂ the L2 norm of the vectorised difference per sample (mean over the batch),
and μ(Wᵗₖ) the standard deviation of segment k's teacher parameters (fixed, computed once).
A segment whose first teacher block already has the segment's input/output shape (e.g. ResNet
segments that line up with groups) starts as a copy of that block; the paper notes convergence
suffers when W̃ starts far from a sensible point. Otherwise W̃ₖ is fresh: average-pool to the
output size, then a residual basic block (a Linear + ReLU for vector features).

**Student (Eq. 10), optimiser 2 (the common ``lr``/``optimizer``; paper 0.01).** L(W̃, Wˢ) is
read as matching the aggregated knowledge at the feature level: the aggregated blocks are paired
with student blocks by relative depth (the last with the last), and each student block output
goes through a learned 1×1 adapter (resized to the aggregated map's size) into an MSE against
the (detached) aggregated output. The target is the aggregated network *after* this batch's
aggregation step (Algorithm 1: "Optimizing W̃ᵗ", then "Optimizing Wˢ with W̃ᵗ"): it is run
again, without gradient and without moving its BatchNorm statistics, once optimiser 1 has
stepped. Plus the posterior term of Eq. 1–2, L(yᵗ, yˢ), with L the cross-entropy (one of the
metrics Eq. 1 allows): ``posterior: teacher`` (default, the paper's) is the cross-entropy of
the student's softmax against the teacher's (temperature 1, teacher logits restricted to the
student's classes, so it needs them to be a subset; no label is read), ``posterior: labels``
the hard-label ``ce`` instead (any class relation).

**Sparse recoding (Eq. 3–4), λ·Σⱼ Φ₀(gⱼ), read as a rewrite of the student's gradients**
(not a loss term: a learnable ε in the loss only grows until Φ₀ switches itself off). After
the student's backward pass each gradient entry g becomes

    g' = 0                          if |g| < ε     (inactive neurons: filtered)
    g' = g + λ·sign(g)·Φ₀(g)        if |g| ≥ ε     (dominant ones: enhanced)

with Φ₀(g) = (|g| + g²)/ε above ε and 0 below it. λ = 0 switches the rewrite off entirely
(the paper's "KR-Dense"). ε starts at the first batch's mean |g|. The paper initialises it
"with the mean value of parameters distribution", but parameters sit orders of magnitude above
gradients (mean |θ| ≈ 0.09 against mean |g| ≈ 0.0015, resnet8 ×0.5 at init): started there, ε
sits clamped at max|g| and zeroes nearly every gradient for about the first 30 steps. Each
step ε then moves toward that step's mean |g| (ε ← 0.9·ε + 0.1·mean|g|) and is clamped to
[min|g|, max|g|], so it always lies inside the range of the gradients it filters. The adapters
are not student weights: their gradients are not rewritten.

The two updates alternate every batch (Algorithm 1). Hyperparameters: c, γ, λ, ``agg_lr``,
``posterior`` and the common ``lr``.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from pathlib import Path

from pydantic import Field
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from kdtune.data import resolve_classes
from kdtune.spec import SpecError
from kdtune.methods._base import Method, MethodParams
from kdtune.methods._features import (
    adapter, block_forward, channels, pair_by_depth, resize, sgd, size)
from kdtune.registry import METHODS
from kdtune.models import create_model
from kdtune.training.checkpoint import read_meta
from kdtune.params.space import method_space
from kdtune.training.ops import make_optimizer
from kdtune.training.context import autocast

EPS_MOMENTUM = 0.1  # ε's step toward the batch's mean |g|
AGG_WEIGHT_DECAY = 1e-5  # §4.3


class KRParams(MethodParams):
    c: int = Field(3, ge=1, description="teacher blocks per aggregated block")
    gamma: float = Field(1.0, ge=0, description="weight of the transport term in Eq. 9")
    lam: float = Field(1e-3, ge=0, description="sparse recoding strength (0: KR-Dense)")
    agg_lr: float = Field(0.1, gt=0, description="learning rate of the aggregation optimiser")
    # L(yᵗ, yˢ) of Eq. 1–2: CE against the teacher's softmax (the paper) or the labels
    posterior: Literal["teacher", "labels"] = "teacher"


def phi0(g: Tensor, eps: float | Tensor) -> Tensor:
    """Eq. 4: (|g| + g²)/ε where |g| ≥ ε, else 0 (elementwise)."""
    a = g.abs()
    return torch.where(a >= eps, (a + g * g) / eps, torch.zeros_like(g))


def segments(n_blocks: int, c: int) -> list[range]:
    """Consecutive runs of ``c`` block indices (the last may be shorter)."""
    return [range(s, min(s + c, n_blocks)) for s in range(0, n_blocks, c)]


class AggBlock(nn.Module):
    """A fresh aggregated block: pool to the output size, then a residual basic block."""

    def __init__(self, c_in: int, c_out: int, out_size: tuple[int, ...], vector: bool) -> None:
        super().__init__()
        self.out_size = out_size
        if vector:
            self.body = nn.Sequential(nn.Linear(c_in, c_out), nn.ReLU())
        else:
            down = None if c_in == c_out else nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
            self.body = BasicBlock(c_in, c_out, 1, down)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(resize(x, self.out_size))


def soft_ce(logits: Tensor, target_logits: Tensor) -> Tensor:
    """Cross-entropy of softmax(logits) against softmax(target_logits), mean over the batch."""
    return -(F.softmax(target_logits.float(), 1) * F.log_softmax(logits.float(), 1)).sum(1).mean()


def teacher_posterior(logits: Tensor, t_logits: Tensor, index: Tensor) -> Tensor:
    """Eq. 1's L(yᵗ, yˢ) as cross-entropy: the teacher's logits at the student's classes."""
    return soft_ce(logits, t_logits.index_select(1, index.to(t_logits.device)))


@contextmanager
def kept_statistics(module: nn.Module):
    """Run ``module`` (train mode) without moving its buffers (BatchNorm running statistics)."""
    saved = [b.detach().clone() for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(module.buffers(), saved):
                b.copy_(s)


def student_in_teacher(spec) -> bool | None:
    """Whether the spec's student classes lie inside the teacher's (None: unknown here)."""
    t, s = spec.teacher.classes, spec.student.classes
    if spec.teacher.checkpoint:
        return None  # the checkpoint's metadata holds its classes
    if t == "all":
        return True
    if s == "all":
        return None
    n = 1 << 30  # explicit ids and {first: k} resolve without the dataset's class count
    return set(resolve_classes(s, n)) <= set(resolve_classes(t, n))


def teacher_blocks(spec) -> int | None:
    """How many blocks the spec's teacher has (None: unknown, e.g. a registry URI)."""

    ckpt = spec.teacher.checkpoint
    with torch.device("meta"):  # shapes only: no memory, no init cost
        if ckpt and not ckpt.startswith("models:/"):
            arch = dict(read_meta(Path(ckpt))["arch"])
            model = create_model(arch.pop("name"), arch.pop("num_classes"), arch.pop("in_channels"),
                                 arch.pop("input_size"), **arch.pop("kwargs", {}))
        elif ckpt:
            return None
        else:
            model = create_model(spec.teacher.model, 2, 1, 28, **spec.teacher.kwargs)
    return len(model.blocks())


@METHODS.register("kr")
class KR(Method):
    terms = ("match", "posterior", "eps", "kept", "agg_posterior", "agg_transport")
    name = "kr"
    Params = KRParams
    teacher_needs = ()  # train_step runs the teacher block by block itself
    student_needs = ("logits",)
    class_relation = "any"  # the student never reads the teacher's logits
    has_train_step = True

    def ce_weight(self) -> float:
        return 1.0 if self.p.posterior == "labels" else 0.0  # teacher posterior: label-free

    def check(self, spec) -> None:
        key = "kr.c" if spec.prefixed else "c"
        space = method_space("kr")
        c = spec.params.get(key, space.params["c"].default if "c" in space.params else self.p.c)
        pkey = "kr.posterior" if spec.prefixed else "posterior"
        post = spec.params.get(pkey, space.params["posterior"].default
                               if "posterior" in space.params else self.p.posterior)
        if post == "teacher" and student_in_teacher(spec) is False:
            raise SpecError(f"params.{pkey}: teacher needs student.classes inside "
                            "teacher.classes (the teacher's softmax over the student's classes); "
                            "use posterior: labels for another class relation")
        n = teacher_blocks(spec)
        if not isinstance(c, int) or c < 1:
            raise SpecError(f"params.{key}: must be an integer >= 1 (got {c!r})")
        if n is not None and c > n:
            raise SpecError(f"params.{key}: c = {c} exceeds the teacher's {n} blocks "
                            f"({spec.teacher.model}); use 1 <= c <= {n}")

    # ---- build
    def build_extras(self, teacher, student, ctx) -> nn.ModuleDict:
        blocks = teacher.blocks()
        if self.p.c > len(blocks):
            raise ValueError(f"kr: c = {self.p.c} exceeds the teacher's {len(blocks)} blocks")
        x = torch.zeros(2, ctx.data.in_channels, ctx.data.input_size, ctx.data.input_size,
                        device=next(teacher.parameters()).device)
        with torch.no_grad():
            t_stem, t_outs, _ = block_forward(teacher.eval(), x)
            was = student.training
            _, s_outs, _ = block_forward(student.eval(), x)
            student.train(was)
        t_ins = [t_stem, *t_outs[:-1]]
        segs = segments(len(blocks), self.p.c)
        agg = nn.ModuleList()
        self.ends, self.mu = [], []
        for seg in segs:
            first, last = seg[0], seg[-1]
            x_in, y_out = t_ins[first], t_outs[last]
            if t_outs[first].shape == y_out.shape:  # the first block already has this shape
                blk = copy.deepcopy(blocks[first])
                for p in blk.parameters():
                    p.requires_grad_(True)
            else:
                blk = AggBlock(channels(x_in), channels(y_out), size(y_out), y_out.dim() == 2)
            agg.append(blk.train())
            self.ends.append(last)
            params = torch.cat([p.detach().flatten() for b in seg for p in blocks[b].parameters()])
            self.mu.append(float(params.float().std()) if params.numel() > 1 else 1.0)
        self.agg_sizes = [size(t_outs[e]) for e in self.ends]
        self.pairs = pair_by_depth(len(segs), len(s_outs))
        adapters = nn.ModuleList(
            adapter(channels(s_outs[j]), channels(t_outs[self.ends[k]]), 1, s_outs[j].dim() == 2)
            for k, j in self.pairs)
        if self.p.posterior == "teacher" and ctx.teacher_index is None:
            raise ValueError("kr: posterior 'teacher' needs the student's classes inside the "
                             "teacher's; use posterior: labels")
        self.index = ctx.teacher_index
        self.eps: Tensor | None = None  # set from the first batch's gradients (recode)
        self.last: dict[str, Tensor] = {}
        self.extras = nn.ModuleDict({"agg": agg, "adapters": adapters})
        return self.extras

    def optimizers(self, ctx) -> list[torch.optim.Optimizer]:
        student = make_optimizer(list(ctx.student.parameters()) +
                                 list(self.extras["adapters"].parameters()), ctx.common)
        agg = sgd(self.extras["agg"].parameters(), self.p.agg_lr, ctx.common, AGG_WEIGHT_DECAY)
        return [student, agg]  # the first one's lr is the one the engine reports

    # ---- the two alternating updates
    def agg_forward(self, t_stem: Tensor) -> list[Tensor]:
        """The aggregated network's outputs at each segment end, from the teacher's stem."""
        h, feats = t_stem, []
        for blk in self.extras["agg"]:
            h = blk(h)
            feats.append(h)
        return feats

    def agg_terms(self, teacher: nn.Module, t_stem: Tensor, t_outs: list[Tensor],
                  t_logits: Tensor) -> tuple[dict[str, Tensor], list[Tensor]]:
        """Eq. 9 terms (from the teacher's block outputs) and the aggregated outputs."""
        feats, transport = self.agg_forward(t_stem), 0.0
        for k, h in enumerate(feats):
            d = (h.float() - t_outs[self.ends[k]].float()).flatten(1)
            transport = transport + self.mu[k] * (d.pow(2).sum(1) + 1e-12).sqrt().mean()
        post = soft_ce(teacher.fc(teacher.embed(feats[-1])), t_logits)
        return {"agg_posterior": post, "agg_transport": transport}, feats

    def aggregate(self, teacher: nn.Module, x: Tensor) -> tuple[dict[str, Tensor], list[Tensor]]:
        """Eq. 9 terms and the aggregated network's outputs at each segment end."""
        with torch.no_grad():
            t = block_forward(teacher, x)
        return self.agg_terms(teacher, *t)

    def match(self, s_outs: list[Tensor], feats: list[Tensor]) -> Tensor:
        ad = self.extras["adapters"]
        return sum(F.mse_loss(ad[n](resize(s_outs[j], self.agg_sizes[k])).float(),
                              feats[k].detach().float())
                   for n, (k, j) in enumerate(self.pairs))

    @torch.no_grad()
    def recode(self, params: list[nn.Parameter]) -> dict[str, Tensor]:
        """Update ε, then rewrite the gradients in place (Φ₀, see the module docstring)."""
        grads = [p.grad for p in params if p.grad is not None]
        a = torch.cat([g.abs().flatten() for g in grads])
        lo, hi = a.min(), a.max()
        prev = a.mean() if self.eps is None else self.eps.to(a)  # first batch: start at mean |g|
        self.eps = torch.clamp((1 - EPS_MOMENTUM) * prev + EPS_MOMENTUM * a.mean(), lo, hi)
        self.last = {"eps": self.eps, "min": lo, "max": hi}
        kept = (a >= self.eps).float().mean()
        if self.p.lam > 0:
            for g in grads:
                boost = self.p.lam * g.sign() * phi0(g, self.eps)
                g.mul_(g.abs() >= self.eps).add_(boost)
        return {"eps": self.eps, "kept": kept if self.p.lam > 0 else torch.ones_like(kept)}

    def train_step(self, ctx, batch) -> dict[str, Tensor]:
        opt_s, opt_a = ctx.optimizers
        with torch.no_grad(), autocast(ctx.device):
            t_stem, t_outs, t_logits = block_forward(ctx.teacher, batch.x)
        with autocast(ctx.device):
            agg_terms, _ = self.agg_terms(ctx.teacher, t_stem, t_outs, t_logits)
            agg_loss = agg_terms["agg_posterior"] + self.p.gamma * agg_terms["agg_transport"]
        opt_a.zero_grad(set_to_none=True)
        agg_loss.backward()
        opt_a.step()
        # Algorithm 1 optimises Wˢ against W̃ᵗ as just updated: recompute the target (same mode,
        # batch statistics) but leave the running statistics as one forward per step left them.
        agg = self.extras["agg"]
        with torch.no_grad(), autocast(ctx.device), kept_statistics(agg):
            feats = self.agg_forward(t_stem)

        with autocast(ctx.device):
            _, s_outs, logits = block_forward(ctx.student, batch.x)
            terms = {"match": self.match(s_outs, feats)}
            total = terms["match"]
            if self.p.posterior == "teacher":
                terms["posterior"] = teacher_posterior(logits, t_logits, self.index)
                total = total + terms["posterior"]
            else:
                terms["ce"] = F.cross_entropy(logits.float(), batch.y)
                total = total + terms["ce"]
        opt_s.zero_grad(set_to_none=True)
        total.backward()
        terms.update(self.recode(list(ctx.student.parameters())))
        opt_s.step()
        terms.update(agg_terms)
        terms["loss"] = total
        return terms

    # ---- checkpoint
    def state_dict(self) -> dict:
        return {"eps": float(self.eps)} if getattr(self, "eps", None) is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if "eps" in state:
            self.eps = torch.tensor(state["eps"])

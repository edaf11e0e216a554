"""``anti_distillation``: grow a trained teacher into a wider student for harder data
(Petrushina, Grabovoy, Bakhteev & Strijov, "Anti-Distillation: Knowledge Transfer from Simple
Model to a Complex One").

S → G: the teacher was trained on D₁ (a subset of the classes), the student learns D₂ (all of
them). The student is ``widen(teacher, …)`` (``kdtune/models/widen.py``): the same architecture
with every hidden width × ``factor`` and the extra output classes, the teacher's weights copied
into their places (w[u] = u), new weights set by ``init``:

- ``zero``: weights out of new units are 0 (the student computes the teacher's function on its
  classes), weights into them random (no dead units), new output rows 0;
- ``uniform``: every new weight from U[0, θ];
- ``all_uniform``: nothing transferred (the paper's "uniform initialisation of all weights"
  baseline: PyTorch's default init).

The teacher's output rows are placed at the student's labels of the same original classes.
``student.model`` must name the teacher's model; ``student.kwargs`` are not used (the width is
the teacher's × ``factor``).

Optional pre-stage ``init`` (``init_epochs``, 0 = off): the paper's initialisation map
φ(u) = argmin_w λ₁ L_f(w, D₁*) + λ₂ ‖u − w[u]‖² + λ₃ E_{x'∈U_δ(x)} L_f(w, x') + λ₄ ‖∂²L_f/∂w²‖²,
run by SGD from the widened weights on D₁ (the training images of the teacher's classes, with
ψ = identity: same inputs). L_f is the student's cross-entropy; U_δ(x) is uniform noise in
[−δ, δ] per input entry (normalised units), one draw per step; the Hessian term is a one-probe
Hutchinson estimate E_v ‖H v‖² (Rademacher v) of ‖H‖²_F with H v by central differences of
gradients (``hessian_norm``), computed only when λ₄ > 0 (default 0: it costs a double
backward pass). The λ are given as non-negative weights with λ₂ > 0 and
divided by their sum (the paper puts them on the simplex). The main stage is cross-entropy on
D₂ (the engine's ``ce``). Robustness is reported by the spec's ``corruption`` (test accuracy
under a fraction of corrupted pixels).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdtune.methods._base import Method, MethodParams, Stage
from kdtune.methods._features import accumulate, mean_terms, sgd, stage_batches
from kdtune.models import widen
from kdtune.registry import METHODS
from kdtune.spec import SpecError


class AntiDistillationParams(MethodParams):
    init: Literal["zero", "uniform", "all_uniform"] = "zero"
    theta: float = Field(1e-2, gt=0, description="upper end of U[0, θ] for init: uniform")
    factor: float = Field(2.0, ge=1, description="width growth of the student over the teacher")
    init_epochs: int = Field(0, ge=0, description="epochs of the λ-loss pre-stage on D₁ (0: none)")
    lam1: float = Field(0.5, ge=0, description="weight of CE on the teacher's data D₁")
    lam2: float = Field(0.25, gt=0, description="weight of ‖u − w[u]‖²")
    lam3: float = Field(0.25, ge=0, description="weight of CE under input noise U_δ")
    lam4: float = Field(0.0, ge=0, description="weight of the Hessian norm (Hutchinson)")
    delta: float = Field(0.1, ge=0, description="input noise half-width (normalised units)")


def hessian_norm(model: nn.Module, x: Tensor, y: Tensor, h: float = 1e-3) -> Tensor:
    """One-probe Hutchinson estimate of ‖∂²L/∂w²‖²_F = E_v ‖H v‖² (Rademacher v), differentiable
    in w. H v is a central difference of gradients, (∇L(w + h v) − ∇L(w − h v)) / 2h: its
    gradient needs second derivatives only (BatchNorm has no third-order backward). BatchNorm
    buffers are copies, so the probes leave the running statistics alone."""
    from torch.func import functional_call  # lazy: only the optional λ-loss stage needs it

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    v = {n: torch.randint_like(p, 2) * 2 - 1 for n, p in params.items()}

    def grad_at(sign: float) -> list[Tensor]:
        moved = {n: p + sign * h * v[n] for n, p in params.items()}
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        loss = F.cross_entropy(functional_call(model, {**moved, **buffers}, (x,)).float(), y)
        return torch.autograd.grad(loss, list(moved.values()), create_graph=True)

    hv = [(a - b) / (2 * h) for a, b in zip(grad_at(1.0), grad_at(-1.0))]
    return sum(t.pow(2).sum() for t in hv)


def row_sources(teacher_classes: list[int], student_classes: list[int]) -> list[int]:
    """For each student label, the row of the widened fc to take: the teacher's row of the same
    class where there is one, otherwise one of the new rows (k, k+1, ...)."""
    k = len(teacher_classes)
    pos = {c: j for j, c in enumerate(teacher_classes)}
    new = iter(range(k, len(student_classes)))
    return [pos[c] if c in pos else next(new) for c in student_classes]


@METHODS.register("anti_distillation")
class AntiDistillation(Method):
    name = "anti_distillation"
    Params = AntiDistillationParams
    teacher_needs = ()  # the teacher only initialises the student
    student_needs = ("logits",)
    class_relation = "superset"  # S → G (the same classes also work)

    def check(self, spec) -> None:
        # the student *is* the teacher widened: a different student.model would be ignored
        if not spec.teacher.checkpoint and spec.student.model != spec.teacher.model:
            raise SpecError(f"student.model: anti_distillation widens the teacher, so it must be "
                            f"the teacher's model {spec.teacher.model!r} (got "
                            f"{spec.student.model!r}); the width comes from params.factor")

    def build_student(self, teacher, ctx) -> nn.Module:
        if teacher is None:
            raise ValueError("anti_distillation needs a teacher")
        s_cls = list(ctx.data.classes)
        t_cls = ctx.teacher_classes or s_cls[: teacher.num_classes]
        missing = sorted(set(t_cls) - set(s_cls))
        if missing:
            raise ValueError(f"anti_distillation: the student's classes must include the "
                             f"teacher's; {missing} are missing (S→G)")
        spec = teacher.spec
        kw = {k: v for k, v in (("in_channels", ctx.data.in_channels),
                                ("input_size", ctx.data.input_size)) if v != spec[k]}
        g = torch.Generator().manual_seed(ctx.seed)
        student = widen(teacher, spec["name"], self.p.factor, len(s_cls), self.p.init,
                        self.p.theta, generator=g, **kw)
        src = torch.tensor(row_sources(t_cls, s_cls), device=student.fc.weight.device)
        with torch.no_grad():  # teacher row j → the student's label of the same class
            student.fc.weight.copy_(student.fc.weight[src])
            student.fc.bias.copy_(student.fc.bias[src])
        # w[u]: where each teacher weight lives in the student (for the λ₂ term)
        rows = torch.tensor([s_cls.index(c) for c in t_cls], device=src.device)
        self.u: list[tuple[str, tuple, Tensor]] = []
        for name, p in teacher.named_parameters():
            idx = tuple(slice(0, n) for n in p.shape)
            if name in ("fc.weight", "fc.bias"):
                idx = (rows, *idx[1:])
            self.u.append((name, idx, p.detach().clone()))
        self.d1 = torch.zeros(len(s_cls), dtype=torch.bool, device=src.device)
        self.d1[rows] = True  # student labels that belong to D₁
        return student

    def loss(self, batch, s_out, t_out, extras):
        return {"loss": torch.zeros((), device=batch.x.device)}  # main stage: CE on D₂ only

    # ---- the λ-loss pre-stage
    def lambda_terms(self, student: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        lam = [self.p.lam1, self.p.lam2, self.p.lam3, self.p.lam4]
        w = [v / sum(lam) for v in lam]
        terms: dict[str, Tensor] = {}
        ce = F.cross_entropy(student(x).float(), y)
        terms["ce_d1"] = ce
        params = dict(student.named_parameters())
        terms["dist"] = sum((params[n][idx] - u.to(params[n])).pow(2).sum() for n, idx, u in self.u)
        total = w[0] * ce + w[1] * terms["dist"]
        if w[2] > 0:
            noisy = x + (torch.rand_like(x) * 2 - 1) * self.p.delta
            terms["ce_noise"] = F.cross_entropy(student(noisy).float(), y)
            total = total + w[2] * terms["ce_noise"]
        if w[3] > 0:
            terms["hessian"] = hessian_norm(student, x, y)
            total = total + w[3] * terms["hessian"]
        terms["loss"] = total
        return terms

    def stages(self, ctx) -> list[Stage]:
        if self.p.init_epochs == 0:
            return []
        state = {}

        def run_epoch(ctx, epoch: int) -> dict[str, float]:
            if "opt" not in state:
                state["opt"] = sgd(ctx.student.parameters(), ctx.common.lr, ctx.common)
            ctx.student.train()
            sums, n = {}, 0
            for batch in stage_batches(ctx, epoch):
                keep = self.d1[batch.y]
                if not keep.any():
                    continue
                terms = self.lambda_terms(ctx.student, batch.x[keep], batch.y[keep])
                state["opt"].zero_grad(set_to_none=True)
                terms["loss"].backward()
                state["opt"].step()
                accumulate(sums, terms)
                n += 1
            return mean_terms(sums, n)

        return [Stage("init", self.p.init_epochs, run_epoch)]

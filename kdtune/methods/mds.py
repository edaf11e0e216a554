"""``mds``: Knowledge Factorization §3.5, multidimensional scaling of the teacher's embedding.

For a batch of N images with penultimate embeddings f_s (student) and f_t (teacher; the
dimensions may differ):

    L_mds = (2 / (N(N−1))) · Σ_{i<j} (‖f_s(i) − f_s(j)‖₂ − ‖f_t(i) − f_t(j)‖₂)²

plus ``lambda_ce``·CE (the engine's term). Normalisation (our choice): the paper writes the sum
over pairs; we take the **mean over the N(N−1)/2 pairs**, so the term does not grow with the
batch size (batch size is searched) and ``lambda_ce`` keeps one meaning. It is the paper's sum
divided by a constant.

``lambda_ce = 0`` is the paper's unsupervised MDS: training never reads ``y`` and the student's
``fc`` gets no gradient. Such a student is scored with a **linear probe**: before every
evaluation ``before_eval`` fits a multinomial logistic regression (full-batch L-BFGS,
``PROBE_STEPS`` iterations, L2 ``PROBE_L2``, on standardised features, folded back) on the frozen
*training-set* embeddings and installs it as the student's ``fc``. The probe reads the training
labels — only the probe, only for scoring; the reported accuracy is a linear-probe accuracy.
It runs only when the head had no training signal (``fc`` has no gradient), so in a
composition whose other terms train the head, the head is left alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdtune.methods._base import Method, MethodParams
from kdtune.registry import METHODS

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


@METHODS.register("mds")
class MDS(Method):
    terms = ("mds",)
    name = "mds"
    Params = MDSParams
    teacher_needs = ("penultimate",)
    student_needs = ("logits", "penultimate")
    class_relation = "any"  # embeddings only: any class relation works

    def ce_weight(self) -> float:
        return self.p.lambda_ce

    def loss(self, batch, s_out, t_out, extras):
        m = mds_loss(s_out["penultimate"], t_out["penultimate"])
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

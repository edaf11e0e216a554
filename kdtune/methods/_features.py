"""Helpers shared by the feature-matching methods (fitnet, at, ft, fsp, kr).

Shapes are found by probing a model once (``probe``), never hard-coded; features of different
spatial sizes are matched by ``resize``; teacher and student groups are paired from the last
(``pair_from_last``) or by relative depth (``pair_by_depth``).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdtune.params.walk import CommonParams
from kdtune.training.context import Batch, TrialContext


@torch.no_grad()
def probe(model: nn.Module, ctx: TrialContext, batch: int = 2) -> dict[str, Any]:
    """All taps of ``model`` on a zero batch (eval mode: BatchNorm statistics do not move)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    x = torch.zeros(batch, ctx.data.in_channels, ctx.data.input_size, ctx.data.input_size,
                    device=dev)
    out = model.forward_taps(x)
    model.train(was)
    return out


def conv_groups(teacher: nn.Module, student: nn.Module, ctx: TrialContext,
                what: str) -> tuple[list[Tensor], list[Tensor]]:
    """Both models' group outputs on a probe batch; refuses models without conv feature maps."""
    t, s = probe(teacher, ctx)["groups"], probe(student, ctx)["groups"]
    if any(g.dim() != 4 for g in t + s):
        raise ValueError(f"{what} needs conv feature maps; an MLP group has none")
    return t, s


def channels(t: Tensor) -> int:
    return t.shape[1]


def size(t: Tensor) -> tuple[int, ...]:
    """Spatial size of a feature map (``()`` for a vector feature)."""
    return tuple(t.shape[2:])


def resize(x: Tensor, to: tuple[int, ...]) -> Tensor:
    """Bring a [B, C, H, W] map to spatial size ``to``: average-pool down, bilinear up."""
    if x.dim() != 4 or tuple(x.shape[2:]) == tuple(to):
        return x
    if x.shape[2] >= to[0] and x.shape[3] >= to[1]:
        return F.adaptive_avg_pool2d(x, to)
    return F.interpolate(x, size=to, mode="bilinear", align_corners=False)


def pair_from_last(n_teacher: int, n_student: int) -> list[tuple[int, int]]:
    """(teacher index, student index) pairs, last with last, in forward order."""
    k = min(n_teacher, n_student)
    return [(n_teacher - k + i, n_student - k + i) for i in range(k)]


def pair_by_depth(n_a: int, n_b: int) -> list[tuple[int, int]]:
    """Pairs over the shorter list, each matched to the entry at the same relative depth of the
    longer one (the last with the last)."""
    if n_a <= n_b:
        return [(i, round((i + 1) * n_b / n_a) - 1) for i in range(n_a)]
    return [(round((j + 1) * n_a / n_b) - 1, j) for j in range(n_b)]


def adapter(c_in: int, c_out: int, kernel: int = 1, vector: bool = False) -> nn.Module:
    """A learned map between feature widths: k×k conv + BN for maps, Linear for vectors."""
    if vector:
        return nn.Linear(c_in, c_out)
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out))


def block_forward(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
    """(stem output, output of every block of ``model.blocks()``, logits).

    A ``TappedModel`` is stem → blocks in order → embed → fc, so running the blocks one by one
    computes exactly ``model(x)`` while exposing each block's output (KR needs them).
    """
    h = stem = model.stem(x)
    outs = []
    for b in model.blocks():
        h = b(h)
        outs.append(h)
    return stem, outs, model.fc(model.embed(h))


def sgd(params, lr: float, common: CommonParams, weight_decay: float | None = None):
    """SGD with Nesterov momentum 0.9, as the engine's default optimiser (for pre-stages)."""
    wd = common.weight_decay if weight_decay is None else weight_decay
    return torch.optim.SGD(list(params), lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)


def stage_batches(ctx: TrialContext, epoch: int, labels: bool = True) -> Iterator[Batch]:
    """One epoch of training batches for a pre-stage (seeded like the main stage's epochs)."""
    loader = ctx.loader("train")
    loader.epoch = epoch
    for x, y, idx in loader:
        yield Batch(x, y if labels else None, idx)


def mean_terms(sums: dict[str, Tensor], n: int) -> dict[str, float]:
    return {k: float(v) / max(n, 1) for k, v in sums.items()}


def accumulate(sums: dict[str, Tensor], terms: dict[str, Tensor]) -> None:
    for k, v in terms.items():
        v = v.detach().float()
        sums[k] = sums[k] + v if k in sums else v


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()

"""``prune``: fine-tune, magnitude-prune, fine-tune again (Knowledge Factorization §5.1,
baseline 4: "first fine tune the reference model trained on G on S by replacing the
classification layer then prune the network to get rid of redundant weights").

1. Stage ``finetune`` (``finetune_epochs``): the teacher with a new head for S (as
   ``finetune``), every layer trained, the body at ``lr_scale × lr``; constant learning rate.
2. At the end of the stage: global L1 unstructured pruning (the masks of
   ``torch.nn.utils.prune``'s ``L1Unstructured``, computed layout-independently) of every
   Conv2d/Linear weight (the new head included, biases and BN not) to the fraction ``amount``
   of zeros, taken over all those weights together.
3. Main stage: the same fine-tuning with the masks held: after every update the pruned
   weights are set back to zero (their gradients are zeroed first so momentum does not
   build up behind them).

The masks are applied to the weights in place: the model keeps plain ``weight`` parameters
(no ``weight_orig``/``weight_mask``), so every checkpoint loads into a plain model;
the masks live in the method's state (checkpointed). The engine reports ``params_count`` as the
non-zero parameter count, so the main stage reports the pruned size.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from kdtune.methods._base import Method, MethodParams, Stage
from kdtune.methods.finetune import head_body_groups, new_head_copy
from kdtune.registry import METHODS
from kdtune.training.ops import default_step, make_optimizer
from kdtune.training.ops import run_epoch as engine_epoch


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv2d / Linear layer, by qualified name (the mask keys)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def global_magnitude_masks(model: nn.Module, amount: float) -> dict[str, Tensor]:
    """Global L1-unstructured masks (1 = kept) over all Conv2d/Linear weights, the weights
    zeroed in place where the mask is 0.

    The same masks as ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured)`` (the
    ``round(amount · n)`` smallest |w| over all layers, ties as ``torch.topk`` breaks them),
    computed here because torch's version calls ``.view(-1)``, which fails on channels_last
    weights (every student on CUDA); ``reshape`` works for any memory layout."""
    layers = prunable(model)
    weights = [m.weight.detach() for _, m in layers]
    scores = torch.cat([w.abs().reshape(-1) for w in weights])
    flat = torch.ones_like(scores)
    k = round(amount * scores.numel())
    if k > 0:
        flat[torch.topk(scores, k, largest=False).indices] = 0
    masks, start = {}, 0
    with torch.no_grad():
        for (n, m), w in zip(layers, weights):
            masks[n] = flat[start:start + w.numel()].reshape(w.shape)
            start += w.numel()
            m.weight.mul_(masks[n])
    return masks


class PruneParams(MethodParams):
    amount: float = Field(0.5, ge=0.0, lt=1.0)  # fraction of conv/linear weights set to zero
    finetune_epochs: int = Field(1, ge=1)  # stage 1 epochs before pruning
    lr_scale: float = Field(0.1, gt=0, le=1)  # body LR = lr_scale × lr (both stages)


@METHODS.register("prune")
class Prune(Method):
    terms = ("sparsity",)
    name = "prune"
    Params = PruneParams
    teacher_needs = ()
    class_relation = "any"
    has_train_step = True  # to hold the masks after each update

    def __init__(self, params: PruneParams | None = None) -> None:
        super().__init__(params)
        self.masks: dict[str, Tensor] | None = None
        self._stage_opt: torch.optim.Optimizer | None = None

    def build_student(self, teacher, ctx):
        if teacher is None:
            raise ValueError("prune needs a teacher")
        return new_head_copy(teacher, ctx.data.num_classes)

    def _optimizer(self, ctx) -> torch.optim.Optimizer:
        return make_optimizer(head_body_groups(ctx.student, ctx.common.lr, self.p.lr_scale),
                              ctx.common)

    def stages(self, ctx) -> list[Stage]:
        def run_epoch(ctx, e: int) -> dict[str, float]:
            if e == 0:
                self._stage_opt = self._optimizer(ctx)
            ctx.optimizers = [self._stage_opt]
            metrics = engine_epoch(ctx, self, lambda c, m, b: self.train_step(c, b))
            if e == self.p.finetune_epochs - 1:  # end of the stage: prune now
                self.masks = global_magnitude_masks(ctx.student, self.p.amount)
                self._stage_opt = None
                metrics["sparsity"] = self.sparsity(ctx.student)
            return metrics

        return [Stage("finetune", self.p.finetune_epochs, run_epoch)]

    def optimizers(self, ctx):
        return [self._optimizer(ctx)]  # fresh for the main stage (the stage's state is dropped)

    def train_step(self, ctx, batch) -> dict[str, Tensor]:
        if self.masks is None:
            return default_step(ctx, self, batch)
        layers = dict(prunable(ctx.student))
        self.masks = {n: m.to(layers[n].weight.device) for n, m in self.masks.items()}  # no-op once moved
        # Zero the pruned weights' gradients before the update (default_step does backward and
        # step together, so a hook does it) and the weights after it (weight decay, momentum).
        handles = [layers[n].weight.register_hook(lambda g, m=m: g * m)
                   for n, m in self.masks.items()]
        try:
            terms = default_step(ctx, self, batch)
        finally:
            for h in handles:
                h.remove()
        self.apply_masks(ctx.student)
        return terms

    @torch.no_grad()
    def apply_masks(self, model: nn.Module) -> None:
        layers = dict(prunable(model))
        for n, m in (self.masks or {}).items():
            layers[n].weight.mul_(m.to(layers[n].weight.device))

    def sparsity(self, model: nn.Module) -> float:
        """Fraction of zeros over all Conv2d/Linear weights."""
        ws = [m.weight for _, m in prunable(model)]
        return float(sum(int((w == 0).sum()) for w in ws)) / sum(w.numel() for w in ws)

    def on_epoch_end(self, ctx, epoch: int) -> dict[str, float]:
        return {"sparsity": self.sparsity(ctx.student)}

    def loss(self, batch, s_out, t_out, extras):
        return {"loss": torch.zeros((), device=batch.x.device)}  # CE only (the engine's term)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {n: m.to(torch.bool) for n, m in self.masks.items()}} if self.masks else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("masks"):
            self.masks = {n: m.float() for n, m in state["masks"].items()}

"""Composition: one loss as a weighted sum of several methods' terms (e.g. FT + KD).

``compose: {ft: 1.0, kd: 1.0}`` builds a ``Composite``. Each member keeps its own parameters,
extras, stages and terms, all under its prefix (``kd/soft``, stage ``ft/paraphraser``); the
members' own CE weights are dropped and the engine's single ``ce`` term gets ``ce_weight``.
No code is written per combination. Members with their own ``train_step`` or optimisers
cannot be composed: they own the whole update, so a sum of losses would not describe them.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from kdtune.training.context import Batch
from kdtune.methods._base import Method, Stage, groups_read


class Composite(Method):
    name = "compose"

    def __init__(self, members: list[tuple[str, float, Method]], ce_weight: float = 1.0) -> None:
        super().__init__()
        for n, _, m in members:
            if m.has_train_step or type(m).optimizers is not Method.optimizers:
                raise ValueError(f"compose: {n} has its own update step and cannot be composed")
            if type(m).build_student is not Method.build_student:
                raise ValueError(f"compose: {n} builds its own student and cannot be composed")
        self.members = members
        self._ce = ce_weight
        self.teacher_needs = tuple(sorted({t for _, _, m in members for t in m.teacher_needs}))
        self.terms = tuple(f"{n}/{t}" for n, _, m in members for t in ("loss", "ce", *m.terms))
        self.student_needs = tuple(sorted({t for _, _, m in members for t in m.student_needs}))
        rel = {m.class_relation for _, _, m in members} - {"any"}
        self.class_relation = rel.pop() if len(rel) == 1 else ("any" if not rel else "subset")

    def teacher_groups(self, n_teacher: int, n_student: int) -> tuple[int, ...] | None:
        """The union of the members' (None if a member reading groups declares none)."""
        return groups_read([m for _, _, m in self.members], n_teacher, n_student)

    def ce_weight(self) -> float:
        return self._ce

    def build_extras(self, teacher, student, ctx) -> nn.ModuleDict:
        return nn.ModuleDict({n: m.build_extras(teacher, student, ctx) for n, _, m in self.members})

    def stages(self, ctx) -> list[Stage]:
        return [Stage(f"{n}/{s.name}", s.epochs, s.run_epoch)
                for n, _, m in self.members for s in m.stages(ctx)]

    def loss(self, batch: Batch, s_out: dict[str, Any], t_out: dict[str, Any] | None,
             extras: nn.ModuleDict) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        total = None
        for n, w, m in self.members:
            b = batch if m.uses_labels() else batch._replace(y=None)
            terms = m.loss(b, s_out, t_out, extras[n])
            for k, v in terms.items():
                out[f"{n}/{k}"] = v
            total = w * terms["loss"] if total is None else total + w * terms["loss"]
        out["loss"] = total
        return out

    def on_epoch_end(self, ctx, epoch: int) -> dict[str, float]:
        return {f"{n}/{k}": v for n, _, m in self.members for k, v in m.on_epoch_end(ctx, epoch).items()}

    def before_eval(self, ctx) -> None:
        for _, _, m in self.members:
            m.before_eval(ctx)

    def state_dict(self) -> dict[str, Any]:
        return {n: m.state_dict() for n, _, m in self.members}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, _, m in self.members:
            m.load_state_dict(state.get(n, {}))

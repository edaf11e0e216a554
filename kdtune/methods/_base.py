"""The Method contract: one subclass per distillation method, registered by name.

A method is data plus hooks; the engine (``kdtune/training/engine.py``) owns the loop, the optimiser,
the single cross-entropy term ``ce`` and all reporting. A method says:

- ``name`` and ``Params`` (a pydantic model; its fields are exactly its search-space YAML's
  parameters, with the paper defaults; a contract test keeps the two equal);
- ``teacher_needs`` / ``student_needs``: the taps it reads (``logits``, ``penultimate``,
  ``groups``, ``stem``); an empty ``teacher_needs`` means the teacher is never run per batch;
- ``teacher_groups(n_teacher, n_student)``, for a method reading the teacher's ``groups``: which
  of them its loss reads, for any value of its parameters; the teacher-output cache then holds
  just those (unread entries of ``t_out["groups"]`` are None); None (the default): the live teacher;
- ``ce_weight()``: the weight the engine gives ``ce`` (0 = label-free: ``y`` is never read);
- ``build_student`` / ``build_extras`` / ``stages`` / ``loss``, and optionally ``optimizers``
  and ``train_step`` for methods that need more than a loss.

``loss`` returns a dict of named tensors; ``loss["loss"]`` is the method's total *without*
``ce``; every other entry is reported as its own metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from kdtune.spec.schema import Spec
from kdtune.training.context import Batch, TrialContext


class NoParams(BaseModel):
    """For methods without hyperparameters of their own."""

    model_config = ConfigDict(extra="forbid")


class MethodParams(BaseModel):
    """Base for a method's ``Params``: forbid unknown keys, validate on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def groups_read(methods, n_teacher: int, n_student: int) -> tuple[int, ...] | None:
    """The teacher groups any of ``methods`` (classes or instances) reads: the union of their
    ``teacher_groups``; None if one that reads ``groups`` does not declare which."""
    sets = [m.teacher_groups(n_teacher, n_student) for m in methods if "groups" in m.teacher_needs]
    return None if any(g is None for g in sets) else tuple(sorted({i for g in sets for i in g}))


@dataclass
class Stage:
    """A pre-stage run before the main stage (paraphraser training, FSP stage 1, ...).

    ``run_epoch(ctx, epoch)`` trains one epoch and returns metrics; the engine reports them
    as ``stage/<name>/<key>`` and never counts them as main epochs (ASHA ignores them).
    """

    name: str
    epochs: int
    run_epoch: Callable[[TrialContext, int], dict[str, float]]


class Method:
    """Base class. Subclasses are registered with ``@METHODS.register("name")``."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    teacher_needs: ClassVar[tuple[str, ...]] = ("logits",)
    student_needs: ClassVar[tuple[str, ...]] = ("logits",)
    # Which student/teacher class relation the method supports: "subset" (G→S or same task;
    # the teacher's logits are restricted to the student's classes), "any", or "superset" (S→G).
    class_relation: ClassVar[str] = "subset"
    uses_teacher: ClassVar[bool] = True  # False: no teacher is trained or loaded (scratch)
    # Names (fnmatch patterns) of the terms it reports per main epoch besides the engine's
    # metrics and `loss`/`ce`: what a spec's `metric` may name (checked before a sweep starts;
    # the contract test checks that a trial reports nothing undeclared).
    terms: ClassVar[tuple[str, ...]] = ()
    trains: ClassVar[bool] = True  # False: evaluated as built, no main-stage training

    @classmethod
    def teacher_groups(cls, n_teacher: int, n_student: int) -> tuple[int, ...] | None:
        """The indices of the teacher's ``groups`` the method reads, given both nets' group
        counts; must cover every parameter value (a sweep's trials share one cache). None: not
        declared, so the cache does not hold the teacher's groups and the teacher runs live."""
        return None

    def check(self, spec: Spec) -> None:
        """Spec checks only this method can make (raise SpecError naming the field)."""

    def __init__(self, params: BaseModel | None = None) -> None:
        self.p = params if params is not None else self.Params()

    # ---- what the engine asks
    def ce_weight(self) -> float:
        """Weight of the engine's cross-entropy term; 0 means label-free."""
        return 1.0

    def uses_labels(self) -> bool:
        return self.ce_weight() > 0

    def build_student(self, teacher: nn.Module | None, ctx: TrialContext) -> nn.Module | None:
        """Build the student from the teacher (finetune, prune, anti-distillation); None: spec."""
        return None

    def build_extras(self, teacher: nn.Module | None, student: nn.Module,
                     ctx: TrialContext) -> nn.ModuleDict:
        """Trainable helpers (regressors, translators, adapters), optimised with the student."""
        return nn.ModuleDict()

    def stages(self, ctx: TrialContext) -> list[Stage]:
        return []

    def loss(self, batch: Batch, s_out: dict[str, Any], t_out: dict[str, Any] | None,
             extras: nn.ModuleDict) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define loss() or a train_step")

    # ---- optional hooks (None / no-op defaults)
    def optimizers(self, ctx: TrialContext) -> list[Any] | None:
        """Own optimisers (e.g. KR's two alternating ones); None: one SGD/AdamW on all."""
        return None

    def train_step(self, ctx: TrialContext, batch: Batch) -> dict[str, Tensor] | None:
        """A whole training step (trust region, KR); None: the engine's default step."""
        return None

    has_train_step: ClassVar[bool] = False  # set True by methods overriding train_step

    def on_epoch_end(self, ctx: TrialContext, epoch: int) -> dict[str, float]:
        """Per-epoch bookkeeping (annealing); returns extra metrics to report."""
        return {}

    def before_eval(self, ctx: TrialContext) -> None:
        """Runs before validation (e.g. fit a linear probe for a label-free student)."""

    def state_dict(self) -> dict[str, Any]:
        """Method state that must survive a checkpoint round trip (tensors, numbers)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

"""Fault-injecting methods for the reliability tests: a kdtune *plugin*, not part of kdtune.

Found through the ordinary plugin mechanism (the ``kdtune.methods`` entry point declared by
the ``kdtune_testplugins-0.1.dist-info`` folder beside this file) when ``tests/plugins`` is on
``PYTHONPATH``: the tests start ``kdtune`` with that set, and the Ray workers inherit it. Each
method trains like ``scratch`` (cross-entropy, no teacher) and fails its own way in the second
main epoch, after epoch 1 was reported with a checkpoint:

- ``fault_raise``: raises ``RuntimeError`` (a bug in a method);
- ``fault_nan``: its loss becomes NaN (divergence → ``NonFiniteLoss``), again after a restart;
- ``fault_oom``: allocates 128 MiB blocks until the trial's ``resources.memory_gb`` cap stops
  it (refuses to run without a cap, so it can never exhaust the machine);
- ``fault_kill``: SIGKILLs its own worker process on the first attempt, in the middle of
  reporting epoch 2 (a lost worker); after Tune restarts it from the epoch-1 checkpoint it
  trains normally;
- ``slow``: sleeps ``KDTUNE_TEST_SLOW_S`` seconds (default 1) per epoch (outage tests);
- ``fault_badarg``: raises ``TypeError`` while building its extras, before any step (a spec
  error only a trial can find: the sweep fails fast).
"""

from __future__ import annotations

import os
import signal
import time

import torch

from kdtune.methods._base import Method
from kdtune.registry import METHODS


class _Faulty(Method):
    teacher_needs = ()
    class_relation = "any"
    uses_teacher = False

    def __init__(self, params=None) -> None:
        super().__init__(params)
        self.restored_from: int | None = None

    def loss(self, batch, s_out, t_out, extras):
        return {"loss": torch.zeros((), device=batch.x.device)}

    def load_state_dict(self, state) -> None:
        self.restored_from = int(state.get("epochs_done", 0))

    def state_dict(self):
        return {"epochs_done": self._done}

    _done = 0

    def on_epoch_end(self, ctx, epoch):
        self._done = epoch + 1
        if epoch == 1:  # the second main epoch: epoch 1 is reported and checkpointed
            self.fault(ctx)
        return {}

    def fault(self, ctx) -> None:
        pass


@METHODS.register("fault_raise")
class FaultRaise(_Faulty):
    name = "fault_raise"

    def fault(self, ctx):
        raise RuntimeError("injected fault: fault_raise in epoch 2")


@METHODS.register("fault_nan")
class FaultNaN(_Faulty):
    name = "fault_nan"

    def loss(self, batch, s_out, t_out, extras):
        zero = torch.zeros((), device=batch.x.device)
        return {"loss": zero + float("nan") if self._done >= 1 else zero}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self._done = self.restored_from or 0


@METHODS.register("fault_oom")
class FaultOOM(_Faulty):
    name = "fault_oom"

    def fault(self, ctx):
        gb = ctx.spec.resources.memory_gb
        if not gb:
            raise RuntimeError("fault_oom needs resources.memory_gb (it never runs uncapped)")
        blocks = []
        for _ in range(int(4 * gb * 8) + 1):  # 128 MiB each, up to 4 × the cap
            blocks.append(torch.ones(32 << 20))
        raise RuntimeError(f"resources.memory_gb = {gb} was not enforced")


@METHODS.register("fault_kill")
class FaultKill(_Faulty):
    name = "fault_kill"

    def state_dict(self):
        # Killed while the engine builds epoch 2's checkpoint state, i.e. inside the report of
        # epoch 2 (before save_state/tune.report finish): the restart must come from epoch 1's
        # checkpoint and run epochs 2 and 3 once each.
        if self.restored_from is None and self._done == 2:  # the first attempt only
            os.kill(os.getpid(), signal.SIGKILL)
        return super().state_dict()


@METHODS.register("slow")
class Slow(_Faulty):
    name = "slow"

    def on_epoch_end(self, ctx, epoch):
        time.sleep(float(os.environ.get("KDTUNE_TEST_SLOW_S", "1")))
        return {}


@METHODS.register("fault_badarg")
class FaultBadArg(_Faulty):
    """A deterministic error of the spec that the checks cannot see: building its extras raises
    TypeError before the first step, in every trial (never retried: the sweep stops, exit 2)."""

    name = "fault_badarg"

    def build_extras(self, teacher, student, ctx):
        raise TypeError("Linear.__init__() got an unexpected keyword argument 'biass'")

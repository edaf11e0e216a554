"""Schedulers that survive a killed driver: ASHA (or FIFO) that saves Tune's state when a trial
starts or ends, and rebuilds ASHA's rungs from the recorded results on ``--resume``.

Tune alone loses both: its experiment state is saved on a timer, so trials that ended after
the last save run again on resume (and an ASHA stop is forgotten); and the scheduler is never
saved, so a resumed ASHA starts with empty rungs and lets every new trial through.
"""

from __future__ import annotations

import math

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

from kdtune.spec.schema import Spec
from kdtune.tune._ray_compat import asha_record, force_state_save, result_rows


class _SavesState:
    """Mixin: a state save at every trial start and end (not at every result: the searcher's
    pickle grows with the study)."""

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        force_state_save(tune_controller)

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        force_state_save(tune_controller)

    def on_trial_error(self, tune_controller, trial) -> None:
        super().on_trial_error(tune_controller, trial)
        force_state_save(tune_controller)

    def on_trial_remove(self, tune_controller, trial) -> None:
        super().on_trial_remove(tune_controller, trial)
        force_state_save(tune_controller)


class ResumableFIFO(_SavesState, FIFOScheduler):
    """Every trial runs all its epochs."""


class ResumableASHA(_SavesState, AsyncHyperBandScheduler):
    """ASHA on main epochs whose rungs are rebuilt from each restored trial's results."""

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        # a restored trial (resume): its past results go back into the rungs, in order
        for row in result_rows(trial) if trial.last_result else ():
            t, v = row.get(self._time_attr), row.get(self._metric)
            if isinstance(t, (int, float)) and isinstance(v, (int, float)) and math.isfinite(v):
                asha_record(self, trial, t, self._metric_op * v)


def grace_period(spec: Spec) -> int:
    """ASHA's first rung: the spec's, or derived so that ASHA has two rungs below ``epochs``
    (ceil(epochs / rf²)): a 1-epoch rung judges configurations before most have separated."""
    s = spec.scheduler
    g = s.grace_period if s.grace_period is not None else math.ceil(spec.epochs / s.reduction_factor ** 2)
    return max(1, min(g, spec.epochs))


def make_scheduler(spec: Spec):
    if spec.scheduler.type == "none":
        return ResumableFIFO()
    # time_attr "epoch": only main epochs carry it, so stage reports never advance ASHA
    return ResumableASHA(time_attr="epoch", max_t=spec.epochs,
                         grace_period=grace_period(spec),
                         reduction_factor=spec.scheduler.reduction_factor)

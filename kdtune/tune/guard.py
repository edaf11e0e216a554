"""Stopping a sweep that cannot succeed: the spec's own error, or trials that keep failing.

- A trial whose spec fails deterministically (``kdtune.tune.trainable.spec_fault``) ends with a
  ``FATAL_KEY`` result instead of an exception, so Tune does not retry it; the guard then stops
  the whole sweep, and ``run_sweep`` raises the error as a ``SpecError`` (CLI exit 2).
- ``max_consecutive_failures`` trials failing in a row (crashes, NaN, OOM after their retries)
  stop the sweep too; ``run_sweep`` raises ``SweepFailing`` naming the commonest error.
"""

from __future__ import annotations

from collections import Counter

from ray.tune import Callback, Stopper

from kdtune.tune.errors import error_reason
from kdtune.tune.trainable import FATAL_KEY


class SweepFailing(RuntimeError):
    """Trials kept failing: the sweep was stopped (CLI exit 1)."""


class Guard(Callback, Stopper):
    """A Tune callback that watches trial endings and a stopper that ends the sweep."""

    def __init__(self, max_consecutive_failures: int) -> None:
        self.limit = max_consecutive_failures
        self.fatal: tuple[str, str] | None = None   # (trial, one-line error)
        self.streak: list[str] = []                 # reasons of the current run of failures

    # ---- Callback
    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if FATAL_KEY in result and self.fatal is None:
            self.fatal = (str(trial), str(result[FATAL_KEY]))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if FATAL_KEY not in (trial.last_result or {}):
            self.streak = []

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.streak.append(error_reason(trial)[:300])

    # ---- Stopper
    def __call__(self, trial_id: str, result: dict) -> bool:
        return False  # per trial: ASHA decides

    def stop_all(self) -> bool:
        return self.fatal is not None or len(self.streak) >= self.limit

    def commonest(self) -> str:
        return Counter(self.streak).most_common(1)[0][0] if self.streak else "?"

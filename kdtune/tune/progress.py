"""What a running sweep prints: a line per finished trial and a status line now and then."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback


class Progress(Callback):
    """Compact progress: one line per finished trial, a status line every ``every`` seconds."""

    def __init__(self, metric: str, mode: str, max_t: int, every: float = 30.0) -> None:
        self.metric, self.mode, self.max_t, self.every = metric, mode, max_t, every
        self._last = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        r = trial.last_result or {}
        e = r.get("epoch", 0)
        how = "done" if e >= self.max_t else f"stopped at epoch {e} (ASHA)"
        self._line(trial, f"{self.metric} {r.get(self.metric, float('nan')):.4f} · {how}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._line(trial, f"ERROR, see {trial.path}/error.txt")

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.monotonic() - self._last < self.every:
            return
        self._last = time.monotonic()
        states: dict[str, int] = {}
        for t in trials:
            states[t.status.lower()] = states.get(t.status.lower(), 0) + 1
        scored = [t for t in trials if isinstance((t.last_result or {}).get(self.metric), (int, float))]
        best = ""
        if scored:
            pick = max if self.mode == "max" else min
            b = pick(scored, key=lambda t: t.last_result[self.metric])
            best = f" · best so far {b} {self.metric} {b.last_result[self.metric]:.4f}"
        print("  " + ", ".join(f"{n} {k}" for k, n in sorted(states.items())) + best, flush=True)

    def _line(self, trial, what: str) -> None:
        params = " ".join(f"{k}={_short(v)}" for k, v in (trial.config or {}).items())
        print(f"  {trial}  {what} · {params}", flush=True)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)

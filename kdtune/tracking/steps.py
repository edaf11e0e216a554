"""The metric points runs found again already hold, so that nothing is logged twice.

A restarted driver finds a trial's run again (``SweepWriter._start_child``). When the killed
driver's last Tune snapshot lagged the trial's last report, the trial restarts from an earlier
checkpoint and reports epochs its run already has; the writer drops those points. A point
counts as held only once MLflow took it, so a call that failed and is retried sends it again.
"""

from __future__ import annotations

from typing import Any, Iterable


class HeldSteps:
    """Per run key: metric name → the steps its run holds (only for runs found again)."""

    def __init__(self) -> None:
        self._held: dict[str, dict[str, set[int]]] = {}

    def load(self, key: str, client: Any, run: Any) -> None:
        """What run ``run`` (an MLflow ``Run``, found again) holds, read from its history."""
        rid = run.info.run_id
        self._held[key] = {k: {m.step for m in client.get_metric_history(rid, k)} for k in run.data.metrics}

    def new(self, key: str, points: Iterable[tuple]) -> list[tuple]:
        """``points`` ((name, value, step, ...) tuples) less those the run holds, and less
        repeats within ``points`` (the first wins)."""
        held = self._held.get(key)
        if held is None:
            return list(points)
        out, seen = [], set()
        for p in points:
            if p[2] not in held.get(p[0], ()) and (p[0], p[2]) not in seen:
                seen.add((p[0], p[2]))
                out.append(p)
        return out

    def took(self, key: str, points: Iterable[tuple]) -> None:
        """MLflow took ``points``: the run holds them now."""
        held = self._held.get(key)
        if held is not None:
            for p in points:
                held.setdefault(p[0], set()).add(p[2])

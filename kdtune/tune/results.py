"""The one best-trial ranking and the one ``best.yaml`` writer, for Tune's results and MLflow's.

Best trial, everywhere (the sweep's table, ``kdtune best``, ``best.yaml``, ``promote``): the
highest (``mode: max``) ``metric`` at a trial's LAST reported epoch, not its best epoch (the
same as ``ResultGrid.get_best_result(scope="last")``); a trial ASHA stopped early competes
with the value it was stopped at. Ties go to the earlier trial (the lower trial number).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, TypeVar

from kdtune.tune.naming import number_key

T = TypeVar("T")


def finite(v: Any) -> float | None:
    """A metric value as float, or None when it is missing or not finite."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def ranked(items: Iterable[T], value: Callable[[T], Any], name: Callable[[T], str | None],
           mode: str) -> list[T]:
    """Items with a finite value, best first (ties: the lower trial number)."""
    sign = -1.0 if mode == "max" else 1.0
    scored = [(finite(value(i)), i) for i in items]
    scored = [(v, i) for v, i in scored if v is not None]
    scored.sort(key=lambda vi: (sign * vi[0], number_key(name(vi[1]))))
    return [i for _, i in scored]


def best_yaml_text(*, sweep: str, trial: str, metric: str, value: float, epoch: Any,
                   epochs: int | None, source: str, target: str, spec_yaml: str) -> str:
    """``best.yaml``: a header saying which trial and how to reproduce it, then its spec."""
    at = f"{epoch}/{epochs}" if epochs else f"{epoch}"
    return (f"# best trial of sweep {sweep}: {trial}, {metric} {value:.4f} at epoch {at} "
            f"(its last reported epoch)\n"
            f"# {source}\n"
            f"# reproduce: kdtune train {target}\n") + spec_yaml


def non_dominated(items: Iterable[T], values: Callable[[T], list[Any]], modes: list[str]) -> list[T]:
    """The Pareto front: items no other item dominates (at least as good in every objective,
    better in one). Items with a missing or non-finite objective are not on it."""
    signs = [1.0 if m == "max" else -1.0 for m in modes]
    scored = []
    for i in items:
        vs = [finite(v) for v in values(i)]
        if all(v is not None for v in vs):
            scored.append(([s * v for s, v in zip(signs, vs)], i))

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [i for v, i in scored if not any(dominates(w, v) for w, _ in scored if w is not v)]

"""Trial names, numbers and seeds: ``kd_007`` is trial 7 of a sweep whose method is ``kd``.

One parser for every caller (the trainable's seed, the best-trial ranking, MLflow queries):
a name without a number has none (``None``), and sorts after every numbered trial.
"""

from __future__ import annotations

from kdtune.spec.schema import Spec

NO_NUMBER = 1 << 30  # sort key of a name without a number: after every real trial


def make_name(base: str, number: int | None, fallback: str) -> str:
    """``kd_003`` from the trial's method and number; ``kd_<fallback>`` without a number."""
    return f"{base}_{number:03d}" if number is not None else f"{base}_{fallback}"


def trial_number(name: str | None) -> int | None:
    """The sequential number a kdtune trial name ends with (``kd_007`` → 7), else None."""
    tail = (name or "").rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def number_key(name: str | None) -> int:
    """Sort key by trial number (unnumbered names last)."""
    n = trial_number(name)
    return NO_NUMBER if n is None else n


def trial_seed(spec: Spec, name: str) -> int:
    """A trial's training seed: ``search.seed`` + its number (stable across retries/resume)."""
    return spec.search.seed + (trial_number(name) or 0)


def trainable_name(spec: Spec) -> str:
    """The method's name, or the spec's name when the method is a searched choice/composition."""
    return spec.methods[0] if len(spec.methods) == 1 else spec.name

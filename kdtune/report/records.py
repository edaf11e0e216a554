"""Per-trial records of a sweep, their ranking, and an in-memory Optuna study built from them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from kdtune.tune import results

STATUSES = ("completed", "stopped", "error", "running")

# A float parameter spanning more than this factor (all values > 0) was most likely sampled
# log-uniformly (learning rates, weight decay); its axis and distribution are logarithmic.
LOG_SPAN = 100.0


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a sweep: its sampled config, last value and per-epoch metric curve."""

    name: str
    number: int
    value: float | None
    epochs: int
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)
    run_id: str | None = None

    @property
    def has_value(self) -> bool:
        """Whether the trial reported a finite metric value."""
        return self.value is not None and math.isfinite(self.value)


def check_mode(mode: str) -> str:
    """``mode`` itself when it is "max" or "min"; a ``ValueError`` otherwise."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    return mode


def ranked(records: Iterable[TrialRecord], mode: str) -> list[TrialRecord]:
    """Records best first: those with a value by ``kdtune.tune.results.ranked`` (the sweep's
    one ranking: ties go to the lower trial number), then the rest by trial number."""
    check_mode(mode)
    # sorted by number first: the shared ranking's sort is stable, so names without a number
    # still tie-break by the record's own number
    by_number = sorted(records, key=lambda r: r.number)
    valued = results.ranked(by_number, lambda r: r.value, lambda r: r.name, mode)
    kept = {id(r) for r in valued}
    return valued + [r for r in by_number if id(r) not in kept]


def best_record(records: Iterable[TrialRecord], mode: str) -> TrialRecord | None:
    """The record with the best value, or None when no record has one."""
    first = ranked(records, mode)[:1]
    return first[0] if first and first[0].has_value else None


def is_log_scale(values: Sequence[float]) -> bool:
    """Whether float values look log-sampled: all positive and spanning more than ``LOG_SPAN``×."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > LOG_SPAN


def _plain(value: Any) -> Any:
    # Optuna accepts only None/bool/int/float/str as parameter values; anything else (a list
    # from a choice of layer sizes, a numpy scalar) is kept readable as its string form.
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy scalar
        return _plain(value.item())
    return str(value)


def plain_params(record: TrialRecord) -> dict[str, Any]:
    """The record's params with every value one Optuna can store (see ``_plain``)."""
    return {k: _plain(v) for k, v in record.params.items()}


def infer_distributions(records: Iterable[TrialRecord]) -> dict[str, BaseDistribution]:
    """One distribution per parameter name, covering every value observed across the records.

    Floats (or a mix of floats and ints) give a ``FloatDistribution`` over min..max, log when
    ``is_log_scale``; ints give an ``IntDistribution``; anything else (strings, bools) a
    ``CategoricalDistribution`` of the observed values in first-seen order.
    """
    observed: dict[str, list[Any]] = {}
    for r in records:
        for k, v in plain_params(r).items():
            observed.setdefault(k, []).append(v)
    dists: dict[str, BaseDistribution] = {}
    for name, values in observed.items():
        # bool is an int subclass: test it first so True/False stay categorical
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        finite = numeric and all(math.isfinite(v) for v in values)
        if finite and all(isinstance(v, int) for v in values):
            dists[name] = IntDistribution(min(values), max(values))
        elif finite:
            floats = [float(v) for v in values]
            dists[name] = FloatDistribution(min(floats), max(floats), log=is_log_scale(floats))
        else:
            choices = list(dict.fromkeys(values))  # unique, first-seen order
            dists[name] = CategoricalDistribution(choices)
    return dists


def _state(record: TrialRecord) -> TrialState:
    # A trial stopped early by the scheduler still has a value at the epoch it reached, so it
    # counts as COMPLETE (it is ranked by that value); without one it is PRUNED.
    if record.has_value:
        return TrialState.COMPLETE
    if record.status == "running":
        return TrialState.RUNNING
    if record.status == "stopped":
        return TrialState.PRUNED
    return TrialState.FAIL


def study_from_records(records: Iterable[TrialRecord], metric: str, mode: str) -> optuna.Study:
    """An in-memory Optuna study holding one trial per record, in trial-number order.

    Records with a finite value become COMPLETE trials; the others PRUNED (stopped), RUNNING
    (running) or FAIL. Each trial's intermediate values are its curve; its name, status,
    epochs and run id are user attributes.
    """
    check_mode(mode)
    records = sorted(records, key=lambda r: r.number)
    dists = infer_distributions(records)
    direction = "maximize" if mode == "max" else "minimize"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        study = optuna.create_study(direction=direction, study_name=f"kdtune-{metric}")
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.set_user_attr("metric", metric)
    study.set_user_attr("mode", mode)
    for r in records:
        params = plain_params(r)
        study.add_trial(
            optuna.trial.create_trial(
                state=_state(r),
                value=float(r.value) if r.has_value else None,
                params=params,
                distributions={k: dists[k] for k in params},
                intermediate_values={
                    int(e): float(v) for e, v in r.curve if math.isfinite(float(v))
                },
                user_attrs={
                    "name": r.name,
                    "number": r.number,
                    "status": r.status,
                    "epochs": r.epochs,
                    "run_id": r.run_id,
                },
            )
        )
    return study

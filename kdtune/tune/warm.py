"""Warm starts: earlier sweeps' finished trials as completed observations of a new study.

``search.warm_start: [SWEEP, …]`` names sweeps in the tracking store. Their trials that ran
their full epochs become ``optuna.trial.create_trial`` records in the new study before any new
trial is asked for (``OptunaSearch(evaluated_rewards=…)`` cannot do this: it refuses a
define-by-run space). A parameter that no longer exists, or falls outside today's range, is
dropped, and one line says how many; a trial left with a value for no searched parameter is
not used. Only sweeps that optimised the same metric in the same direction are used.
"""

from __future__ import annotations

from typing import Any, Callable

import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from optuna.trial import FrozenTrial

from kdtune.params.space import ParamSpace
from kdtune.params.walk import SweepSpace
from kdtune.spec.paths import tracking_uri
from kdtune.spec.schema import Spec, SpecError
from kdtune.tracking.query import finished_trials

Log = Callable[[str], None]


def distribution(p: ParamSpace) -> BaseDistribution:
    """The Optuna distribution ``suggest`` draws a parameter from (kdtune/tune/search.py)."""
    if p.type == "categorical":
        return CategoricalDistribution(p.choices)
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)


def observations(spec: Spec, log: Log = print) -> list[FrozenTrial]:
    """The earlier sweeps' finished trials, fitted to today's space (see the module docstring)."""
    if not spec.search.warm_start:
        return []
    space = {r.name: r.space for r in SweepSpace(spec).rows() if not r.fixed and r.space}
    out: list[FrozenTrial] = []
    dropped: dict[str, int] = {}
    for sweep in spec.search.warm_start:
        try:
            found = finished_trials(tracking_uri(spec), sweep)
        except SpecError:
            raise SpecError(f"search.warm_start: no sweep {sweep!r} in the tracking store "
                            "(see `kdtune sweep list`)") from None
        if (found["metric"], found["mode"]) != (spec.objective, spec.direction) or spec.multi_objective:
            raise SpecError(f"search.warm_start: sweep {sweep!r} optimised {found['mode']} "
                            f"{found['metric']}, this one {spec.direction} {spec.objective}"
                            + (" and more objectives" if spec.multi_objective else ""))
        for t in found["trials"]:
            params, dists = {}, {}
            for k, v in t["params"].items():
                p = space.get(k)
                if p is None or not _fits(p, v):
                    dropped[k] = dropped.get(k, 0) + 1
                    continue
                params[k], dists[k] = p.cast(v), distribution(p)
            if params:
                out.append(optuna.trial.create_trial(params=params, distributions=dists,
                                                     value=t["value"],
                                                     user_attrs={"warm_start": f"{sweep}/{t['name']}"}))
    if dropped:
        shown = ", ".join(f"{k} ({n})" for k, n in sorted(dropped.items()))
        log(f"warm start: dropped values no longer in the search space: {shown}")
    log(f"warm start: {len(out)} finished trial(s) of {', '.join(spec.search.warm_start)}")
    return out


def _fits(p: ParamSpace, v: Any) -> bool:
    if p.type == "categorical":
        return v in p.choices
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return p.low <= v <= p.high and (p.type != "int" or float(v).is_integer())

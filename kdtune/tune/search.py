"""Optuna on Ray Tune: the define-by-run function, the seeded sampler, and the Tune searcher.

The space itself is walked by ``kdtune.params.walk.SweepSpace`` (the one walk); here each
searched value becomes an Optuna ``suggest_*`` call, and the paper defaults are the points
evaluated first.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable

import optuna
from ray.tune.search.optuna import OptunaSearch

from kdtune.params.space import ParamSpace
from kdtune.params.walk import SweepSpace
from kdtune.spec.schema import Spec, SpecError
from kdtune.tracking.summary import optuna_storage
from kdtune.tune._ray_compat import optuna_study
from kdtune.tune.warm import observations

logger = logging.getLogger(__name__)


class _DefineByRun:
    """A picklable define-by-run callable (Tune saves the searcher with the experiment)."""

    def __init__(self, space: SweepSpace) -> None:
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        return self.space.walk(lambda name, p: suggest(trial, name, p))


def define_by_run(space: SweepSpace) -> _DefineByRun:
    """``fn(trial)`` for ``OptunaSearch(space=fn)``: suggests, returns the whole config."""
    return _DefineByRun(space)


def suggest(trial: Any, name: str, p: ParamSpace) -> Any:
    """One Optuna suggestion for a parameter's range."""
    if p.type == "categorical":
        return trial.suggest_categorical(name, p.choices)
    if p.type == "int":
        return trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(name, float(p.low), float(p.high), step=p.step, log=p.log)


# --------------------------------------------------------------------------- samplers
def make_sampler(spec: Spec):
    """The seeded Optuna sampler named by ``search.algorithm``."""
    s = spec.search
    # TPE's random start-up: a third of the budget, at most Optuna's default of 10.
    startup = max(2, min(10, s.num_samples // 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.algorithm == "random":
            return optuna.samplers.RandomSampler(seed=s.seed)
        # group=True: multivariate TPE over conditional spaces (a method choice, `when`)
        tpe = dict(seed=s.seed, multivariate=True, group=True, constant_liar=True,
                   n_startup_trials=startup)
        if s.algorithm == "tpe":
            return optuna.samplers.TPESampler(**tpe)
        try:
            import cmaes  # noqa: F401  (optuna imports it lazily, failing mid-sweep)
        except ImportError:
            raise SpecError("search.algorithm: cmaes needs the `cmaes` package "
                            "(pip install cmaes), or use tpe/random") from None
        # CMA-ES models continuous and integer ranges only; categorical and conditional
        # parameters fall back to an independent (univariate) TPE.
        return optuna.samplers.CmaEsSampler(
            seed=s.seed, n_startup_trials=startup, warn_independent_sampling=False,
            independent_sampler=optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup))


def make_searcher(spec: Spec, space: SweepSpace | None = None, log: Callable[[str], None] = print):
    """``OptunaSearch`` over the spec's space, paper defaults first, seeded sampler; earlier
    sweeps' finished trials first of all (``search.warm_start``)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = space or SweepSpace(spec)
    searcher = MainEpochOptunaSearch(
        space=define_by_run(space),
        metric=[m for m, _ in spec.objectives] if spec.multi_objective else spec.objective,
        mode=[d for _, d in spec.objectives] if spec.multi_objective else spec.direction,
        sampler=make_sampler(spec), points_to_evaluate=space.default_points() or None,
        # one RDB study per sweep, named after it, for optuna-dashboard (None: in memory)
        storage=optuna_storage(spec), study_name=spec.name,
        max_epochs=spec.epochs)
    warm = observations(spec, log)
    study = optuna_study(searcher)
    if warm and not any("warm_start" in t.user_attrs for t in study.trials):
        study.add_trials(warm)  # (a persisted study being resumed has them already)
    return searcher


class MainEpochOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that hears main epochs only, stepped by ``epoch``.

    Stage results (``stage/...`` keys, no metric, no ``epoch``) would raise a KeyError in
    ``OptunaSearch.on_trial_result``; and a main epoch's step is its epoch, not Tune's
    ``training_iteration`` (which counts stage reports too).
    """

    def __init__(self, *args: Any, max_epochs: int | None = None, **kwargs: Any) -> None:
        self.max_epochs = max_epochs
        super().__init__(*args, **kwargs)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if all(m in result for m in metrics) and "epoch" in result:
            try:
                super().on_trial_result(trial_id, {**result, "training_iteration": result["epoch"]})
            except Exception as e:  # noqa: BLE001 - a resumed trial the persisted study has closed
                # trials Optuna refused (kept here only: a restored searcher may predate it)
                refused = self.__dict__.setdefault("_refused", set())
                if trial_id not in refused:  # once per trial, not once per epoch
                    refused.add(trial_id)
                    logger.warning("Optuna did not take the results of trial %s: %s", trial_id, e)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """A trial ASHA stopped before ``max_epochs`` is told to Optuna as PRUNED (with the
        intermediate values it reported), not COMPLETE with its early value: otherwise TPE
        ranks a 1-epoch score against full-length ones and learns that slow starters are bad."""
        epoch = (result or {}).get("epoch")
        if (not error and self.max_epochs and isinstance(epoch, (int, float))
                and epoch < self.max_epochs):
            result = None  # OptunaSearch tells Optuna PRUNED for a result without the metric
            # Optuna has no PRUNED for several objectives: an unfinished trial is no Pareto point
            error = isinstance(self.metric, list)
        super().on_trial_complete(trial_id, result=result, error=error)

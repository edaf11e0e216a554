"""Search spaces → an Optuna define-by-run function, the sampler, and the Tune searcher.

One walk over the spaces (``SweepSpace.walk``) serves three callers, so they cannot disagree:
Optuna's ``suggest_*`` (the sweep), the paper defaults (``points_to_evaluate``: evaluated
first) and ``plan_sweep``'s table. The walk follows ``kdtune.params.resolve_params``:

- ``_common.yaml`` and each named method's YAML; a parameter fixed in ``spec.params`` is a
  constant (returned from the define-by-run function, never suggested) and still steers ``when``;
- ``method: [kd, logit_l2]`` → a categorical ``method`` first, then only the chosen method's
  parameters, prefixed (``kd.temperature``), so every trial has its method's parameters only;
- ``compose:`` → every member's prefixed parameters plus ``ce_weight``;
- ``epochs`` is never searched: it is ASHA's ``max_t``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

from ray.tune.search.optuna import OptunaSearch

from kdtune.config import ParamSpace, SearchSpace, Spec, SpecError, masked
from kdtune.params import COMMON, spaces_for

# Weight of the composition's single cross-entropy term (engine term `ce`). 1.0 is Hinton et
# al.'s (2015) plain sum of hard and soft losses; 0 turns the composition label-free; 2 lets
# labels dominate twice over. Unit: a loss weight, linear.
COMPOSE_SPACE = SearchSpace(params={
    "ce_weight": ParamSpace(type="float", low=0.0, high=2.0, default=1.0),
})
METHOD_KEY = "method"


@dataclass(frozen=True)
class Row:
    """One parameter as the walk met it (for plans and tests)."""

    name: str                 # flat config key, e.g. `lr`, `kd.temperature`, `method`
    space: ParamSpace | None  # None for a fixed-only knob (no range in any YAML)
    fixed: bool               # fixed by spec.params: a constant, not searched
    method: str | None        # the method it belongs to (None: common / composition)


Pick = Callable[[str, ParamSpace], Any]


class SweepSpace:
    """Everything a spec searches, in a fixed order, with its conditions."""

    def __init__(self, spec: Spec) -> None:
        self.spec = masked(spec)  # pickled with the searcher (tuner.pkl): no secret on disk
        self.common, self.spaces = spaces_for(spec)
        self.fixed = dict(spec.params)
        self.choice = list(spec.methods) if spec.prefixed and not spec.compose else None
        for name, space in [("_common", self.common), *self.spaces.items()]:
            if "epochs" in space.params:
                raise SpecError(f"search space {name}: `epochs` is never searched (it is ASHA's "
                                "max_t); set the spec's `epochs` instead")

    def _key(self, method: str, local: str) -> str:
        return f"{method}.{local}" if self.spec.prefixed else local

    def walk(self, pick: Pick, on_row: Callable[[Row], None] | None = None) -> dict[str, Any]:
        """The flat config of one trial; ``pick(name, space)`` supplies each searched value."""
        rows = on_row or (lambda r: None)
        out: dict[str, Any] = {}

        def take(name: str, p: ParamSpace, method: str | None) -> Any:
            fixed = name in self.fixed
            rows(Row(name, p, fixed, method))
            out[name] = self.fixed[name] if fixed else p.cast(pick(name, p))
            return out[name]

        if self.choice:
            chosen = take(METHOD_KEY, ParamSpace(type="categorical", choices=self.choice,
                                                 default=self.choice[0]), None)
            if chosen not in self.choice:
                raise SpecError(f"params.method: {chosen!r} is not one of {self.choice}")
            active = [chosen]
        else:
            active = list(self.spec.methods)
        seen: dict[str, Any] = {METHOD_KEY: active[0]}
        for k, p in self.common.params.items():
            if p.active(seen):
                seen[k] = take(k, p, None)
        for k in COMMON:  # fixed knobs without a range (e.g. `schedule`)
            if k in self.fixed and k not in out:
                rows(Row(k, None, True, None))
                out[k] = self.fixed[k]
        if self.spec.compose:
            for k, p in COMPOSE_SPACE.params.items():
                take(k, p, None)
        for m in active:
            own: dict[str, Any] = {METHOD_KEY: m}
            for k, p in self.spaces[m].params.items():
                if p.active(own):
                    own[k] = take(self._key(m, k), p, m)
            for k, v in self.fixed.items():  # a method's fixed-only knobs (not in its YAML)
                if k in out or k in COMMON or k in (METHOD_KEY, *COMPOSE_SPACE.params):
                    continue
                if not self.spec.prefixed or k.startswith(f"{m}."):
                    rows(Row(k, None, True, m))
                    out[k] = v
        return out

    # ---- the three callers
    def define_by_run(self) -> Callable[[Any], dict[str, Any]]:
        """``fn(trial)`` for ``OptunaSearch(space=fn)``: suggests, returns the whole config."""
        return _DefineByRun(self)

    def defaults(self, method: str | None = None) -> dict[str, Any]:
        """The paper-default config (the one ``kdtune train`` runs), for one method of a choice."""
        def pick(name: str, p: ParamSpace) -> Any:
            return method if name == METHOD_KEY and method is not None else p.default
        return self.walk(pick)

    def searched(self, config: dict[str, Any]) -> dict[str, Any]:
        """Only the searched values of a config (what Optuna is told to evaluate first)."""
        names: list[str] = []
        self.walk(lambda n, p: config[n], lambda r: names.append(r.name) if not r.fixed else None)
        return {n: config[n] for n in names}

    def default_points(self) -> list[dict[str, Any]]:
        """Paper defaults first: one point per method of a choice, else one (fixed ones omitted)."""
        methods = self.choice if self.choice and METHOD_KEY not in self.fixed else [None]
        points = [self.searched(self.defaults(m)) for m in methods]
        points = [p for p in points if p]  # nothing searched: nothing to enqueue
        return points[: self.spec.search.num_samples]

    def rows(self) -> list[Row]:
        """Every parameter any trial can have (each method's branch of a choice), in order."""
        found: dict[str, Row] = {}
        for m in self.choice or [None]:
            def keep(r: Row) -> None:
                found.setdefault(r.name, r)
            self.walk(lambda n, p, m=m: m if n == METHOD_KEY and m else p.default, keep)
        return list(found.values())


class _DefineByRun:
    """A picklable define-by-run callable (Tune saves the searcher with the experiment)."""

    def __init__(self, space: SweepSpace) -> None:
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        return self.space.walk(lambda name, p: suggest(trial, name, p))


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
    import optuna

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


def make_searcher(spec: Spec, space: SweepSpace | None = None):
    """``OptunaSearch`` over the spec's space, paper defaults first, seeded sampler."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = space or SweepSpace(spec)
    return MainEpochOptunaSearch(
        space=space.define_by_run(), metric=spec.metric, mode=spec.mode,
        sampler=make_sampler(spec), points_to_evaluate=space.default_points() or None)


class MainEpochOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that hears main epochs only, stepped by ``epoch``.

    Stage results (``stage/...`` keys, no metric, no ``epoch``) would raise a KeyError in
    ``OptunaSearch.on_trial_result``; and a main epoch's step is its epoch, not Tune's
    ``training_iteration`` (which counts stage reports too).
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result and "epoch" in result:
            super().on_trial_result(trial_id, {**result, "training_iteration": result["epoch"]})

"""Hyperparameters: the one walk over a spec's search spaces and the one method-prefix rule.

A *flat config* maps names to values: common names (``lr``, ``batch_size`` …, see
``search_spaces/_common.yaml``), method names (``temperature``), and, when the spec names
several methods (a searched choice or a composition), prefixed names (``kd.temperature``)
plus ``method`` (the choice) or ``ce_weight`` (the composition's one CE term).

``SweepSpace.walk`` is the only code that visits parameters; every caller goes through it,
so they cannot disagree: Optuna's ``suggest_*`` (``kdtune/tune/search.py``), the paper
defaults (``resolve_params``, what ``kdtune train`` runs, and the points a sweep evaluates
first), the ``--dry-run`` table and the checks. Rules of the walk:

- ``_common.yaml`` and each named method's YAML; a parameter fixed in ``spec.params`` is a
  constant (never suggested) and still steers ``when``;
- ``method: [kd, logit_l2]`` → a categorical ``method`` first, then only the chosen method's
  parameters, prefixed (``kd.temperature``), so every trial has its method's parameters only;
- ``compose:`` → every member's prefixed parameters plus ``ce_weight``;
- ``epochs`` is never searched: it is ASHA's ``max_t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdtune.params.space import ParamSpace, SearchSpace, common_space, method_space
from kdtune.spec.load import format_error, masked
from kdtune.spec.schema import Spec, SpecError


class CommonParams(BaseModel):
    """Training hyperparameters every method shares (search_spaces/_common.yaml)."""

    model_config = ConfigDict(extra="forbid")
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    schedule: Literal["cosine", "step", "none"] = "cosine"


COMMON = tuple(CommonParams.model_fields)
COMPOSE_KEYS = ("ce_weight",)
METHOD_KEY = "method"  # the flat name of a searched method choice


# --------------------------------------------------------------------------- the prefix rule
def param_key(spec: Spec, method: str, local: str) -> str:
    """A method parameter's flat name: ``kd.temperature`` when the spec names several methods."""
    return f"{method}.{local}" if spec.prefixed else local


def split_key(spec: Spec, key: str) -> tuple[str | None, str]:
    """(method, local name) of a prefixed flat name; (None, key) when the spec is unprefixed."""
    if not spec.prefixed:
        return None, key
    m, dot, rest = key.partition(".")
    if not dot or m not in spec.methods:
        raise SpecError(f"params.{key}: expected a method prefix, one of "
                        f"{', '.join(spec.methods)} (e.g. {spec.methods[0]}.{key})")
    return m, rest


def display_params(spec: Spec, config: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters for a table: a method choice shows in the trial's name, so drop
    ``method`` and the prefixes there; a composition keeps its prefixes (they disambiguate)."""
    if not spec.prefixed or spec.compose:
        return dict(config)
    return {k.split(".", 1)[-1]: v for k, v in config.items() if k != METHOD_KEY}


def unprefixed(spec: Spec, config: dict[str, Any], method: str) -> dict[str, Any]:
    """A chosen method's config as a one-method spec writes it (``kdtune train`` of a trial)."""
    return {(split_key(spec, k)[1] if k.startswith(f"{method}.") else k): v
            for k, v in config.items() if k != METHOD_KEY}


def spaces_for(spec: Spec) -> tuple[SearchSpace, dict[str, SearchSpace]]:
    """The common space and each named method's space (search.space overrides a single one)."""
    override = spec.search.space if len(spec.methods) == 1 else None
    return common_space(), {m: method_space(m, override) for m in spec.methods}


# Weight of the composition's single cross-entropy term (engine term `ce`). 1.0 is Hinton et
# al.'s (2015) plain sum of hard and soft losses; 0 turns the composition label-free; 2 lets
# labels dominate twice over. Unit: a loss weight, linear.
COMPOSE_SPACE = SearchSpace(params={
    "ce_weight": ParamSpace(type="float", low=0.0, high=2.0, default=1.0),
})


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
        self.student = student_space(spec)
        self.fixed = dict(spec.params)
        self.choice = list(spec.methods) if spec.prefixed and not spec.compose else None
        for name, space in [("_common", self.common), *self.spaces.items()]:
            if "epochs" in space.params:
                raise SpecError(f"search space {name}: `epochs` is never searched (it is ASHA's "
                                "max_t); set the spec's `epochs` instead")

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
        arch: dict[str, Any] = {}  # a searched student architecture, first: `student.<name>`
        for k, p in self.student.items():
            if p.active(arch):
                arch[k] = take(f"{STUDENT}{k}", p, None)
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
                    own[k] = take(param_key(self.spec, m, k), p, m)
            for k, v in self.fixed.items():  # a method's fixed-only knobs (not in its YAML)
                if k in out or k in COMMON or k in (METHOD_KEY, *COMPOSE_SPACE.params) \
                        or k.startswith(STUDENT):
                    continue
                if split_key(self.spec, k)[0] in (None, m):
                    rows(Row(k, None, True, m))
                    out[k] = v
        return out

    # ---- callers
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


# --------------------------------------------------------------------------- the student
STUDENT = "student."  # flat names of a searched architecture: student.model, student.width, …


def student_space(spec: Spec) -> dict[str, ParamSpace]:
    """``search.student`` as parameter spaces (SpecError naming the field for a bad one)."""
    out = {}
    for k, v in spec.search.student.items():
        try:
            out[k] = ParamSpace.model_validate(v)
        except ValidationError as e:
            raise SpecError(format_error(e, f"search.student.{k}.")) from None
    return out


def with_student(spec: Spec, config: dict[str, Any]) -> Spec:
    """The spec a trial trains with: its sampled architecture (``student.*`` in its config) as
    ``student.model``/``kwargs`` (named choices resolved to their values)."""
    picked = {k[len(STUDENT):]: v for k, v in config.items() if k.startswith(STUDENT)}
    if not picked:
        return spec
    space = student_space(spec)
    model = picked.pop("model", spec.student.model)
    kwargs = dict(spec.student.kwargs) if model == spec.student.model else {}
    for k, v in picked.items():
        p = space.get(k)
        kwargs[k] = p.values[v] if p is not None and p.values else v
    student = spec.student.model_copy(update={"model": model, "kwargs": kwargs})
    return spec.model_copy(update={"student": student})


def resolve_params(spec: Spec) -> dict[str, Any]:
    """The flat config `kdtune train` uses: paper defaults, overridden by ``spec.params``."""
    return SweepSpace(spec).defaults()


def split_config(spec: Spec, config: dict[str, Any]) -> tuple[CommonParams, dict[str, dict[str, Any]], dict[str, Any]]:
    """Flat config → (common params, {method: its own params}, composition keys)."""
    common = {k: config[k] for k in COMMON if k in config}
    chosen = [config["method"]] if "method" in config and not spec.compose else spec.methods
    own: dict[str, dict[str, Any]] = {m: {} for m in chosen}
    extra: dict[str, Any] = {}
    for k, v in config.items():
        if k in COMMON or k == "method" or k.startswith(STUDENT):
            continue
        if spec.compose and k in COMPOSE_KEYS:
            extra[k] = v
            continue
        if spec.prefixed:
            m, rest = split_key(spec, k)
            if m in own:
                own[m][rest] = v
        else:
            own[chosen[0]][k] = v
    try:
        cp = CommonParams(**common)
    except ValidationError as e:
        raise SpecError(format_error(e, "params.")) from None
    return cp, own, extra

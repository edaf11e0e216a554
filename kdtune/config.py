"""The spec (one schema for ``kdtune train`` and ``kdtune sweep run``) and search spaces.

Config is data: pydantic models with ``extra="forbid"``, files read with ``yaml.safe_load``,
``--set a.b=VALUE`` parsed as YAML. Every path is made absolute at load (relative paths are
taken from the current working directory, as a user typing the command expects). Every
default and every path rule lives here (style rule 9).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class SpecError(ValueError):
    """A bad spec or search space: one line naming the field and the fix (CLI exit code 2)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- spec
class FirstK(_Model):
    first: int = Field(ge=1, description="the first k classes of the dataset")


Classes = Union[Literal["all"], list[int], FirstK]


class DataSpec(_Model):
    name: str = "digits"
    root: str | None = None  # null: $KDTUNE_DATA or ~/.cache/kdtune/data
    download: bool = False
    train_limit: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    augment: bool | None = None  # null: the dataset's default (crop+flip for 32×32 RGB)
    split_seed: int = 0  # the validation split; fixed so every trial is scored on the same images


class TeacherSpec(_Model):
    model: str = "cnn4"
    classes: Classes = "all"
    kwargs: dict[str, Any] = {}
    epochs: int = Field(5, ge=1)
    checkpoint: str | None = None  # a path or models:/NAME@alias: used as is, no training
    params: dict[str, Any] = {}  # training hyperparameters (_common.yaml names)


class StudentSpec(_Model):
    model: str = "cnn_small"
    classes: Classes = "all"
    kwargs: dict[str, Any] = {}


class SearchSpec(_Model):
    space: str | None = None  # null: search_spaces/<method>.yaml (+ _common.yaml)
    algorithm: Literal["tpe", "random", "cmaes"] = "tpe"
    num_samples: int = Field(16, ge=1)
    seed: int = 0
    max_concurrent: int | None = Field(None, ge=1)


class SchedulerSpec(_Model):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1.0)


class ResourcesSpec(_Model):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)  # 0: CPU-only trials
    # host memory one trial may add (GiB), enforced as an address-space cap (kdtune/limits.py);
    # null: no cap (Ray does not isolate trials' memory)
    memory_gb: float | None = Field(None, gt=0)

    @field_validator("gpu")
    @classmethod
    def _gpu_fraction(cls, v: float) -> float:
        # Ray packs trials per card by fraction; 0.3 leaves a useless 0.1 on every card.
        if v > 1 and v != int(v):
            raise ValueError("a gpu count above 1 must be whole (e.g. 2)")
        n = round(1 / v) if 0 < v < 1 else 1
        if 0 < v < 1 and not 1 - 1e-3 <= n * v <= 1 + 1e-9:  # 0.3333 packs 3; 0.3 wastes 0.1
            raise ValueError(f"fraction {v} does not divide one GPU: use 1/n, e.g. 0.5, 0.25, 0.3333")
        return v

    @model_validator(mode="after")
    def _memory_cap_cpu_only(self) -> "ResourcesSpec":
        if self.memory_gb is not None and self.gpu > 0:
            raise ValueError("memory_gb caps the trial's address space, which CUDA's large virtual "
                             "reservations break: leave it null for GPU trials")
        return self


class CorruptionSpec(_Model):
    """Extra test accuracies under input corruption at the end of training (robustness)."""

    kind: Literal["pixels", "gaussian"] = "pixels"  # pixels: fraction replaced; gaussian: σ
    levels: list[float] = []

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[float]) -> list[float]:
        if any(not 0 <= x <= 1 for x in v):
            raise ValueError("corruption levels must lie in [0, 1]")
        return v


class TrackingSpec(_Model):
    uri: str | None = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///<storage>/mlflow.db


class Spec(_Model):
    name: str = Field("kdtune", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    data: DataSpec = DataSpec()
    teacher: TeacherSpec = TeacherSpec()
    student: StudentSpec = StudentSpec()
    method: str | list[str] = "kd"
    compose: dict[str, float] | None = None
    params: dict[str, Any] = {}
    epochs: int = Field(10, ge=1)
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    resources: ResourcesSpec = ResourcesSpec()
    metric: str = "val_acc"
    mode: Literal["max", "min"] = "max"
    storage: str = "./kdtune-results"
    tracking: TrackingSpec = TrackingSpec()
    seed: int = 0  # the student's seed in `train`; trials derive theirs from search.seed
    device: str = "auto"  # auto: the GPU Ray assigned (or cuda:0), else cpu
    max_failures: int = Field(1, ge=0)  # Tune retries of a trial from its last checkpoint
    corruption: CorruptionSpec = CorruptionSpec()
    # torch.compile the student's forward (inductor). Off by default: on the 2-core CPU a
    # compiled epoch ran slower than eager (0.7-0.85x) after a 5-18 s compile (minutes with a
    # cold inductor cache); see benchmarks/README.md. Worth trying on a GPU.
    compile: bool = False

    @field_validator("method")
    @classmethod
    def _methods_nonempty(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("a method list must be non-empty with no repeats")
        return v

    @model_validator(mode="after")
    def _compose_shape(self) -> "Spec":
        if self.compose is not None:
            if len(self.compose) < 2:
                raise ValueError("compose needs at least two methods, e.g. {ft: 1.0, kd: 1.0}")
            if any(w < 0 for w in self.compose.values()):
                raise ValueError("compose weights must be >= 0")
        return self

    # ---- derived facts (one place for each rule)
    @property
    def methods(self) -> list[str]:
        """Every method the spec names (the searched choice, or the composed members)."""
        if self.compose:
            return list(self.compose)
        return list(self.method) if isinstance(self.method, list) else [self.method]

    @property
    def prefixed(self) -> bool:
        """Method parameters carry the method prefix (`kd.temperature`) when several are named."""
        return len(self.methods) > 1

    @property
    def run_dir(self) -> Path:
        """Results of this spec: <storage>/<name> (storage is absolute after load)."""
        return Path(self.storage) / self.name

    @property
    def cache_dir(self) -> Path:
        """Per-node files trials memory-map (data views, teacher outputs; kdtune/shared.py):
        <storage>/cache, or $KDTUNE_CACHE / ~/.cache/kdtune/shared when storage is a URI."""
        if not is_uri(self.storage):
            return Path(self.storage) / "cache"
        env = os.environ.get("KDTUNE_CACHE")
        return Path(env) if env else Path.home() / ".cache" / "kdtune" / "shared"

    def tracking_uri(self) -> str:
        if self.tracking.uri:
            return self.tracking.uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{Path(self.storage) / 'mlflow.db'}"

    def artifact_root(self) -> str:
        return (Path(self.storage) / "mlartifacts").as_uri()


def is_uri(s: str) -> bool:
    return "://" in s or s.startswith("models:/")


def _absolute(p: str | None) -> str | None:
    if p is None or is_uri(p):
        return p
    return str(Path(p).expanduser().resolve())


# --------------------------------------------------------------------------- loading
def format_error(e: ValidationError, prefix: str = "") -> str:
    """One line: the dotted field, what is wrong, what was given."""
    errs = e.errors()
    err = errs[0]
    branches = {"literal['all']": "'all'", "list[int]": "a list of class ids", "FirstK": "{first: K}"}
    union = [x for x in errs if any(str(p) in branches for p in x["loc"])]
    if len(union) > 1:  # `classes` (all | [ids] | {first: k}): the branch that got furthest
        err = max(union, key=lambda x: len(x["loc"]))
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "union[")))
    # pydantic names union members like `list[int]`; the user only needs the field path.
    loc = ".".join(p for p in loc.split(".") if p not in branches)
    field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "spec"
    msg = err["msg"].removeprefix("Value error, ")
    if len(union) > 1 and len(err["loc"]) == len(union[0]["loc"]):  # no branch fitted at all
        forms = [branches[str(x["loc"][-1])] for x in union if str(x["loc"][-1]) in branches]
        msg = "expected " + " or ".join([", ".join(forms[:-1]), forms[-1]] if len(forms) > 1 else forms)
    given = err.get("input")
    shown = "" if isinstance(given, (dict, list)) or err["type"] == "missing" else f" (got {given!r})"
    return f"{field}: {msg}{shown}"


def read_yaml(path: str | Path, what: str = "spec") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{what} file {str(p)!r}: not found (check the path)")
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{what} file {str(p)!r}: cannot be read ({e.__class__.__name__})") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise SpecError(f"{what} file {str(p)!r}: not valid YAML{at}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{what} file {str(p)!r}: must be a YAML mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``a.b=VALUE`` sets a dotted path; VALUE is parsed as YAML (``--set epochs=3``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. --set epochs=3")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise SpecError(f"--set {key}: value {raw!r} is not valid YAML") from None
        node = data
        parts = key.split(".")
        # `params` keys may themselves contain dots (kd.temperature): stop descending there.
        for i, part in enumerate(parts[:-1]):
            if part == "params":
                parts = parts[: i + 1] + [".".join(parts[i + 1 :])]
                break
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise SpecError(f"--set {key}: {part!r} is not a mapping")
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


def parse_spec(data: dict[str, Any]) -> Spec:
    """Validate a spec mapping and make its paths absolute (no registry checks)."""
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_error(e)) from None
    spec.data.root = _absolute(spec.data.root)
    spec.teacher.checkpoint = _absolute(spec.teacher.checkpoint)
    spec.search.space = _absolute(spec.search.space)
    spec.storage = _absolute(spec.storage) or spec.storage
    return spec


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Read, override, validate and check a spec against the registries. Raises SpecError."""
    data = apply_overrides(read_yaml(path), list(overrides))
    spec = parse_spec(data)
    from kdtune.checks import check_spec  # registries import torch: keep config light

    check_spec(spec)
    return spec


def dump_spec(spec: Spec) -> str:
    """The spec as YAML, secrets masked (kdtune/redact.py): every copy kdtune writes uses this."""
    from kdtune.redact import redact_data

    return yaml.safe_dump(redact_data(spec.model_dump(mode="json")), sort_keys=False)


def masked(spec: Spec) -> Spec:
    """A copy with every secret masked (kdtune/redact.py), for objects Tune pickles to disk (the
    searcher, callbacks): they never need the real credentials."""
    from kdtune.redact import redact_data

    return Spec.model_validate(redact_data(spec.model_dump(mode="json")))


# --------------------------------------------------------------------------- search spaces
class ParamSpace(_Model):
    """One hyperparameter: its range (with its unit/source in a YAML comment) and paper default."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    default: Any
    when: dict[str, Any] | None = None  # {other_param: value or [values]}: only then sampled

    @model_validator(mode="after")
    def _consistent(self) -> "ParamSpace":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty `choices` list")
            if self.default not in self.choices:
                raise ValueError(f"default {self.default!r} is not one of choices {self.choices}")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs `low` and `high`")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("`step` and `log` cannot be combined (Optuna forbids it)")
        if not isinstance(self.default, (int, float)) or isinstance(self.default, bool):
            raise ValueError(f"default must be a number (got {self.default!r})")
        if not self.low <= self.default <= self.high:
            raise ValueError(f"default {self.default} lies outside [{self.low}, {self.high}]")
        if self.type == "int" and not all(float(v).is_integer() for v in (self.low, self.high)):
            raise ValueError("int bounds must be whole numbers")
        return self

    def active(self, values: dict[str, Any]) -> bool:
        """Whether this parameter exists given the values sampled before it."""
        if not self.when:
            return True
        for k, want in self.when.items():
            allowed = want if isinstance(want, list) else [want]
            if values.get(k) not in allowed:
                return False
        return True

    def cast(self, v: Any) -> Any:
        if self.type == "int":
            return int(v)
        if self.type == "float":
            return float(v)
        return v


class SearchSpace(_Model):
    """A search-space file: ``method`` (the file's method, or null) and ordered ``params``."""

    method: str | None = None
    params: dict[str, ParamSpace] = {}

    @model_validator(mode="after")
    def _conditions_refer_back(self) -> "SearchSpace":
        seen: list[str] = []
        for name, p in self.params.items():
            for k in (p.when or {}):
                if k not in seen and k != "method":
                    raise ValueError(f"params.{name}.when: {k!r} must be a parameter defined above it")
            seen.append(name)
        return self

    def defaults(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """Paper defaults of the active parameters (``given`` values win and steer `when`)."""
        out: dict[str, Any] = {}
        given = given or {}
        for name, p in self.params.items():
            if p.active(out):
                out[name] = given.get(name, p.default)
        return out


def spaces_dir() -> Path:
    """search_spaces/: $KDTUNE_SPACES, the copy inside an installed wheel, or the repo's."""
    env = os.environ.get("KDTUNE_SPACES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    packaged = here / "search_spaces"
    return packaged if packaged.is_dir() else here.parent / "search_spaces"


def load_space(path: str | Path) -> SearchSpace:
    data = read_yaml(path, what="search space")
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{Path(path).name}: {format_error(e)}") from None


def method_space(method: str, override: str | None = None) -> SearchSpace:
    """A method's own space (its YAML, or an empty one for a method without hyperparameters)."""
    path = Path(override) if override else spaces_dir() / f"{method}.yaml"
    if not path.is_file():
        if override:
            raise SpecError(f"search.space: file {str(path)!r} not found")
        return SearchSpace(method=method)
    return load_space(path)


def common_space() -> SearchSpace:
    return load_space(spaces_dir() / "_common.yaml")


def is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

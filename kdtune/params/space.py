"""Search-space files (``search_spaces/*.yaml``): their schema and where they are found.

Each hyperparameter has a range (its unit or source in a YAML comment), a paper default, and
optionally a ``when`` condition on parameters above it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from kdtune.spec.load import format_error, read_yaml
from kdtune.spec.paths import spaces_dir
from kdtune.spec.schema import SpecError


class _Space(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ParamSpace(_Space):
    """One hyperparameter: its range (with its unit/source in a YAML comment) and paper default."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    default: Any
    when: dict[str, Any] | None = None  # {other_param: value or [values]}: only then sampled
    # named choices for values Optuna cannot hold (lists): the trial's config holds the name,
    # the model gets the value (`channels: {small: [16, 32], medium: [32, 64]}`)
    values: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _choices_from_values(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("values") and data.get("choices") is None:
            data = dict(data, choices=list(data["values"]))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "ParamSpace":
        if self.values is not None and (self.type != "categorical" or set(self.values) != set(self.choices or [])):
            raise ValueError("`values` names the choices of a categorical: its keys are the choices")
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


class SearchSpace(_Space):
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

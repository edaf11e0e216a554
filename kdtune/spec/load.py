"""Reading specs: YAML (``yaml.safe_load``), ``--set a.b=VALUE`` overrides, schema errors as one
line naming the field. Nothing here needs the registries (see ``kdtune/checks.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdtune.redact import redact_data
from kdtune.spec.paths import absolute
from kdtune.spec.schema import Spec, SpecError


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
    spec.data.root = absolute(spec.data.root)
    spec.teacher.checkpoint = absolute(spec.teacher.checkpoint)
    spec.search.space = absolute(spec.search.space)
    spec.storage = absolute(spec.storage) or spec.storage
    return spec


REQUIRED = ("data", "teacher", "student", "method")  # `teacher` only where a method uses one


def read_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
              teacher_free: bool = False) -> Spec:
    """A spec file (with ``--set`` overrides) validated against the schema only: no registry
    checks (``kdtune.checks.load_spec`` adds those). A spec file must name its ``data``,
    ``teacher``, ``student`` and ``method`` (``teacher_free``: its methods never use a teacher,
    so ``teacher`` may be left out); every other field has a documented default."""
    raw = read_yaml(path)
    data = apply_overrides(raw, list(overrides))
    missing = [k for k in REQUIRED if k not in data and not (k == "teacher" and teacher_free)]
    if missing:
        what = "is empty" if not raw else f"lacks {', '.join(missing)}"
        raise SpecError(f"{missing[0]}: spec file {str(path)!r} {what}; a spec names data, "
                        "teacher, student and method (see examples/quickstart.yaml)")
    return parse_spec(data)


def dump_spec(spec: Spec) -> str:
    """The spec as YAML, secrets masked (kdtune/redact.py): every copy kdtune writes uses this."""
    return yaml.safe_dump(redact_data(spec.model_dump(mode="json")), sort_keys=False)


def masked(spec: Spec) -> Spec:
    """A copy with every secret masked (kdtune/redact.py), for objects Tune pickles to disk (the
    searcher, callbacks): they never need the real credentials."""
    return Spec.model_validate(redact_data(spec.model_dump(mode="json")))



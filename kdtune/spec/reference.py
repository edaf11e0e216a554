"""``docs/spec.md``, generated from the schema's field descriptions (``kdtune spec docs``).

A test regenerates it and compares, so the page and the pydantic models cannot drift.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from kdtune.spec.load import REQUIRED
from kdtune.spec.schema import Spec

INTRO = """# The spec

One YAML file describes a run: `kdtune train SPEC` trains one configuration, `kdtune sweep run SPEC`
searches its hyperparameters (`train` ignores `search` and `scheduler`). A spec file must name
{required}; every other field has the default below. Unknown keys are refused with one line
naming the field. `--set a.b=VALUE` overrides any field (VALUE is parsed as YAML); inside `params`
a dotted name stays one key (`--set params.kd.temperature=4`). Relative paths are taken from the
folder you run the command in.

Editors can complete and check spec files with the JSON Schema from `kdtune spec schema`
(for example `kdtune spec schema > kdtune.schema.json` and a first line
`# yaml-language-server: $schema=kdtune.schema.json`).

This page is generated from the schema (`kdtune spec docs > docs/spec.md`); a test keeps it equal.
"""


def _type(annotation: Any) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = text.replace("typing.", "").replace("kdtune.spec.schema.", "")
    return text.replace("NoneType", "null").replace("Literal", "one of ").replace("|", "\\|")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        return "required"
    v = field.default
    if isinstance(v, BaseModel):
        return "see below"
    return "`" + json.dumps(v) + "`"


def _models(model: type[BaseModel], prefix: str, out: list[tuple[str, type[BaseModel]]]) -> None:
    out.append((prefix, model))
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and ann is not model:
            _models(ann, f"{prefix}{name}.", out)


def spec_markdown() -> str:
    """The whole page."""
    lines = [INTRO.format(required=", ".join(f"`{k}`" for k in REQUIRED))]
    groups: list[tuple[str, type[BaseModel]]] = []
    _models(Spec, "", groups)
    for prefix, model in groups:
        title = prefix.rstrip(".") or "top level"
        lines += [f"## {title}", "", (model.__doc__ or "").strip().splitlines()[0], "",
                  "| field | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            ann = field.annotation
            nested = isinstance(ann, type) and issubclass(ann, BaseModel)
            typ = "mapping (below)" if nested else _type(ann)
            req = (" (required in a file)" if name != "teacher" else " (required in a file when a "
                   "method uses a teacher)") if not prefix and name in REQUIRED else ""
            desc = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{prefix}{name}` | {typ} | {_default(field)}{req} | {desc} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"

"""docs/methods.md stays in step with the registered methods and their search spaces.

Every method kdtune registers has a ``## <name>`` section, and every parameter of its
``search_spaces/<name>.yaml`` is named in backticks inside that section; the common space's
parameters are named in ``## Common training hyperparameters``. Text only: nothing trains.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import kdtune.methods  # noqa: F401  (importing it registers every built-in method)
from kdtune.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "methods.md"
SPACES = ROOT / "search_spaces"
COMMON = "Common training hyperparameters"


def own_methods() -> list[str]:
    """Registered names whose class lives in kdtune itself: an installed third-party plugin
    (entry point ``kdtune.methods``) documents its own methods, not this page."""
    return [n for n in METHODS.names()
            if getattr(METHODS.get(n), "__module__", "").startswith("kdtune.")]


def sections(text: str) -> dict[str, str]:
    """``## heading`` → the text up to the next ``## `` heading (fenced code is skipped)."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"^## (.+?)\s*$", line)
        if m:
            current = m.group(1)
            assert current not in out, f"docs/methods.md: heading '## {current}' appears twice"
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def space_params(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text()) or {}
    return list((data.get("params") or {}).keys())


@pytest.fixture(scope="module")
def doc() -> dict[str, str]:
    assert DOC.is_file(), "docs/methods.md is missing"
    return sections(DOC.read_text(encoding="utf-8"))


def test_the_registry_has_methods():
    assert own_methods(), "no kdtune method registered: did kdtune.methods import?"


@pytest.mark.parametrize("name", own_methods())
def test_method_section_names_every_parameter(doc, name):
    assert name in doc, f"docs/methods.md has no '## {name}' section"
    space = SPACES / f"{name}.yaml"
    if not space.is_file():
        return  # a method without hyperparameters of its own
    missing = [p for p in space_params(space) if f"`{p}`" not in doc[name]]
    assert not missing, (f"docs/methods.md '## {name}' does not name the parameter(s) "
                         f"{', '.join(missing)} of search_spaces/{name}.yaml (in backticks)")


def test_common_section_names_every_common_parameter(doc):
    assert COMMON in doc, f"docs/methods.md has no '## {COMMON}' section"
    missing = [p for p in space_params(SPACES / "_common.yaml") if f"`{p}`" not in doc[COMMON]]
    assert not missing, f"'## {COMMON}' does not name {', '.join(missing)} (in backticks)"

"""The package's shape: no import cycles, short modules, Ray internals in one place, no pointers
outside the repo, and the CLI's surface as it was before the redesign (tests/fixtures)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "kdtune"
PRE = json.loads((ROOT / "tests" / "fixtures" / "pre_redesign.json").read_text())


def modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → kdtune modules it imports anywhere (functions and TYPE_CHECKING included).
    ``import kdtune`` / ``from kdtune import __version__`` is the package's face, not an edge."""
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = m.split(".")[: len(m.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name not in (m, "kdtune"):
                    edges[m].add(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" → ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle():
    # the check above must be able to fail
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_module_over_500_lines():
    big = {str(f.relative_to(ROOT)): n for f in PKG.rglob("*.py")
           if (n := len(f.read_text().splitlines())) > 500}
    assert not big, f"split these along their jobs: {big}"


RAY_INTERNALS = re.compile(r"ray\._private|_local_tuner|_node_ip_address|\.storage\.(storage_filesystem|"
                           r"trial_fs_path)|\berror_file\b|\bexperiment_tag\b")


def test_ray_internals_live_in_one_module():
    users = sorted(str(f.relative_to(ROOT)) for f in PKG.rglob("*.py")
                   if RAY_INTERNALS.search(f.read_text()))
    # callbacks.py lists "experiment_tag" among the result keys Ray adds: a string, not an access
    users = [u for u in users if u != "kdtune/tune/callbacks.py"
             or RAY_INTERNALS.search(PKG.joinpath("tune/callbacks.py").read_text()
                                     .replace('"experiment_tag"', ""))]
    assert users == ["kdtune/tune/_ray_compat.py"]


def test_the_ray_internals_we_use_exist():
    from kdtune.tune._ray_compat import TESTED, missing

    gone = missing()
    assert not gone, (f"Ray changed internals kdtune uses (read from Ray {TESTED}): {gone}; "
                      "update kdtune/tune/_ray_compat.py")


def test_nothing_points_outside_the_repo():
    pattern = ["-e", r"\.\./shared", "-e", "STACK-NOTES", "-e", "style rule"]
    r = subprocess.run(["git", "grep", "-n", *pattern, "--", ".", ":!tests/test_layout.py"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.stdout == "", r.stdout


def test_cli_keeps_every_command_it_had():
    from typer.testing import CliRunner

    from kdtune.cli.app import app

    def names(out: str) -> list[str]:
        return re.findall(r"^│ ([a-z][a-z-]*)\s", out, re.M)

    runner = CliRunner()
    top = names(runner.invoke(app, ["--help"], env={"COLUMNS": "80"}).output)
    sweep = names(runner.invoke(app, ["sweep", "--help"], env={"COLUMNS": "80"}).output)
    assert set(PRE["help_commands"]) <= set(top), top
    assert set(PRE["sweep_commands"]) <= set(sweep), sweep


def test_readme_is_short_and_links_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 120
    for doc in ("docs/spec.md", "docs/methods.md", "docs/api.md"):
        assert doc in readme and (ROOT / doc).is_file(), doc


@pytest.mark.parametrize("module", ["kdtune", "kdtune.spec", "kdtune.spec.schema"])
def test_light_modules_do_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_spec_docs_and_schema_match_the_models():
    """docs/spec.md and kdtune.schema.json are generated from the pydantic models
    (`kdtune spec docs`, `kdtune spec schema`): they must not drift."""
    from kdtune.spec.reference import spec_markdown
    from kdtune.spec.schema import Spec

    assert (ROOT / "docs" / "spec.md").read_text() == spec_markdown(), \
        "docs/spec.md is stale: kdtune spec docs > docs/spec.md"
    assert json.loads((ROOT / "kdtune.schema.json").read_text()) == Spec.model_json_schema(), \
        "kdtune.schema.json is stale: kdtune spec schema > kdtune.schema.json"
    for field in Spec.model_fields:  # every top-level field is documented with a meaning
        assert f"| `{field}` |" in spec_markdown()


def test_examples_point_editors_at_the_schema():
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        assert path.read_text().startswith("# yaml-language-server: $schema=../kdtune.schema.json"), path

"""Spec and search-space schemas: valid files load; each kind of mistake is one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdtune.params.space import SearchSpace, load_space
from kdtune.spec import SpecError, apply_overrides, parse_spec
from kdtune.checks import load_spec
from kdtune.spec import paths

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: dict, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def base(**kw) -> dict:
    d = {"name": "t", "data": {"name": "digits"}, "teacher": {"model": "cnn4", "epochs": 1},
         "student": {"model": "cnn_small"}, "method": "scratch", "epochs": 1}
    d.update(kw)
    return d


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    spec = load_spec(path)
    assert Path(spec.storage).is_absolute()


def test_paths_made_absolute_and_overrides(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write(tmp_path, base()), ["epochs=3", "data.root=./d", "params.lr=0.01"])
    assert spec.epochs == 3 and spec.params == {"lr": 0.01}
    assert spec.data.root == str(tmp_path / "d") and spec.storage == str(tmp_path / "kdtune-results")
    assert paths.tracking_uri(spec).startswith("sqlite:////") or paths.tracking_uri(spec).startswith("sqlite:///")


def test_dotted_params_keep_their_dots() -> None:
    d = apply_overrides({}, ["params.kd.temperature=4", "teacher.kwargs={width: 2}"])
    assert d == {"params": {"kd.temperature": 4}, "teacher": {"kwargs": {"width": 2}}}


BAD = [
    ({"epochs": 0}, "epochs"),
    ({"epochs": "many"}, "epochs"),
    ({"bogus": 1}, "bogus"),
    ({"teacher": {"model": "cnn4", "epochs": 1, "colour": "red"}}, "teacher.colour"),
    ({"resources": {"gpu": 0.3}}, "resources.gpu"),
    ({"resources": {"gpu": -1}}, "resources.gpu"),
    ({"search": {"num_samples": 0}}, "search.num_samples"),
    ({"search": {"algorithm": "grid"}}, "search.algorithm"),
    ({"mode": "best"}, "mode"),
    ({"method": []}, "method"),
    ({"name": "../escape"}, "name"),
    ({"data": {"name": "digits", "val_fraction": 1.5}}, "data.val_fraction"),
    ({"student": {"model": "cnn_small", "classes": {"first": 0}}}, "student.classes"),
]


@pytest.mark.parametrize("patch,field", BAD, ids=[f for _, f in BAD])
def test_schema_errors_name_the_field(patch: dict, field: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(base(**patch))
    msg = str(e.value)
    assert msg.startswith(field) and "\n" not in msg


REGISTRY_BAD = [
    ({"method": "nope"}, "method: unknown method 'nope'"),
    ({"data": {"name": "digitz"}}, "data.name: unknown dataset 'digitz': did you mean 'digits'"),
    ({"student": {"model": "cnn_smal"}}, "student.model: unknown model"),
    ({"teacher": {"model": "cnn4", "epochs": 1, "checkpoint": "/no/such.pt"}}, "teacher.checkpoint"),
    ({"student": {"model": "cnn_small", "classes": [3, 12]}}, "student.classes"),
    ({"student": {"model": "cnn_small", "classes": []}}, "student.classes"),
    ({"params": {"lr": -1}}, "params.lr"),
    ({"params": {"colour": 1}}, "params.colour"),
]


@pytest.mark.parametrize("patch,start", REGISTRY_BAD, ids=[s.split(":")[0] for _, s in REGISTRY_BAD])
def test_registry_and_data_errors(tmp_path: Path, patch: dict, start: str) -> None:
    with pytest.raises(SpecError) as e:
        load_spec(write(tmp_path, base(**patch)))
    assert str(e.value).startswith(start), str(e.value)


@pytest.mark.parametrize("content,needle", [
    ("name: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "must be a YAML mapping"),
], ids=["yaml", "mapping"])
def test_bad_files(tmp_path: Path, content: str, needle: str) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(content)
    with pytest.raises(SpecError, match=needle):
        load_spec(p)
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "missing.yaml")


SPACE_BAD = [
    ({"x": {"type": "float", "low": 1, "high": 1, "default": 1}}, "low \\(1.0\\) must be < high"),
    ({"x": {"type": "float", "low": 0, "high": 1, "log": True, "default": 0.5}}, "log range needs low > 0"),
    ({"x": {"type": "categorical", "choices": [], "default": 1}}, "non-empty"),
    ({"x": {"type": "float", "low": 0, "high": 1, "default": 2}}, "outside"),
    ({"x": {"type": "float", "low": 0, "high": 1, "default": 0.5, "when": {"y": 1}}}, "defined above"),
    ({"x": {"type": "float", "low": 0, "high": 1}}, "default"),
]


@pytest.mark.parametrize("params,needle", SPACE_BAD, ids=[n for _, n in SPACE_BAD])
def test_space_errors(tmp_path: Path, params: dict, needle: str) -> None:
    p = write(tmp_path, {"method": None, "params": params}, "space.yaml")
    with pytest.raises(SpecError, match=needle) as e:
        load_space(p)
    assert "\n" not in str(e.value)


def test_space_conditions_and_defaults() -> None:
    s = SearchSpace.model_validate({"params": {
        "init": {"type": "categorical", "choices": ["zero", "uniform"], "default": "zero"},
        "theta": {"type": "float", "low": 1e-4, "high": 0.1, "log": True, "default": 0.01,
                  "when": {"init": "uniform"}}}})
    assert s.defaults() == {"init": "zero"}
    assert s.defaults({"init": "uniform"}) == {"init": "uniform", "theta": 0.01}


def test_every_shipped_space_validates() -> None:
    r = subprocess.run([sys.executable, "-m", "kdtune.cli", "spaces", "validate"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "_common.yaml" in r.stdout


def test_cli_bad_spec_exits_2_with_one_line(tmp_path: Path) -> None:
    p = write(tmp_path, base(epochs=0))
    r = subprocess.run([sys.executable, "-m", "kdtune.cli", "train", str(p)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "epochs" in lines[0], r.stderr
    assert not (tmp_path / "kdtune-results").exists()  # nothing half-written

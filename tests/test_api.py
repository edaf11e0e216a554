"""The Python API end to end on digits (real local Ray, real sqlite MLflow store): ``sweep``,
then ``best``, then ``promote``; the CLI's ``best --json`` and ``best.yaml`` keep every field
they had before the redesign (tests/fixtures/pre_redesign.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

PRE = json.loads((Path(__file__).parent / "fixtures" / "pre_redesign.json").read_text())


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    import kdtune

    d = tmp_path_factory.mktemp("api")
    (d / "spec.yaml").write_text(yaml.safe_dump({
        "name": "apisweep", "data": {"name": "digits", "train_limit": 300, "val_fraction": 0.2},
        "teacher": {"model": "cnn4", "epochs": 1},
        "student": {"model": "cnn_small", "kwargs": {"width": 0.25}},
        "method": "kd", "epochs": 2, "search": {"num_samples": 3, "seed": 0},
        "scheduler": {"type": "none"}, "storage": str(d / "results")}))
    spec = kdtune.load_spec(d / "spec.yaml")
    result = kdtune.sweep(spec, log=lambda m: None)
    result.written = Path(result.best_yaml).read_text()  # as `sweep run` wrote it (`best` rewrites it)
    yield spec, result
    import ray

    ray.shutdown()  # the sweep started a local Ray in this process: later tests expect none


def test_sweep_best_promote_through_the_api(swept):
    import mlflow

    import kdtune

    spec, result = swept
    assert isinstance(result, kdtune.SweepResult) and len(result.trials) == 3
    assert result.best is not None and Path(result.best_yaml).is_file()
    top = kdtune.best(spec, top=3)
    assert isinstance(top, kdtune.BestTrials) and top.trials == 3
    # one ranking everywhere: Tune's table and MLflow agree on the best trial and its value
    assert top.best["run_name"] == result.best.name
    assert top.best["value"] == pytest.approx(result.best.value)
    promoted = kdtune.promote(spec)
    assert isinstance(promoted, kdtune.Promotion) and promoted.run_id == top.best["run_id"]
    mlflow.set_tracking_uri(promoted.tracking_uri)
    model = mlflow.pytorch.load_model(promoted.uri)
    assert model is not None


def test_best_json_and_best_yaml_keep_their_fields(swept):
    from typer.testing import CliRunner

    from kdtune.cli.app import app
    from kdtune.spec.paths import tracking_uri

    spec, result = swept
    text = result.written
    r = CliRunner().invoke(app, ["best", "--json", "--top", "3", "--tracking-uri", tracking_uri(spec)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert set(PRE["best_json_keys"]) <= set(out)
    assert set(PRE["best_json_trial_keys"]) <= set(out["top"][0])
    keys = list(yaml.safe_load(text))  # every field it had, in the same order (new ones extend)
    assert [k for k in keys if k in PRE["best_yaml_keys"]] == PRE["best_yaml_keys"]
    header = [line.split(":")[0] for line in text.splitlines() if line.startswith("#")]
    assert header == [h.replace("quickstart", spec.name) for h in PRE["best_yaml_header"]]


def test_train_through_the_api_reproduces_the_best_yaml(swept):
    import kdtune

    spec, result = swept
    out = kdtune.train(kdtune.load_spec(result.best_yaml), log=lambda m: None)
    assert isinstance(out, kdtune.TrainResult) and len(out.history) == spec.epochs
    assert out.checkpoint.is_file()
    # the same config, seed and teacher as the best trial: its val_acc and test_acc again
    best = next(r for r in result.grid if Path(r.path).name.startswith(result.best.name + "_"))
    assert out.metrics["val_acc"] == pytest.approx(result.best.value, abs=1e-6)
    assert out.test_acc == pytest.approx(best.metrics["test_acc"], abs=1e-6)

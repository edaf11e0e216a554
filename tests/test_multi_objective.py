"""Multi-objective sweeps on digits (CPU, real local Ray and sqlite MLflow): a searched student
architecture, cost metrics on every trial, the Pareto front, budgets and constraints."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from typer.testing import CliRunner

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ARCH = {"width": {"type": "float", "low": 0.125, "high": 1.0, "default": 0.5},
        "channels": {"type": "categorical", "default": "small",
                     "values": {"small": [8, 16], "medium": [16, 32], "large": [32, 64]}}}


def spec_file(d, name: str, **over) -> str:
    data = {"name": name, "data": {"name": "digits", "train_limit": 400, "val_fraction": 0.25},
            "teacher": {"model": "cnn4", "epochs": 1},
            "student": {"model": "cnn_small"}, "method": "kd", "epochs": 2,
            "search": {"num_samples": 6, "seed": 0, "student": ARCH},
            "scheduler": {"type": "none"}, "storage": str(d / "res"), **over}
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def cli(*args: str):
    from kdtune.cli.app import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    import ray

    import kdtune

    d = tmp_path_factory.mktemp("mo")
    two = kdtune.load_spec(spec_file(d, "front", metric=["val_acc", "params_count"], mode=["max", "min"]))
    res = kdtune.sweep(two, log=lambda m: None)
    cons = kdtune.load_spec(spec_file(d, "cons", constraints={"params_count": {"max": 3000}}))
    res_c = kdtune.sweep(cons, log=lambda m: None)
    ray.shutdown()  # later tests expect no Ray in this process
    return d, two, res, cons, res_c


def runs(spec):
    from mlflow import MlflowClient

    from kdtune.spec.paths import tracking_uri

    c = MlflowClient(tracking_uri(spec))
    found = c.search_runs([c.get_experiment_by_name(spec.name).experiment_id], max_results=100)
    return [r for r in found if r.data.tags.get("kdtune.role") == "trial"]


def test_every_finished_trial_reports_its_costs(swept):
    _, two, res, _, _ = swept
    kids = runs(two)
    assert len(kids) == 6 and all(k.info.status == "FINISHED" for k in kids)
    for k in kids:
        assert {"params_count", "flops", "size_mb", "latency_ms", "val_acc"} <= set(k.data.metrics)
        assert k.data.metrics["flops"] > 0 and k.data.metrics["latency_ms"] > 0
    # the architecture was searched: trials differ in size
    assert len({k.data.metrics["params_count"] for k in kids}) > 1


def test_pareto_json_is_the_brute_force_front_of_the_runs(swept):
    from kdtune.spec.paths import tracking_uri

    _, two, _, _, _ = swept
    r = cli("best", "--pareto", "--json", "--tracking-uri", tracking_uri(two), "--sweep", "front")
    assert r.exit_code == 0, r.output
    front = json.loads(r.stdout)["front"]
    pts = {k.info.run_id: (k.data.metrics["val_acc"], k.data.metrics["params_count"]) for k in runs(two)}
    brute = {i for i, (a, p) in pts.items()
             if not any(b >= a and q <= p and (b > a or q < p) for j, (b, q) in pts.items() if j != i)}
    assert {f["run_id"] for f in front} == brute and len(front) >= 2
    assert [f["val_acc"] for f in front] == sorted((f["val_acc"] for f in front), reverse=True)


def test_promote_within_a_params_budget_or_refuse(swept):
    from kdtune.spec.paths import tracking_uri

    _, two, _, _, _ = swept
    kids = runs(two)
    cap = sorted(k.data.metrics["params_count"] for k in kids)[2]
    fits = [k for k in kids if k.data.metrics["params_count"] <= cap]
    want = max(fits, key=lambda k: k.data.metrics["val_acc"]).data.metrics["val_acc"]
    r = cli("promote", "--max-params", str(cap), "--json", "--sweep", "front",
            "--tracking-uri", tracking_uri(two))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)  # (MLflow's registration lines go to stderr)
    chosen = next(k for k in kids if k.info.run_id == out["run_id"])
    assert chosen.data.metrics["params_count"] <= cap and chosen.data.metrics["val_acc"] == want
    r = cli("promote", "--max-params", "1", "--sweep", "front", "--tracking-uri", tracking_uri(two))
    assert r.exit_code == 2 and "budget: no trial" in r.output


def test_a_constraint_sweep_never_ranks_an_infeasible_trial(swept):
    import kdtune

    _, _, _, cons, res_c = swept
    kids = runs(cons)
    infeasible = [k for k in kids if k.data.tags.get("kdtune.infeasible")]
    assert infeasible, "no sample broke the constraint: the test shows nothing"
    assert all(k.data.metrics["params_count"] > 3000 and "val_acc" not in k.data.metrics
               for k in infeasible)
    top = kdtune.best(cons, top=10)
    assert top.top and all(t["costs"]["params_count"] <= 3000 for t in top.top)
    assert res_c.best is not None and res_c.best.name not in {k.info.run_name for k in infeasible}


def test_a_searched_architecture_is_refused_for_a_teacher_built_student(tmp_path):
    r = cli("sweep", "run", spec_file(tmp_path, "ft", method="finetune"), "--dry-run")
    assert r.exit_code == 2 and "search.student: finetune builds the student from the teacher" in r.output


def test_dry_run_shows_the_architecture_rows(tmp_path):
    r = cli("sweep", "run", spec_file(tmp_path, "dry", metric=["val_acc", "flops"], mode=["max", "min"]),
            "--dry-run")
    assert r.exit_code == 0, r.output
    assert "student.width" in r.output and "student.channels" in r.output
    assert "max val_acc, min flops" in r.output

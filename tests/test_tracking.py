"""MLflow tracking: the driver-only writer, best/promote/ui, serving, a models:/ teacher.

Real services only, on 127.0.0.1 and free ports: an MLflow server (sqlite backend, temp
artifacts) started with ``kdtune ui`` for the sweep, ``mlflow models serve`` for the promoted
student, and headless Chromium for the UI; plus a sweep on the default sqlite store. Every process is started in its own
session and stopped by its process-group id in the fixture's ``finally``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import require
import yaml
from kdtune.spec import paths

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

PY = sys.executable
RAY_KEYS = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid",
            "time_since_restore", "iterations_since_restore", "done", "epoch", "trial_id"}


# --------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """A service in its own session (so its workers can be stopped with it by group id)."""
    f = open(log, "wb")
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})})


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass


def write_spec(path: Path, **over) -> Path:
    spec = {"name": "srv", "data": {"name": "digits", "train_limit": 300, "val_fraction": 0.2},
            "teacher": {"model": "cnn4", "epochs": 1},
            "student": {"model": "cnn_small", "kwargs": {"width": 0.25}},
            "method": "kd", "epochs": 2,
            "search": {"algorithm": "tpe", "num_samples": 3, "seed": 0},
            "scheduler": {"type": "none"}, "resources": {"cpu": 1, "gpu": 0},
            "storage": str(path.parent / "results")}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(spec.get(k), dict):
            spec[k] = {**spec[k], **v}
        else:
            spec[k] = v
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*args: str):
    from typer.testing import CliRunner

    from kdtune.cli.app import app

    return CliRunner().invoke(app, list(args))


def children(c, parent_id: str, exp_id: str):
    return c.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_accuracy(model, spec) -> tuple[float, int]:
    import torch

    from kdtune.data import TensorLoader
    from kdtune.training.context import student_data

    data = student_data(spec)
    correct = n = 0
    for x, y, _ in TensorLoader(data.test, data, 512, shuffle=False, device="cpu"):
        with torch.no_grad():
            correct += int((model(x).argmax(1) == y).sum())
        n += len(y)
    return correct / n, n


test_accuracy.__test__ = False  # a helper, not a test


# --------------------------------------------------------------------------- a sweep on a server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow server on sqlite with temp artifacts, started the way users do: `kdtune ui`
    (= ``mlflow server --backend-store-uri sqlite:///… --artifacts-destination … --host 127.0.0.1``)."""
    d = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = start([PY, "-m", "kdtune.cli", "ui", "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
                  "--port", str(port)], d / "server.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        assert f"MLflow UI for sqlite:///{d / 'mlflow.db'}: http://127.0.0.1:{port}" in \
            (d / "server.log").read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def sweep(server, tmp_path_factory):
    """3 KD trials × 2 epochs logged by the driver to the server (teacher trained first)."""
    from kdtune.checks import load_spec
    from kdtune.tune.callbacks import sweep_callbacks
    from kdtune.tune.run import run_sweep

    d = tmp_path_factory.mktemp("sweep")
    spec = load_spec(write_spec(d / "spec.yaml", tracking={"uri": server}))
    res = run_sweep(spec, callbacks=sweep_callbacks(spec, False, log=lambda m: None), log=lambda m: None)
    return spec, res


def test_server_sweep_logs_parent_children_teacher(sweep, server, tmp_path):
    from mlflow import MlflowClient

    spec, res = sweep
    c = MlflowClient(server)
    exp = c.get_experiment_by_name("srv")
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kdtune.role") == "sweep"]
    teachers = [r for r in runs if r.data.tags.get("kdtune.role") == "teacher"]
    assert len(parents) == 1 and len(teachers) == 1
    p, t = parents[0], teachers[0]
    assert p.info.status == "FINISHED"
    tags = p.data.tags
    assert (tags["kdtune.sweep"], tags["kdtune.dataset"], tags["kdtune.method"]) == ("srv", "digits", "kd")
    assert tags["kdtune.version"] and tags["kdtune.search_seed"] == "0" and tags["kdtune.seed"] == "0"
    assert p.data.params["epochs"] == "2" and p.data.params["search.num_samples"] == "3"
    assert "spec.yaml" in [a.path for a in c.list_artifacts(p.info.run_id)]
    assert (paths.run_dir(spec) / "mlflow_parent_run_id").read_text().strip() == p.info.run_id
    # the teacher: its own run, with its checkpoint and accuracy
    assert "test_acc" in t.data.metrics
    assert [a.path for a in c.list_artifacts(t.info.run_id, "checkpoint")] == ["checkpoint/teacher.pt"]

    kids = children(c, p.info.run_id, exp.experiment_id)
    assert len(kids) == 3 and all(k.data.tags.get("kdtune.role") == "trial" for k in kids)
    by_trial = {k.data.tags["kdtune.trial_id"]: k for k in kids}
    assert len(by_trial) == 3
    for result in res.grid:
        m = result.metrics
        k = by_trial[m["trial_id"]]
        assert k.info.status == "FINISHED"
        assert k.data.tags["kdtune.teacher_run_id"] == t.info.run_id
        assert set(k.data.params) == set(result.config)  # every sampled hyperparameter
        local = c.download_artifacts(k.info.run_id, "config.yaml", str(tmp_path))
        assert yaml.safe_load(Path(local).read_text()) == result.config
        reported = {key for key, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and key not in RAY_KEYS}
        assert {"val_acc", "val_loss", "loss", "ce", "test_acc", "params_count"} <= reported
        assert reported <= set(k.data.metrics), reported - set(k.data.metrics)
        for key in ("val_acc", "val_loss", "loss", "ce"):
            hist = c.get_metric_history(k.info.run_id, key)
            assert sorted(h.step for h in hist) == [1, 2]
        assert k.data.metrics["val_acc"] == pytest.approx(m["val_acc"])
        assert k.data.metrics["test_acc"] == pytest.approx(m["test_acc"])
        arts = {a.path for a in c.list_artifacts(k.info.run_id)}
        assert {"config.yaml", "spec.yaml", "checkpoint"} <= arts
        assert [a.path for a in c.list_artifacts(k.info.run_id, "checkpoint")] == ["checkpoint/checkpoint.pt"]


def test_best_json_agrees_with_search_runs(sweep, server):
    import mlflow

    spec, res = sweep
    r = cli("best", "--json", "--top", "3", "--tracking-uri", server)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    mlflow.set_tracking_uri(server)
    df = mlflow.search_runs(experiment_names=["srv"],
                            filter_string=f"tags.`mlflow.parentRunId` = '{out['parent_run_id']}'",
                            order_by=["metrics.val_acc DESC"])
    assert out["sweep"] == "srv" and len(out["top"]) == 3
    assert [t["value"] for t in out["top"]] == pytest.approx(list(df["metrics.val_acc"]))
    best_ids = set(df.loc[df["metrics.val_acc"] == df["metrics.val_acc"].max(), "run_id"])
    assert out["top"][0]["run_id"] in best_ids  # ties may come in either order
    assert out["top"][0]["value"] == pytest.approx(res.best.value)  # Tune's best, same rule
    best_yaml = Path(out["best_yaml"])
    assert best_yaml == paths.run_dir(spec) / "best.yaml"
    written = yaml.safe_load(best_yaml.read_text())
    assert written["params"] == {k.split(".", 1)[-1]: v for k, v in out["top"][0]["params"].items()}


@pytest.fixture(scope="module")
def promoted(sweep, server):
    r = cli("promote", "--json", "--tracking-uri", server, "--sweep", "srv")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_promote_loads_and_reproduces_test_acc(sweep, server, promoted):
    import mlflow
    from mlflow import MlflowClient

    spec, _ = sweep
    assert promoted["uri"] == "models:/srv@champion"
    c = MlflowClient(server)
    mv = c.get_model_version_by_alias("srv", "champion")
    assert mv.version == promoted["version"] and mv.run_id == promoted["run_id"]
    assert mv.tags["kdtune.trial_run_id"] == promoted["run_id"]
    assert mv.tags["kdtune.teacher_run_id"] and mv.tags["kdtune.method"] == "kd"
    assert any(k.startswith("param.") for k in mv.tags)
    mlflow.set_tracking_uri(server)
    info = mlflow.models.get_model_info("models:/srv@champion")
    assert info.flavors["pytorch"]["model_data"] and info.signature is not None
    model = mlflow.pytorch.load_model("models:/srv@champion")  # pt2: no unpickling
    acc, _ = test_accuracy(model, spec)
    assert acc == pytest.approx(promoted["test_acc"], abs=1e-9)


def test_served_model_answers_invocations(sweep, server, promoted, tmp_path):
    import mlflow
    import numpy as np
    import torch

    from kdtune.data import TensorLoader
    from kdtune.training.context import student_data

    spec, _ = sweep
    data = student_data(spec)
    x, _, _ = next(iter(TensorLoader(data.test, data, 16, shuffle=False, device="cpu")))
    mlflow.set_tracking_uri(server)
    with torch.no_grad():
        local = mlflow.pytorch.load_model("models:/srv@champion")(x).numpy()
    port = free_port()
    proc = start([PY, "-m", "mlflow", "models", "serve", "-m", "models:/srv@champion",
                  "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port), "-w", "1"],
                 tmp_path / "serve.log",
                 # it execs `uvicorn` by name: the venv's bin must be on PATH
                 env={"MLFLOW_TRACKING_URI": server,
                      "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     data=json.dumps({"inputs": x.numpy().tolist()}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            preds = np.asarray(json.loads(resp.read())["predictions"], dtype=np.float32)
    finally:
        stop(proc)
    assert preds.shape == local.shape == (16, data.num_classes)
    np.testing.assert_allclose(preds, local, atol=1e-4)
    assert (preds.argmax(1) == local.argmax(1)).all()


def test_promote_without_checkpoint_exits_2_and_changes_nothing(sweep, server, promoted):
    from mlflow import MlflowClient

    c = MlflowClient(server)
    before = [(m.name, m.version) for m in c.search_model_versions()]
    parent = json.loads(cli("best", "--json", "--tracking-uri", server).stdout)["parent_run_id"]
    r = cli("promote", "--run-id", parent, "--tracking-uri", server, "--model-name", "nope")
    assert r.exit_code == 2
    assert "no checkpoint" in r.output and len(r.output.strip().splitlines()) == 1
    assert [(m.name, m.version) for m in c.search_model_versions()] == before
    assert c.search_registered_models(filter_string="name = 'nope'") == []


def test_registered_model_as_teacher_trains_no_teacher(sweep, server, promoted, tmp_path):
    spec_file = write_spec(tmp_path / "spec.yaml", name="from-registry", epochs=1,
                           tracking={"uri": server},
                           teacher={"checkpoint": "models:/srv@champion"})
    r = cli("train", str(spec_file))
    assert r.exit_code == 0, r.output
    assert "teacher: using models:/srv@champion" in r.output and "teacher: training" not in r.output
    teachers = tmp_path / "results" / "teachers"
    assert [p.name for p in teachers.iterdir()] == ["registry"]  # downloaded, nothing trained
    assert (teachers / "registry" / "srv" / f"v{promoted['version']}" / "checkpoint.pt").is_file()


def test_browser_shows_experiment_trials_and_val_acc(sweep, server, tmp_path):
    """Headless Chromium: the sweep's experiment, its trial runs (expanded under the parent)
    and a trial's val_acc value; the screenshot is left in the test's temp folder."""
    require(importlib.util.find_spec("selenium") is not None, "selenium is not installed")
    from mlflow import MlflowClient
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    require(bool(chromium and driver), "chromium/chromedriver not installed (scripts/install.sh installs them)")
    c = MlflowClient(server)
    exp = c.get_experiment_by_name("srv")
    best = json.loads(cli("best", "--json", "--tracking-uri", server).stdout)["top"][0]
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update", "--no-first-run",
              "--disable-sync", "--window-size=1600,1000", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(a)
    opts.binary_location = chromium
    browser = webdriver.Chrome(service=webdriver.ChromeService(driver), options=opts)
    try:
        wait = WebDriverWait(browser, 90)
        browser.get(f"{server}/#/experiments")
        link = wait.until(EC.element_to_be_clickable((By.XPATH, "//a[normalize-space()='srv']")))
        assert f"/experiments/{exp.experiment_id}" in link.get_attribute("href")
        browser.get(f"{server}/#/experiments/{exp.experiment_id}/runs")
        # trials are collapsed under the parent run: expand it
        wait.until(EC.element_to_be_clickable(
            (By.XPATH, "//button[contains(@data-component-id,'runnamecellrenderer')]"))).click()
        for name in ("kd_001", "kd_002", "kd_003"):
            wait.until(EC.presence_of_element_located((By.XPATH, f"//a[normalize-space()='{name}']")))
        browser.save_screenshot(str(tmp_path / "runs.png"))
        browser.find_element(By.XPATH, f"//a[normalize-space()='{best['run_name']}']").click()
        cell = wait.until(EC.presence_of_element_located((By.XPATH, "//*[normalize-space()='val_acc']")))
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
        value = str(best["value"])
        wait.until(lambda b: value in b.find_element(By.TAG_NAME, "body").text)
        browser.save_screenshot(str(tmp_path / "trial.png"))
    finally:
        browser.quit()
    assert (tmp_path / "trial.png").stat().st_size > 10_000


# --------------------------------------------------------------------------- the sqlite default
@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    """`kdtune sweep run`: 4 concurrent trials (cpu 0.5 on 2 CPUs) × 3 epochs, default sqlite store."""
    from kdtune.checks import load_spec

    old = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        d = tmp_path_factory.mktemp("lite")
        spec_file = write_spec(d / "spec.yaml", name="lite", method="scratch", epochs=3,
                               search={"num_samples": 4, "max_concurrent": 4}, resources={"cpu": 0.5})
        spec = load_spec(spec_file)
        assert paths.tracking_uri(spec) == f"sqlite:///{d / 'results' / 'mlflow.db'}"
        r = cli("sweep", "run", str(spec_file))
        assert r.exit_code == 0, r.output
        assert "MLflow: " in r.output and "NOT sent" not in r.output
        yield spec, spec_file
    finally:
        if old is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old


def test_sqlite_four_concurrent_trials_all_metrics_arrive(lite):
    from mlflow import MlflowClient

    spec, _ = lite
    c = MlflowClient(paths.tracking_uri(spec))
    exp = c.get_experiment_by_name("lite")
    assert exp.artifact_location.startswith(Path(spec.storage, "mlartifacts").as_uri())
    parents = c.search_runs([exp.experiment_id], filter_string="tags.`kdtune.role` = 'sweep'")
    assert len(parents) == 1
    kids = children(c, parents[0].info.run_id, exp.experiment_id)
    assert len(kids) == 4 and {k.info.status for k in kids} == {"FINISHED"}
    tune_ids = [p.name.rsplit("_", 1)[-1] for p in paths.run_dir(spec).iterdir() if (p / "result.json").is_file()]
    assert sorted(k.data.tags["kdtune.trial_id"] for k in kids) == sorted(tune_ids)
    from kdtune.tune.plan import plan_sweep

    assert plan_sweep(spec).concurrent == 4  # Tune ran them 4 at a time; only the driver wrote
    for k in kids:
        for key in ("val_acc", "val_loss", "loss", "ce"):
            assert sorted(h.step for h in c.get_metric_history(k.info.run_id, key)) == [1, 2, 3], key
        assert {"test_acc", "params_count"} <= set(k.data.metrics)
    assert not (paths.run_dir(spec) / "mlflow_pending.jsonl").exists()
    r = cli("sweep", "list", "--json", "--tracking-uri", paths.tracking_uri(spec))
    assert r.exit_code == 0, r.output
    assert [(s["sweep"], s["trials"]) for s in json.loads(r.stdout)] == [("lite", 4)]


def test_resume_reuses_parent_and_children(lite):
    from mlflow import MlflowClient

    spec, spec_file = lite
    parent = (paths.run_dir(spec) / "mlflow_parent_run_id").read_text().strip()
    r = cli("sweep", "run", str(spec_file), "--resume")
    assert r.exit_code == 0, r.output
    c = MlflowClient(paths.tracking_uri(spec))
    exp = c.get_experiment_by_name("lite")
    runs = c.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs if r.data.tags.get("kdtune.role") == "sweep"] == [parent]
    assert c.get_run(parent).info.status == "FINISHED"
    assert len(children(c, parent, exp.experiment_id)) == 4


def test_failing_trial_is_retried_once_and_ends_failed_with_reason(tmp_path, monkeypatch):
    """A real trial that diverges (lr 1e12 → NonFiniteLoss), retried by Tune (max_failures 1):
    one child run, FAILED, the error's last line as `kdtune.error`, error.txt attached."""
    from mlflow import MlflowClient

    from kdtune.checks import load_spec

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec_file = write_spec(tmp_path / "spec.yaml", name="diverge", method="scratch", epochs=2,
                           params={"lr": 1e12}, search={"num_samples": 1}, max_failures=1)
    r = cli("sweep", "run", str(spec_file))
    assert r.exit_code in (0, 1), r.output  # (0: it reported val_acc before diverging)
    spec = load_spec(spec_file)
    c = MlflowClient(paths.tracking_uri(spec))
    exp = c.get_experiment_by_name("diverge")
    kids = c.search_runs([exp.experiment_id], filter_string="tags.`kdtune.role` = 'trial'")
    assert len(kids) == 1
    k = kids[0]
    assert k.info.status == "FAILED" and k.data.tags["kdtune.retries"] == "1"
    assert "NonFiniteLoss" in k.data.tags["kdtune.error"]
    assert "error.txt" in [a.path for a in c.list_artifacts(k.info.run_id)]


# --------------------------------------------------------------------------- writer units (no Ray)
class FakeTrial:
    """What the callback reads from a Ray Tune Trial."""

    def __init__(self, n: int, config: dict, checkpoint=None):
        self.trial_id = f"t{n:05d}"
        self.experiment_tag = f"{n}_x"
        self.trainable_name = "scratch"
        self.config = config
        self.last_result: dict = {}
        self.checkpoint = checkpoint
        self.num_failures = 0
        self.status = "RUNNING"
        self.error_file = None
        self.error = None

    def get_error(self):
        return self.error


@pytest.fixture
def lite_spec(tmp_path, monkeypatch):
    from kdtune.checks import load_spec

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return load_spec(write_spec(tmp_path / "spec.yaml", name="unit", method="scratch"))


def test_retries_and_a_restarted_driver_make_no_duplicate_runs(lite_spec, tmp_path):
    import torch
    from mlflow import MlflowClient
    from ray.tune import Checkpoint

    from kdtune.tune.callbacks import MLflowCallback

    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    torch.save({"x": torch.zeros(1)}, ckdir / "checkpoint.pt")
    t = FakeTrial(1, {"lr": 0.1, "batch_size": 32})
    cb = MLflowCallback(lite_spec, log=lambda m: None)
    cb.setup()
    cb.on_trial_start(0, [t], t)
    cb.on_trial_result(0, [t], t, {"epoch": 1, "val_acc": 0.5, "loss": 1.0, "training_iteration": 1})
    cb.on_trial_result(0, [t], t, {"stage/pre/loss": 3.0, "stage/pre/epoch": 1})
    t.num_failures, t.error = 1, "Traceback ...\nRuntimeError: node lost"
    cb.on_trial_recover(0, [t], t)
    cb.on_trial_start(0, [t], t)  # Tune restarts the same trial from its checkpoint
    cb.on_trial_result(0, [t], t, {"epoch": 2, "val_acc": 0.6, "loss": 0.8})
    t.status = "RUNNING"
    cb.on_experiment_end([t])  # Ctrl-C: Tune ends the experiment with the trial unfinished
    c = MlflowClient(paths.tracking_uri(lite_spec))
    exp = c.get_experiment_by_name("unit")
    assert {r.info.status for r in c.search_runs([exp.experiment_id])} == {"KILLED"}

    cb2 = MLflowCallback(lite_spec, resume=True, log=lambda m: None)  # `sweep run --resume`
    cb2.setup()
    cb2.on_trial_start(0, [t], t)
    # the killed driver's last snapshot had no checkpoint of this trial: it runs from epoch 1
    # again, and the epochs its run already has are not logged a second time
    cb2.on_trial_result(0, [t], t, {"epoch": 1, "val_acc": 0.55, "loss": 1.0})
    cb2.on_trial_result(0, [t], t, {"epoch": 2, "val_acc": 0.6, "loss": 0.8})
    t.last_result, t.checkpoint = {"epoch": 2, "val_acc": 0.6}, Checkpoint.from_directory(str(ckdir))
    cb2.on_trial_complete(0, [t], t)
    bad = FakeTrial(2, {"lr": 9.0, "batch_size": 32})
    cb2.on_trial_start(0, [t, bad], bad)
    bad.error = "Traceback (most recent call last):\n  ...\nNonFiniteLoss: loss is nan at epoch 1"
    cb2.on_trial_error(0, [t, bad], bad)
    report = cb2.close()
    assert "NOT sent" not in report and "rejected" not in report

    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kdtune.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = children(c, parents[0].info.run_id, exp.experiment_id)
    assert len(runs) == 2  # counted, not keyed: a dict by trial id would merge duplicates
    kids = {r.data.tags["kdtune.trial_id"]: r for r in runs}
    assert sorted(kids) == ["t00001", "t00002"]
    ok, failed = kids["t00001"], kids["t00002"]
    assert ok.info.status == "FINISHED" and ok.data.tags["kdtune.retries"] == "1"
    assert [(m.step, m.value) for m in c.get_metric_history(ok.info.run_id, "val_acc")] == [(1, 0.5), (2, 0.6)]
    assert [(m.step, m.value) for m in c.get_metric_history(ok.info.run_id, "stage/pre/loss")] == [(1, 3.0)]
    assert ok.data.params == {"lr": "0.1", "batch_size": "32"}
    assert [a.path for a in c.list_artifacts(ok.info.run_id, "checkpoint")] == ["checkpoint/checkpoint.pt"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["kdtune.error"] == "NonFiniteLoss: loss is nan at epoch 1"
    assert "error.txt" in [a.path for a in c.list_artifacts(failed.info.run_id)]


def test_a_resumed_driver_retires_runs_of_trials_its_snapshot_lacks(lite_spec):
    """A driver killed between Tune snapshots may have started a trial the restored experiment
    does not know (Tune runs it again under a new id): its run is ended KILLED, tagged and
    soft-deleted on resume, so every active child run is a trial of the experiment. Runs of
    trials the new driver started itself are kept whatever the order of events."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    from kdtune.tune.callbacks import MLflowCallback

    known, lost, fresh = (FakeTrial(n, {"lr": 0.1 * n}) for n in (1, 2, 3))
    cb = MLflowCallback(lite_spec, log=lambda m: None)
    cb.setup()
    for t in (known, lost):
        cb.on_trial_start(0, [known, lost], t)
        cb.on_trial_result(0, [known, lost], t, {"epoch": 1, "val_acc": 0.5})
    assert "NOT sent" not in cb.writer.close()  # SIGKILL: nothing ended, the runs stay RUNNING

    said: list[str] = []
    cb2 = MLflowCallback(lite_spec, resume=True, log=said.append)  # restored: `known` only
    cb2.setup()
    cb2.on_trial_start(0, [known, fresh], fresh)  # (a new trial heard before the first step)
    cb2.on_step_begin(0, [known, fresh])
    cb2.on_step_begin(0, [known, fresh])  # once per driver
    for t in (known, fresh):
        cb2.on_trial_start(0, [known, fresh], t)
        t.last_result = {"epoch": 1, "val_acc": 0.5}
        cb2.on_trial_complete(0, [known, fresh], t)
    cb2.close()

    c = MlflowClient(paths.tracking_uri(lite_spec))
    exp = c.get_experiment_by_name("unit").experiment_id
    (parent,) = [r for r in c.search_runs([exp]) if r.data.tags.get("kdtune.role") == "sweep"]
    kids = children(c, parent.info.run_id, exp)
    assert sorted(r.data.tags["kdtune.trial_id"] for r in kids) == ["t00001", "t00003"]
    assert {r.info.status for r in kids} == {"FINISHED"}
    (gone,) = c.search_runs([exp], run_view_type=ViewType.DELETED_ONLY)
    assert gone.data.tags["kdtune.trial_id"] == "t00002" and gone.info.status == "KILLED"
    assert "snapshot" in gone.data.tags["kdtune.orphaned"]
    assert [m for m in said if "1 run(s)" in m and "deleted" in m]


def test_child_runs_reads_every_page(lite_spec):
    """A sweep's trial runs past one search page (MLflow caps a page) are all found."""
    from mlflow import MlflowClient

    from kdtune.tracking.query import child_runs

    c = MlflowClient(paths.tracking_uri(lite_spec))
    exp = c.create_experiment("paged")
    parent = c.create_run(exp).info.run_id
    kids = {c.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id for _ in range(5)}
    c.create_run(exp)  # not a child
    assert {r.info.run_id for r in child_runs(c, exp, parent, page_size=2)} == kids


class Flaky:
    """A client whose calls fail while ``down`` is set (an MLflow outage)."""

    def __init__(self, real, down: threading.Event):
        self.real, self.down, self.failures = real, down, 0

    def __getattr__(self, name):
        fn = getattr(self.real, name)

        def call(*a, **kw):
            if self.down.is_set():
                self.failures += 1
                raise ConnectionError("connection refused (test outage)")
            return fn(*a, **kw)
        return call


def flaky_factory(down: threading.Event) -> tuple[list[Flaky], object]:
    """A client factory whose clients fail while ``down`` is set, and the clients it made."""
    from kdtune.tracking import client

    made: list[Flaky] = []

    def factory(uri):
        made.append(Flaky(client(uri), down))
        return made[-1]
    return made, factory


def test_outage_is_retried_then_saved_and_sent_later(lite_spec):
    from mlflow import MlflowClient

    from kdtune.tracking import PENDING_FILE, SweepWriter

    down = threading.Event()
    down.set()
    flaky, factory = flaky_factory(down)

    # 1. a short outage: retried with backoff, everything arrives, in order
    w = SweepWriter(lite_spec, client_factory=factory, backoff=(0.05, 0.2), log=lambda m: None)
    w.start_sweep()
    w.trial_start("a", "scratch_001", {"lr": 0.1})
    w.trial_metrics("a", [("val_acc", 0.5, 1)])
    def heal():  # the outage ends after a few failed attempts
        while not flaky or flaky[0].failures < 3:
            time.sleep(0.02)
        down.clear()

    threading.Thread(target=heal, daemon=True).start()
    w.trial_metrics("a", [("val_acc", 0.7, 2)])
    w.trial_end("a", "FINISHED")
    report = w.close(timeout=30)
    assert flaky[0].failures > 0 and "NOT sent" not in report
    c = MlflowClient(paths.tracking_uri(lite_spec))
    run = c.get_run(w.runs["a"])
    assert run.info.status == "FINISHED"
    assert [m.value for m in c.get_metric_history(run.info.run_id, "val_acc")] == [0.5, 0.7]

    # 2. MLflow down until the sweep ends: nothing is lost, the unsent writes are saved ...
    down.set()
    w2 = SweepWriter(lite_spec, resume=True, client_factory=factory, backoff=(0.05, 0.2), log=lambda m: None)
    w2.start_sweep()
    w2.retire_unknown(["a"])  # (judged by this driver's trials: not saved for another)
    w2.trial_start("b", "scratch_002", {"lr": 0.2})
    w2.trial_metrics("b", [("val_acc", 0.9, 1)])
    w2.trial_end("b", "FINISHED", reason=None)
    w2.end_sweep()
    report = w2.close(timeout=1)
    assert "5 NOT sent" in report and PENDING_FILE in report
    pending = paths.run_dir(lite_spec) / PENDING_FILE
    assert len(json.loads(pending.read_text())["ops"]) == 5
    # ... and the next `sweep run --resume` sends them (to the same parent run)
    down.clear()
    w3 = SweepWriter(lite_spec, resume=True, client_factory=factory, backoff=(0.05, 0.2), log=lambda m: None)
    w3.start_sweep()
    assert "NOT sent" not in w3.close(timeout=30)
    assert not pending.exists()
    exp = c.get_experiment_by_name("unit")
    parents = c.search_runs([exp.experiment_id], filter_string="tags.`kdtune.role` = 'sweep'")
    assert len(parents) == 1
    kids = children(c, parents[0].info.run_id, exp.experiment_id)
    assert sorted(k.data.tags["kdtune.trial_id"] for k in kids) == ["a", "b"]
    b = next(k for k in kids if k.data.tags["kdtune.trial_id"] == "b")
    assert b.info.status == "FINISHED" and b.data.metrics["val_acc"] == 0.9


def test_a_found_run_drops_only_points_it_has_even_through_an_outage(lite_spec):
    """A run found again (a restarted driver) skips the epochs it already has; a new point whose
    first call fails is still sent by the retry (it counts as logged only once MLflow took it)."""
    from mlflow import MlflowClient

    from kdtune.tracking import SweepWriter

    down = threading.Event()
    flaky, factory = flaky_factory(down)

    w = SweepWriter(lite_spec, client_factory=factory, backoff=(0.05, 0.2), log=lambda m: None)
    w.start_sweep()
    w.trial_start("a", "scratch_001", {"lr": 0.1})
    w.trial_metrics("a", [("val_acc", 0.5, 1)])
    w.close(timeout=30)

    w2 = SweepWriter(lite_spec, resume=True, client_factory=factory, backoff=(0.05, 0.2), log=lambda m: None)
    w2.start_sweep()
    w2.trial_start("a", "scratch_001", {"lr": 0.1})
    while w2.pending():  # the run is found again before the outage starts
        time.sleep(0.02)
    down.set()

    def heal():
        while flaky[-1].failures < 3:
            time.sleep(0.02)
        down.clear()

    threading.Thread(target=heal, daemon=True).start()
    w2.trial_metrics("a", [("val_acc", 0.55, 1), ("val_acc", 0.7, 2)])  # epoch 1 again, then 2
    w2.trial_end("a", "FINISHED")
    assert "NOT sent" not in w2.close(timeout=30)
    c = MlflowClient(paths.tracking_uri(lite_spec))
    assert [(m.step, m.value) for m in c.get_metric_history(w2.runs["a"], "val_acc")] == [(1, 0.5), (2, 0.7)]

"""Seeing a sweep: the answer on the MLflow parent run, `kdtune report` in a browser, the parent
run's page in the MLflow UI, `kdtune dashboard` (optuna-dashboard), and the promote hint run
as printed.

One real local Ray sweep on digits (4 trials × 2 epochs, default sqlite stores), then its
``--resume`` (the searcher, RDB storage included, unpickled by Tune; the summary re-logged).
Servers run on 127.0.0.1 and free ports in their own sessions, stopped by process-group id.
Browser checks use headless Chromium: missing, they skip (and fail under ``CI=true``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml

from kdtune.report import TrialRecord
from kdtune.spec import SpecError, parse_spec
from kdtune.spec.paths import run_dir, tracking_uri
from kdtune.tracking.summary import (STALE_TAG, leaderboard, log_best_params, optuna_storage_url,
                                     trial_curve)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parent.parent
from test_tracking import free_port, start, stop, wait_http

PY = sys.executable
KDTUNE = str(Path(PY).with_name("kdtune"))


# --------------------------------------------------------------------------- helpers
# (services: the same helpers as tests/test_tracking.py, imported from there)
def cli(*args: str):
    from typer.testing import CliRunner

    from kdtune.cli.app import app  # lazy: the commands' modules import torch and Ray

    return CliRunner().invoke(app, list(args))


def need_browser() -> tuple[str, str]:
    """Chromium and its driver; skip naming what is missing (fail under CI=true)."""
    missing = []
    try:
        import selenium  # noqa: F401  (lazy: optional, the dev extra)
    except ImportError:
        missing.append("selenium (pip install selenium)")
    exe, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not exe:
        missing.append("chromium (apt-get install chromium)")
    if not driver:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if missing:
        msg = "the browser check needs " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return exe, driver


def chromium(tmp_path: Path):
    """Headless Chromium through selenium (see ``need_browser``)."""
    from selenium import webdriver  # lazy: optional, the dev extra

    exe, driver = need_browser()
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update", "--no-first-run",
              "--disable-sync", "--window-size=1400,1800", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(a)
    opts.binary_location = exe
    return webdriver.Chrome(service=webdriver.ChromeService(driver), options=opts)


def png_not_blank(path: Path) -> None:
    from matplotlib.image import imread  # lazy: matplotlib takes seconds to import

    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.std() > 0, f"{path.name} is blank"


# --------------------------------------------------------------------------- the sweep
@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    """The sweep (`kdtune.api.sweep`), then its `--resume`; both logs kept."""
    import kdtune  # lazy: torch and Ray load only when the sweep runs

    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "KDTUNE_OPTUNA_STORAGE")}
    d = tmp_path_factory.mktemp("obs")
    spec_file = d / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "obs", "data": {"name": "digits", "train_limit": 300, "val_fraction": 0.2},
        "teacher": {"model": "cnn4", "epochs": 1},
        "student": {"model": "cnn_small", "kwargs": {"width": 0.25}},
        "method": "kd", "epochs": 2, "search": {"num_samples": 4},
        "scheduler": {"type": "none"}, "storage": str(d / "res")}))
    try:
        spec = kdtune.load_spec(spec_file)
        first: list[str] = []
        result = kdtune.sweep(spec, log=first.append)
        again: list[str] = []
        resumed = kdtune.sweep(spec, resume=True, log=again.append)
        yield {"dir": d, "spec": spec, "spec_file": spec_file, "result": result,
               "resumed": resumed, "logs": (first, again)}
    finally:
        import ray  # lazy: as above

        ray.shutdown()  # the sweep started a local Ray in this process: later tests expect none
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v


@pytest.fixture(scope="module")
def parent(obs):
    from mlflow import MlflowClient  # lazy: MLflow takes seconds to import

    c = MlflowClient(tracking_uri(obs["spec"]))
    run_id = (run_dir(obs["spec"]) / "mlflow_parent_run_id").read_text().strip()
    return c, c.get_run(run_id)


def test_parent_run_carries_the_answer(obs, parent, tmp_path):
    c, run = parent
    best = obs["resumed"].best
    assert best is not None and best.name == obs["result"].best.name
    assert run.data.metrics["best_val_acc"] == pytest.approx(best.value)
    kids = {r.info.run_name: r for r in c.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")}
    assert len(kids) == 4
    assert run.data.tags["kdtune.best_run_id"] == kids[best.name].info.run_id
    assert run.data.tags["kdtune.best_trial"] == best.name
    logged = {k.removeprefix("best."): v for k, v in run.data.params.items() if k.startswith("best.")}
    assert logged and logged == {k: v for k, v in kids[best.name].data.params.items() if k in logged}
    assert set(logged) == set(best.config)
    assert "kdtune.best_params_stale" not in run.data.tags  # the resume found the same best

    top = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"best.yaml", "best_params.json", "leaderboard.json", "plots"} <= top
    got = Path(c.download_artifacts(run.info.run_id, "", str(tmp_path)))
    assert (got / "best.yaml").read_text() == Path(obs["resumed"].best_yaml).read_text()
    assert json.loads((got / "best_params.json").read_text())["trial"] == best.name
    table = json.loads((got / "leaderboard.json").read_text())
    assert len(table["data"]) == 4  # rewritten on resume, not appended to
    row = dict(zip(table["columns"], table["data"][0]))
    assert (row["rank"], row["trial"], row["val_acc"]) == (1, best.name, pytest.approx(best.value))
    pngs = sorted((got / "plots").glob("*.png"))
    assert len(pngs) >= 3, pngs
    for p in pngs:
        png_not_blank(p)
        assert p.with_suffix(".html").is_file()
    tags = json.loads(run.data.tags["mlflow.loggedArtifacts"])
    assert {"path": "leaderboard.json", "type": "table"} in tags  # what log_table records


def test_both_runs_logged_their_summary(obs):
    for lines in obs["logs"]:
        text = "\n".join(lines)
        assert re.search(r"MLflow: parent run \w+: best_val_acc [\d.]+ \(kd_\d+\)", text), text[-2000:]
        assert "summary not written" not in text


def test_resume_reloads_the_persisted_study(obs):
    """One Optuna study per sweep in <storage>/optuna.db, kept across `--resume` (Tune unpickles
    the searcher with its storage); the resumed sweep keeps the same trials and parent run."""
    db = f"sqlite:///{obs['dir'] / 'res' / 'optuna.db'}"
    (study,) = optuna.get_all_study_summaries(db)
    assert study.study_name == "obs"
    trials = optuna.load_study(study_name="obs", storage=db).trials
    assert len(trials) == 4
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    values = sorted(t.value for t in trials)
    assert values == pytest.approx(sorted(t.value for t in obs["result"].trials))
    assert [t.name for t in obs["resumed"].trials] == [t.name for t in obs["result"].trials]


def test_best_params_are_logged_new_or_equal_only(tmp_path):
    """MLflow refuses a param's new value: a changed best keeps the old params, says so in a
    tag, and the tag goes once the params agree again."""
    from mlflow import MlflowClient  # lazy: MLflow takes seconds to import

    c = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run_id = c.create_run(c.create_experiment("x", (tmp_path / "a").as_uri())).info.run_id
    assert log_best_params(c, run_id, {"lr": 0.1, "opt": "sgd"}) == []
    assert log_best_params(c, run_id, {"lr": 0.2, "opt": "sgd", "t": 4}) == ["best.lr"]
    run = c.get_run(run_id)
    assert run.data.params == {"best.lr": "0.1", "best.opt": "sgd", "best.t": "4"}
    assert run.data.tags[STALE_TAG] == "best.lr"
    assert log_best_params(c, run_id, {"lr": 0.1, "opt": "sgd", "t": 4}) == []
    assert STALE_TAG not in c.get_run(run_id).data.tags


def test_curves_skip_pre_stage_rows_and_keep_each_epochs_last_value(tmp_path):
    rows = [{"stage/ft/loss": 1.0, "stage/ft/epoch": 1}, {"epoch": 1, "val_acc": 0.5},
            {"epoch": 2, "val_acc": 0.6}, {"epoch": 2, "val_acc": 0.7}, {"epoch": 3, "loss": 1.0}]
    trial = tmp_path / "kd_001_abc12"
    trial.mkdir()
    # the last line cut short, as a killed trial leaves it
    (trial / "result.json").write_text("\n".join(json.dumps(r) for r in rows) + '\n{"epoch": 4, "va')
    assert trial_curve(str(trial), "val_acc") == [(1, 0.5), (2, 0.7)]
    assert trial_curve(str(tmp_path / "gone"), "val_acc") == []


def test_leaderboard_is_the_sweeps_ranking_in_log_table_format():
    recs = [TrialRecord("kd_003", 3, 0.9, 2, "completed", {"lr": 0.1}, run_id="c"),
            TrialRecord("kd_001", 1, None, 1, "error", {"lr": 0.2}, run_id="a"),
            TrialRecord("kd_002", 2, 0.9, 2, "completed", {"lr": 0.3, "t": 2}, run_id="b")]
    table = leaderboard(recs, "val_acc", "max")
    assert table["columns"] == ["rank", "trial", "val_acc", "epochs", "status", "run_id", "lr", "t"]
    assert [r[:2] for r in table["data"]] == [[1, "kd_002"], [2, "kd_003"], [None, "kd_001"]]
    assert table["data"][1][-1] is None  # a parameter the trial does not have
    json.dumps(table, allow_nan=False)


def test_optuna_storage_beside_a_local_store_else_the_env(tmp_path, monkeypatch):
    monkeypatch.delenv("KDTUNE_OPTUNA_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = parse_spec({"name": "x", "storage": str(tmp_path)})
    assert optuna_storage_url(spec) == f"sqlite:///{tmp_path / 'optuna.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert optuna_storage_url(spec) is None  # never the tracking database
    monkeypatch.setenv("KDTUNE_OPTUNA_STORAGE", "postgresql://u@db/optuna")
    assert optuna_storage_url(spec) == "postgresql://u@db/optuna"


# --------------------------------------------------------------------------- kdtune report
def test_report_in_headless_chromium(obs, tmp_path):
    """`kdtune report` → <run_dir>/report.html; Chromium, with the network blocked, shows the
    best trial, its value and the plots; the screenshot also goes to docs/report.png."""
    need_browser()
    from selenium.webdriver.common.by import By  # lazy: optional, the dev extra
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    r = cli("report", "--spec", str(obs["spec_file"]))
    assert r.exit_code == 0, r.output
    path = obs["dir"] / "res" / "obs" / "report.html"
    assert f"report: {path}" in r.output and path.is_file()
    markup = re.sub(r"(<script\b[^>]*>).*?</script>", r"\1</script>", path.read_text(), flags=re.S)
    assert not re.search(r"""<script[^>]*\bsrc=|(src|href)=["']?(https?:)?//""", markup)
    best = obs["resumed"].best
    browser = chromium(tmp_path)
    try:
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["http://*", "https://*"]})
        browser.get(path.as_uri())
        wait = WebDriverWait(browser, 60)
        shown = wait.until(EC.presence_of_element_located((By.ID, "best-obs"))).text
        assert best.name in shown and f"{best.value:.6g}" in shown, shown
        wait.until(EC.presence_of_element_located(
            (By.CSS_SELECTOR, "#obs-optimization_history .main-svg")))
        assert len(browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) >= 3
        shot = tmp_path / "report.png"
        browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    png_not_blank(shot)
    shutil.copyfile(shot, ROOT / "docs" / "report.png")


# --------------------------------------------------------------------------- the MLflow UI
def test_mlflow_ui_shows_the_best_on_the_parent_run_page(obs, parent, tmp_path):
    need_browser()  # before a server starts
    from selenium.webdriver.common.by import By  # lazy: optional, the dev extra
    from selenium.webdriver.support.ui import WebDriverWait

    c, run = parent
    db = obs["dir"] / "res" / "mlflow.db"
    port = free_port()
    proc = start([KDTUNE, "ui", "--backend-store-uri", f"sqlite:///{db}", "--port", str(port)],
                 tmp_path / "ui.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        browser = chromium(tmp_path)
        try:
            browser.get(f"http://127.0.0.1:{port}/#/experiments/{run.info.experiment_id}"
                        f"/runs/{run.info.run_id}")
            value = str(run.data.metrics["best_val_acc"])
            body = lambda b: b.find_element(By.TAG_NAME, "body").text  # noqa: E731
            WebDriverWait(browser, 90).until(lambda b: "best_val_acc" in body(b) and value in body(b))
            browser.save_screenshot(str(tmp_path / "parent.png"))
        finally:
            browser.quit()
    finally:
        stop(proc)
    png_not_blank(tmp_path / "parent.png")


# --------------------------------------------------------------------------- kdtune dashboard
def test_dashboard_serves_the_study_on_loopback(obs, tmp_path):
    port = free_port()
    proc = start([KDTUNE, "dashboard", "--spec", str(obs["spec_file"]), "--port", str(port)],
                 tmp_path / "dashboard.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/api/studies", proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as resp:
            studies = json.load(resp)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["obs"]
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
        if out.returncode == 0:  # (iproute2 present) bound to loopback only
            assert out.stdout.strip() and all("127.0.0.1:" in ln for ln in out.stdout.splitlines())
    finally:
        stop(proc)
    assert f"http://127.0.0.1:{port}" in (tmp_path / "dashboard.log").read_text()


def test_dashboard_without_a_study_store_exits_2(tmp_path, monkeypatch):
    monkeypatch.delenv("KDTUNE_OPTUNA_STORAGE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    from kdtune import api  # lazy: imports torch and Ray

    with pytest.raises(SpecError, match="KDTUNE_OPTUNA_STORAGE"):
        api.dashboard_command(parse_spec({"name": "x", "storage": str(tmp_path)}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(SpecError, match="no Optuna studies"):
        api.dashboard_command(parse_spec({"name": "x", "storage": str(tmp_path)}))


# --------------------------------------------------------------------------- the promote hint
def test_promote_hint_runs_as_printed(obs, tmp_path):
    r = cli("promote", "--spec", str(obs["spec_file"]))
    assert r.exit_code == 0, r.output
    (hint,) = [ln.removeprefix("load it: ") for ln in r.output.splitlines() if ln.startswith("load it: ")]
    # a user with kdtune's environment activated: its python first on PATH
    env = {**os.environ, "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryDirectory(dir=tmp_path) as cwd:
        out = subprocess.run(hint, shell=True, cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert re.search(r"\w+\(", out.stdout), out.stdout[-2000:]  # the module's repr

"""Security (issue 9): nothing unpickles code, artifact names stay inside, everything binds
127.0.0.1, MLflow basic auth works with credentials from the environment, and no secret is
written or printed.

The planted payloads create a marker file when unpickled (``open(marker, "w")``): each test
shows the load is refused *and* the marker does not exist. The basic-auth test runs a real
``mlflow server --app-name basic-auth`` on 127.0.0.1 and one tiny ``kdtune sweep run`` (its own
local Ray, whose sockets are checked while it runs) with the password in the tracking URI and
a fake AWS secret in the environment; then every file written and all output is searched.
"""

from __future__ import annotations

import importlib.util
import ast
import os
import pickle
import re
import secrets
import subprocess
import tempfile
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import require
import torch
import yaml
from typer.testing import CliRunner

from test_config import base
from test_tracking import free_port, start, stop, wait_http

ROOT = Path(__file__).resolve().parents[1]
KDTUNE = str(Path(sys.executable).parent / "kdtune")


class Payload:
    """Unpickling this runs ``open(marker, "w")``: the marker appearing means code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path, raw: bool = False) -> Path:
    """A checkpoint-looking file whose pickle carries the payload (torch's zip format, or a
    bare pickle)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"student": Payload(marker), "arch": {"name": "cnn_small"}, "classes": [0, 1]}
    if raw:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    else:
        torch.save(obj, path)
    assert not marker.exists()
    return path


def cli(*args: str):
    from kdtune.cli.app import app

    return CliRunner().invoke(app, list(args))


def one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1, (r.exit_code, r.output, r.stderr)
    return lines[0]


# =========================================================================== weights only
@pytest.mark.parametrize("raw", [False, True], ids=["torch-zip", "bare-pickle"])
def test_planted_teacher_checkpoint_is_refused_before_anything_runs(tmp_path, monkeypatch, raw):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    evil = plant(tmp_path / "teacher.pt", marker, raw)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(base(method="kd", storage=str(tmp_path / "res"),
                                        teacher={"model": "cnn4", "checkpoint": str(evil)})))
    for args in (["sweep", "run", str(spec)], ["train", str(spec)]):
        line = one_line(cli(*args))
        assert f"teacher.checkpoint: '{evil}' refused: not a kdtune checkpoint that loads weights-only" in line
        assert "UnpicklingError" in line and "weights_only=False" not in line
    assert not marker.exists() and not (tmp_path / "res").exists()


def test_planted_trial_checkpoint_is_refused_on_restore(tmp_path, monkeypatch):
    """The trainable's restore path (Tune hands a retried or resumed trial its last checkpoint)
    loads weights-only: the payload raises before the trial's code runs."""
    from ray import tune

    from kdtune.spec import parse_spec
    from kdtune.spec.paths import CHECKPOINT
    from kdtune.tune import trainable

    marker = tmp_path / "pwned"
    plant(tmp_path / "ckpt" / CHECKPOINT, marker)
    monkeypatch.setattr(trainable.tune, "get_checkpoint",
                        lambda: tune.Checkpoint.from_directory(str(tmp_path / "ckpt")))
    monkeypatch.setattr(trainable.tune, "get_context",
                        lambda: type("Ctx", (), {"get_trial_name": lambda self: "kd_001"})())
    ran = []
    spec = parse_spec(base(storage=str(tmp_path / "res")))
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        trainable.run_in_tune({}, spec.model_dump_json(), None, lambda *a, **k: ran.append(1))
    assert not ran and not marker.exists()


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A sqlite MLflow store with one run whose checkpoint artifact is a planted payload."""
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("evil", artifact_location=(tmp_path / "arts").as_uri())
    run = c.create_run(exp, run_name="evil_001")
    marker = tmp_path / "pwned"
    c.log_artifact(run.info.run_id, str(plant(tmp_path / "up" / "checkpoint.pt", marker)), "checkpoint")
    c.set_terminated(run.info.run_id)
    return {"uri": uri, "client": c, "run_id": run.info.run_id, "marker": marker}


def test_promote_refuses_a_planted_checkpoint(store):
    line = one_line(cli("promote", "--run-id", store["run_id"], "--tracking-uri", store["uri"]))
    assert f"run {store['run_id']}: checkpoint/checkpoint.pt is not a loadable kdtune checkpoint" in line
    assert "UnpicklingError: Unsupported global" in line
    assert not store["marker"].exists()
    assert store["client"].search_registered_models() == []  # nothing registered


def test_registered_model_teacher_is_loaded_weights_only(store, tmp_path, monkeypatch):
    """A `models:/NAME@alias` teacher whose files hold a payload: downloaded, then refused."""
    c = store["client"]
    c.create_registered_model("evil")
    mv = c.create_model_version("evil", f"runs:/{store['run_id']}/checkpoint", run_id=store["run_id"])
    c.set_registered_model_alias("evil", "champion", mv.version)
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(base(method="kd", storage=str(tmp_path / "res"),
                                        tracking={"uri": store["uri"]},
                                        teacher={"model": "cnn4", "checkpoint": "models:/evil@champion"})))
    line = one_line(cli("train", str(spec)))
    assert "teacher.checkpoint:" in line and "refused" in line and "Unsupported global" in line
    assert not store["marker"].exists()


def test_planted_dataset_batch_is_refused(tmp_path, monkeypatch):
    """CIFAR's batches are pickles (its format): read with an unpickler that allows only arrays
    and plain data."""
    from test_data import write_cifar10

    monkeypatch.chdir(tmp_path)
    write_cifar10(tmp_path / "data")
    marker = tmp_path / "pwned"
    with open(tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": Payload(marker), "labels": []}, f)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(base(storage=str(tmp_path / "res"),
                                        data={"name": "cifar10", "root": str(tmp_path / "data")})))
    line = one_line(cli("sweep", "run", str(spec)))
    assert "data.name: cifar10 cannot be loaded: io.open is not allowed in a dataset batch" in line
    assert not marker.exists()


def test_no_code_path_unpickles_without_restriction():
    """Every torch.load in kdtune passes weights_only=True; nothing calls pickle.load(s),
    yaml.load, eval or exec (config is data)."""
    bad = []
    for path in sorted((ROOT / "kdtune").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f"{getattr(f.value, 'id', '?')}.{f.attr}" if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            where = f"{path.relative_to(ROOT)}:{node.lineno} {name}"
            if name == "torch.load":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    bad.append(where)
            elif name in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads",
                          "yaml.load", "eval", "exec", "marshal.loads", "dill.load", "dill.loads"):
                bad.append(where)
    assert not bad, bad


# =========================================================================== names and paths
@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "x\\y", "", "ok name"])
def test_registered_names_cannot_be_paths(name):
    from kdtune.registry import Registry

    with pytest.raises(ValueError, match="use letters, digits"):
        Registry("method").register(name, object())


def test_registry_names_are_safe_and_models_uris_cannot_climb(tmp_path):
    import kdtune.methods  # noqa: F401
    import kdtune.models  # noqa: F401
    from kdtune.spec import SpecError
    from kdtune.registry import DATASETS, METHODS, MODELS
    from kdtune.tracking import parse_models_uri

    for reg in (METHODS, MODELS, DATASETS):
        assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", n) and ".." not in n for n in reg.names())
    for uri in ("models:/../x/1", "models:/..@champion", "models:/a\\..@x", "models:/./3"):
        with pytest.raises(SpecError, match="is not models:/NAME@alias"):
            parse_models_uri(uri)


def test_best_yaml_goes_beside_the_results_whatever_the_store_says(tmp_path, monkeypatch):
    """`kdtune best` writes best.yaml to <storage>/<sweep>; a tampered `kdtune.run_dir` tag in
    the tracking store cannot send it elsewhere."""
    from mlflow import MlflowClient

    from kdtune.spec import dump_spec, parse_spec
    from kdtune.tracking import write_best_yaml

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    run = c.create_run(c.create_experiment("sw", artifact_location=(tmp_path / "arts").as_uri()))
    spec = parse_spec(base(name="sw", storage=str(tmp_path / "store")))
    c.log_text(run.info.run_id, dump_spec(spec), "spec.yaml")
    best = {"sweep": "sw", "metric": "val_acc", "run_dir": str(tmp_path / "elsewhere" / "etc"),
            "top": [{"run_id": run.info.run_id, "run_name": "kd_001", "value": 0.5, "epoch": 1}]}
    path = write_best_yaml(uri, best)
    assert path == tmp_path / "store" / "sw" / "best.yaml" and path.is_file()
    assert not (tmp_path / "elsewhere").exists()


# =========================================================================== 127.0.0.1
def test_ui_binds_loopback():
    from kdtune.tracking import ui_command

    cmd = ui_command("sqlite:////tmp/x.db", 5000, "/tmp/arts")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    r = cli("ui", "--help")
    assert "--host" not in r.output  # no way to widen it by accident


def test_compose_publishes_only_on_loopback():
    stack = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    published = [(name, p) for name, svc in stack["services"].items() for p in svc.get("ports", [])]
    assert published, "the stack publishes its UIs"
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), (name, port)


def test_cluster_script_binds_loopback():
    """clusters/local.sh: every node on 127.0.0.1 (the sockets themselves are checked while its
    cluster runs: tests/test_cluster.py `test_local_cluster_listens_on_loopback_only`)."""
    text = (ROOT / "clusters" / "local.sh").read_text()
    assert "--node-ip-address=127.0.0.1" in text and "--dashboard-host=127.0.0.1" in text
    assert "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in text
    assert "services.resolve_ip_for_localhost = lambda host: host" in text
    assert "0.0.0.0" not in text


def loopback(ip: str) -> bool:
    return ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def listening(root_pid: int) -> dict[tuple[str, int], str]:
    """(address, port) → process name, for every TCP socket the process tree listens on."""
    import psutil

    try:
        procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    pids = {p.pid: p for p in procs}
    out = {}
    for c in psutil.net_connections("inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            try:
                out[(c.laddr.ip, c.laddr.port)] = pids[c.pid].name()
            except psutil.NoSuchProcess:
                pass
    return out


# =========================================================================== basic auth + secrets
ADMIN_PW = "Adm1n-" + secrets.token_hex(8)        # the MLflow admin's password
AWS_SECRET = "AwsSecret-" + secrets.token_hex(8)   # a credential that only lives in the env


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth` on 127.0.0.1 (sqlite runs and users)."""
    require(importlib.util.find_spec("flask_wtf") is not None,
            "mlflow[auth] (kdtune's `server` extra) is not installed")
    d = tmp_path_factory.mktemp("auth")
    (d / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{d / 'basic_auth.db'}\n"
        f"admin_username = admin\nadmin_password = {ADMIN_PW}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    proc = start([sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
                  "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
                  "--artifacts-destination", str(d / "artifacts"),
                  "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                 d / "server.log",
                 env={"MLFLOW_AUTH_CONFIG_PATH": str(d / "basic_auth.ini"),
                      "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "dir": d}
    finally:
        stop(proc)


def small_spec(path: Path, uri: str, name: str = "secure") -> Path:
    path.write_text(yaml.safe_dump({
        "name": name, "data": {"name": "digits", "train_limit": 200, "val_fraction": 0.2},
        "student": {"model": "cnn_small", "kwargs": {"width": 0.25}}, "method": "scratch",
        "epochs": 1, "search": {"num_samples": 1}, "scheduler": {"type": "none"},
        "resources": {"cpu": 1, "gpu": 0}, "storage": str(path.parent / "res"),
        "tracking": {"uri": uri}}))
    return path


def test_server_without_or_with_wrong_credentials_is_refused_before_ray(auth_server, tmp_path, monkeypatch):
    import ray

    ray.shutdown()  # a Ray an earlier test left in this process: this command must start none
    monkeypatch.chdir(tmp_path)
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    spec = small_spec(tmp_path / "spec.yaml", auth_server["url"])
    line = one_line(cli("sweep", "run", str(spec)))
    assert line == (f"error: tracking.uri: the MLflow server at {auth_server['url']} needs credentials "
                    "(HTTP 401); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                    "MLFLOW_TRACKING_TOKEN)")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    line = one_line(cli("sweep", "run", str(spec)))
    assert "refused the credentials (HTTP 401)" in line and "not-the-password" not in line
    assert not ray.is_initialized() and not (tmp_path / "res").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sweep_with_a_password_in_the_uri_logs_and_leaks_nothing(auth_server, tmp_path):
    """A real sweep (own local Ray) logs to the basic-auth server with `http://admin:PW@…` as
    tracking URI and an AWS secret in its environment. While it runs, every socket its Ray
    listens on is on 127.0.0.1. Afterwards: the runs are there (read with env credentials);
    neither secret is in any file the sweep wrote, in the server's store or artifacts, in
    Ray's session logs, or in the output; the logged URI reads `http://admin:***@…`."""
    from mlflow import MlflowClient

    uri = f"http://admin:{ADMIN_PW}@127.0.0.1:{auth_server['port']}"
    spec = small_spec(tmp_path / "spec.yaml", uri)  # (the input itself holds the password)
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="300", AWS_SECRET_ACCESS_KEY=AWS_SECRET)
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(k, None)
    started = time.time()
    proc = subprocess.Popen([KDTUNE, "sweep", "run", str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, cwd=tmp_path, text=True)
    seen: dict = {}
    out_chunks: list[str] = []
    reader = threading.Thread(target=lambda: out_chunks.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        seen.update(listening(proc.pid))
        time.sleep(0.5)
    reader.join(30)
    out = "".join(out_chunks)
    (tmp_path / "sweep.out").write_text(out)
    assert proc.returncode == 0, out[-4000:]
    names = {n for n in seen.values()}
    assert {"gcs_server", "raylet"} <= names, seen  # the sweep's own Ray was seen running
    wide = {k: v for k, v in seen.items() if not loopback(k[0])}
    assert not wide, f"listening beyond 127.0.0.1: {wide}"

    c = MlflowClient(f"http://127.0.0.1:{auth_server['port']}")
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "admin", ADMIN_PW
    try:
        exp = c.get_experiment_by_name("secure")
        runs = c.search_runs([exp.experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("kdtune.role") == "sweep"]
        kids = [r for r in runs if r.data.tags.get("kdtune.role") == "trial"]
        assert len(kids) == 1 and kids[0].info.status == "FINISHED"
        assert parent.data.params["tracking.uri"] == f"http://admin:***@127.0.0.1:{auth_server['port']}"
        logged = [*map(str, parent.data.params.values()), *map(str, parent.data.tags.values())]
        for r in (parent, kids[0]):
            logged += [*map(str, r.data.params.values()), *map(str, r.data.tags.values())]
            for a in ("spec.yaml", "config.yaml"):
                if a in [x.path for x in c.list_artifacts(r.info.run_id)]:
                    logged.append(Path(c.download_artifacts(r.info.run_id, a, str(tmp_path))).read_text())
        # env credentials work for the read side too (`kdtune sweep list`)
        r = cli("sweep", "list", "--tracking-uri", f"http://127.0.0.1:{auth_server['port']}", "--json")
        assert r.exit_code == 0 and '"sweep": "secure"' in r.stdout, r.output
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME")
        os.environ.pop("MLFLOW_TRACKING_PASSWORD")

    # this sweep's Ray's own logs: the session folders its local Ray made while the test ran
    sessions = [p / "logs" for p in Path(tempfile.gettempdir(), "ray").glob("session_2*")
                if p.stat().st_mtime >= started - 1 and (p / "logs").is_dir()]
    assert sessions, "no Ray session of this sweep found: its logs would go unscanned"
    places = [tmp_path / "res", auth_server["dir"] / "artifacts", auth_server["dir"] / "mlflow.db",
              *sessions]
    leaks = [f"output: {s!r}" for s in (ADMIN_PW, AWS_SECRET) if s in out]
    leaks += [f"MLflow: {s!r}" for s in (ADMIN_PW, AWS_SECRET) if any(s in text for text in logged)]
    searched = 0
    for place in places:
        for f in ([place] if place.is_file() else place.rglob("*")):
            if f.is_file() and f.stat().st_size < 50 << 20:
                data = f.read_bytes()
                searched += 1
                leaks += [f"{f}: {s!r}" for s in (ADMIN_PW, AWS_SECRET) if s.encode() in data]
    assert searched > 20, places
    assert not leaks, leaks
    assert "spec.yaml" in {p.name for p in (tmp_path / "res").rglob("*")}  # (the files exist)

"""Reliability (issue 9): bad input stops before anything starts; trial, worker and tracking
faults are recorded and survived. (Driver faults: tests/test_sweep.py's
``test_resume_after_the_driver_is_killed``, which also checks the MLflow runs.)

Faults are injected by the test plugin ``tests/plugins/kdtune_faults.py`` (methods
``fault_raise``, ``fault_nan``, ``fault_oom``, ``fault_kill``, ``slow``), registered through
kdtune's ordinary entry-point plugin mechanism when ``tests/plugins`` is on ``PYTHONPATH``:
the sweeps run ``kdtune sweep run`` as a subprocess on a module Ray (2 CPUs) whose workers
inherit that path. Everything is tiny: digits (200 images), cnn_small ×0.25, ≤ 3 epochs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from test_config import BAD, REGISTRY_BAD, base
from test_tracking import free_port, start, stop, wait_http

from kdtune.spec import paths

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "plugins"
KDTUNE = str(Path(sys.executable).parent / "kdtune")

TINY = {"data": {"name": "digits", "train_limit": 200, "val_fraction": 0.2},
        "teacher": {"model": "cnn4", "epochs": 1}, "method": "kd",
        "student": {"model": "cnn_small", "kwargs": {"width": 0.25}},
        "scheduler": {"type": "none"}, "resources": {"cpu": 1, "gpu": 0}}


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# =========================================================================== 1. bad input
SPACE = "params:\n  temperature: {type: float, %s, default: 4.0}\n  alpha: {type: float, low: 0.0, high: 1.0, default: 0.1}\n  teacher_dropout: {type: float, low: 0.0, high: 0.5, default: 0.0}\n"


def _write_case_files(tmp: Path) -> None:
    """Files some cases point at."""
    (tmp / "garbage.pt").write_bytes(b"not a checkpoint at all")
    (tmp / "afile").write_text("x")
    for name, rng in {"lowhigh": "low: 8.0, high: 2.0", "log0": "low: 0.0, high: 8.0, log: true",
                      "below": "low: 0.0, high: 8.0"}.items():
        (tmp / f"{name}.yaml").write_text(SPACE % rng)
    (tmp / "emptycat.yaml").write_text(
        "params:\n  optimizer: {type: categorical, choices: [], default: sgd}\n")


# (id, spec patch, --set overrides, text every line must contain)
CASES = [
    ("unknown-method", {"method": "kdd"}, [], "method: unknown method 'kdd'"),
    ("unknown-model", {"teacher": {"model": "resnet9000"}}, [], "teacher.model: unknown model"),
    ("unknown-dataset", {"data": {"name": "imagenet"}}, [], "data.name: unknown dataset"),
    ("wrong-type", {"search": {"num_samples": "lots"}}, [], "search.num_samples"),
    ("wrong-type-union", {"student": {"model": "cnn_small", "classes": "some"}}, [],
     "student.classes: expected 'all', a list of class ids or {{first: K}} (got 'some')"),
    ("unknown-key", {"resources": {"gpus": 1}}, [], "resources.gpus"),
    ("low>=high", {"method": "kd", "search": {"space": "{tmp}/lowhigh.yaml"}}, [],
     "params.temperature: low (8.0) must be < high (2.0)"),
    ("log-low<=0", {"method": "kd", "search": {"space": "{tmp}/log0.yaml"}}, [],
     "params.temperature: a log range needs low > 0"),
    ("range-outside-params", {"method": "kd", "search": {"space": "{tmp}/below.yaml"}}, [],
     "params.temperature: low 0.0 in below.yaml is not allowed"),
    ("empty-categorical", {"method": "kd", "search": {"space": "{tmp}/emptycat.yaml"}}, [],
     "categorical needs a non-empty `choices` list"),
    ("temperature<=0", {"method": "kd", "params": {"temperature": 0}}, [], "params.temperature"),
    ("dropout>=1", {"method": "kd", "params": {"teacher_dropout": 1.0}}, [], "params.teacher_dropout"),
    ("dropout<0", {"method": "logit_l2", "params": {"teacher_dropout": -0.1}}, [], "params.teacher_dropout"),
    ("eps<=0", {"method": "trust_region", "params": {"eps": 0}}, [], "params.eps"),
    ("factor-ratio>1", {"method": "ft", "params": {"k": 1.5}}, [], "params.k"),
    ("factor-ratio<=0", {"method": "ft", "params": {"k": 0}}, [], "params.k"),
    ("aggregation-c<1", {"method": "kr", "params": {"c": 0}}, [], "params.c"),
    ("aggregation-c>layers", {"method": "kr", "params": {"c": 99}}, [], "params.c: c = 99 exceeds"),
    ("classes-out-of-range", {"teacher": {"model": "cnn4", "classes": [0, 10]}}, [], "teacher.classes"),
    ("classes-empty", {"student": {"model": "cnn_small", "classes": []}}, [], "student.classes"),
    ("g2s-not-subset", {"method": "kd", "teacher": {"model": "cnn4", "classes": {"first": 5}},
                        "student": {"model": "cnn_small", "classes": [7, 8]}}, [],
     "student.classes: [7, 8] must be a subset of teacher.classes"),
    ("epochs<1", {}, ["epochs=0"], "epochs"),
    ("teacher-epochs<1", {"teacher": {"model": "cnn4", "epochs": 0}}, [], "teacher.epochs"),
    ("gpu<0", {"resources": {"gpu": -0.5}}, [], "resources.gpu"),
    ("gpu>1-fraction", {"resources": {"gpu": 1.5}}, [], "resources.gpu: a gpu count above 1 must be whole"),
    ("gpu-not-1/n", {"resources": {"gpu": 0.3}}, [], "resources.gpu: fraction 0.3 does not divide one GPU"),
    ("cpu<=0", {"resources": {"cpu": 0}}, [], "resources.cpu"),
    ("memory<=0", {"resources": {"memory_gb": -1}}, [], "resources.memory_gb"),
    ("memory-with-gpu", {"resources": {"gpu": 0.5, "memory_gb": 1}}, [], "resources: memory_gb"),
    ("num_samples<1", {"search": {"num_samples": 0}}, [], "search.num_samples"),
    ("max_failures<0", {"max_failures": -1}, [], "max_failures"),
    ("teacher-checkpoint-missing", {"method": "kd", "teacher": {"model": "cnn4", "checkpoint": "{tmp}/nope.pt"}},
     [], "teacher.checkpoint: file"),
    ("teacher-checkpoint-garbage", {"method": "kd", "teacher": {"model": "cnn4", "checkpoint": "{tmp}/garbage.pt"}},
     [], "teacher.checkpoint: '{tmp}/garbage.pt' refused"),
    ("search-space-missing", {"method": "kd", "search": {"space": "{tmp}/nope.yaml"}}, [], "search.space"),
    ("bad-set", {}, ["epochs"], "--set 'epochs': expected KEY=VALUE"),
    ("tracking-not-answering", {"tracking": {"uri": "http://127.0.0.1:{port}"}}, [],
     "tracking.uri: the MLflow server at http://127.0.0.1:{port} does not answer"),
    ("tracking-not-a-folder", {"tracking": {"uri": "sqlite:///{tmp}/afile/mlflow.db"}}, [],
     "tracking.uri: sqlite:///{tmp}/afile/mlflow.db: '{tmp}/afile' is not a folder"),
]
# the cases 1-2 and more of their kind: found by building the models once on the meta
# device and by knowing what every trial reports (kdtune/checks.py), before Ray starts
CASES += [
    ("kwargs-typo", {"student": {"model": "cnn_small", "kwargs": {"widht": 0.5}}}, [],
     "student.kwargs.widht: cnn_small has no argument 'widht'; did you mean 'width'?"),
    ("teacher-kwargs-typo", {"method": "kd", "teacher": {"model": "cnn4", "kwargs": {"chanels": [8]}}}, [],
     "teacher.kwargs.chanels: cnn4 has no argument 'chanels'; did you mean 'channels'?"),
    ("kwargs-unknown", {"student": {"model": "resnet8", "kwargs": {"depth": 20}}}, [],
     "student.kwargs.depth: resnet8 has no argument 'depth'"),
    ("width<=0", {"student": {"model": "cnn_small", "kwargs": {"width": 0}}}, [],
     "student.kwargs.width: cnn_small: width must be a number > 0 (got 0)"),
    ("width-not-a-number", {"student": {"model": "cnn_small", "kwargs": {"width": "half"}}}, [],
     "student.kwargs.width: cnn_small: width must be a number > 0 (got 'half')"),
    ("channels-empty", {"student": {"model": "cnn_small", "kwargs": {"channels": []}}}, [],
     "student.kwargs.channels: cnn_small: channels must list at least one layer"),
    ("channels-zero", {"method": "kd", "teacher": {"model": "cnn4", "kwargs": {"channels": [8, 0, 8, 8]}}}, [],
     "teacher.kwargs: cnn4: channel counts must be whole numbers >= 1 (got 0)"),
    ("wrn-depth", {"method": "kd", "teacher": {"model": "wrn", "kwargs": {"depth": 12}}}, [],
     "teacher.kwargs.depth: wrn: depth must be 6n + 4"),
    ("wrn-widen<=0", {"method": "kd", "teacher": {"model": "wrn", "kwargs": {"widen_factor": 0}}}, [],
     "teacher.kwargs.widen_factor: wrn: widen_factor must be > 0"),
    ("mlp-no-hidden", {"student": {"model": "mlp", "kwargs": {"hidden": []}}}, [],
     "student.kwargs.hidden: mlp: hidden must list at least one layer size"),
    ("metric-unknown", {"method": "kd", "metric": "val_accuracy"}, [],
     "metric: 'val_accuracy' is never reported by kd; did you mean 'val_acc'?"),
    ("metric-other-method", {"method": "logit_l2", "metric": "soft"}, [],
     "metric: 'soft' is never reported by logit_l2"),
    ("metric-one-of-a-choice", {"method": ["kd", "logit_l2"], "metric": "soft"}, [],
     "metric: 'soft' is never reported by logit_l2"),
    ("metric-stage-term", {"method": "ft", "metric": "stage/paraphraser/reconstruction"}, [],
     "metric: 'stage/paraphraser/reconstruction' is never reported by ft"),
    ("spec-lacks-method", {"method": None}, [], "method: spec file"),
    ("spec-lacks-data", {"data": None}, [], "data: spec file"),
    ("spec-lacks-student", {"student": None}, [], "student: spec file"),
    ("spec-lacks-teacher", {"method": "kd", "teacher": None}, [], "teacher: spec file"),
]
# every schema/registry case of tests/test_config.py, now through the CLI contract too
CASES += [(f"config:{f}", patch, [], f) for patch, f in BAD]
CASES += [(f"config:{s.split(':')[0]}", patch, [], s.split(":")[0]) for patch, s in REGISTRY_BAD]
FILES = [  # (id, file content, text)
    ("not-yaml", "name: [unclosed", "not valid YAML at line"),
    ("not-a-mapping", "- a\n- b\n", "must be a YAML mapping, got list"),
    ("not-text", b"\xff\xfe\x00binary", "cannot be read"),
]


def _fill(obj, **kw):
    if isinstance(obj, str):
        return obj.format(**kw)
    if isinstance(obj, dict):
        return {k: _fill(v, **kw) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, **kw) for v in obj]
    return obj


def _one_line_exit_2(r, needle: str, tmp: Path) -> None:
    import ray

    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2, (r.exit_code, r.output, r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], (needle, lines[0])
    # nothing started, nothing written
    assert not ray.is_initialized()
    assert not list(tmp.rglob("mlflow.db")) and not (tmp / "res").exists()
    assert not (tmp / "kdtune-results").exists()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_exits_2_with_one_line_before_anything_starts(case, tmp_path, monkeypatch):
    from kdtune.cli.app import app

    name, patch, sets, needle = case
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KDTUNE_TRACKING_CHECK_S", "2")
    _write_case_files(tmp_path)
    kw = {"tmp": str(tmp_path), "port": free_port()}
    data = merge(base(storage=str(tmp_path / "res")), _fill(patch, **kw))
    data = {k: v for k, v in data.items() if not (v is None and k in ("data", "teacher", "student", "method"))}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    r = CliRunner().invoke(app, ["sweep", "run", str(spec), *(x for s in sets for x in ("--set", s))])
    _one_line_exit_2(r, _fill(needle, **kw), tmp_path)


@pytest.mark.parametrize("case", FILES, ids=[c[0] for c in FILES])
def test_unreadable_spec_files(case, tmp_path, monkeypatch):
    from kdtune.cli.app import app

    name, content, needle = case
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "spec.yaml"
    (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    for args in (["sweep", "run", str(p)], ["train", str(p)]):
        _one_line_exit_2(CliRunner().invoke(app, args), needle, tmp_path)
    _one_line_exit_2(CliRunner().invoke(app, ["sweep", "run", str(tmp_path / "missing.yaml")]),
                     "not found", tmp_path)


def test_tracking_env_uri_that_does_not_answer(tmp_path, monkeypatch):
    """The store named by MLFLOW_TRACKING_URI (no tracking.uri in the spec) is named as such."""
    from kdtune.cli.app import app

    monkeypatch.chdir(tmp_path)
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("KDTUNE_TRACKING_CHECK_S", "2")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(base(storage=str(tmp_path / "res"))))
    r = CliRunner().invoke(app, ["sweep", "run", str(spec)])
    _one_line_exit_2(r, f"MLFLOW_TRACKING_URI: the MLflow server at http://127.0.0.1:{port} does not "
                        "answer within 2s", tmp_path)


def test_a_second_driver_on_a_running_sweep_exits_2_naming_the_first(tmp_path, monkeypatch):
    """One driver per sweep: while a driver holds the sweep's lock, another ``sweep run
    --resume`` (or a new sweep of the same name) stops with one line before MLflow or Ray are
    touched. The lock dies with its holder, so a resume after a crash is never blocked."""
    import ray

    from kdtune.checks import load_spec
    from kdtune.cli.app import app
    from kdtune.spec.paths import experiment_path
    from kdtune.tune.lock import LOCK_FILE, driver_lock

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(base(storage=str(tmp_path / "res"))))
    path = experiment_path(load_spec(spec))
    for args in (["sweep", "run", str(spec)], ["sweep", "run", str(spec), "--resume"]):
        with driver_lock(path, "first"):
            r = CliRunner().invoke(app, args)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1, (r.exit_code, r.stderr)
        assert "is being run by another driver (pid %d on" % os.getpid() in lines[0], lines[0]
        assert not ray.is_initialized() and not list(tmp_path.rglob("mlflow.db"))
        assert sorted(p.name for p in Path(path).iterdir()) == [LOCK_FILE]
    # released: the next driver takes it (a process that dies releases it the same way)
    with driver_lock(path, "next"):
        assert f"pid {os.getpid()}" in Path(path, LOCK_FILE).read_text()


def test_messages_are_text_not_markup(tmp_path, monkeypatch):
    """A message holding brackets (a file `run[v2].yaml`) reaches the terminal whole: it is
    printed as text, not as Rich markup (which would swallow `[v2]`)."""
    from kdtune.cli.app import app

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["sweep", "run", str(tmp_path / "run[v2].yaml")])
    _one_line_exit_2(r, f"spec file '{tmp_path}/run[v2].yaml': not found", tmp_path)


def test_a_file_that_ends_early_is_named_not_aborted():
    """An EOFError (a pickle or array file cut short) in a command: click alone would print
    just "Aborted." and exit 1; kdtune prints the traceback and one line saying what ended."""
    import typer

    from kdtune.cli.common import guarded

    app = typer.Typer()

    @app.command()
    @guarded
    def load() -> None:
        import pickle

        pickle.loads(b"")

    r = CliRunner().invoke(app, [])
    assert r.exit_code == 1
    assert "EOFError: Ran out of input (a file ended early" in r.output
    assert 'pickle.loads(b"")' in r.output and "Aborted" not in r.output


# =========================================================================== shared Ray
@pytest.fixture(scope="module")
def ray_plugins():
    """A local Ray (2 CPUs) whose workers can import the fault plugin; sweeps attach with
    RAY_ADDRESS. Its processes inherit PYTHONPATH from this process at start."""
    import ray

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGINS), old) if p)
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def sweep_env(address: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, RAY_ADDRESS=address, PYTHONUNBUFFERED="1", COLUMNS="400",
               PYTHONPATH=os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH")) if p))
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def trial_rows(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.is_file() else []


def mlflow_runs(uri: str, name: str):
    """(parent run, {trial id: child run}) of the sweep ``name``."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("kdtune.role") == "sweep"]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    by_id = {k.data.tags["kdtune.trial_id"]: k for k in kids}
    assert len(by_id) == len(kids), "duplicate child runs"
    return c, parent, by_id


# =========================================================================== 2. trial faults
def test_memory_limit_is_enforced_and_restored(tmp_path):
    """`memory_limit(gb)`: an allocation beyond the cap fails inside the block as
    TrialOutOfMemory (no memory touched beyond the cap); the old limit is back afterwards (a
    reused worker runs the next trial uncapped). In a subprocess: the cap is per process."""
    code = """
import resource, torch
from kdtune.limits import TrialOutOfMemory, memory_limit
before = resource.getrlimit(resource.RLIMIT_AS)
try:
    with memory_limit(0.25):
        blocks = [torch.ones(32 << 20) for _ in range(16)]  # 16 x 128 MiB: 8x the cap
    print("NOT ENFORCED")
except TrialOutOfMemory as e:
    print("OOM", e)
assert resource.getrlimit(resource.RLIMIT_AS) == before
big = torch.ones(96 << 20)  # 384 MiB: fine again after the block
print("RESTORED", big.numel())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "OOM out of memory: the trial needed more than resources.memory_gb = 0.25 GB" in r.stdout
    assert "RESTORED" in r.stdout and "NOT ENFORCED" not in r.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_spec_error_found_in_a_trial_is_not_retried_and_ends_the_sweep(tmp_path, ray_plugins):
    """`fault_badarg` raises TypeError while building its extras (before any step): the first
    trial that hits it is not retried (max_failures 2), the sweep stops with exit 2 and one line,
    and what is left is what docs/reliability.md says: the trial's error.txt, the MLflow parent
    and that one child FAILED."""
    from mlflow import MlflowClient

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(merge(TINY, {
        "name": "fastfail", "method": "fault_badarg", "epochs": 2, "max_failures": 2,
        "search": {"num_samples": 6, "max_concurrent": 1}, "storage": str(tmp_path / "res")})))
    r = subprocess.run([KDTUNE, "sweep", "run", str(spec)], capture_output=True, text=True,
                       env=sweep_env(ray_plugins), timeout=540)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert len(lines) == 1 and "TypeError: Linear.__init__() got an unexpected keyword argument" \
        in lines[0] and "not retried" in lines[0], r.stderr[-2000:]
    errors = list((tmp_path / "res" / "fastfail").glob("*/error.txt"))
    assert len(errors) == 1 and "TypeError" in errors[0].read_text()  # one trial, one attempt
    c = MlflowClient(f"sqlite:///{tmp_path / 'res' / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("fastfail").experiment_id])
    (parent,) = [x for x in runs if x.data.tags.get("kdtune.role") == "sweep"]
    kids = [x for x in runs if x.data.tags.get("kdtune.role") == "trial"]
    assert parent.info.status == "FAILED"
    assert [k.info.status for k in kids] == ["FAILED"] and "TypeError" in kids[0].data.tags["kdtune.error"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_trials_failing_in_a_row_stop_the_sweep_naming_the_error(tmp_path, ray_plugins):
    """max_consecutive_failures: 2 trials of `fault_raise` fail (each after its retry is
    spent); the sweep stops there (exit 1) instead of running all 6, naming the error."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(merge(TINY, {
        "name": "streak", "method": "fault_raise", "epochs": 2, "max_failures": 0,
        "max_consecutive_failures": 2, "search": {"num_samples": 6, "max_concurrent": 1},
        "storage": str(tmp_path / "res")})))
    r = subprocess.run([KDTUNE, "sweep", "run", str(spec)], capture_output=True, text=True,
                       env=sweep_env(ray_plugins), timeout=540)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert line == ["error: the sweep stopped after 2 trials failed in a row "
                    "(max_consecutive_failures); commonest error: RuntimeError: injected fault: "
                    "fault_raise in epoch 2"], r.stderr[-2000:]
    started = [d for d in (tmp_path / "res" / "streak").glob("fault_raise_*") if d.is_dir()]
    assert len(started) == 2, sorted(d.name for d in started)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_trial_faults_are_recorded_and_the_sweep_goes_on(tmp_path, ray_plugins):
    """One sweep, five trials (one per method of the list; paper defaults go first):
    `scratch` is healthy; `fault_raise` raises, `fault_nan` diverges, `fault_oom` runs into its
    0.5 GB cap: each fails with its reason in Tune (error.txt, the CLI's summary) and in its
    MLflow run (FAILED, `kdtune.error`), after its one retry. `fault_kill`'s worker is SIGKILLed
    in epoch 2: Tune restarts it from its epoch-1 checkpoint and it ends with 3 epochs and one
    MLflow run. The others finish."""
    from ray.tune import ExperimentAnalysis

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(merge(TINY, {
        "name": "faults", "method": ["scratch", "fault_raise", "fault_nan", "fault_oom", "fault_kill"],
        "epochs": 3, "search": {"num_samples": 5, "algorithm": "random"},
        "resources": {"cpu": 1, "gpu": 0, "memory_gb": 0.5}, "max_failures": 1,
        "storage": str(tmp_path / "res")})))
    r = subprocess.run([KDTUNE, "sweep", "run", str(spec)], capture_output=True, text=True,
                       env=sweep_env(ray_plugins), timeout=540)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]

    exp = tmp_path / "res" / "faults"
    trials = {Path(t.path).name.rsplit("_", 1)[0].rsplit("_", 1)[0]: t
              for t in ExperimentAnalysis(str(exp)).trials}
    assert sorted(trials) == ["fault_kill", "fault_nan", "fault_oom", "fault_raise", "scratch"]
    reasons = {"fault_raise": "RuntimeError: injected fault: fault_raise in epoch 2",
               "fault_nan": "NonFiniteLoss: non-finite loss term(s) loss at epoch 2",
               "fault_oom": "TrialOutOfMemory: out of memory: the trial needed more than "
                            "resources.memory_gb = 0.5 GB"}
    for m, reason in reasons.items():
        t = trials[m]
        assert t.status == "ERROR" and t.num_failures == 2  # tried, retried once, recorded
        assert reason in (Path(t.path) / "error.txt").read_text()
        line = next(ln for ln in out.splitlines() if ln.startswith(f"failed {m}_"))
        assert reason in line and "error.txt" in line  # what the user sees at the end
        print(line)
    for m in ("scratch", "fault_kill"):
        assert trials[m].status == "TERMINATED"
        assert [row["epoch"] for row in trial_rows(Path(trials[m].path))] == [1, 2, 3]
    # restarted once, from epoch 1's checkpoint (from scratch, epoch 1 would be there twice)
    assert trials["fault_kill"].num_failures == 1

    c, parent, kids = mlflow_runs(f"sqlite:///{tmp_path / 'res' / 'mlflow.db'}", "faults")
    assert parent.info.status == "FINISHED"
    assert sorted(kids) == sorted(t.trial_id for t in trials.values())  # one run per trial
    for m, t in trials.items():
        k = kids[t.trial_id]
        if m in reasons:
            assert k.info.status == "FAILED" and reasons[m] in k.data.tags["kdtune.error"]
            assert "error.txt" in [a.path for a in c.list_artifacts(k.info.run_id)]
        else:
            assert k.info.status == "FINISHED"
            assert [h.step for h in c.get_metric_history(k.info.run_id, "val_acc")] == [1, 2, 3]
    assert kids[trials["fault_kill"].trial_id].data.tags["kdtune.retries"] == "1"


# =========================================================================== 3. driver faults
def test_resume_settles_runs_the_killed_driver_left_unfinished(tmp_path, monkeypatch):
    """Unit (no Ray) of what `sweep run --resume` does for MLflow after a SIGKILLed driver
    (end to end: test_sweep.py `test_resume_after_the_driver_is_killed`). The killed driver
    had logged trial 1's epoch 1 only, never started trial 2's run, and finished trial 3's. On
    resume, Tune has all three as ended: each run is made whole from the trial's result.json
    (missing epochs logged, ended FINISHED), trial 2's run is created, trial 3's is left as it
    was; nothing is logged twice and the one parent run ends FINISHED with three children."""
    from types import SimpleNamespace

    import pyarrow.fs

    from kdtune.checks import load_spec
    from kdtune.tune.callbacks import MLflowCallback
    from test_tracking import FakeTrial, write_spec

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = load_spec(write_spec(tmp_path / "spec.yaml", name="settle", method="scratch", epochs=3))
    rows = [{"epoch": e, "val_acc": 0.1 * e, "loss": 1.0 / e, "training_iteration": e} for e in (1, 2, 3)]

    def trial(n: int) -> FakeTrial:
        t = FakeTrial(n, {"lr": 0.1, "batch_size": 32})
        d = tmp_path / "tune" / f"scratch_{n:03d}"
        d.mkdir(parents=True)
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        t.storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), trial_fs_path=str(d))
        return t

    one, two, three = trial(1), trial(2), trial(3)
    killed = MLflowCallback(spec, log=lambda m: None)
    killed.setup()
    killed.on_trial_start(0, [one], one)
    killed.on_trial_result(0, [one], one, rows[0])
    killed.on_trial_start(0, [three], three)
    for r in rows:
        killed.on_trial_result(0, [three], three, r)
    three.last_result, three.status = rows[-1], "TERMINATED"
    killed.on_trial_complete(0, [three], three)
    killed.writer.close()  # what had been sent when the driver died; no end of the sweep

    for t in (one, two):
        t.last_result, t.status = rows[-1], "TERMINATED"
    resumed = MLflowCallback(spec, resume=True, log=lambda m: None)
    resumed.setup()
    resumed.on_step_begin(0, [one, two, three])
    resumed.on_experiment_end([one, two, three])

    c, parent, kids = mlflow_runs(paths.tracking_uri(spec), "settle")
    assert parent.info.status == "FINISHED" and sorted(kids) == ["t00001", "t00002", "t00003"]
    for k in kids.values():
        assert k.info.status == "FINISHED" and k.info.run_name == f"scratch_00{k.data.tags['kdtune.trial_id'][-1]}"
        hist = c.get_metric_history(k.info.run_id, "val_acc")
        assert [(h.step, round(h.value, 6)) for h in hist] == [(1, 0.1), (2, 0.2), (3, 0.3)]
        assert k.data.params == {"lr": "0.1", "batch_size": "32"}
    assert kids["t00001"].data.tags["kdtune.last_epoch"] == "3"


# =========================================================================== 4. tracking faults
@pytest.fixture
def mlflow_server(tmp_path):
    """A plain MLflow server on 127.0.0.1 (sqlite) that a test can stop and start again."""
    d = tmp_path / "server"
    d.mkdir()
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
           "--artifacts-destination", str(d / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    state = {"url": f"http://127.0.0.1:{port}", "proc": None}

    def up():
        state["proc"] = start(cmd, d / f"server-{time.time():.0f}.log")
        wait_http(f"{state['url']}/health", state["proc"])

    def down():
        stop(state["proc"])

    state.update(up=up, down=down)
    up()
    try:
        yield state
    finally:
        down()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tracking_outage_mid_sweep_is_reported_then_sent_on_resume(tmp_path, ray_plugins, mlflow_server):
    """The MLflow server the sweep logs to is stopped once the first trial has logged a metric
    and stays down until the sweep ends: the trials finish regardless; the writer retries, then
    saves what it could not send to mlflow_pending.jsonl and says so in its last line. With
    the server back, `sweep run --resume` sends it: every run is complete, nothing twice.
    (A short outage healed by the retries alone: tests/test_tracking.py
    ``test_outage_is_retried_then_saved_and_sent_later``.)"""
    from mlflow import MlflowClient

    url = mlflow_server["url"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(merge(TINY, {
        "name": "outage", "method": "slow", "epochs": 3, "search": {"num_samples": 2},
        "tracking": {"uri": url}, "storage": str(tmp_path / "res")})))
    env = sweep_env(ray_plugins, KDTUNE_TEST_SLOW_S="2", KDTUNE_MLFLOW_FLUSH_S="3")
    log = open(tmp_path / "sweep.log", "w")
    proc = subprocess.Popen([KDTUNE, "sweep", "run", str(spec)], stdout=log, stderr=subprocess.STDOUT, env=env)
    c = MlflowClient(url)

    def first_metric() -> bool:
        exp = c.get_experiment_by_name("outage")
        return bool(exp) and any("val_acc" in r.data.metrics for r in c.search_runs([exp.experiment_id]))

    deadline = time.time() + 300
    while not first_metric():
        assert proc.poll() is None, (tmp_path / "sweep.log").read_text()[-4000:]
        assert time.time() < deadline, "no metric reached the server"
        time.sleep(0.5)
    mlflow_server["down"]()  # the outage
    rc = proc.wait(400)
    log.close()
    out = (tmp_path / "sweep.log").read_text()
    assert rc == 0, out[-4000:]  # the trials did not crash
    pending = tmp_path / "res" / "outage" / "mlflow_pending.jsonl"
    assert pending.is_file()
    report = next(ln for ln in out.splitlines() if ln.startswith("MLflow: "))
    assert "NOT sent" in report and f"saved to {pending}" in report
    assert "sent by the next `kdtune sweep run --resume`" in report
    print(report)

    mlflow_server["up"]()
    r = subprocess.run([KDTUNE, "sweep", "run", str(spec), "--resume"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "saved by an earlier run" in r.stdout and "NOT sent" not in r.stdout
    print(*(ln for ln in r.stdout.splitlines() if ln.startswith("MLflow: ")), sep="\n")
    assert not pending.exists()
    _, parent, kids = mlflow_runs(url, "outage")
    assert parent.info.status == "FINISHED" and len(kids) == 2
    for k in kids.values():
        assert k.info.status == "FINISHED"
        assert [h.step for h in c.get_metric_history(k.info.run_id, "val_acc")] == [1, 2, 3]
        assert [a.path for a in c.list_artifacts(k.info.run_id, "checkpoint")] == ["checkpoint/checkpoint.pt"]

"""Sweeps: the define-by-run translation, ASHA and stage reports, and real Ray Tune sweeps.

The Ray tests are tiny (digits, 300 images, cnn_small at width 0.25, 1-3 epochs) and share one
local Ray (2 CPUs and one fake GPU) except the resume test, which runs the CLI in
subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from kdtune.spec import Spec, SpecError, parse_spec
from kdtune.checks import load_spec
from kdtune.params.walk import resolve_params
from kdtune.tune.search import MainEpochOptunaSearch, define_by_run, make_sampler, make_searcher
from kdtune.params.walk import SweepSpace

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY = {
    "data": {"name": "digits", "train_limit": 300, "val_fraction": 0.2},
    "teacher": {"model": "cnn4", "epochs": 2},
    "student": {"model": "cnn_small", "kwargs": {"width": 0.25}},
    "method": "kd", "resources": {"cpu": 1, "gpu": 0},
}


def tiny(tmp_path: Path, name: str = "t", **over) -> dict:
    data = {**yaml.safe_load(yaml.safe_dump(TINY)), "name": name, "storage": str(tmp_path / "res")}
    for k, v in over.items():
        data[k] = v
    return data


def write(tmp_path: Path, data: dict, fname: str = "spec.yaml") -> Path:
    p = tmp_path / fname
    p.write_text(yaml.safe_dump(data))
    return p


def study_configs(spec: Spec, n: int, sampler=None) -> tuple[optuna.Study, list[dict]]:
    """Run the define-by-run function in a plain Optuna study (what OptunaSearch does)."""
    fn = define_by_run(SweepSpace(spec))
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(n):
        t = study.ask()
        configs.append(fn(t))
        study.tell(t, 0.0)
    return study, configs


# --------------------------------------------------------------------------- define-by-run
SPACE = """
method: kd
params:
  lr: {type: float, low: 1.0e-4, high: 0.3, log: true, default: 0.05}
  depth: {type: int, low: 2, high: 10, step: 2, default: 4}
  width: {type: int, low: 8, high: 128, log: true, default: 32}
  opt: {type: categorical, choices: [sgd, adamw], default: sgd}
  momentum: {type: float, low: 0.5, high: 0.99, default: 0.9, when: {opt: sgd}}
  beta: {type: float, low: 0.0, high: 1.0, step: 0.25, default: 0.5}
"""


def test_define_by_run_translates_types_conditions_and_fixed(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    spec = parse_spec(tiny(tmp_path, search={"space": str(tmp_path / "space.yaml")},
                           params={"beta": 0.75, "batch_size": 64, "schedule": "step"}))
    study, configs = study_configs(spec, 40)
    for t, c in zip(study.trials, configs):
        d = t.distributions
        assert d["lr"].log and not d["width"].step > 1 and d["width"].log
        assert d["depth"].step == 2 and c["depth"] in (2, 4, 6, 8, 10)
        assert isinstance(c["width"], int) and 8 <= c["width"] <= 128
        # `when`: momentum exists exactly when opt == sgd
        assert ("momentum" in c) == (c["opt"] == "sgd") == ("momentum" in d)
        # fixed: constants in the config, never suggested (batch_size is a _common.yaml param)
        assert c["beta"] == 0.75 and c["batch_size"] == 64 and c["schedule"] == "step"
        assert not {"beta", "batch_size", "schedule"} & set(d)
        assert "epochs" not in c
    assert {c["opt"] for c in configs} == {"sgd", "adamw"}


def test_defaults_equal_resolve_params(tmp_path):
    """The walk's defaults are `kdtune train`'s config, for one method, a choice, a composition."""
    for over in ({"method": "kd", "params": {"lr": 0.1, "alpha": 0.5}},
                 {"method": ["kd", "logit_l2"], "params": {"kd.temperature": 2.0}},
                 {"method": "kd", "compose": {"kd": 1.0, "logit_l2": 0.5}, "params": {"ce_weight": 0.3}}):
        spec = load_spec(write(tmp_path, tiny(tmp_path, **over)))
        assert SweepSpace(spec).defaults() == resolve_params(spec), over


def test_method_choice_is_conditional_and_prefixed(tmp_path):
    spec = load_spec(write(tmp_path, tiny(tmp_path, method=["kd", "logit_l2"],
                                          params={"kd.temperature": 3.0})))
    study, configs = study_configs(spec, 30)
    common = {"lr", "weight_decay", "batch_size", "optimizer"}
    seen = set()
    for c in configs:
        m = c["method"]
        seen.add(m)
        own = {k for k in c if k not in common and k != "method"}
        assert own and all(k.startswith(f"{m}.") for k in own), c
        if m == "kd":
            assert c["kd.temperature"] == 3.0
    assert seen == {"kd", "logit_l2"}
    # each branch has exactly its own parameters
    assert {k for c in configs if c["method"] == "logit_l2" for k in c} - common - {"method"} == \
        {"logit_l2.alpha", "logit_l2.teacher_dropout"}


def test_composition_searches_every_member_and_ce_weight(tmp_path):
    spec = load_spec(write(tmp_path, tiny(tmp_path, method="kd", compose={"kd": 1.0, "logit_l2": 1.0})))
    _, configs = study_configs(spec, 5)
    for c in configs:
        assert {"kd.temperature", "kd.alpha", "logit_l2.alpha", "ce_weight"} <= set(c)
        assert "method" not in c and 0 <= c["ce_weight"] <= 2


def test_paper_defaults_are_evaluated_first(tmp_path):
    spec = load_spec(write(tmp_path, tiny(tmp_path, method=["kd", "logit_l2"],
                                          search={"num_samples": 5})))
    searcher = make_searcher(spec)
    first = [searcher.suggest(f"t{i}") for i in range(3)]
    space = SweepSpace(spec)
    assert first[0] == space.defaults("kd") and first[1] == space.defaults("logit_l2")
    assert first[2] not in first[:2]


@pytest.mark.parametrize("algorithm", ["tpe", "random", "cmaes"])
def test_samplers_are_seeded(tmp_path, algorithm):
    spec = load_spec(write(tmp_path, tiny(tmp_path, method=["kd", "logit_l2"],
                                          search={"algorithm": algorithm, "seed": 3})))
    runs = [study_configs(spec, 8, make_sampler(spec))[1] for _ in range(2)]
    assert runs[0] == runs[1]


def test_epochs_is_never_searched(tmp_path):
    (tmp_path / "space.yaml").write_text(
        "params:\n  epochs: {type: int, low: 1, high: 9, default: 3}\n")
    spec = parse_spec(tiny(tmp_path, search={"space": str(tmp_path / "space.yaml")}))
    with pytest.raises(SpecError, match="epochs"):
        SweepSpace(spec)


# --------------------------------------------------------------------------- stage reports
def test_stage_reports_do_not_advance_asha_or_reach_optuna(tmp_path):
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    asha = AsyncHyperBandScheduler(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2)
    asha.set_search_properties("val_acc", "max")
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    asha.on_trial_add(None, a)
    asha.on_trial_add(None, b)
    stage = {"stage/warmup/loss": 0.1, "stage/warmup/epoch": 3, "training_iteration": 3}
    assert asha.on_trial_result(None, a, stage) == TrialScheduler.CONTINUE
    assert all(not rec for bracket in asha._brackets for _, rec in bracket._rungs)
    assert asha.on_trial_result(None, a, {"epoch": 1, "val_acc": 0.9}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, b, stage) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, b, {"epoch": 1, "val_acc": 0.1}) == TrialScheduler.STOP

    spec = load_spec(write(tmp_path, tiny(tmp_path)))
    searcher = make_searcher(spec)
    assert isinstance(searcher, MainEpochOptunaSearch)
    searcher.suggest("x")
    searcher.on_trial_result("x", stage)  # a plain OptunaSearch raises KeyError here
    searcher.on_trial_result("x", {"epoch": 2, "val_acc": 0.5, "training_iteration": 7})
    assert searcher._ot_trials["x"].storage.get_trial(searcher._ot_trials["x"]._trial_id) \
        .intermediate_values == {2: 0.5}


# --------------------------------------------------------------------------- CLI without Ray
def test_cli_dry_run_and_spec_errors_exit_2(tmp_path):
    import ray

    from kdtune.cli.app import app

    if ray.is_initialized():  # left by an earlier module's in-process sweep: this test checks
        ray.shutdown()        # that the commands below start none
    runner = CliRunner()
    spec = write(tmp_path, tiny(tmp_path, method=["kd", "logit_l2"]))
    out = runner.invoke(app, ["sweep", "run", str(spec), "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "kd.temperature" in out.output and "evaluated first" in out.output
    bad = runner.invoke(app, ["sweep", "run", str(spec), "--set", "resources.gpu=0.25"])
    assert bad.exit_code == 2 and "resources" in bad.output
    bad = runner.invoke(app, ["sweep", "run", str(spec), "--resume"])
    assert bad.exit_code == 2 and "no sweep to resume" in bad.output
    assert not ray.is_initialized()


# --------------------------------------------------------------------------- real sweeps
@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():  # a Ray an earlier module's sweep started in this process
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


def trial_rows(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.is_file() else []


@pytest.mark.slow
def test_local_sweep_asha_and_best_yaml_reproduces(tmp_path, ray_local):
    """6 trials × 3 epochs, ASHA at epochs 1 and 2: some trials stop early; best.yaml, run by
    `kdtune train`, has the same config and reaches the same val_acc (CPU runs are
    deterministic for a seed: the trial's seed and teacher are written into best.yaml)."""
    import torch

    from kdtune.cli.app import app
    from kdtune.tune.run import run_sweep

    spec = load_spec(write(tmp_path, tiny(tmp_path, "asha", method="kd", epochs=3,
                                          search={"num_samples": 6, "seed": 0},
                                          scheduler={"type": "asha", "grace_period": 1,
                                                     "reduction_factor": 2})))
    res = run_sweep(spec, log=lambda m: None)
    assert len(res.trials) == 6 and not res.errors
    assert all(t.name.startswith("kd_") for t in res.trials)
    stopped = [t for t in res.trials if t.epochs < 3]
    assert stopped and all(t.status == "stopped" for t in stopped)
    best = res.best
    assert best.value == max(t.value for t in res.trials)
    # the same definition as Tune's own: metric at the last reported result
    tune_best = res.grid.get_best_result("val_acc", "max", scope="last")
    assert tune_best.metrics["val_acc"] == best.value

    again = load_spec(res.best_yaml)
    assert resolve_params(again) == best.config
    assert again.teacher.checkpoint and again.seed == int(best.name.rsplit("_", 1)[1])
    # `train` reproduces a trial: checked on the best trial that ran all 3 epochs (a trial ASHA
    # stopped early trained fewer epochs, under a schedule of 3, than `train` would), never
    # skipped: ASHA lets the top trials finish
    from kdtune.spec import dump_spec
    from kdtune.tune.naming import trial_seed
    from kdtune.tune.run import best_spec

    full = next(t for t in res.trials if t.status == "completed")
    path = tmp_path / "full.yaml"
    path.write_text(dump_spec(best_spec(spec, full.config, trial_seed(spec, full.name),
                                        again.teacher.checkpoint)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial (cpu: 1)
    try:
        out = CliRunner().invoke(app, ["train", str(path)])
    finally:
        torch.set_num_threads(threads)
    assert out.exit_code == 0, out.output
    last = [ln for ln in out.output.splitlines() if ln.startswith("epoch 3/3")][0]
    val_acc = float(last.split("val_acc ")[1].split()[0])
    assert val_acc == pytest.approx(full.value, abs=1e-3)


@pytest.mark.slow
def test_fractional_gpus_pack_four_trials_per_card(tmp_path, ray_local):
    """8 trials at gpu 0.25 on one (fake) GPU: 4 at once, never more. Goes through kdtune's
    trainable (resources, report, checkpoints, stage reports) with a sleeping stand-in run."""
    from kdtune.tune.run import build_tuner, summarize
    from kdtune.tune.trainable import make_trainable

    marks = tmp_path / "marks"
    marks.mkdir()

    def fake_run(spec, config, teacher, report, *, seed, restore=None, device=None):
        import time as _t
        from pathlib import Path as _P

        from kdtune.training.ops import NonFiniteLoss

        d = _P(str(marks))
        if restore is None:  # first attempt: record when it ran
            (d / f"start-{seed}").write_text(str(_t.time()))
            deadline = _t.time() + 30  # wait (bounded) until four trials run at once
            while _t.time() < deadline:
                running = len(list(d.glob("start-*"))) - len(list(d.glob("end-*")))
                if running >= 4:
                    break
                _t.sleep(0.05)
            _t.sleep(0.5)
            (d / f"end-{seed}").write_text(str(_t.time()))
            report({"stage/warmup/loss": 1.0, "stage/warmup/epoch": 1}, {"epoch": 0}, stage=True)
        else:
            (d / f"restored-{seed}").write_text(str(restore["epoch"]))
        failing = seed == 8  # the last trial: NaN at epoch 2, on each attempt
        for e in range(restore["epoch"] + 1 if restore else 1, 3):
            if failing and e == 2:
                raise NonFiniteLoss("non-finite loss term(s) loss at epoch 2")
            report({"val_acc": 1.0 if failing else config["lr"], "epoch": e}, {"epoch": e})
        return {}

    spec = parse_spec(tiny(tmp_path, "pack", method="kd", epochs=2,
                           resources={"cpu": 0.25, "gpu": 0.25},
                           search={"num_samples": 8, "algorithm": "random"},
                           scheduler={"type": "asha", "grace_period": 1}, max_failures=1))
    grid = build_tuner(spec, make_trainable(spec, None, run=fake_run)).fit()
    res = summarize(grid, spec, None, log=lambda m: None)
    assert len(res.trials) == 8

    # the NaN trial: retried once from its epoch-1 checkpoint, then recorded with its reason
    # while the sweep went on
    (failed,) = res.errors
    assert failed.name == "kd_008" and "NonFiniteLoss" in failed.error
    assert "non-finite loss" in (Path(failed.path) / "error.txt").read_text()
    assert (marks / "restored-8").read_text() == "1"
    assert failed.value == 1.0 and failed.epochs == 1  # it still ranks by its last epoch

    spans = []
    for f in marks.glob("start-*"):
        seed = f.name.split("-", 1)[1]
        spans.append((float(f.read_text()), float((marks / f"end-{seed}").read_text())))
    assert len(spans) == 8
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running, peak = 0, 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 4

    # stage rows reached Tune without `epoch` or the metric, and ASHA counted epochs only
    for t in res.trials:
        if t is failed:
            continue
        rows = trial_rows(Path(t.path))
        stage = [r for r in rows if "stage/warmup/loss" in r]
        assert stage and all("epoch" not in r and "val_acc" not in r for r in stage)
        assert [r["epoch"] for r in rows if "epoch" in r] == list(range(1, t.epochs + 1))


@pytest.mark.slow
def test_multi_method_sweep_samples_both_with_own_params(tmp_path, ray_local):
    from kdtune.tune.run import run_sweep

    spec = load_spec(write(tmp_path, tiny(tmp_path, "multi", method=["kd", "logit_l2"], epochs=1,
                                          search={"num_samples": 4, "algorithm": "random"},
                                          scheduler={"type": "none"})))
    res = run_sweep(spec, log=lambda m: None)
    assert len(res.trials) == 4 and not res.errors
    common = {"lr", "weight_decay", "batch_size", "optimizer"}
    methods = set()
    for t in res.trials:
        m = t.config["method"]
        methods.add(m)
        assert t.name.startswith(f"{m}_")  # trials are named after the method they chose
        own = set(t.config) - common - {"method"}
        assert own == set(SweepSpace(spec).defaults(m)) - common - {"method"}
        assert all(k.startswith(f"{m}.") for k in own)
        # the trial ran that method: its loss terms are the method's (kd reports `soft`)
        assert ("soft" in trial_rows(Path(t.path))[-1]) == (m == "kd")
    assert methods == {"kd", "logit_l2"}
    # best.yaml names the chosen method with unprefixed params, and `train` accepts it as is
    best = load_spec(res.best_yaml)
    m = res.best.config["method"]
    assert best.method == m
    assert resolve_params(best) == {k.removeprefix(f"{m}."): v
                                    for k, v in res.best.config.items() if k != "method"}


@pytest.mark.parametrize("every, kept", [(0, [2, 3]), (3600, [3])])
def test_checkpoint_every_s_checkpoints_only_the_last_epoch_of_a_short_trial(tmp_path, ray_local, every, kept):
    """spec.checkpoint_every_s: a trial shorter than it checkpoints its last epoch only (so Tune
    forces no experiment snapshot for it, docs/scaling.md §1.3); 0 checkpoints every epoch,
    of which Tune keeps the last two."""
    from kdtune.training.checkpoint import load_state
    from kdtune.tune.run import run_sweep

    spec = load_spec(write(tmp_path, tiny(tmp_path, f"ckpt{every}", method="scratch", epochs=3,
                                          checkpoint_every_s=every,
                                          search={"num_samples": 2, "algorithm": "random"},
                                          scheduler={"type": "none"})))
    res = run_sweep(spec, log=lambda m: None)
    assert len(res.trials) == 2 and not res.errors
    for t in res.trials:
        ckpts = sorted(Path(t.path).glob("checkpoint_*/checkpoint.pt"))
        epochs = [load_state(c)["epoch"] for c in ckpts]
        assert epochs == kept, (t.name, [c.parent.name for c in ckpts], epochs)


def recorded_finished(exp: Path) -> dict[str, list[dict]]:
    """Trials Tune's newest experiment snapshot records as TERMINATED, with their results."""
    states = sorted(exp.glob("experiment_state-*.json"))
    try:
        data = json.loads(states[-1].read_text()) if states else {"trial_data": []}
    except (json.JSONDecodeError, OSError):  # being replaced right now
        return {}
    done = [json.loads(t) for t, _ in data["trial_data"]]
    return {t["custom_dirname"]: trial_rows(exp / t["custom_dirname"])
            for t in done if t["status"] == "TERMINATED"}


def snapshot_whole(exp: Path) -> bool:
    """Every file of Tune's snapshot in ``exp`` reads to its end (kdtune.tune.state.whole)."""
    from kdtune.tune.state import SNAPSHOT, whole

    try:
        return all(whole(f.read_bytes(), f.name) for f in exp.iterdir() if SNAPSHOT.match(f.name))
    except OSError:  # replaced while read
        return False


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path, ray_local):
    """`kdtune sweep run` (a driver on the test's Ray, via RAY_ADDRESS) is SIGKILLed once its
    snapshot records two finished trials; `--resume` completes the sweep, and the finished
    trials are not run again (their results are unchanged). Trials running at the kill restart
    from their last recorded checkpoint."""
    from ray.tune import ExperimentAnalysis

    spec = write(tmp_path, tiny(tmp_path, "resume", method="kd", epochs=3,
                                data={"name": "digits", "train_limit": 600, "val_fraction": 0.2},
                                search={"num_samples": 6, "max_concurrent": 1},
                                scheduler={"type": "none"}))
    exp = tmp_path / "res" / "resume"
    cmd = [str(Path(sys.executable).parent / "kdtune"), "sweep", "run", str(spec)]
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 240
        # killed once two trials are recorded, between snapshot writes: this test is about a
        # snapshot that lags the trials; one cut mid-copy is test_resume_state.py's (mended from
        # the driver's staging copy, or refused when that is cut too)
        while len(recorded_finished(exp)) < 2 or not snapshot_whole(exp):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no two trials finished in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # its trials (actors) die with their owner
        proc.wait()
    done_before = recorded_finished(exp)
    assert 2 <= len(done_before) < 6, "the sweep finished before the kill: nothing to resume"

    out = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (exp / "best.yaml").is_file()
    for name, rows in done_before.items():
        assert [r["epoch"] for r in rows] == [1, 2, 3]
        assert trial_rows(exp / name) == rows, f"{name} ran again"
    trials = ExperimentAnalysis(str(exp)).trials
    assert len(trials) == 6 and all(t.status == "TERMINATED" for t in trials)
    assert all(trial_rows(Path(t.path))[-1]["epoch"] == 3 for t in trials)

    # MLflow (the sweep's default sqlite store; issue 9): the same parent run, FINISHED, with
    # exactly one child per trial, each FINISHED with every epoch; the trials finished before
    # the kill have each epoch once (not re-run, not re-logged). Writes the killed driver still
    # had queued are made up from the trials' result.json on resume (callbacks.py: settle).
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'res' / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("resume").experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("kdtune.role") == "sweep"]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_id == (exp / "mlflow_parent_run_id").read_text().strip()
    kids = {r.data.tags["kdtune.trial_id"]: r for r in runs
            if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(kids) == sorted(t.trial_id for t in trials)
    assert len([r for r in runs if r.data.tags.get("kdtune.role") == "trial"]) == len(trials)
    for t in trials:
        k = kids[t.trial_id]
        steps = [h.step for h in c.get_metric_history(k.info.run_id, "val_acc")]
        assert k.info.status == "FINISHED" and sorted(set(steps)) == [1, 2, 3], (t, steps)
        # a trial restarted from scratch would log epoch 1 again: restarts resume from a checkpoint
        assert steps.count(1) == 1, (t, steps)
        if Path(t.path).name in done_before:
            assert steps == [1, 2, 3], (t, steps)

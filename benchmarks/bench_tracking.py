"""Writer load: N trials' Tune results through the real MLflow callback and writer.

A load generator in this (the driver's) process plays Ray Tune: for each of N fake trials it
calls ``MLflowCallback.on_trial_start``, then ``on_trial_result`` with 10 metrics every
``--interval`` s for ``--seconds`` s, then ``on_trial_complete``. The callback feeds the real
``SweepWriter``, which writes to an MLflow server backed by PostgreSQL, both on 127.0.0.1 and
started here (a throwaway cluster made with initdb, as the ``postgres`` user when run as root)
unless ``--tracking-uri`` names a running server.

Figures per N:

- ``results_per_s`` / ``points_per_s`` / ``calls_per_s``: results (Log writes), metric points
  and MLflow ``log_batch`` calls acknowledged per second over the reporting window
  (``mlflow_calls_per_s``: calls of any kind); ``results_per_s_2nd_half``: over its second
  half, past the burst of trial starts; ``offered_results_per_s``: what the trials sent;
- ``depth_at_end``: writes still queued when the last result was handed over; ``depth_max``;
- ``lag_end_s``: time from the last result to the moment every metric point was acknowledged;
  ``lag_p50_s`` / ``lag_p99_s``: per point, from its hand-over to its acknowledgement;
- ``producer_blocked_s``: time the callback (Tune's thread) spent inside ``on_trial_result``
  (back-pressure shows up here); ``behind_schedule_s``: how late the last result was sent;
- ``rss_growth_mb``: the driver's resident memory at its peak and after the flush, minus the
  figure before the first trial;
- ``lost`` / ``duplicated``: every run's metric history read back from the server and compared
  with what was sent (both must be 0).

    python benchmarks/bench_tracking.py [--quick] [--trials 16,64,256] [--seconds 30]
"""

from __future__ import annotations

import argparse
import array
import gc
import heapq
import json
import math
import os
import pickle
import pwd
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import emit, free_port, quiet_stdout, rss_mb  # first: it puts the checkout on sys.path

import optuna  # noqa: E402
import psycopg2  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from ray.tune.experiment import Trial  # noqa: E402

from kdtune.spec import parse_spec  # noqa: E402
from kdtune.spec.paths import run_dir  # noqa: E402
from kdtune.tracking.client import client as mlflow_client  # noqa: E402
from kdtune.tracking.schema import PENDING_FILE  # noqa: E402
from kdtune.tracking.writer import SweepWriter  # noqa: E402
from kdtune.tune.callbacks import MLflowCallback  # noqa: E402

KEYS = [f"m{j}" for j in range(10)]  # the 10 metrics of every result
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- the services
def _pg_bin() -> Path:
    cands = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if cands:
        return cands[-1].parent
    which = shutil.which("initdb")
    if not which:
        raise SystemExit("PostgreSQL is not installed (or pass --tracking-uri)")
    return Path(which).resolve().parent


def _wait(what: str, ok, proc: subprocess.Popen, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if ok():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    raise TimeoutError(what)


class Services:
    """A throwaway PostgreSQL and an MLflow server on it, both on 127.0.0.1; ``stop()`` ends
    both (by the process groups this object started) and removes their folder."""

    def __init__(self, workers: int):
        self.root = Path(tempfile.mkdtemp(prefix="kdtune-bench-tracking-"))
        self.procs: list[tuple[subprocess.Popen, int]] = []
        self.workers = workers

    def start(self) -> str:
        pg, data = _pg_bin(), self.root / "pg"
        data.mkdir()
        as_user = {}
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as `postgres`
            pw = pwd.getpwnam("postgres")
            os.chown(data, pw.pw_uid, pw.pw_gid)
            os.chmod(self.root, 0o755)
            as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        subprocess.run([str(pg / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--no-locale",
                        "-E", "UTF8", "--auth=trust", "--no-sync"], check=True, capture_output=True,
                       timeout=180, **as_user)
        port = free_port()
        with open(self.root / "postgres.log", "wb") as log:
            proc = subprocess.Popen([str(pg / "postgres"), "-D", str(data / "db"), "-p", str(port), "-k",
                                     str(data), "-c", "listen_addresses=127.0.0.1"],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_user)
        self.procs.append((proc, signal.SIGINT))  # SIGINT: postgres' fast shutdown

        def connect(db="postgres"):
            return psycopg2.connect(host="127.0.0.1", port=port, dbname=db, user="postgres", connect_timeout=3)

        _wait("postgres", lambda: connect().close() or True, proc, 120)
        conn = connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        mport = free_port()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        with open(self.root / "mlflow.log", "wb") as log:
            proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri",
                                     f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow",
                                     "--artifacts-destination", (self.root / "artifacts").as_uri(),
                                     "--host", "127.0.0.1", "--port", str(mport),
                                     "--workers", str(self.workers)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append((proc, signal.SIGTERM))
        url = f"http://127.0.0.1:{mport}"

        def healthy():
            with urllib.request.urlopen(f"{url}/health", timeout=3) as r:
                return r.status == 200

        _wait("mlflow server", healthy, proc, 300)
        return url

    def stop(self) -> None:
        for proc, sig in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- measuring
class Counting:
    """An MlflowClient that counts its calls and, per metric point written, the time from its
    hand-over (the point's timestamp) to the call's return."""

    def __init__(self, real):
        self.real = real
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.points = 0
        self.lags_ms = array.array("l")  # 8 bytes a point, not a list of ints
        self.acked_at: list[tuple[float, int]] = []  # (time, points acknowledged so far)
        self.done_at: list[float] = []  # when each call (any kind) returned

    def __getattr__(self, name):
        fn = getattr(self.real, name)

        def call(*a, **kw):
            out = fn(*a, **kw)
            with self.lock:
                self.calls[name] = self.calls.get(name, 0) + 1
                self.done_at.append(time.perf_counter())
                if name == "log_batch":
                    ms = kw.get("metrics") or (a[1] if len(a) > 1 else [])
                    now = int(time.time() * 1000)
                    self.lags_ms.extend(now - m.timestamp for m in ms)
                    self.points += len(ms)
                    self.acked_at.append((time.perf_counter(), self.points))
            return out
        return call


class FakeTrial:
    """What the callback reads from a Ray Tune Trial."""

    def __init__(self, n: int):
        self.trial_id = self.id_of(n)
        self.experiment_tag = f"{n + 1}_x"
        self.trainable_name = "scratch"
        self.config = {"lr": 10 ** random.uniform(-4, -1), "batch_size": random.choice([32, 64, 128])}
        self.last_result: dict = {}
        self.checkpoint = None
        self.num_failures = 0
        self.status = "RUNNING"

    @staticmethod
    def id_of(n: int) -> str:
        return f"b{n:05d}"


def _pending(w) -> int:
    # the writer's queued operations (older writers kept them in a plain deque)
    return w.pending() if hasattr(w, "pending") else len(w._q)


def run_one(url: str, n: int, seconds: float, interval: float, drain_timeout: float) -> dict:
    """One load run: N trials for ``seconds`` of reporting; its figures."""
    storage = Path(tempfile.mkdtemp(prefix="kdtune-bench-run-"))
    name = f"bench-tracking-{n}-{int(time.time())}"
    spec = parse_spec({"name": name, "storage": str(storage), "method": "scratch", "epochs": 10_000,
                       "data": {"name": "digits"}, "tracking": {"uri": url}})
    counting: list[Counting] = []

    def factory(uri):
        counting.append(Counting(mlflow_client(uri)))
        return counting[-1]

    writer = SweepWriter(spec, client_factory=factory, log=lambda m: print(m, file=sys.stderr))
    cb = MLflowCallback(spec, writer=writer, log=lambda m: print(m, file=sys.stderr))
    cb.setup()
    t_wait = time.perf_counter()
    while _pending(writer) and time.perf_counter() - t_wait < 120:
        time.sleep(0.05)
    gc.collect()
    rss0 = rss_peak = rss_mb()

    trials = [FakeTrial(i) for i in range(n)]
    steps = max(1, round(seconds / interval))
    t0 = time.perf_counter()
    # (due time, trial index, step): trials start spread over one interval, as a sweep's do
    due = [(t0 + i * interval / n, i, 0) for i in range(n)]
    heapq.heapify(due)
    blocked = 0.0
    depth_max = 0
    last_rss = t0
    t_last = t0
    behind = 0.0
    while due:
        t_due, i, step = heapq.heappop(due)
        now = time.perf_counter()
        if t_due > now:
            time.sleep(t_due - now)
        behind = max(0.0, time.perf_counter() - t_due)
        trial = trials[i]
        tc = time.perf_counter()
        if step == 0:
            cb.on_trial_start(0, trials, trial)
        else:
            result = {"epoch": step, "training_iteration": step, "time_this_iter_s": interval}
            for j, k in enumerate(KEYS):
                result[k] = value(i, j, step)
            trial.last_result = result
            cb.on_trial_result(0, trials, trial, result)
            t_last = time.perf_counter()
            if step == steps:
                trial.status = "TERMINATED"
                cb.on_trial_complete(0, trials, trial)
        blocked += time.perf_counter() - tc
        if step < steps:
            heapq.heappush(due, (t_due + interval, i, step + 1))
        depth_max = max(depth_max, _pending(writer))
        if time.perf_counter() - last_rss > 0.5:
            rss_peak, last_rss = max(rss_peak, rss_mb()), time.perf_counter()
    window = t_last - t0
    depth_end = _pending(writer)
    c = counting[0]
    points_sent = n * steps * len(KEYS)
    with c.lock:
        calls_window = sum(1 for t, _ in c.acked_at if t <= t_last)
        all_window = sum(1 for t in c.done_at if t <= t_last)
        # the second half of the window: past the burst of trial starts, what is sustained
        t_mid = t0 + window / 2
        points_window = max((p for t, p in c.acked_at if t <= t_last), default=0)
        points_half = points_window - max((p for t, p in c.acked_at if t <= t_mid), default=0)
    # the lag at the end: until every point is acknowledged (bounded by --drain-timeout)
    while c.points < points_sent and time.perf_counter() - t_last < drain_timeout:
        depth_max = max(depth_max, _pending(writer))
        rss_peak = max(rss_peak, rss_mb())
        time.sleep(0.05)
    all_acked = next((t for t, p in c.acked_at if p >= points_sent), None)
    lag_end = (all_acked - t_last) if all_acked else None
    report = cb.close("FINISHED") or ""
    gc.collect()
    rss_end = rss_mb()

    missing, dup, wrong = readback(url, name, n, steps)
    spooled = spooled_points(spec)  # not sent, but saved for the next `--resume`: not lost
    lags = sorted(c.lags_ms)
    q = lambda p: round(lags[min(len(lags) - 1, int(p * len(lags)))] / 1000, 3) if lags else None  # noqa: E731
    shutil.rmtree(storage, ignore_errors=True)
    return {
        "trials": n, "seconds": round(window, 1), "results_sent": n * steps, "points_sent": points_sent,
        "offered_results_per_s": round(n / interval, 1),
        "results_per_s": round(points_window / len(KEYS) / window, 1),
        "points_per_s": round(points_window / window, 1), "calls_per_s": round(calls_window / window, 1),
        "results_per_s_2nd_half": round(points_half / len(KEYS) / (window / 2), 1),
        "mlflow_calls_per_s": round(all_window / window, 1),
        "log_batch_calls": c.calls.get("log_batch", 0), "mlflow_calls": sum(c.calls.values()),
        "depth_at_end": depth_end, "depth_max": depth_max,
        "lag_end_s": round(lag_end, 2) if lag_end is not None else None,
        "lag_p50_s": q(0.5), "lag_p99_s": q(0.99),
        "producer_blocked_s": round(blocked, 2), "behind_schedule_s": round(behind, 2),
        "rss_growth_peak_mb": round(rss_peak - rss0, 1), "rss_growth_end_mb": round(rss_end - rss0, 1),
        "lost": missing - spooled, "duplicated": dup, "wrong_value": wrong, "spooled_points": spooled,
        "writer": writer.stats() if hasattr(writer, "stats") else None,
    }


def spooled_points(spec) -> int:
    """Metric points in the pending spool (what the writer could not send before it closed)."""
    path = run_dir(spec) / PENDING_FILE
    if not path.is_file():
        return 0
    segments = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(len(op.get("metrics") or ()) for seg in segments for op in seg["ops"] if op.get("op") == "log")


def value(i: int, j: int, step: int) -> float:
    """What trial ``i`` reports for metric ``j`` at ``step``: computed again at read-back, so
    that the bench keeps no record of what it sent (its own memory would blur the driver's)."""
    return ((i * 1_000_003 + j * 7_919 + step * 104_729) % 999_983) / 999_983


def readback(url: str, name: str, n: int, steps: int) -> tuple[int, int, int]:
    """(lost, duplicated, wrong value) points: every trial run's metric history read back."""
    c = MlflowClient(url)
    exp = c.get_experiment_by_name(name)
    runs, token = [], None
    while True:
        page = c.search_runs([exp.experiment_id], "tags.`kdtune.role` = 'trial'", max_results=1000,
                             page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    by_trial = {r.data.tags["kdtune.trial_id"]: r.info.run_id for r in runs}

    def one(job):
        i, j = job
        tid = FakeTrial.id_of(i)
        hist = c.get_metric_history(by_trial[tid], KEYS[j]) if tid in by_trial else []
        want = {step: value(i, j, step) for step in range(1, steps + 1)}
        got: dict[int, list[float]] = {}
        for m in hist:
            got.setdefault(m.step, []).append(m.value)
        lost = sum(1 for s in want if s not in got)
        dup = sum(len(v) - 1 for v in got.values())
        wrong = sum(1 for s, v in want.items() if s in got and all(abs(x - v) > 1e-12 for x in got[s]))
        return lost, dup, wrong

    with ThreadPoolExecutor(4) as pool:  # a bounded number of requests, 4 at a time
        out = list(pool.map(one, [(i, j) for i in range(n) for j in range(len(KEYS))]))
    return tuple(sum(x[i] for x in out) for i in range(3))  # type: ignore[return-value]


def driver_costs(ns: list[int]) -> list[dict]:
    """What grows with the number of trials in the driver, beside the writer, per n trials:

    - ``tpe_suggest_ms``: one Optuna TPE suggestion (kdtune's sampler settings: multivariate,
      group, constant liar) for a 6-parameter space with n finished trials (median of 5);
    - ``searcher_pickle_mb`` / ``_s``: ``OptunaSearch.save`` pickles its whole study, once per
      Tune experiment-state save;
    - ``trial_state_mb`` / ``_s``: the trials' part of Tune's experiment state (each trial's
      JSON state and run metadata), also written once per save.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "weight_decay": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
             "temperature": optuna.distributions.FloatDistribution(1.0, 8.0),
             "alpha": optuna.distributions.FloatDistribution(0.0, 1.0),
             "batch_size": optuna.distributions.CategoricalDistribution([32, 64, 128, 256]),
             "optimizer": optuna.distributions.CategoricalDistribution(["sgd", "adamw"])}
    out = []
    for n in ns:
        rng = random.Random(n)
        sampler = optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, constant_liar=True,
                                             n_startup_trials=10)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        def draw(d):
            if isinstance(d, optuna.distributions.CategoricalDistribution):
                return rng.choice(d.choices)
            if d.log:
                return math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
            return rng.uniform(d.low, d.high)

        study.add_trials([optuna.trial.create_trial(params={k: draw(d) for k, d in dists.items()},
                                                    distributions=dists, value=rng.random()) for _ in range(n)])
        times = []
        for _ in range(5):
            t = time.perf_counter()
            trial = study.ask(dists)
            times.append(time.perf_counter() - t)
            study.tell(trial, rng.random())
        t = time.perf_counter()
        blob = pickle.dumps(study)
        pickle_s = time.perf_counter() - t
        trials = []
        for i, done in enumerate(study.get_trials(deepcopy=False)[:n]):
            tr = Trial("kd", config=dict(done.params), trial_id=f"{i:05d}", stub=True)
            tr.run_metadata.last_result = {"val_acc": rng.random(), "epoch": 20, "training_iteration": 20,
                                           **{f"m{j}": rng.random() for j in range(10)}}
            trials.append(tr)
        t = time.perf_counter()
        states = json.dumps([tr.get_json_state() for tr in trials])
        state_s = time.perf_counter() - t
        out.append({"trials": n, "tpe_suggest_ms": round(1000 * statistics.median(times), 1),
                    "searcher_pickle_mb": round(len(blob) / 2**20, 2), "searcher_pickle_s": round(pickle_s, 3),
                    "trial_state_mb": round(len(states) / 2**20, 2), "trial_state_s": round(state_s, 3)})
        print(out[-1], file=sys.stderr)
    return out


def table(rows: list[dict]) -> str:
    cols = [("trials", "N"), ("offered_results_per_s", "offered/s"), ("results_per_s", "results/s"),
            ("results_per_s_2nd_half", "2nd half/s"),
            ("points_per_s", "points/s"), ("calls_per_s", "calls/s"), ("depth_at_end", "depth@end"),
            ("lag_end_s", "lag@end s"), ("lag_p99_s", "lag p99 s"), ("producer_blocked_s", "blocked s"),
            ("rss_growth_peak_mb", "RSS+ MB"), ("spooled_points", "spooled"), ("lost", "lost"),
            ("duplicated", "dup")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 trials for 3 s: a smoke run")
    ap.add_argument("--trials", default="16,64,256", help="comma-separated trial counts")
    ap.add_argument("--seconds", type=float, default=30.0, help="reporting time per run")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between a trial's results")
    ap.add_argument("--drain-timeout", type=float, default=300.0, help="most seconds to wait for the flush")
    ap.add_argument("--workers", type=int, default=1, help="MLflow server workers")
    ap.add_argument("--tracking-uri", help="a running MLflow server instead of a throwaway one")
    ap.add_argument("--driver", metavar="N,N", help="instead: the driver's other costs at N trials "
                    "(TPE suggestion, searcher pickle, Tune trial state); no server")
    args = ap.parse_args()
    if args.driver:
        quiet_stdout()
        rows = driver_costs([int(x) for x in args.driver.split(",")])
        emit({"benchmark": "bench_tracking.driver", "cpus": os.cpu_count(),
              "load_avg": [round(x, 1) for x in os.getloadavg()], "runs": rows})
        return
    ns = [8] if args.quick else [int(x) for x in args.trials.split(",")]
    seconds = 3.0 if args.quick else args.seconds
    quiet_stdout()
    os.environ.setdefault("KDTUNE_MLFLOW_FLUSH_S", "30")  # after the drain wait: what is left is spooled
    services = None if args.tracking_uri else Services(args.workers)
    try:
        url = args.tracking_uri or services.start()
        MlflowClient(url).search_experiments(max_results=1)  # imports and connections warm
        rows = [run_one(url, n, seconds, args.interval, args.drain_timeout) for n in ns]
    finally:
        if services is not None:
            services.stop()
    print(table(rows), file=sys.stderr)
    emit({"benchmark": "bench_tracking", "backend": "postgres" if services else "given",
          "server_workers": args.workers, "interval_s": args.interval, "metrics_per_result": len(KEYS),
          "cpus": os.cpu_count(), "load_avg": [round(x, 1) for x in os.getloadavg()], "runs": rows})


if __name__ == "__main__":
    main()

"""Sweep efficiency on local Ray: how much of the machine goes to the trials themselves.

16 trials (``scratch`` ``cnn_small`` on a Fashion-MNIST subset, random search, no early
stopping, ``cpu: 1`` each, so 2 at once on 2 cores), each ≥ 10 s of training, through kdtune's
own Tuner (``kdtune.tune.run.build_tuner``: reused actors, a checkpoint every epoch, the
concurrency limiter) and trainable (``make_trainable``, with the driver's shared data view).

- trial compute: time inside ``run_trial`` minus the time inside its ``report`` calls
  (checkpoint writing and ``tune.report`` are Tune's cost, not the trial's);
- efficiency = Σ trial compute / (wall of ``Tuner.fit`` × concurrent slots);
- Ray Tune overhead per trial = (wall × slots − Σ compute) / trials.
Ray's start-up and the data-view preparation happen before ``fit`` and are reported apart.

    python benchmarks/bench_sweep.py [--quick] [--trials 16] [--train 4000] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import Timer, dataset, emit, machine, median, quiet_stdout


def make_timed_run(log_path: str):
    """``run_trial`` that appends its compute time to ``log_path`` (one JSON line per trial)."""

    def timed_run(spec, config, teacher, report, **kw):
        from kdtune.training.trial import run_trial

        in_report = [0.0]

        def timed_report(*args, **kwargs):
            t = time.perf_counter()
            try:
                return report(*args, **kwargs)
            finally:
                in_report[0] += time.perf_counter() - t

        t0 = time.perf_counter()
        try:
            return run_trial(spec, config, teacher, timed_report, **kw)
        finally:
            total = time.perf_counter() - t0
            with open(log_path, "a") as f:  # one short line per trial: appends do not interleave
                f.write(json.dumps({"total": total, "report": in_report[0]}) + "\n")

    return timed_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run: 4 digits trials of 1 epoch")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--train", type=int, default=4000, help="training images per trial")
    ap.add_argument("--epochs", type=int, default=4)
    a = ap.parse_args()
    quiet_stdout()
    if a.quick:
        a.trials, a.train, a.epochs = 4, 300, 1

    import ray

    from kdtune.spec import parse_spec
    from kdtune.training.cache import prepare_shared
    from kdtune.tune.run import build_tuner, init_ray
    from kdtune.tune.plan import concurrency
    from kdtune.tune.trainable import make_trainable

    tmp = Path(tempfile.mkdtemp(prefix="kdtune-bench-sweep-"))
    name = dataset(a.quick)
    spec = parse_spec({
        "name": "bench-sweep", "storage": str(tmp / "results"), "method": "scratch",
        "data": {"name": name, "train_limit": a.train, "val_fraction": 0.1},
        "student": {"model": "cnn_small"}, "epochs": a.epochs,
        "params": {"batch_size": 128},  # fixed: similar trial lengths; lr/wd/optimiser searched
        "search": {"algorithm": "random", "num_samples": a.trials, "seed": 0},
        "scheduler": {"type": "none"}, "resources": {"cpu": 1}})
    with Timer() as t_ray:
        init_ray()
    with Timer() as t_prep:
        shared = prepare_shared(spec, None, log=lambda s: None)
    log_path = str(tmp / "trials.jsonl")
    trainable = make_trainable(spec, None, run=make_timed_run(log_path), shared=shared)
    tuner = build_tuner(spec, trainable)
    slots = concurrency(spec, ray.cluster_resources())
    with Timer() as t_fit:
        grid = tuner.fit()
    ray.shutdown()
    rows = [json.loads(s) for s in Path(log_path).read_text().splitlines()]
    compute = [r["total"] - r["report"] for r in rows]
    errors = sum(r.error is not None for r in grid)
    busy = t_fit.s * slots
    emit({"benchmark": "sweep", "dataset": name, "trials": len(rows), "errors": errors,
          "slots": slots, "epochs": a.epochs, "train_images": a.train,
          "efficiency": round(sum(compute) / busy, 3),
          "tune_overhead_per_trial_s": round((busy - sum(compute)) / max(len(rows), 1), 2),
          "trial_compute_median_s": round(median(compute), 2),
          "trial_compute_min_s": round(min(compute), 2),
          "report_median_s": round(median([r["report"] for r in rows]), 2),
          "wall_s": round(t_fit.s, 1), "ray_init_s": round(t_ray.s, 1),
          "prepare_shared_s": round(t_prep.s, 2), "machine": machine()})


if __name__ == "__main__":
    main()

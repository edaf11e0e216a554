"""The driver's cost per trial at many trials: N short kdtune trials on a Ray cluster.

Each trial trains a tiny student (``cnn_small`` ×0.25, 240 digits images, batch 64) for 3 epochs
and reports each epoch, as issue 17 asks ("1,000 short trials, each reports 3 epochs of a tiny
model"): random search, no early stopping, ``cpu: 1`` per trial, MLflow tracking into the
sweep's sqlite store (the driver-side writer), checkpoints every epoch (kdtune's default). By
default on the two-node local cluster (``clusters/local.sh``, 1 CPU a node, so 2 trials at a
time) with this process as the driver; ``--local`` uses a local Ray instead.

Figures, in the terms of Ray Tune's own scalability figure (10,000 1-s trials on 16 CPUs in
715 s against a 625 s floor: 14 % overhead):

- a trial's work: Tune's own ``time_total_s`` of each trial (the trainable's clock, from its
  start to its last report: kdtune's trial setup in the actor, 3 epochs, test evaluation);
  ``trial_s`` is their median;
- ``floor_s`` = Σ work / concurrency, as in Tune's figure; ``overhead_pct`` = wall / floor − 1;
- ``overhead_per_trial_s`` = (wall × concurrency − Σ work) / N: what a trial costs beyond its
  own clock (Tune's scheduling and actor reuse, the results' trip to the driver, the driver's
  callbacks and MLflow writes, checkpoints, experiment-state saves); it includes starting
  Ray and the sweep, which ``steady_overhead_per_trial_s`` leaves out (the same figure over
  the trials that ended between the 10th and 90th percentile of end times);
- driver memory (this process's RSS, sampled every 0.5 s): after warm-up (the sample at 10 %
  of the run: Ray connected, the first trials done), at the end, the peak, and the growth
  between the first and the second.

On 2 cores the driver shares the CPUs with the two trials, so the overhead includes the
driver's CPU time taken from them; on a cluster the driver has its own head node.

    python benchmarks/bench_tune_overhead.py [--trials 1000] [--checkpoint-every-s 60] [--local] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from _common import emit, free_port, local_cluster, machine, median, quiet_stdout, rss_mb

# Read by Ray at import: keeps 127.0.0.1 as given when this driver joins the local cluster
# (otherwise Ray turns it into the machine's outward address; see clusters/local.sh)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

SPEC = """\
name: overhead
data: {{name: digits, val_fraction: 0.2, train_limit: 300}}
student: {{model: cnn_small, kwargs: {{width: 0.25}}}}
method: scratch
epochs: 3
params: {{batch_size: 64}}
search: {{algorithm: random, num_samples: {n}, seed: 0}}
scheduler: {{type: none}}
resources: {{cpu: 1, gpu: 0}}
storage: {storage}
checkpoint_every_s: {every}
"""


class RSS(threading.Thread):
    """Samples this process's resident memory every 0.5 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples, self.stop = [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(rss_mb())
            self.stop.wait(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--checkpoint-every-s", type=float, default=0,
                    help="spec.checkpoint_every_s (0, the default: a checkpoint every epoch)")
    ap.add_argument("--local", action="store_true", help="a local Ray (2 CPUs), not the two-node cluster")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 trials, local Ray")
    a = ap.parse_args()
    if a.quick:
        a.trials, a.local = 20, True
    quiet_stdout()
    from kdtune import api
    from kdtune.checks import load_spec

    with tempfile.TemporaryDirectory(prefix="kdtune-overhead-") as d:
        spec_path = Path(d) / "spec.yaml"
        spec_path.write_text(SPEC.format(n=a.trials, storage=f"{d}/results", every=a.checkpoint_every_s))
        spec = load_spec(spec_path, [])

        if not a.local:
            port = free_port()
            local_cluster("start", Path(d) / "ray", "--cpus", "1", "--gpus", "0", "--port", str(port),
                    "--dashboard-port", str(free_port()))
            os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        rss = RSS()
        try:
            import ray

            rss.start()
            t0 = time.perf_counter()
            res = api.sweep(spec, log=lambda m: None)
            wall = time.perf_counter() - t0
            rss.stop.set()
            concurrency = int(ray.cluster_resources().get("CPU", 1))
            ray.shutdown()
        finally:
            if not a.local:
                local_cluster("stop", Path(d) / "ray")
        tune_s, ends = [], []
        for f in (Path(d) / "results" / "overhead").glob("*/result.json"):
            lines = f.read_text().splitlines()
            if lines:
                last = json.loads(lines[-1])
                tune_s.append(last["time_total_s"])
                ends.append(last["timestamp"])

    n, work = len(res.trials), sum(tune_s)
    at10 = rss.samples[len(rss.samples) // 10]
    # steady state: the trials that ended between the 10th and 90th percentile of end times
    ends.sort()
    lo, hi = ends[len(ends) // 10], ends[(9 * len(ends)) // 10]
    steady = sum(lo < e <= hi for e in ends)
    emit({
        "bench": "tune_overhead", "cluster": "local Ray" if a.local else "clusters/local.sh, 2 nodes × 1 CPU",
        "checkpoint_every_s": a.checkpoint_every_s, "trials": n, "finished": sum(t.status == "completed" for t in res.trials), "errors": len(res.errors),
        "concurrency": concurrency, "wall_s": round(wall, 1), "trial_s": round(median(tune_s), 3),
        "floor_s": round(work / concurrency, 1),
        "overhead_pct": round(100 * (wall / (work / concurrency) - 1), 1),
        "overhead_per_trial_s": round((wall * concurrency - work) / n, 3),
        "steady_trials_per_s": round(steady / (hi - lo), 2) if hi > lo else None,
        "steady_overhead_per_trial_s": (round(concurrency * (hi - lo) / steady - work / n, 3)
                                        if hi > lo else None),
        # trials per second in each tenth of the run's end times: does the cost grow with n?
        "trials_per_s_by_tenth": [round(sum(ends[i * n // 10] < e <= ends[(i + 1) * n // 10 - 1] for e in ends)
                                        / max(1e-9, ends[(i + 1) * n // 10 - 1] - ends[i * n // 10]), 2)
                                  for i in range(10)] if n >= 20 else None,
        "driver_rss_mb": {"warm": round(at10, 1), "end": round(rss.samples[-1], 1),
                          "peak": round(max(rss.samples), 1), "growth": round(rss.samples[-1] - at10, 1)},
        "load_avg_end": round(os.getloadavg()[0], 2), **machine()})


if __name__ == "__main__":
    main()

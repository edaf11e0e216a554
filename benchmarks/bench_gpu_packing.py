"""Trials per hour on one GPU at ``resources.gpu`` 1.0, 0.5 and 0.25 (1, 2, 4 trials per card).

The same small sweep (``scratch`` ``cnn_small`` on a Fashion-MNIST subset, random search,
no early stopping, ``cpu: 1`` per trial) run through kdtune's Tuner at each fraction,
interleaved over repetitions; trials/hour = trials / wall of ``Tuner.fit`` × 3600 (median).
Without a CUDA device it prints ``{"skipped": "no CUDA device"}`` and exits 0.

    python benchmarks/bench_gpu_packing.py [--quick] [--reps 3] [--trials 8] [--epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import Timer, dataset, emit, machine, median, quiet_stdout

FRACTIONS = (1.0, 0.5, 0.25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run: 4 trials of 1 epoch, 1 rep")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train", type=int, default=10000)
    a = ap.parse_args()
    quiet_stdout()

    import torch

    if not torch.cuda.is_available():
        emit({"benchmark": "gpu_packing", "skipped": "no CUDA device"})
        return
    if a.quick:
        a.reps, a.trials, a.epochs, a.train = 1, 4, 1, 1000

    import ray

    from kdtune.spec import parse_spec
    from kdtune.training.cache import prepare_shared
    from kdtune.tune.run import build_tuner, init_ray
    from kdtune.tune.trainable import make_trainable

    tmp = Path(tempfile.mkdtemp(prefix="kdtune-bench-gpu-"))
    name = dataset(a.quick)
    init_ray()
    if ray.cluster_resources().get("GPU", 0) < 1:
        emit({"benchmark": "gpu_packing", "skipped": "Ray sees no GPU"})
        return

    def sweep(frac: float, rep: int) -> tuple[float, int]:
        spec = parse_spec({
            "name": f"pack-{frac:g}-{rep}", "storage": str(tmp / "results"), "method": "scratch",
            "data": {"name": name, "train_limit": a.train, "val_fraction": 0.1},
            "student": {"model": "cnn_small"}, "epochs": a.epochs, "params": {"batch_size": 128},
            "search": {"algorithm": "random", "num_samples": a.trials, "seed": rep},
            "scheduler": {"type": "none"}, "resources": {"cpu": 1, "gpu": frac}})
        shared = prepare_shared(spec, None, log=lambda s: None)
        tuner = build_tuner(spec, make_trainable(spec, None, shared=shared))
        with Timer() as t:
            grid = tuner.fit()
        return t.s, sum(r.error is not None for r in grid)

    walls: dict[float, list[float]] = {f: [] for f in FRACTIONS}
    errors = 0
    for rep in range(a.reps):
        for f in (FRACTIONS if rep % 2 == 0 else FRACTIONS[::-1]):
            s, e = sweep(f, rep)
            walls[f].append(s)
            errors += e
    ray.shutdown()
    tph = {f"{f:g}": round(a.trials / median(w) * 3600, 1) for f, w in walls.items()}
    emit({"benchmark": "gpu_packing", "dataset": name, "trials": a.trials, "epochs": a.epochs,
          "train_images": a.train, "reps": a.reps, "trials_per_hour": tph,
          "quarter_over_full": round(tph["0.25"] / tph["1"], 2), "errors": errors,
          "wall_s": {f"{f:g}": round(median(w), 1) for f, w in walls.items()}, "machine": machine()})


if __name__ == "__main__":
    main()

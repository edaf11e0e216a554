"""Search efficiency: TPE + ASHA vs random search without early stopping, same epoch budget.

KD on Fashion-MNIST-5 (a ``cnn4`` teacher on all 10 classes of a small subset, a
``cnn_small`` width-0.5 student on the first 5, G→S), the ``kd`` space (+ ``_common.yaml``).
For each of 3 seeds:

- random: ``--random-trials`` trials × ``--epochs`` epochs, no early stopping; that product is
  the epoch budget, and R = its final best ``val_acc`` (a trial's value at its last epoch);
- TPE + ASHA (grace 1, reduction factor 3): as many trials as fit the same budget (stopped
  when the epochs reported reach it).

Each search's epochs are counted in the order the driver hears them (2 trials at once); the
figure is the epochs each needed until some trial first reported ``val_acc`` ≥ R. Both
searches start with the paper defaults (``points_to_evaluate``). Everything runs through
kdtune's Tuner and trainable with the driver's teacher-output cache.

    python benchmarks/bench_search.py [--quick] [--seeds 0 1 2] [--random-trials 8] [--epochs 9]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import Timer, dataset, emit, machine, median, quiet_stdout


def run_search(spec, teacher, shared, budget: int) -> list[tuple[str, int, float]]:
    """(trial, epoch, val_acc) of every main epoch, in the order the driver heard them."""
    from ray.tune import Callback
    from ray.tune.stopper import Stopper

    from kdtune.tune.run import build_tuner
    from kdtune.tune.trainable import make_trainable

    heard: list[tuple[str, int, float]] = []

    class Record(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "epoch" in result and spec.metric in result and len(heard) < budget:
                heard.append((trial.trial_id, int(result["epoch"]), float(result[spec.metric])))

    class Budget(Stopper):
        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return len(heard) >= budget

    tuner = build_tuner(spec, make_trainable(spec, teacher, shared=shared), [Record()])
    tuner._local_tuner.get_run_config().stop = Budget()  # build_tuner has no `stop` argument
    tuner.fit()
    return heard


def final_best(heard: list[tuple[str, int, float]]) -> float:
    """kdtune's best: the highest val_acc at a trial's last reported epoch."""
    last: dict[str, tuple[int, float]] = {}
    for trial, epoch, v in heard:
        if trial not in last or epoch >= last[trial][0]:
            last[trial] = (epoch, v)
    return max(v for _, v in last.values())


def epochs_to_reach(heard: list[tuple[str, int, float]], target: float) -> int | None:
    """Epochs heard until some trial first reported ``val_acc`` ≥ target."""
    for i, (_, _, v) in enumerate(heard, 1):
        if v >= target - 1e-12:
            return i
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run: digits, 1 seed, 3×2 epochs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--random-trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=9, help="max_t: epochs of a full trial (ASHA rungs 1, 3)")
    ap.add_argument("--train", type=int, default=2000, help="images of the student's 5 classes (train + val)")
    a = ap.parse_args()
    quiet_stdout()
    if a.quick:
        a.seeds, a.random_trials, a.epochs, a.train = [0], 3, 2, 400

    import ray

    from kdtune.spec import parse_spec
    from kdtune.training.cache import prepare_shared
    from kdtune.training.teacher import ensure_teacher
    from kdtune.tune.run import init_ray

    tmp = Path(tempfile.mkdtemp(prefix="kdtune-bench-search-"))
    name = dataset(a.quick)
    budget = a.random_trials * a.epochs

    def spec_for(algo: str, seed: int):
        asha = algo == "tpe"
        return parse_spec({
            "name": f"search-{algo}-{seed}", "storage": str(tmp / "results"), "method": "kd",
            # a larger val split than usual: at 150 images one image is 0.7 % and ties decide
            "data": {"name": name, "train_limit": a.train, "val_fraction": 0.3},
            "teacher": {"model": "cnn4", "epochs": 5},
            "student": {"model": "cnn_small", "classes": {"first": 5}, "kwargs": {"width": 0.5}},
            "epochs": a.epochs,
            "search": {"algorithm": algo, "seed": seed,
                       "num_samples": 4 * a.random_trials if asha else a.random_trials},
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3} if asha
            else {"type": "none"},
            "resources": {"cpu": 1}})

    with Timer() as t_all:
        init_ray()
        first = spec_for("random", a.seeds[0])
        teacher = ensure_teacher(first, log=lambda s: None)
        shared = prepare_shared(first, teacher, log=lambda s: None)  # the same for every search
        per_seed = []
        for seed in a.seeds:
            rnd = run_search(spec_for("random", seed), teacher, shared, budget)
            tpe = run_search(spec_for("tpe", seed), teacher, shared, budget)
            target = final_best(rnd)
            r_ep, t_ep = epochs_to_reach(rnd, target), epochs_to_reach(tpe, target)
            per_seed.append({"seed": seed, "target_val_acc": round(target, 4),
                             "random_epochs": r_ep, "tpe_asha_epochs": t_ep,
                             "tpe_asha_final_best": round(final_best(tpe), 4), "tpe_asha_epochs_run": len(tpe),
                             "ratio": round(t_ep / r_ep, 3) if t_ep else None})
        ray.shutdown()
    # a seed where TPE+ASHA never reached R counts as an infinite ratio (it lost that seed)
    med = median([s["ratio"] if s["ratio"] is not None else float("inf") for s in per_seed])
    emit({"benchmark": "search", "dataset": f"{name}-5", "budget_epochs": budget,
          "max_t": a.epochs, "random_trials": a.random_trials, "seeds": a.seeds,
          "median_tpe_over_random_epochs": None if med == float("inf") else round(med, 3),
          "reached": sum(s["ratio"] is not None for s in per_seed), "per_seed": per_seed,
          "wall_s": round(t_all.s, 1), "machine": machine()})


if __name__ == "__main__":
    main()

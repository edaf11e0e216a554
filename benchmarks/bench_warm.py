"""Warm starts: does a sweep that starts from an earlier, related sweep's trials find a good
student in fewer epochs than the same sweep started cold?

Setting: bench_search's (``_common.G2S``: Fashion-MNIST G→S, kd, ``cnn_small`` ×0.25, 1,500
training and 2,000 validation images, 8 epochs a trial, the teacher's outputs cached). Per seed:

1. **source**: an earlier sweep on a related setting — the same method and space on another
   split of the data (``data.split_seed=1``: other training and validation images) — run as a
   user would, ``kdtune.api.sweep`` with the default search (TPE + ASHA), ``--source-trials``
   trials, logged to the store's MLflow (sqlite);
2. **cold**: the default search on the benchmark's split (``split_seed`` 0);
3. **warm**: the same, with ``search.warm_start: [source]``: the source's full-length trials
   are observations of the new study before its first trial.

Cold and warm get the same budget of epochs (``--trials`` × 8) and the same search seed, and
their epochs are counted as bench_search counts them (in the order the driver hears them; the
answer after each is kdtune's best). Figure: per seed, the epochs warm needed to reach cold's
final best, against the epochs cold needed to reach it (its own first time); the median ratio
over seeds (target ≤ 0.5). A seed where warm never reached it counts as infinitely many.

    python benchmarks/bench_warm.py [--seeds 5 6 7] [--trials 30] [--source-trials 30] [--quick]

Outputs: one JSON line; benchmarks/out/warm_runs.jsonl (one row per finished search, reused by
a rerun with the same setting, so an interrupted run continues); benchmarks/warm.png.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import time
from pathlib import Path

from _common import (G2S, G2S_QUICK, OUT, ROOT, append_jsonl, dataset, emit, g2s_spec, g2s_teacher, machine,
                     median, quiet_stdout)
from bench_search import answers, epochs_to_reach, git_head, load_done, plot, run_search, setting_key


def log(msg: str) -> None:
    print(f"[bench_warm {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7])
    ap.add_argument("--trials", type=int, default=30, help="cold/warm budget, in full-length trials")
    ap.add_argument("--source-trials", type=int, default=30, help="trials of the source sweep")
    ap.add_argument("--quick", action="store_true", help="smoke run: digits, 1 seed, tiny budgets")
    a = ap.parse_args()
    quiet_stdout()
    setting = dict(G2S_QUICK if a.quick else G2S)
    if a.quick:
        a.seeds, a.trials, a.source_trials = a.seeds[:1], 3, 4
    name, suffix = dataset(a.quick), "_quick" if a.quick else ""
    store = OUT / f"warm-store{suffix}"
    runs_path = OUT / f"warm_runs{suffix}.jsonl"
    budget = a.trials * setting["epochs"]

    import ray
    from scipy.stats import t as t_dist  # scikit-learn's dependency

    from kdtune import api
    from kdtune.training.cache import prepare_shared
    from kdtune.tune.run import init_ray
    from kdtune.tune.schedule import grace_period

    t0 = time.perf_counter()
    base = g2s_spec("bench-warm", store, name, setting)
    teacher, facts = g2s_teacher(base, log=log)
    tpath = str(teacher.path)
    base = g2s_spec("bench-warm", store, name, setting, teacher=tpath)
    shared = prepare_shared(base, teacher, log=log)
    done = load_done(runs_path)
    rows: dict[tuple[str, int], dict] = {}
    head = git_head()
    for seed in a.seeds:
        source = f"bench-warm-source-{seed}"
        key = setting_key({"setting": setting, "dataset": name, "budget": budget, "teacher": teacher.meta.get("key"),
                           "source_trials": a.source_trials, "warm": 1})
        if ("source", seed, key) not in done:  # the earlier sweep, as a user runs it (MLflow)
            spec = g2s_spec(source, store, name, setting, teacher=tpath,
                            overrides=[f"search.seed={seed}", "data.split_seed=1",
                                       f"search.num_samples={a.source_trials}"])
            shutil.rmtree(Path(spec.storage) / spec.name, ignore_errors=True)
            t = time.perf_counter()
            res = api.sweep(spec, log=lambda m: None)
            full = sum(tr.epochs == spec.epochs for tr in res.trials)
            done[("source", seed, key)] = append_jsonl(runs_path, {
                "contender": "source", "seed": seed, "key": key, "trials": len(res.trials),
                "full_trials": full, "epochs_run": sum(tr.epochs for tr in res.trials),
                "best": res.best.value if res.best else None, "wall_s": round(time.perf_counter() - t, 1)})
            log(f"source seed {seed}: {len(res.trials)} trials, {full} full-length")
        for cname, extra in (("cold", []), ("warm", [f"search.warm_start=[{source}]"])):
            if (cname, seed, key) in done:
                rows[(cname, seed)] = done[(cname, seed, key)]
                continue
            spec = g2s_spec(f"bench-warm-{cname}-{seed}", store, name, setting, teacher=tpath,
                            overrides=[f"search.seed={seed}", *extra])
            spec.search.num_samples = max(1, budget // grace_period(spec))  # only the budget ends it
            shutil.rmtree(Path(spec.storage) / spec.name, ignore_errors=True)
            init_ray(log=log)
            t = time.perf_counter()
            heard, counts = run_search(spec, teacher, shared, budget)
            wall = time.perf_counter() - t
            shutil.rmtree(Path(spec.storage) / spec.name, ignore_errors=True)
            rows[(cname, seed)] = done[(cname, seed, key)] = append_jsonl(runs_path, {
                "contender": cname, "seed": seed, "key": key, "budget": budget,
                "curve": [round(v, 5) for v in answers(heard)], "heard": heard, **counts,
                "full_trials": sum(e == spec.epochs for _, e, _ in heard),
                "wall_s": round(wall, 1), "git": head, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
            log(f"{cname} seed {seed}: best {rows[(cname, seed)]['curve'][-1]:.4f}, {wall:.0f} s")
    if ray.is_initialized():
        ray.shutdown()

    per_seed = []
    for seed in a.seeds:
        cold, warm = rows[("cold", seed)]["curve"], rows[("warm", seed)]["curve"]
        target = cold[-1]
        c_ep, w_ep = epochs_to_reach(cold, target), epochs_to_reach(warm, target)
        src = done[("source", seed, key)]
        per_seed.append({"seed": seed, "target": target, "cold_epochs": c_ep, "warm_epochs": w_ep,
                         "ratio": round(w_ep / c_ep, 3) if w_ep else None, "cold_final": cold[-1],
                         "warm_final": warm[-1], "source_full_trials": src["full_trials"],
                         "source_trials": src["trials"]})
    ratio = median([s["ratio"] or math.inf for s in per_seed])
    # best so far at fixed points of the budget, warm − cold paired by seed (95 % t interval)
    at = {}
    for ep in sorted({budget // 16, budget // 8, budget // 4, budget // 2, budget} - {0}):
        d = [rows[("warm", s)]["curve"][ep - 1] - rows[("cold", s)]["curve"][ep - 1] for s in a.seeds]
        half = float(t_dist.ppf(0.975, len(d) - 1)) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else None
        at[ep] = {"cold_median": median([rows[("cold", s)]["curve"][ep - 1] for s in a.seeds]),
                  "warm_median": median([rows[("warm", s)]["curve"][ep - 1] for s in a.seeds]),
                  "paired_mean": round(statistics.mean(d), 4), "ci95": round(half, 4) if half else None,
                  "warm_higher": sum(x > 0 for x in d)}
    png = OUT / "warm_quick.png" if a.quick else ROOT / "benchmarks" / "warm.png"
    plot(rows, ["cold", "warm"], a.seeds, budget, png,
         f"{name}-5 G→S kd: cold vs warm-started from a sweep on another split; seeds {a.seeds}")
    emit({"benchmark": "warm_start", "dataset": f"{name}-5", "setting": setting, **facts,
          "budget_epochs": budget, "source_trials": a.source_trials, "seeds": a.seeds,
          "median_ratio_warm_vs_cold": None if ratio == math.inf else ratio,
          "reached": sum(s["warm_epochs"] is not None for s in per_seed),
          "median_final": {"cold": median([s["cold_final"] for s in per_seed]),
                           "warm": median([s["warm_final"] for s in per_seed])},
          "best_at_epochs": at, "per_seed": per_seed, "plot": str(png.relative_to(ROOT)),
          "wall_s": round(time.perf_counter() - t0, 1), "machine": machine()})


if __name__ == "__main__":
    main()

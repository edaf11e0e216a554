"""Search at equal epoch budgets: kdtune's default search against random search, with and
without ASHA, on a setting where configurations separate late.

Setting (``_common.G2S``): Fashion-MNIST, a ``cnn4`` teacher on all 10 classes, a ``cnn_small``
width-0.25 student on the first 5 (G→S), 1,500 training and 2,000 validation images, 8 epochs
per trial, method ``kd`` with its default search space (``search_spaces/kd.yaml`` +
``_common.yaml``, as they are now). The teacher is trained once and cached; trials read its
outputs from kdtune's teacher-output cache (``prepare_shared``).

Contenders, each with the same budget of ``--trials`` × ``--epochs`` epochs per search:

- ``kdtune``: the spec's defaults (TPE + ASHA as kdtune configures them);
- ``random+asha``: the same with ``search.algorithm: random`` (the baseline);
- ``random``: random search, ``scheduler: {type: none}`` (every trial runs all its epochs);
- ``--variant NAME KEY=VALUE ...``: any other spec overrides, e.g. ``scheduler.grace_period=3``.

Epochs are counted in the order the driver hears them (2 trials at once); a search stops when
its budget is heard. After each heard epoch, a search's answer is kdtune's "best": the highest
``val_acc`` at a trial's last reported epoch. The figure is, per contender, the median over
seeds of the epochs it needed until its answer reached random+ASHA's final answer (same seed),
and how many seeds got there. Each (contender, seed) is appended to a JSONL file when it ends;
a rerun skips those already there (same setting), so an interrupted run continues.

    python benchmarks/bench_search.py [--quick] [--seeds 5 6 7 8 9] [--trials 50] [--epochs 8]
        [--contenders kdtune random+asha random] [--variant NAME KEY=VALUE ...]

Outputs: one JSON line on stdout; benchmarks/search.png (best so far against epochs);
benchmarks/out/search.json (summary and curves); benchmarks/out/search_runs.jsonl (raw).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import (G2S, G2S_QUICK, OUT, ROOT, append_jsonl, dataset, emit, g2s_spec, g2s_teacher, machine, median,
                     quiet_stdout)

CONTENDERS = {"kdtune": [], "random+asha": ["search.algorithm=random"],
              "random": ["search.algorithm=random", "scheduler.type=none"]}
BASELINE = "random+asha"


def log(msg: str) -> None:
    print(f"[bench_search {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_search(spec, teacher, shared, budget: int) -> tuple[list[tuple[int, int, float]], dict]:
    """(trial number, epoch, val_acc) of the first ``budget`` main epochs the driver heard, in
    that order; and counts of the search (trials started, errors)."""
    from ray.tune import Callback
    from ray.tune.stopper import Stopper

    from kdtune.tune.run import build_tuner
    from kdtune.tune.trainable import make_trainable

    heard: list[tuple[int, int, float]] = []
    ids: dict[str, int] = {}

    class Record(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "epoch" in result and spec.metric in result and len(heard) < budget:
                n = ids.setdefault(trial.trial_id, len(ids))
                heard.append((n, int(result["epoch"]), float(result[spec.metric])))

    class Budget(Stopper):
        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return len(heard) >= budget

    tuner = build_tuner(spec, make_trainable(spec, teacher, shared=shared), [Record()], stop=Budget())
    grid = tuner.fit()
    return heard, {"trials": len(ids), "errors": len(grid.errors)}


def answers(heard: list[tuple[int, int, float]]) -> list[float]:
    """kdtune's best after each heard epoch: the highest val_acc at a trial's last epoch so far."""
    last: dict[int, float] = {}
    out, best = [], -math.inf
    for trial, _, v in heard:
        old = last.get(trial)
        last[trial] = v
        # a trial's newer value replaces its older one: recompute only when that was the best
        best = max(last.values()) if old is not None and old >= best else max(best, v)
        out.append(best)
    return out


def epochs_to_reach(curve: list[float], target: float) -> int | None:
    """Epochs heard until the search's answer was ≥ target (None: never within the budget)."""
    for i, v in enumerate(curve, 1):
        if v >= target - 1e-12:
            return i
    return None


def setting_key(setting: dict) -> str:
    """What makes a stored result reusable: the settings, the overrides, the search spaces."""
    spaces = "".join((ROOT / "search_spaces" / f).read_text() for f in ("_common.yaml", "kd.yaml"))
    blob = json.dumps(setting, sort_keys=True) + spaces
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_done(path: Path) -> dict[tuple[str, int, str], dict]:
    """The (contender, seed, setting key) rows already in the JSONL file (a torn last line from
    a killed run is ignored)."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[(r["contender"], r["seed"], r["key"])] = r
    return done


def summarize(rows: dict[tuple[str, int], dict], names: list[str], seeds: list[int]) -> dict:
    """Per contender: epochs to random+ASHA's final answer (per seed, median, reached)."""
    out = {}
    for name in names:
        per_seed = []
        for seed in seeds:
            r, base = rows.get((name, seed)), rows.get((BASELINE, seed))
            if r is None or base is None:
                continue
            target = base["curve"][-1]
            ep, base_ep = epochs_to_reach(r["curve"], target), epochs_to_reach(base["curve"], target)
            per_seed.append({"seed": seed, "target": round(target, 4), "epochs": ep,
                             "ratio_vs_baseline": round(ep / base_ep, 3) if ep else None,
                             "final_best": round(r["curve"][-1], 4), "epochs_run": len(r["curve"]),
                             "trials": r["trials"], "full_trials": r["full_trials"],
                             "errors": r["errors"], "wall_s": r["wall_s"]})
        if not per_seed:
            continue
        # a seed that never reached the target counts as infinitely many epochs (it lost)
        med = median([s["epochs"] or math.inf for s in per_seed])
        ratio = median([s["ratio_vs_baseline"] or math.inf for s in per_seed])
        out[name] = {"median_epochs_to_target": None if med == math.inf else med,
                     "reached": sum(s["epochs"] is not None for s in per_seed), "seeds": len(per_seed),
                     "median_ratio_vs_baseline": None if ratio == math.inf else round(ratio, 3),
                     "median_final_best": round(median([s["final_best"] for s in per_seed]), 4),
                     "median_wall_s": round(median([s["wall_s"] for s in per_seed]), 1),
                     "per_seed": per_seed}
    return out


def plot(rows: dict[tuple[str, int], dict], names: list[str], seeds: list[int], budget: int,
         path: Path, title: str) -> None:
    """Best so far against epochs heard: each seed thin, the median over seeds bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, name in enumerate(names):
        curves = [rows[(name, s)]["curve"] for s in seeds if (name, s) in rows]
        if not curves:
            continue
        color = f"C{i}"
        for c in curves:
            ax.plot(range(1, len(c) + 1), c, color=color, alpha=0.25, lw=0.8, drawstyle="steps-post")
        n = min(len(c) for c in curves)
        med = [median([c[j] for c in curves]) for j in range(n)]
        ax.plot(range(1, n + 1), med, color=color, lw=2.2, drawstyle="steps-post",
                label=f"{name} (median of {len(curves)})")
    ax.set_xlim(1, budget)
    ax.set_xlabel("epochs heard by the driver")
    ax.set_ylabel("best val_acc so far (kdtune's best: a trial's last epoch)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(rows: dict, names: list[str], a, setting: dict, facts: dict, name: str,
                  budget: int, t0: float) -> dict:
    """Summary and curves to benchmarks/out/search.json, the plot to benchmarks/search.png
    (``--quick``: both under out/, suffixed); returns the stdout line's figures."""
    suffix = "_quick" if a.quick else ""
    summary = summarize(rows, names, a.seeds)
    title = (f"{name}-5 G→S kd, cnn_small w{setting['width']}, {facts['student_train_images']} train / "
             f"{facts['val_images']} val, budget {a.trials}×{setting['epochs']} epochs, seeds {a.seeds}")
    png = OUT / "search_quick.png" if a.quick else ROOT / "benchmarks" / "search.png"
    plot(rows, names, a.seeds, budget, png, title)
    figures = {"benchmark": "search", "dataset": f"{name}-5", "setting": setting, **facts,
               "budget_epochs": budget, "trials_budget": a.trials, "seeds": a.seeds,
               "target": f"{BASELINE}'s final best, same seed", "contenders": summary,
               "wall_s": round(time.perf_counter() - t0, 1), "machine": machine()}
    curves = {n: {str(s): rows[(n, s)]["curve"] for s in a.seeds if (n, s) in rows} for n in names}
    js = OUT / f"search{suffix}.json"
    js.write_text(json.dumps({**figures, "curves": curves}, indent=1))
    # the stdout line keeps the medians; per-seed detail is in the JSON file
    brief = {n: {k: v for k, v in c.items() if k != "per_seed"} for n, c in summary.items()}
    return {**figures, "contenders": brief, "plot": str(png.relative_to(ROOT)),
            "json": str(js.relative_to(ROOT))}


def git_head() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: digits, 1 seed, 3 × 2 epochs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7, 8, 9],
                    help="search seeds to report (0-4 are for choosing defaults)")
    ap.add_argument("--trials", type=int, default=50, help="budget, in full-length trials")
    ap.add_argument("--epochs", type=int, default=G2S["epochs"], help="epochs of a full trial (max_t)")
    ap.add_argument("--contenders", nargs="+", default=None, help="run only these (names)")
    ap.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME KEY=VALUE",
                    help="another contender: a name, then spec overrides")
    ap.add_argument("--runs", type=Path, default=None, help="the JSONL file of finished searches")
    a = ap.parse_args()
    quiet_stdout()
    setting = dict(G2S_QUICK if a.quick else G2S, epochs=a.epochs)
    if a.quick:
        a.seeds, a.trials, setting["epochs"] = a.seeds[:1], 3, 2
    contenders = dict(CONTENDERS)
    for v in a.variant:
        contenders[v[0]] = v[1:]
    names = a.contenders or list(contenders)
    unknown = [n for n in names if n not in contenders]
    if unknown:
        ap.error(f"unknown contender(s) {unknown}; known: {list(contenders)}")
    suffix = "_quick" if a.quick else ""
    runs_path = a.runs or OUT / f"search_runs{suffix}.jsonl"
    store = OUT / f"search-store{suffix}"
    budget = a.trials * setting["epochs"]
    name = dataset(a.quick)

    import ray

    from kdtune.training.cache import prepare_shared
    from kdtune.tune.run import init_ray
    from kdtune.tune.schedule import grace_period

    t0 = time.perf_counter()
    base = g2s_spec("bench-search", store, name, setting)
    teacher, facts = g2s_teacher(base, log=log)
    base = g2s_spec("bench-search", store, name, setting, teacher=str(teacher.path))
    shared = prepare_shared(base, teacher, log=log)  # the same files for every search
    log(f"setting {setting}; {facts}; budget {budget} epochs per search")
    done = load_done(runs_path)
    rows: dict[tuple[str, int], dict] = {}
    head = git_head()
    for seed in a.seeds:
        for cname in names:
            overrides = [f"search.seed={seed}", *contenders[cname]]
            key = setting_key({"setting": setting, "dataset": name, "budget": budget,
                               "overrides": contenders[cname], "teacher": teacher.meta.get("key")})
            if (cname, seed, key) in done:
                rows[(cname, seed)] = done[(cname, seed, key)]
                continue
            spec = g2s_spec(f"bench-search-{cname.replace('+', '_')}-{seed}", store, name, setting,
                            teacher=str(teacher.path), overrides=overrides)
            # enough trials that only the budget ends a search: each runs ≥ grace epochs
            per_trial = grace_period(spec) if spec.scheduler.type == "asha" else spec.epochs
            spec.search.num_samples = max(1, budget // per_trial)
            exp = Path(spec.storage) / spec.name
            shutil.rmtree(exp, ignore_errors=True)  # an interrupted attempt starts over
            init_ray(log=log)
            t = time.perf_counter()
            heard, counts = run_search(spec, teacher, shared, budget)
            wall = time.perf_counter() - t
            shutil.rmtree(exp, ignore_errors=True)  # checkpoints: gigabytes over a full run
            curve = answers(heard)
            row = {"contender": cname, "seed": seed, "key": key, "overrides": contenders[cname],
                   "budget": budget, "curve": [round(v, 5) for v in curve], "heard": heard,
                   "full_trials": sum(e == spec.epochs for _, e, _ in heard),
                   "num_samples": spec.search.num_samples, **counts,
                   "wall_s": round(wall, 1), "git": head, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
            rows[(cname, seed)] = append_jsonl(runs_path, row)
            log(f"{cname} seed {seed}: {len(heard)} epochs, {counts['trials']} trials, "
                f"best {curve[-1] if curve else float('nan'):.4f}, {wall:.0f} s")
        write_results(rows, names, a, setting, facts, name, budget, t0)  # partial figures so far
    if ray.is_initialized():
        ray.shutdown()
    emit(write_results(rows, names, a, setting, facts, name, budget, t0))


if __name__ == "__main__":
    main()

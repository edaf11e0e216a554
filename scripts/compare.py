"""Compare methods on one spec: each run × seed trained with `kdtune train` semantics.

Two modes. ``--run`` rows train fixed configurations (paper defaults plus overrides).
``--table FILE`` reruns a whole results table from one YAML file: per row a kdtune sweep
(`kdtune sweep run`), then the sweep's best.yaml re-trained on every seed (`kdtune train
best.yaml --seed N`), with means and 95 % confidence intervals (see ``run_table``).

Resumable: results are appended as JSON lines to --out, and a (label, seed) already there is
skipped. Prints a markdown table of test accuracy (mean ± std over seeds) and any extra
test metrics (accuracy under corruption).

    python scripts/compare.py examples/fmnist-g2s.yaml --seeds 0 1 2 \
        --run scratch:method=scratch --run kd:method=kd \
        --run "kd+dropout:method=kd params.teacher_dropout=0.1" --out results/g2s.jsonl

A run is LABEL:OVERRIDES, OVERRIDES being space-separated `--set` items.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", nargs="?")
    ap.add_argument("--run", action="append", default=[], help="LABEL:key=value key=value ...")
    ap.add_argument("--table", help="a table file (YAML): sweeps, then re-runs of their best")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="applies to every run")
    ap.add_argument("--out", help="JSON-lines results file (resumable)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--only", nargs="+", help="--table: only these rows' labels")
    a = ap.parse_args(argv)
    if a.table:
        from compare_table import run_table  # scripts/compare_table.py
        return run_table(Path(a.table), table_only=a.table_only, only=a.only)
    if not (a.spec and a.run and a.out):
        ap.error("give SPEC, --run ... and --out, or --table FILE")

    out = Path(a.out)
    done = {}
    if out.is_file():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done[(r["label"], r["seed"])] = r
    runs = [(r.partition(":")[0], r.partition(":")[2].split()) for r in a.run]
    if not a.table_only:
        from kdtune.checks import load_spec
        from kdtune.params.walk import resolve_params
        from kdtune.training.teacher import ensure_teacher, needs_teacher
        from kdtune.training.trial import run_trial

        out.parent.mkdir(parents=True, exist_ok=True)
        for label, sets in runs:
            for seed in a.seeds:
                if (label, seed) in done:
                    continue
                spec = load_spec(a.spec, a.sets + sets)
                config = resolve_params(spec)
                teacher = ensure_teacher(spec, log=lambda m: print(m, file=sys.stderr)) if needs_teacher(spec) else None
                t0 = time.time()
                final = run_trial(spec, config, teacher, lambda *x, **k: None, seed=seed)
                rec = {"label": label, "seed": seed, "overrides": sets, "seconds": round(time.time() - t0, 1),
                       "teacher_test_acc": teacher.meta.get("test_acc") if teacher else None,
                       **{k: v for k, v in final.items() if k.startswith(("test_", "val_acc", "params_count"))},
                       "config": config}
                with out.open("a") as f:
                    f.write(json.dumps(rec, default=str) + "\n")
                done[(label, seed)] = rec
                print(f"{label} seed {seed}: test_acc {final['test_acc']:.4f} ({rec['seconds']}s)", file=sys.stderr)
    print(table(done, [l for l, _ in runs]))
    return 0


def table(done: dict, labels: list[str]) -> str:
    extra = sorted({k for r in done.values() for k in r if k.startswith("test_acc/")},
                   key=lambda k: float(k.rsplit("_", 1)[-1]))
    head = ["run", "test_acc (mean ± std)", "seeds", *extra, "params", "s/run"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        rs = [r for (l, _), r in sorted(done.items()) if l == label]
        if not rs:
            continue
        cells = [label, ms([r["test_acc"] for r in rs]), str(len(rs))]
        cells += [ms([r[k] for r in rs if k in r]) for k in extra]
        cells += [str(rs[0].get("params_count", "")), f"{statistics.mean(r['seconds'] for r in rs):.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def ms(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} ± {sd:.4f}"


if __name__ == "__main__":
    raise SystemExit(main())

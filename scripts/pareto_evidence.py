"""The Pareto fronts of `scratch` and `kd` on Fashion-MNIST G→S, each from its own sweep
(examples/fmnist-pareto.yaml), on one plot: does KD move the front, and where?

    python scripts/pareto_evidence.py [--storage DIR] [--num-samples 16] [--epochs 5] [--scheduler none|asha]

Resumable: a sweep that exists is continued with --resume (or only re-read if finished).
Writes docs/results/pareto-fmnist.jsonl (every full-length trial: method, trial, params_count,
val_acc, test_acc, on the front or not) and docs/results/pareto-fmnist.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import kdtune
from kdtune.report.pareto import Point, pareto_plot
from kdtune.spec.paths import experiment_path
from kdtune.tune.plan import can_restore

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", default=str(ROOT / "kdtune-results"))
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--scheduler", choices=["asha", "none"], default="none",
                    help="none (default): every trial runs its full epochs, so every trial can be "
                         "a Pareto point (ASHA stops most at epoch 1: few full-length trials)")
    args = ap.parse_args()
    rows, points = [], []
    for method in ("scratch", "kd"):
        spec = kdtune.load_spec(ROOT / "examples" / "fmnist-pareto.yaml", [
            f"name=fmnist-pareto-{method}-{args.scheduler}", f"method={method}",
            f"storage={args.storage}", f"search.num_samples={args.num_samples}",
            f"epochs={args.epochs}", f"scheduler.type={args.scheduler}"])
        t0 = time.time()
        result = kdtune.sweep(spec, resume=can_restore(experiment_path(spec)), log=print)
        wall = time.time() - t0
        front = kdtune.api.front(spec)
        on_front = {f["run_name"] for f in front["front"]}
        for t in result.trials:
            if t.status != "completed":
                continue
            m = json.loads((Path(t.path) / "result.json").read_text().splitlines()[-1])
            row = {"method": method, "trial": t.name, "params_count": m["params_count"],
                   "val_acc": m["val_acc"], "test_acc": m["test_acc"], "front": t.name in on_front,
                   "width": t.config.get("student.width"), "sweep_wall_s": round(wall, 1),
                   "budget": f"{args.num_samples} trials x {args.epochs} epochs, scheduler "
                             f"{args.scheduler}"}
            rows.append(row)
            points.append(Point(t.name, m["params_count"], m["val_acc"], row["front"], method))
    out = ROOT / "docs" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pareto-fmnist.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for p in pareto_plot(points, "params_count", "val_acc", out, stem="pareto-fmnist"):
        if p.suffix == ".html":
            p.unlink()  # the PNG is what docs/results.md shows; the HTML is on the parent runs
    print(json.dumps({"trials": len(rows), "front": {m: sum(r["front"] for r in rows if r["method"] == m)
                                                     for m in ("scratch", "kd")}}))


if __name__ == "__main__":
    main()

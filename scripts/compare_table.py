"""A whole results table from one YAML file: per row a kdtune sweep, then its best configuration
re-trained on every seed; means with 95 % confidence intervals (Student's t over seeds).

    python scripts/compare.py --table examples/tables/evidence-g2s.yaml [--only kd scratch] [--table-only]

Each step is one JSON line in the table's ``out`` file and is skipped when it is already there,
so an interrupted table continues where it stopped (a sweep cut off mid-way is resumed with
`kdtune sweep run --resume`). A row is what a user would type:

    kdtune sweep run SPEC --set name=SPECNAME-LABEL --set ...     (the row's sweep)
    kdtune train <storage>/SPECNAME-LABEL/best.yaml --seed N       (each re-run)

``double_epochs: true`` on a row also re-trains its best configuration at twice the epochs: the
convergence check (converged when the mean moves by less than the interval's half-width).
``doublings: N`` goes on doubling (E, 2E, … 2^N·E), for a row that the first check left moving.
``seeds_at: {48: [5, 6]}`` adds seeds at one length only, where a comparison needs a tighter
interval; the convergence check compares the seeds both lengths have. ``report_at: [48]`` on
the table adds a table of every row re-run at 48 epochs, paired by seed like the main one.
``imported: {table: other.yaml, label: kd, epochs: [48]}`` makes a row of another table's
re-runs (nothing trained), so that rows of two tables on the same spec pair by seed.

A sweep's ``best.yaml`` is a run output, not in git. When its record is there but the file is
not (a fresh checkout), the re-runs train the spec with the record's ``best_config`` as
``params.*`` overrides: the same configuration, so the table's missing cells can still be filled.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Imported(BaseModel):
    """A row whose re-runs come from another table's records: nothing is trained for it."""
    model_config = ConfigDict(extra="forbid")
    table: str = Field(description="the other table file, relative to this one")
    label: str = Field(description="the row's label there")
    epochs: list[int] | None = Field(None, description="only its re-runs at these lengths")


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    imported: Imported | None = Field(None, description="take this row's re-runs from another "
                                      "table's records (same spec and seeds), so a comparison "
                                      "across two tables is paired by seed like one within a table")
    sets: list[str] = Field([], description="--set items of this row (sweep and re-runs)")
    sweep: bool = Field(True, description="false: re-train the spec as given (no search)")
    seeds: list[int] | None = Field(None, description="default: the table's seeds")
    double_epochs: bool = Field(False, description="also re-train the best at 2× epochs")
    doublings: int = Field(0, ge=0, le=4, description="re-train at 2×, 4×, … 2^N× epochs")
    seeds_at: dict[int, list[int]] = Field({}, description="more seeds at these epoch counts only, "
                                           "e.g. {48: [5, 6, 7, 8, 9]}: a tighter interval where it matters")
    compare_to: list[str] = Field([], description="other rows' labels: the paired (same seed) "
                                  "difference of test_acc with its 95 % CI")


class Table(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: str = Field(description="the spec, relative to the table file")
    out: str = Field(description="JSON-lines records, relative to the working directory")
    seeds: list[int] = [0, 1, 2, 3, 4]
    sets: list[str] = Field([], description="--set items for every sweep and re-run")
    sweep_sets: list[str] = Field([], description="--set items for the sweeps only")
    report_at: list[int] = Field([], description="also a table of every row re-run at these "
                                 "epoch counts (the doublings), paired by seed like the main one")
    rows: list[Row]


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_table(path: Path, *, table_only: bool = False, only: list[str] | None = None) -> int:
    table = Table.model_validate(yaml.safe_load(path.read_text()))
    spec_path = (path.parent / table.spec).resolve()
    out = Path(table.out)
    records = _read(out)
    if not table_only:
        out.parent.mkdir(parents=True, exist_ok=True)
        for row in table.rows:
            if only and row.label not in only or row.imported:
                continue
            records += run_row(table, row, spec_path, out, records)
    print(render(table, spec_path, records + imported_records(path, table)))
    return 0


def _read(out: Path) -> list[dict]:
    return [json.loads(x) for x in out.read_text().splitlines()] if out.is_file() else []


def imported_records(path: Path, table: Table) -> list[dict]:
    """The imported rows' re-runs, read from the other tables' records and relabelled."""
    new = []
    for row in table.rows:
        if not row.imported:
            continue
        imp = row.imported
        other = Table.model_validate(yaml.safe_load((path.parent / imp.table).read_text()))
        rr = [dict(r, label=row.label, imported_from=f"{imp.table}: {imp.label}")
              for r in _read(Path(other.out)) if r["kind"] == "rerun" and r["label"] == imp.label
              and (imp.epochs is None or r["epochs"] in imp.epochs)]
        if not rr:
            log(f"[{row.label}] no re-runs of {imp.label!r} in {other.out}: run {imp.table} first")
        new += rr
    return new


def plan(table: Table, row: Row, epochs: int) -> list[tuple[int, int]]:
    """(seed, epochs) of every re-run of a row whose best configuration trains ``epochs``."""
    lengths = [epochs * 2 ** i for i in range(1 + max(row.doublings, int(row.double_epochs)))]
    runs = [(s, e) for e in lengths for s in (row.seeds or table.seeds)]
    return runs + [(s, e) for e, seeds in row.seeds_at.items() for s in seeds if (s, e) not in runs]


def _append(out: Path, rec: dict[str, Any]) -> dict[str, Any]:
    with out.open("a") as f:
        f.write(json.dumps(rec, default=str) + "\n")
    return rec


def run_row(table: Table, row: Row, spec_path: Path, out: Path, records: list[dict]) -> list[dict]:
    from kdtune import api
    from kdtune.checks import load_spec
    from kdtune.spec.paths import run_dir

    new: list[dict] = []
    base = load_spec(spec_path, table.sets + row.sets)
    name = f"{base.name}-{slug(row.label)}"
    source, source_sets = str(spec_path), table.sets + row.sets
    if row.sweep:
        done = [r for r in records if r["kind"] == "sweep" and r["label"] == row.label]
        if not done:
            sets = table.sets + table.sweep_sets + row.sets + [f"name={name}"]
            spec = load_spec(spec_path, sets)
            resume = Path(run_dir(spec)).exists()
            log(f"[{row.label}] sweep {name}{' (resuming)' if resume else ''}")
            t0 = time.time()
            res = api.sweep(spec, resume=resume, log=log)
            done = [_append(out, {
                "kind": "sweep", "label": row.label, "sweep": name, "sets": sets,
                "wall_s": round(time.time() - t0, 1), "resumed": resume,
                "trials": len(res.trials), "errors": len(res.errors),
                "stopped": sum(t.status == "stopped" for t in res.trials),
                "epochs_run": sum(t.epochs for t in res.trials),
                "best_val": res.best.value if res.best else None,
                "best_config": res.best.config if res.best else None,
                "best_yaml": res.best_yaml})]
            new += done
        source, source_sets = done[-1]["best_yaml"], []
        if not Path(source).is_file():
            # best.yaml went with the run outputs: the record holds the same configuration
            source, source_sets = str(spec_path), table.sets + row.sets + [
                f"params.{k}={json.dumps(v)}" for k, v in (done[-1]["best_config"] or {}).items()]
            log(f"[{row.label}] {done[-1]['best_yaml']} is gone: re-runs use the spec and the "
                "sweep record's best_config")
    epochs = load_spec(source, source_sets).epochs
    for seed, ep in plan(table, row, epochs):
        if any(r["kind"] == "rerun" and r["label"] == row.label and r["seed"] == seed
               and r["epochs"] == ep for r in records + new):
            continue
        t0 = time.time()
        res = api.train(source, seed=seed, overrides=source_sets + [f"epochs={ep}"], log=lambda m: None)
        new.append(_append(out, {
            "kind": "rerun", "label": row.label, "seed": seed, "epochs": ep, "source": source,
            "sets": source_sets, "seconds": round(time.time() - t0, 1),
            "test_acc": res.test_acc, "val_acc": res.metrics.get("val_acc"),
            "params_count": res.metrics.get("params_count"), "config": res.config,
            **{k: v for k, v in res.metrics.items() if k.startswith("test_acc/")},
            **_teacher(res.spec)}))
        log(f"[{row.label}] seed {seed}, {ep} epochs: test_acc {res.test_acc:.4f} "
            f"({new[-1]['seconds']} s)")
    return new


def _teacher(spec) -> dict[str, Any]:
    """Which teacher a re-run distilled from: the teacher is a run output, re-trained in each
    fresh checkout and not bit-identical across machines, so the record names it."""
    from kdtune.training.teacher import ensure_teacher, needs_teacher

    if not needs_teacher(spec):
        return {}
    meta = ensure_teacher(spec, log=lambda m: None).meta  # trained or given by now: not again
    return {"teacher": {k: meta.get(k) for k in ("key", "test_acc", "val_acc")}}


def ci95(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student-t interval."""
    from scipy.stats import t  # scikit-learn's dependency

    m = statistics.mean(xs)
    if len(xs) < 2:
        return m, math.nan
    return m, float(t.ppf(0.975, len(xs) - 1)) * statistics.stdev(xs) / math.sqrt(len(xs))


def _short(config: dict | None, common: set[str]) -> str:
    if not config:
        return "-"
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    first = [k for k in config if k not in common] + [k for k in config if k in common]
    return ", ".join(f"{k} {fmt(config[k])}" for k in first)


def _paired(records: list[dict], row: Row, epochs: int, key: str = "test_acc") -> str:
    """Mean of (this row − other) over the seeds both have, its 95 % CI, and wins."""
    pairs = [_pair(records, row.label, other, epochs, key) for other in row.compare_to]
    return "; ".join(p for p in pairs if p) or "-"  # (an "other" not run at these epochs: left out)


def _by_seed(records: list[dict], label: str, epochs: int, key: str = "test_acc") -> dict[int, float]:
    """``key`` (test_acc, or e.g. test_acc/pixels_0.3) of a row's re-runs at one length, by seed."""
    return {r["seed"]: r[key] for r in records
            if r["kind"] == "rerun" and r["label"] == label and r["epochs"] == epochs and key in r}


def _pair(records: list[dict], label: str, other: str, epochs: int, key: str = "test_acc") -> str | None:
    a, b = _by_seed(records, label, epochs, key), _by_seed(records, other, epochs, key)
    d = [a[k] - b[k] for k in sorted(a.keys() & b.keys())]
    if not d:
        return None
    m, h = ci95(d)
    return (f"{m:+.4f} ± {h:.4f} vs {other} (higher on {sum(x > 0 for x in d)}/{len(d)})"
            if len(d) > 1 else f"{m:+.4f} vs {other}")


def render(table: Table, spec_path: Path, records: list[dict]) -> str:
    common = {"lr", "weight_decay", "batch_size", "optimizer"}
    # accuracy under corruption (spec.corruption), e.g. test_acc/pixels_0.3
    extra = sorted({k for r in records for k in r if k.startswith("test_acc/")},
                   key=lambda k: float(k.rsplit("_", 1)[-1]))
    searched = any(r["kind"] == "sweep" for r in records)
    paired = any(row.compare_to for row in table.rows)
    head = ["row", "test_acc, mean ± 95 % CI", "seeds", *extra, *(["paired Δ (same seeds)"] if paired else []),
            *(["sweep wall", "trials (ASHA-stopped)", "best val_acc", "best parameters"] if searched else []),
            "s/re-run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    conv = ["| row | epochs E: test_acc | 2E: test_acc | change, paired ± 95 % CI | E's CI half-width (seeds) "
            "| converged | paired Δ at 2E |",
            "|---|---|---|---|---|---|---|"]
    for row in table.rows:
        sw = [r for r in records if r["kind"] == "sweep" and r["label"] == row.label]
        rr = [r for r in records if r["kind"] == "rerun" and r["label"] == row.label]
        if not rr:
            continue
        e = min(r["epochs"] for r in rr)
        accs = [r["test_acc"] for r in rr if r["epochs"] == e]
        m, h = ci95(accs)
        s = sw[-1] if sw else None
        cells = [row.label, f"{m:.4f}" + (f" ± {h:.4f}" if len(accs) > 1 else ""), str(len(accs))]
        for k in extra:
            xs = [r[k] for r in rr if r["epochs"] == e and k in r]
            mk, hk = ci95(xs) if xs else (math.nan, math.nan)
            cells.append("-" if not xs else f"{mk:.4f}" + (f" ± {hk:.4f}" if len(xs) > 1 else ""))
        if paired:
            cells.append(_paired(records, row, e))
        if searched:
            cells += [f"{s['wall_s'] / 60:.1f} min" if s else "-",
                      f"{s['trials']} ({s['stopped']})" if s else "-",
                      f"{s['best_val']:.4f}" if s and s["best_val"] is not None else "-",
                      _short(s["best_config"], common) if s
                      else f"from {rr[0]['imported_from']}" if "imported_from" in rr[0] else "not searched"]
        cells.append(f"{statistics.mean(r['seconds'] for r in rr if r['epochs'] == e):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
        conv += _convergence(records, row, e)
    at = [line for n in table.report_at for line in ["", *_at_length(table, records, n, extra)]]
    return "\n".join(lines + ([""] + conv if len(conv) > 2 else []) + at)


def _at_length(table: Table, records: list[dict], epochs: int, extra: list[str]) -> list[str]:
    """The rows re-run at ``epochs`` (any of their doublings), each with its paired Δs there,
    also on each ``extra`` metric (accuracy under corruption) where the records have one."""
    head = [f"row, {epochs} epochs", "test_acc, mean ± 95 % CI", "seeds", *extra,
            "paired Δ (same seeds)", *(f"paired Δ, {k}" for k in extra)]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        accs = list(_by_seed(records, row.label, epochs).values())
        if len(accs) > 1:
            cells = [row.label, "%.4f ± %.4f" % ci95(accs), str(len(accs))]
            for k in extra:
                xs = list(_by_seed(records, row.label, epochs, k).values())
                cells.append("%.4f ± %.4f" % ci95(xs) if len(xs) > 1 else "-")
            cells += [_paired(records, row, epochs, k) for k in ["test_acc", *extra]]
            out.append("| " + " | ".join(cells) + " |")
    return out


def _convergence(records: list[dict], row: Row, e: int) -> list[str]:
    """One line per doubling present (E → 2E, 2E → 4E, …). The change is paired: the mean of
    (2E − E) over the seeds run at both lengths, so extra seeds at one length (``seeds_at``) do
    not move it. Converged when it is smaller than the half-width of the row's 95 % CI at E over
    all its seeds there (the interval the table reports), not over the common seeds only: with
    two doubled seeds that interval would be ~5× wider and pass nearly any change."""
    out = []
    while True:
        a, b = _by_seed(records, row.label, e), _by_seed(records, row.label, 2 * e)
        seeds = sorted(a.keys() & b.keys())
        if len(seeds) < 2:
            break
        m, m2 = statistics.mean(a[s] for s in seeds), statistics.mean(b[s] for s in seeds)
        d, hd = ci95([b[s] - a[s] for s in seeds])
        h = ci95(list(a.values()))[1]
        out.append(f"| {row.label} | {e}: {m:.4f} (n={len(seeds)}) | {2 * e}: {m2:.4f} "
                   f"(n={len(seeds)}) | {d:+.4f} ± {hd:.4f} | {h:.4f} (n={len(a)}) "
                   f"| {'yes' if abs(d) < h else 'no'} | {_paired(records, row, 2 * e)} |")
        e *= 2
    return out

"""scripts/compare.py --table: a sweep per row, its best.yaml re-trained per seed, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(table: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), "--table", str(table), *extra],
                          cwd=table.parent, env=env, capture_output=True, text=True, timeout=600)


def test_table_sweeps_reruns_best_and_resumes(tmp_path):
    table = tmp_path / "table.yaml"
    table.write_text(yaml.safe_dump({
        "spec": str(ROOT / "examples" / "quickstart.yaml"), "out": "records.jsonl", "seeds": [0, 1],
        "sets": ["epochs=1", "teacher.epochs=1", f"storage={tmp_path / 'res'}"],
        "sweep_sets": ["search.num_samples=2"],
        "rows": [{"label": "teacher", "sets": ["method=pretrained"], "sweep": False, "seeds": [0]},
                 {"label": "kd+x", "sets": ["method=kd"], "double_epochs": True,
                  "compare_to": ["teacher"]}]}))
    p = _run(table)
    assert p.returncode == 0, p.stderr[-3000:]
    recs = [json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()]
    sweeps = [r for r in recs if r["kind"] == "sweep"]
    assert len(sweeps) == 1 and sweeps[0]["sweep"] == "quickstart-kd-x" and sweeps[0]["trials"] == 2
    best = Path(sweeps[0]["best_yaml"])
    assert best.is_file()
    reruns = [r for r in recs if r["kind"] == "rerun" and r["label"] == "kd+x"]
    # the re-runs train the sweep's best configuration, at E and 2E epochs, on each seed
    assert sorted((r["seed"], r["epochs"]) for r in reruns) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(r["source"] == str(best) for r in reruns)
    assert reruns[0]["config"] == {k: v for k, v in sweeps[0]["best_config"].items() if k in reruns[0]["config"]}
    assert [r["label"] for r in recs if r["kind"] == "rerun"].count("teacher") == 1
    # each re-run names the teacher it distilled from (re-trained in a fresh checkout)
    assert len({r["teacher"]["key"] for r in reruns}) == 1 and 0 < reruns[0]["teacher"]["test_acc"] <= 1
    assert "| kd+x |" in p.stdout and "| teacher |" in p.stdout and "converged" in p.stdout
    teacher = next(r["test_acc"] for r in recs if r["label"] == "teacher")
    kd0 = next(r["test_acc"] for r in reruns if r["seed"] == 0 and r["epochs"] == 1)
    assert f"{kd0 - teacher:+.4f} vs teacher" in p.stdout  # paired on the one seed both have

    again = _run(table)  # everything recorded: nothing re-run, the same table
    assert again.returncode == 0, again.stderr[-3000:]
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == len(recs)
    table = p.stdout[p.stdout.index("| row |"):]  # (the sweep's trial lines come before it)
    assert again.stdout == table


def _module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("compare_table", ROOT / "scripts" / "compare_table.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["compare_table"] = mod  # pydantic resolves the Row annotation through it
    spec.loader.exec_module(mod)
    return mod


def test_seeds_at_one_length_convergence_on_common_seeds_and_report_at():
    ct = _module()
    table = ct.Table(spec="s.yaml", out="o.jsonl", seeds=[0, 1], rows=[])
    row = ct.Row(label="kd", doublings=1, seeds_at={8: [1, 2, 3]})
    # every seed at 4 and 8 epochs, then only the seeds 8 does not have yet
    assert ct.plan(table, row, 4) == [(0, 4), (1, 4), (0, 8), (1, 8), (2, 8), (3, 8)]

    def rec(seed, epochs, acc):
        return {"kind": "rerun", "label": "kd", "seed": seed, "epochs": epochs, "test_acc": acc}
    records = [rec(0, 4, 0.80), rec(1, 4, 0.82), rec(0, 8, 0.81), rec(1, 8, 0.83),
               rec(2, 8, 0.50), rec(3, 8, 0.50)]  # seeds 2, 3 only at 8: left out of the check
    (line,) = ct._convergence(records, row, 4)
    assert "| 4: 0.8100 (n=2) | 8: 0.8200 (n=2) | +0.0100 ± 0.0000 | 0.1271 (n=2) | yes |" in line
    # the half-width is the row's interval at E over all its seeds there (a third seed at 4
    # epochs narrows it), the change stays paired on the seeds run at both lengths
    (line,) = ct._convergence(records + [rec(4, 4, 0.81)], row, 4)
    assert "| 4: 0.8100 (n=2) | 8: 0.8200 (n=2) | +0.0100 ± 0.0000 | 0.0248 (n=3) | yes |" in line

    # report_at: the rows run at that length, every seed there, paired on the seeds both have
    table = ct.Table(spec="s.yaml", out="o.jsonl", report_at=[8],
                     rows=[row.model_copy(update={"compare_to": ["s"]}), ct.Row(label="s")])
    records += [{**rec(s, 8, 0.80), "label": "s"} for s in (0, 1)]
    head, _, kd, other = ct._at_length(table, records, 8, [])
    assert head.startswith("| row, 8 epochs |")
    assert kd.startswith("| kd | 0.6600 ± ") and "| 4 | +0.0200 ± 0.1271 vs s (higher on 2/2) |" in kd
    assert other == "| s | 0.8000 ± 0.0000 | 2 | - |"


def test_report_at_pairs_accuracy_under_corruption():
    """With a spec's corruption levels, the report_at table gives each level's mean and the
    paired Δ on it too: anti-distillation's finding is about the corrupted accuracy."""
    ct = _module()
    table = ct.Table(spec="s.yaml", out="o.jsonl", rows=[ct.Row(label="zero"),
                                                         ct.Row(label="uniform", compare_to=["zero"])])
    records = [{"kind": "rerun", "label": lab, "seed": s, "epochs": 16, "test_acc": 0.9,
                "test_acc/pixels_0.1": c + 0.01 * s}
               for lab, c in (("zero", 0.5), ("uniform", 0.6)) for s in (0, 1, 2)]
    head, _, zero, uniform = ct._at_length(table, records, 16, ["test_acc/pixels_0.1"])
    assert head.endswith("| test_acc/pixels_0.1 | paired Δ (same seeds) | paired Δ, test_acc/pixels_0.1 |")
    assert zero == "| zero | 0.9000 ± 0.0000 | 3 | 0.5100 ± 0.0248 | - | - |"
    assert uniform.endswith("| 0.6100 ± 0.0248 | +0.0000 ± 0.0000 vs zero (higher on 0/3) "
                            "| +0.1000 ± 0.0000 vs zero (higher on 3/3) |")


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "tables").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_tables_load(path):
    """Each results table in the repo parses, and every row's spec with its --set items loads (a
    typo in a table file fails here, not an hour into a run); compare_to names rows it has."""
    from kdtune.checks import load_spec

    table = _module().Table.model_validate(yaml.safe_load(path.read_text()))
    spec = (path.parent / table.spec).resolve()
    labels = [r.label for r in table.rows]
    assert len(set(labels)) == len(labels), "row labels must be unique"
    for row in table.rows:
        assert set(row.compare_to) <= set(labels), row.label
        if row.imported:  # the other table exists and has that row
            other = _module().Table.model_validate(yaml.safe_load((path.parent / row.imported.table).read_text()))
            assert row.imported.label in [r.label for r in other.rows], row.label
            continue
        sets = table.sets + (table.sweep_sets if row.sweep else []) + row.sets
        assert load_spec(spec, sets).name


def test_imported_row_is_paired_by_seed_across_tables(tmp_path):
    """A row imported from another table's records takes only the lengths asked for, is
    relabelled, and pairs by seed with this table's rows; nothing is trained for it."""
    ct = _module()
    def rec(label, seed, epochs, acc):
        return {"kind": "rerun", "label": label, "seed": seed, "epochs": epochs, "test_acc": acc, "seconds": 1}
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in [
        rec("scratch", 0, 12, 0.10), rec("scratch", 0, 48, 0.80), rec("scratch", 1, 48, 0.82),
        rec("kd", 0, 48, 0.99)]))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in [
        rec("scratch", 0, 48, 0.85), rec("scratch", 1, 48, 0.86)]))
    (tmp_path / "a.yaml").write_text(f"spec: s.yaml\nout: {tmp_path / 'a.jsonl'}\n"
                                     "rows: [{label: scratch}, {label: kd}]\n")
    (tmp_path / "b.yaml").write_text(
        f"spec: s.yaml\nout: {tmp_path / 'b.jsonl'}\nrows:\n  - {{label: scratch, compare_to: [old]}}\n"
        "  - {label: old, imported: {table: a.yaml, label: scratch, epochs: [48]}}\n")
    table = ct.Table.model_validate(yaml.safe_load((tmp_path / "b.yaml").read_text()))
    imported = ct.imported_records(tmp_path / "b.yaml", table)
    assert [(r["label"], r["seed"], r["epochs"]) for r in imported] == [("old", 0, 48), ("old", 1, 48)]
    lines = ct.render(table, tmp_path / "s.yaml", ct._read(tmp_path / "b.jsonl") + imported).splitlines()
    assert lines[2].startswith("| scratch | 0.8550 ± ") and "+0.0450 ± 0.0635 vs old (higher on 2/2)" in lines[2]
    assert lines[3].startswith("| old | 0.8100 ± 0.1271 | 2 |")

"""kdtune.report: records -> Optuna study, PNG/HTML plots, and the self-contained HTML report."""

from __future__ import annotations

import math
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest

from kdtune.report import (
    TrialRecord,
    best_record,
    make_plots,
    ranked,
    study_from_records,
    write_report,
)
from kdtune.report.plots import PLOTS, param_importances

METRIC = "val_acc"


def _records(n: int = 12, seed: int = 0) -> list[TrialRecord]:
    """Synthetic sweep: accuracy peaks near lr=3e-3; every third trial stopped at epoch 3;
    trial 7 failed without a value."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lr = 10 ** rng.uniform(-4, -1)
        params = {
            "lr": lr,
            "temperature": rng.choice([1, 2, 4, 8]),
            "optimizer": rng.choice(["sgd", "adam"]),
            "alpha": rng.uniform(0.0, 1.0),
        }
        epochs = 3 if i % 3 == 0 else 10
        quality = 1.0 - abs(math.log10(lr) + 2.5) / 2
        curve = [(e, 0.5 + 0.04 * e * quality + rng.gauss(0, 0.005)) for e in range(1, epochs + 1)]
        status, value = ("stopped" if epochs < 10 else "completed"), curve[-1][1]
        if i == 7:
            status, value, curve, epochs = "error", None, curve[:2], 2
        out.append(TrialRecord(f"kd_{i:03d}", i, value, epochs, status, params, curve, f"run{i}"))
    return out


class _ExternalRefs(HTMLParser):
    """Collects tag attributes that would load something from the network."""

    def __init__(self) -> None:
        super().__init__()
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and re.match(r"\s*(https?:)?//", value):
                self.external.append(f"<{tag} {name}={value}>")


def _markup(text: str) -> str:
    # plotly.js itself holds strings such as 'href="https://www.openstreetmap.org/..."' for map
    # attributions, inside JS; only markup outside <script> bodies can load anything.
    return re.sub(r"(<script\b[^>]*>).*?</script>", r"\1</script>", text, flags=re.S | re.I)


def _assert_self_contained(text: str) -> None:
    parser = _ExternalRefs()
    parser.feed(text)
    assert parser.external == []
    markup = _markup(text)
    assert 'src="http' not in markup and 'href="http' not in markup
    assert not re.search(r"<script[^>]*\bsrc=", markup)


def test_study_from_records_counts_and_best() -> None:
    records = _records()
    study = study_from_records(records, METRIC, "max")
    states = [t.state for t in study.trials]
    assert len(study.trials) == 12
    assert states.count(optuna.trial.TrialState.COMPLETE) == 11
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    best = max((r for r in records if r.value is not None), key=lambda r: r.value)
    assert study.best_value == pytest.approx(best.value)
    assert study.best_trial.user_attrs["name"] == best.name == best_record(records, "max").name
    assert study.best_trial.intermediate_values == dict(best.curve)
    lr = study.best_trial.distributions["lr"]
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log
    dists = study.best_trial.distributions
    assert isinstance(dists["temperature"], optuna.distributions.IntDistribution)
    assert isinstance(dists["optimizer"], optuna.distributions.CategoricalDistribution)

    low = study_from_records(records, METRIC, "min")
    worst = min((r for r in records if r.value is not None), key=lambda r: r.value)
    assert low.best_value == pytest.approx(worst.value)
    assert ranked(records, "min")[0] is worst and ranked(records, "max")[-1].value is None


def test_make_plots_png_and_html(tmp_path: Path) -> None:
    from matplotlib.image import imread

    paths = make_plots(_records(), METRIC, "max", tmp_path)
    expected = {f"{p}.{ext}" for p in PLOTS for ext in ("png", "html")}
    assert {p.name for p in paths} == expected
    for name in expected:
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            pixels = imread(path)
            assert pixels.ndim == 3 and pixels.std() > 0, f"{name} is blank"
        else:
            text = path.read_text(encoding="utf-8")
            assert "plotly" in text.lower()
            _assert_self_contained(text)


def test_importances_skipped_when_degenerate(tmp_path: Path) -> None:
    one = [r for r in _records() if r.value is not None][:1]
    assert param_importances(one, METRIC, "max") == {}
    const = [
        TrialRecord(f"kd_{i}", i, 0.5 + i / 10, 3, "completed", {"lr": 0.1}, [(3, 0.5 + i / 10)])
        for i in range(3)
    ]
    assert param_importances(const, METRIC, "max") == {}
    names = {p.name for p in make_plots(const, METRIC, "max", tmp_path)}
    assert "param_importances.png" not in names and "learning_curves.png" in names
    assert make_plots([_records()[7]], METRIC, "max", tmp_path / "none") == []


def test_write_report(tmp_path: Path) -> None:
    records = _records()
    best = best_record(records, "max")
    hostile = TrialRecord("<script>alert(1)</script>", 0, 0.9, 1, "completed", {"note": "<b>x</b>"})
    path = write_report(
        tmp_path / "out" / "report.html",
        "KD sweep <report>",
        [("Logit KD", records), ("Feature KD", [hostile]), ("Empty", [])],
        METRIC,
        "max",
    )
    text = path.read_text(encoding="utf-8")
    _assert_self_contained(text)
    markup = _markup(text)
    found = re.search(r'id="best-logit-kd"[^>]*>(.*?)</p>', markup, flags=re.S)
    assert found and best.name in found.group(1) and f"{best.value:.6g}" in found.group(1)
    assert markup.count('class="plotly-graph-div"') >= 4
    assert 'id="logit-kd-optimization_history"' in markup
    # plotly.js inlined exactly once, at the top
    assert len(text) > 1_000_000 and text.count("window.PlotlyConfig") == 1
    assert "<script>alert(1)" not in markup and "&lt;script&gt;alert(1)" in markup
    assert "KD sweep &lt;report&gt;" in markup and "&lt;b&gt;x&lt;/b&gt;" in markup
    assert 'id="best-empty"' in markup
    best_row = r'<tr class="[^"]*\bbest\b[^"]*"><td class="num">1</td><td>' + best.name
    assert re.search(best_row, markup)


def test_ranked_is_the_sweeps_one_ranking() -> None:
    from kdtune.tune.results import ranked as sweep_ranked

    recs = [TrialRecord("kd_005", 5, 0.8, 2, "completed"), TrialRecord("kd_001", 1, None, 1, "error"),
            TrialRecord("kd_002", 2, 0.8, 2, "completed"), TrialRecord("kd_003", 3, 0.9, 2, "stopped"),
            TrialRecord("kd_004", 4, float("nan"), 2, "completed")]
    order = [r.name for r in ranked(recs, "max")]
    assert order == ["kd_003", "kd_002", "kd_005", "kd_001", "kd_004"]  # ties: the earlier trial
    assert order[:3] == [r.name for r in sweep_ranked(recs, lambda r: r.value, lambda r: r.name, "max")]
    assert [r.name for r in ranked(recs, "min")][:3] == ["kd_002", "kd_005", "kd_003"]

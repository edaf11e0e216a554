"""One self-contained HTML report of one or more sweeps: leaderboards, best configs and plots.

The file loads nothing from the network: plotly.js is inlined once at the top, and every plot
is a div that uses it, so the report can be mailed, archived as an MLflow artifact, or opened
on a machine without internet access.
"""

from __future__ import annotations

import json
import re
from html import escape
from pathlib import Path
from typing import Any, Sequence

from kdtune.report.plots import PLOTLY_CONFIG, PLOTS, plot_data, plotly_figures
from kdtune.report.records import TrialRecord, best_record, check_mode, plain_params, ranked

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; }
section { margin: 2.5em 0; border-top: 2px solid #ddd; padding-top: 1em; }
table.leaderboard { border-collapse: collapse; width: 100%; font-size: 0.9em; }
table.leaderboard th, table.leaderboard td {
  border: 1px solid #ddd; padding: 4px 8px; text-align: left;
}
table.leaderboard th { background: #f4f4f4; }
table.leaderboard td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #fff3c4; font-weight: 600; }
tr.status-error td, tr.status-running td { color: #888; }
p.best-trial { font-size: 1.1em; }
pre.config { background: #f6f8fa; padding: 0.8em; border-radius: 4px; overflow-x: auto; }
div.plot { margin: 1.5em 0; }
p.empty { color: #888; font-style: italic; }
"""


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def _slug(name: str, used: set[str]) -> str:
    """A unique, id-safe form of a section name (lowercase letters, digits, '-', '_')."""
    base = re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-") or "section"
    slug, n = base, 2
    while slug in used:
        slug, n = f"{base}-{n}", n + 1
    used.add(slug)
    return slug


def _params_text(params: dict[str, Any]) -> str:
    parts = []
    for k in sorted(params):
        v = params[k]
        parts.append(f"{k}={_fmt(v) if isinstance(v, float) else v}")
    return ", ".join(parts)


def _leaderboard(
    records: Sequence[TrialRecord], mode: str, best: TrialRecord | None, metric: str
) -> str:
    rows = []
    rank = 0
    for r in ranked(records, mode):
        rank_text = "—"
        if r.has_value:
            rank += 1
            rank_text = str(rank)
        classes = [f"status-{re.sub(r'[^a-z]+', '', r.status.lower())}"]
        if best is not None and r is best:
            classes.append("best")
        cells = [
            f'<td class="num">{rank_text}</td>',
            f"<td>{escape(r.name)}</td>",
            f'<td class="num">{escape(_fmt(r.value))}</td>',
            f'<td class="num">{r.epochs}</td>',
            f"<td>{escape(r.status)}</td>",
            f"<td>{escape(_params_text(plain_params(r)))}</td>",
        ]
        rows.append(f'<tr class="{" ".join(classes)}">{"".join(cells)}</tr>')
    head = "".join(
        f"<th>{escape(h)}</th>" for h in ("rank", "trial", metric, "epochs", "status", "params")
    )
    return (
        f'<table class="leaderboard"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table>'
    )


def _section(name: str, slug: str, records: Sequence[TrialRecord], metric: str, mode: str) -> str:
    best = best_record(records, mode)
    out = [f'<section id="section-{slug}"><h2>{escape(name)}</h2>']
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
    plural = "" if len(records) == 1 else "s"
    out.append(f"<p>{len(records)} trial{plural}: {escape(summary)}</p>")
    if best is None:
        out.append(
            f'<p class="best-trial empty" id="best-{slug}">No trial reported {escape(metric)}.</p>'
        )
    else:
        out.append(
            f'<p class="best-trial" id="best-{slug}">Best: '
            f'<span class="trial">{escape(best.name)}</span> with {escape(metric)} = '
            f'<span class="value">{escape(_fmt(best.value))}</span> '
            f"at epoch {best.epochs}</p>"
        )
        # JSON is also valid YAML, so the block can be pasted into a kdtune config as is
        config = json.dumps(plain_params(best), indent=2, sort_keys=True)
        out.append(f"<h3>Best configuration</h3><pre class=\"config\">{escape(config)}</pre>")
    out.append("<h3>Leaderboard</h3>")
    out.append(_leaderboard(records, mode, best, metric))
    data = plot_data(records, metric, mode)
    figs = plotly_figures(records, metric, mode, data)
    if figs:
        out.append("<h3>Plots</h3>")
    for plot in PLOTS:
        if plot in figs:
            div = figs[plot].to_html(
                full_html=False,
                include_plotlyjs=False,
                div_id=f"{slug}-{plot}",
                config=PLOTLY_CONFIG,
            )
            out.append(f'<div class="plot">{div}</div>')
    out.append("</section>")
    return "\n".join(out)


def write_report(
    path: Path,
    title: str,
    sections: list[tuple[str, list[TrialRecord]]],
    metric: str,
    mode: str,
) -> Path:
    """Write one self-contained HTML report with a part per (name, records) section; return path.

    Each part has the trials' leaderboard (best highlighted), an element with id
    ``best-<section slug>`` naming the best trial and its value, the best configuration, and
    the interactive plots of ``kdtune.report.plots``.
    """
    import plotly.offline  # heavy: imported only when a report is written

    check_mode(mode)
    path = Path(path)
    used: set[str] = set()
    slugs = [_slug(name, used) for name, _ in sections]
    nav = ""
    if len(sections) > 1:
        links = "".join(
            f'<li><a href="#section-{slug}">{escape(name)}</a></li>'
            for (name, _), slug in zip(sections, slugs)
        )
        nav = f"<nav><ul>{links}</ul></nav>"
    body = "\n".join(
        _section(name, slug, list(records), metric, mode)
        for (name, records), slug in zip(sections, slugs)
    )
    direction = "higher is better" if mode == "max" else "lower is better"
    doc = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{escape(title)}</title>
<style>{_CSS}</style>
<script type="text/javascript">window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>
</head>
<body>
<h1>{escape(title)}</h1>
<p>Metric: <b>{escape(metric)}</b> ({direction})</p>
{nav}
{body}
</body>
</html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return path

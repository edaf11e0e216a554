"""Accuracy against cost with the Pareto front marked: PNG (matplotlib) and self-contained HTML
(plotly). One or several groups (e.g. a `scratch` and a `kd` sweep) on one plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


@dataclass(frozen=True)
class Point:
    name: str          # trial name
    cost: float        # e.g. params_count
    value: float       # e.g. val_acc
    front: bool        # on its group's Pareto front
    group: str = ""    # which sweep/method it belongs to


def pareto_plot(points: Sequence[Point], cost: str, metric: str, out_dir: Path,
                stem: str = "pareto", log_x: bool = True) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.html``: every trial as a dot, each group's front as a
    line through its non-dominated trials."""
    # lazy: matplotlib and plotly are heavy, needed only when a plot is made
    import plotly.graph_objects as go
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    groups = list(dict.fromkeys(p.group for p in points))
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pfig = go.Figure()
    for i, g in enumerate(groups):
        color = COLORS[i % len(COLORS)]
        mine = [p for p in points if p.group == g]
        front = sorted((p for p in mine if p.front), key=lambda p: p.cost)
        label = g or "trials"
        ax.scatter([p.cost for p in mine], [p.value for p in mine], s=18, alpha=0.45, color=color,
                   label=f"{label}: trials")
        ax.plot([p.cost for p in front], [p.value for p in front], "o-", color=color,
                label=f"{label}: Pareto front")
        pfig.add_trace(go.Scatter(x=[p.cost for p in mine], y=[p.value for p in mine], mode="markers",
                                  name=f"{label}: trials", text=[p.name for p in mine],
                                  marker={"color": color, "opacity": 0.45}))
        pfig.add_trace(go.Scatter(x=[p.cost for p in front], y=[p.value for p in front],
                                  mode="lines+markers", name=f"{label}: Pareto front",
                                  text=[p.name for p in front], line={"color": color}))
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(cost)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{metric} against {cost}")
    fig.tight_layout()
    png, html = out_dir / f"{stem}.png", out_dir / f"{stem}.html"
    fig.savefig(png, dpi=110)
    pfig.update_layout(title=f"{metric} against {cost}", xaxis_title=cost, yaxis_title=metric,
                       xaxis_type="log" if log_x else "linear")
    pfig.write_html(html, include_plotlyjs=True, full_html=True, config={"displaylogo": False})
    return [png, html]

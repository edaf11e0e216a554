"""The sweep's plots, each as a PNG (matplotlib) and a self-contained interactive HTML (plotly).

Plots are drawn straight from ``TrialRecord``s; Optuna is used only for parameter importances.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from optuna.importance import FanovaImportanceEvaluator, get_param_importances

from kdtune.report.records import (
    TrialRecord,
    check_mode,
    is_log_scale,
    plain_params,
    ranked,
    study_from_records,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PLOTS = ("optimization_history", "parallel_coordinates", "param_importances", "learning_curves")
TOP_CURVES = 5
# plotly's modebar links to plotly.com by default; a report that is meant to work offline
# should not invite the reader to leave it.
PLOTLY_CONFIG = {"displaylogo": False}


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _completed(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    return sorted((r for r in records if r.has_value), key=lambda r: r.number)


def best_so_far(values: Sequence[float], mode: str) -> list[float]:
    """The running best of ``values`` (max or min by ``mode``)."""
    pick = max if mode == "max" else min
    out: list[float] = []
    for v in values:
        out.append(v if not out else pick(out[-1], v))
    return out


@dataclass(frozen=True)
class Axis:
    """One axis of the parallel-coordinates plot: label, per-trial positions, category ticks."""

    label: str
    values: list[float]
    ticks: list[tuple[float, str]] | None = None  # (position, label) for categorical axes


def parallel_axes(records: Sequence[TrialRecord], metric: str) -> list[Axis]:
    """Axes for the completed trials: each varying parameter they all share, then the metric.

    Log-sampled floats are drawn as log10; categorical values at their index among the sorted
    choices. A parameter missing from some completed trial (a conditional one) is left out,
    since a line cannot skip an axis.
    """
    done = _completed(records)
    if not done:
        return []
    params = [plain_params(r) for r in done]
    shared = [k for k in params[0] if all(k in p for p in params[1:])]
    axes: list[Axis] = []
    for name in sorted(shared):
        values = [p[name] for p in params]
        if len({repr(v) for v in values}) < 2:
            continue  # constant: says nothing
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and all(math.isfinite(v) for v in values):
            floats = [float(v) for v in values]
            if is_log_scale(floats):
                axes.append(Axis(f"log10({name})", [math.log10(v) for v in floats]))
            else:
                axes.append(Axis(name, floats))
        else:
            choices = sorted({str(v) for v in values})
            index = {c: float(i) for i, c in enumerate(choices)}
            ticks = [(index[c], c) for c in choices]
            axes.append(Axis(name, [index[str(v)] for v in values], ticks))
    axes.append(Axis(metric, [float(r.value) for r in done]))
    return axes


def param_importances(records: Sequence[TrialRecord], metric: str, mode: str) -> dict[str, float]:
    """fANOVA importances of the parameters for the metric; empty when they cannot be had.

    They need at least 2 completed trials and a parameter that varies among them; Optuna's
    errors for other degenerate studies are logged rather than raised, since a report without
    this one plot is still useful.
    """
    done = _completed(records)
    if len(done) < 2:
        return {}
    # Only parameters every completed trial has and that vary among them: Optuna would give a
    # lone constant parameter an importance of 1.0, which reads as a finding when it is none.
    params = [plain_params(r) for r in done]
    varying = [
        k for k in sorted(set().union(*params))
        if all(k in p for p in params) and len({repr(p[k]) for p in params}) > 1
    ]
    if not varying:
        return {}
    study = study_from_records(records, metric, mode)
    try:
        # seeded: the forest behind fANOVA is random, and a report should be reproducible
        imps = get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=0), params=varying
        )
        return {k: float(v) for k, v in imps.items()}
    except (ValueError, RuntimeError) as e:
        log.warning("skipping parameter importances: %s", e)
        return {}


def top_curves(records: Sequence[TrialRecord], mode: str, n: int = TOP_CURVES) -> list[TrialRecord]:
    """The ``n`` best records that have a value and a learning curve."""
    return [r for r in ranked(records, mode) if r.has_value and r.curve][:n]


def plot_data(records: Sequence[TrialRecord], metric: str, mode: str) -> dict[str, Any]:
    """What each plot in ``PLOTS`` shows, by plot name; plots with nothing to show are left out.

    optimization_history: completed records by number; parallel_coordinates: ``Axis`` list;
    param_importances: name -> importance; learning_curves: the top records with a curve.
    """
    check_mode(mode)
    records = list(records)  # read several times below
    data = {
        "optimization_history": _completed(records),
        "parallel_coordinates": parallel_axes(records, metric),
        "param_importances": param_importances(records, metric, mode),
        "learning_curves": top_curves(records, mode),
    }
    return {k: v for k, v in data.items() if v}


def plotly_figures(
    records: Sequence[TrialRecord], metric: str, mode: str, data: dict[str, Any] | None = None
) -> dict[str, go.Figure]:
    """The interactive figures by plot name (``PLOTS``), leaving out those with nothing to show."""
    import plotly.graph_objects as go  # heavy: imported only when plots are made

    data = plot_data(records, metric, mode) if data is None else data
    figs: dict[str, go.Figure] = {}
    layout: dict[str, Any] = {"template": "plotly_white", "height": 460}
    if done := data.get("optimization_history"):
        values = [float(r.value) for r in done]
        fig = go.Figure(layout=layout)
        numbers = [r.number for r in done]
        fig.add_scatter(x=numbers, y=values, mode="markers", name=metric,
                        text=[r.name for r in done],
                        hovertemplate="%{text}: %{y:.4g}<extra></extra>")
        fig.add_scatter(x=numbers, y=best_so_far(values, mode), mode="lines", line={"shape": "hv"},
                        name=f"best so far ({mode})")
        fig.update_layout(title="Optimization history", xaxis_title="trial", yaxis_title=metric)
        figs["optimization_history"] = fig

    if axes := data.get("parallel_coordinates"):
        dims = []
        for a in axes:
            dim: dict[str, Any] = {"label": a.label, "values": a.values}
            if a.ticks:
                dim["tickvals"] = [p for p, _ in a.ticks]
                dim["ticktext"] = [t for _, t in a.ticks]
            dims.append(dim)
        line = {"color": axes[-1].values, "colorscale": "Viridis", "showscale": True,
                "reversescale": mode == "min", "colorbar": {"title": {"text": metric}}}
        fig = go.Figure(go.Parcoords(dimensions=dims, line=line), layout=layout)
        fig.update_layout(title="Parallel coordinates")
        figs["parallel_coordinates"] = fig

    if imps := data.get("param_importances"):
        names = sorted(imps, key=imps.get)
        bars = go.Bar(x=[imps[k] for k in names], y=names, orientation="h")
        fig = go.Figure(bars, layout=layout)
        fig.update_layout(title=f"Hyperparameter importances for {metric}",
                          xaxis_title="importance")
        figs["param_importances"] = fig

    if top := data.get("learning_curves"):
        fig = go.Figure(layout=layout)
        for r in top:
            fig.add_scatter(x=[e for e, _ in r.curve], y=[v for _, v in r.curve],
                            mode="lines+markers", name=f"{r.name} ({_fmt(r.value)})")
        fig.update_layout(title=f"Learning curves (top {len(top)})", xaxis_title="epoch",
                          yaxis_title=metric)
        figs["learning_curves"] = fig
    return figs


def _draw_history(fig: Figure, done: list[TrialRecord], metric: str, mode: str) -> None:
    numbers, values = [r.number for r in done], [float(r.value) for r in done]
    ax = fig.add_subplot()
    ax.scatter(numbers, values, s=18, label=metric)
    ax.step(numbers, best_so_far(values, mode), where="post", color="C1",
            label=f"best so far ({mode})")
    ax.set(title="Optimization history", xlabel="trial", ylabel=metric)
    ax.grid(alpha=0.3)
    ax.legend()


def _draw_parallel(fig: Figure, axes: list[Axis], metric: str, mode: str) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    ax = fig.add_subplot()
    scaled = []  # each axis mapped to 0..1 so they share one y range
    for x, a in enumerate(axes):
        lo, hi = min(a.values), max(a.values)
        scaled.append([(v - lo) / (hi - lo) if hi > lo else 0.5 for v in a.values])
        top, bottom = (a.ticks[-1][1], a.ticks[0][1]) if a.ticks else (_fmt(hi), _fmt(lo))
        ax.text(x, 1.03, top, ha="center", fontsize=8)
        ax.text(x, -0.03, bottom, ha="center", va="top", fontsize=8)
        for pos, label in (a.ticks or [])[1:-1]:
            ax.text(x, (pos - lo) / (hi - lo), label, fontsize=7)
    metric_values = axes[-1].values
    norm = Normalize(min(metric_values), max(metric_values))
    cmap = colormaps["viridis_r" if mode == "min" else "viridis"]  # best trial brightest
    sign = 1.0 if mode == "max" else -1.0
    # worst first, so the best lines are drawn on top
    order = sorted(range(len(metric_values)), key=lambda i: sign * metric_values[i])
    xs = list(range(len(axes)))
    for i in order:
        ax.plot(xs, [s[i] for s in scaled], color=cmap(norm(metric_values[i])), alpha=0.8, lw=1.2)
    for x in xs:
        ax.axvline(x, color="0.3", lw=0.8)
    ax.set_xticks(xs, [a.label for a in axes], rotation=20)
    ax.tick_params(axis="x", pad=14)
    ax.set_yticks([])
    ax.set_ylim(-0.12, 1.12)
    ax.set_title("Parallel coordinates")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)


def _draw_importances(fig: Figure, imps: dict[str, float], metric: str, mode: str) -> None:
    names = sorted(imps, key=imps.get)
    ax = fig.add_subplot()
    ax.barh(names, [imps[k] for k in names])
    ax.set(title=f"Hyperparameter importances for {metric}", xlabel="importance")


def _draw_curves(fig: Figure, top: list[TrialRecord], metric: str, mode: str) -> None:
    ax = fig.add_subplot()
    for r in top:
        ax.plot([e for e, _ in r.curve], [v for _, v in r.curve], marker="o", ms=3,
                label=f"{r.name} ({_fmt(r.value)})")
    ax.set(title=f"Learning curves (top {len(top)})", xlabel="epoch", ylabel=metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


_DRAW = {
    "optimization_history": _draw_history,
    "parallel_coordinates": _draw_parallel,
    "param_importances": _draw_importances,
    "learning_curves": _draw_curves,
}


def make_plots(records: Sequence[TrialRecord], metric: str, mode: str, out_dir: Path) -> list[Path]:
    """Write ``<plot>.png`` and ``<plot>.html`` for each plot in ``PLOTS`` that has data.

    Returns the paths written. Plots with nothing to show (no completed trial; importances
    with fewer than 2 completed trials or no varying parameter) are skipped.
    """
    # heavy: imported only when plots are made. The Agg canvas is attached to each figure
    # explicitly (no pyplot), so no display is needed and no global backend state is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = plot_data(records, metric, mode)
    written: list[Path] = []
    for name, pfig in plotly_figures(records, metric, mode, data).items():
        fig = Figure(figsize=(9, 5.5), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        _DRAW[name](fig, data[name], metric, mode)
        png = out_dir / f"{name}.png"
        fig.savefig(png)
        html = out_dir / f"{name}.html"
        pfig.write_html(html, include_plotlyjs=True, full_html=True, config=PLOTLY_CONFIG)
        written += [png, html]
    return written

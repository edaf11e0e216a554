"""The ``kdtune`` command line (typer). Spec errors print one line and exit 2; nothing starts."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Hyperparameter search for knowledge distillation (Ray Tune + Optuna + MLflow).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
spaces_app = typer.Typer(help="Search-space files.", no_args_is_help=True)
app.add_typer(spaces_app, name="spaces")
console = Console()
err = Console(stderr=True)

SetOpt = typer.Option([], "--set", help="Override a spec field: a.b=VALUE (VALUE is YAML).")


def fail(msg: str, code: int = 2) -> None:
    """One line on stderr, secrets masked; the message is text, not Rich markup (``[kd, ft]``)."""
    from rich.markup import escape

    from kdtune.redact import redact

    err.print(f"[red]error:[/red] {escape(redact(msg))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guarded(fn):
    """Turn SpecError (bad input) into one line on stderr and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        from kdtune.config import SpecError

        try:
            return fn(*a, **kw)
        except SpecError as e:
            fail(str(e))
    return wrapper


@app.command()
@guarded
def train(spec: Path = typer.Argument(..., help="Spec YAML (or a sweep's best.yaml)."),
          set_: list[str] = SetOpt, seed: Optional[int] = typer.Option(None, help="Student seed.")) -> None:
    """Train one configuration (no Ray): teacher (cached), then the student; prints test_acc."""
    from kdtune.config import load_spec
    from kdtune.engine import save_state
    from kdtune.params import resolve_params
    from kdtune.teacher import ensure_teacher, needs_teacher
    from kdtune.trial import run_trial

    s = load_spec(spec, set_)
    config = resolve_params(s)
    teacher = ensure_teacher(s, log=console.print) if needs_teacher(s) else None
    console.print(f"student: {s.student.model} · method {'+'.join(s.methods)} · "
                  f"{json.dumps(config, default=str)}", highlight=False)
    out_dir = s.run_dir / "train" / time.strftime("%Y%m%d-%H%M%S")
    last: dict = {}

    def report(metrics, state=None, *, stage=False):
        if stage:
            shown = {k.split("/", 2)[-1]: v for k, v in metrics.items()}
            console.print(f"  stage {next(iter(metrics)).split('/')[1]} " + _fmt(shown), highlight=False)
            return
        console.print(f"epoch {metrics['epoch']}/{s.epochs} " + _fmt(
            {k: v for k, v in metrics.items() if k not in ("epoch", "params_count")}), highlight=False)
        if state is not None:
            last["state"] = state

    t0 = time.time()
    final = run_trial(s, config, teacher, report, seed=s.seed if seed is None else seed)
    path = save_state(last["state"], out_dir / "checkpoint.pt")
    console.print(f"test_acc {final['test_acc']:.4f} · {time.time() - t0:.1f}s · checkpoint {path}",
                  highlight=False)


def _fmt(m: dict) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())


@app.command()
def methods() -> None:
    """List registered methods with their hyperparameters and paper defaults."""
    from kdtune.config import method_space
    from kdtune.methods import METHODS

    table = Table("method", "teacher taps", "labels", "hyperparameters (default, range)")
    for name in METHODS.names():
        cls = METHODS.get(name)
        space = method_space(name)
        hp = []
        for k, p in space.params.items():
            rng = p.choices if p.type == "categorical" else f"[{p.low:g}, {p.high:g}]{' log' if p.log else ''}"
            hp.append(f"{k}={p.default} {rng}")
        inst = cls()
        table.add_row(name, ",".join(cls.teacher_needs) or "-",
                      "yes" if inst.uses_labels() else "optional" if "ce" in str(space.params) else "no",
                      "\n".join(hp) or "-")
    console.print(table)


@spaces_app.command("validate")
@guarded
def spaces_validate(files: list[Path] = typer.Argument(None, help="YAML files (default: all).")) -> None:
    """Check search-space files: schema, ranges, defaults, and their method's Params."""
    from kdtune.config import spaces_dir
    from kdtune.spaces import validate_space_file

    paths = files or sorted(spaces_dir().glob("*.yaml"))
    for p in paths:
        n = validate_space_file(p)
        console.print(f"ok  {p}  ({n} parameters)", highlight=False)


# Sweeps: the `sweep` group and `sweep run` (kdtune/cli_sweep.py); registered before the
# modules below, which add their commands to this group.
from kdtune.cli_sweep import sweep_app  # noqa: E402

app.add_typer(sweep_app, name="sweep")

# MLflow: `best`, `promote`, `ui` and `sweep list` (kdtune/cli_tracking.py).
from kdtune.cli_tracking import register as _register_tracking  # noqa: E402

_register_tracking(app)

# Ray cluster: `sweep submit|status|logs|stop` via the Ray Jobs API (kdtune/cli_cluster.py).
from kdtune.cli_cluster import register as _register_cluster  # noqa: E402

_register_cluster(sweep_app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""The ``kdtune`` command: the app and its top-level commands; groups live beside it.

Every command is a thin layer (parse, call, print) over ``kdtune.api`` and the modules it
names. kdtune's own modules import torch, Ray and MLflow, so each command imports what it runs
when it runs (marked ``# lazy``): ``kdtune --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from kdtune.cli.cluster import register as register_cluster
from kdtune.cli.report import register as register_report
from kdtune.cli.sweep import sweep_app
from kdtune.cli.tracking import register as register_tracking
from kdtune.cli.common import SetOpt, console, fmt, guarded, say

app = typer.Typer(help="Hyperparameter search for knowledge distillation (Ray Tune + Optuna + MLflow).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
spaces_app = typer.Typer(help="Search-space files.", no_args_is_help=True)
app.add_typer(spaces_app, name="spaces")


@app.command()
@guarded
def train(spec: Path = typer.Argument(..., help="Spec YAML (or a sweep's best.yaml)."),
          set_: list[str] = SetOpt, seed: Optional[int] = typer.Option(None, help="Student seed.")) -> None:
    """Train one configuration (no Ray): teacher (cached), then the student; prints test_acc."""
    from kdtune import api  # lazy: torch loads only for the command that runs
    from kdtune.checks import load_spec  # lazy: as above

    s = load_spec(spec, set_)

    def on_stage(metrics: dict) -> None:
        shown = {k.split("/", 2)[-1]: v for k, v in metrics.items()}
        say(f"  stage {next(iter(metrics)).split('/')[1]} " + fmt(shown))

    def on_epoch(metrics: dict) -> None:
        say(f"epoch {metrics['epoch']}/{s.epochs} " + fmt(
            {k: v for k, v in metrics.items() if k not in ("epoch", "params_count")}))

    from kdtune.params.walk import resolve_params  # lazy: as above

    say(f"student: {s.student.model} · method {'+'.join(s.methods)} · "
        f"{json.dumps(resolve_params(s), default=str)}")
    out = api.train(s, seed=seed, on_epoch=on_epoch, on_stage=on_stage, log=say)
    say(f"test_acc {out.test_acc:.4f} · {out.seconds:.1f}s · checkpoint {out.checkpoint}")


@app.command()
def methods() -> None:
    """List registered methods with their hyperparameters and paper defaults."""
    from kdtune.methods import METHODS  # lazy: importing the methods imports torch
    from kdtune.params.space import method_space

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
    from kdtune.checks import validate_space_file  # lazy: the checks import torch
    from kdtune.spec.paths import spaces_dir

    paths = files or sorted(spaces_dir().glob("*.yaml"))
    for p in paths:
        n = validate_space_file(p)
        console.print(f"ok  {p}  ({n} parameters)", highlight=False)


spec_app = typer.Typer(help="The spec format.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")


@spec_app.command("schema")
def spec_schema() -> None:
    """Print the spec's JSON Schema (for editors: `# yaml-language-server: $schema=FILE`)."""
    from kdtune.spec.schema import Spec  # lazy: pydantic only

    typer.echo(json.dumps(Spec.model_json_schema(), indent=2))


@spec_app.command("docs")
def spec_docs() -> None:
    """Print docs/spec.md: every spec field with its type, default and meaning."""
    from kdtune.spec.reference import spec_markdown  # lazy: pydantic only

    typer.echo(spec_markdown(), nl=False)


app.add_typer(sweep_app, name="sweep")
register_tracking(app, sweep_app)
register_cluster(sweep_app)
register_report(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

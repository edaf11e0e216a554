"""``kdtune sweep submit|status|logs|stop``: a sweep on a Ray cluster via the Ray Jobs API.

``register(sweep_app)`` adds the commands to the ``sweep`` sub-app (the logic is in
``kdtune/cluster.py``). Bad input (a spec that cannot run on a cluster, no address) prints one
line and exits 2 before anything is submitted; an unreachable cluster exits 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from kdtune.cli.common import exits_on, err, fail, guarded

ADDRESS_HELP = ("The cluster's Ray Jobs API, e.g. http://HEAD:8265 "
                "(default: $RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS).")
AddressOpt = typer.Option(None, "--address", help=ADDRESS_HELP)


def _cluster_error() -> type[BaseException]:
    from kdtune.cluster import ClusterError  # lazy: kdtune.cluster imports Ray's job client

    return ClusterError


# ClusterError (the cluster, not the input) → one line on stderr, exit code 1
_cluster_errors = exits_on(_cluster_error, 1)


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def submit(spec: Path = typer.Argument(..., help="Spec YAML."),
           address: Optional[str] = AddressOpt,
           set_: list[str] = typer.Option([], "--set", help="Override a spec field: a.b=VALUE."),
           wait: bool = typer.Option(False, "--wait", help="Stream the logs; exit 0 if the job "
                                     "succeeds, 1 otherwise."),
           shared_storage: bool = typer.Option(
               False, "--shared-storage", help="`storage` is a local path on a filesystem every "
               "node mounts at the same path (NFS, a PVC, one host)."),
           env: list[str] = typer.Option([], "--env", help="NAME or NAME=VALUE set for the job "
                                         "(shown in the Ray dashboard: no secrets)."),
           ship_source: bool = typer.Option(
               False, "--ship-source", help="Ship this kdtune source with the job (dev clusters "
                                            "that have its dependencies but not kdtune).")) -> None:
    """Submit a sweep to a Ray cluster; prints the job id."""
    from kdtune import cluster
    from kdtune.checks import load_spec

    url = cluster.jobs_address(address)  # before loading: a missing address is the first fix
    s = load_spec(spec, set_)
    job_id = cluster.submit(s, url, shared_storage=shared_storage, env=cluster.parse_env(env),
                            ship_source=ship_source)
    print(job_id, flush=True)
    if not wait:
        err.print(f"follow: kdtune sweep logs {job_id} --follow --address {url}", highlight=False)
        return
    try:
        final = cluster.follow(url, job_id, _out)
    except KeyboardInterrupt:
        err.print(f"\nthe job goes on; stop it: kdtune sweep stop {job_id} --address {url}",
                  highlight=False)
        raise typer.Exit(130)
    err.print(f"job {job_id}: {final}", highlight=False)
    raise typer.Exit(0 if final == "SUCCEEDED" else 1)


def status(job_id: str = typer.Argument(..., help="The id `submit` printed."),
           address: Optional[str] = AddressOpt) -> None:
    """A submitted sweep's status: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    from kdtune import cluster

    st, msg = cluster.status(cluster.jobs_address(address), job_id)
    print(f"{job_id} {st}" + (f"  {msg}" if msg else ""))


def logs(job_id: str = typer.Argument(..., help="The id `submit` printed."),
         address: Optional[str] = AddressOpt,
         follow: bool = typer.Option(False, "--follow", "-f", help="Stream until the job ends.")) -> None:
    """A submitted sweep's driver log (the Tune table, the best trial)."""
    from kdtune import cluster

    url = cluster.jobs_address(address)
    if follow:
        try:
            cluster.follow(url, job_id, _out)
        except KeyboardInterrupt:
            raise typer.Exit(130)
    else:
        _out(cluster.logs(url, job_id))


def stop(job_id: str = typer.Argument(..., help="The id `submit` printed."),
         address: Optional[str] = AddressOpt) -> None:
    """Stop a submitted sweep (its trials end with it); prints the final status."""
    from kdtune import cluster

    st = cluster.stop(cluster.jobs_address(address), job_id)
    print(f"{job_id} {st}")
    if st != "STOPPED" and st not in cluster.TERMINAL:
        raise typer.Exit(1)


def register(sweep_app: typer.Typer) -> None:
    """Add submit/status/logs/stop to the `sweep` sub-app."""

    for fn in (submit, status, logs, stop):
        sweep_app.command(fn.__name__)(guarded(_cluster_errors(fn)))

"""Sweeps on a Ray cluster through the Ray Jobs API (``kdtune sweep submit|status|logs|stop``).

This is a *client* of a running cluster: it never starts Ray locally and never calls Ray Tune.
``submit`` resolves the spec on this machine, refuses what cannot work on several nodes, and
ships a small working directory to the cluster::

    spec.yaml           the resolved spec (absolute paths, the tracking URI pinned)
    search_spaces/      this checkout's search spaces (the driver reads them; trials do not)
    search_space.yaml   the spec's own `search.space` file, when it names one

The job's entrypoint is ``kdtune sweep run spec.yaml``: kdtune itself must be installed on every
node (the images in docker/ do that), or pass ``ship_source`` on a dev cluster whose nodes have
kdtune's dependencies but not kdtune (its source travels as a ``py_modules`` entry).

Why the refusals (``check_cluster_spec``): trials of one sweep run on several machines, so
  - ``storage`` must be one place every node writes to: ``s3://…``/``gs://…``, or a path on a
    shared filesystem mounted at the same path everywhere (the caller says so: ``--shared-storage``);
    Ray Tune 2.x does not sync trial folders back to the head node;
  - MLflow must be a server every node reaches (``http(s)://``): a sqlite file or a local folder
    lives on one machine, and sqlite under several writers fails with "database is locked".
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import yaml

from kdtune.spec import Spec, SpecError
from kdtune.spec.paths import is_uri, spaces_dir
import kdtune
from kdtune.spec import paths

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SPEC_FILE = "spec.yaml"
SPACES = "search_spaces"
OWN_SPACE = "search_space.yaml"
# Jobs API address when neither --address nor these are set; Ray's CLI reads the same pair.
ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
SERVER_TRACKING = ("http://", "https://", "databricks")


class ClusterError(RuntimeError):
    """The cluster could not be reached or refused a request (CLI exit code 1)."""


# --------------------------------------------------------------------------- checks
def jobs_address(address: str | None) -> str:
    """The Ray Jobs API URL (the head's dashboard port, 8265 by default)."""
    address = address or next((os.environ[k] for k in ADDRESS_ENV if os.environ.get(k)), None)
    if not address:
        raise SpecError("--address: set it (or RAY_ADDRESS) to the cluster's Jobs API, "
                        "e.g. http://HEAD:8265")
    if "://" not in address:
        if address == "auto" or address.endswith(":6379"):
            raise SpecError(f"--address {address!r}: this is the GCS address; the Jobs API is "
                            "the dashboard's, e.g. http://HEAD:8265")
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise SpecError(f"--address {address!r}: expected the Jobs API URL, e.g. http://HEAD:8265")
    return address.rstrip("/")


def check_cluster_spec(spec: Spec, *, shared_storage: bool = False,
                       address: str | None = None) -> None:
    """Refuse, with one line saying what to set, a spec that cannot run on several nodes."""
    storage = spec.storage
    if storage.startswith("file://") or not is_uri(storage):
        if not shared_storage:
            raise SpecError(
                f"storage: {storage!r} is a local path; a cluster sweep needs storage every node "
                "writes to: set storage to s3://BUCKET/PREFIX, or pass --shared-storage if this "
                "path is a shared filesystem mounted at the same path on every node")
    uri = paths.tracking_uri(spec)
    if not uri.startswith(SERVER_TRACKING):
        raise SpecError(
            f"tracking.uri: {uri!r} is local to one machine; a cluster sweep needs an MLflow "
            "server every node reaches: set tracking.uri (or MLFLOW_TRACKING_URI) to "
            "http://HOST:5000")
    if address and _loopback(uri) and not _loopback(address):
        raise SpecError(
            f"tracking.uri: {uri!r} is this machine's loopback, which the cluster's nodes cannot "
            "reach: set tracking.uri to the MLflow address the nodes use (e.g. http://mlflow:5000)")


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


# --------------------------------------------------------------------------- the job
def stage_job(spec: Spec, workdir: Path) -> Path:
    """Write the resolved spec, the search spaces and the spec's own space file into workdir."""
    # the job's input, not a record: real values (dump_spec masks secrets for what is logged)
    data = spec.model_dump(mode="json")
    data["tracking"]["uri"] = paths.tracking_uri(spec)  # what was checked is what the cluster uses
    if spec.search.space:
        shutil.copyfile(spec.search.space, workdir / OWN_SPACE)
        data["search"]["space"] = OWN_SPACE  # made absolute again by the job, from its cwd
    shutil.copytree(spaces_dir(), workdir / SPACES,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    path = workdir / SPEC_FILE
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def entrypoint(ship_source: bool = False) -> str:
    # KDTUNE_SPACES must be absolute: the working dir is unpacked to a path known only on the
    # node, and Tune moves each trial into its own folder. The driver (the process that reads
    # search spaces) starts in the working dir, so $PWD is the shipped copy.
    cmd = "python -m kdtune.cli" if ship_source else "kdtune"
    return f'KDTUNE_SPACES="$PWD/{SPACES}" {cmd} sweep run {SPEC_FILE}'


def runtime_env(workdir: Path, *, env: dict[str, str] | None = None,
                ship_source: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"working_dir": str(workdir)}
    if env:
        out["env_vars"] = dict(env)
    if ship_source:

        out["py_modules"] = [str(Path(kdtune.__file__).parent)]
    return out


def client(address: str):
    """A JobSubmissionClient for address (contacts the cluster: raises ClusterError)."""
    from ray.job_submission import JobSubmissionClient  # lazy: only cluster commands need it

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # ConnectionError, or a RuntimeError wrapping one
        raise ClusterError(f"cannot reach the Ray Jobs API at {address} ({_reason(e)}); is the "
                           "head's dashboard up (ray[default]) and the port right (8265)?") from None


def submit(spec: Spec, address: str, *, shared_storage: bool = False,
           env: dict[str, str] | None = None, ship_source: bool = False) -> str:
    """Check, stage and submit a sweep; returns the job (submission) id."""
    check_cluster_spec(spec, shared_storage=shared_storage, address=address)
    jobs = client(address)
    with tempfile.TemporaryDirectory(prefix="kdtune-job-") as d:
        stage_job(spec, Path(d))
        job_id = f"kdtune-{spec.name}-{secrets.token_hex(4)}"
        try:
            # the working dir is zipped and uploaded here, so the temp dir can go afterwards
            return jobs.submit_job(entrypoint=entrypoint(ship_source), submission_id=job_id,
                                   runtime_env=runtime_env(Path(d), env=env, ship_source=ship_source),
                                   metadata={"kdtune_spec": spec.name})
        except Exception as e:
            raise ClusterError(f"submission to {address} failed: {_reason(e)}") from None


def status(address: str, job_id: str) -> tuple[str, str]:
    """(status, message) of a job, e.g. ("RUNNING", "Job is currently running.")."""
    info = _call(address, job_id, lambda c: c.get_job_info(job_id))
    return str(info.status.value), info.message or ""


def logs(address: str, job_id: str) -> str:
    return _call(address, job_id, lambda c: c.get_job_logs(job_id))


def follow(address: str, job_id: str, write: Callable[[str], Any]) -> str:
    """Stream a job's logs until it ends; returns its final status."""
    jobs = client(address)
    # Ray's SDK logs "WebSocket closed ..." at INFO when the stream ends: not news to the user
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except RuntimeError as e:
        raise ClusterError(f"job {job_id}: log stream from {address} broke ({_reason(e)}); "
                           f"`kdtune sweep status {job_id}` tells how it ended") from None
    for _ in range(30):  # the stream closes as the job ends; the status may lag a moment
        st, _msg = status(address, job_id)
        if st in TERMINAL:
            return st
        time.sleep(1)
    return st


def stop(address: str, job_id: str, *, wait_s: float = 30.0) -> str:
    """Ask the job to stop (SIGTERM to its driver, which ends its trials); returns the status."""
    _call(address, job_id, lambda c: c.stop_job(job_id))
    deadline = time.monotonic() + wait_s
    while True:
        st, _msg = status(address, job_id)
        if st in TERMINAL or time.monotonic() > deadline:
            return st
        time.sleep(0.5)


def _call(address: str, job_id: str, fn: Callable[[Any], Any]) -> Any:
    jobs = client(address)
    try:
        return fn(jobs)
    except Exception as e:
        raise ClusterError(f"job {job_id} at {address}: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1][:300] if text else e.__class__.__name__


def parse_env(items: list[str]) -> dict[str, str]:
    """``--env NAME`` (this shell's value) or ``--env NAME=VALUE`` → env_vars for the job."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name:
            raise SpecError(f"--env {item!r}: expected NAME or NAME=VALUE")
        if not sep:
            if name not in os.environ:
                raise SpecError(f"--env {name}: not set in this shell (use NAME=VALUE)")
            value = os.environ[name]
        out[name] = value
    return out

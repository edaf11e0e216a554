"""Every path rule in kdtune: where a spec's results, caches, teachers and stores live.

Paths in a spec are made absolute at load (relative ones from the current folder, as a user
typing the command expects); a URI (``s3://…``, ``models:/…``) is kept as given.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdtune.spec.schema import Spec

CHECKPOINT = "checkpoint.pt"     # the engine's state dict in a trial's checkpoint folder
BEST_FILE = "best.yaml"          # <run_dir>/best.yaml: the best trial's spec
SPEC_FILE = "spec.yaml"          # <run_dir>/spec.yaml: the sweep's resolved spec
TEACHER_FILE = "teacher.pt"
TEACHER_META = "meta.json"


def is_uri(s: str) -> bool:
    return "://" in s or s.startswith("models:/")


def absolute(p: str | None) -> str | None:
    if p is None or is_uri(p):
        return p
    return str(Path(p).expanduser().resolve())


def run_dir(spec: Spec) -> Path:
    """Results of this spec: <storage>/<name> (storage is absolute after load)."""
    return Path(spec.storage) / spec.name


def experiment_path(spec: Spec) -> str:
    """<storage>/<name>: Tune's experiment folder (a local path or a URI)."""
    if is_uri(spec.storage):
        return f"{spec.storage.rstrip('/')}/{spec.name}"
    return str(run_dir(spec))


def cache_dir(spec: Spec) -> Path:
    """Per-node files trials memory-map (data views, teacher outputs; kdtune/training/cache.py):
    <storage>/cache, or $KDTUNE_CACHE / ~/.cache/kdtune/shared when storage is a URI."""
    if not is_uri(spec.storage):
        return Path(spec.storage) / "cache"
    env = os.environ.get("KDTUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "kdtune" / "shared"


def teachers_dir(spec: Spec) -> Path:
    """Trained teachers, one folder per teacher key: <storage>/teachers."""
    return Path(spec.storage) / "teachers"


def registry_teacher_dir(spec: Spec, name: str, version: str) -> Path:
    """A ``models:/NAME@alias`` teacher downloaded once: <storage>/teachers/registry/NAME/vN."""
    return teachers_dir(spec) / "registry" / name / f"v{version}"


def train_dir(spec: Spec, stamp: str) -> Path:
    """``kdtune train`` checkpoints: <run_dir>/train/<stamp>."""
    return run_dir(spec) / "train" / stamp


def tracking_uri(spec: Spec) -> str:
    """The spec's MLflow store: tracking.uri, $MLFLOW_TRACKING_URI, else <storage>/mlflow.db."""
    if spec.tracking.uri:
        return spec.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(spec.storage) / 'mlflow.db'}"


def artifact_root(spec: Spec) -> str:
    """Artifacts of a local store: <storage>/mlartifacts."""
    return (Path(spec.storage) / "mlartifacts").as_uri()


def artifacts_beside(sqlite_uri: str) -> str:
    """The artifact folder kdtune uses beside a sqlite store (``kdtune ui`` serves it)."""
    return str(Path(sqlite_uri.removeprefix("sqlite:///")).parent / "mlartifacts")


def ray_sessions_dir() -> Path:
    """Records of the local Ray processes each running driver started (kdtune/tune/session.py):
    $KDTUNE_RAY_SESSIONS, else ~/.cache/kdtune/ray-sessions."""
    env = os.environ.get("KDTUNE_RAY_SESSIONS")
    return Path(env) if env else Path.home() / ".cache" / "kdtune" / "ray-sessions"


def spaces_dir() -> Path:
    """search_spaces/: $KDTUNE_SPACES, the copy inside an installed wheel, or the repo's."""
    env = os.environ.get("KDTUNE_SPACES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    packaged = here / "search_spaces"
    return packaged if packaged.is_dir() else here.parent / "search_spaces"

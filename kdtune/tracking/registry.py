"""Registered models as teachers: a ``models:/NAME@alias`` (or ``/VERSION``) URI → a local kdtune
checkpoint, downloaded once per version under ``<storage>/teachers/registry/NAME/vN``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

from kdtune.spec import Spec, SpecError
from kdtune.spec.paths import CHECKPOINT, registry_teacher_dir, tracking_uri
from kdtune.tracking.client import _one_line, client
from kdtune.tracking.query import run_checkpoint


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@alias`` → (name, alias, None); ``models:/NAME/3`` → (name, None, "3")."""
    body = uri.removeprefix("models:/")
    # the name becomes a cache folder (teachers/registry/NAME/vN): never a path of its own
    ok = lambda n: bool(n) and "/" not in n and "\\" not in n and n not in (".", "..")  # noqa: E731
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        if ok(name) and alias:
            return name, alias, None
    else:
        name, _, version = body.partition("/")
        if ok(name) and version.isdigit():
            return name, None, version
    raise SpecError(f"teacher.checkpoint: {uri!r} is not models:/NAME@alias or models:/NAME/VERSION")


def download_registered_model(uri: str, spec: Spec) -> Path:
    """``models:/NAME@alias`` (or ``/VERSION``) → a local kdtune checkpoint for ``ensure_teacher``.

    A promoted model carries its kdtune checkpoint among its ``extra_files``; otherwise the
    version's source run's ``checkpoint/`` artifact is used (e.g. a registered teacher run).
    Cached per version under ``<storage>/teachers/registry/``, so trials read it by path.
    """
    from mlflow.exceptions import MlflowException  # lazy: MLflow takes seconds to import

    name, alias, version = parse_models_uri(uri)
    store = tracking_uri(spec)
    c = client(store)
    try:
        mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
    except MlflowException as e:
        raise SpecError(f"teacher.checkpoint: {uri!r} not found in {store} "
                        f"({_one_line(e)})") from None
    folder = registry_teacher_dir(spec, name, mv.version)
    path = folder / CHECKPOINT
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory() as d:
        found = None
        try:
            local = Path(_download(f"models:/{name}/{mv.version}", d, store))
            found = next(iter(sorted(local.rglob("extra_files/*.pt"))), None)
        except MlflowException:
            pass  # no model files (a registered run, not a logged model): try the run's artifacts
        if found is None and mv.run_id and (art := run_checkpoint(c, mv.run_id)):
            found = Path(c.download_artifacts(mv.run_id, art, d))
        if found is None:
            raise SpecError(f"teacher.checkpoint: {uri!r} (version {mv.version}) holds no kdtune "
                            "checkpoint; register models with `kdtune promote`")
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{uuid.uuid4().hex}.tmp"
        shutil.copy2(found, tmp)
        tmp.replace(path)  # atomic: concurrent readers never see half a file
    (folder / "source.json").write_text(json.dumps({"uri": uri, "name": name, "version": mv.version,
                                                    "run_id": mv.run_id}, indent=2))
    return path


def _download(artifact_uri: str, dst: str, tracking_uri: str) -> str:
    """A registered version's model files, downloaded under ``dst``; their local path."""
    import mlflow.artifacts  # lazy: MLflow takes seconds to import

    return mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=dst,
                                               tracking_uri=tracking_uri)

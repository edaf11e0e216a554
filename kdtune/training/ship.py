"""The sweep's cache on every node: the driver's files as one bundle, written again on a node
that lacks them.

The driver writes the data view and the teacher outputs once (``kdtune.training.cache``) under
the sweep's storage. On one host (or a filesystem every node mounts) trials map those files.
On a multi-host cluster a worker node does not have them, so the driver also hands the trials
a *bundle* (the same arrays and metadata, plain numpy) through Ray's object store
(``kdtune.tune.run``: ``ray.put`` once; Ray moves it to each node once and the trials of a node
share it). The first trial on a node that lacks the files writes them from the bundle to a
node-local folder (atomically; a concurrent writer's copy wins) and every trial there maps
them: the same files, keys and exactness self-check as on the driver, so the guarantees hold.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from kdtune.training.cache import _write

META = "meta.json"


def read_bundle(shared: dict[str, Any]) -> dict[str, Any]:
    """The driver's cache folders (``shared``: paths from ``prepare_shared``) as arrays + meta."""
    out: dict[str, Any] = {}
    for key in ("data", "outputs"):
        folder = Path(shared[key]) if shared.get(key) else None
        if folder is None or not (folder / META).is_file():
            continue
        out[key] = {"name": folder.name, "meta": json.loads((folder / META).read_text()),
                    "arrays": {p.stem: np.load(p) for p in sorted(folder.glob("*.npy"))}}
    return out


def node_dir() -> Path:
    """Where a node keeps the files it wrote from a bundle (node-local, per user)."""
    return Path(tempfile.gettempdir()) / "kdtune-node-cache"


def localize(shared: dict[str, Any] | None, bundle: dict[str, Any] | None,
             base: Path | None = None) -> dict[str, Any] | None:
    """``shared`` with each folder this node lacks written from ``bundle`` and pointed at the
    local copy; unchanged where the driver's files are visible here (one host, shared disks)."""
    if not shared or not bundle:
        return shared
    out = dict(shared)
    for key, part in bundle.items():
        folder = Path(shared[key]) if shared.get(key) else None
        if folder is not None and (folder / META).is_file():
            continue  # the driver's own files are here
        local = (base or node_dir()) / key / part["name"]
        out[key] = str(_write(local, part["arrays"], part["meta"]))
        out[f"{key}_from_bundle"] = True
    return out

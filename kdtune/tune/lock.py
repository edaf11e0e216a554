"""One driver per sweep: an exclusive lock on ``<sweep>/.driver.lock`` while a driver runs it.

Two drivers on one sweep (a second ``--resume`` while the first still runs) both run its
trials, write the same trial folders and delete each other's checkpoints; Tune does not stop
them (seen in the evidence runs: "Error handling checkpoint ... Path not found"). The lock is
``flock``: the kernel drops it when the driver dies, ``kill -9`` included, so ``--resume``
after a crash is never blocked. Storage on a URI (s3://, gs://) has no file lock: not locked.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from kdtune.spec.paths import is_uri
from kdtune.spec.schema import SpecError

LOCK_FILE = ".driver.lock"


def check_unlocked(path: str, name: str) -> None:
    """SpecError now if another driver runs the sweep (before MLflow or Ray are touched);
    creates nothing when the sweep has never run."""
    if not is_uri(path) and Path(path, LOCK_FILE).is_file():
        with driver_lock(path, name):
            pass


@contextmanager
def driver_lock(path: str, name: str) -> Iterator[None]:
    """Hold the sweep's lock for the block; SpecError (exit 2) if another driver holds it."""
    if is_uri(path):
        yield
        return
    Path(path).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise SpecError(f"name: the sweep {name!r} is being run by another driver ({holder}); "
                            "wait for it to end, or start another sweep with --set name=<new>") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

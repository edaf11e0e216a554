"""Per-trial limits: ``resources.memory_gb`` as an address-space cap on the trial's process.

Ray has no memory isolation between the trials sharing a machine: one trial that allocates
without bound is killed by the kernel's OOM killer (or Ray's memory monitor) together with
whatever else was unlucky. ``memory_limit(gb)`` lowers the process's soft ``RLIMIT_AS`` to
*what it maps now + gb* for the duration of one trial, so an allocation beyond it fails at
once inside the trial (``MemoryError`` or torch's "can't allocate memory"), which
``memory_limit`` turns into ``TrialOutOfMemory`` with a clear reason; Tune records the trial as
failed and the sweep goes on. The old limit is restored afterwards: Tune reuses a worker
process for the next trial (``reuse_actors``).

Linux only (elsewhere it is a no-op with a warning). Not for GPU trials: CUDA reserves large
virtual address ranges, which an address-space cap breaks (the spec refuses the combination).
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from typing import Iterator

GB = 1 << 30


class TrialOutOfMemory(MemoryError):
    """A trial allocated more than its ``resources.memory_gb`` (or the machine had no more)."""


def mapped_bytes() -> int:
    """The process's current virtual address-space size (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


@contextlib.contextmanager
def memory_limit(gb: float | None) -> Iterator[None]:
    """Cap the address space this process may add to ``gb`` GiB while the block runs."""
    if not gb:
        yield
        return
    try:
        import resource  # lazy: POSIX only, and only when a cap is asked for
    except ImportError:  # not Linux/Unix
        warnings.warn("resources.memory_gb is ignored on this platform (no RLIMIT_AS)")
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = mapped_bytes() + int(gb * GB)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    except Exception as e:
        if _is_oom(e) and not isinstance(e, TrialOutOfMemory):
            size = re.search(r"allocate (\d+) bytes", str(e))
            what = (f"an allocation of {int(size.group(1)) / (1 << 20):.0f} MiB failed" if size
                    else f"{type(e).__name__}")
            raise TrialOutOfMemory(f"out of memory: the trial needed more than resources.memory_gb = "
                                   f"{gb:g} GB ({what})") from e
        raise
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))  # the worker runs other trials next

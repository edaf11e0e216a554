"""The sweep's cache: what the driver prepares once for all trials, memory-mapped on a node
(``kdtune train`` prepares the same for its one run: the teacher once, not once per epoch).

- **Data view** (``<cache>/data/<key>/``): the student's train/val/test splits (uint8 images,
  labels, row ids) as ``.npy``. A trial maps them copy-on-write instead of loading the dataset,
  so concurrent trials share one copy (the page cache) and a trial's private memory does not
  grow with the dataset. ``TensorLoader`` only reads its images (a batch is a gathered copy).
- **Teacher outputs** (``<cache>/teacher-outputs/<key>/``): for methods that read only the
  teacher's ``logits``/``penultimate`` on un-augmented training images (kd, logit_l2,
  trust_region, mds, teacher-output dropout, which is applied after the outputs), the frozen
  teacher's outputs for every training row, computed once. A trial installs
  ``ctx.teacher_view``: it gathers rows by ``batch.idx`` and restricts the logits to the
  student's classes (``restrict``), exactly as the live path does.
- **Teacher feature maps** for methods reading the teacher's ``groups`` (at, fitnet, ft): only
  the groups the method declares it reads (``Method.teacher_groups``; the cache's tap names are
  ``groups.<i>``), and only up to ``GROUPS_MAX_BYTES``: a feature map is hundreds of numbers per
  row where logits are ten. Unread entries of the view's ``groups`` list are None.

Exactness: the outputs are computed by the live path's own code (``teacher_taps`` under
``autocast`` on the trials' device type, unrestricted) over the training rows in order.
A row's teacher output does not depend on the batch it is in once a batch has ≥ 4 rows, and
``teacher_taps`` never runs fewer than 8 (see ``MIN_TEACHER_ROWS`` in ``kdtune/training/context.py``), so the cache equals
the live teacher on any trial's shuffled batches bit for bit. Each build checks that on a
shuffled batch and a 3-row batch; a cache that fails is not used (the trials run the teacher).

Anything else runs the live teacher and says so once: taps a method does not declare (``stem``,
``groups`` without ``teacher_groups``), feature maps over the size cap or a searched student
architecture (its group count varies by trial), training augmentation (random crops and flips:
every epoch another view), methods running the teacher themselves (kr, simultaneous's
fine-tuned copy), a trial device unlike the cache's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from kdtune.data import DataSplits, TensorData, TensorLoader
from kdtune.methods._base import groups_read
from kdtune.models import create_model
from kdtune.registry import METHODS
from kdtune.spec.paths import cache_dir
from kdtune.spec.schema import Spec
from kdtune.training.context import autocast, restrict, student_data, teacher_taps
from kdtune.training.teacher import load_teacher

CACHEABLE = frozenset({"logits", "penultimate"})  # teacher taps the cache holds as they are
GROUPS_MAX_BYTES = 2 << 30  # teacher feature maps are cached up to this size (else: live)
CACHE_BATCH = 256  # rows per teacher forward when building (any size ≥ MIN_TEACHER_ROWS is exact)
SPLITS = ("train", "val", "test")
FORMAT = 1  # bump when the files' layout changes

logger = logging.getLogger("kdtune.training.cache")
_said: set[str] = set()


def say_once(msg: str, log: Callable[[str], None] | None = None) -> None:
    """Log a line once per process (a reused Ray worker runs many trials)."""
    if msg in _said:
        return
    _said.add(msg)
    (log or logger.warning)(msg)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _augment(spec: Spec, data_augment: bool) -> bool:
    return data_augment if spec.data.augment is None else spec.data.augment  # as TrialContext


# --------------------------------------------------------------------------- files
def _write(folder: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write atomically (a temp folder renamed into place); a concurrent writer's copy wins."""
    if (folder / "meta.json").is_file():
        return folder
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(a))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            tmp.rename(folder)
        except OSError:  # another process put it there first: theirs is the same
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _map(path: Path) -> Tensor:
    """A tensor over a memory-mapped ``.npy``: no copy; copy-on-write, so a write (none is
    expected) would change this process's pages only, never the file or other trials."""
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def is_mapped(t: Tensor, path: str | os.PathLike | None = None) -> bool:
    """Whether ``t``'s memory lies in a file mapping (of ``path``, if given): /proc/self/maps."""
    addr, want = t.data_ptr(), None if path is None else str(Path(path).resolve())
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        if lo <= addr < hi:
            name = parts[5].strip() if len(parts) > 5 else ""
            return name.startswith("/") and (want is None or name == want)
    return False


# --------------------------------------------------------------------------- data view
def data_key(spec: Spec) -> str:
    """Hash of what determines the student's splits (not the teacher, not the method)."""
    d, s = spec.data, spec.student
    classes = s.classes if isinstance(s.classes, (str, list)) else s.classes.model_dump()
    return _hash({"format": FORMAT, "name": d.name, "root": d.root, "train_limit": d.train_limit,
                  "val_fraction": d.val_fraction, "split_seed": d.split_seed, "classes": classes})


def save_data_view(spec: Spec, data: DataSplits) -> Path:
    """Write the student's splits under ``<cache>/data/<data_key>`` (once; later calls reuse)."""
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        t: TensorData = getattr(data, split)
        arrays[f"{split}_x"] = t.x.numpy()
        arrays[f"{split}_y"] = t.y.numpy()
        rows = t.rows if t.rows is not None else torch.arange(len(t))
        arrays[f"{split}_rows"] = rows.numpy()
    meta = {"key": data_key(spec), "dataset": spec.data.name, "num_classes": data.num_classes,
            "in_channels": data.in_channels, "input_size": data.input_size,
            "classes": list(data.classes), "mean": list(data.mean), "std": list(data.std),
            "augment": data.augment, "rows": {s: len(getattr(data, s)) for s in SPLITS}}
    return _write(cache_dir(spec) / "data" / data_key(spec), arrays, meta)


def map_data_view(folder: str | os.PathLike) -> DataSplits:
    """The splits a ``save_data_view`` folder holds, every tensor memory-mapped."""
    folder = Path(folder)
    m = json.loads((folder / "meta.json").read_text())
    splits = {s: TensorData(_map(folder / f"{s}_x.npy"), _map(folder / f"{s}_y.npy"),
                            _map(folder / f"{s}_rows.npy")) for s in SPLITS}
    return DataSplits(**splits, num_classes=m["num_classes"], in_channels=m["in_channels"],
                      input_size=m["input_size"], classes=m["classes"], mean=tuple(m["mean"]),
                      std=tuple(m["std"]), augment=m["augment"])


# --------------------------------------------------------------------------- teacher outputs
def group_tap(i: int) -> str:
    """The cache's name for the teacher's ``groups[i]``."""
    return f"groups.{i}"


def _group_index(tap: str) -> int | None:
    head, _, i = tap.partition(".")
    return int(i) if head == "groups" and i.isdigit() else None


def _cacheable(tap: str) -> bool:
    return tap in CACHEABLE or _group_index(tap) is not None


def tap_names(needs: tuple[str, ...], groups: tuple[int, ...] | None) -> tuple[str, ...]:
    """``needs`` as the cache names them: ``groups`` becomes ``groups.<i>`` for each group in
    ``groups`` (what the method declares it reads); kept as ``groups`` (not cacheable) if None."""
    if "groups" not in needs or groups is None:
        return tuple(needs)
    return tuple(sorted([n for n in needs if n != "groups"] + [group_tap(i) for i in groups]))


def live_reason(name: str, needs: tuple[str, ...], augment: bool) -> str | None:
    """Why a method must run the live teacher (None: the cache can serve it); ``needs`` as
    ``tap_names`` gives them. Methods that never ask for teacher outputs per batch (``needs``
    empty) give None: nothing to cache."""
    if not needs:
        return None
    if not all(_cacheable(n) for n in needs):
        return (f"{name} reads teacher taps {', '.join(sorted(n for n in needs if not _cacheable(n)))}"
                ": live teacher")
    if augment:
        return f"{name}: training augmentation is on (random crops/flips): live teacher"
    return None


def spec_methods(spec: Spec) -> list[tuple[str, tuple[str, ...], list[str]]]:
    """(name, teacher_needs, member methods) of each method a trial of this spec can be: the
    searched choices, or the one composition (its members' needs together)."""
    needs = {m: tuple(METHODS.get(m).teacher_needs) for m in spec.methods}
    if spec.compose:
        return [("+".join(spec.methods), tuple(sorted({t for v in needs.values() for t in v})),
                 list(spec.methods))]
    return [(m, n, [m]) for m, n in needs.items()]


def group_sizes(model: torch.nn.Module, data: DataSplits) -> list[int]:
    """Numbers per row of each of a model's ``groups`` (a 2-row zero batch, eval mode)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    with torch.no_grad():
        x = torch.zeros(2, data.in_channels, data.input_size, data.input_size, device=dev)
        groups = model.forward_taps(x)["groups"] if hasattr(model, "forward_taps") else []
    model.train(was)
    return [g[0].numel() for g in groups]


def cached_needs(spec: Spec, data: DataSplits, teacher, log: Callable[[str], None]) -> tuple[str, ...]:
    """The taps to cache (the union over the methods the cache serves); logs once for each
    method that runs the live teacher instead."""
    out: set[str] = set()
    counts = None
    for name, needs, members in spec_methods(spec):
        groups = None
        if "groups" in needs and counts is None:
            counts = _group_counts(spec, data, teacher, log)
        if "groups" in needs and counts:
            groups = groups_read([METHODS.get(m) for m in members], len(counts[0]), counts[1])
            size = 4 * len(data.train) * sum(counts[0][i] for i in groups or ())
            if size > GROUPS_MAX_BYTES:  # the live teacher: no reason to fill the disk
                say_once(f"teacher outputs: {name}: the teacher's groups {list(groups)} would take "
                         f"{size / 2**30:.1f} GiB for {len(data.train)} rows (cap "
                         f"{GROUPS_MAX_BYTES / 2**30:.0f} GiB): live teacher", log)
                continue
        taps = tap_names(needs, groups)
        reason = live_reason(name, taps, _augment(spec, data.augment))
        if reason:
            say_once(f"teacher outputs: {reason}", log)
        else:
            out |= set(taps)
    return tuple(sorted(out))


def _group_counts(spec: Spec, data: DataSplits, teacher, log) -> tuple[list[int], int] | None:
    """(the teacher's group sizes per row, the student's group count); None when the student
    architecture is searched (each trial's student may have another number of groups)."""
    if spec.search.student:
        say_once("teacher outputs: the student architecture is searched: teacher feature maps "
                 "are not cached", log)
        return None
    student = create_model(spec.student.model, data.num_classes, data.in_channels,
                           data.input_size, **spec.student.kwargs)
    return group_sizes(load_teacher(teacher, torch.device("cpu")), data), len(group_sizes(student, data))


def trial_device_type(spec: Spec) -> str:
    """The device type the sweep's trials will run on (a GPU only if they ask for one)."""
    if spec.device != "auto":
        return torch.device(spec.device).type
    return "cuda" if spec.resources.gpu > 0 else "cpu"


def outputs_key(teacher_path: Path, spec: Spec, needs: tuple[str, ...], device_type: str) -> str:
    weights = hashlib.sha256(Path(teacher_path).read_bytes()).hexdigest()
    return _hash({"format": FORMAT, "teacher": weights, "data": data_key(spec), "needs": needs,
                  "device": device_type, "torch": torch.__version__})


def _channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _to_numpy(t: Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()  # no numpy bf16


def build_teacher_outputs(spec: Spec, teacher, data: DataSplits, needs: tuple[str, ...],
                          device: torch.device, log: Callable[[str], None] = print) -> Path:
    """Compute the teacher's ``needs`` over the training rows in order; write and check them."""
    folder = cache_dir(spec) / "teacher-outputs" / outputs_key(teacher.path, spec, needs, device.type)
    if (folder / "meta.json").is_file():
        return folder
    model = load_teacher(teacher, device)
    loader = TensorLoader(data.train, data, CACHE_BATCH, shuffle=False, augment=False, device=device)

    def live(x: Tensor, need: str) -> Tensor:
        # the call the live path makes for a method needing only this tap (``engine.taps``:
        # the plain forward for logits, forward_taps otherwise)
        head, _, i = need.partition(".")
        with torch.no_grad(), autocast(device):
            out = teacher_taps(model, x, (head,))[head]
        return out[int(i)] if i else out

    parts: dict[str, list[Tensor]] = {n: [] for n in needs}
    for x, _, _ in loader:
        for n in needs:
            parts[n].append(live(x, n).cpu())
    arrays = {n: torch.cat(v) for n, v in parts.items()}

    # the check: a trial's first shuffled batch and a 3-row batch, run live, against the cache
    probe = TensorLoader(data.train, data, 128, shuffle=True, seed=1, device=device)
    x, _, idx = next(iter(probe))
    exact = all(torch.equal(live(xb, n).cpu(), arrays[n][ib.cpu()])
                for xb, ib in ((x, idx), (x[:3], idx[:3])) for n in needs)
    meta = {"needs": list(needs), "device": device.type, "rows": len(data.train),
            "data_key": data_key(spec), "dtype": {n: str(a.dtype).removeprefix("torch.")
                                                  for n, a in arrays.items()},
            "exact": exact, "teacher": str(teacher.path), "batch": CACHE_BATCH,
            "teacher_groups": len(group_sizes(model, data)),
            # the live maps' memory layout: a reduction over channels sums in another order on
            # NCHW than on channels_last strides, and the last bits of a loss would differ
            "channels_last": sorted(n for n in needs if _channels_last(live(x, n)))}
    _write(folder, {n: _to_numpy(a) for n, a in arrays.items()}, meta)
    log(f"teacher outputs: {', '.join(needs)} for {len(data.train)} training rows cached at {folder}"
        + ("" if exact else " (NOT equal to the live teacher on a shuffled batch: trials run it live)"))
    return folder


class TeacherOutputs:
    """A cache folder, memory-mapped; ``view(ctx)`` is the callable for ``ctx.teacher_view``."""

    def __init__(self, folder: str | os.PathLike, device: torch.device) -> None:
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.tensors: dict[str, Tensor] = {}
        for n in self.meta["needs"]:
            t = _map(self.folder / f"{n}.npy")
            if self.meta["dtype"][n] == "bfloat16":
                t = t.view(torch.bfloat16)
            # on a GPU one copy in the trial's device memory for logits (small: rows × classes);
            # feature maps (up to GROUPS_MAX_BYTES) stay mapped, gathered rows are copied over
            small = _group_index(n) is None
            self.tensors[n] = t if device.type == "cpu" or not small else t.to(device)

    def view(self, ctx, groups: tuple[int, ...] | None = None) -> Callable:
        """``groups``: the teacher groups the trial's method reads (``Method.teacher_groups``);
        a request for ``groups`` is served only if the cache holds all of them."""
        loader, index, have = ctx.train_loader, ctx.teacher_index, set(self.tensors)
        n_groups = self.meta.get("teacher_groups", 0)
        nhwc = set(self.meta.get("channels_last", ()))

        def rows(n: str, idx: Tensor) -> Tensor:
            src = self.tensors[n]
            t = src.index_select(0, idx.to(src.device)).to(ctx.device)
            return t.contiguous(memory_format=torch.channels_last) if n in nhwc else t

        def teacher_view(batch, needs: tuple[str, ...]) -> dict[str, Any] | None:
            taps = tap_names(needs, groups)
            if not set(taps) <= have or not plain(batch):
                return None  # the live teacher
            out = {n: rows(n, batch.idx) for n in needs if n != "groups"}
            if "groups" in needs:
                out["groups"] = [rows(group_tap(i), batch.idx) if i in (groups or ()) else None
                                 for i in range(n_groups)]
            return restrict(out, index)

        def plain(batch) -> bool:
            # The cache holds the un-augmented training rows: check that this batch is that
            # view (its first image normalised exactly as TensorLoader does), so a method that
            # asks with some other loader's batch gets the live teacher, never wrong rows.
            i = batch.idx[:1]
            x = loader.x[i].float().div_(255)
            if torch.equal((x - loader.mean).div_(loader.std), batch.x[:1]):
                return True
            say_once("teacher outputs: a batch that is not the plain training view: live teacher")
            return False

        return teacher_view


# --------------------------------------------------------------------------- driver and trial
GPU_NEEDS_KEY = "outputs_on_gpu_node"  # prepare_shared's ask: build these outputs on a GPU node


def prepare_shared(spec: Spec, teacher, log: Callable[[str], None] = print,
                   device_type: str | None = None) -> dict[str, Any] | None:
    """Once per sweep, on the driver: the data view and (where it serves) the teacher outputs,
    computed on ``device_type`` (default: the trials' device type, ``trial_device_type``).

    Returns the reference trials receive (plain data: paths). Its ``outputs`` is None when no
    method can use the cache or the trials' device is not here (then ``GPU_NEEDS_KEY`` lists
    what ``kdtune.tune.gpu_cache`` should build on a GPU node); None when nothing could be
    written (each trial then loads the data and runs the teacher itself, as without it)."""
    try:
        return _prepare(spec, teacher, log, device_type or trial_device_type(spec))
    except OSError as e:  # a speed-up, never a reason for a sweep to fail
        log(f"shared files: cannot write under {cache_dir(spec)} ({e.strerror or e}): "
            "each trial loads the data and runs the teacher itself")
        return None


def _prepare(spec: Spec, teacher, log: Callable[[str], None], dev_type: str) -> dict[str, Any]:
    data = student_data(spec)
    ref: dict[str, Any] = {"data": str(save_data_view(spec, data)), "outputs": None}
    if teacher is None:
        return ref
    needs = cached_needs(spec, data, teacher, log)
    if not needs:
        return ref
    if dev_type == "cuda" and not torch.cuda.is_available():
        ref[GPU_NEEDS_KEY] = list(needs)  # built in a GPU task: kdtune.tune.gpu_cache
        return ref
    device = torch.device("cuda" if dev_type == "cuda" else dev_type)
    ref["outputs"] = str(build_teacher_outputs(spec, teacher, data, needs, device, log))
    return ref


def trial_data(spec: Spec, shared: dict[str, Any] | None) -> DataSplits:
    """The student's splits: the mapped view when the driver wrote one here, else loaded."""
    folder = Path(shared["data"]) if shared and shared.get("data") else None
    if folder is not None and (folder / "meta.json").is_file():
        if json.loads((folder / "meta.json").read_text())["key"] == data_key(spec):
            return map_data_view(folder)
    if folder is not None:
        say_once(f"shared data: {folder} is not on this node: each trial loads the dataset")
    return student_data(spec)


def use_teacher_outputs(ctx, method, shared: dict[str, Any] | None) -> bool:
    """Install the cache as ``ctx.teacher_view`` when it serves this trial; else say why once."""
    needs = tuple(method.teacher_needs)
    if ctx.teacher is None or not needs:
        return False
    name = method.name or type(method).__name__
    groups = None
    if "groups" in needs:  # which of the teacher's groups this trial's method reads
        s = ctx.spec.student  # the trial's (a searched architecture included)
        student = create_model(s.model, ctx.data.num_classes, ctx.data.in_channels,
                               ctx.data.input_size, **s.kwargs)
        groups = method.teacher_groups(len(group_sizes(ctx.teacher, ctx.data)),
                                       len(group_sizes(student, ctx.data)))
    needs = tap_names(needs, groups)
    reason = live_reason(name, needs, ctx.train_loader.augment)
    folder = Path(shared["outputs"]) if shared and shared.get("outputs") else None
    if reason is None:
        meta = (json.loads((folder / "meta.json").read_text())
                if folder is not None and (folder / "meta.json").is_file() else None)
        if meta is None:
            reason = f"{name}: no teacher-output cache on this node: live teacher"
        elif meta["device"] != ctx.device.type:
            reason = f"{name}: cache computed on {meta['device']}, trial on {ctx.device.type}: live teacher"
        elif not meta["exact"]:
            reason = f"{name}: the cache did not equal the live teacher when built: live teacher"
        elif meta["data_key"] != data_key(ctx.spec) or meta["rows"] != len(ctx.data.train):
            reason = f"{name}: the cache is for another data view: live teacher"
        elif not set(needs) <= set(meta["needs"]):
            reason = f"{name}: the cache lacks {', '.join(needs)}: live teacher"
        else:
            ctx.teacher_view = TeacherOutputs(folder, ctx.device).view(ctx, groups)
            ctx.teacher_cache = True
            return True
    say_once(f"teacher outputs: {reason}")
    return False

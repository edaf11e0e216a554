"""Speed (issue 8): the teacher-output cache is exact, shared data is memory-mapped, and the
benchmarks run in their quick mode. Tiny models on digits: the whole file takes seconds."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kdtune.training.cache as shared_mod
from kdtune.spec import parse_spec
from kdtune.training.context import MIN_TEACHER_ROWS, restrict, seed_everything, teacher_taps
from kdtune.training.engine import build_student, train
from kdtune.training.ops import default_step, make_optimizer
from kdtune.methods import Batch
from kdtune.models import create_model
from kdtune.params.walk import resolve_params
from kdtune.registry import METHODS as REGISTRY
from kdtune.training.cache import is_mapped, prepare_shared
from kdtune.training.teacher import ensure_teacher
from kdtune.training.trial import make_context

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["kd", "logit_l2", "mds", "trust_region", "fitnet", "at"]


def spec_for(storage: Path, method="kd", **kw):
    d = {"name": "speed", "data": {"name": "digits", "val_fraction": 0.2},
         "teacher": {"model": "cnn4", "epochs": 1, "kwargs": {"width": 0.5}},
         # G→S: the cache holds all 10 teacher logits, the view restricts them to 5
         "student": {"model": "cnn_small", "classes": {"first": 5}, "kwargs": {"width": 0.5}},
         "method": method, "epochs": 1, "params": {"batch_size": 32}, "storage": str(storage)}
    d.update(kw)
    return parse_spec(d)


@pytest.fixture(autouse=True)
def fresh_log_once():
    shared_mod._said.clear()  # "says so once" is per process: each test starts afresh
    yield


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A method-list spec, its teacher, and what the driver prepares for its trials."""
    storage = tmp_path_factory.mktemp("speed")
    spec = spec_for(storage, method=METHODS)
    teacher = ensure_teacher(spec, log=lambda s: None)
    lines: list[str] = []
    ref = prepare_shared(spec, teacher, log=lines.append)
    return spec, teacher, ref, lines


def config_for(spec, method: str) -> dict:
    return resolve_params(spec.model_copy(update={"params": {**spec.params, "method": method}}))


def test_teacher_taps_pads_tiny_batches_so_rows_do_not_depend_on_batching():
    # an MLP's GEMM rounds differently below 4 rows (measured): padding to 8 rows removes that
    torch.manual_seed(0)
    model = create_model("mlp", 10, 1, 8).eval()
    x = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        full = teacher_taps(model, x, ("logits",))["logits"]
        for n in (1, 2, 3, MIN_TEACHER_ROWS - 1):
            part = teacher_taps(model, x[:n], ("logits",))["logits"]
            assert part.shape == (n, 10) and torch.equal(part, full[:n])
        groups = teacher_taps(model, x[:2], ("groups",))["groups"]
        assert all(len(g) == 2 for g in groups)


def test_cached_outputs_equal_fresh_ones_bit_for_bit(sweep):
    spec, teacher, ref, _ = sweep
    for method in ("kd", "mds", "at"):
        ctx, m = make_context(spec, config_for(spec, method), teacher, seed=3, shared=ref)
        assert ctx.teacher_view is not None, method
        needs = m.teacher_needs
        # every batch of a shuffled epoch (32 rows, and the short last one), at two batch sizes
        for bs in (32, 7):
            loader = ctx.loader("train", batch_size=bs)
            for x, y, idx in loader:
                got = ctx.teacher_view(Batch(x, y, idx), needs)
                with torch.no_grad():
                    fresh = restrict(teacher_taps(ctx.teacher, x, needs), ctx.teacher_index)
                for k in needs:
                    pairs = ([(g, f) for g, f in zip(got[k], fresh[k]) if g is not None]
                             if k == "groups" else [(got[k], fresh[k])])
                    assert pairs and len(got[k]) == len(fresh[k]), (method, k)
                    for g, f in pairs:
                        # the same memory layout too: a loss reducing over channels sums in
                        # stride order
                        assert g.dtype == f.dtype and g.stride() == f.stride(), (method, k)
                        assert torch.equal(g, f), (method, k)
    meta = json.loads((Path(ref["outputs"]) / "meta.json").read_text())
    assert meta["exact"]


def test_first_batch_loss_is_the_same_with_and_without_the_cache(sweep):
    spec, teacher, ref, _ = sweep
    config = config_for(spec, "kd")
    config.update({"kd.temperature": 4.0, "kd.alpha": 0.5})

    def first_loss(shared):
        ctx, method = make_context(spec, config, teacher, seed=5, shared=shared)
        assert (ctx.teacher_view is not None) == bool(shared)
        calls = []
        if shared:  # count the teacher's own forwards: with the cache there are none
            ctx.teacher.register_forward_hook(lambda *a: calls.append(1))
        seed_everything(5)
        ctx.student = build_student(ctx, method)
        ctx.extras = method.build_extras(ctx.teacher, ctx.student, ctx)
        ctx.optimizers = [make_optimizer(ctx.student.parameters(), ctx.common)]
        x, y, idx = next(iter(ctx.train_loader))
        terms = default_step(ctx, method, Batch(x, y, idx))
        assert not calls
        return {k: v.detach() for k, v in terms.items()}

    cached, live = first_loss(ref), first_loss(None)
    assert cached.keys() == live.keys()
    for k in live:
        assert torch.equal(cached[k], live[k]), k


def test_a_whole_epoch_is_the_same_with_and_without_the_cache(sweep):
    spec, teacher, ref, _ = sweep
    config = config_for(spec, "kd")
    out = []
    for shared in (ref, None):
        ctx, method = make_context(spec, config, teacher, seed=1, shared=shared)
        out.append(train(ctx, method, lambda *a, **k: None, epochs=1))
    # the same numbers; only the flag that says where the teacher's outputs came from differs
    assert (out[0].pop("teacher_cache"), out[1].pop("teacher_cache")) == (1.0, 0.0)
    assert out[0] == out[1]


def test_cache_serves_output_and_feature_methods(sweep):
    spec, teacher, ref, lines = sweep
    assert not [s for s in lines if "live teacher" in s]
    used = {m: make_context(spec, config_for(spec, m), teacher, seed=0, shared=ref)[0].teacher_view
            is not None for m in METHODS}
    assert all(used.values()), used
    # cnn4 has 4 groups, cnn_small 2: at reads the teacher's last two, fitnet its middle one
    meta = json.loads((Path(ref["outputs"]) / "meta.json").read_text())
    assert set(meta["needs"]) == {"logits", "penultimate", "groups.1", "groups.2", "groups.3"}


FEATURE_METHODS = [m for m in REGISTRY.names() if "groups" in REGISTRY.get(m).teacher_needs]


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_feature_methods_train_the_same_from_cached_feature_maps(sweep, tmp_path, name):
    """Every method reading the teacher's groups: an epoch (pre-stages included) from the cache
    equals one with the live teacher, which also checks its ``teacher_groups`` declaration (an
    undeclared group read from the cache is None and fails)."""
    spec, teacher, _, _ = sweep
    one = spec.model_copy(update={"method": name, "storage": str(tmp_path)})
    ref = prepare_shared(one, teacher, log=lambda m: None)
    out = []
    for shared in (ref, None):
        ctx, method = make_context(one, resolve_params(one), teacher, seed=2, shared=shared)
        out.append(train(ctx, method, lambda *a, **k: None, epochs=1))
    declared = REGISTRY.get(name).teacher_groups(4, 2) is not None
    assert (out[0].pop("teacher_cache"), out[1].pop("teacher_cache")) == (float(declared), 0.0)
    assert out[0] == out[1]


def test_feature_maps_over_the_cap_or_undeclared_mean_the_live_teacher(sweep, tmp_path, monkeypatch,
                                                                      caplog):
    from kdtune.methods.at import AT

    spec, teacher, _, _ = sweep
    one = spec.model_copy(update={"method": "at", "storage": str(tmp_path / "cap")})
    monkeypatch.setattr(shared_mod, "GROUPS_MAX_BYTES", 1000)
    lines: list[str] = []
    ref = prepare_shared(one, teacher, log=lines.append)
    assert ref["outputs"] is None
    assert any("at: the teacher's groups [2, 3] would take" in s for s in lines), lines
    assert make_context(one, resolve_params(one), teacher, seed=0, shared=ref)[0].teacher_view is None
    # a method reading groups without saying which: the teacher runs live, said once per process
    monkeypatch.setattr(AT, "teacher_groups", classmethod(lambda cls, n_t, n_s: None))
    shared_mod._said.clear()
    lines = []
    other = one.model_copy(update={"storage": str(tmp_path / "undeclared")})
    ref = prepare_shared(other, teacher, log=lines.append)
    assert ref["outputs"] is None and "teacher outputs: at reads teacher taps groups: live teacher" in lines
    shared_mod._said.clear()  # the trials are other processes
    caplog.set_level(logging.WARNING, logger="kdtune.training.cache")
    for seed in (0, 1):
        assert make_context(other, resolve_params(other), teacher, seed=seed, shared=ref)[0].teacher_view is None
    assert sum("at reads teacher taps groups" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("method,cached", [("kd", 1.0), ("at", 1.0)])
def test_kdtune_train_reads_the_cache_and_matches_the_live_teacher(sweep, method, cached):
    """``kdtune train`` (api.train) prepares the cache as a sweep's driver does: a logits method
    and a feature method read it; the numbers are the live path's."""
    from kdtune import api
    from kdtune.training.trial import run_trial

    spec = sweep[0].model_copy(update={"method": method})
    got = api.train(spec, seed=3, log=lambda m: None).metrics
    live = run_trial(spec, resolve_params(spec), sweep[1], lambda *a, **k: None, seed=3)
    assert (got.pop("teacher_cache"), live.pop("teacher_cache")) == (cached, 0.0)
    assert got == live


def test_augmentation_means_the_live_teacher(sweep, tmp_path, caplog):
    spec, teacher, _, _ = sweep
    aug = spec.model_copy(update={"data": spec.data.model_copy(update={"augment": True}),
                                  "method": "kd", "storage": str(tmp_path)})
    lines: list[str] = []
    ref = prepare_shared(aug, teacher, log=lines.append)
    assert ref["outputs"] is None
    assert any("augmentation is on" in s for s in lines)
    shared_mod._said.clear()  # the trials are other processes: they say it again, once
    caplog.set_level(logging.WARNING, logger="kdtune.training.cache")
    ctx, _ = make_context(aug, resolve_params(aug), teacher, seed=0, shared=ref)
    assert ctx.teacher_view is None
    assert any("augmentation is on" in r.getMessage() for r in caplog.records)


def test_a_batch_from_another_view_gets_the_live_teacher(sweep):
    spec, teacher, ref, _ = sweep
    ctx, _ = make_context(spec, config_for(spec, "kd"), teacher, seed=0, shared=ref)
    x, y, idx = next(iter(ctx.train_loader))
    assert ctx.teacher_view(Batch(x.flip(3), y, idx), ("logits",)) is None  # flipped: not cached
    assert ctx.teacher_view(Batch(x, y, idx), ("groups",)) is None  # a tap the cache lacks


def test_trial_data_is_a_memory_map_not_a_copy(sweep):
    spec, teacher, ref, _ = sweep
    ctx, _ = make_context(spec, config_for(spec, "kd"), teacher, seed=0, shared=ref)
    folder = Path(ref["data"])
    for split in ("train", "val", "test"):
        assert is_mapped(getattr(ctx.data, split).x, folder / f"{split}_x.npy"), split
    loader = ctx.train_loader
    assert loader.x.data_ptr() == ctx.data.train.x.data_ptr()  # the loader did not copy it
    before = ctx.data.train.x.clone()
    for _ in loader:  # a whole epoch reads it and never writes into it
        pass
    assert torch.equal(before, ctx.data.train.x)
    # the same splits as loading the dataset
    plain, _ = make_context(spec, config_for(spec, "kd"), teacher, seed=0)
    assert torch.equal(plain.data.train.x, ctx.data.train.x)
    assert torch.equal(plain.data.test.y, ctx.data.test.y)
    assert plain.data.classes == ctx.data.classes and plain.data.mean == ctx.data.mean


@pytest.mark.parametrize("script,keys", [
    ("bench_engine.py", {"kdtune_samples_per_s", "plain_samples_per_s", "ratio"}),
    ("bench_kd_cost.py", {"kd_cached_over_scratch", "kd_live_over_scratch", "at_live_over_cached"}),
])
def test_benchmarks_quick_mode_print_one_json_line(script, keys, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [s for s in proc.stdout.splitlines() if s.strip()]
    assert len(lines) == 1, proc.stdout
    assert keys <= set(json.loads(lines[0]))


def test_a_node_without_the_drivers_files_writes_them_from_the_bundle(sweep, tmp_path):
    """Multi-host: a worker node cannot see the driver's cache folders. The bundle (what Ray's
    object store carries to each node once) is written to a node-local folder, and a trial
    there uses the cache: same outputs as the live teacher, bit for bit, no live-teacher line."""
    from kdtune.training.ship import localize, read_bundle

    spec, teacher, ref, _ = sweep
    bundle = read_bundle(ref)
    assert set(bundle) == {"data", "outputs"}
    elsewhere = {k: str(tmp_path / "not-on-this-node" / Path(v).name) if k in ("data", "outputs")
                 else v for k, v in ref.items()}
    local = localize(elsewhere, bundle, base=tmp_path / "node")
    assert local["outputs_from_bundle"] and local["data_from_bundle"]
    assert Path(local["outputs"]).parent.parent == tmp_path / "node"
    ctx, m = make_context(spec, config_for(spec, "kd"), teacher, seed=3, shared=local)
    assert ctx.teacher_cache and ctx.teacher_view is not None
    x, y, idx = next(iter(ctx.loader("train", batch_size=32)))
    got = ctx.teacher_view(Batch(x, y, idx), m.teacher_needs)
    with torch.no_grad():
        fresh = restrict(teacher_taps(ctx.teacher, x, m.teacher_needs), ctx.teacher_index)
    assert torch.equal(got["logits"], fresh["logits"])
    # where the driver's files are visible (one host), nothing is written
    assert localize(ref, bundle, base=tmp_path / "node2") == ref and not (tmp_path / "node2").exists()

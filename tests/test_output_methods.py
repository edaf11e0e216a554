"""Output-matching methods and baselines (issue 3): stored values and behaviours.

Stored-value tests check each loss against numbers computed by hand from the paper's equation
(numpy in the comments), never by calling the code under test. The behaviour tests use an
untrained cnn4 teacher (10 classes) and a cnn_small student on the first 5 digits classes (G→S).
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kdtune.spec import parse_spec
from kdtune.data import load_data
from kdtune.training.context import TrialContext, seed_everything
from kdtune.training.engine import build_student, train
from kdtune.models import count_params
from kdtune.training.ops import evaluate, make_optimizer
from kdtune.training.checkpoint import load_student, save_state
from kdtune.methods import Batch, make_method
from kdtune.methods.kd import TeacherDropout
from kdtune.methods.mds import fit_probe, mds_loss, teacher_for_s
from kdtune.methods.prune import prunable
from kdtune.methods.trust_region import MAX_BACKTRACKS, annealed
from kdtune.models import create_model
from kdtune.params.walk import CommonParams

CPU = torch.device("cpu")


def terms_of(name: str, params: dict, s: list, t: list, key: str = "logits", *, training=True):
    method = make_method(name, params)
    extras = nn.ModuleDict().train(training)
    s_out = {key: torch.tensor(s, dtype=torch.float32)}
    t_out = {key: torch.tensor(t, dtype=torch.float32)}
    batch = Batch(torch.zeros(len(s), 1), None, torch.arange(len(s)))
    return method.loss(batch, s_out, t_out, extras)


# --------------------------------------------------------------------------- stored values
def test_kd_stored_value_with_t_squared():
    # T = 2; s = [[1,2,3],[0,0,0]], t = [[3,2,1],[2,0,0]]; numpy:
    # KL(softmax(t/T) ‖ softmax(s/T)) per sample = [0.320156668, 0.123284460]
    # T²·mean = 4 · 0.221720564 = 0.886882255; with α = 0.25 the term is 0.75 · that
    out = terms_of("kd", {"temperature": 2.0, "alpha": 0.25},
                   [[1, 2, 3], [0, 0, 0]], [[3, 2, 1], [2, 0, 0]])
    assert float(out["soft"]) == pytest.approx(0.886882255, rel=1e-6)
    assert float(out["loss"]) == pytest.approx(0.75 * 0.886882255, rel=1e-6)
    assert make_method("kd", {"alpha": 0.25}).ce_weight() == 0.25  # the engine's CE weight


def test_kd_is_zero_on_equal_logits_and_grows_with_t_squared_factor():
    same = terms_of("kd", {"temperature": 3.0, "alpha": 0.0}, [[0.3, -1.0]], [[0.3, -1.0]])
    assert float(same["loss"]) == pytest.approx(0.0, abs=1e-7)


def test_logit_l2_stored_value_sum_over_classes_mean_over_batch():
    # ‖[1,2] − [0,0]‖² = 5, ‖[0,0] − [1,1]‖² = 2 → (5 + 2) / 2 = 3.5
    out = terms_of("logit_l2", {}, [[1, 2], [0, 0]], [[0, 0], [1, 1]])
    assert float(out["l2"]) == pytest.approx(3.5)
    assert float(out["loss"]) == pytest.approx(3.5)


def test_mds_stored_value_mean_over_pairs():
    # f_s = (0,0), (3,4), (0,1): d = 5, 1, √18;  f_t = (0,0,0), (1,0,0), (0,2,0): d = 1, 2, √5
    # Σ_{i<j} = (5−1)² + (1−2)² + (√18 − √5)² = 16 + 1 + 4.026334039 = 21.026334039
    # the docstring's normalisation: mean over the 3 pairs = 7.008778013
    out = terms_of("mds", {}, [[0, 0], [3, 4], [0, 1]], [[0, 0, 0], [1, 0, 0], [0, 2, 0]],
                   key="penultimate")
    assert float(out["mds"]) == pytest.approx(7.008778013, rel=1e-5)


def test_mds_gradient_is_finite_for_equal_embeddings():
    f = torch.ones(4, 3, requires_grad=True)  # every pair at distance 0
    out = make_method("mds", {}).loss(Batch(torch.zeros(4), None, torch.arange(4)),
                                      {"penultimate": f}, {"penultimate": torch.randn(4, 5)},
                                      nn.ModuleDict())
    out["loss"].backward()
    assert torch.isfinite(f.grad).all()


# --------------------------------------------------------------------------- a tiny G→S setup
def tiny_ctx(name: str, params: dict | None = None, *, lr: float = 0.05, epochs: int = 2,
             teacher_model: str = "cnn4", student_model: str = "cnn_small"):
    """Untrained cnn4 teacher (10 digits classes), cnn_small student on the first 5."""
    spec = parse_spec({"data": {"name": "digits", "train_limit": 200},
                       "student": {"model": student_model, "kwargs": {"width": 0.25},
                                   "classes": {"first": 5}},
                       "method": name, "epochs": epochs, "device": "cpu"})
    data = load_data("digits", train_limit=200, classes={"first": 5})
    torch.manual_seed(1)
    teacher = create_model(teacher_model, 10, 1, 8, width=0.25).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    ctx = TrialContext(spec=spec, common=CommonParams(lr=lr, batch_size=64), data=data,
                       device=CPU, seed=0, teacher=teacher, teacher_index=torch.arange(5))
    return ctx, make_method(name, params or {})


def prepare(ctx, method):
    """What ``engine.train`` does before the main stage (no pre-stages)."""
    seed_everything(0)
    ctx.student = build_student(ctx, method)
    ctx.extras = method.build_extras(ctx.teacher, ctx.student, ctx)
    ctx.optimizers = method.optimizers(ctx) or [
        make_optimizer(list(ctx.student.parameters()) + list(ctx.extras.parameters()), ctx.common)]
    ctx.student.train()
    ctx.extras.train()


def first_batch(ctx, labels=True) -> Batch:
    x, y, idx = next(iter(ctx.loader("train")))
    return Batch(x, y if labels else None, idx)


def batch_kl(old: torch.Tensor, new: torch.Tensor) -> float:
    lp, lq = torch.log_softmax(old, 1), torch.log_softmax(new, 1)
    return float((lp.exp() * (lp - lq)).sum(1).mean())


# --------------------------------------------------------------------------- trust region
def test_trust_region_step_respects_eps():
    eps = 1e-4
    ctx, method = tiny_ctx("trust_region", {"eps": eps}, lr=0.5)  # a large step: it must backtrack
    prepare(ctx, method)
    batch = first_batch(ctx, labels=False)
    before = copy.deepcopy(ctx.student)  # train mode: BN uses batch statistics either way
    terms = method.train_step(ctx, batch)
    with torch.no_grad():
        kl = batch_kl(before(batch.x), ctx.student(batch.x))
    assert kl <= eps + 1e-6
    assert float(terms["step_kl"]) <= eps
    assert 0 < float(terms["step_scale"]) < 1  # it did backtrack, and did not skip


def test_trust_region_huge_eps_is_the_unconstrained_step():
    ctx, method = tiny_ctx("trust_region", {"eps": 0.1})
    method.eps = 1e6
    prepare(ctx, method)
    batch = first_batch(ctx, labels=False)
    ref = copy.deepcopy(ctx.student)
    opt = make_optimizer(ref.parameters(), ctx.common)
    t = ctx.teacher(batch.x)[:, :5]
    lp, lq = torch.log_softmax(t, 1), torch.log_softmax(ref(batch.x), 1)
    (lp.exp() * (lp - lq)).sum(1).mean().backward()  # KL(t ‖ s), by hand
    opt.step()
    terms = method.train_step(ctx, batch)
    assert float(terms["step_scale"]) == 1.0
    for a, b in zip(ctx.student.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(ctx.student.buffers(), ref.buffers()):  # BN statistics: one update, not more
        torch.testing.assert_close(a, b)


def test_trust_region_skips_a_step_no_scale_can_satisfy():
    ctx, method = tiny_ctx("trust_region", {"eps": 0.1}, lr=0.5)
    method.eps = 1e-30
    prepare(ctx, method)
    before = [p.detach().clone() for p in ctx.student.parameters()]
    terms = method.train_step(ctx, first_batch(ctx, labels=False))
    assert float(terms["skipped"]) == 1.0 and float(terms["step_scale"]) == 0.0
    for a, b in zip(ctx.student.parameters(), before):
        assert torch.equal(a, b)
    assert MAX_BACKTRACKS >= 1


def test_trust_region_annealing_schedule_and_state():
    # linear: eps at epoch 0, eps_final at the last, the midpoint halfway
    assert annealed(1e-2, 1e-3, "linear", 0, 5) == pytest.approx(1e-2)
    assert annealed(1e-2, 1e-3, "linear", 2, 5) == pytest.approx(5.5e-3)
    assert annealed(1e-2, 1e-3, "linear", 4, 5) == pytest.approx(1e-3)
    # cosine at a quarter: 1e-3 + 9e-3·(1 + cos(π/4))/2 = 0.008681981 (numpy)
    assert annealed(1e-2, 1e-3, "cosine", 1, 5) == pytest.approx(0.008681981)
    assert annealed(1e-2, 1e-3, "none", 4, 5) == 1e-2
    ctx, method = tiny_ctx("trust_region", {"eps": 1e-2, "anneal": "linear", "eps_final": 1e-3},
                           epochs=5)
    assert method.on_epoch_end(ctx, 0) == {"eps": 1e-2}  # reports the ε used in epoch 0
    assert method.eps == pytest.approx(7.75e-3)  # and moves to epoch 1's
    other = make_method("trust_region", {"eps": 1e-2})
    other.load_state_dict(method.state_dict())
    assert other.eps == method.eps


# --------------------------------------------------------------------------- teacher dropout
@pytest.mark.parametrize("name", ["kd", "logit_l2"])
def test_teacher_dropout_only_in_training(name):
    s, t = [[0.1, 0.2, 0.3, 0.4]] * 8, [[1.0, -2.0, 3.0, 0.5]] * 8
    params = {"alpha": 0.0, "teacher_dropout": 0.5}
    clean = terms_of(name, {"alpha": 0.0}, s, t)["loss"]
    evaluated = terms_of(name, params, s, t, training=False)["loss"]
    trained = terms_of(name, params, s, t, training=True)["loss"]
    assert float(evaluated) == float(clean)
    assert float(trained) != pytest.approx(float(clean))


def test_teacher_dropout_masks_scales_and_resumes():
    drop = TeacherDropout(0.25)
    drop.seed(3)
    t = torch.ones(64, 10)
    state = drop.state_dict()
    out = drop(t, True)
    kept = out != 0
    assert 0 < kept.float().mean() < 1
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.75))  # inverted dropout
    again = TeacherDropout(0.25)
    again.load_state_dict(state)
    assert torch.equal(again(t, True), out)  # a resumed run draws the same masks
    assert torch.equal(drop(t, False), t)


# --------------------------------------------------------------------------- label-free
@pytest.mark.parametrize("name,params", [("kd", {"alpha": 0.0}), ("logit_l2", {}),
                                         ("trust_region", {}), ("mds", {})])
def test_label_free_training_ignores_labels(name, params):
    losses = []
    for shuffle in (False, True):
        ctx, method = tiny_ctx(name, params, epochs=1)
        assert not method.uses_labels()
        if shuffle:
            y = ctx.data.train.y
            ctx.data.train.y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
        reports = []
        train(ctx, method, lambda m, state=None, stage=False: reports.append(m), epochs=1)
        losses.append({k: v for k, v in reports[-1].items() if k not in
                       ("val_acc", "val_loss", "test_acc", "test_loss")})
    assert losses[0] == losses[1]


def test_mds_label_free_student_is_scored_by_a_linear_probe():
    ctx, method = tiny_ctx("mds", {}, epochs=1)
    train(ctx, method, lambda *a, **k: None, epochs=1)
    fc = ctx.student.fc
    assert fc.weight.grad is None  # the head got no training signal
    ctx.student.eval()  # the probe was fitted on eval-mode (running-statistics) embeddings
    with torch.no_grad():
        z = torch.cat([ctx.student.forward_taps(x)["penultimate"]
                       for x, _, _ in ctx.loader("train", shuffle=False)])
    acc = float((fc(z).argmax(1) == ctx.data.train.y).float().mean())
    assert acc > 0.5  # the installed probe fits the training embeddings (5 classes: chance 0.2)


def test_probe_fits_separable_data_and_folds_the_standardisation():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(40)
    z = torch.randn(120, 4, generator=g) * 0.1 + 50 + 5 * nn.functional.one_hot(y, 4)[:, :4].float()
    w, b = fit_probe(z, y, 3)
    assert float(((z @ w.T + b).argmax(1) == y).float().mean()) == 1.0


# --------------------------------------------------------------------------- simultaneous
def test_simultaneous_trains_its_copy_never_the_cached_teacher():
    ctx, method = tiny_ctx("simultaneous", {"teacher_lr": 0.1, "points": "groups"})
    prepare(ctx, method)
    cached = {k: v.clone() for k, v in ctx.teacher.state_dict().items()}
    copy0 = {k: v.clone() for k, v in ctx.extras["teacher"].state_dict().items()}
    for _ in range(2):
        terms = method.train_step(ctx, first_batch(ctx))
    assert {"match/logits", "match/group0", "match/group1", "teacher_ce", "loss"} <= set(terms)
    for k, v in ctx.teacher.state_dict().items():
        assert torch.equal(v, cached[k]), f"cached teacher changed at {k}"
    assert not any(p.requires_grad for p in ctx.teacher.parameters())
    assert any(not torch.equal(v, copy0[k]) for k, v in ctx.extras["teacher"].state_dict().items()
               if v.is_floating_point())
    assert ctx.extras["teacher"].fc.out_features == 5  # fine-tuned on S's restricted logits


def test_simultaneous_matches_at_every_residual_block_by_default():
    # KF §5.4: "match outputs at each residual block". resnet20 teacher: 9 blocks in 3 groups;
    # resnet14 student: 6 blocks. Student block i ↔ teacher block round((i+1)·9/6) − 1:
    #   round(1.5)−1 = 1, 3−1 = 2, round(4.5)−1 = 3, 6−1 = 5, round(7.5)−1 = 7, 9−1 = 8
    # (Python rounds halves to even). Per-group matching would give 3 terms, not 6.
    assert make_method("simultaneous", {}).p.points == "blocks"
    ctx, method = tiny_ctx("simultaneous", {}, teacher_model="resnet20", student_model="resnet14")
    prepare(ctx, method)
    assert method.pairs == [1, 2, 3, 5, 7, 8]
    batch = first_batch(ctx)
    student, teacher = copy.deepcopy(ctx.student), copy.deepcopy(ctx.extras["teacher"])
    adapters = copy.deepcopy(ctx.extras["adapters"])
    terms = method.train_step(ctx, batch)
    assert {f"match/block{i}" for i in range(6)} | {"match/logits"} == {
        k for k in terms if k.startswith("match/")}

    def block_outputs(model) -> list[torch.Tensor]:  # stem, then each block, by hand
        h, outs = model.stem(batch.x), []
        for g in model.groups:
            for b in g:
                h = b(h)
                outs.append(h)
        return outs

    with torch.no_grad():  # both in train mode, as in the step (batch statistics)
        s_b, t_b = block_outputs(student), block_outputs(teacher)
    for i, j in enumerate(method.pairs):
        want = (adapters[i](s_b[i]) - t_b[j]).pow(2).mean()  # same sizes, 1×1 adapters
        assert float(terms[f"match/block{i}"].detach()) == pytest.approx(float(want), rel=1e-5), i


def test_simultaneous_logits_only_has_no_adapters():
    ctx, method = tiny_ctx("simultaneous", {"points": "logits"})
    prepare(ctx, method)
    terms = method.train_step(ctx, first_batch(ctx))
    assert not any(k.startswith("match/group") for k in terms)


# --------------------------------------------------------------------------- mds + fine-tuning
def test_mds_teacher_finetune_stage_trains_a_copy_and_distils_from_it():
    # KF §5.6: fine-tune the G teacher on S, then MDS from it. A per-trial copy is trained.
    assert make_method("mds", {}).p.teacher_finetune_epochs == 0  # off by default
    ctx, method = tiny_ctx("mds", {"teacher_finetune_epochs": 2, "teacher_lr": 0.1}, epochs=1)
    assert method.teacher_needs == () and not method.uses_labels()  # main stage: label-free
    cached = {k: v.clone() for k, v in ctx.teacher.state_dict().items()}
    stages = []
    train(ctx, method, lambda m, state=None, stage=False: stage and stages.append(m), epochs=1)
    assert [m["stage/teacher_finetune/epoch"] for m in stages] == [1, 2]
    assert all({"stage/teacher_finetune/ce", "stage/teacher_finetune/val_acc"} <= set(m)
               for m in stages)
    assert stages[1]["stage/teacher_finetune/ce"] < stages[0]["stage/teacher_finetune/ce"]
    for k, v in ctx.teacher.state_dict().items():
        assert torch.equal(v, cached[k]), f"cached teacher changed at {k}"
    tuned = ctx.extras["teacher"]
    assert tuned.fc.out_features == 5 and not any(p.requires_grad for p in tuned.parameters())
    assert not torch.equal(tuned.fc.weight, ctx.teacher.fc.weight[:5])
    # the MDS term reads the tuned copy's embeddings (eval mode), not the cached teacher's
    batch = first_batch(ctx, labels=False)
    with torch.no_grad():
        s = {"penultimate": ctx.student.forward_taps(batch.x)["penultimate"]}
        got = method.loss(batch, s, None, ctx.extras)["mds"]
        want = mds_loss(s["penultimate"], tuned.eval().forward_taps(batch.x)["penultimate"])
        cached_t = mds_loss(s["penultimate"], ctx.teacher.forward_taps(batch.x)["penultimate"])
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert float(got) != pytest.approx(float(cached_t), rel=1e-3)


def test_mds_finetune_copy_gets_a_fresh_head_when_s_is_not_in_g():
    teacher = create_model("cnn4", 5, 1, 8, width=0.25)
    ctx = SimpleNamespace(teacher_index=None, data=SimpleNamespace(num_classes=10))
    tuned = teacher_for_s(teacher, ctx)
    assert tuned.fc.out_features == 10 and tuned.spec["num_classes"] == 10
    assert teacher.fc.out_features == 5  # the original is untouched
    assert all(p.requires_grad for p in tuned.parameters())


# --------------------------------------------------------------------------- baselines
def test_prune_reaches_sparsity_and_checkpoint_loads_plain(tmp_path):
    ctx, method = tiny_ctx("prune", {"amount": 0.7, "finetune_epochs": 1}, epochs=1)
    reports, states = [], []

    def report(metrics, state=None, *, stage=False):
        reports.append((stage, metrics))
        if state is not None and not stage:
            states.append(save_state(state, tmp_path / "ckpt.pt"))

    dense = count_params(create_model("cnn4", 5, 1, 8, width=0.25))
    final = train(ctx, method, report, epochs=1)
    assert any(stage and m.get("stage/finetune/sparsity") == pytest.approx(0.7, abs=1e-3)
               for stage, m in reports)
    ws = [m.weight for _, m in prunable(ctx.student)]
    zeros = sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)
    assert zeros == pytest.approx(0.7, abs=1e-3)  # still pruned after the main stage
    assert final["params_count"] < 0.5 * dense
    model = load_student(states[-1])
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    acc, _ = evaluate(model, ctx.loader("test"), CPU)
    assert acc == pytest.approx(final["test_acc"])


def test_finetune_head_mode_keeps_the_body_and_its_statistics():
    ctx, method = tiny_ctx("finetune", {"mode": "head"})
    train(ctx, method, lambda *a, **k: None, epochs=1)
    body_t = {k: v for k, v in ctx.teacher.state_dict().items() if not k.startswith("fc.")}
    body_s = {k: v for k, v in ctx.student.state_dict().items() if not k.startswith("fc.")}
    for k in body_t:
        assert torch.equal(body_t[k], body_s[k]), k
    assert ctx.student.fc.out_features == 5


def test_finetune_all_mode_trains_the_body_at_a_lower_lr():
    ctx, method = tiny_ctx("finetune", {"mode": "all", "lr_scale": 0.1})
    prepare(ctx, method)
    lrs = sorted(g["lr"] for g in ctx.optimizers[0].param_groups)
    assert lrs == pytest.approx([0.005, 0.05])


def test_pretrained_equals_the_teachers_restricted_accuracy():
    ctx, method = tiny_ctx("pretrained", epochs=1)
    final = train(ctx, method, lambda *a, **k: None, epochs=1)
    correct = n = 0
    with torch.no_grad():
        for x, y, _ in ctx.loader("test"):
            correct += int((ctx.teacher(x)[:, ctx.teacher_index].argmax(1) == y).sum())
            n += len(y)
    assert final["test_acc"] == pytest.approx(correct / n)
    assert not any(k in final for k in ("loss", "ce"))  # nothing was trained
    assert torch.equal(ctx.student.fc.weight, ctx.teacher.fc.weight[:5])
    assert math.isfinite(final["test_loss"])


def test_prune_masks_work_on_channels_last_and_equal_torchs():
    """CUDA students are channels_last (engine); torch's prune calls .view(-1) and fails there.
    kdtune's masks are torch's L1Unstructured global masks on any layout."""
    import copy

    from torch.nn.utils import prune as tprune

    from kdtune.methods.prune import global_magnitude_masks, prunable
    from kdtune.models import create_model

    torch.manual_seed(0)
    plain = create_model("cnn_small", 10, 1, 8, width=0.5)
    ref = copy.deepcopy(plain)
    tprune.global_unstructured([(m, "weight") for _, m in prunable(ref)],
                               pruning_method=tprune.L1Unstructured, amount=0.5)
    want = {n: m.weight_mask for n, m in prunable(ref)}
    cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    assert any(m.weight.dim() == 4 and not m.weight.is_contiguous() for _, m in prunable(cl))
    masks = global_magnitude_masks(cl, 0.5)
    for n, m in prunable(cl):
        assert torch.equal(masks[n], want[n]), n
        assert not m.weight[want[n] == 0].any()  # pruned weights are zero in place
    zeros = sum(int((m.weight == 0).sum()) for _, m in prunable(cl))
    total = sum(m.weight.numel() for _, m in prunable(cl))
    assert zeros == round(0.5 * total)

"""Feature-based methods (fitnet, at, ft, fsp, kr), anti-distillation and loss composition.

Math is checked against values worked out by hand on tiny tensors (the working is in the
comments); training is checked on sklearn's 8×8 digits with a one-epoch ResNet-14 teacher.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kdtune.spec import SpecError, parse_spec
from kdtune.methods import Batch, make_method
from kdtune.methods._features import block_forward, pair_by_depth, pair_from_last
from kdtune.methods.anti_distillation import hessian_norm
from kdtune.methods.at import at_loss, attention
from kdtune.methods import ft as ft_module
from kdtune.methods.ft import factor_loss
from kdtune.methods.fsp import fsp_loss, fsp_matrix
from kdtune.methods.kr import KR, phi0, teacher_posterior
from kdtune.models import create_model
from kdtune.params.walk import resolve_params
from kdtune.training.teacher import ensure_teacher
from kdtune.training.trial import make_context, run_trial
from kdtune.training.engine import build_student, train


# --------------------------------------------------------------------------- the math by hand
def test_fsp_matrix_matches_the_equation() -> None:
    # F1 channels: [[1,2],[3,4]] and [[0,1],[1,0]]; F2 channels: [[1,0],[0,1]] and all 2s.
    # G_ij = Σ_{s,t} F1_i F2_j / (h·w), h·w = 4:
    #   G00 = (1·1 + 4·1)/4 = 1.25      G01 = 2·(1+2+3+4)/4 = 5
    #   G10 = (0 + 0)/4     = 0         G11 = 2·(0+1+1+0)/4 = 1
    f1 = torch.tensor([[[[1., 2.], [3., 4.]], [[0., 1.], [1., 0.]]]])
    f2 = torch.tensor([[[[1., 0.], [0., 1.]], [[2., 2.], [2., 2.]]]])
    want = torch.tensor([[[1.25, 5.0], [0.0, 1.0]]])
    assert torch.allclose(fsp_matrix(f1, f2), want)
    # a 4×4 first map whose 2×2 blocks are constant pools to the same 2×2 map (pooled to match)
    big = f1.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert torch.allclose(fsp_matrix(big, f2), want)
    # ‖G_T − G_S‖²: G_S = 0 gives 1.25² + 5² + 0 + 1² = 27.5625 per sample, mean over the batch
    assert math.isclose(float(fsp_loss([torch.zeros(1, 2, 2)], [want])), 27.5625, rel_tol=1e-6)


def test_ft_loss_is_the_normalised_l1_by_hand() -> None:
    # sample 1: F_T = (3, 4) → (0.6, 0.8); F_S = (1, 0) → (1, 0); |diff| = (0.4, 0.8)
    # sample 2: F_T = (0, 2) → (0, 1);     F_S = (0, 5) → (0, 1); |diff| = (0, 0)
    # p = 1: mean over batch × entries = (0.4 + 0.8 + 0 + 0)/4 = 0.3
    # p = 2: (0.16 + 0.64)/4 = 0.2
    f_t = torch.tensor([[3., 4.], [0., 2.]]).view(2, 2, 1, 1)
    f_s = torch.tensor([[1., 0.], [0., 5.]]).view(2, 2, 1, 1)
    assert math.isclose(float(factor_loss(f_s, f_t, 1)), 0.3, rel_tol=1e-6)
    assert math.isclose(float(factor_loss(f_s, f_t, 2)), 0.2, rel_tol=1e-6)
    # invariant to each factor's scale (the normalisation)
    assert math.isclose(float(factor_loss(7 * f_s, 0.1 * f_t, 1)), 0.3, rel_tol=1e-6)


def test_attention_map_and_loss_by_hand() -> None:
    # teacher A: channels [[1,0],[0,1]] and [[1,1],[0,0]] → Q = Σ_c A² = [[2,1],[0,1]]
    #   → q_t = (2, 1, 0, 1)/√6
    # student A: channels all 1 and all 0 → Q = [[1,1],[1,1]] → q_s = (1, 1, 1, 1)/2
    # ‖q_t − q_s‖² = 1 + 1 − 2·q_t·q_s = 2 − 2·(4/2)/√6 = 2 − 4/√6; mean over 4 positions;
    # with β = 2 the loss β/2 · mean(...) is (2 − 4/√6)/4 = 0.0917517...
    a_t = torch.tensor([[[[1., 0.], [0., 1.]], [[1., 1.], [0., 0.]]]])
    a_s = torch.tensor([[[[1., 1.], [1., 1.]], [[0., 0.], [0., 0.]]]])
    assert torch.allclose(attention(a_t), torch.tensor([[2., 1., 0., 1.]]) / math.sqrt(6))
    assert torch.allclose(attention(a_s), torch.full((1, 4), 0.5))
    want = (2 - 4 / math.sqrt(6)) / 4
    assert math.isclose(float(at_loss([a_s], [a_t], beta=2.0)), want, rel_tol=1e-6)
    # a student map of another size is brought to the teacher's (here: 4×4 pooled to 2×2)
    big = a_s.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert math.isclose(float(at_loss([big], [a_t], beta=2.0)), want, rel_tol=1e-6)


def test_phi0_zero_below_eps_and_formula_above() -> None:
    # ε = 0.5: |g| < ε → 0; else (|g| + g²)/ε: 0.5 → 0.75/0.5 = 1.5; −1 → 2/0.5 = 4; 2 → 6/0.5 = 12
    g = torch.tensor([0.1, -0.4, 0.5, -1.0, 2.0])
    assert torch.allclose(phi0(g, 0.5), torch.tensor([0.0, 0.0, 1.5, 4.0, 12.0]))


def test_sparse_recoding_rewrites_gradients_by_hand() -> None:
    kr = KR(make_method("kr", {"lam": 0.1}).p)
    p = torch.nn.Parameter(torch.zeros(5))
    p.grad = torch.tensor([0.1, -0.4, 0.5, -1.0, 2.0])
    kr.eps = torch.tensor(0.4)
    out = kr.recode([p])
    # ε ← clamp(0.9·0.4 + 0.1·mean|g|, min|g|, max|g|), mean|g| = 4.0/5 = 0.8 → 0.44
    assert math.isclose(float(out["eps"]), 0.44, rel_tol=1e-6)
    # |g| < 0.44 → 0; else g + λ·sign(g)·(|g| + g²)/0.44:
    #   0.5 → 0.5 + 0.1·0.75/0.44 = 0.6704545;  −1 → −1 − 0.1·2/0.44 = −1.4545454;
    #   2 → 2 + 0.1·6/0.44 = 3.3636364
    want = torch.tensor([0.0, 0.0, 0.6704545, -1.4545454, 3.3636364])
    assert torch.allclose(p.grad, want, atol=1e-6)
    assert math.isclose(float(out["kept"]), 0.6, rel_tol=1e-6)


def test_sparse_recoding_starts_eps_at_the_first_batchs_mean_gradient() -> None:
    # The paper starts ε at "the mean value of parameters distribution", orders of magnitude above
    # the gradients; kdtune starts it at the first batch's mean |g| (ε is None until then).
    kr = KR(make_method("kr", {"lam": 0.1}).p)
    kr.eps = None
    p = torch.nn.Parameter(torch.full((5,), 100.0))  # large weights must not matter
    p.grad = torch.tensor([0.1, -0.4, 0.5, -1.0, 2.0])
    out = kr.recode([p])
    # mean|g| = 4.0/5 = 0.8 → ε = 0.8 (0.9·0.8 + 0.1·0.8); kept: |g| ≥ 0.8 → 2 of 5 = 0.4
    assert math.isclose(float(out["eps"]), 0.8, rel_tol=1e-6)
    assert math.isclose(float(out["kept"]), 0.4, rel_tol=1e-6)
    # −1 → −1 − 0.1·(1 + 1)/0.8 = −1.25;  2 → 2 + 0.1·(2 + 4)/0.8 = 2.75; the rest → 0
    assert torch.allclose(p.grad, torch.tensor([0.0, 0.0, 0.0, -1.25, 2.75]), atol=1e-6)
    assert kr.state_dict() == {"eps": pytest.approx(0.8)}
    # later batches move it as before: 0.9·0.8 + 0.1·(3.0/5) = 0.72 + 0.06 = 0.78
    p.grad = torch.tensor([0.2, 0.2, -0.2, 0.2, 2.2])
    assert math.isclose(float(kr.recode([p])["eps"]), 0.78, rel_tol=1e-6)
    assert KR(make_method("kr", {}).p).state_dict() == {}  # nothing to save before a step


def test_kr_teacher_posterior_is_the_cross_entropy_against_the_teachers_softmax() -> None:
    # teacher logits over its 3 classes, student classes = teacher columns (2, 0):
    #   t = [ln3, 5, 0] → restricted [0, ln3] → softmax (1/4, 3/4) (both samples)
    # sample 1: s = [0, 0] → log_softmax (−ln2, −ln2) → CE = ln2 = 0.6931472
    # sample 2: s = [ln3, 0] → log_softmax (ln¾, ln¼) → −(¼·ln¾ + ¾·ln¼) = 1.1116413
    # mean over the batch = 0.9023942
    ln3 = math.log(3)
    t = torch.tensor([[ln3, 5.0, 0.0], [ln3, 5.0, 0.0]])
    s = torch.tensor([[0.0, 0.0], [ln3, 0.0]])
    got = teacher_posterior(s, t, torch.tensor([2, 0]))
    assert math.isclose(float(got), 0.9023942, rel_tol=1e-6)


def test_kr_posterior_choice_sets_label_use_and_is_checked(tmp_path: Path) -> None:
    assert not make_method("kr", {}).uses_labels()  # the paper's teacher posterior: label-free
    assert make_method("kr", {"posterior": "labels"}).uses_labels()
    spec = parse_spec({"data": {"name": "digits"},
                       "teacher": {"model": "resnet8", "classes": {"first": 5}},
                       "student": {"model": "resnet8", "classes": [5, 6]}, "method": "kr",
                       "storage": str(tmp_path)})
    with pytest.raises(SpecError, match=r"params\.posterior: teacher needs student\.classes"):
        make_method("kr", {}).check(spec)
    make_method("kr", {}).check(spec.model_copy(update={"params": {"posterior": "labels"}}))


def test_ft_defaults_are_the_papers_cifar_setting(digits_teacher, monkeypatch) -> None:
    # §4.3, CIFAR: k = 2/3 "for all layers", every group, autoencoder learning rate 0.01
    p = make_method("ft", {}).p
    assert (p.k, p.groups, p.paraphraser_lr) == (2 / 3, "all", 0.01)
    store, teacher = digits_teacher
    spec = tiny_spec(store, method="ft", params={"batch_size": 64, "paraphraser_lr": 0.02})
    ctx, method = make_context(spec, resolve_params(spec), teacher, seed=0)
    student = build_student(ctx, method)
    extras = method.build_extras(ctx.teacher, student, ctx)
    # teacher (resnet14 ×0.25) groups have 4, 8, 16 channels; round(2/3·C) = 3, 5, 11
    # (2.67, 5.33, 10.67); every group gets a paraphraser/translator pair
    assert [pp.encoder[3].out_channels for pp in extras["paraphrasers"]] == [3, 5, 11]
    assert [t[3].out_channels for t in extras["translators"]] == [3, 5, 11]
    seen, real = [], ft_module.sgd

    def spy(params, lr, common, weight_decay=None):
        seen.append(lr)
        return real(params, lr, common, weight_decay)

    monkeypatch.setattr(ft_module, "sgd", spy)
    ctx.student, ctx.extras = student, extras
    metrics = method.stages(ctx)[0].run_epoch(ctx, 0)
    assert seen == [0.02] and math.isfinite(metrics["reconstruction"])


def test_pairings() -> None:
    assert pair_from_last(3, 2) == [(1, 0), (2, 1)]
    assert pair_from_last(2, 4) == [(0, 2), (1, 3)]
    assert pair_by_depth(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert pair_by_depth(3, 9) == [(0, 2), (1, 5), (2, 8)]
    assert pair_by_depth(5, 3) == [(1, 0), (2, 1), (4, 2)]  # round(5·j/3) − 1


@pytest.mark.parametrize("name", ["resnet8", "cnn4", "mlp"])
def test_block_forward_is_the_forward(name: str) -> None:
    torch.manual_seed(0)
    m = create_model(name, 3, 1, 8, width=0.25).eval()
    x = torch.randn(2, 1, 8, 8)
    _, outs, logits = block_forward(m, x)
    assert len(outs) == len(m.blocks())
    assert torch.allclose(logits, m(x), atol=1e-6)


# --------------------------------------------------------------------------- KR structure
def fake_ctx(size: int = 8, channels: int = 1, classes: int = 10):
    return SimpleNamespace(data=SimpleNamespace(in_channels=channels, input_size=size),
                           teacher_index=torch.arange(classes))


def test_kr_c_sets_the_number_of_aggregated_blocks() -> None:
    teacher = create_model("resnet20", 10, 1, 8, width=0.25).eval()  # 9 blocks
    student = create_model("resnet8", 10, 1, 8, width=0.25)
    got = {}
    for c in (1, 2, 3, 9):
        m = make_method("kr", {"c": c})
        extras = m.build_extras(teacher, student, fake_ctx())
        got[c] = len(extras["agg"])
        assert len(extras["adapters"]) == min(got[c], 3)  # paired with the student's 3 blocks
    assert got == {1: 9, 2: 5, 3: 3, 9: 1}
    # the aggregated network maps the stem's output to the last segment's output shape
    m = make_method("kr", {"c": 2})
    m.build_extras(teacher, student, fake_ctx())
    terms, feats = m.aggregate(teacher, torch.randn(4, 1, 8, 8))
    assert feats[-1].shape == block_forward(teacher, torch.randn(4, 1, 8, 8))[1][-1].shape
    assert all(torch.isfinite(v) for v in terms.values())


def test_kr_check_refuses_c_above_the_teachers_blocks(tmp_path: Path) -> None:
    spec = parse_spec({"data": {"name": "digits"}, "teacher": {"model": "resnet8"},
                       "student": {"model": "resnet8"}, "method": "kr", "params": {"c": 4},
                       "storage": str(tmp_path)})
    with pytest.raises(SpecError, match=r"params\.c: c = 4 exceeds the teacher's 3 blocks"):
        make_method("kr", {}).check(spec)
    make_method("kr", {}).check(spec.model_copy(update={"params": {"c": 3}}))


# --------------------------------------------------------------------------- anti-distillation
@pytest.mark.parametrize("t_classes", [[0, 1, 2, 3, 4], [7, 3]])
def test_anti_distillation_zero_init_computes_the_teacher(t_classes: list[int]) -> None:
    torch.manual_seed(0)
    teacher = create_model("cnn4", len(t_classes), 1, 8, width=0.25)
    teacher.train()
    teacher(torch.randn(16, 1, 8, 8))  # move the BatchNorm statistics off their defaults
    teacher.eval()
    ctx = SimpleNamespace(data=SimpleNamespace(classes=list(range(10)), num_classes=10,
                                               in_channels=1, input_size=8),
                          teacher_classes=t_classes, seed=0)
    method = make_method("anti_distillation", {"init": "zero", "factor": 2.0})
    student = method.build_student(teacher, ctx).eval()
    assert student.fc.out_features == 10 and student.fc.in_features == 2 * teacher.fc.in_features
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(student(x)[:, t_classes], teacher(x), atol=1e-5)
        others = [c for c in range(10) if c not in t_classes]
        assert torch.equal(student(x)[:, others], torch.zeros(4, len(others)))
    # the λ₂ term ‖u − w[u]‖² is 0 right after the transfer
    terms = method.lambda_terms(student, x, torch.tensor(t_classes[:1] * 4))
    assert float(terms["dist"].detach()) == 0.0


def test_hutchinson_estimates_the_hessian_norm() -> None:
    # a Linear(3 → 2) net: 8 weights, so the exact Hessian of its cross-entropy is cheap
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    w0 = torch.cat([net.weight.detach().flatten(), net.bias.detach()])

    def loss(w):
        return F.cross_entropy(x @ w[:6].view(2, 3).T + w[6:], y)

    exact = float(torch.autograd.functional.hessian(loss, w0).pow(2).sum())
    est = sum(float(hessian_norm(net, x, y).detach()) for _ in range(800)) / 800  # seeded
    assert est == pytest.approx(exact, rel=0.1)


# --------------------------------------------------------------------------- training on digits
@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    """A ResNet-14 (6 blocks) trained one epoch on digits, cached for the module."""
    store = tmp_path_factory.mktemp("store")
    spec = tiny_spec(store)
    return store, ensure_teacher(spec, log=lambda m: None)


def tiny_spec(store: Path, **kw):
    d = {"name": "feat", "data": {"name": "digits", "val_fraction": 0.2, "train_limit": 400},
         "teacher": {"model": "resnet14", "kwargs": {"width": 0.25}, "epochs": 1},
         "student": {"model": "resnet8", "kwargs": {"width": 0.25}},
         "method": "scratch", "epochs": 1, "params": {"batch_size": 64},
         "storage": str(store)}
    d.update(kw)
    return parse_spec(d)


class Recorder:
    def __init__(self):
        self.epochs, self.stages = [], []

    def __call__(self, metrics, state=None, *, stage=False):
        (self.stages if stage else self.epochs).append(dict(metrics))


def run(store, teacher, **kw):
    spec = tiny_spec(store, **kw)
    rec = Recorder()
    final = run_trial(spec, resolve_params(spec), teacher, rec, seed=0)
    return final, rec


@pytest.mark.parametrize("method,params,term", [
    ("fitnet", {"hint_epochs": 1}, "hint"), ("at", {}, "attention"),
    ("ft", {"paraphraser_epochs": 1, "groups": "all"}, "factor"),
    ("fsp", {"stage1_epochs": 1}, None), ("kr", {}, "match"), ("kr", {}, "posterior"),
    ("kr", {"posterior": "labels"}, "match"),
])
def test_each_method_trains_and_reports_its_terms(digits_teacher, method, params, term) -> None:
    store, teacher = digits_teacher
    final, rec = run(store, teacher, method=method, params={"batch_size": 64, **params})
    assert math.isfinite(final["loss"]) and "test_acc" in final
    assert ("ce" in final) == make_method(method, params).uses_labels()
    if term:
        assert term in final and final[term] > 0
    # pre-stages report under stage/<name>/... and are not main epochs
    assert [m["epoch"] for m in rec.epochs] == [1]
    for m in rec.stages:
        assert all(k.startswith("stage/") for k in m)


def test_stages_report_under_stage_and_learn(digits_teacher) -> None:
    store, teacher = digits_teacher
    _, rec = run(store, teacher, method="fsp", params={"batch_size": 64, "stage1_epochs": 3,
                                                       "stage1_lr": 1e-3})
    losses = [m["stage/fsp/fsp"] for m in rec.stages]
    assert [m["stage/fsp/epoch"] for m in rec.stages] == [1, 2, 3]
    assert losses[-1] < losses[0], losses
    _, rec = run(store, teacher, method="ft", params={"batch_size": 64, "paraphraser_epochs": 3})
    rec_loss = [m["stage/paraphraser/reconstruction"] for m in rec.stages]
    assert rec_loss[-1] < rec_loss[0], rec_loss


def test_kr_eps_stays_inside_the_gradient_range(digits_teacher) -> None:
    store, teacher = digits_teacher
    spec = tiny_spec(store, method="kr", epochs=2)
    ctx, method = make_context(spec, resolve_params(spec), teacher, seed=0)
    seen, recode = [], method.recode

    def spy(params):
        out = recode(params)
        seen.append({k: float(v) for k, v in method.last.items()} | {"kept": float(out["kept"])})
        return out

    method.recode = spy
    final = train(ctx, method, Recorder(), epochs=2)
    assert len(seen) == 2 * math.ceil(len(ctx.data.train) / 64)
    for s in seen:
        assert s["min"] <= s["eps"] <= s["max"], s
    assert all(s["kept"] < 1 for s in seen)  # small gradients are filtered every step
    assert method.state_dict()["eps"] == pytest.approx(seen[-1]["eps"])
    assert math.isfinite(final["loss"])


def test_kr_student_matches_the_aggregator_after_its_update(digits_teacher) -> None:
    """Algorithm 1: optimise W̃ᵗ, then Wˢ against the W̃ᵗ just updated (no one-step lag)."""
    store, teacher = digits_teacher
    spec = tiny_spec(store, method="kr", params={"batch_size": 64, "c": 2})
    ctx, method = make_context(spec, resolve_params(spec), teacher, seed=0)
    ctx.student = build_student(ctx, method)
    ctx.extras = method.build_extras(ctx.teacher, ctx.student, ctx)
    ctx.optimizers = method.optimizers(ctx)
    ctx.student.train()
    ctx.extras.train()
    x, y, idx = next(iter(ctx.loader("train")))
    student0, adapters0 = copy.deepcopy(ctx.student), copy.deepcopy(ctx.extras["adapters"])
    agg0 = copy.deepcopy(ctx.extras["agg"])

    def tracked(agg) -> list[int]:
        return [int(m.num_batches_tracked) for m in agg.modules()
                if isinstance(m, torch.nn.BatchNorm2d)]

    counts = tracked(agg0)
    terms = method.train_step(ctx, Batch(x, None, idx))  # label-free: the teacher posterior

    with torch.no_grad():
        t_stem = ctx.teacher.stem(x)
        _, s_outs, _ = block_forward(student0, x)  # the student as it was for this step

        def match(agg) -> float:  # Σ_pairs mean((A_k(s_j) − W̃-output_k)²), sizes already equal
            h, feats = t_stem, []
            for blk in agg:
                h = blk(h)
                feats.append(h)
            assert all(s_outs[j].shape[2:] == feats[k].shape[2:] for k, j in method.pairs)
            return float(sum(F.mse_loss(adapters0[n](s_outs[j]), feats[k])
                             for n, (k, j) in enumerate(method.pairs)))

        after = match(copy.deepcopy(ctx.extras["agg"]))
        before = match(agg0)
    got = float(terms["match"].detach())
    assert got == pytest.approx(after, rel=1e-5)
    assert got != pytest.approx(before, rel=1e-5)
    # the target's extra forward left the BatchNorm statistics as one forward per step does
    assert counts and tracked(ctx.extras["agg"]) == [n + 1 for n in counts]


def test_anti_distillation_s2g_with_init_stage(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path, teacher={"model": "cnn4", "kwargs": {"width": 0.25}, "epochs": 1,
                                        "classes": {"first": 5}},
                     student={"model": "cnn4"}, method="anti_distillation",
                     params={"batch_size": 64, "init_epochs": 1, "lam4": 0.1},
                     corruption={"kind": "pixels", "levels": [0.1, 0.5]})
    teacher = ensure_teacher(spec, log=lambda m: None)
    rec = Recorder()
    final = run_trial(spec, resolve_params(spec), teacher, rec, seed=0)
    assert {"test_acc/pixels_0.1", "test_acc/pixels_0.5"} <= set(final)
    stage = rec.stages[0]
    assert {"stage/init/ce_d1", "stage/init/dist", "stage/init/ce_noise",
            "stage/init/hessian", "stage/init/loss"} <= set(stage)
    assert all(math.isfinite(v) for v in stage.values())


def test_composed_ft_kd_reports_both_terms_and_one_ce(digits_teacher) -> None:
    store, teacher = digits_teacher
    final, rec = run(store, teacher, method="ft", compose={"ft": 1.0, "kd": 1.0},
                     params={"batch_size": 64, "ft.paraphraser_epochs": 1})
    assert "ft/factor" in final and "kd/soft" in final
    assert [k for k in final if k == "ce" or k.endswith("/ce")] == ["ce"]
    assert any(k.startswith("stage/ft/paraphraser/") for k in rec.stages[0])
    assert math.isclose(final["loss"], final["ce"] + final["ft/loss"] + final["kd/loss"],
                        rel_tol=1e-4)

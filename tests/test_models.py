"""Contract tests for every registered model, and the anti-distillation ``widen``.

The contract suite is parametrized over ``MODELS.names()``: a model is tested the moment it is
registered (timm parametrizes its tests over ``list_models()`` the same way).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from kdtune.models import TappedModel, count_params, create_model, widen
from kdtune.models.resnet import from_torchvision
from kdtune.registry import MODELS, UnknownNameError

NUM_CLASSES = 5
SHAPES = [(8, 1), (8, 3), (28, 1), (28, 3), (32, 1), (32, 3)]  # (input_size, in_channels)
DEEP = {"resnet56", "resnet110"}  # same code as resnet8/20 with more blocks: one shape is enough
CASES = [(name, size, channels) for name in MODELS.names() for size, channels in SHAPES
         if name not in DEEP or (size, channels) == (28, 1)]


# --- the model contract -----------------------------------------------------------------------


@pytest.mark.parametrize("name,size,channels", CASES)
def test_contract(name: str, size: int, channels: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, channels, size, width=0.25)
    assert isinstance(model, TappedModel)
    x = torch.randn(2, channels, size, size)

    taps = model.forward_taps(x)
    assert taps["logits"].shape == (2, NUM_CLASSES)
    assert taps["penultimate"].dim() == 2
    assert taps["penultimate"].shape[1] == model.fc.in_features
    assert taps["stem"].shape[0] == 2
    assert len(taps["groups"]) == len(model.groups) > 0
    assert all(g.shape[0] == 2 for g in taps["groups"])
    assert len(model.blocks()) >= len(model.groups)

    taps["logits"].sum().backward()  # train mode: BN uses batch stats, gradients reach the input
    assert all(p.grad is not None for p in model.parameters())

    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_taps(x)["logits"])
    assert model.spec == dict(name=name, num_classes=NUM_CLASSES, in_channels=channels,
                              input_size=size, kwargs={"width": 0.25})


@pytest.mark.parametrize("name", MODELS.names())
def test_width_multiplies_units(name: str) -> None:
    narrow = create_model(name, NUM_CLASSES, 3, 32, width=0.25)
    wide = create_model(name, NUM_CLASSES, 3, 32, width=0.5)
    assert wide.fc.in_features == 2 * narrow.fc.in_features
    assert count_params(wide) > count_params(narrow)


def test_unknown_model_names_the_close_match() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'resnet20'"):
        create_model("resnet-20", NUM_CLASSES, 3, 32)


def test_torchvision_resnet_matches_torchvision() -> None:
    """At ImageNet layout (input >= 64) resnet18 is torchvision's, weight for weight."""
    ours = create_model("resnet18", 10, 3, 64).eval()
    theirs = torchvision.models.resnet18(num_classes=10).eval()
    assert count_params(ours) == count_params(theirs)
    ours.load_state_dict(from_torchvision(theirs.state_dict()))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_small_input_torchvision_resnet_uses_cifar_stem() -> None:
    model = create_model("resnet18", 10, 3, 32, width=0.25)
    assert model.stem.conv1.kernel_size == (3, 3) and model.stem.conv1.stride == (1, 1)
    assert isinstance(model.stem.maxpool, torch.nn.Identity)


@pytest.mark.parametrize("name", ["cnn_small", "resnet8"])
def test_export(name: str) -> None:
    model = create_model(name, NUM_CLASSES, 3, 32, width=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))


# --- widen (anti-distillation) ----------------------------------------------------------------

WIDEN_MODELS = ["cnn_small", "resnet8", "mlp"]
WIDER_CLASSES = NUM_CLASSES + 2  # S → G: the student also learns two new classes


def _teacher(name: str, size: int = 8, channels: int = 1) -> TappedModel:
    """A small teacher whose weights and BN statistics are not the defaults, so a missed copy
    shows up (a fresh BN has mean 0 / var 1 / scale 1 / shift 0)."""
    torch.manual_seed(1)
    teacher = create_model(name, NUM_CLASSES, channels, size, width=0.25)
    with torch.no_grad():
        for p in teacher.parameters():
            if p.dim() == 1:  # BN scale/shift and biases; weights are random already
                p.add_(0.1 * torch.randn_like(p))
        for _ in range(3):
            teacher(2 * torch.randn(8, channels, size, size) + 1)  # updates running stats
    return teacher.eval()


def _new_entries(new: torch.Tensor, old_shape: torch.Size) -> torch.Tensor:
    """Boolean mask of the entries outside the leading ``old_shape`` slice."""
    mask = torch.ones_like(new, dtype=torch.bool)
    mask[tuple(slice(0, n) for n in old_shape)] = False
    return mask


@pytest.mark.parametrize("name", MODELS.names())  # part of the contract: widen-able layout
def test_zero_init_computes_the_teacher(name: str) -> None:
    teacher = _teacher(name)
    student = widen(teacher, name, 2.0, WIDER_CLASSES, init="zero").eval()
    assert student.fc.in_features == 2 * teacher.fc.in_features
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        t, s = teacher(x), student(x)
    # Not bit-equal: wider convs may sum in another order; the zero terms add nothing.
    torch.testing.assert_close(s[:, :NUM_CLASSES], t, atol=1e-6, rtol=0)
    assert torch.equal(s[:, NUM_CLASSES:], torch.zeros(4, 2))  # new classes start at 0
    for key, value in teacher.state_dict().items():  # BN running stats included
        got = student.state_dict()[key][tuple(slice(0, n) for n in value.shape)]
        assert torch.equal(got, value), key


@pytest.mark.parametrize("name", WIDEN_MODELS)
def test_zero_init_new_units_are_not_dead(name: str) -> None:
    """What is asserted, for every weight matrix/kernel W (out, in, ...) that grew:

    - step 1: W[old out, new in] (weights *out of* new units) gets a non-zero gradient, because
      new units have non-zero activations (their incoming weights are random);
    - step 1: W[new out, :] (weights *into* hidden new units) gets an exactly zero gradient:
      everything downstream of a new unit is still zero, so no error reaches it yet;
    - step 2, after one SGD step: W[new out, :] gets a non-zero gradient, for every layer.
    """
    teacher = _teacher(name)
    student = widen(teacher, name, 2.0, WIDER_CLASSES, init="zero",
                    generator=torch.Generator().manual_seed(0))
    old_shapes = {k: v.shape for k, v in teacher.state_dict().items()}
    weights = {n: p for n, p in student.named_parameters() if p.dim() >= 2}
    grew_in = [n for n, p in weights.items() if p.shape[1] > old_shapes[n][1]]
    grew_out = [n for n, p in weights.items() if p.shape[0] > old_shapes[n][0]]
    assert grew_in and grew_out

    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    x = torch.randn(8, 1, 8, 8)
    y = torch.arange(8) % WIDER_CLASSES

    def sgd_step() -> dict[str, torch.Tensor]:
        opt.zero_grad()
        F.cross_entropy(student(x), y).backward()
        grads = {n: weights[n].grad.clone() for n in weights}
        opt.step()
        return grads

    first, second = sgd_step(), sgd_step()
    for n in grew_in:
        o, i = old_shapes[n][:2]
        assert first[n][:o, i:].abs().sum() > 0, f"{n}: no gradient out of new units"
    for n in grew_out:
        o = old_shapes[n][0]
        if n != "fc.weight":  # new fc rows are new classes: the loss reaches them at once
            assert torch.equal(first[n][o:], torch.zeros_like(first[n][o:])), n
        assert second[n][o:].abs().sum() > 0, f"{n}: no gradient into new units by step 2"


@pytest.mark.parametrize("name", WIDEN_MODELS)
def test_uniform_init_draws_new_entries_from_0_theta(name: str) -> None:
    theta = 1e-3
    teacher = _teacher(name)
    student = widen(teacher, name, 1.5, WIDER_CLASSES, init="uniform", theta=theta)
    t_state, params = teacher.state_dict(), dict(student.named_parameters())
    for key, value in student.state_dict().items():
        old = t_state[key]
        assert torch.equal(value[tuple(slice(0, n) for n in old.shape)], old), key
        if key in params:
            new = value[_new_entries(value, old.shape)]
            assert ((new >= 0) & (new <= theta)).all(), key


@pytest.mark.parametrize("name", WIDEN_MODELS)
def test_all_uniform_transfers_nothing(name: str) -> None:
    teacher = _teacher(name)
    student = widen(teacher, name, 2.0, NUM_CLASSES, init="all_uniform")
    t_state = teacher.state_dict()
    for key, value in student.named_parameters():
        if value.dim() >= 2:
            old = t_state[key]
            assert not torch.equal(value[tuple(slice(0, n) for n in old.shape)], old), key


def test_widen_is_reproducible_with_a_generator() -> None:
    teacher = _teacher("cnn_small")
    a, b = (widen(teacher, "cnn_small", 2.0, WIDER_CLASSES, init="uniform",
                  generator=torch.Generator().manual_seed(3)) for _ in range(2))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_widen_to_more_input_channels_keeps_the_teacher() -> None:
    """A grey-scale teacher into an RGB student: new input channels are new (zeroed) units."""
    teacher = _teacher("cnn_small", size=8, channels=1)
    student = widen(teacher, "cnn_small", 2.0, NUM_CLASSES, in_channels=3, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(student(x), teacher(x[:, :1]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad,match", [
    (dict(factor=0.5), "factor must be >= 1"),
    (dict(num_classes=NUM_CLASSES - 1), "cannot drop classes"),
    (dict(init="gaussian"), "unknown widen init"),
    (dict(name="resnet14"), "only adds units, not layers"),
    (dict(name="mlp", input_size=16), "depend on the input size"),
    (dict(width=2.0), "not width"),
])
def test_widen_rejects_what_it_cannot_do(bad: dict, match: str) -> None:
    teacher = _teacher("mlp" if bad.get("name") == "mlp" else "resnet8")
    args = dict(name=teacher.spec["name"], factor=2.0, num_classes=NUM_CLASSES) | bad
    with pytest.raises(ValueError, match=match):
        widen(teacher, **args)


def test_widen_needs_a_spec() -> None:
    teacher = _teacher("cnn_small")
    del teacher.spec
    with pytest.raises(ValueError, match="create_model"):
        widen(teacher, "cnn_small", 2.0, NUM_CLASSES)

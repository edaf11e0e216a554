"""Widen a trained teacher into a larger student (anti-distillation, Petrushina et al.).

The student is the same architecture with every hidden width × ``factor`` (more units in linear
layers, more channels in conv layers) and possibly more output classes (S → G). Each teacher
tensor is copied into the *leading slice* of the student's same-named tensor: unit i of the
teacher is unit i of the student. That is sound because every zoo model global-average-pools
before ``fc`` and ``Flatten`` puts channels outermost, so a wider tensor only appends indices.
Weights are taken as ``(out, in, *kernel)``, the layout of ``nn.Linear`` and ``nn.Conv2d``.

How the new entries start (``init``):

- ``"zero"``: weights *out of* new units into old ones (input index new, output index old)
  are 0, so the old units, hence the logits on the teacher's classes, are exactly the
  teacher's. Weights *into* new units (output index new) keep the fresh model's random
  default init, so new units compute something and receive gradient once their zero outgoing
  weights move (after one SGD step): they are not dead. New ``fc`` rows (extra classes) are 0;
  they get gradient at once. New BN scale/shift keep their defaults (1 / 0).
- ``"uniform"``: every new parameter entry is drawn from U[0, θ] (the paper's second scheme);
  the teacher's function is then only approximately kept (θ small).
- ``"all_uniform"``: nothing is transferred; the fresh model is returned with its default
  init (Kaiming for the zoo's layers). The paper calls this baseline "uniform initialization
  of all model weights"; PyTorch's default init is a (Kaiming-)uniform one for Linear and for
  the plain convs, which is the baseline a user of the architecture would train from.

BatchNorm running statistics are copied for the old channels; new channels keep mean 0 /
var 1 (buffers are not weights, so ``uniform`` does not touch them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from kdtune.models._base import TappedModel, create_model

INITS = ("zero", "uniform", "all_uniform")


def widen(teacher: TappedModel, name: str, factor: float, num_classes: int,
          init: str = "zero", theta: float = 1e-2, generator: torch.Generator | None = None,
          **model_kwargs: object) -> TappedModel:
    """Build ``name`` at ``width = teacher width × factor`` and transfer the teacher into it.

    ``model_kwargs`` override the teacher's own build kwargs (inherited when ``name`` is the
    teacher's model name); ``in_channels`` / ``input_size`` may be passed to change the input
    (more input channels are new input units; a new size is allowed only where no parameter
    shape depends on it). ``generator`` makes the fresh init and the U[0, θ] draws
    reproducible. Raises ``ValueError`` when the student cannot hold the teacher.
    """
    if init not in INITS:
        raise ValueError(f"unknown widen init {init!r}: choose one of {', '.join(INITS)}")
    if factor < 1:
        raise ValueError(f"widen factor must be >= 1 (a student at least as wide), got {factor}")
    if num_classes < teacher.num_classes:
        raise ValueError(f"widen cannot drop classes: the teacher has {teacher.num_classes}, "
                         f"the student would have {num_classes}")
    if init == "uniform" and not theta > 0:
        raise ValueError(f"uniform init needs theta > 0, got {theta}")
    spec = getattr(teacher, "spec", None)
    if spec is None:
        raise ValueError("the teacher has no .spec: build it with create_model(...)")
    if "width" in model_kwargs:
        raise ValueError("pass the widening as factor=..., not width=...")

    kwargs: dict[str, Any] = dict(spec["kwargs"]) if name == spec["name"] else {}
    kwargs.update(model_kwargs)
    in_channels = int(kwargs.pop("in_channels", spec["in_channels"]))
    input_size = int(kwargs.pop("input_size", spec["input_size"]))
    kwargs["width"] = float(spec["kwargs"].get("width", 1.0)) * factor
    if input_size != spec["input_size"]:
        _check_size_free(spec, input_size)

    student = _fresh(generator, lambda: create_model(name, num_classes, in_channels,
                                                     input_size, **kwargs))
    if init == "all_uniform":
        return student.to(_device(teacher))

    t_state = {k: v.detach().cpu() for k, v in teacher.state_dict().items()}
    s_state = student.state_dict()
    if set(t_state) != set(s_state):
        missing = sorted(set(t_state) ^ set(s_state))[:5]
        raise ValueError(f"widen only adds units, not layers: {name} and the teacher differ "
                         f"in tensors {missing}")
    params = {n for n, _ in student.named_parameters()}
    fc_params = {f"fc.{n}" for n, _ in student.fc.named_parameters()}
    new_state = {}
    for key, fresh in s_state.items():
        old = t_state[key]
        _check_shapes(key, old.shape, fresh.shape)
        w = fresh.clone()
        if key in params and init == "uniform":
            w.uniform_(0.0, theta, generator=generator)
        elif key in params and init == "zero":
            if w.dim() >= 2:
                w[: old.shape[0], old.shape[1]:] = 0  # out of new units into old: keep f(x)
            if key in fc_params:
                w[old.shape[0]:] = 0  # extra classes start at logit 0
        w[tuple(slice(0, n) for n in old.shape)] = old.to(w.dtype)
        new_state[key] = w
    student.load_state_dict(new_state)
    return student.to(_device(teacher))


def _check_shapes(key: str, old: torch.Size, new: torch.Size) -> None:
    """Out/in dims may grow; kernel dims must match (a 3×3 stays 3×3)."""
    ok = (len(old) == len(new) and all(n >= o for o, n in zip(old[:2], new[:2]))
          and old[2:] == new[2:])
    if not ok:
        raise ValueError(f"cannot widen {key}: teacher shape {tuple(old)} does not fit into "
                         f"student shape {tuple(new)}")


def _check_size_free(spec: dict, input_size: int) -> None:
    """A new input size is fine only if the teacher's parameter shapes do not depend on it
    (an MLP's first layer does: its flattened pixels would land in the wrong places)."""
    with torch.device("meta"):  # shapes only: no memory, no init cost
        a = create_model(spec["name"], spec["num_classes"], spec["in_channels"],
                         spec["input_size"], **spec["kwargs"])
        b = create_model(spec["name"], spec["num_classes"], spec["in_channels"], input_size,
                         **spec["kwargs"])
    sa, sb = a.state_dict(), b.state_dict()
    if set(sa) != set(sb) or any(sa[k].shape != sb[k].shape for k in sa):
        raise ValueError(f"{spec['name']}'s parameter shapes depend on the input size: cannot "
                         f"widen from input_size {spec['input_size']} to {input_size}")


def _fresh(generator: torch.Generator | None,
           build: Callable[[], TappedModel]) -> TappedModel:
    """Run ``build`` with the global RNG seeded from ``generator`` (module inits use the
    global RNG), leaving the caller's global RNG state untouched."""
    if generator is None:
        return build()
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _device(model: TappedModel) -> torch.device:
    p: Tensor | None = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")

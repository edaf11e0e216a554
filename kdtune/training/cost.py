"""What a student costs to ship: parameters, FLOPs, saved size, and CPU latency.

- ``flops``: what ``torch.utils.flop_counter.FlopCounterMode`` counts for one input (it counts
  2 × multiply-adds), on the CPU, in eval mode: a property of the architecture.
- ``size_mb``: the bytes of the saved weights (``torch.save`` of the state dict), in MiB.
- ``latency_ms``: the median over ``repeats`` batch-1 forwards after ``warmup`` ones, on one CPU
  thread. Trials share cores, so kdtune measures it on the driver after the sweep, one model
  at a time: a relative figure for ranking students on one machine, not a deployment number.
"""

from __future__ import annotations

import copy
import io
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdtune.models import count_params


def _example(in_channels: int, input_size: int) -> torch.Tensor:
    return torch.zeros(1, in_channels, input_size, input_size)


def flops(model: nn.Module, in_channels: int, input_size: int) -> int:
    """FLOPs of one forward of one input (a CPU copy in eval mode: the model is untouched)."""
    m = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        m(_example(in_channels, input_size))
    return int(counter.get_total_flops())


def size_mb(model: nn.Module) -> float:
    """Size of the saved weights in MiB."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell() / (1 << 20)


def costs(model: nn.Module, in_channels: int, input_size: int) -> dict[str, float]:
    """The architecture's costs every trial reports next to its metric."""
    return {"params_count": float(count_params(model, nonzero=True)),
            "flops": float(flops(model, in_channels, input_size)), "size_mb": size_mb(model)}


def latency_ms(model: nn.Module, in_channels: int, input_size: int, *, repeats: int = 30,
               warmup: int = 5) -> float:
    """Median batch-1 CPU latency over ``repeats`` forwards, after ``warmup``, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = copy.deepcopy(model).to("cpu").eval()
        x = _example(in_channels, input_size)
        times = []
        with torch.no_grad():
            for i in range(warmup + repeats):
                t0 = time.perf_counter()
                m(x)
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1000)
        return float(statistics.median(times))
    finally:
        torch.set_num_threads(threads)

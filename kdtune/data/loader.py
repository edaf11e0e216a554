"""Batches from tensors already in memory: no DataLoader, no per-sample Python.

Everything per batch (crop, flip, corruption, normalisation) is one tensor op on the device,
which is what makes small models fast here (measured on 2 CPU cores: a DataLoader with
ToTensor ran ~1,000 samples/s, the same model on tensors in memory ~1,250).
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from kdtune.data._base import DataSplits, TensorData, seed_of

CORRUPTIONS = ("gaussian", "pixels")


def corrupt(x01: Tensor, kind: str, level: float, generator: torch.Generator | None = None) -> Tensor:
    """Corrupt images with pixels in [0, 1], shape [B, C, H, W]; returns a new tensor.

    ``"gaussian"``: add N(0, level²) noise (``level`` is σ), clamp to [0, 1].
    ``"pixels"``: in each image replace exactly round(level·H·W) pixel positions (all channels
    of a pixel) by uniform noise U[0, 1]. ``level`` 0 returns the input unchanged.
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"corruption: unknown kind {kind!r}; choose one of {', '.join(CORRUPTIONS)}")
    if level < 0 or (kind == "pixels" and level > 1):
        raise ValueError(f"corruption: level {level} out of range for {kind!r}")
    if level == 0:
        return x01
    if kind == "gaussian":
        noise = torch.randn(x01.shape, generator=generator, device=x01.device, dtype=x01.dtype)
        return (x01 + level * noise).clamp_(0, 1)
    b, c, h, w = x01.shape
    k = round(level * h * w)
    # an exact count per image (not Bernoulli per pixel): "30 % of pixels" means 30 % of each image
    keys = torch.rand((b, h * w), generator=generator, device=x01.device)
    mask = torch.zeros((b, h * w), dtype=torch.bool, device=x01.device)
    mask.scatter_(1, keys.topk(k, dim=1).indices, True)
    noise = torch.rand(x01.shape, generator=generator, device=x01.device, dtype=x01.dtype)
    return torch.where(mask.view(b, 1, h, w), noise, x01)


def crop_flip(x: Tensor, generator: torch.Generator | None = None, pad: int = 4) -> Tensor:
    """Random crop of a zero-padded (``pad`` pixels) batch back to its size + random h-flip.

    One gather for the whole batch: each image gets its own offset and flip (a flat gather is
    ~5× faster on CPU than 4-D advanced indexing).
    """
    b, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))  # zeros = black, as torchvision's RandomCrop(padding=4)
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator, device=dev)
    flip = torch.rand((b, 1), generator=generator, device=dev) < 0.5
    ar_w = torch.arange(w, device=dev)
    rows = dy + torch.arange(h, device=dev)  # [b, h]
    cols = dx + torch.where(flip, w - 1 - ar_w, ar_w)  # a flipped crop reads its columns backwards
    flat = (rows.unsqueeze(2) * (w + 2 * pad) + cols.unsqueeze(1)).view(b, 1, h * w)
    return xp.flatten(2).gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)


def normalize_into_channels_last(x01: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x01 - mean) / std`` written into a channels_last tensor, whatever x01's strides.

    One layout for every batch: convs pick their kernel by the input's strides (on the CPU
    oneDNN's NHWC kernels run these small CNNs up to ~2x faster than NCHW), and a 1-channel
    tensor's strides otherwise depend on how its dataset was built (a size-1 dim's stride is
    free), so the same images loaded or memory-mapped would take different kernels and give
    different last bits."""
    b, c, h, w = x01.shape
    out = torch.empty((b, h, w, c), dtype=x01.dtype, device=x01.device).permute(0, 3, 1, 2)
    return torch.sub(x01, mean, out=out).div_(std)


class TensorLoader:
    """Yields ``(x, y, idx)`` per batch: x float32 normalised [B, C, H, W] on ``device``, y int64,
    idx int64 row indices into ``data`` (both on ``device``).

    The uint8 images move to ``device`` once (on the CPU: no copy, so a memory-mapped
    ``data.x`` stays shared; the loader never writes into it); each batch is converted there as
    ``(x/255 - mean)/std``, in channels_last layout. Each ``__iter__`` is the next epoch (``self.epoch`` counts them; set
    it when resuming): shuffle order and augmentation are seeded by (seed, epoch), so runs
    reproduce. ``augment``: random crop with 4-pixel padding + horizontal flip. ``corruption``
    ``(kind, level)`` (see ``corrupt``) is applied before normalisation, seeded by ``seed`` alone,
    so every pass over an unshuffled loader sees the same corrupted images.
    """

    def __init__(self, data: TensorData, splits_meta: DataSplits, batch_size: int, *, shuffle: bool,
                 seed: int = 0, augment: bool = False, device: str | torch.device = "cpu",
                 drop_last: bool = False, corruption: tuple[str, float] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: must be ≥ 1, got {batch_size}")
        if corruption is not None:
            corrupt(torch.zeros(1, 1, 1, 1), *corruption)  # fail now on a bad kind/level, not mid-epoch
        self.device = torch.device(device)
        self.x = data.x.to(self.device)
        self.y = data.y.to(self.device)
        c = self.x.shape[1]
        self.mean = torch.tensor(splits_meta.mean, device=self.device).view(1, c, 1, 1)
        self.std = torch.tensor(splits_meta.std, device=self.device).view(1, c, 1, 1)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.augment, self.drop_last, self.corruption = augment, drop_last, corruption
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self, *parts: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed_of(self.seed, *parts))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1  # counted at the call, not at the first batch
        n = len(self.y)
        if self.shuffle:  # permutation on the CPU: the same order on every device
            g = torch.Generator().manual_seed(seed_of(self.seed, epoch, 0))
            order = torch.randperm(n, generator=g).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        aug_g = self._generator(epoch, 1) if self.augment else None
        cor_g = self._generator(0, 2) if self.corruption else None
        return self._batches(order, aug_g, cor_g)

    def _batches(self, order: Tensor, aug_g, cor_g) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.x[idx]
            if aug_g is not None:
                x = crop_flip(x, aug_g)
            x = x.float().div_(255)
            if cor_g is not None:
                x = corrupt(x, *self.corruption, generator=cor_g)
            yield normalize_into_channels_last(x, self.mean, self.std), self.y[idx], idx

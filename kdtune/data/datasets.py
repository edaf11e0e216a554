"""The built-in datasets: registry entries ``(root, download) -> RawData``.

``root`` None means the per-user folder (``default_root()``). Nothing is downloaded unless
``download`` is true; missing files raise ``FileNotFoundError`` saying where we looked.
Means/stds are the usual published per-channel values on [0, 1] pixels, or computed from the
training split where there are none (digits, image-folder).
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdtune.data._base import RawData, default_root
from kdtune.registry import DATASETS

# where Debian's `dataset-fashion-mnist` package puts the four IDX .gz files
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _root(root: str | None, sub: str = "") -> Path:
    if root is not None:
        return Path(root)
    return default_root() / sub if sub else default_root()


def _require(name: str, folder: Path, files: list[str], download: bool) -> bool:
    """True when every file is there; False when missing but ``download``; else raise."""
    missing = [f for f in files if not (folder / f).is_file()]
    if not missing:
        return True
    if download:
        return False
    raise FileNotFoundError(f"{name}: {folder / missing[0]} not found; set data.root to the folder that "
                            f"holds {name}, or data.download: true to fetch it")


def _stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on [0, 1] pixels."""
    x = x.double().div(255)
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).tolist())


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An unsigned-byte IDX file (MNIST's format), gzipped or not, as a numpy array."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
        buf = f.read()
    if buf[:3] != b"\0\0\x08":
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = buf[3]
    dims = struct.unpack(f">{ndim}I", buf[4:4 + 4 * ndim])
    return np.frombuffer(buf, np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


@DATASETS.register("digits")
def digits(root: str | None, download: bool) -> RawData:
    """scikit-learn's 8×8 digits (1,797 images, shipped in the wheel): a fixed, stratified
    80/20 split (seed 0); pixel values 0..16 scaled ×16 to uint8 (16 → 255)."""
    from sklearn.datasets import load_digits  # lazy: each loader imports only its own source
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.clip(d.images * 16, 0, 255).astype(np.uint8)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    train_x = torch.from_numpy(xtr)
    mean, std = _stats(train_x)
    return RawData(train_x, torch.from_numpy(ytr).long(), torch.from_numpy(xte), torch.from_numpy(yte).long(),
                   10, mean, std, augment=False)


def _torchvision_idx(cls, name: str, root: str | None, download: bool, mean: float, std: float) -> RawData:
    """MNIST-like torchvision datasets: uncompressed IDX files under ROOT/<ClassName>/raw/."""
    base = _root(root)
    _require(name, base / cls.__name__ / "raw", [os.path.splitext(f)[0] for f, _ in cls.resources], download)
    tr, te = cls(str(base), train=True, download=download), cls(str(base), train=False, download=download)
    return RawData(tr.data.unsqueeze(1), tr.targets.long(), te.data.unsqueeze(1), te.targets.long(),
                   len(tr.classes), (mean,), (std,), augment=False)


@DATASETS.register("mnist")
def mnist(root: str | None, download: bool) -> RawData:
    """MNIST through torchvision (60,000/10,000, 28×28 grey)."""
    from torchvision.datasets import MNIST

    return _torchvision_idx(MNIST, "mnist", root, download, 0.1307, 0.3081)


@DATASETS.register("fashion-mnist")
def fashion_mnist(root: str | None, download: bool) -> RawData:
    """Fashion-MNIST (60,000/10,000, 28×28 grey): Debian's IDX .gz files when ``root`` is None
    and they are installed (``apt-get install dataset-fashion-mnist``), else torchvision."""
    debian = [DEBIAN_FASHION_MNIST / f"{f}.gz" for f in _IDX]
    if root is None and all(p.is_file() for p in debian):
        a = [torch.from_numpy(read_idx(p)) for p in debian]
        return RawData(a[0].unsqueeze(1), a[1].long(), a[2].unsqueeze(1), a[3].long(), 10,
                       (0.2860,), (0.3530,), augment=False)
    from torchvision.datasets import FashionMNIST  # imported late: it alone takes ~1.5 s

    return _torchvision_idx(FashionMNIST, "fashion-mnist", root, download, 0.2860, 0.3530)


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles: read them allowing only what they hold (dicts, lists, bytes,
    numpy arrays), so a planted file under ``data.root`` cannot run code (it raises)."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               *((m, f) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                 for f in ("_reconstruct", "scalar")),
               *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric"))}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a dataset batch")
        return super().find_class(module, name)


def _cifar(cls, name: str, root: str | None, download: bool, mean, std) -> RawData:
    """CIFAR's python-pickle batches under ROOT/<base_folder>/.

    We read the batches ourselves rather than through torchvision's class: it md5-checks every
    batch on each load and so refuses anything but the official files (e.g. test fixtures in
    the same format). torchvision still does the downloading and its file lists are used.
    """
    base = _root(root)
    folder = base / cls.base_folder
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    if not _require(name, folder, files, download):
        cls(str(base), train=True, download=True)  # fetches, verifies and extracts the archive

    def read(f: str) -> dict:
        with open(folder / f, "rb") as fh:
            return _ArrayUnpickler(fh, encoding="latin1").load()  # the format is pickle

    def split(lst) -> tuple[Tensor, Tensor]:
        batches = [read(f) for f, _ in lst]
        x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        y = np.concatenate([b.get("labels", b.get("fine_labels")) for b in batches])
        return torch.from_numpy(x), torch.from_numpy(y).long()

    (trx, try_), (tex, tey) = split(cls.train_list), split(cls.test_list)
    num_classes = len(read(cls.meta["filename"])[cls.meta["key"]])
    return RawData(trx, try_, tex, tey, num_classes, mean, std, augment=True)


@DATASETS.register("cifar10")
def cifar10(root: str | None, download: bool) -> RawData:
    """CIFAR-10 (50,000/10,000, 32×32 RGB, 10 classes)."""
    from torchvision.datasets import CIFAR10

    return _cifar(CIFAR10, "cifar10", root, download, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@DATASETS.register("cifar100")
def cifar100(root: str | None, download: bool) -> RawData:
    """CIFAR-100 (50,000/10,000, 32×32 RGB, 100 fine classes)."""
    from torchvision.datasets import CIFAR100

    return _cifar(CIFAR100, "cifar100", root, download, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


@DATASETS.register("image-folder")
def image_folder(root: str | None, download: bool) -> RawData:
    """Your own images: ``root/train/<class>/*`` and ``root/test/<class>/*`` (torchvision
    ``ImageFolder``; classes are the sorted train folder names). Every image is converted to
    RGB and resized to 32×32 (aspect ratio not kept), so the CIFAR models and augmentation
    apply; all of it is held in memory (3 KiB per image). ``root`` None: <cache>/image-folder."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    base = _root(root, "image-folder")
    for part in ("train", "test"):
        if not (base / part).is_dir():
            raise FileNotFoundError(f"image-folder: {base / part} not found; set data.root to a folder "
                                    "with train/ and test/ inside, one subfolder per class "
                                    "(it cannot be downloaded)")
    tf = transforms.Compose([transforms.Resize((32, 32)), transforms.PILToTensor()])
    tr, te = ImageFolder(str(base / "train"), transform=tf), ImageFolder(str(base / "test"), transform=tf)
    unknown = sorted(set(te.classes) - set(tr.classes))
    if unknown:
        raise ValueError(f"image-folder: test class {unknown[0]!r} has no train folder in {base / 'train'}")
    to_train = torch.tensor([tr.class_to_idx[c] for c in te.classes], dtype=torch.int64)

    def stack(ds) -> Tensor:
        return torch.stack([img for img, _ in ds])

    train_x = stack(tr)
    mean, std = _stats(train_x)
    return RawData(train_x, torch.tensor(tr.targets, dtype=torch.int64), stack(te),
                   to_train[torch.tensor(te.targets, dtype=torch.int64)], len(tr.classes), mean, std,
                   augment=True)

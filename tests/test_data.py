"""kdtune.data: class subsets, splits, corruption, the dataset loaders (on tiny files written in
each dataset's real on-disk format; never a download) and TensorLoader."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdtune.data import (
    DataSplits,
    TensorData,
    TensorLoader,
    corrupt,
    crop_flip,
    load_data,
    raw_data,
    resolve_classes,
)
from kdtune.data.datasets import DEBIAN_FASHION_MNIST
from kdtune.registry import DATASETS, UnknownNameError

# ---------------------------------------------------------------- tiny datasets on disk


def write_idx(path: Path, arr: np.ndarray) -> None:
    """The IDX format: 0, 0, type 0x08 (ubyte), ndim, then big-endian int32 dims, then data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str, n_train: int = 20, n_test: int = 10) -> None:
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def cifar_rows(n: int, label_of) -> np.ndarray:
    """n images whose R, G, B planes are constant 10, 20, 30 + label: checks the plane layout."""
    x = np.zeros((n, 3, 32, 32), np.uint8)
    for i in range(n):
        x[i] = (np.array([10, 20, 30]) + label_of(i))[:, None, None]
    return x.reshape(n, 3072)


def dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root: Path) -> None:
    d = root / "cifar-10-batches-py"
    for b in range(1, 6):  # 5 batches × 4 images = 20 train images
        labels = [(4 * (b - 1) + i) % 10 for i in range(4)]
        dump(d / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5", "labels": labels,
                                     "data": cifar_rows(4, lambda i: labels[i]), "filenames": [""] * 4})
    labels = [i % 10 for i in range(10)]
    dump(d / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": labels,
                            "data": cifar_rows(10, lambda i: labels[i]), "filenames": [""] * 10})
    dump(d / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": 4,
                              "num_vis": 3072})


def write_cifar100(root: Path) -> None:
    d = root / "cifar-100-python"
    for split, n in (("train", 30), ("test", 12)):
        fine = [(7 * i) % 100 for i in range(n)]
        dump(d / split, {"filenames": [""] * n, "batch_label": split, "fine_labels": fine,
                         "coarse_labels": [f // 5 for f in fine], "data": cifar_rows(n, lambda i: fine[i])})
    dump(d / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                      "coarse_label_names": [f"c{i}" for i in range(20)]})


COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "zebra": (0, 0, 255)}


def write_image_folder(root: Path) -> None:
    """train: 3 classes × 3 PNGs of mixed sizes and modes; test: only cat and zebra (2 each)."""
    for split, names, n in (("train", ["cat", "dog", "zebra"], 3), ("test", ["cat", "zebra"], 2)):
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                size = (10 + i, 12) if i % 2 == 0 else (40, 40)
                Image.new("RGB", size, COLOURS[name]).save(root / split / name / f"{i}.png")
    Image.new("L", (20, 20), 128).save(root / "train" / "dog" / "grey.png")  # converted to RGB


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """name → a root holding a tiny copy of that dataset in its real format."""
    tv = tmp_path_factory.mktemp("torchvision")
    write_mnist(tv, "MNIST")
    write_mnist(tv, "FashionMNIST", 30, 10)
    write_cifar10(tv)
    write_cifar100(tv)
    folder = tmp_path_factory.mktemp("folder")
    write_image_folder(folder)
    return {"mnist": tv, "fashion-mnist": tv, "cifar10": tv, "cifar100": tv, "image-folder": folder}


# ---------------------------------------------------------------- class subsets


def test_first_k_remaps_and_keeps_original_ids():
    s = load_data("digits", classes={"first": 5})
    raw = raw_data("digits")
    assert s.num_classes == 5 and s.classes == [0, 1, 2, 3, 4]
    for part in (s.train, s.val):
        assert set(part.y.tolist()) == set(range(5))
        assert torch.equal(raw.train_y[part.rows], torch.tensor(s.classes)[part.y])
    assert torch.equal(raw.test_y[s.test.rows], torch.tensor(s.classes)[s.test.y])


def test_explicit_list_remaps_in_given_order():
    s = load_data("digits", classes=[3, 1])
    raw = raw_data("digits")
    assert s.classes == [3, 1] and s.num_classes == 2
    assert torch.equal(raw.train_y[s.train.rows], torch.where(s.train.y == 0, 3, 1))
    assert torch.equal(raw.test_y[s.test.rows], torch.where(s.test.y == 0, 3, 1))
    assert len(s.test) == int(((raw.test_y == 3) | (raw.test_y == 1)).sum())


@pytest.mark.parametrize("classes, message", [
    ([12], "student.classes: class 12 out of range 0..9"),
    ([-1], "student.classes: class -1 out of range 0..9"),
    ([1, 1], "student.classes: class 1 listed twice"),
    ([], "student.classes: the class list is empty"),
    ([1.5], "student.classes: class 1.5 is not an integer"),
    ({"first": 0}, "student.classes: first 0 out of range 1..10"),
    ({"first": 11}, "student.classes: first 11 out of range 1..10"),
    ({"last": 2}, "student.classes: expected {first: k}"),
    ("some", "student.classes: expected 'all', a list of class ids or {first: k}"),
    (True, "student.classes: expected 'all'"),
])
def test_bad_classes_name_the_field(classes, message):
    with pytest.raises(ValueError) as e:
        resolve_classes(classes, 10, "student.classes")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="^student.classes: "):
        load_data("digits", classes=classes, classes_field="student.classes")


def test_resolve_classes_all_and_first():
    assert resolve_classes("all", 4) == [0, 1, 2, 3]
    assert resolve_classes({"first": 2}, 4) == [0, 1]
    assert resolve_classes((2, 0), 4) == [2, 0]


def test_unknown_dataset_suggests_close_match():
    with pytest.raises(UnknownNameError, match="did you mean 'fashion-mnist'"):
        load_data("fashion_mnist")


# ---------------------------------------------------------------- splits


def test_split_is_seeded_disjoint_and_complete():
    a, b, c = load_data("digits", seed=0), load_data("digits", seed=0), load_data("digits", seed=1)
    assert torch.equal(a.train.rows, b.train.rows) and torch.equal(a.val.rows, b.val.rows)
    assert torch.equal(a.train.x, b.train.x)
    assert not torch.equal(a.val.rows, c.val.rows)
    n = len(raw_data("digits").train_y)
    assert set(a.train.rows.tolist()).isdisjoint(a.val.rows.tolist())
    assert sorted(a.train.rows.tolist() + a.val.rows.tolist()) == list(range(n))
    assert len(a.val) == round(0.1 * n) and len(a.test) == 360 and n == 1437


def test_train_limit_and_val_fraction():
    s = load_data("digits", train_limit=100, val_fraction=0.2, seed=3)
    assert len(s.train) == 80 and len(s.val) == 20
    assert set(s.train.rows.tolist()).isdisjoint(s.val.rows.tolist())
    t = load_data("digits", train_limit=100, val_fraction=0.2, seed=3, classes=[5, 6])
    assert len(t.train) + len(t.val) == 100 and set(t.train.y.tolist()) == {0, 1}
    assert len(load_data("digits", train_limit=10**6).train) + len(load_data("digits").val) == 1437
    assert len(load_data("digits", train_limit=5, val_fraction=0.01).val) == 1  # never an empty val set
    assert len(load_data("digits", val_fraction=0).val) == 0


@pytest.mark.parametrize("kw, field", [({"train_limit": 0}, "data.train_limit"),
                                       ({"val_fraction": 1.0}, "data.val_fraction"),
                                       ({"train_limit": 1, "val_fraction": 0.5}, "data.val_fraction")])
def test_bad_split_settings(kw, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        load_data("digits", **kw)


def test_subset_val_is_mostly_within_full_val():
    # one seeded ranking of the whole train split: a teacher on all classes has (nearly) not
    # trained on a class-subset student's val images
    full, sub = load_data("digits"), load_data("digits", classes={"first": 5})
    overlap = len(set(sub.val.rows.tolist()) & set(full.val.rows.tolist()))
    assert overlap >= 0.8 * len(sub.val)


def test_digits_raw_format():
    raw = raw_data("digits")
    assert raw.train_x.dtype == torch.uint8 and raw.train_x.shape == (1437, 1, 8, 8)
    assert int(raw.train_x.max()) == 255 and raw.augment is False
    s = load_data("digits")
    assert (s.in_channels, s.input_size, s.num_classes) == (1, 8, 10)


# ---------------------------------------------------------------- corruption


def test_pixels_corruption_changes_that_fraction():
    x = torch.full((64, 3, 16, 16), 0.5)
    g = torch.Generator().manual_seed(0)
    y = corrupt(x, "pixels", 0.3, generator=g)
    changed = (y != x)  # [B, C, H, W]
    assert torch.equal(changed.all(1), changed.any(1))  # all channels of a pixel, or none
    frac = changed.any(1).float().mean(dim=(1, 2))  # per image
    assert torch.all((frac - 0.3).abs() <= 0.03)
    assert 0.45 < y[changed].mean() < 0.55 and y.min() >= 0 and y.max() <= 1  # U[0, 1] noise


def test_gaussian_corruption_has_that_std():
    x = torch.full((32, 1, 28, 28), 0.5)
    y = corrupt(x, "gaussian", 0.1, generator=torch.Generator().manual_seed(0))
    assert abs((y - x).std().item() - 0.1) < 0.005 and abs((y - x).mean().item()) < 0.005
    assert corrupt(x, "gaussian", 2.0).max() <= 1 and corrupt(x, "gaussian", 2.0).min() >= 0


def test_corruption_level_zero_is_identity_and_bad_kinds_raise():
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(corrupt(x, "pixels", 0.0), x) and torch.equal(corrupt(x, "gaussian", 0.0), x)
    with pytest.raises(ValueError, match="unknown kind 'blur'"):
        corrupt(x, "blur", 0.1)
    with pytest.raises(ValueError, match="out of range"):
        corrupt(x, "pixels", 1.5)


# ---------------------------------------------------------------- datasets


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir() and not os.environ.get("CI"),
                    reason="apt-get install dataset-fashion-mnist (CI installs it)")
def test_fashion_mnist_from_debian_files():
    raw = raw_data("fashion-mnist")
    assert raw.train_x.shape == (60000, 1, 28, 28) and raw.test_x.shape == (10000, 1, 28, 28)
    assert raw.train_x.dtype == torch.uint8 and raw.train_y.dtype == torch.int64
    assert torch.bincount(raw.train_y).tolist() == [6000] * 10
    assert abs(raw.train_x.float().div(255).mean().item() - raw.mean[0]) < 1e-3
    s = load_data("fashion-mnist")
    assert (len(s.train), len(s.val), len(s.test)) == (54000, 6000, 10000)


def test_mnist_and_fashion_mnist_through_torchvision(roots):
    s = load_data("mnist", root=roots["mnist"], val_fraction=0.25)
    assert (len(s.train), len(s.val), len(s.test)) == (15, 5, 10)
    assert s.train.x.shape[1:] == (1, 28, 28) and s.train.x.dtype == torch.uint8
    assert (s.in_channels, s.input_size, s.num_classes, s.augment) == (1, 28, 10, False)
    raw = raw_data("fashion-mnist", root=roots["fashion-mnist"])
    assert (len(raw.train_y), len(raw.test_y)) == (30, 10)


def test_cifar10_pickle_batches(roots):
    s = load_data("cifar10", root=roots["cifar10"], val_fraction=0.2)
    assert (len(s.train), len(s.val), len(s.test)) == (16, 4, 10)
    assert s.train.x.shape[1:] == (3, 32, 32) and s.augment is True and s.num_classes == 10
    # each image's planes are R, G, B = 10, 20, 30 + its label
    for part in (s.train, s.test):
        assert torch.equal(part.x[:, :, 5, 7].long(), torch.tensor([10, 20, 30]) + part.y[:, None])


def test_cifar100_pickle_batches(roots):
    s = load_data("cifar100", root=roots["cifar100"], val_fraction=0.1)
    assert (len(s.train) + len(s.val), len(s.test), s.num_classes) == (30, 12, 100)
    assert torch.equal(s.test.x[:, 0, 0, 0].long(), 10 + s.test.y)  # fine labels, not coarse


def test_image_folder(roots):
    raw = raw_data("image-folder", root=roots["image-folder"])
    assert raw.train_x.shape == (10, 3, 32, 32) and raw.test_x.shape == (4, 3, 32, 32)
    assert raw.num_classes == 3 and raw.augment is True
    colours = torch.tensor(list(COLOURS.values()) + [(128, 128, 128)])
    # test has no "dog" folder: its labels still follow the train folders (zebra = 2)
    assert raw.test_y.tolist() == [0, 0, 2, 2]
    assert torch.equal(raw.test_x[:, :, 16, 16], colours[raw.test_y].to(torch.uint8))
    expected_mean = raw.train_x.double().div(255).mean((0, 2, 3))
    assert torch.allclose(torch.tensor(raw.mean, dtype=torch.float64), expected_mean)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100", "image-folder"])
def test_missing_files_say_where_and_what_to_set(tmp_path, name):
    with pytest.raises(FileNotFoundError) as e:
        load_data(name, root=tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{name}: {tmp_path}") and "data.root" in msg
    assert ("data.download: true" in msg) == (name != "image-folder")


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_contract(name, roots):
    """Every registered dataset: uint8 NCHW splits, labels in range, one mean/std per channel."""
    if name != "digits" and name not in roots:
        pytest.skip(f"no test data for plugin dataset {name!r}: this test makes files only for "
                    "the built-in datasets")
    raw = raw_data(name, root=roots.get(name))
    for x, y in ((raw.train_x, raw.train_y), (raw.test_x, raw.test_y)):
        assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[2] == x.shape[3]
        assert y.dtype == torch.int64 and len(y) == len(x) and 0 <= y.min() and y.max() < raw.num_classes
    assert raw.train_x.shape[1:] == raw.test_x.shape[1:]
    assert len(raw.mean) == len(raw.std) == raw.train_x.shape[1] and min(raw.std) > 0
    assert raw.augment == (raw.train_x.shape[1:] == (3, 32, 32))


# ---------------------------------------------------------------- TensorLoader


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_data("digits")


def test_loader_batches(digits):
    loader = TensorLoader(digits.train, digits, 100, shuffle=False)
    batches = list(loader)
    n = len(digits.train)
    assert len(loader) == len(batches) == -(-n // 100)
    x, y, idx = batches[0]
    assert x.shape == (100, 1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and idx.dtype == torch.int64
    assert len(batches[-1][0]) == n - 100 * (len(batches) - 1)
    expected = (digits.train.x[idx].float() / 255 - digits.mean[0]) / digits.std[0]
    assert torch.allclose(x, expected) and torch.equal(y, digits.train.y[idx])
    assert len(TensorLoader(digits.train, digits, 100, shuffle=True, drop_last=True)) == n // 100
    assert sum(len(b[0]) for b in TensorLoader(digits.train, digits, 100, shuffle=True, drop_last=True)) \
        == 100 * (n // 100)


def test_loader_visits_each_row_once_in_a_seeded_order(digits):
    def orders(seed, epochs=2):
        loader = TensorLoader(digits.train, digits, 64, shuffle=True, seed=seed)
        return [torch.cat([idx for _, _, idx in loader]) for _ in range(epochs)]

    a, b, c = orders(0), orders(0), orders(1)
    for o in a:
        assert torch.equal(o.sort().values, torch.arange(len(digits.train)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # reproducible
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], c[0])  # new per epoch and seed
    resumed = TensorLoader(digits.train, digits, 64, shuffle=True, seed=0)
    resumed.epoch = 1
    assert torch.equal(torch.cat([idx for _, _, idx in resumed]), a[1])


def test_normalised_digits_have_zero_mean_unit_std(digits):
    x = torch.cat([x for x, _, _ in TensorLoader(digits.train, digits, 256, shuffle=True)])
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def rgb_splits(n: int = 16) -> DataSplits:
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    d = TensorData(x, torch.arange(n) % 10)
    return DataSplits(d, d, d, 10, 3, 32, list(range(10)), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), True)


def test_augment_is_a_crop_of_the_padded_image_or_its_mirror():
    s = rgb_splits()
    (x, _, idx), = TensorLoader(s.train, s, 16, shuffle=False, augment=True)
    clean = (s.train.x[idx].float() / 255 - 0.5) / 0.25
    assert x.shape == clean.shape and not torch.allclose(x, clean)
    padded = torch.nn.functional.pad(s.train.x[idx], (4, 4, 4, 4)).float() / 255
    raw = x * 0.25 + 0.5
    for i in range(16):
        crops = [p[:, dy:dy + 32, dx:dx + 32] for p in (padded[i], padded[i].flip(-1))
                 for dy in range(9) for dx in range(9)]
        assert any(torch.allclose(raw[i], c, atol=1e-5) for c in crops)
    again, = TensorLoader(s.train, s, 16, shuffle=False, augment=True)
    assert torch.equal(again[0], x)  # seeded


def test_crop_flip_uses_every_offset_and_both_flips():
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32).expand(2000, 1, 32, 32)
    out = crop_flip(x, torch.Generator().manual_seed(0))
    # decode each crop from its centre pixel: padded[16 + dy, 16 + dx] = x[12 + dy, 12 + dx]
    # (a flipped crop reads column 31 - 16 = 15 of the window instead: x[., 11 + dx])
    flip = out[:, 0, 16, 17] < out[:, 0, 16, 16]
    v = out[:, 0, 16, 16].long()
    dy, dx = v // 32 - 12, v % 32 - 12 + flip.long()
    assert dy.min() == 0 and dy.max() == 8 and dx.min() == 0 and dx.max() == 8
    assert len(set(zip(dy.tolist(), dx.tolist(), flip.tolist()))) == 81 * 2
    assert 0.4 < flip.float().mean() < 0.6


def test_loader_corruption_is_seeded_and_the_same_every_pass(digits):
    loader = TensorLoader(digits.test, digits, 500, shuffle=False, corruption=("pixels", 0.3))
    (a, _, _), = loader
    (b, _, _), = loader
    (clean, _, _), = TensorLoader(digits.test, digits, 500, shuffle=False)
    assert torch.equal(a, b) and not torch.equal(a, clean)
    changed = (a != clean).flatten(1).float().mean(1)
    assert abs(changed.mean().item() - 0.3) < 0.05  # fewer: some replaced pixels keep their value
    with pytest.raises(ValueError, match="unknown kind"):
        TensorLoader(digits.test, digits, 8, shuffle=False, corruption=("fog", 0.1))


def test_empty_split_gives_no_batches():
    s = load_data("digits", val_fraction=0)
    loader = TensorLoader(s.val, s, 32, shuffle=True)
    assert len(loader) == 0 and list(loader) == []

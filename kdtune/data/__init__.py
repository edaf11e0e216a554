"""Datasets, class subsets, corruption and tensor-resident loaders.

``load_data(name, ...)`` → ``DataSplits`` (uint8 tensors in memory); ``TensorLoader`` batches
them on the device. Datasets are ``DATASETS`` registry entries ``(root, download) -> RawData``;
importing this package registers the built-in ones (``datasets.py``).
"""

from kdtune.data import datasets as _datasets  # noqa: F401  (registers the built-in datasets)
from kdtune.data._base import (
    DataSplits,
    RawData,
    TensorData,
    clear_cache,
    default_root,
    load_data,
    raw_data,
    resolve_classes,
)
from kdtune.data.loader import CORRUPTIONS, TensorLoader, corrupt, crop_flip

__all__ = [
    "CORRUPTIONS",
    "DataSplits",
    "RawData",
    "TensorData",
    "TensorLoader",
    "clear_cache",
    "corrupt",
    "crop_flip",
    "default_root",
    "load_data",
    "raw_data",
    "resolve_classes",
]

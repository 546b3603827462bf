"""Datasets for gradreg: MNIST, CIFAR-10, SIN/SIN2, with splits, batching and augmentation.

Files are looked up in `data_dir`, then `$GRADREG_DATA_DIR`, then `~/.cache/gradreg`
(`gradreg.data.paths`), verified by SHA-256 (`gradreg.data.integrity`), and
downloaded only when allowed (`gradreg.data.download`). Importing this package reads no
data and touches no network.
"""

from gradreg.data.augment import random_translate_flip, translate_flip
from gradreg.data.batching import BatchSampler
from gradreg.data.cifar import CIFAR10_CLASSES, RestrictedUnpickler, load_cifar10
from gradreg.data.download import DEFAULT_SOURCES, DataSources, urllib_fetch
from gradreg.data.errors import ChecksumError, DataError, DataNotFoundError, DownloadError
from gradreg.data.mnist import load_mnist
from gradreg.data.paths import DATA_DIR_ENV, data_dir_candidates, default_cache_dir
from gradreg.data.sin import make_sin, make_sin2
from gradreg.data.splits import Splits, load_cifar10_splits, load_mnist_splits, pixel_mean_std, training_subset_indices

__all__ = [
    "BatchSampler",
    "CIFAR10_CLASSES",
    "ChecksumError",
    "DATA_DIR_ENV",
    "DEFAULT_SOURCES",
    "DataError",
    "DataNotFoundError",
    "DataSources",
    "DownloadError",
    "RestrictedUnpickler",
    "Splits",
    "data_dir_candidates",
    "default_cache_dir",
    "load_cifar10",
    "load_cifar10_splits",
    "load_mnist",
    "load_mnist_splits",
    "make_sin",
    "make_sin2",
    "pixel_mean_std",
    "random_translate_flip",
    "training_subset_indices",
    "translate_flip",
    "urllib_fetch",
]

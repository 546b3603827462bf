"""The dataset registry: one data path for single runs and ensembles.

An image dataset is a pool of raw uint8 training images (from which each run draws its
seeded subset), a dev set and a test set (:mod:`gradreg.data.splits`). A single run gets its
standardized float tensors (:func:`load_splits`); the ensemble engine keeps the raw pool
once and standardizes each member's images through :func:`gradreg.data.splits.standardization_table`,
the same table, so a member sees bit-identical inputs. SIN/SIN2 are small fixed float sets.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import data as D
from .data import splits as S


@dataclass(frozen=True)
class RawImages:
    """uint8 images ``(N, C, H, W)`` and int labels: the training pool, dev and test."""

    pool_x: np.ndarray
    pool_y: np.ndarray
    dev_x: np.ndarray
    dev_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def _channels(x: np.ndarray) -> np.ndarray:
    return x if x.ndim == 4 else x[:, None]


def _mnist(data_dir, dev_is_test: bool, download) -> RawImages:
    x, y = D.load_mnist("train", data_dir, download=download)
    xt, yt = D.load_mnist("test", data_dir, download=download)
    x, xt = _channels(x), _channels(xt)
    p = S.MNIST_POOL
    return RawImages(x[:p], y[:p], x[p:], y[p:], xt, yt)


def _cifar10(data_dir, dev_is_test: bool, download) -> RawImages:
    x, y = D.load_cifar10("train", data_dir, download=download)
    xt, yt = D.load_cifar10("test", data_dir, download=download)
    if dev_is_test:
        return RawImages(x, y, xt, yt, xt, yt)
    p = S.CIFAR10_POOL
    return RawImages(x[:p], y[:p], x[p:], y[p:], xt, yt)


@dataclass(frozen=True)
class DatasetSpec:
    kind: str  # "images" or "regression"
    raw: Callable | None = None  # (data_dir, dev_is_test, download) -> RawImages
    make: Callable | None = None  # (device) -> Splits, for fixed regression sets


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("images", raw=_mnist),
    "cifar10": DatasetSpec("images", raw=_cifar10),
    "sin": DatasetSpec("regression", make=lambda device: D.make_sin(device=device)),
    "sin2": DatasetSpec("regression", make=lambda device: D.make_sin2(device=device)),
}


# The input shape of one example, per dataset (for trial steps).
INPUT_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "sin": (1,), "sin2": (1,)}


@functools.lru_cache(maxsize=2)
def raw_images(dataset: str, data_dir: str | None, dev_is_test: bool = False, download=None) -> RawImages:
    raw = DATASETS[dataset].raw
    assert raw is not None, f"{dataset} is not an image dataset"
    return raw(data_dir, dev_is_test, download)


def fixed_training_set(cfg, n: int) -> None:
    if cfg.train_size is not None and cfg.train_size != n:
        raise ValueError(
            f"{cfg.dataset} has a fixed training set of {n} points; leave train_size out (None), "
            "or on the command line omit --train-size or pass --train-size none"
        )


def load_splits(cfg, data_dir=None, device="cpu", download=None) -> D.Splits:
    """The config's train/dev/test tensors on ``device``."""
    spec = DATASETS[cfg.dataset]
    if spec.kind == "regression":
        assert spec.make is not None  # every regression spec has make
        splits = spec.make(device)
        fixed_training_set(cfg, len(splits.x_train))
        return splits
    raw = raw_images(cfg.dataset, None if data_dir is None else str(data_dir), cfg.dev_is_test, download)
    n = len(raw.pool_x) if cfg.train_size is None else cfg.train_size
    return S.split_and_standardize(
        raw.pool_x,
        raw.pool_y,
        raw.dev_x,
        raw.dev_y,
        raw.test_x,
        raw.test_y,
        train_size=n,
        seed=cfg.seed,
        per_set_standardization=cfg.per_set_standardization,
        device=device,
    )

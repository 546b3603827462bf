"""Train/dev/test splits and standardization, as in the paper's code (docs/settings.md).

MNIST: the training subset for seed `s` is the first N of
`numpy.random.RandomState(s).permutation(50000)` over train[0:50000]; dev is
train[50000:60000]; test is the official 10k test set.

CIFAR-10: the same rule over a pool of train[0:45000]; dev is train[45000:50000], held out
(our choice: the original had no held-out dev set). `dev_is_test=True` reproduces the
original, which used the test set as its dev set (*original, leaks test*): then nothing is held
out, the pool is all of train[0:50000], and dev is a copy of the test set.

Standardization: pixels are divided by 255; ONE scalar mean and std (population std, ddof=0)
over all pixels and channels of the training subset, computed in float64, are applied to every
set. `per_set_standardization=True` reproduces the original bug: each set is standardized
with its own statistics. `Splits.mean`/`std` are always the training subset's.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch

from gradreg.data.cifar import load_cifar10
from gradreg.data.download import DEFAULT_SOURCES, DataSources, Fetch
from gradreg.data.errors import TrainSizeError
from gradreg.data.mnist import load_mnist

MNIST_POOL = 50_000
CIFAR10_POOL = 45_000


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """A dataset ready for training, all tensors on one device.

    Images are float32 with a channel dimension (MNIST `(N, 1, 28, 28)`, CIFAR
    `(N, 3, 32, 32)`, SIN `(N, 1)`); class labels are int64 `(N,)`, regression targets
    float32 `(N, 1)`. `mean` and `std` are the scalar statistics (of pixels/255) of the
    training subset; 0 and 1 where nothing was standardized.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_dev: torch.Tensor
    y_dev: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float
    std: float


def training_subset_indices(pool_size: int, train_size: int, seed: int) -> np.ndarray:
    """First `train_size` entries of `numpy.random.RandomState(seed).permutation(pool_size)`.

    Args:
        pool_size: The size of the training pool.
        train_size: The number of training examples, in `1..pool_size`.
        seed: The run's seed.

    Returns:
        Indices into the pool, `(train_size,)`.

    Raises:
        TrainSizeError: `train_size` is not in `1..pool_size` (a `ValueError`).
    """
    if not 1 <= train_size <= pool_size:
        raise TrainSizeError(f"train_size must be in 1..{pool_size} (the training pool), got {train_size}")
    return np.random.RandomState(seed).permutation(pool_size)[:train_size]


def pixel_histogram(images: np.ndarray) -> np.ndarray:
    """Counts of each uint8 value 0..255 over all of `images` (chunked, low memory).

    Args:
        images: A uint8 array of any shape.

    Returns:
        int64 `(256,)`.

    Raises:
        TypeError: `images` is not uint8.
    """
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    flat = images.reshape(-1)
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, flat.size, 1 << 24):
        counts += np.bincount(flat[start : start + (1 << 24)], minlength=256)
    return counts


def pixel_mean_std(images: np.ndarray) -> tuple[float, float]:
    """Scalar mean and population std (ddof=0) of `images / 255` over every pixel and channel.

    Computed exactly from the value histogram in float64; equal to
    `(images / 255).mean(), (images / 255).std()` without the float64 copy.

    Args:
        images: A uint8 array.

    Returns:
        `(mean, std)`.

    Raises:
        TypeError: `images` is not uint8.
        ValueError: `images` is empty.
    """
    counts = pixel_histogram(images)
    if counts.sum() == 0:
        raise ValueError("cannot standardize an empty set")
    values = np.arange(256, dtype=np.float64) / 255.0
    p = counts / counts.sum()
    mean = float(p @ values)
    std = float(np.sqrt(p @ (values - mean) ** 2))
    return mean, std


def standardization_table(mean: float, std: float) -> np.ndarray:
    """The float32 value of each uint8 pixel `v`: `(v / 255 - mean) / std`, evaluated in float64.

    Args:
        mean: The scalar mean of pixels/255.
        std: The scalar std of pixels/255.

    Returns:
        float32 `(256,)`.
    """
    return ((np.arange(256, dtype=np.float64) / 255.0 - mean) / std).astype(np.float32)


def standardize(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """`(images / 255 - mean) / std` as float32, evaluated in float64 once per pixel value.

    Args:
        images: A uint8 array.
        mean: The scalar mean of pixels/255.
        std: The scalar std of pixels/255.

    Returns:
        float32, shaped like `images`.
    """
    return standardization_table(mean, std)[images]


def set_statistics(x_train: np.ndarray, x_other: np.ndarray, per_set_standardization: bool) -> tuple[float, float]:
    """The statistics a set is standardized with.

    The training subset's (the paper's settings), or the set's own
    (`per_set_standardization`, the original's bug).

    Args:
        x_train: The training subset's uint8 images.
        x_other: The set's uint8 images.
        per_set_standardization: Use the set's own statistics.

    Returns:
        `(mean, std)`.
    """
    return pixel_mean_std(x_other if per_set_standardization else x_train)


def split_and_standardize(  # noqa: PLR0913 (three sets' images and labels, then the run's options)
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    x_dev: np.ndarray,
    y_dev: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    train_size: int,
    seed: int,
    per_set_standardization: bool = False,
    device: str | torch.device = "cpu",
) -> Splits:
    """Draw the seeded training subset from the pool, standardize, and move to `device`.

    See the module docstring for the conventions.

    Args:
        x_pool: The training pool's raw uint8 images `(N, C, H, W)` (or `(N, H, W)`, given a
            channel dim of 1).
        y_pool: Its integer labels.
        x_dev: The dev set's raw images.
        y_dev: Its labels.
        x_test: The test set's raw images.
        y_test: Its labels.
        train_size: The number of training examples drawn from the pool.
        seed: The run's seed.
        per_set_standardization: Standardize each set with its own statistics (the original's
            bug).
        device: Where the tensors go (default `"cpu"`).

    Returns:
        The splits.

    Raises:
        TrainSizeError: `train_size` is not in `1..len(x_pool)`.
    """
    indices = training_subset_indices(len(x_pool), train_size, seed)
    x_train, y_train = x_pool[indices], y_pool[indices]
    mean, std = pixel_mean_std(x_train)
    sets = []
    for x in (x_train, x_dev, x_test):
        m, s = (mean, std) if x is x_train else set_statistics(x_train, x, per_set_standardization)
        x = standardize(x if x.ndim == 4 else x[:, None], m, s)
        sets.append(torch.from_numpy(x).to(device))
    labels = [torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device) for y in (y_train, y_dev, y_test)]
    return Splits(sets[0], labels[0], sets[1], labels[1], sets[2], labels[2], mean, std)


def load_mnist_splits(  # noqa: PLR0913 (public loader: the split's options, then load_mnist's file options)
    train_size: int,
    seed: int,
    data_dir: str | os.PathLike | None = None,
    *,
    per_set_standardization: bool = False,
    device: str | torch.device = "cpu",
    download: bool | None = None,
    verify: bool = True,
    fetch: Fetch | None = None,
    sources: DataSources = DEFAULT_SOURCES,
    progress: bool = True,
) -> Splits:
    """MNIST as the paper used it: N seeded training images from train[0:50000].

    dev = train[50000:60000], test = the official test set; images `(N, 1, 28, 28)` float32,
    standardized with the training subset's scalar mean/std (module docstring). The paper's
    runs use `train_size=2000`, seeds 1..10. File options are those of `gradreg.data.load_mnist`.

    Args:
        train_size: The number of training images, in 1..50000.
        seed: The run's seed.
        data_dir: The explicit data directory, or None.
        per_set_standardization: Standardize each set with its own statistics (the original's
            bug).
        device: Where the tensors go (default `"cpu"`).
        download: Whether a missing file may be downloaded; None (default): only into the
            per-user cache directory.
        verify: Check the files' SHA-256 (default True).
        fetch: The fetcher (default `gradreg.data.download.urllib_fetch`).
        sources: URLs and checksums (default the official ones).
        progress: Show a download progress bar.

    Returns:
        The splits.

    Raises:
        TrainSizeError: `train_size` is not in 1..50000.
        DataNotFoundError: A file is missing and could not be downloaded.
        DataError: A file is corrupt (`ChecksumError`: its hash differs).
    """
    options: dict[str, Any] = dict(download=download, verify=verify, fetch=fetch, sources=sources, progress=progress)
    x, y = load_mnist("train", data_dir, **options)
    x_test, y_test = load_mnist("test", data_dir, **options)
    return split_and_standardize(
        x[:MNIST_POOL],
        y[:MNIST_POOL],
        x[MNIST_POOL:],
        y[MNIST_POOL:],
        x_test,
        y_test,
        train_size=train_size,
        seed=seed,
        per_set_standardization=per_set_standardization,
        device=device,
    )


def load_cifar10_splits(  # noqa: PLR0913 (public loader: the split's options, then load_cifar10's file options)
    train_size: int | None = None,
    seed: int = 1,
    data_dir: str | os.PathLike | None = None,
    *,
    dev_is_test: bool = False,
    per_set_standardization: bool = False,
    device: str | torch.device = "cpu",
    download: bool | None = None,
    verify: bool = True,
    fetch: Fetch | None = None,
    sources: DataSources = DEFAULT_SOURCES,
    progress: bool = True,
) -> Splits:
    """CIFAR-10: N seeded training images from train[0:45000], dev = train[45000:50000].

    Images `(N, 3, 32, 32)` float32, standardized as in the module docstring. File options are
    those of `gradreg.data.load_cifar10`.

    Args:
        train_size: The number of training images; None takes the whole pool (45,000, in seeded
            permuted order; Table 5). Table 3 uses 2,000.
        seed: The run's seed (default 1).
        data_dir: The explicit data directory, or None.
        dev_is_test: Original, leaks test: pool = all 50,000 training images, dev = test.
        per_set_standardization: Standardize each set with its own statistics (the original's
            bug).
        device: Where the tensors go (default `"cpu"`).
        download: Whether a missing file may be downloaded; None (default): only into the
            per-user cache directory.
        verify: Check the files' SHA-256 (default True).
        fetch: The fetcher (default `gradreg.data.download.urllib_fetch`).
        sources: URLs and checksums (default the official ones).
        progress: Show a download progress bar.

    Returns:
        The splits.

    Raises:
        TrainSizeError: `train_size` does not fit the pool.
        DataNotFoundError: A file is missing and could not be downloaded.
        DataError: A file is corrupt (`ChecksumError`: its hash differs).
    """
    options: dict[str, Any] = dict(download=download, verify=verify, fetch=fetch, sources=sources, progress=progress)
    x, y = load_cifar10("train", data_dir, **options)
    x_test, y_test = load_cifar10("test", data_dir, **options)
    if dev_is_test:
        x_pool, y_pool, x_dev, y_dev = x, y, x_test, y_test
    else:
        x_pool, y_pool = x[:CIFAR10_POOL], y[:CIFAR10_POOL]
        x_dev, y_dev = x[CIFAR10_POOL:], y[CIFAR10_POOL:]
    return split_and_standardize(
        x_pool,
        y_pool,
        x_dev,
        y_dev,
        x_test,
        y_test,
        train_size=len(x_pool) if train_size is None else train_size,
        seed=seed,
        per_set_standardization=per_set_standardization,
        device=device,
    )

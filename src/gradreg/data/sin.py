"""The synthetic SIN and SIN2 regression tasks (docs/settings.md, Table 7).

SIN train: `rng = numpy.random.RandomState(seed)`; first `x = rng.uniform(-1, 1, size=n)`,
then `noise = rng.normal(0, 0.1, size=n)` (this draw order is part of the definition);
`y = sin(5x) + noise`. Dev and test are both the 900-point grid
`numpy.arange(-1, 1, 2/900)` with clean targets `sin(5x)`. Values are computed in float64
and stored as float32 `(N, 1)` tensors; nothing is standardized (mean 0, std 1).

SIN2: the SIN training points followed by their copies shifted to `(x + 0.001, y)`.
"""

from __future__ import annotations

import numpy as np
import torch

from gradreg.data.splits import Splits

SIN_FREQUENCY = 5.0
SIN_NOISE_STD = 0.1
SIN_GRID_STEP = 2 / 900


def sin_grid() -> np.ndarray:
    """The dev/test inputs: `numpy.arange(-1, 1, 2/900)`.

    Returns:
        900 points, float64.
    """
    return np.arange(-1, 1, SIN_GRID_STEP)


def sin_training_points(seed: int = 10, n_train: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Float64 `(x, y)` of the SIN training set; see the module docstring for the draws.

    Args:
        seed: The `RandomState` seed (default 10).
        n_train: The number of points (default 100).

    Returns:
        `(x, y)`, each `(n_train,)` float64.
    """
    rng = np.random.RandomState(seed)
    x = rng.uniform(-1, 1, size=n_train)
    noise = rng.normal(0, SIN_NOISE_STD, size=n_train)
    return x, np.sin(SIN_FREQUENCY * x) + noise


def _regression_splits(x_train: np.ndarray, y_train: np.ndarray, device: str | torch.device) -> Splits:
    def column(v: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(v, dtype=np.float32).reshape(-1, 1)).to(device)

    grid = sin_grid()
    clean = np.sin(SIN_FREQUENCY * grid)
    return Splits(column(x_train), column(y_train), column(grid), column(clean), column(grid), column(clean), 0.0, 1.0)


def make_sin(seed: int = 10, n_train: int = 100, *, device: str | torch.device = "cpu") -> Splits:
    """SIN: `n_train` noisy samples of `sin(5x)` on U(-1, 1); dev = test = the 900-grid.

    Args:
        seed: The `RandomState` seed (default 10).
        n_train: The number of training points (default 100).
        device: Where the tensors go (default `"cpu"`).

    Returns:
        The splits, float32 `(N, 1)` tensors, mean 0 and std 1 (not standardized).
    """
    return _regression_splits(*sin_training_points(seed, n_train), device)


def make_sin2(
    seed: int = 10, n_train: int = 100, *, offset: float = 0.001, device: str | torch.device = "cpu"
) -> Splits:
    """SIN2: SIN's points, then each duplicated as `(x + offset, y)`: `2 * n_train` points.

    Args:
        seed: The `RandomState` seed (default 10).
        n_train: The number of SIN training points (default 100).
        offset: The shift of the copies (default 0.001).
        device: Where the tensors go (default `"cpu"`).

    Returns:
        The splits, float32 `(N, 1)` tensors, mean 0 and std 1 (not standardized).
    """
    x, y = sin_training_points(seed, n_train)
    return _regression_splits(np.concatenate([x, x + offset]), np.concatenate([y, y]), device)

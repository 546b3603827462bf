"""Split and standardization rules, and the SIN/SIN2 tasks, against independent NumPy code."""

import dataclasses

import numpy as np
import pytest
import torch

import gradreg.data as gd
import gradreg.data.splits as splits_module


def test_training_subset_indices_are_the_papers():
    idx = gd.training_subset_indices(50000, 2000, 1)
    np.testing.assert_array_equal(idx, np.random.RandomState(1).permutation(50000)[:2000])
    assert not np.array_equal(idx, gd.training_subset_indices(50000, 2000, 2))
    assert len(set(idx.tolist())) == 2000


@pytest.mark.parametrize("size", [0, 50001, -1])
def test_training_subset_size_is_checked(size):
    with pytest.raises(ValueError, match="train_size"):
        gd.training_subset_indices(50000, size, 1)


def test_pixel_mean_std_matches_float64_numpy():
    x = np.random.RandomState(0).randint(0, 256, (37, 3, 5, 4)).astype(np.uint8)
    mean, std = gd.pixel_mean_std(x)
    ref = x.astype(np.float64) / 255
    assert mean == pytest.approx(ref.mean(), rel=1e-13)
    assert std == pytest.approx(ref.std(), rel=1e-13)  # population std, ddof=0


def synthetic_pool(n=60, seed=0, shape=(1, 4, 4)):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, (n,) + shape).astype(np.uint8), rng.randint(0, 10, n)


def test_split_and_standardize_oracle():
    x, y = synthetic_pool()
    xd, yd = synthetic_pool(10, 1)
    xt, yt = synthetic_pool(12, 2)
    s = splits_module.split_and_standardize(x, y, xd, yd, xt, yt, train_size=20, seed=5)
    idx = np.random.RandomState(5).permutation(60)[:20]
    train = x[idx] / 255.0
    mean, std = train.mean(), train.std()
    for got, raw in [(s.x_train, x[idx]), (s.x_dev, xd), (s.x_test, xt)]:
        assert got.dtype == torch.float32 and got.shape == raw.shape
        np.testing.assert_allclose(got.numpy(), (raw / 255.0 - mean) / std, rtol=0, atol=1e-6)
    for got, ref in [(s.y_train, y[idx]), (s.y_dev, yd), (s.y_test, yt)]:
        assert got.dtype == torch.int64
        np.testing.assert_array_equal(got.numpy(), ref)
    assert (s.mean, s.std) == pytest.approx((mean, std))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.mean = 0.0

    per_set = splits_module.split_and_standardize(
        x, y, xd, yd, xt, yt, train_size=20, seed=5, per_set_standardization=True
    )
    np.testing.assert_allclose(
        per_set.x_dev.numpy(), (xd / 255.0 - (xd / 255.0).mean()) / (xd / 255.0).std(), atol=1e-6
    )
    torch.testing.assert_close(per_set.x_train, s.x_train)
    assert (per_set.mean, per_set.std) == (s.mean, s.std)


def test_split_adds_channel_dim_for_mnist_shaped_input():
    x, y = synthetic_pool(shape=(28, 28))
    s = splits_module.split_and_standardize(x, y, x[:3], y[:3], x[:4], y[:4], train_size=7, seed=1)
    assert s.x_train.shape == (7, 1, 28, 28) and s.x_test.shape == (4, 1, 28, 28)


def test_cifar_full_pool_default(monkeypatch):
    # 50,000 tiny images stand in for the real ones: only the index arithmetic is tested here.
    x = np.random.RandomState(0).randint(0, 256, (50000, 3, 1, 1)).astype(np.uint8)
    y = np.arange(50000) % 10
    test = (x[:100], y[:100])
    monkeypatch.setattr(splits_module, "load_cifar10", lambda split, *a, **k: (x, y) if split == "train" else test)
    s = gd.load_cifar10_splits(seed=7)
    assert s.x_train.shape == (45000, 3, 1, 1) and s.x_dev.shape == (5000, 3, 1, 1)
    idx = np.random.RandomState(7).permutation(45000)
    np.testing.assert_allclose(s.x_train.numpy(), (x[idx] / 255 - s.mean) / s.std, atol=1e-5)
    full = gd.load_cifar10_splits(seed=7, dev_is_test=True)
    assert full.x_train.shape[0] == 50000 and full.x_dev.shape[0] == 100


# --- SIN -----------------------------------------------------------------------------------


def test_sin_matches_numpy_oracle():
    s = gd.make_sin()
    rng = np.random.RandomState(10)
    x = rng.uniform(-1, 1, size=100)
    y = np.sin(5 * x) + rng.normal(0, 0.1, size=100)
    assert s.x_train.shape == (100, 1) and s.y_train.shape == (100, 1)
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.float32
    np.testing.assert_allclose(s.x_train[:, 0].numpy(), x, rtol=1e-6)
    np.testing.assert_allclose(s.y_train[:, 0].numpy(), y, rtol=1e-6, atol=1e-7)
    grid = np.arange(-1, 1, 2 / 900)
    assert len(grid) == 900 and s.x_test.shape == (900, 1) and s.x_dev.shape == (900, 1)
    np.testing.assert_allclose(s.x_test[:, 0].numpy(), grid, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(s.y_test[:, 0].numpy(), np.sin(5 * grid), atol=1e-6)
    torch.testing.assert_close(s.x_dev, s.x_test)
    torch.testing.assert_close(s.y_dev, s.y_test)
    assert (s.mean, s.std) == (0.0, 1.0)
    residual = s.y_train - torch.sin(5 * s.x_train)
    assert 0.07 < residual.std().item() < 0.13  # the noise is N(0, 0.1^2)
    assert not torch.equal(gd.make_sin(seed=11).x_train, s.x_train)


def test_sin2_duplicates_each_point_shifted():
    s, s2 = gd.make_sin(), gd.make_sin2()
    assert s2.x_train.shape == (200, 1)
    torch.testing.assert_close(s2.x_train[:100], s.x_train)
    torch.testing.assert_close(s2.x_train[100:], s.x_train + 0.001, rtol=0, atol=1e-7)
    torch.testing.assert_close(s2.y_train, torch.cat([s.y_train, s.y_train]))
    torch.testing.assert_close(s2.x_test, s.x_test)

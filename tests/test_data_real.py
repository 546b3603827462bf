"""Facts from shared/data/README.md, checked on the real files (skipped when they are absent).

The data directory is the one the README names: $GRADREG_DATA_DIR, else ``../shared/data`` (tests/conftest.py).
"""

import hashlib

import numpy as np
import pytest
import torch

import gradreg.data as gd
import gradreg.data.splits as splits_module
from conftest import DATA, needs_cifar, needs_mnist
from gradreg.data.download import OFFICIAL_SHA256

# Copied by hand from shared/data/README.md: the oracle for the library's table.
README_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
}


@pytest.fixture(scope="module")
def isolated_cache(tmp_path_factory):
    """Verification records go to a temporary cache, never to ~/.cache or the data dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        mp.delenv(gd.DATA_DIR_ENV, raising=False)
        yield


@pytest.fixture(scope="module")
def mnist(isolated_cache):
    return (gd.load_mnist("train", DATA, download=False), gd.load_mnist("test", DATA, download=False))


@pytest.fixture(scope="module")
def cifar(isolated_cache):
    return (gd.load_cifar10("train", DATA, download=False), gd.load_cifar10("test", DATA, download=False))


def test_checksum_table_matches_readme():
    assert dict(OFFICIAL_SHA256) == README_SHA256


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@needs_mnist
def test_mnist_arrays_are_the_official_files(mnist):
    # Re-encoding the decoded arrays must give back files with the README's hashes.
    (x, y), (xt, yt) = mnist
    for name, array in [
        ("train-images-idx3-ubyte", x),
        ("train-labels-idx1-ubyte", y),
        ("t10k-images-idx3-ubyte", xt),
        ("t10k-labels-idx1-ubyte", yt),
    ]:
        assert hashlib.sha256(idx_bytes(array)).hexdigest() == README_SHA256[name], name


@needs_mnist
def test_mnist_readme_facts(mnist):
    (x, y), (xt, yt) = mnist
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert round(float(x.mean(dtype=np.float64)), 3) == 33.318


@needs_mnist
def test_mnist_splits_match_numpy_oracle(mnist):
    (x, y), (xt, yt) = mnist
    s = gd.load_mnist_splits(2000, 1, DATA, download=False)
    idx = np.random.RandomState(1).permutation(50000)[:2000]
    train = x[idx].astype(np.float64) / 255
    mean, std = train.mean(), train.std()
    assert s.mean == pytest.approx(mean, rel=1e-12) and s.std == pytest.approx(std, rel=1e-12)
    assert s.x_train.shape == (2000, 1, 28, 28) and s.x_train.dtype == torch.float32
    np.testing.assert_allclose(s.x_train[:, 0].numpy(), (train - mean) / std, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(s.y_train.numpy(), y[idx])
    assert s.y_train.dtype == torch.int64
    dev = x[50000:].astype(np.float64) / 255
    np.testing.assert_allclose(s.x_dev[:, 0].numpy(), (dev - mean) / std, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(s.y_dev.numpy(), y[50000:])
    test = xt.astype(np.float64) / 255
    np.testing.assert_allclose(s.x_test[:, 0].numpy(), (test - mean) / std, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(s.y_test.numpy(), yt)


@needs_mnist
def test_mnist_per_set_standardization_flag(mnist):
    (x, _), (xt, _) = mnist
    s = gd.load_mnist_splits(2000, 1, DATA, download=False, per_set_standardization=True)
    test = xt.astype(np.float64) / 255
    np.testing.assert_allclose(s.x_test[:, 0].numpy(), (test - test.mean()) / test.std(), rtol=0, atol=1e-5)
    for t in (s.x_train, s.x_dev, s.x_test):  # each set standardized by itself
        assert abs(t.double().mean().item()) < 1e-5 and abs(t.double().std().item() - 1) < 1e-3
    shared = gd.load_mnist_splits(2000, 1, DATA, download=False)
    torch.testing.assert_close(s.x_train, shared.x_train)
    assert abs(shared.x_test.double().mean().item()) > 1e-3  # not per set by default


@needs_mnist
def test_mnist_train_size_too_large(isolated_cache):
    with pytest.raises(ValueError, match="50000"):
        gd.load_mnist_splits(50001, 1, DATA, download=False)


@needs_cifar
def test_cifar_arrays_are_the_official_files(cifar):
    (x, y), (xt, yt) = cifar

    def records(images, labels):
        return np.concatenate([labels[:, None].astype(np.uint8), images.reshape(len(images), -1)], axis=1).tobytes()

    for i in range(5):
        chunk = slice(10000 * i, 10000 * (i + 1))
        digest = hashlib.sha256(records(x[chunk], y[chunk])).hexdigest()
        assert digest == README_SHA256[f"data_batch_{i + 1}.bin"]
    assert hashlib.sha256(records(xt, yt)).hexdigest() == README_SHA256["test_batch.bin"]


@needs_cifar
def test_cifar_readme_facts(cifar):
    (x, y), (xt, yt) = cifar
    assert x.shape == (50000, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    assert xt.shape == (10000, 3, 32, 32)
    assert y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert yt[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    rgb = x.mean(axis=(0, 2, 3), dtype=np.float64)
    np.testing.assert_allclose(rgb, [125.31, 122.95, 113.87], atol=0.005)
    meta = (DATA / "cifar10/cifar-10-batches-bin/batches.meta.txt").read_text().split()
    assert tuple(meta) == gd.CIFAR10_CLASSES


@needs_cifar
def test_cifar_splits_hold_out_dev(cifar, monkeypatch):
    (x, y), (xt, yt) = cifar
    monkeypatch.setattr(
        splits_module, "load_cifar10", lambda split, *a, **k: cifar[0] if split == "train" else cifar[1]
    )
    s = gd.load_cifar10_splits(2000, 3)
    idx = np.random.RandomState(3).permutation(45000)[:2000]
    train = x[idx].astype(np.float64) / 255
    mean, std = train.mean(), train.std()
    assert s.mean == pytest.approx(mean, rel=1e-12) and s.std == pytest.approx(std, rel=1e-12)
    assert s.x_train.shape == (2000, 3, 32, 32)
    np.testing.assert_allclose(s.x_train.numpy(), (train - mean) / std, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(s.y_train.numpy(), y[idx])
    np.testing.assert_array_equal(s.y_dev.numpy(), y[45000:])
    np.testing.assert_allclose(s.x_dev.numpy(), (x[45000:] / 255 - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(s.y_test.numpy(), yt)

    leaky = gd.load_cifar10_splits(2000, 3, dev_is_test=True)
    idx50 = np.random.RandomState(3).permutation(50000)[:2000]
    np.testing.assert_array_equal(leaky.y_train.numpy(), y[idx50])
    np.testing.assert_array_equal(leaky.y_dev.numpy(), yt)
    torch.testing.assert_close(leaky.x_dev, leaky.x_test)
    with pytest.raises(ValueError, match="45000"):
        gd.load_cifar10_splits(45001, 3)

"""File formats, corruption, verification records and file resolution, on small synthetic files."""

import gzip
import hashlib
import lzma
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import gradreg.data as gd
import gradreg.data.integrity as integrity
from conftest import DATA

REAL_MNIST = DATA / "mnist"
MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(gd.DATA_DIR_ENV, raising=False)


def no_fetch(url, dest, progress):
    raise AssertionError(f"tests must not download ({url})")


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def compress(data: bytes, suffix: str) -> bytes:
    return {"": lambda d: d, ".gz": gzip.compress, ".xz": lzma.compress}[suffix](data)


def write_mnist(root: Path, suffix: str = ".gz", n: int = 7, seed: int = 0) -> dict:
    """Small fake MNIST under root/mnist; returns the arrays and a checksum table for them."""
    rng = np.random.RandomState(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (n, 28, 28)),
        "train-labels-idx1-ubyte": rng.randint(0, 10, n),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (n - 2, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.randint(0, 10, n - 2),
    }
    (root / "mnist").mkdir(parents=True, exist_ok=True)
    checksums = {}
    for name, array in arrays.items():
        raw = idx_bytes(array)
        checksums[name] = hashlib.sha256(raw).hexdigest()
        (root / "mnist" / (name + suffix)).write_bytes(compress(raw, suffix))
    return {"arrays": arrays, "sources": gd.DataSources(checksums=checksums)}


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
def test_mnist_reads_raw_and_compressed_idx(tmp_path, suffix):
    made = write_mnist(tmp_path, suffix)
    x, y = gd.load_mnist("test", tmp_path, sources=made["sources"], fetch=no_fetch)
    np.testing.assert_array_equal(x, made["arrays"]["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(y, made["arrays"]["t10k-labels-idx1-ubyte"])
    assert x.dtype == np.uint8 and y.dtype == np.int64 and x.flags.writeable


def test_truncated_idx_is_a_clear_error(tmp_path):
    made = write_mnist(tmp_path, "")
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(gd.DataError, match="truncated") as err:
        gd.load_mnist("test", tmp_path, sources=made["sources"])
    assert str(path) in str(err.value)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    made = write_mnist(tmp_path, ".gz")
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(gd.DataError, match="truncated or corrupt") as err:
        gd.load_mnist("test", tmp_path, sources=made["sources"])
    assert str(path) in str(err.value)


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"real MNIST not found at {REAL_MNIST}")
def test_truncated_copy_of_real_idx_file(tmp_path):
    (tmp_path / "mnist").mkdir()
    for name in MNIST_NAMES[2:]:
        shutil.copy(REAL_MNIST / f"{name}.gz", tmp_path / "mnist")
    raw = gzip.decompress((tmp_path / "mnist/t10k-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "mnist/t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "mnist/t10k-labels-idx1-ubyte").write_bytes(raw[:5000])
    with pytest.raises(gd.DataError, match="t10k-labels-idx1-ubyte.*truncated"):
        gd.load_mnist("test", tmp_path)


def test_wrong_magic_is_rejected(tmp_path):
    made = write_mnist(tmp_path, "")
    path = tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x01" + path.read_bytes()[4:])  # float type code
    with pytest.raises(gd.DataError, match="not an IDX file"):
        gd.load_mnist("test", tmp_path, sources=made["sources"])


def test_flipped_byte_is_a_checksum_error(tmp_path):
    made = write_mnist(tmp_path, ".gz")
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[500] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(raw)))
    expected = made["sources"].checksums["t10k-images-idx3-ubyte"]
    with pytest.raises(gd.ChecksumError) as err:
        gd.load_mnist("test", tmp_path, sources=made["sources"])
    message = str(err.value)
    assert str(path) in message and expected in message
    assert hashlib.sha256(bytes(raw)).hexdigest() in message
    gd.load_mnist("test", tmp_path, sources=made["sources"], verify=False)  # explicitly off


def count_hashes(monkeypatch) -> list:
    calls = []
    real = integrity.sha256_hex
    monkeypatch.setattr(integrity, "sha256_hex", lambda data: calls.append(1) or real(data))
    return calls


def test_verification_is_recorded_and_not_repeated(tmp_path, monkeypatch):
    made = write_mnist(tmp_path, ".gz")
    calls = count_hashes(monkeypatch)
    gd.load_mnist("test", tmp_path, sources=made["sources"])
    assert len(calls) == 2
    assert (tmp_path / "mnist" / integrity.SIDECAR_NAME).is_file()
    gd.load_mnist("test", tmp_path, sources=made["sources"])
    assert len(calls) == 2  # both files recognised as unchanged
    path = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    gd.load_mnist("test", tmp_path, sources=made["sources"])
    assert len(calls) == 3  # only the touched file is hashed again
    gd.load_mnist("test", tmp_path, sources=made["sources"], verify=False)
    assert len(calls) == 3


def test_corrupted_file_is_rehashed_despite_record(tmp_path):
    made = write_mnist(tmp_path, "")
    gd.load_mnist("test", tmp_path, sources=made["sources"])
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))  # same size, new mtime
    with pytest.raises(gd.ChecksumError):
        gd.load_mnist("test", tmp_path, sources=made["sources"])


def test_read_only_data_dir_records_in_user_cache(tmp_path, monkeypatch):
    made = write_mnist(tmp_path / "data", ".gz")
    (tmp_path / "data" / "mnist").chmod(0o555)
    try:
        calls = count_hashes(monkeypatch)
        gd.load_mnist("test", tmp_path / "data", sources=made["sources"])
        gd.load_mnist("test", tmp_path / "data", sources=made["sources"])
        assert len(calls) == 2
        assert not (tmp_path / "data" / "mnist" / integrity.SIDECAR_NAME).exists()
        assert (tmp_path / "xdg" / "gradreg" / integrity.CACHE_FILE_NAME).is_file()
    finally:
        (tmp_path / "data" / "mnist").chmod(0o755)


def test_missing_file_names_every_searched_place(tmp_path, monkeypatch):
    explicit, env, cache = tmp_path / "explicit", tmp_path / "env", tmp_path / "xdg" / "gradreg"
    monkeypatch.setenv(gd.DATA_DIR_ENV, str(env))
    with pytest.raises(gd.DataNotFoundError) as err:
        gd.load_mnist("test", explicit, fetch=no_fetch)
    assert isinstance(err.value, FileNotFoundError)
    message = str(err.value)
    for root in (explicit, env, cache):
        for suffix in ("", ".gz", ".xz"):
            assert str(root / "mnist" / f"t10k-images-idx3-ubyte{suffix}") in message
    assert "download=True" in message
    assert len(err.value.searched) == 9


def test_cifar_missing_names_both_layouts(tmp_path):
    with pytest.raises(gd.DataNotFoundError) as err:
        gd.load_cifar10("test", tmp_path, fetch=no_fetch)
    message = str(err.value)
    for rel in (
        "cifar10/cifar-10-batches-bin/test_batch.bin",
        "cifar10/cifar-10-batches-bin/test_batch.bin.xz",
        "cifar10/cifar-10-batches-py/test_batch",
    ):
        assert str(tmp_path / rel) in message


def test_resolution_order(tmp_path, monkeypatch):
    explicit = write_mnist(tmp_path / "explicit", seed=1)["arrays"]
    env = write_mnist(tmp_path / "env", seed=2)["arrays"]
    cache = write_mnist(tmp_path / "xdg" / "gradreg", seed=3)["arrays"]
    unchecked = gd.DataSources(checksums={})
    key = "t10k-labels-idx1-ubyte"
    monkeypatch.setenv(gd.DATA_DIR_ENV, str(tmp_path / "env"))
    assert gd.data_dir_candidates(tmp_path / "explicit") == (
        tmp_path / "explicit",
        tmp_path / "env",
        tmp_path / "xdg" / "gradreg",
    )
    np.testing.assert_array_equal(gd.load_mnist("test", tmp_path / "explicit", sources=unchecked)[1], explicit[key])
    np.testing.assert_array_equal(gd.load_mnist("test", sources=unchecked)[1], env[key])
    monkeypatch.delenv(gd.DATA_DIR_ENV)
    np.testing.assert_array_equal(gd.load_mnist("test", sources=unchecked)[1], cache[key])
    # a file missing from the first directory is found in the next
    for name in MNIST_NAMES:
        (tmp_path / "explicit" / "mnist" / f"{name}.gz").unlink()
    np.testing.assert_array_equal(gd.load_mnist("test", tmp_path / "explicit", sources=unchecked)[1], cache[key])


# --- CIFAR-10 ------------------------------------------------------------------------------


def cifar_arrays(n: int, seed: int):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, (n, 3, 32, 32)).astype(np.uint8), rng.randint(0, 10, n)


def cifar_bin(images, labels) -> bytes:
    return np.concatenate([labels[:, None].astype(np.uint8), images.reshape(len(images), -1)], axis=1).tobytes()


def cifar_py_batch(images, labels, protocol: int) -> bytes:
    batch = {
        b"batch_label": b"synthetic",
        b"labels": [int(v) for v in labels],
        b"data": images.reshape(len(images), -1),
        b"filenames": [b"x.png"] * len(labels),
    }
    return pickle.dumps(batch, protocol=protocol)


@pytest.mark.parametrize("suffix", ["", ".xz", ".gz"])
def test_cifar_binary_batches(tmp_path, suffix):
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    made, checksums = {}, {}
    for i, batch in enumerate(CIFAR_BATCHES):
        made[batch] = cifar_arrays(3 + i, seed=i)
        raw = cifar_bin(*made[batch])
        checksums[f"{batch}.bin"] = hashlib.sha256(raw).hexdigest()
        (folder / f"{batch}.bin{suffix}").write_bytes(compress(raw, suffix))
    sources = gd.DataSources(checksums=checksums)
    x, y = gd.load_cifar10("train", tmp_path, sources=sources, fetch=no_fetch)
    np.testing.assert_array_equal(x, np.concatenate([made[b][0] for b in CIFAR_BATCHES[:5]]))
    np.testing.assert_array_equal(y, np.concatenate([made[b][1] for b in CIFAR_BATCHES[:5]]))
    assert x.shape == (3 + 4 + 5 + 6 + 7, 3, 32, 32) and y.dtype == np.int64
    # CHW: channel 0 of an image is the first 1024 pixel bytes of its record
    record = cifar_bin(*made["test_batch"])[:3073]
    xt, _ = gd.load_cifar10("test", tmp_path, sources=sources)
    assert xt[0, 0].tobytes() == record[1:1025] and xt[0, 2].tobytes() == record[2049:]


def test_cifar_truncated_binary_batch(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "test_batch.bin").write_bytes(cifar_bin(*cifar_arrays(4, 0))[:-10])
    with pytest.raises(gd.DataError, match="test_batch.bin.*not a whole number"):
        gd.load_cifar10("test", tmp_path)


@pytest.mark.parametrize("protocol,legacy_numpy_name", [(2, False), (2, True), (4, False)])
def test_cifar_python_batches(tmp_path, protocol, legacy_numpy_name):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    made = {b: cifar_arrays(2 + i, seed=10 + i) for i, b in enumerate(CIFAR_BATCHES)}
    for batch, arrays in made.items():
        data = cifar_py_batch(*arrays, protocol)
        if legacy_numpy_name:  # as the official files (numpy 1) name the reconstructor
            data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            assert b"numpy.core.multiarray\n_reconstruct" in data
        (folder / batch).write_bytes(data)
    x, y = gd.load_cifar10("train", tmp_path, fetch=no_fetch)
    np.testing.assert_array_equal(x, np.concatenate([made[b][0] for b in CIFAR_BATCHES[:5]]))
    np.testing.assert_array_equal(y, np.concatenate([made[b][1] for b in CIFAR_BATCHES[:5]]))
    xt, yt = gd.load_cifar10("test", tmp_path)
    np.testing.assert_array_equal(xt, made["test_batch"][0])
    assert xt.dtype == np.uint8 and yt.dtype == np.int64


class RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class Evaluates:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    payload = {b"data": RunsShell(f"touch {marker}"), b"labels": [0]}
    (folder / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    assert pickle.loads((folder / "test_batch").read_bytes())[b"data"] == 0  # it is live
    marker.unlink()
    with pytest.raises(gd.DataError, match=r"refusing to load global (posix|os)\.system"):
        gd.load_cifar10("test", tmp_path)
    assert not marker.exists()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evaluates()}))
    with pytest.raises(gd.DataError, match=r"builtins\.eval"):
        gd.load_cifar10("test", tmp_path)


def test_restricted_unpickler_allows_only_the_listed_globals():
    unpickler = gd.RestrictedUnpickler(__import__("io").BytesIO(b""))
    assert unpickler.find_class("numpy", "ndarray") is np.ndarray
    for module, name in [
        ("builtins", "getattr"),
        ("numpy", "load"),
        ("subprocess", "Popen"),
        ("numpy.core.multiarray", "scalar"),
    ]:
        with pytest.raises(pickle.UnpicklingError):
            unpickler.find_class(module, name)


def test_python_batch_with_wrong_content(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}))
    with pytest.raises(gd.DataError, match="uint8"):
        gd.load_cifar10("test", tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(gd.DataError, match="dict"):
        gd.load_cifar10("test", tmp_path)


def test_errors_survive_pickling(tmp_path):
    # e.g. raised inside a worker process and re-raised in the parent
    errors = [
        gd.ChecksumError(tmp_path / "f", "a" * 64, "b" * 64),
        gd.DataNotFoundError("f", [tmp_path / "x", tmp_path / "y"], ["offline"]),
        gd.DownloadError("f", ["u: 404"]),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)

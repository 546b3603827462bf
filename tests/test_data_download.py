"""Downloading, offline: a local HTTP server and injected fake fetchers."""

import functools
import gzip
import hashlib
import http.server
import io
import tarfile
import threading
import urllib.error
from pathlib import Path

import numpy as np
import pytest

import gradreg.data as gd
from gradreg.data.download import download_file

TEST_NAMES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(gd.DATA_DIR_ENV, raising=False)
    for var in ("no_proxy", "NO_PROXY"):  # the local server must never go through a proxy
        monkeypatch.setenv(var, "*")


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_mnist_test_files():
    """{name: raw IDX bytes} for a 4-example fake MNIST test split."""
    rng = np.random.RandomState(0)
    return {TEST_NAMES[0]: idx_bytes(rng.randint(0, 256, (4, 28, 28))), TEST_NAMES[1]: idx_bytes(rng.randint(0, 10, 4))}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def http_root(tmp_path):
    """A quiet HTTP server on 127.0.0.1 serving tmp_path/'www'; yields (root dir, base URL)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_mnist_download_from_local_http_server(tmp_path, http_root):
    www, url = http_root
    raw = fake_mnist_test_files()
    (www / "good").mkdir()
    for name, data in raw.items():
        (www / "good" / f"{name}.gz").write_bytes(gzip.compress(data))
    sources = gd.DataSources(
        checksums={n: sha(d) for n, d in raw.items()}, mnist_urls=(f"{url}/missing/", f"{url}/good/")
    )  # 404, then ok
    x, y = gd.load_mnist("test", sources=sources, progress=False)  # default: cache dir only
    assert x.shape == (4, 28, 28)
    np.testing.assert_array_equal(x.reshape(-1), np.frombuffer(raw[TEST_NAMES[0]][16:], np.uint8))
    cache = tmp_path / "xdg" / "gradreg"
    assert files_under(cache) == [
        f"mnist/{integrity_sidecar()}",
        f"mnist/{TEST_NAMES[0]}.gz",
        f"mnist/{TEST_NAMES[1]}.gz",
    ]
    x2, _ = gd.load_mnist("test", sources=sources, fetch=refuse)  # now found locally
    np.testing.assert_array_equal(x, x2)


def integrity_sidecar():
    from gradreg.data.integrity import SIDECAR_NAME

    return SIDECAR_NAME


def refuse(url, dest, progress):
    raise AssertionError(f"unexpected download of {url}")


def test_unreachable_server_is_a_not_found_error(tmp_path, http_root):
    _, url = http_root
    sources = gd.DataSources(mnist_urls=(f"{url}/nothing-here/",))
    with pytest.raises(gd.DataNotFoundError) as err:
        gd.load_mnist("test", sources=sources, progress=False)
    message = str(err.value)
    assert "404" in message and f"{url}/nothing-here/{TEST_NAMES[0]}.gz" in message
    for suffix in ("", ".gz", ".xz"):
        assert str(tmp_path / "xdg" / "gradreg" / "mnist" / f"{TEST_NAMES[0]}{suffix}") in message
    assert files_under(tmp_path / "xdg") == []


def test_fake_fetcher_and_download_policy(tmp_path):
    raw = fake_mnist_test_files()
    sources = gd.DataSources(
        checksums={n: sha(d) for n, d in raw.items()}, mnist_urls=("https://example.invalid/mnist/",)
    )
    fetched = []

    def fetch(url, dest, progress):
        fetched.append(url)
        Path(dest).write_bytes(gzip.compress(raw[url.rsplit("/", 1)[1][:-3]]))

    with pytest.raises(gd.DataNotFoundError, match="download=True"):  # named dir: no download
        gd.load_mnist("test", tmp_path / "named", sources=sources, fetch=fetch)
    with pytest.raises(gd.DataNotFoundError, match="download=False"):
        gd.load_mnist("test", sources=sources, fetch=fetch, download=False)
    assert fetched == []
    x, _ = gd.load_mnist("test", tmp_path / "named", sources=sources, fetch=fetch, download=True)
    assert fetched == [f"https://example.invalid/mnist/{n}.gz" for n in TEST_NAMES]
    assert (tmp_path / "named" / "mnist" / f"{TEST_NAMES[0]}.gz").is_file()
    assert x.shape == (4, 28, 28)


def test_corrupt_download_leaves_nothing_behind(tmp_path):
    good = b"the real file"
    dest = tmp_path / "target" / "file.bin"

    def corrupt(url, path, progress):
        Path(path).write_bytes(b"the real fil\x00")

    with pytest.raises(gd.ChecksumError) as err:
        download_file(["https://example.invalid/f"], dest, sha(good), fetch=corrupt)
    message = str(err.value)
    assert str(dest) in message and sha(good) in message and sha(b"the real fil\x00") in message
    assert "the copy downloaded from https://example.invalid/f is corrupt" in message
    assert "nothing was installed" in message and "delete it" not in message  # there is nothing to delete
    assert not (tmp_path / "target").exists()  # not even the directory it made


def test_interrupted_download_leaves_nothing_behind(tmp_path):
    def half_then_fail(url, path, progress):
        Path(path).write_bytes(b"half")
        raise urllib.error.URLError("connection reset")

    with pytest.raises(gd.DataNotFoundError, match="connection reset"):
        gd.load_mnist("test", fetch=half_then_fail, progress=False)
    assert files_under(tmp_path / "xdg") == []

    def interrupted(url, path, progress):
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_file(["u"], tmp_path / "d" / "f.gz", None, fetch=interrupted)
    assert not (tmp_path / "d").exists()


def test_corrupt_mnist_download_through_loader(tmp_path):
    raw = fake_mnist_test_files()
    sources = gd.DataSources(checksums={n: sha(d) for n, d in raw.items()})

    def fetch(url, dest, progress):
        Path(dest).write_bytes(gzip.compress(b"\0\0\x08\x01" + b"garbage"))

    with pytest.raises(gd.ChecksumError, match=TEST_NAMES[0]):
        gd.load_mnist("test", sources=sources, fetch=fetch)
    assert files_under(tmp_path / "xdg") == []


def cifar_tarball(batches: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def fake_cifar_batches():
    rng = np.random.RandomState(1)
    batches = {}
    for b in CIFAR_BATCHES:
        labels = rng.randint(0, 10, (3, 1)).astype(np.uint8)
        batches[b] = np.concatenate([labels, rng.randint(0, 256, (3, 3072)).astype(np.uint8)], axis=1).tobytes()
    return batches


def test_cifar_download_from_local_http_server(tmp_path, http_root):
    www, url = http_root
    batches = fake_cifar_batches()
    (www / "cifar-10-binary.tar.gz").write_bytes(cifar_tarball(batches))
    sources = gd.DataSources(
        checksums={f"{b}.bin": sha(d) for b, d in batches.items()},
        cifar10_binary_urls=(f"{url}/cifar-10-binary.tar.gz",),
    )
    x, y = gd.load_cifar10("train", sources=sources, progress=False)
    assert x.shape == (15, 3, 32, 32)
    assert y[:3].tolist() == list(batches["data_batch_1"][::3073][:3])
    folder = tmp_path / "xdg" / "gradreg" / "cifar10" / "cifar-10-batches-bin"
    assert files_under(folder) == sorted([integrity_sidecar()] + [f"{b}.bin" for b in CIFAR_BATCHES])
    gd.load_cifar10("test", sources=sources, fetch=refuse)  # all six came with one download


def test_corrupt_cifar_archive_member(tmp_path):
    batches = fake_cifar_batches()
    checksums = {f"{b}.bin": sha(d) for b, d in batches.items()}
    checksums["data_batch_3.bin"] = sha(b"something else")
    archive = cifar_tarball(batches)

    def fetch(url, dest, progress):
        Path(dest).write_bytes(archive)

    with pytest.raises(gd.ChecksumError, match="data_batch_3.bin"):
        gd.load_cifar10("train", sources=gd.DataSources(checksums=checksums), fetch=fetch)
    folder = tmp_path / "xdg" / "gradreg" / "cifar10" / "cifar-10-batches-bin"
    # the verified members before it are installed; no archive, no partial file
    assert files_under(folder) == sorted([integrity_sidecar(), "data_batch_1.bin", "data_batch_2.bin"])


def test_a_mirror_with_a_corrupt_copy_is_passed_over_for_the_next(tmp_path):
    """A bad copy on the first mirror used to end the download with a checksum error although
    the second mirror had the file; now it falls through, as an unreachable mirror does."""
    good = b"the real file"
    dest = tmp_path / "sub" / "file.bin"
    tried = []

    def fetch(url, path, progress):
        tried.append(url)
        Path(path).write_bytes(b"tampered" if "first" in url else good)

    assert download_file(["https://first.invalid/f", "https://second.invalid/f"], dest, sha(good), fetch=fetch) == dest
    assert tried == ["https://first.invalid/f", "https://second.invalid/f"]
    assert dest.read_bytes() == good
    assert sorted(p.name for p in dest.parent.iterdir() if not p.name.startswith(".gradreg")) == ["file.bin"]

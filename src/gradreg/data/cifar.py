"""CIFAR-10 from the official binary batches or the official python (pickle) batches.

Binary layout, preferred: `cifar10/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin`,
raw or `.xz`/`.gz`; each record is 1 label byte then 3072 pixel bytes (1024 R, 1024 G,
1024 B, each 32×32 row-major). Python layout, the fallback:
`cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch}`, pickled dicts read by
`RestrictedUnpickler` (never a plain `pickle.load`). The README gives checksums for the
binary files only, so python batches are checked structurally but not hashed.
"""

from __future__ import annotations

import _codecs
import importlib
import io
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gradreg.data.download import (
    CIFAR10_BIN_FILES,
    DEFAULT_SOURCES,
    DataSources,
    Fetch,
    download_tar_members,
    locate_or_download,
)
from gradreg.data.errors import DataError
from gradreg.data.integrity import check_sha256, read_decompressed
from gradreg.data.paths import COMPRESSION_SUFFIXES, strip_compression_suffix

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
BIN_DIR = "cifar10/cifar-10-batches-bin"
PY_DIR = "cifar10/cifar-10-batches-py"
RECORD_BYTES = 1 + 3 * 32 * 32


def parse_cifar_binary(data: bytes, source: str | os.PathLike = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Decode a binary batch into uint8 `(N, 3, 32, 32)` CHW images and int64 `(N,)` labels.

    Args:
        data: The file's decompressed bytes.
        source: The file, for messages.

    Returns:
        `(images, labels)`.

    Raises:
        DataError: The length is not a whole number of records, or a label is outside 0..9.
    """
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise DataError(
            f"{source}: {len(data)} bytes is not a whole number of "
            f"{RECORD_BYTES}-byte CIFAR records (truncated or corrupt)"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    images = records[:, 1:].reshape(-1, 3, 32, 32).copy()
    return images, _checked_labels(labels, source)


def _checked_labels(labels: np.ndarray, source) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{source}: labels outside 0..9 (corrupt file?)")
    return labels


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else callable.

    `find_class` allows only the globals an official CIFAR python batch needs (numpy's array
    reconstructor, `ndarray`, `dtype`, and `_codecs.encode` used by protocol-2 pickles of bytes)
    and raises `pickle.UnpicklingError` for any other, so a malicious file cannot run code
    (`os.system`, `eval`, ...).
    """

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str):
        """The global `module.name`, if it is one of `ALLOWED`.

        Args:
            module: The global's module.
            name: The global's name.

        Returns:
            (Any): numpy's array reconstructor, `numpy.ndarray`, `numpy.dtype` or `_codecs.encode`.

        Raises:
            pickle.UnpicklingError: Any other global.
        """
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "_codecs":
            return _codecs.encode
        return getattr(np, name)


def _numpy_reconstruct():
    # numpy 2 renamed numpy.core to numpy._core; old pickles name either.
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    return multiarray._reconstruct


def parse_cifar_pickle(data: bytes, source: str | os.PathLike = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Decode a python batch (dict with b'data' uint8 N×3072 and b'labels') safely.

    Args:
        data: The file's decompressed bytes.
        source: The file, for messages.

    Returns:
        `(images, labels)`: uint8 `(N, 3, 32, 32)` CHW images and int64 `(N,)` labels.

    Raises:
        DataError: Anything else in the pickle, or a disallowed global (naming `source`).
    """
    try:
        batch = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DataError(f"{source}: not a valid CIFAR python batch ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{source}: expected a dict with keys b'data' and b'labels'")
    images, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072:
        raise DataError(f"{source}: b'data' must be a uint8 array of shape (N, 3072)")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{source}: b'labels' is not a list of integers") from e
    if labels.shape != (len(images),):
        raise DataError(f"{source}: {labels.shape} labels for {len(images)} images")
    return images.reshape(-1, 3, 32, 32).copy(), _checked_labels(labels, source)


def cifar10_file(
    batch: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool | None = None,
    fetch: Fetch | None = None,
    sources: DataSources = DEFAULT_SOURCES,
    progress: bool = True,
) -> Path:
    """Path of a CIFAR-10 batch (`'data_batch_1'` .. `'test_batch'`), downloading if allowed.

    In each data directory, tries the binary layout (`.bin`, `.bin.xz`, `.bin.gz`) then the
    python layout. A download fetches the official binary archive once and installs all six
    `.bin` files (raw) under `cifar10/cifar-10-batches-bin/`.

    Args:
        batch: The batch's name.
        data_dir: The explicit data directory, or None.
        download: Whether a missing file may be downloaded; None (default): only into the
            per-user cache directory (see `gradreg.data.paths.download_allowed`).
        fetch: The fetcher (default `gradreg.data.download.urllib_fetch`).
        sources: URLs and checksums (default the official ones).
        progress: Show a download progress bar.

    Returns:
        The file found or downloaded.

    Raises:
        DataNotFoundError: It is nowhere and could not be downloaded.
    """
    candidates = [f"{BIN_DIR}/{batch}.bin{s}" for s in COMPRESSION_SUFFIXES] + [
        f"{PY_DIR}/{batch}{s}" for s in COMPRESSION_SUFFIXES
    ]

    def install(root: Path) -> Path:
        members = {f"cifar-10-batches-bin/{name}": sources.checksums.get(name) for name in CIFAR10_BIN_FILES}
        download_tar_members(sources.cifar10_binary_urls, members, root / BIN_DIR, fetch=fetch, progress=progress)
        return root / BIN_DIR / f"{batch}.bin"

    return locate_or_download(batch, candidates, data_dir, download, install)


def read_cifar10_file(
    path: str | os.PathLike, *, verify: bool = True, sources: DataSources = DEFAULT_SOURCES, data: bytes | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one batch file, binary or python by its directory/name; verify it if a hash is known.

    Args:
        path: The file.
        verify: Check the SHA-256 where one is known (binary files only; default True).
        sources: Where the known checksums come from.
        data: The file's already-decompressed bytes, if read before.

    Returns:
        `(images, labels)`: uint8 `(N, 3, 32, 32)` and int64 `(N,)`.

    Raises:
        DataError: The file cannot be decompressed or parsed.
        ChecksumError: The hash differs from the known one.
    """
    path = Path(path)
    data = read_decompressed(path) if data is None else data
    name = strip_compression_suffix(path.name)
    parse = parse_cifar_binary if name.endswith(".bin") else parse_cifar_pickle
    images, labels = parse(data, path)
    check_sha256(path, data, sources.checksums.get(name), verify=verify)
    return images, labels


def load_cifar10(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool | None = None,
    verify: bool = True,
    fetch: Fetch | None = None,
    sources: DataSources = DEFAULT_SOURCES,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The official CIFAR-10 `split` (`'train'`: batches 1..5 = 50,000; `'test'`: 10,000).

    Search, download and verification work as in `gradreg.data.load_mnist`. The (slow, xz)
    decompression of the train batches runs in threads.

    Args:
        split: `'train'` or `'test'`.
        data_dir: The explicit data directory, or None.
        download: Whether a missing file may be downloaded; None (default): only into the
            per-user cache directory (see `gradreg.data.paths.download_allowed`).
        verify: Check each binary file's decompressed SHA-256 (default True).
        fetch: The fetcher (default `gradreg.data.download.urllib_fetch`).
        sources: URLs and checksums (default the official ones).
        progress: Show a download progress bar.

    Returns:
        `(images, labels)`: uint8 `(N, 3, 32, 32)` CHW raw pixels and int64 `(N,)` labels, in
        the official batch order.

    Raises:
        ValueError: An unknown split.
        DataNotFoundError: A file is missing and could not be downloaded.
        DataError: A file is corrupt.
        ChecksumError: A file's hash differs from the known one.
    """
    if split not in CIFAR10_BATCHES:
        raise ValueError(f"split must be one of {sorted(CIFAR10_BATCHES)}, got {split!r}")
    paths = [
        cifar10_file(b, data_dir, download=download, fetch=fetch, sources=sources, progress=progress)
        for b in CIFAR10_BATCHES[split]
    ]
    with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1)) as pool:
        contents = list(pool.map(read_decompressed, paths))
    parts = [read_cifar10_file(p, verify=verify, sources=sources, data=d) for p, d in zip(paths, contents)]
    return (np.concatenate([images for images, _ in parts]), np.concatenate([labels for _, labels in parts]))

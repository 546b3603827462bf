"""MNIST from the official IDX files (raw, `.gz` or `.xz`)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from gradreg.data.download import DEFAULT_SOURCES, DataSources, Fetch, download_file, locate_or_download
from gradreg.data.errors import DataError
from gradreg.data.integrity import check_sha256, read_decompressed
from gradreg.data.paths import COMPRESSION_SUFFIXES, strip_compression_suffix

IDX_UBYTE = 0x08
MNIST_SPLITS = {"train": "train", "test": "t10k"}


def parse_idx(data: bytes, source: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Decode an IDX file of unsigned bytes into a writable uint8 array of its stated shape.

    Checks the magic number (`00 00 08 ndim`) and that the length is exactly header plus
    `prod(shape)`.

    Args:
        data: The file's decompressed bytes.
        source: The file, for messages.

    Returns:
        A uint8 array of the shape the header states.

    Raises:
        DataError: Any violation (naming `source`).
    """
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != IDX_UBYTE or data[3] == 0:
        raise DataError(
            f"{source}: not an IDX file of unsigned bytes (magic {data[:4].hex() or 'missing'}, expected 000008xx)"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: truncated IDX header ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{source}: IDX file {kind}: {len(data)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def mnist_file(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool | None = None,
    fetch: Fetch | None = None,
    sources: DataSources = DEFAULT_SOURCES,
    progress: bool = True,
) -> Path:
    """Path of the MNIST file `name` (e.g. `'t10k-labels-idx1-ubyte'`), downloading if allowed.

    Looks for `mnist/<name>`, `mnist/<name>.gz`, `mnist/<name>.xz` in each data directory
    (see `gradreg.data.paths`); a download is stored as `mnist/<name>.gz`.

    Args:
        name: The decompressed file name.
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

    def install(root: Path) -> Path:
        urls = [base + name + ".gz" for base in sources.mnist_urls]
        return download_file(
            urls, root / "mnist" / (name + ".gz"), sources.checksums.get(name), fetch=fetch, progress=progress
        )

    return locate_or_download(name, [f"mnist/{name}{s}" for s in COMPRESSION_SUFFIXES], data_dir, download, install)


def read_idx_file(
    path: str | os.PathLike, *, verify: bool = True, sources: DataSources = DEFAULT_SOURCES
) -> np.ndarray:
    """Decode one IDX file; with `verify`, check its decompressed SHA-256 when it is known.

    Args:
        path: The file (raw, `.gz` or `.xz`).
        verify: Check the SHA-256 (default True).
        sources: Where the known checksums come from.

    Returns:
        The uint8 array.

    Raises:
        DataError: The file cannot be decompressed or is not a valid IDX file.
        ChecksumError: The hash differs from the known one.
    """
    path = Path(path)
    data = read_decompressed(path)
    array = parse_idx(data, path)
    check_sha256(path, data, sources.checksums.get(strip_compression_suffix(path.name)), verify=verify)
    return array


def load_mnist(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool | None = None,
    verify: bool = True,
    fetch: Fetch | None = None,
    sources: DataSources = DEFAULT_SOURCES,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The official MNIST `split` (`'train'`: 60,000, `'test'`: 10,000), in file order.

    Files are found as described in `gradreg.data.paths`.

    Args:
        split: `'train'` or `'test'`.
        data_dir: The explicit data directory, or None.
        download: Whether a missing file may be downloaded; None (default): only into the
            per-user cache directory (see `gradreg.data.paths.download_allowed`).
        verify: Check each file's decompressed SHA-256 against `sources.checksums` (default;
            cached per unchanged file).
        fetch: The fetcher (default `gradreg.data.download.urllib_fetch`).
        sources: URLs and checksums (default the official ones).
        progress: Show a download progress bar.

    Returns:
        `(images, labels)`: uint8 `(N, 28, 28)` raw pixels 0..255 and int64 `(N,)` labels
        0..9.

    Raises:
        ValueError: An unknown split.
        DataNotFoundError: A file is missing and could not be downloaded.
        DataError: A file is corrupt, of the wrong shape, or has labels out of range.
        ChecksumError: A file's hash differs from the known one.
    """
    if split not in MNIST_SPLITS:
        raise ValueError(f"split must be one of {sorted(MNIST_SPLITS)}, got {split!r}")
    prefix = MNIST_SPLITS[split]
    kwargs: dict[str, Any] = dict(download=download, fetch=fetch, sources=sources, progress=progress)
    image_path = mnist_file(f"{prefix}-images-idx3-ubyte", data_dir, **kwargs)
    label_path = mnist_file(f"{prefix}-labels-idx1-ubyte", data_dir, **kwargs)
    images = read_idx_file(image_path, verify=verify, sources=sources)
    labels = read_idx_file(label_path, verify=verify, sources=sources)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{image_path}: expected images of shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{label_path}: expected {len(images)} labels to match {image_path}, got shape {labels.shape}")
    if labels.max(initial=0) > 9:
        raise DataError(f"{label_path}: label {labels.max()} out of range 0..9")
    return images, labels.astype(np.int64)

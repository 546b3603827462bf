"""Reading (decompressing) data files and checking them against known SHA-256 sums.

Checksums are always of the *decompressed* bytes, so a file verifies the same whether it is
stored raw, as `.gz` or as `.xz`.

A successful verification is remembered in a small JSON file keyed by the file's absolute path,
its size and its `mtime_ns` (and the expected hash), so unchanged files are not re-hashed on
every run. That record is written atomically (temp file + `os.replace`) next to the data file
(`.gradreg-verified.json`) when that directory is writable (by access and by its mode bits,
so a directory marked read-only is never written, even by root), otherwise in the per-user cache
directory (`verified.json`); if neither is writable nothing is remembered. A file modified in
place without changing its size or mtime would escape re-verification; that is the accepted cost.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import tempfile
import threading
import zlib
from pathlib import Path

from gradreg.data.errors import ChecksumError, DataError
from gradreg.data.paths import default_cache_dir

SIDECAR_NAME = ".gradreg-verified.json"
CACHE_FILE_NAME = "verified.json"

_cache_lock = threading.Lock()  # read-modify-write of the JSON record within one process


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of `data`.

    Args:
        data: The bytes.

    Returns:
        64 lower-case hex digits.
    """
    return hashlib.sha256(data).hexdigest()


def read_decompressed(path: str | os.PathLike, *, compression_from: str | None = None) -> bytes:
    """All bytes of `path`, decompressed according to the suffix of `compression_from`.

    Args:
        path: The file.
        compression_from: The name whose suffix decides; defaults to the file's own name:
            `.gz` is gzip, `.xz` is xz, anything else is read raw.

    Returns:
        The decompressed bytes.

    Raises:
        DataError: Undecodable or truncated compressed data (the message names the file).
    """
    path = Path(path)
    name = compression_from or path.name
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        if name.endswith(".xz"):
            with lzma.open(path, "rb") as f:
                return f.read()
    except (EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot decompress ({type(e).__name__}: {e}); the file is truncated or corrupt") from e
    return path.read_bytes()


def check_sha256(path: str | os.PathLike, data: bytes, expected: str | None, *, verify: bool = True) -> None:
    """Raise `ChecksumError` unless `sha256_hex(data) == expected`.

    The hash is skipped when an earlier check of the same unchanged file is on record, and a
    passing check is recorded.

    Args:
        path: The file.
        data: The decompressed bytes of `path`.
        expected: The expected hex digest; None (no known checksum): nothing is checked.
        verify: False: nothing is checked.

    Raises:
        ChecksumError: The hash differs.
    """
    if not verify or expected is None:
        return
    if is_recorded_verified(path, expected):
        return
    require_sha256(path, data, expected)
    record_verified(path, expected)


def require_sha256(path: str | os.PathLike, data: bytes, expected: str | None) -> None:
    """Raise `ChecksumError` naming `path` unless `data` hashes to `expected`.

    Always hashes (no record is consulted or written).

    Args:
        path: The file, for the message.
        data: The decompressed bytes.
        expected: The expected hex digest; None means no known checksum (nothing is checked).

    Raises:
        ChecksumError: The hash differs.
    """
    if expected is None:
        return
    actual = sha256_hex(data)
    if actual != expected:
        raise ChecksumError(path, expected, actual)


def _record_files(path: Path) -> tuple[Path, Path]:
    return path.parent / SIDECAR_NAME, default_cache_dir() / CACHE_FILE_NAME


def _fingerprint(path: Path, sha256: str) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _read_records(record_file: Path) -> dict:
    try:
        records = json.loads(record_file.read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def is_recorded_verified(path: str | os.PathLike, expected: str) -> bool:
    """Whether `path`, unchanged (same size and mtime_ns), was verified against `expected`.

    Args:
        path: The file.
        expected: The expected hex digest.

    Returns:
        True where a record (beside the file or in the cache directory) matches.
    """
    path = Path(path).resolve()
    fingerprint = _fingerprint(path, expected)
    return any(_read_records(f).get(str(path)) == fingerprint for f in _record_files(path))


def record_verified(path: str | os.PathLike, sha256: str) -> None:
    """Remember that `path` (as it is now) has decompressed SHA-256 `sha256`. Best effort.

    The record goes beside the file where its directory is writable, else into the cache
    directory; an `OSError` only skips it.

    Args:
        path: The file.
        sha256: Its verified hex digest.
    """
    path = Path(path).resolve()
    fingerprint = _fingerprint(path, sha256)
    for record_file in _record_files(path):
        try:
            record_file.parent.mkdir(parents=True, exist_ok=True)
            if not _is_writable_dir(record_file.parent):
                continue
            with _cache_lock:
                records = _read_records(record_file)
                records[str(path)] = fingerprint
                _write_atomically(record_file, json.dumps(records, indent=1, sort_keys=True))
            return
        except OSError:
            continue


def _is_writable_dir(directory: Path) -> bool:
    # Mode bits too: a directory marked read-only stays untouched even for root.
    return os.access(directory, os.W_OK) and bool(directory.stat().st_mode & 0o222)


def _write_atomically(dest: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

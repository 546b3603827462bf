"""Where data files are looked for.

Resolution order (every file is looked up in each of these, first hit wins):

1. the explicit `data_dir` argument (the CLI passes `--data-dir`; `--download` is
   `download=True`);
2. the directory named by the environment variable `GRADREG_DATA_DIR`;
3. the per-user cache directory `$XDG_CACHE_HOME/gradreg` (default `~/.cache/gradreg`).

Each directory has the layout of `shared/data`: `mnist/<idx files>` and
`cifar10/cifar-10-batches-bin/*.bin` (or `cifar10/cifar-10-batches-py/*`). Files may be raw
or compressed with gzip (`.gz`) or xz (`.xz`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

DATA_DIR_ENV = "GRADREG_DATA_DIR"
COMPRESSION_SUFFIXES = ("", ".gz", ".xz")


def default_cache_dir() -> Path:
    """The per-user cache directory: `$XDG_CACHE_HOME/gradreg`, else `~/.cache/gradreg`.

    Returns:
        The path (not created).
    """
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "gradreg"


def data_dir_candidates(data_dir: str | os.PathLike | None = None) -> tuple[Path, ...]:
    """The directories searched for data files, in resolution order, without duplicates.

    Args:
        data_dir: The explicit data directory, or None.

    Returns:
        `data_dir`, `$GRADREG_DATA_DIR` (where set) and the cache directory, user-expanded.
    """
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]).expanduser())
    dirs.append(default_cache_dir())
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return tuple(unique)


def download_allowed(download: bool | None, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether a missing file may be downloaded.

    `download=None` (the default everywhere) allows it only when the download would land in the
    per-user cache directory, i.e. when neither `data_dir` nor `GRADREG_DATA_DIR` names a
    directory: gradreg never writes into a directory the user named unless told
    `download=True` (on the command line: `--download`).

    Args:
        download: True or False to decide; None for the rule above.
        data_dir: The explicit data directory, or None.

    Returns:
        Whether to download.
    """
    if download is not None:
        return bool(download)
    return data_dir is None and not os.environ.get(DATA_DIR_ENV)


def first_existing(paths: Iterable[Path]) -> Path | None:
    """The first path that is an existing file, or None.

    Args:
        paths: Candidate paths, in order.

    Returns:
        The first existing file, or None.
    """
    for p in paths:
        if p.is_file():
            return p
    return None


def strip_compression_suffix(name: str) -> str:
    """`'x.bin.xz'` -> `'x.bin'`; the checksum table is keyed by decompressed names.

    Args:
        name: A file name.

    Returns:
        `name` without a trailing `.gz` or `.xz`.
    """
    for suffix in (".gz", ".xz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name

"""Exceptions raised by `gradreg.data`.

All of them name the file concerned, so a bad or missing dataset is never silent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class DataError(ValueError):
    """A data file exists but is unusable: corrupt, truncated, or of the wrong format."""


class ChecksumError(DataError):
    """The SHA-256 of a file's decompressed bytes differs from the expected one.

    Args:
        path: The file (or the name of the download).
        expected: The expected hex digest.
        actual: The digest found.
        source: The URL of a fresh download (never installed); None for a file on disk.
    """

    def __init__(self, path: str | os.PathLike, expected: str, actual: str, source: str | None = None):
        self.path = Path(path)
        self.expected = expected
        self.actual = actual
        self.source = source
        if source is None:  # a file on disk
            text = "the file is corrupt or not the official one (delete it and fetch it again)"
        else:  # a fresh download, never installed
            text = f"the copy downloaded from {source} is corrupt or not the official one; nothing was installed"
        super().__init__(f"{path}: SHA-256 of the decompressed bytes is {actual}, expected {expected}; {text}")

    def __reduce__(self):  # picklable across processes despite the custom signature
        return type(self), (self.path, self.expected, self.actual, self.source)


class TrainSizeError(ValueError):
    """A training-set size that the training pool cannot give (more examples than it has, or none)."""


class DataNotFoundError(FileNotFoundError):
    """A data file is missing from every place it was looked for (and could not be downloaded).

    Args:
        name: The file's name.
        searched: Every path tried, in order (kept as `searched`).
        reasons: Why downloading did not happen or failed (kept as `reasons`).
    """

    def __init__(self, name: str, searched: Sequence[Path], reasons: Sequence[str] = ()):
        self.name = name
        self.searched = tuple(Path(p) for p in searched)
        self.reasons = tuple(reasons)
        lines = [f"data file {name!r} not found; looked for:"]
        lines += [f"  {p}" for p in self.searched]
        lines += [f"  ({r})" for r in self.reasons]
        lines.append(
            "Pass data_dir= (CLI: --data-dir) or set GRADREG_DATA_DIR to a directory holding "
            "mnist/ and cifar10/cifar-10-batches-bin/. To fetch the files: pass --download on "
            "the command line, or download=True in Python."
        )
        super().__init__("\n".join(lines))

    def __str__(self) -> str:  # FileNotFoundError's default __str__ would show the errno tuple
        return self.args[0]

    def __reduce__(self):
        return type(self), (self.name, self.searched, self.reasons)


class DownloadError(OSError):
    """Every URL tried for a file failed (network or server error).

    Args:
        name: The file's name.
        reasons: How each URL failed (kept as `reasons`).
    """

    def __init__(self, name: str, reasons: Sequence[str]):
        self.name = name
        self.reasons = tuple(reasons)
        super().__init__(f"could not download {name}: " + "; ".join(self.reasons))

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return type(self), (self.name, self.reasons)

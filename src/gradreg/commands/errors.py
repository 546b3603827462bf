"""The command line's user errors: one exception hierarchy, chosen where the error is raised.

A command raises `CLIError` (exit status 1) or `UsageError` (a bad argument,
exit status 2) for a failure the user can act on; `gradreg` prints it as one line. The
library's own error types that mean the same (a damaged store, a missing data file, a
diverged run) are listed in `as_cli_error`. A `ValueError` or `TypeError` from the
library is a user error only where a command calls a validation it knows (building the
config, parsing `--reg`) and converts it there; anywhere else it is a bug, and its
traceback shows.
"""

from __future__ import annotations

import argparse


class CLIError(ValueError):
    """An expected failure of a command: `str(e)` is the one line shown, `code` the exit status."""

    code = 1


class UsageError(CLIError):
    """A command-line value that gradreg rejects (exit status 2, like argparse's own errors)."""

    code = 2


def data_not_found(e, data_dir: str | None, download: bool) -> str:
    """A `gradreg.data.DataNotFoundError` as one line, worded for the command line.

    Args:
        e: The error, with the file's `name` and the `reasons` no download happened.
        data_dir: The `--data-dir` given, or None.
        download: Whether `--download` was given.

    Returns:
        Where the file was looked for, and what to pass to find or fetch it.
    """
    from ..data.paths import data_dir_candidates

    roots = data_dir_candidates(data_dir)
    line = f"data file {e.name!r} not found in any of {', '.join(str(r) for r in roots)}"
    failures = [r for r in e.reasons if r.startswith("download into")]
    if failures:
        return line + f"; {'; '.join(failures)}"
    if download:
        return line
    return (
        line + f"; pass --download to fetch it into {roots[0]}, or --data-dir (or GRADREG_DATA_DIR) naming "
        "a directory that holds mnist/ and cifar10/"
    )


def as_cli_error(e: BaseException, args: argparse.Namespace) -> CLIError | None:
    """`e` as the one-line error `gradreg` shows, or None for a bug, whose traceback must show.

    Args:
        e: What a command raised.
        args: The command's arguments (for the wording of a missing data file).

    Returns:
        `e` itself for a `CLIError`; a `CLIError` (exit status 1) for the library's error
        types that name a bad file, a failed download, a damaged store, a diverged run or an
        `OSError`; None for anything else.
    """
    from ..data.errors import DataError, DataNotFoundError, DownloadError
    from ..result import TrainingDiverged
    from ..sweep.store import StoreError

    if isinstance(e, CLIError):
        return e
    if isinstance(e, DataNotFoundError):
        return CLIError(data_not_found(e, getattr(args, "data_dir", None), getattr(args, "download", False)))
    if isinstance(e, TrainingDiverged):
        return CLIError(f"training diverged at {e}")
    if isinstance(e, (StoreError, DataError, DownloadError)):
        return CLIError(str(e))
    if isinstance(e, OSError):
        return CLIError(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
    return None

"""Checks a command makes before any work starts.

A bad path, missing data or an absent device then never costs a finished run. Each raises a
one-line `errors.CLIError`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import CLIError, UsageError, data_not_found


def check_writable_output(path, *, directory: bool = False, label: str = "output", if_dir: str | None = None) -> Path:
    """Make sure `path` can be written, before any work: a real probe, not a permission guess.

    Missing directories are created, a temporary file is created next to the target and
    removed, and the directories made for the probe are removed again (the write itself makes
    them).

    Args:
        path: The file to be (re)placed, or with `directory` the directory to write into.
        directory: Whether `path` is a directory.
        label: How the error names the path, e.g. `--out`.
        if_dir: The advice when a file's path is a directory (default: give a file name).

    Returns:
        `path`, as a `pathlib.Path`.

    Raises:
        CLIError: One line naming `label`, the path and the reason.
    """
    path = Path(path)
    where = f"{label} {path}"
    if directory:
        if path.exists() and not path.is_dir():
            raise CLIError(f"{where}: is a file, not a directory")
        target = path
    else:
        if path.is_dir():
            raise CLIError(f"{where}: is a directory; " + (if_dir or f"give a file name, e.g. {path / 'result.json'}"))
        target = path.parent
    # The nearest existing ancestor must be a directory (a path under a file cannot be made).
    ancestor = target
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CLIError(f"{where}: {ancestor} is a file, not a directory")
    created = [d for d in [target, *target.parents] if not d.exists()]
    try:
        _probe(target, path.name, where)
    finally:
        # Leave no trace: the directories are made again when the output is written.
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
    return path


def _probe(target: Path, name: str, where: str) -> None:
    """Create `target` (a directory) and a temporary file in it, and remove the file."""
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"{where}: cannot create the directory {target} ({e.strerror or e})") from e
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{name}.", suffix=".probe", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CLIError(f"{where}: cannot write into {target} ({e.strerror or e})") from e


def check_data_dir(data_dir: str | None, download: bool) -> None:
    """`--data-dir`, when given, must be a directory, or be made by `--download`.

    Args:
        data_dir: `--data-dir`, or None.
        download: `--download`.

    Raises:
        CLIError: `data_dir` is a file, or is missing and nothing will fetch into it.
    """
    if data_dir is None:
        return
    d = Path(data_dir).expanduser()
    if d.is_dir():
        return
    if d.exists():
        raise CLIError(f"--data-dir {data_dir}: is a file, not a directory")
    if not download:
        raise CLIError(
            f"--data-dir {data_dir}: no such directory; give the directory that holds mnist/ and cifar10/, "
            "or add --download to fetch the data into it"
        )


def prepare_data(datasets: Iterable[str], data_dir: str | None, download: bool) -> None:
    """Find every file of `datasets` before training starts, downloading them with `download`.

    The files are looked for where the library's loaders will look for them
    (`gradreg.data.paths`).

    Args:
        datasets: Dataset names; only mnist and cifar10 have files.
        data_dir: `--data-dir`, or None.
        download: `--download`.

    Raises:
        CLIError: A file is in none of the places searched, or its download failed.
    """
    from ..data.cifar import CIFAR10_BATCHES, cifar10_file
    from ..data.download import MNIST_FILES
    from ..data.errors import DataNotFoundError
    from ..data.mnist import mnist_file

    flag = True if download else None  # None: the library's default (only into the user cache)
    try:
        for dataset in sorted(set(datasets)):
            if dataset == "mnist":
                for name in MNIST_FILES:
                    mnist_file(name, data_dir, download=flag)
            elif dataset == "cifar10":
                for batch in CIFAR10_BATCHES["train"] + CIFAR10_BATCHES["test"]:
                    cifar10_file(batch, data_dir, download=flag)
    except DataNotFoundError as e:
        raise CLIError(data_not_found(e, data_dir, download)) from e


def check_device(device: str) -> None:
    """A CUDA `device` (`cuda`, `cuda:1`) needs CUDA here.

    Args:
        device: `--device`.

    Raises:
        UsageError: `device` is a CUDA device and CUDA is not available.
    """
    if str(device).split(":", 1)[0] != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"--device {device} was requested, but CUDA is not available here; use --device cpu")


def open_store_checked(path: Path) -> None:
    """An existing result store must be readable whole before a command adds to it.

    Args:
        path: The store's file, which need not exist.

    Raises:
        CLIError: `path` is a directory.
        gradreg.sweep.store.StoreError: The store is damaged (left unchanged).
    """
    from ..sweep.store import Store

    if path.is_dir():
        raise CLIError(f"result store {path}: is a directory; move it away")
    if path.exists():
        with Store(path) as store:
            store.verify()


def check_report_outputs(name: str, profile: str | None, out: Path) -> None:
    """Every file of an experiment's report must be writable.

    Args:
        name: The experiment.
        profile: Its profile, or None for a report without one.
        out: The directory the report goes to.

    Raises:
        CLIError: A report file cannot be written (or is a directory).
    """
    from ..sweep.report import report_paths

    for p in report_paths(name, profile, out):
        check_writable_output(p, label="report file", if_dir="move it away")

"""Building blocks of the commands' parsers.

The subparser itself, argument types, and the options several commands share.
"""

from __future__ import annotations

import argparse
import math

DATA_DIR_HELP = (
    "directory holding mnist/ and cifar10/, searched first; then $GRADREG_DATA_DIR and "
    "~/.cache/gradreg are searched (default: only those two)"
)
DOWNLOAD_HELP = (
    "fetch missing MNIST / CIFAR-10 files from the official sources, verified by SHA-256, into "
    "--data-dir (else $GRADREG_DATA_DIR, else ~/.cache/gradreg); without it, files are fetched only "
    "into ~/.cache/gradreg and only when no data directory is named"
)
DEVICE_HELP = "cpu or cuda (default: cpu)"
DEBUG_HELP = "on an error, show the full traceback instead of one line"


def add_command_parser(subparsers, name: str, *, summary: str, description: str | None) -> argparse.ArgumentParser:
    """The parser of `gradreg NAME`, with `--debug` and without abbreviated options.

    Every command is made here, so none accepts a prefix of an option (`--ray` for
    `--ray-address`) and each takes `--debug` after its name as well as before it.

    Args:
        subparsers: What `ArgumentParser.add_subparsers` returned.
        name: The command's name.
        summary: The one-line summary that `gradreg --help` lists.
        description: The text at the top of `gradreg NAME --help`.

    Returns:
        The new parser, for the command's own options.
    """
    debug = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return subparsers.add_parser(name, parents=[debug], help=summary, description=description, allow_abbrev=False)


def add_data_options(p: argparse.ArgumentParser) -> None:
    """Add `--data-dir` and `--download`: where the datasets are, and whether to fetch them.

    Args:
        p: A command's parser.
    """
    p.add_argument("--data-dir", default=None, metavar="DIR", help=DATA_DIR_HELP)
    p.add_argument("--download", action="store_true", help=DOWNLOAD_HELP)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1.

    Args:
        text: The option's value as typed.

    Returns:
        The integer.

    Raises:
        argparse.ArgumentTypeError: `text` is not an integer >= 1.
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0.

    Args:
        text: The option's value as typed.

    Returns:
        The number.

    Raises:
        argparse.ArgumentTypeError: `text` is not a finite number > 0.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value

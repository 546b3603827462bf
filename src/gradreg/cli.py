"""The ``gradreg`` command line. Each command is a module of :mod:`gradreg.commands` with
``add_parser(subparsers)`` and ``run(args) -> int``; this module builds the parser from them
and runs the command chosen. Options of ``gradreg train`` are derived from the fields of
:class:`gradreg.config.TrainConfig`; any option left out takes the paper's value for the
chosen dataset.

Every command checks what it will write (``--out``, ``--json``, the checkpoint, the result
store, the report files) and the data it will read before any work starts, so a bad path
never costs a finished run. An expected failure prints one line on stderr, ``gradreg
COMMAND: error: ...``, and exits with 2 (bad arguments) or 1 (anything else); ``--debug``
shows the traceback instead. Which failures are expected is decided by their type, where
they are raised (:mod:`gradreg.commands.errors`); anything else is a bug, and its traceback
shows.
"""

from __future__ import annotations

import argparse
import sys

from .commands import bench, index, report, run, train
from .commands import list as list_  # the module of `gradreg list`; `list` would hide the builtin
from .commands.checks import check_writable_output
from .commands.config_options import add_config_options, config_from_args
from .commands.errors import CLIError, UsageError, as_cli_error
from .commands.options import DEBUG_HELP

__all__ = [
    "COMMANDS",
    "CLIError",
    "UsageError",
    "add_config_options",
    "build_parser",
    "check_writable_output",
    "config_from_args",
    "main",
]

# In the order `gradreg --help` lists them.
COMMANDS = (train, bench, run, report, index, list_)


class _Version(argparse.Action):
    """``--version``: ``gradreg <version>``, and in a git checkout the commit (looked up only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"gradreg {_version()}")
        parser.exit()


def _version() -> str:
    """``gradreg.__version__``, plus ``+g<short commit>`` when the source is a git checkout.

    The commit is the one that run records name (:func:`gradreg.sweep.store.code_version`).
    """
    from . import __version__
    from .sweep.store import code_version

    _, plus, commit = code_version().partition("+")
    return __version__ + plus + commit


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``gradreg`` and of every command in :data:`COMMANDS`.

    No parser accepts an abbreviated option (``--ray`` for ``--ray-address``).

    Returns:
        The root parser; ``args.func(args)`` runs the command parsed.
    """
    parser = argparse.ArgumentParser(
        prog="gradreg", description="Input-gradient regularization: train, sweep, report.", allow_abbrev=False
    )
    parser.add_argument("--version", action=_Version, help="print the gradreg version (and git commit) and exit")
    parser.add_argument("--debug", action="store_true", default=False, help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``gradreg`` with ``argv`` (default: ``sys.argv[1:]``).

    Args:
        argv: The arguments after ``gradreg``.

    Returns:
        The command's exit status. A user error exits (``SystemExit``) with one line on
        stderr; any other exception propagates, as does a user error under ``--debug``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    problem = args.check_args(args) if hasattr(args, "check_args") else None
    if problem is not None:
        parser.error(problem)
    try:
        return args.func(args)
    except Exception as e:
        error = as_cli_error(e, args)
        if error is None or args.debug:
            raise
        message = " ".join(str(error).split())  # one line, whatever the library's message looks like
        parser.exit(error.code, f"gradreg {args.command}: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())

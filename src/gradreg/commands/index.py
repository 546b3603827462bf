"""`gradreg index`: OUT/README.md, the index of the evidence."""

from __future__ import annotations

import argparse
from pathlib import Path

from .checks import check_writable_output
from .errors import CLIError
from .options import add_command_parser

DESCRIPTION = (
    "Rebuild OUT/README.md, the index of the evidence: every experiment's runs, CPU time and "
    "verdict against the paper, and the experiments left for a GPU with their projected cost."
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `gradreg index` to `subparsers`.

    Args:
        subparsers: What `ArgumentParser.add_subparsers` returned.

    Returns:
        The command's parser.
    """
    from ..paper.experiments import PROFILES

    ix = add_command_parser(
        subparsers, "index", summary="rebuild OUT/README.md, the index of the evidence", description=DESCRIPTION
    )
    ix.add_argument(
        "--out", default="results", metavar="DIR", help="directory holding gradreg.sqlite (default: results)"
    )
    ix.add_argument(
        "--profile",
        default="published",
        choices=list(PROFILES),
        help="the profile whose plans are indexed (default: published)",
    )
    ix.add_argument(
        "--readme",
        default=None,
        metavar="FILE",
        help="also write the cell-by-cell table (ours against the paper) into FILE, between its headline markers",
    )
    ix.set_defaults(func=run)
    return ix


def run(args: argparse.Namespace) -> int:
    """Write the index, after checking the store, `--out` and `--readme`.

    Args:
        args: The parsed options of `gradreg index`.

    Returns:
        The exit status, 0.

    Raises:
        CLIError: No result store in `--out`, or `--readme` is missing or has no headline
            block to fill; or a check of the store or the outputs fails.
    """
    from ..sweep.index import HEADLINE_BEGIN, HEADLINE_END, write_index
    from ..sweep.runner import STORE_NAME

    out = Path(args.out)
    if not (out / STORE_NAME).exists():
        raise CLIError(f"no result store at {out / STORE_NAME}; run `gradreg report NAME --out {args.out}` first")
    check_writable_output(out / "README.md", label="--out")
    readme = None
    if args.readme is not None:
        readme = Path(args.readme)
        if not readme.is_file():
            raise CLIError(f"--readme {args.readme}: no such file")
        text = readme.read_text()
        if HEADLINE_BEGIN not in text or HEADLINE_END not in text:
            raise CLIError(f"--readme {args.readme}: it has no '{HEADLINE_BEGIN}' ... '{HEADLINE_END}' block to fill")
    print(write_index(out, args.profile, readme))
    return 0

"""`gradreg list`: the experiments and how many runs each profile trains."""

from __future__ import annotations

import argparse

from .options import add_command_parser

DESCRIPTION = "The experiments and how many runs each profile trains."


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `gradreg list` to `subparsers`.

    Args:
        subparsers: What `ArgumentParser.add_subparsers` returned.

    Returns:
        The command's parser.
    """
    ls = add_command_parser(subparsers, "list", summary="the experiments and their sizes", description=DESCRIPTION)
    ls.set_defaults(func=run)
    return ls


def run(args: argparse.Namespace) -> int:
    """Print one line per experiment: its name, its title and its runs per profile.

    Args:
        args: The parsed options of `gradreg list` (none).

    Returns:
        The exit status, 0.
    """
    from ..paper.experiments import EXPERIMENTS, PROFILES, build

    for name in EXPERIMENTS:
        counts = ", ".join(f"{p}: {len(build(name, p).runs())} runs" for p in PROFILES)
        print(f"{name:7s} {build(name, 'quick').title}  ({counts})")
    return 0

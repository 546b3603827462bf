"""`gradreg bench`: what each regularizer costs and what the ensemble engine buys."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import write_json_atomic
from .checks import check_device, check_writable_output
from .options import DEVICE_HELP, add_command_parser

DESCRIPTION = "Measure what each regularizer costs and what the ensemble engine buys."


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `gradreg bench` to `subparsers`.

    Args:
        subparsers: What `ArgumentParser.add_subparsers` returned.

    Returns:
        The command's parser.
    """
    b = add_command_parser(
        subparsers,
        "bench",
        summary="measure regularizer cost and ensemble speed, side by side",
        description=DESCRIPTION,
    )
    b.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help=DEVICE_HELP)
    b.add_argument("--quick", action="store_true", help="fewer repetitions (under two minutes on 2 CPU cores)")
    b.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the results to this JSON file (default: none)",
    )
    b.set_defaults(func=run)
    return b


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, after checking the device and the `--json` file.

    Args:
        args: The parsed options of `gradreg bench`.

    Returns:
        The exit status, 0.
    """
    from ..bench import run_bench

    check_device(args.device)
    if args.json is not None:
        check_writable_output(args.json, label="--json")
    command = "gradreg " + " ".join(args.argv)
    result = run_bench(args.device, args.quick, command)
    if args.json is not None:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0

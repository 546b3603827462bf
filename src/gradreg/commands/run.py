"""`gradreg run`: one of the paper's experiments, swept into the result store and reported."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from .checks import (
    check_data_dir,
    check_device,
    check_report_outputs,
    check_writable_output,
    open_store_checked,
    prepare_data,
)
from .errors import CLIError, UsageError
from .options import DEVICE_HELP, add_command_parser, add_data_options, positive_float, positive_int

DESCRIPTION = "Run one of the paper's experiments: sweep, store, report."
CHECKPOINT_DIR = "checkpoints"
RECORDS_DIR = "records"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `gradreg run` to `subparsers`.

    Args:
        subparsers: What `ArgumentParser.add_subparsers` returned.

    Returns:
        The command's parser.
    """
    from ..paper.experiments import EXPERIMENTS, PROFILES

    r = add_command_parser(
        subparsers, "run", summary="run one of the paper's experiments: sweep, store, report", description=DESCRIPTION
    )
    r.add_argument("name", choices=list(EXPERIMENTS), help="the experiment (see `gradreg list`)")
    profiles = " ".join(
        f"{name}: {(getattr(p, 'note', '') or 'see gradreg.paper.experiments').rstrip('.')}."
        for name, p in PROFILES.items()
    )
    r.add_argument(
        "--profile",
        default="quick",
        choices=list(PROFILES),
        help=f"how much of the paper's protocol to run. {profiles} (default: quick)".replace("%", "%%"),
    )
    r.add_argument(
        "--out",
        default="results",
        metavar="DIR",
        help="directory of the result store (gradreg.sqlite) and the reports NAME.PROFILE.md/.csv/.png "
        "(default: results)",
    )
    r.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help=DEVICE_HELP)
    add_data_options(r)
    _add_executor_options(r)
    r.add_argument(
        "--no-records",
        action="store_true",
        help="do not import/export the text run records in DIR/records (runs.jsonl, plans.json); by "
        "default records found there are imported first and the store is exported there as runs finish",
    )
    r.add_argument(
        "--quiet", action="store_true", help="no progress line (default: one line when stderr is a terminal)"
    )
    r.set_defaults(func=run)
    return r


def _add_executor_options(r: argparse.ArgumentParser) -> None:
    """Where the runs train, how many together, and how often they checkpoint."""
    r.add_argument(
        "--executor",
        default="inprocess",
        choices=("inprocess", "ray"),
        help="where runs train: inprocess (this process) or ray (a Ray cluster; needs the ray extra) "
        "(default: inprocess)",
    )
    r.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="address of an existing Ray cluster (default: start a local one)",
    )
    r.add_argument(
        "--max-members",
        type=positive_int,
        default=None,
        metavar="N",
        help="at most N runs trained together as one ensemble, a positive integer (default: the device's "
        "default, e.g. 16 LeNets or 128 SIN MLPs on a CPU)",
    )
    r.add_argument(
        "--checkpoint-minutes",
        type=positive_float,
        default=5.0,
        metavar="MIN",
        help="minutes of wall time between checkpoints of each running chunk, in DIR/checkpoints; a rerun "
        "resumes from them (default: 5)",
    )


def run(args: argparse.Namespace) -> int:
    """Sweep the experiment's runs that the store lacks, then write its report.

    Args:
        args: The parsed options of `gradreg run`.

    Returns:
        The exit status: 0, or 130 when Ctrl-C stopped the sweep (finished runs are stored).

    Raises:
        UsageError: An unknown experiment or profile; `--executor ray` without Ray
            installed; `--device cuda` on a Ray cluster without GPUs.
        CLIError: The text run records in `--out` are damaged, or a check before the sweep
            (device, outputs, store, data) fails.
    """
    from ..paper.experiments import build
    from ..sweep.report import write_report
    from ..sweep.runner import STORE_NAME

    try:
        exp = build(args.name, args.profile, args.device)
    except ValueError as e:  # an experiment or profile that does not exist
        raise UsageError(str(e)) from e
    out = _check_before_sweep(args, exp)
    command = "gradreg " + " ".join(args.argv)
    summary = _sweep(args, exp, out, command)
    if summary.interrupted:
        sys.stderr.write(
            f"gradreg run: interrupted; {summary.trained} finished runs were stored and running chunks were "
            f"checkpointed in {out / CHECKPOINT_DIR}. Resume with: {command}\n"
        )
        return 130
    paths = write_report(out / STORE_NAME, exp.name, out, profile=args.profile)
    print(
        f"{exp.name} ({args.profile} profile): trained {summary.trained} runs in {summary.wall_time_s:.1f} s of wall "
        f"time (this command: data loading, training and evaluation; {summary.already_stored} runs were stored "
        f"already); report: {', '.join(str(p) for p in paths)}"
    )
    return 0


def _check_before_sweep(args: argparse.Namespace, exp) -> Path:
    """The executor, the device, the outputs, the store and the data; returns `--out`."""
    from ..sweep.runner import STORE_NAME

    if args.executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise UsageError("--executor ray needs Ray, which is not installed: pip install 'gradreg[ray]'")
    else:  # on Ray the workers have the devices
        check_device(args.device)
    out = check_writable_output(args.out, directory=True, label="--out")
    check_report_outputs(exp.name, args.profile, out)
    open_store_checked(out / STORE_NAME)
    if args.executor == "inprocess":  # on Ray the workers read the data, wherever they run
        check_data_dir(args.data_dir, args.download)
        prepare_data({c.dataset for c in exp.runs()}, args.data_dir, args.download)
    return out


def _sweep(args: argparse.Namespace, exp, out: Path, command: str):
    """Train the runs the store lacks, on the executor `--executor`; a Ctrl-C stops it gracefully."""
    from ..sweep.ray import ClusterTooSmall
    from ..sweep.records import RecordsError
    from ..sweep.runner import run_experiment

    stop = threading.Event()
    try:
        with graceful_interrupt(stop):
            return run_experiment(
                exp,
                out,
                _executor(args, out, stop),
                log=print,
                meta={"command": command, "profile": args.profile},
                records_dir=None if args.no_records else out / RECORDS_DIR,
            )
    except RecordsError as e:  # the text run records in DIR/records are damaged
        raise CLIError(str(e)) from e
    except ClusterTooSmall as e:  # --device cuda on a Ray cluster without GPUs
        raise UsageError(str(e)) from e


def _executor(args: argparse.Namespace, out: Path, stop: threading.Event):
    """The executor that trains the runs: Ray, or this process."""
    if args.executor == "ray":
        from ..sweep.ray import RayExecutor

        return RayExecutor(address=args.ray_address, data_dir=args.data_dir, max_members=args.max_members)
    from ..sweep.runner import InProcessExecutor

    return InProcessExecutor(
        data_dir=args.data_dir,
        max_members=args.max_members,
        progress=False if args.quiet else None,
        checkpoint_dir=out / CHECKPOINT_DIR,
        checkpoint_seconds=60.0 * args.checkpoint_minutes,
        stop=stop,
        download=args.download or None,
    )


class graceful_interrupt:
    """A context manager for a graceful Ctrl-C (SIGINT).

    Once: set `stop` -- every running part checkpoints and stops within one training step,
    finished runs are stored, the command exits with status 130. Twice: exit at once (status
    130); every file is written atomically, so nothing is corrupted.

    Args:
        stop: The event the executor watches.
    """

    def __init__(self, stop: threading.Event):
        self.stop = stop

    def __enter__(self):
        import signal

        self.old = None
        if threading.current_thread() is not threading.main_thread():
            return self

        def handler(signum, frame):
            if self.stop.is_set():
                sys.stderr.write("\ngradreg: second Ctrl-C, stopping now\n")
                sys.stderr.flush()
                os._exit(130)
            self.stop.set()
            sys.stderr.write(
                "\ngradreg: Ctrl-C: saving checkpoints and stopping after this step (Ctrl-C again to stop at once)\n"
            )
            sys.stderr.flush()

        self.old = signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)

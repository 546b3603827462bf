"""`gradreg report`: an experiment's report, rebuilt from the run records and the result store."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from .checks import check_report_outputs, check_writable_output, open_store_checked
from .errors import CLIError
from .options import add_command_parser
from .run import RECORDS_DIR

DESCRIPTION = (
    "Rebuild an experiment's report from the text run records in DIR/records and the result "
    "store: the records are imported first (into a new store where DIR has none, built aside "
    "and moved into place whole), so a store never hides runs that the records hold."
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `gradreg report` to `subparsers`.

    Args:
        subparsers: What `ArgumentParser.add_subparsers` returned.

    Returns:
        The command's parser.
    """
    from ..paper.experiments import EXPERIMENTS, PROFILES

    rp = add_command_parser(
        subparsers, "report", summary="rebuild an experiment's report from the store", description=DESCRIPTION
    )
    rp.add_argument("name", choices=list(EXPERIMENTS), help="the experiment (see `gradreg list`)")
    rp.add_argument(
        "--out",
        default="results",
        metavar="DIR",
        help="directory holding gradreg.sqlite; the reports go there too (default: results)",
    )
    rp.add_argument(
        "--profile",
        default=None,
        choices=list(PROFILES),
        help="rebuild only this profile's report (default: every profile stored for the experiment)",
    )
    rp.set_defaults(func=run)
    return rp


def run(args: argparse.Namespace) -> int:
    """Import the records the store lacks, then write the report of each profile asked for.

    Args:
        args: The parsed options of `gradreg report`.

    Returns:
        The exit status, 0.

    Raises:
        CLIError: No result store or records in `--out`; the text records are damaged; the
            store has no plan for the experiment (or the `--profile` asked for); or a check
            of the store or the outputs fails.
    """
    from ..sweep.records import RUNS_FILE, RecordsError
    from ..sweep.report import write_report
    from ..sweep.runner import STORE_NAME

    out = Path(args.out)
    store_path = out / STORE_NAME
    records = out / RECORDS_DIR
    if not store_path.exists() and not (records / RUNS_FILE).is_file():
        raise CLIError(f"no result store at {store_path}; run `gradreg run {args.name} --out {args.out}` first")
    check_writable_output(out, directory=True, label="--out")
    if (records / RUNS_FILE).is_file():
        try:
            _import_records(store_path, records)
        except RecordsError as e:
            raise CLIError(str(e)) from e
    open_store_checked(store_path)
    profiles = _profiles(args, store_path)
    for profile in profiles:
        check_report_outputs(args.name, profile, out)
    for profile in profiles:
        for p in write_report(store_path, args.name, out, profile=profile):
            print(p)
    return 0


def _import_records(store_path: Path, records: Path) -> None:
    """Import the runs of `records` that the store lacks; a new store is built aside and moved
    into place whole, so a failed import leaves no store behind."""
    from ..sweep.records import RUNS_FILE, import_records
    from ..sweep.store import Store

    if store_path.exists():
        open_store_checked(store_path)
        with Store(store_path) as store:
            n = import_records(store, records)
        if n:
            print(f"imported {n} run records from {records / RUNS_FILE} that {store_path} lacked")
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{store_path.name}.", suffix=".tmp", dir=store_path.parent)
    os.close(fd)
    os.unlink(tmp)  # Store creates the file
    try:
        with Store(tmp) as store:
            n = import_records(store, records)
        os.replace(tmp, store_path)
    finally:
        for leftover in (tmp, f"{tmp}-wal", f"{tmp}-shm"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    print(f"built {store_path} from {n} run records in {records / RUNS_FILE}")


def _profiles(args: argparse.Namespace, store_path: Path) -> list[str | None]:
    """The profiles to report: `--profile`, else every one stored (None: a plan without one)."""
    from ..sweep.store import Store

    with Store(store_path) as store:
        stored = store.profiles(args.name)
        has_plan = store.plan(args.name) is not None
    if args.profile is not None:
        if args.profile not in stored:
            have = f"it has: {', '.join(stored)}" if stored else "it has none"
            raise CLIError(
                f"the store {store_path} has no plan for {args.name!r} with profile {args.profile!r} "
                f"({have}); run `gradreg run {args.name} --profile {args.profile} --out {args.out}` first"
            )
        return [args.profile]
    if stored:
        return list(stored)
    if has_plan:
        return [None]  # a plan stored without a profile
    raise CLIError(
        f"the store {store_path} has no plan for {args.name!r}; run `gradreg run {args.name} --out {args.out}` first"
    )

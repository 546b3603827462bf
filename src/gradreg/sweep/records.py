"""Run records as text, committed beside the code: export from a store, import into one.

`records/runs.jsonl` holds one JSON line per stored run, sorted by run key: its config,
metrics (accuracy or MSE, penalties, weight norm, smoothness probes, fits), learning curve,
wall time, steps/s, device and hardware, torch version, gradreg version and git commit, and
the experiments it belongs to. `records/plans.json` holds each experiment's plan per profile.
Together they are everything a report is built from, so `gradreg report` rebuilds the
committed Markdown from them alone, and `gradreg run` on a fresh machine imports them first
and trains only what is missing.

Import is all or nothing: every line is parsed and checked (fields, types, that the run key is
the key of the config as this gradreg version normalizes it) before the store is touched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from ..atomic import write_text_atomic
from .store import Store, encode_record, run_key

RUNS_FILE = "runs.jsonl"
PLANS_FILE = "plans.json"
FIELDS = (
    "run_key",
    "experiments",
    "config",
    "metrics",
    "curve",
    "wall_time_s",
    "steps_per_s",
    "code_version",
    "device",
    "torch_version",
    "error",
)
REQUIRED = ("run_key", "experiments", "config")


class RecordsError(ValueError):
    """A records file that cannot be imported; the store was not touched."""


def record_of_row(row: dict) -> dict:
    """A stored row as a text record: its `FIELDS`.

    Args:
        row: A row of `Store.rows`.

    Returns:
        The record (missing fields are None).
    """
    return {k: row.get(k) for k in FIELDS}


def export_records(store: Store, directory: Path) -> tuple[Path, Path]:
    """Write every run and plan of `store` to `directory`.

    Atomically, and sorted, so the files change only where runs were added.

    Args:
        store: The store.
        directory: The records directory.

    Returns:
        The paths of `runs.jsonl` and `plans.json`.
    """
    directory = Path(directory)
    rows = sorted(store.rows(), key=lambda r: r["run_key"])
    lines = [json.dumps(record_of_row(r), sort_keys=True, separators=(",", ":")) for r in rows]
    runs = write_text_atomic(directory / RUNS_FILE, "".join(line + "\n" for line in lines))
    plans: dict[str, Any] = {}
    for exp in store.experiments():
        for profile in cast("list[str | None]", store.profiles(exp)) or [None]:
            plan = store.plan(exp, profile)
            if plan is not None:
                plans[f"{exp}@{profile}" if profile else exp] = plan
    plans_path = write_text_atomic(directory / PLANS_FILE, json.dumps(plans, sort_keys=True, indent=1) + "\n")
    return runs, plans_path


def _check_record(rec: Any, where: str) -> dict:
    from ..config import TrainConfig

    if not isinstance(rec, dict):
        raise RecordsError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise RecordsError(f"{where}: record lacks {', '.join(missing)}")
    unknown = sorted(set(rec) - set(FIELDS))
    if unknown:
        raise RecordsError(f"{where}: unknown field(s) {', '.join(unknown)} (not a gradreg run record?)")
    if not isinstance(rec["config"], dict):
        raise RecordsError(f"{where}: config must be an object")
    if not (
        isinstance(rec["experiments"], list)
        and rec["experiments"]
        and all(isinstance(e, str) for e in rec["experiments"])
    ):
        raise RecordsError(f"{where}: experiments must be a non-empty list of names")
    if rec.get("error") is None and not isinstance(rec.get("metrics"), dict):
        raise RecordsError(f"{where}: a successful run needs its metrics")
    try:
        canonical = TrainConfig.from_dict(rec["config"]).to_dict()
    except (TypeError, ValueError) as e:
        raise RecordsError(f"{where}: its config does not load in this gradreg version: {e}") from None
    if json.dumps(canonical, sort_keys=True) != json.dumps(rec["config"], sort_keys=True):
        given = rec["config"]
        diff = [f"{k} missing" for k in canonical if k not in given] + [
            f"{k}: {given[k]!r} here, {canonical[k]!r} in this version"
            for k in canonical
            if k in given and json.dumps(given[k], sort_keys=True) != json.dumps(canonical[k], sort_keys=True)
        ]
        raise RecordsError(
            f"{where}: its config is not in this gradreg version's normal form ({'; '.join(diff)}); it was made by "
            f"gradreg {rec.get('code_version') or '(unknown)'}: rebuild its reports with that version, or rerun "
            "the run with this one"
        )
    if run_key(canonical) != rec["run_key"]:
        raise RecordsError(f"{where}: run_key {rec['run_key']!r} is not the key of its config")
    try:  # everything the store will check, so that an import fails before it writes
        encode_record(rec["experiments"][0], store_record(rec), "", "")
    except (TypeError, ValueError) as e:
        raise RecordsError(f"{where}: {e}") from None
    return rec


def store_record(rec: dict) -> dict:
    """A run record in the form `Store.put` takes.

    Args:
        rec: A text record.

    Returns:
        Its store fields that are not None.
    """
    keys = ("config", "metrics", "curve", "wall_time_s", "steps_per_s", "device", "torch_version", "code_version")
    return {k: rec[k] for k in (*keys, "error") if rec.get(k) is not None}


def read_records(directory: Path) -> tuple[list[dict], dict]:
    """Parse and check `directory`'s records, touching nothing.

    Args:
        directory: The records directory.

    Returns:
        `(records, plans)`: the run records, in file order, and the plans by
        `experiment@profile`.

    Raises:
        RecordsError: No `runs.jsonl`, a cut-off last line, a line that is not JSON or not a
            valid record (fields, types, a config not in this version's normal form, a run key
            that is not its config's), a duplicated run key, or a `plans.json` that is not a
            JSON map of plans.
    """
    directory = Path(directory)
    runs_path, plans_path = directory / RUNS_FILE, directory / PLANS_FILE
    if not runs_path.is_file():
        raise RecordsError(f"no records at {runs_path}")
    text = runs_path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise RecordsError(f"{runs_path}: the last line is cut off (a partial file); refusing to import")
    records: list[dict] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordsError(f"{runs_path}:{n}: not JSON ({e.msg})") from None
        rec = _check_record(rec, f"{runs_path}:{n}")
        if rec["run_key"] in seen:
            raise RecordsError(f"{runs_path}:{n}: run_key {rec['run_key']} is already on line {seen[rec['run_key']]}")
        seen[rec["run_key"]] = n
        records.append(rec)
    plans: dict = {}
    if plans_path.is_file():
        try:
            plans = json.loads(plans_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RecordsError(f"{plans_path}: not JSON ({e.msg})") from None
        if not isinstance(plans, dict) or not all(isinstance(p, dict) for p in plans.values()):
            raise RecordsError(f"{plans_path}: must map experiment@profile to plans")
    return records, plans


def import_records(store: Store, directory: Path, *, plans: bool = True) -> int:
    """Add `directory`'s runs (and plans) that `store` lacks, in one transaction: all or nothing.

    A run the store holds only as a failure is replaced by a recorded success.

    Args:
        store: The store.
        directory: The records directory.
        plans: Also import the plans the store lacks (default True).

    Returns:
        How many runs were written.

    Raises:
        RecordsError: The records do not pass `read_records`' checks (nothing is written).
        StoreError: The write fails.
    """
    records, plan_map = read_records(directory)
    have = store.keys(include_errors=False)
    runs = [(rec["experiments"][0], store_record(rec)) for rec in records if rec["run_key"] not in have]
    links = [(exp, rec["config"]) for rec in records for exp in rec["experiments"]]
    new_plans = []
    if plans:
        for key, plan in plan_map.items():
            exp = key.split("@", 1)[0]
            if store.plan(exp, plan.get("profile")) is None:
                new_plans.append((exp, plan))
    return sum(store.put_batch(runs, links, new_plans))

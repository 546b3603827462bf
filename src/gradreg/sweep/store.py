"""The result store: one SQLite file, one row per finished run.

Experiments are data: spec → runs → **store** → report. A run is identified by
`run_key`, a hash of its full config dict, so re-running an experiment skips every run
that is already stored and never duplicates one:

```python
with Store(out_dir / "results.sqlite") as store:
    for cfg in configs:
        if not store.has(cfg):
            store.put("table1", run(cfg))   # {"config": ..., "metrics": ..., ...}
    rows = store.rows("table1")
```

Guarantees:

- Every write is one transaction (`BEGIN IMMEDIATE` … `COMMIT`): a row is stored whole or
  not at all, also when the process is killed mid-write or the disk fills up.
- Several processes may write to one file at once (WAL journal, `busy_timeout`, and retries
  with jittered exponential backoff on "database is locked"). Open one `Store` per
  process; a `Store` is not shared across threads or a fork.
- One run may belong to several experiments (two tables can share a baseline config): it is
  stored once, and `keys/rows/count(experiment)` see it in each.

Failure runs: a record with an `error` is stored too, and a later *successful* record of the
same config replaces it (a success never gets replaced). `has(config)` counts failures as
present, so a re-run skips them; pass `include_errors=False` to retry them.

`run_key` is `gradreg.identity.run_key`, re-exported: the experiment specs name runs by
it too, and they sit below the sweeps. Importing this module has no side effects; it needs only
the standard library.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import random
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar, cast

from ..identity import canonical_json, json_default, run_key

__all__ = ["Store", "StoreError", "run_key", "code_version", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1

_T = TypeVar("_T")

# Keys of a record passed to Store.put. A successful record (no "error") needs all of
# _REQUIRED; a failure record needs only "config" and "error".
_REQUIRED = ("config", "metrics", "curve", "wall_time_s", "steps_per_s", "device", "torch_version")
_OPTIONAL = ("error", "seed", "code_version")

_COLUMNS = (
    "run_key",
    "experiment",
    "config_json",
    "seed",
    "metrics_json",
    "curve_json",
    "wall_time_s",
    "steps_per_s",
    "code_version",
    "device",
    "torch_version",
    "created_at",
    "error",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY,       -- run_key(config)
    experiment TEXT NOT NULL,       -- the experiment that first stored the run
    config_json TEXT NOT NULL,
    seed INTEGER,
    metrics_json TEXT NOT NULL,
    curve_json TEXT NOT NULL,
    wall_time_s REAL,
    steps_per_s REAL,
    code_version TEXT NOT NULL,
    device TEXT,
    torch_version TEXT,
    created_at TEXT NOT NULL,       -- UTC, ISO 8601
    error TEXT                      -- NULL when the run succeeded
);
CREATE TABLE IF NOT EXISTS memberships (
    experiment TEXT NOT NULL,
    run_key TEXT NOT NULL,
    PRIMARY KEY (experiment, run_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS memberships_by_run ON memberships (run_key);
"""

# Insert a run; an existing row is replaced only when it is a failure and the new one is not.
_UPSERT = (
    f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    f"ON CONFLICT (run_key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
    + " WHERE runs.error IS NOT NULL AND excluded.error IS NULL"
)


class StoreError(RuntimeError):
    """The result store cannot be opened or written. The message names the file and the cause."""


# --------------------------------------------------------------------------- pure helpers


@functools.cache
def code_version() -> str:
    """The package version, plus `+g<short commit>` when the source is a git checkout.

    The commit comes from `git rev-parse --short HEAD` (5 s timeout). Falls back silently to the
    version alone (no git, not a checkout, an installed copy). Cached for the life of the
    process.

    Returns:
        E.g. `"0.2.0+gabc1234"`, or `"unknown"` where the package is not installed.
    """
    version = _package_version()
    commit = _git_commit(Path(__file__).resolve().parent)
    return f"{version}+g{commit}" if commit else version


def _package_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("gradreg")
    except PackageNotFoundError:
        return "unknown"


def _git_commit(directory: Path) -> str | None:
    if "site-packages" in directory.parts or "dist-packages" in directory.parts:
        return None  # an installed copy: a surrounding repository is not this code's
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=5,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{4,40}", commit) else None


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _check_record_keys(experiment: str, record: dict) -> str | None:
    """Check the experiment name, and that a record has the keys its kind of run needs.

    Args:
        experiment: The experiment's name.
        record: The record, as `Store.put` takes it.

    Returns:
        The record's `error`: its message for a failed run, None for a successful one.

    Raises:
        ValueError: An empty experiment name, unknown keys, or missing required keys (a failed
            run needs only `config`).
        TypeError: A record that is not a dict, or an `error` that is not a string.
    """
    if not isinstance(experiment, str) or not experiment:
        raise ValueError(f"experiment must be a non-empty string, got {experiment!r}")
    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    unknown = set(record) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise ValueError(f"record has unknown keys {sorted(unknown)}; allowed: {list(_REQUIRED + _OPTIONAL)}")
    error = record.get("error")
    if error is not None and not isinstance(error, str):
        raise TypeError(f"record['error'] must be a string or None, got {type(error).__name__}")
    needed = ("config",) if error is not None else _REQUIRED
    missing = [k for k in needed if k not in record]
    if missing:
        raise ValueError(f"record is missing {missing} (a successful run needs {list(_REQUIRED)})")
    return error


def encode_record(experiment: str, record: dict, version: str, created_at: str) -> tuple:
    """Validate one record and turn it into the `runs` columns, in `_COLUMNS` order.

    Args:
        experiment: The experiment's name, non-empty.
        record: The record, as `Store.put` takes it.
        version: The code version used where the record has none.
        created_at: The ISO timestamp to store.

    Returns:
        The row: run key, experiment, canonical config JSON, seed, metrics and curve JSON,
        timings, code version, device, torch version, time and error.

    Raises:
        ValueError: An empty experiment name, unknown keys, or missing required keys.
        TypeError: A record that is not a dict, or a value of the wrong type (`error`, `config`,
            `metrics`, `curve`, `seed`, the timings, the version strings).
    """
    error = _check_record_keys(experiment, record)
    config = record["config"]
    metrics = record.get("metrics", {})
    curve = record.get("curve", [])
    for name, value, kind in (("config", config, dict), ("metrics", metrics, dict), ("curve", curve, list)):
        if not isinstance(value, kind):
            raise TypeError(f"record[{name!r}] must be a {kind.__name__}, got {type(value).__name__}")
    seed = record.get("seed", config.get("seed"))
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    numbers = {k: record.get(k) for k in ("wall_time_s", "steps_per_s")}
    for k, v in numbers.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise TypeError(f"record[{k!r}] must be a number or None, got {v!r}")
    texts = {k: record.get(k) for k in ("device", "torch_version", "code_version")}
    for k, v in texts.items():
        if v is not None and not isinstance(v, str):
            raise TypeError(f"record[{k!r}] must be a string or None, got {v!r}")

    return (
        run_key(config),
        experiment,
        canonical_json(config),
        seed,
        json.dumps(metrics, sort_keys=True, default=json_default),
        json.dumps(curve, default=json_default),
        None if numbers["wall_time_s"] is None else float(numbers["wall_time_s"]),
        None if numbers["steps_per_s"] is None else float(numbers["steps_per_s"]),
        texts["code_version"] or version,
        texts["device"],
        texts["torch_version"],
        created_at,
        error,
    )


def _decode(row: sqlite3.Row, experiments: list[str]) -> dict:
    return {
        "run_key": row["run_key"],
        "experiment": row["experiment"],
        "experiments": experiments,
        "config": json.loads(row["config_json"]),
        "seed": row["seed"],
        "metrics": json.loads(row["metrics_json"]),
        "curve": json.loads(row["curve_json"]),
        "wall_time_s": row["wall_time_s"],
        "steps_per_s": row["steps_per_s"],
        "code_version": row["code_version"],
        "device": row["device"],
        "torch_version": row["torch_version"],
        "created_at": row["created_at"],
        "error": row["error"],
    }


def _is_lock_error(e: sqlite3.Error) -> bool:
    name = getattr(e, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return True
    msg = str(e).lower()
    return "database is locked" in msg or "database table is locked" in msg or "database is busy" in msg


def _explain(e: BaseException) -> str:
    msg = str(e)
    low = msg.lower()
    if "disk is full" in low or "database or disk is full" in low:
        return f"the disk (or the database's size limit) is full ({msg})"
    if "readonly" in low or "read-only" in low:
        return f"the file or its directory is read-only ({msg})"
    if "unable to open" in low:
        return f"cannot create or open the file; is the directory writable? ({msg})"
    if "not a database" in low:
        return f"the file is not an SQLite database ({msg})"
    if "disk i/o error" in low:
        return f"a write failed: disk full, file-size limit or I/O error ({msg})"
    return msg


def _is_damage(e: BaseException) -> bool:
    """Whether `e` says the file's bytes are wrong (as opposed to locks, permissions, space)."""
    if isinstance(e, ValueError):  # json / UTF-8 decoding of a stored record
        return True
    low = str(e).lower()
    return any(s in low for s in ("malformed", "not a database", "could not decode", "file is encrypted", "corrupt"))


def _damage_detail(e: BaseException) -> str:
    low = str(e).lower()
    if "not a database" in low or "file is encrypted" in low:
        return "the file is not an SQLite database"
    if "malformed" in low or "corrupt" in low:
        return "the SQLite file is malformed, for example truncated or overwritten in part"
    # A decoding error quotes the bad text at length: say what failed, not where.
    return "a stored record is not valid UTF-8 text" if "utf-8" in low else "a stored record is not valid JSON"


def _damaged(path: Path, detail: str, unchanged: bool) -> str:
    left = " gradreg left it unchanged." if unchanged else ""
    return (
        f"result store {path} is not a gradreg result store or is damaged: {detail}.{left} "
        f"Move it away (e.g. mv {path} {path}.damaged) and run again to start a new store"
    )


# --------------------------------------------------------------------------- the store


class Store:
    """An embedded SQLite result store in one file (see the module docstring).

    Args:
        path: The `.sqlite` file; its parent directories are created.
        busy_timeout_s: How long SQLite itself waits for another writer's lock.
        retry_timeout_s: How long a write keeps retrying "database is locked" beyond that, with
            jittered exponential backoff (10 ms doubling up to 1 s), before giving up.

    Attributes:
        journal_mode: `"wal"`, or what SQLite fell back to where the file system has no WAL
            support (network file systems: keep the store on a local disk).

    Raises:
        StoreError: The file cannot be created, opened or written (read-only, missing
            permissions, not a database, disk full), or holds a newer schema version; also
            from any method, on a closed store or a failed read or write.
    """

    def __init__(self, path: str | os.PathLike, *, busy_timeout_s: float = 10.0, retry_timeout_s: float = 60.0):
        self.path = Path(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self.retry_timeout_s = float(retry_timeout_s)
        self._rng = random.Random()
        self._conn: sqlite3.Connection | None = None
        if self.path.is_dir():
            raise StoreError(f"cannot open result store {self.path}: it is a directory")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the directory {self.path.parent} for result store {self.path}: {e.strerror or e}"
            ) from e
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout_s, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            # Read before anything is written (WAL mode rewrites the header): a file that is not
            # a gradreg store is left as it is.
            tables = self._retry(
                lambda: {
                    r[0]
                    for r in cast(sqlite3.Connection, self._conn).execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table'"
                    )
                },
                "open",
            )
            if tables and "meta" not in tables:
                raise _Foreign(sorted(tables))
            self.journal_mode = self._retry(
                lambda: cast(sqlite3.Connection, self._conn).execute("PRAGMA journal_mode = WAL").fetchone()[0], "open"
            )
            self._conn.execute("PRAGMA synchronous = FULL")
            self._write(self._create_schema, "create the schema of")
        except _Foreign as e:
            self.close()
            detail = f"it is an SQLite database with other tables ({', '.join(e.tables[:5])})"
            raise StoreError(_damaged(self.path, detail, unchanged=True)) from None
        except sqlite3.Error as e:
            self.close()
            if _is_damage(e):
                raise StoreError(_damaged(self.path, _damage_detail(e), unchanged=True)) from e
            raise StoreError(f"cannot open result store {self.path}: {_explain(e)}") from e
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ------------------------------------------------------------------ writing

    def put(self, experiment: str, record: dict) -> bool:
        """Store one finished run of `experiment` in one transaction.

        A stored failure is replaced by a success.

        Args:
            experiment: The experiment's name.
            record: `config` (dict), `metrics` (dict), `curve` (list), `wall_time_s`,
                `steps_per_s`, `device`, `torch_version`; optional `error` (str; then only
                `config` is required), `seed` (default `config["seed"]`) and `code_version`
                (default `code_version()`). Unknown keys are an error.

        Returns:
            True when the run was written; False when it was already stored (the run is then only
            added to `experiment`'s runs).

        Raises:
            ValueError: An invalid record (see `encode_record`).
            TypeError: A value of the wrong type (see `encode_record`).
            StoreError: The write fails.
        """
        return self.put_many(experiment, [record])[0]

    def put_many(self, experiment: str, records: Iterable[dict]) -> list[bool]:
        """`put` for several records, all in one transaction: all are stored or none.

        Args:
            experiment: The experiment's name.
            records: The records, as `put` takes them.

        Returns:
            One flag per record (False for a run already stored, also earlier in `records`).

        Raises:
            ValueError: An invalid record (nothing is written).
            TypeError: A value of the wrong type (nothing is written).
            StoreError: The write fails.
        """
        return self.put_batch([(experiment, r) for r in records])

    def link(self, experiment: str, configs: Iterable[dict]) -> None:
        """Add already-stored runs of `configs` to `experiment` (one transaction).

        Args:
            experiment: The experiment's name.
            configs: Config dicts; those not stored are ignored.

        Raises:
            StoreError: The write fails.
        """
        self.put_batch(links=[(experiment, c) for c in configs])

    def put_plan(self, experiment: str, plan: dict) -> None:
        """Store the experiment's plan (its cells and the run keys of each), which reports are rebuilt from.

        A later plan for the same experiment and profile replaces it. A plan with a `"profile"` key
        is kept per profile, so a quick run never replaces the paper-profile plan of the same
        experiment; `plan` without a profile returns the plan stored last.

        Args:
            experiment: The experiment's name.
            plan: The plan, a JSON-able dict.

        Raises:
            StoreError: The write fails.
        """
        self.put_batch(plans=[(experiment, plan)])

    def put_batch(
        self,
        runs: Iterable[tuple[str, dict]] = (),
        links: Iterable[tuple[str, dict]] = (),
        plans: Iterable[tuple[str, dict]] = (),
    ) -> list[bool]:
        """Store runs, links and plans in one transaction: all of it is stored or none.

        Every record is validated before anything is written.

        Args:
            runs: `(experiment, record)` pairs, as `put` takes them.
            links: `(experiment, config)` pairs: the stored runs of `config` are added to those
                experiments.
            plans: `(experiment, plan)` pairs, as `put_plan` takes them.

        Returns:
            One flag per run: whether it was written (new, or a success replacing a stored
            failure).

        Raises:
            ValueError: An invalid record (nothing is written).
            TypeError: A value of the wrong type (nothing is written).
            StoreError: The write fails.
        """
        now, version = _utc_now(), code_version()
        rows = [(exp, encode_record(exp, r, version, now)) for exp, r in runs]  # validate before writing
        pairs = [(exp, run_key(c)) for exp, c in links]
        plan_rows = []
        for exp, plan in plans:
            text = canonical_json(plan)
            plan_rows += [(f"plan:{exp}", text)] + (
                [(f"plan:{exp}@{plan['profile']}", text)] if plan.get("profile") else []
            )

        def insert(conn: sqlite3.Connection) -> list[bool]:
            written = []
            for exp, row in rows:
                written.append(conn.execute(_UPSERT, row).rowcount == 1)
                conn.execute("INSERT OR IGNORE INTO memberships (experiment, run_key) VALUES (?, ?)", (exp, row[0]))
            conn.executemany(
                "INSERT OR IGNORE INTO memberships (experiment, run_key) SELECT ?, run_key FROM runs WHERE run_key = ?",
                pairs,
            )
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                plan_rows,
            )
            return written

        return self._write(insert, "write to")

    def plan(self, experiment: str, profile: str | None = None) -> dict | None:
        """The stored plan of `experiment`, or None.

        Args:
            experiment: The experiment's name.
            profile: The plan of that profile; None: the plan stored last.

        Returns:
            The plan dict, or None.

        Raises:
            StoreError: The stored plan cannot be decoded (the store is damaged).
        """
        key = f"plan:{experiment}" if profile is None else f"plan:{experiment}@{profile}"
        row = self._read(lambda c: c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone())
        if row is None and profile is not None:  # a plan stored before plans were kept per profile
            latest = self.plan(experiment)
            return latest if latest is not None and latest.get("profile") == profile else None
        return None if row is None else self._decode_text(row[0], f"the plan of {experiment!r}")

    def profiles(self, experiment: str) -> list[str]:
        """The profiles with a stored plan of `experiment`, sorted.

        Args:
            experiment: The experiment's name.

        Returns:
            The profile names.
        """
        prefix = f"plan:{experiment}@"
        found = self._read(
            lambda c: [
                r[0][len(prefix) :]
                for r in c.execute("SELECT key FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix))
            ]
        )
        latest = self.plan(experiment)
        if latest is not None and latest.get("profile") and latest["profile"] not in found:
            found.append(latest["profile"])
        return sorted(found)

    def migrate_keys(self, normalize: Callable[[dict], dict]) -> int:
        """Re-key runs whose config a newer gradreg normalizes differently, in one transaction.

        A run whose new key is already stored is dropped in favour of the stored one (same config),
        unless the stored one is a failure and it a success (the rule of `put`). A config this
        version cannot read is left alone.

        Args:
            normalize: Config dict -> its normal form.

        Returns:
            How many runs moved.

        Raises:
            StoreError: The write fails.
        """

        def move(conn: sqlite3.Connection) -> int:
            moved = 0
            for key, text in conn.execute("SELECT run_key, config_json FROM runs").fetchall():
                try:
                    config = normalize(json.loads(text))
                except (TypeError, ValueError):
                    continue  # not a config this version can read: leave it alone
                new = run_key(config)
                if new == key:
                    continue
                exists = conn.execute("SELECT error FROM runs WHERE run_key = ?", (new,)).fetchone()
                if exists:
                    mine = conn.execute("SELECT error FROM runs WHERE run_key = ?", (key,)).fetchone()
                    if exists[0] is not None and mine[0] is None:  # keep the success, as a put would
                        conn.execute("DELETE FROM runs WHERE run_key = ?", (new,))
                        conn.execute(
                            "UPDATE runs SET run_key = ?, config_json = ? WHERE run_key = ?",
                            (new, canonical_json(config), key),
                        )
                    else:
                        conn.execute("DELETE FROM runs WHERE run_key = ?", (key,))
                else:
                    conn.execute(
                        "UPDATE runs SET run_key = ?, config_json = ? WHERE run_key = ?",
                        (new, canonical_json(config), key),
                    )
                conn.execute("UPDATE OR IGNORE memberships SET run_key = ? WHERE run_key = ?", (new, key))
                conn.execute("DELETE FROM memberships WHERE run_key = ?", (key,))
                moved += 1
            return moved

        return self._write(move, "migrate")

    # ------------------------------------------------------------------ reading

    def has(self, config: dict, *, include_errors: bool = True) -> bool:
        """Whether a run of `config` is stored (in any experiment).

        Args:
            config: The run's config dict.
            include_errors: Whether a stored failure counts (default True); False: only a
                successful run counts.

        Returns:
            Whether it is stored.
        """
        sql = "SELECT 1 FROM runs WHERE run_key = ?" + ("" if include_errors else " AND error IS NULL")
        key = run_key(config)
        return self._read(lambda c: c.execute(sql, (key,)).fetchone() is not None)

    def keys(self, experiment: str | None = None, *, include_errors: bool = True) -> set[str]:
        """The run keys stored (for `experiment`, or all).

        Args:
            experiment: The experiment's name; None: every run.
            include_errors: Whether failures count (default True).

        Returns:
            The run keys.
        """
        sql, args = self._select("r.run_key", experiment, include_errors)
        return self._read(lambda c: {row[0] for row in c.execute(sql, args)})

    def count(self, experiment: str | None = None, *, include_errors: bool = True) -> int:
        """The number of runs stored (for `experiment`, or all).

        Args:
            experiment: The experiment's name; None: every run.
            include_errors: Whether failures count (default True).

        Returns:
            The number of runs.
        """
        sql, args = self._select("COUNT(*)", experiment, include_errors)
        return self._read(lambda c: c.execute(sql, args).fetchone()[0])

    def rows(self, experiment: str | None = None, *, include_errors: bool = True) -> list[dict]:
        """The stored runs (for `experiment`, or all), ordered by `run_key`, JSON decoded.

        Args:
            experiment: The experiment's name; None: every run.
            include_errors: Whether failures count (default True).

        Returns:
            One dict per run, with the `runs` columns, `config`/`metrics`/`curve` decoded in place
            of the `*_json` columns, and `experiments`: every experiment the run belongs to, sorted
            (`experiment` is the one that first stored it).
        """
        sql, args = self._select("r.*", experiment, include_errors)

        def read(conn: sqlite3.Connection) -> list[dict]:
            conn.execute("BEGIN")  # one snapshot for both queries
            try:
                runs = conn.execute(sql + " ORDER BY r.run_key", args).fetchall()
                members: dict[str, list[str]] = {}
                for key, exp in conn.execute("SELECT run_key, experiment FROM memberships ORDER BY experiment"):
                    members.setdefault(key, []).append(exp)
            finally:
                conn.execute("COMMIT")
            return [_decode(r, members.get(r["run_key"], [])) for r in runs]

        return self._read(read)

    def experiments(self) -> list[str]:
        """The experiment names with at least one run, sorted.

        Returns:
            The names.
        """
        return self._read(lambda c: [r[0] for r in c.execute("SELECT DISTINCT experiment FROM memberships ORDER BY 1")])

    def integrity_check(self) -> str:
        """SQLite's `PRAGMA integrity_check`.

        Returns:
            `"ok"`, or the problems found, one per line.
        """
        return self._read(lambda c: "\n".join(r[0] for r in c.execute("PRAGMA integrity_check")))

    def verify(self) -> None:
        """Check, without writing, that every stored page, run and plan can be read back.

        SQLite's `quick_check`, then every record decoded; a sweep calls this before it trains.

        Raises:
            StoreError: The file is damaged (the message says what to do).
        """
        problems = self._read(lambda c: [r[0] for r in c.execute("PRAGMA quick_check")])
        if problems != ["ok"]:
            detail = (
                "the SQLite file is malformed, for example truncated or overwritten in part "
                f"(SQLite: {problems[0][:80]})"
            )
            raise StoreError(_damaged(self.path, detail, unchanged=True))
        self.rows()
        plans = self._read(lambda c: c.execute("SELECT key, value FROM meta WHERE key LIKE 'plan:%'").fetchall())
        for key, text in plans:
            self._decode_text(text, key)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _select(what: str, experiment: str | None, include_errors: bool) -> tuple[str, tuple]:
        where, args = [], []
        if experiment is not None:
            where.append("r.run_key IN (SELECT run_key FROM memberships WHERE experiment = ?)")
            args.append(experiment)
        if not include_errors:
            where.append("r.error IS NULL")
        return f"SELECT {what} FROM runs r" + (" WHERE " + " AND ".join(where) if where else ""), tuple(args)

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if exists:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            found = int(row[0]) if row else None
            if found is not None and found > SCHEMA_VERSION:
                raise _NewerSchema(found)
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"result store {self.path} is closed")
        return self._conn

    def _write(self, fn: Callable[[sqlite3.Connection], _T], what: str) -> _T:
        conn = self._connection()

        def transaction() -> _T:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks
            try:
                result = fn(conn)
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # SQLite already rolled back (e.g. after SQLITE_FULL)
                raise

        try:
            return self._retry(transaction, what)
        except _NewerSchema as e:
            raise StoreError(
                f"result store {self.path} has schema version {e.found}, newer than this gradreg "
                f"understands ({SCHEMA_VERSION}); upgrade gradreg to read it"
            ) from None
        except sqlite3.Error as e:
            if _is_damage(e):
                raise StoreError(_damaged(self.path, _damage_detail(e), unchanged=False)) from e
            raise StoreError(
                f"cannot {what} result store {self.path}: {_explain(e)}; the transaction was rolled back "
                "and the rows stored before are intact"
            ) from e

    def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._connection()
        try:
            return self._retry(lambda: fn(conn), "read")
        except (sqlite3.Error, ValueError) as e:
            if _is_damage(e):
                raise StoreError(_damaged(self.path, _damage_detail(e), unchanged=True)) from e
            raise StoreError(f"cannot read result store {self.path}: {_explain(e)}") from e

    def _decode_text(self, text: str, what: str) -> dict:
        try:
            return json.loads(text)
        except ValueError as e:
            raise StoreError(_damaged(self.path, f"{what} is not valid JSON", unchanged=True)) from e

    def _retry(self, fn: Callable[[], _T], what: str) -> _T:
        deadline = time.monotonic() + self.retry_timeout_s
        attempt = 0
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if not _is_lock_error(e):
                    raise
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"cannot {what} result store {self.path}: the database stayed locked for "
                        f"{self.retry_timeout_s:g} s ({e})"
                    ) from e
                delay = min(1.0, 0.01 * 2**attempt) * self._rng.uniform(0.5, 1.5)
                time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
                attempt += 1


class _Foreign(Exception):
    def __init__(self, tables: list):
        super().__init__(tables)
        self.tables = tables


class _NewerSchema(Exception):
    def __init__(self, found: int):
        super().__init__(found)
        self.found = found

"""The result store: round trip, idempotence, run keys, two concurrent writer processes, a
writer SIGKILLed mid-write, read-only locations, a full disk, and schema versions."""

import datetime as dt
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gradreg.sweep.store as store_module
from gradreg.sweep.store import SCHEMA_VERSION, Store, StoreError, code_version, run_key

STORE_PY = Path(store_module.__file__).resolve()

# Worker processes load the store without `import gradreg` (which imports torch), which keeps
# each process start well under a second: the store needs only the standard library and
# gradreg.identity, so bare stand-ins for its two parent packages (a `__path__`, no
# `__init__.py` run) are enough for its relative import.
WORKER_PRELUDE = f"""
import importlib, sys, json, types
for name, path in (("gradreg", {str(STORE_PY.parents[1])!r}), ("gradreg.sweep", {str(STORE_PY.parent)!r})):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [path]
S = importlib.import_module("gradreg.sweep.store")
assert "torch" not in sys.modules
"""


def record(i: int, *, writer: str = "main", curve_len: int = 3, **overrides) -> dict:
    """A complete record whose payload can be checked after a crash: `check` is derived from
    the config, and the curve has a known length."""
    config = {"dataset": "mnist", "seed": i % 10 + 1, "train_size": 2000, "index": i}
    rec = {
        "config": config,
        "metrics": {"dev": 0.97, "test": 0.9 + i * 1e-4, "check": run_key(config), "writer": writer},
        "curve": [{"step": s, "train_loss": 1.0 / (s + 1)} for s in range(curve_len)],
        "wall_time_s": 12.5,
        "steps_per_s": 800.0,
        "device": "cpu",
        "torch_version": "2.x",
    }
    rec.update(overrides)
    return rec


def assert_consistent(path: Path) -> list:
    """integrity_check ok, and every row decodes and is internally complete."""
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with Store(path) as s:
        rows = s.rows()
    for r in rows:
        assert r["run_key"] == run_key(r["config"])
        assert r["metrics"]["check"] == r["run_key"]
        assert r["error"] is None and r["experiments"]
    return rows


# --------------------------------------------------------------------------- run_key


def test_run_key_is_the_sha256_of_canonical_json():
    expected = hashlib.sha256(b'{"a":1,"b":[1,2],"c":{"x":0.1,"y":"s"}}').hexdigest()[:32]
    assert run_key({"c": {"y": "s", "x": 0.1}, "b": [1, 2], "a": 1}) == expected
    assert len(expected) == 32


def test_run_key_ignores_key_order_and_separates_configs():
    a = {"dataset": "mnist", "seed": 1, "regularizers": [{"name": "DataGrad", "weight": 50.0}], "lr": 1e-3}
    b = dict(reversed(list(a.items())))
    b["regularizers"] = [{"weight": 50.0, "name": "DataGrad"}]
    assert run_key(a) == run_key(b)
    assert run_key(a) == run_key({**a, "regularizers": ({"name": "DataGrad", "weight": 50.0},)})  # tuple == list
    assert run_key(a) == run_key({**a, "lr": np.float64(1e-3)})  # NumPy scalars hash as their value
    variants = [
        {**a, "seed": 2},
        {**a, "lr": 1e-2},
        {**a, "extra": None},
        {**a, "regularizers": []},
        {**a, "seed": 1.0},
    ]
    keys = {run_key(v) for v in variants}
    assert len(keys) == len(variants) and run_key(a) not in keys
    with pytest.raises(TypeError):
        run_key({"f": object()})
    with pytest.raises(TypeError):
        run_key([("a", 1)])


# --------------------------------------------------------------------------- round trip


def test_round_trip(tmp_path):
    path = tmp_path / "deep" / "dir" / "results.sqlite"  # parents are created
    rec = record(7, curve_len=5, error=None)
    rec["metrics"]["penalties"] = {"DataGrad": np.float32(0.25), "grad_norms": np.array([1.0, 2.0])}
    before = dt.datetime.now(dt.timezone.utc)
    with Store(path) as s:
        assert s.put("table1", rec) is True
        assert s.journal_mode == "wal"
        (row,) = s.rows()
    assert row["config"] == rec["config"]
    assert row["metrics"] == {**rec["metrics"], "penalties": {"DataGrad": 0.25, "grad_norms": [1.0, 2.0]}}
    assert row["curve"] == rec["curve"]
    assert (row["wall_time_s"], row["steps_per_s"], row["device"], row["torch_version"]) == (12.5, 800.0, "cpu", "2.x")
    assert row["seed"] == rec["config"]["seed"] and row["error"] is None
    assert row["experiment"] == "table1" and row["experiments"] == ["table1"]
    assert row["run_key"] == run_key(rec["config"]) and row["code_version"] == code_version()
    created = dt.datetime.fromisoformat(row["created_at"])
    assert created.tzinfo is not None and created.utcoffset() == dt.timedelta(0)
    assert before <= created <= dt.datetime.now(dt.timezone.utc)
    with sqlite3.connect(path) as conn:  # the columns are really there, as plain SQL
        cols = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
        assert {
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
        } <= cols
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)


def test_rerun_skips_and_never_duplicates(tmp_path):
    path = tmp_path / "r.sqlite"
    with Store(path) as s:
        assert s.put("t", record(1)) is True
        assert s.put("t", record(1, metrics={"different": 1})) is False  # same config: skipped
        assert s.put_many("t", [record(1), record(2), record(2), record(3)]) == [False, True, False, True]
        assert s.count() == s.count("t") == 3
        assert s.rows()[0]["metrics"].get("different") is None  # the first result stands
        assert [r["run_key"] for r in s.rows()] == sorted(run_key(record(i)["config"]) for i in (1, 2, 3))
    with Store(path) as s:  # a fresh process-like reopen sees the same
        assert s.has(record(2)["config"]) and not s.has(record(4)["config"])
        assert s.keys() == s.keys("t") == {run_key(record(i)["config"]) for i in (1, 2, 3)}
        assert s.keys("other") == set() and s.count("other") == 0


def test_a_run_shared_by_two_experiments_is_stored_once(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        assert s.put("table1", record(1)) is True
        assert s.put("table2", record(1)) is False
        assert s.count() == 1 and s.count("table1") == s.count("table2") == 1
        assert s.rows("table2")[0]["experiments"] == ["table1", "table2"]
        assert s.experiments() == ["table1", "table2"]


def test_failures_are_recorded_and_replaced_by_a_later_success(tmp_path):
    cfg = record(5)["config"]
    with Store(tmp_path / "r.sqlite") as s:
        assert s.put("t", {"config": cfg, "error": "TrainingDiverged: loss is nan at step 31"}) is True
        assert s.has(cfg) and not s.has(cfg, include_errors=False)
        assert s.count(include_errors=False) == 0 and s.keys(include_errors=False) == set()
        assert s.put("t", {"config": cfg, "error": "again"}) is False  # the first failure stays
        assert s.rows()[0]["error"].startswith("TrainingDiverged")
        assert s.put("t", record(5)) is True  # a success replaces the failure
        assert s.put("t", {"config": cfg, "error": "late"}) is False  # and is never replaced
        (row,) = s.rows()
        assert row["error"] is None and row["metrics"]["check"] == run_key(cfg)


def test_invalid_records_are_rejected_before_writing(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        bad = [
            (dict(record(1), metric="accuracy"), ValueError, "unknown keys"),
            ({k: v for k, v in record(1).items() if k != "curve"}, ValueError, "missing"),
            (dict(record(1), metrics=[1]), TypeError, "metrics"),
            (dict(record(1), wall_time_s="12"), TypeError, "wall_time_s"),
            (dict(record(1), config={"f": object()}), TypeError, "serializable"),
        ]
        for rec, exc, match in bad:
            with pytest.raises(exc, match=match):
                s.put_many("t", [record(9), rec])  # the valid first record is not written either
        with pytest.raises(ValueError, match="experiment"):
            s.put("", record(1))
        assert s.count() == 0


def test_closed_store_raises(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.count()


# --------------------------------------------------------------------------- processes


CONCURRENT_WRITER = (
    WORKER_PRELUDE
    + """
import os, time
path, lo, hi, writer, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def record(i):
    config = {"dataset": "mnist", "seed": i % 10 + 1, "train_size": 2000, "index": i}
    return {"config": config, "metrics": {"check": S.run_key(config), "writer": writer},
            "curve": [{"step": s} for s in range(50)], "wall_time_s": 1.0, "steps_per_s": 1.0,
            "device": "cpu", "torch_version": "x"}
with S.Store(path) as store:  # both open (and create the schema) at the same time
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    written = sum(store.put("concurrent", record(i)) for i in range(lo, hi))
print(json.dumps({"written": written}), flush=True)
"""
)


def test_two_processes_writing_concurrently(tmp_path):
    path, go = tmp_path / "shared.sqlite", tmp_path / "go"
    ranges = {"A": (0, 200), "B": (100, 300)}  # 100 overlapping configs
    procs = {
        w: subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_WRITER, str(path), str(lo), str(hi), w, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w, (lo, hi) in ranges.items()
    }
    for p in procs.values():
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    written = {}
    for w, p in procs.items():
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        written[w] = json.loads(out.strip().splitlines()[-1])["written"]
    assert written["A"] + written["B"] == 300  # each config inserted by exactly one writer
    rows = assert_consistent(path)
    assert len(rows) == 300
    assert {r["config"]["index"] for r in rows} == set(range(300))
    assert {r["run_key"] for r in rows} == {run_key(record(i)["config"]) for i in range(300)}
    for r in rows:  # a row is one writer's record, whole
        assert r["metrics"]["writer"] in {w for w, (lo, hi) in ranges.items() if lo <= r["config"]["index"] < hi}
        assert len(r["curve"]) == 50


KILLED_WRITER = (
    WORKER_PRELUDE
    + """
path = sys.argv[1]
with S.Store(path) as store:
    i = 0
    while True:  # until SIGKILL
        config = {"dataset": "mnist", "seed": i % 10 + 1, "train_size": 2000, "index": i}
        rec = {"config": config, "metrics": {"check": S.run_key(config)},
               "curve": [{"step": s, "train_loss": 0.5, "dev": 0.9, "test": 0.9} for s in range(2000)],
               "wall_time_s": 1.0, "steps_per_s": 1.0, "device": "cpu", "torch_version": "x"}
        store.put("killed", rec)
        print(i, flush=True)  # printed only after the commit returned
        i += 1
"""
)


def test_integrity_after_a_writer_is_killed_mid_write(tmp_path):
    path = tmp_path / "killed.sqlite"
    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        acknowledged = -1
        deadline = time.monotonic() + 30
        while acknowledged < 40 and time.monotonic() < deadline:
            line = p.stdout.readline()
            assert line, "the writer died before it was killed"
            acknowledged = int(line)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait(timeout=10)
    assert p.returncode == -signal.SIGKILL
    rows = assert_consistent(path)
    indices = sorted(r["config"]["index"] for r in rows)
    assert indices == list(range(len(rows)))  # a prefix: no gaps, nothing half-written
    assert len(rows) >= acknowledged + 1  # every acknowledged commit survived
    assert all(len(r["curve"]) == 2000 for r in rows)
    with Store(path) as s:  # and the store takes new writes
        assert s.put("killed", record(10_000)) is True


# --------------------------------------------------------------------------- failure modes


def test_parent_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    target = blocker / "sub" / "results.sqlite"
    with pytest.raises(StoreError, match="cannot create the directory") as e:
        Store(target)
    assert str(target) in str(e.value)
    with pytest.raises(StoreError, match="is a directory"):
        Store(tmp_path)


def test_not_a_database(tmp_path):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not an SQLite database") as e:
        Store(path)
    assert str(path) in str(e.value)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.skipif(_is_root(), reason="root ignores directory permissions; see the read-only database test")
def test_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        for target in (ro / "results.sqlite", ro / "sub" / "results.sqlite"):
            with pytest.raises(StoreError) as e:
                Store(target)
            assert str(target) in str(e.value)
    finally:
        ro.chmod(0o700)


def test_read_only_database(tmp_path, monkeypatch):
    """An existing store that SQLite may only read. As a regular user the file and its
    directory are made read-only; as root, whom permissions do not stop, every connection is
    opened with SQLite's own read-only mode (``mode=ro``), a real SQLite read-only condition."""
    path = tmp_path / "db" / "results.sqlite"
    with Store(path) as s:
        s.put("t", record(1))
    if _is_root():
        real_connect = sqlite3.connect

        def read_only_connect(database, *args, **kwargs):
            return real_connect(f"file:{database}?mode=ro", *args, uri=True, **kwargs)

        monkeypatch.setattr(sqlite3, "connect", read_only_connect)
    else:
        for f in path.parent.iterdir():
            f.chmod(0o400)
        path.parent.chmod(0o500)
    try:
        with pytest.raises(StoreError) as e:
            Store(path)
        assert str(path) in str(e.value)
        assert "read-only" in str(e.value) or "cannot create or open" in str(e.value)
    finally:
        monkeypatch.undo()
        path.parent.chmod(0o700)
        for f in path.parent.iterdir():
            f.chmod(0o600)
    assert len(assert_consistent(path)) == 1


def test_disk_full_rolls_back_and_keeps_earlier_rows(tmp_path):
    path = tmp_path / "full.sqlite"
    with Store(path) as s:
        s.put_many("t", [record(i) for i in range(5)])
        pages = s._conn.execute("PRAGMA page_count").fetchone()[0]
        # SQLite's own size limit: the next few pages are all the "disk" there is.
        assert s._conn.execute(f"PRAGMA max_page_count = {pages + 3}").fetchone()[0] == pages + 3
        big = [record(100 + i, curve_len=400) for i in range(5)]  # ~20 KB each, 4 KB pages
        with pytest.raises(StoreError, match="full") as e:
            s.put_many("t", big)
        assert str(path) in str(e.value) and "rolled back" in str(e.value)
        assert s.count() == 5  # all or nothing: none of the five went in
        with pytest.raises(StoreError, match="full"):
            s.put("t", big[0])
        assert s.count() == 5 and s.integrity_check() == "ok"
        s._conn.execute("PRAGMA max_page_count = 1073741823")  # space again: the store works on
        assert s.put("t", big[0]) is True
    rows = assert_consistent(path)
    assert len(rows) == 6


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.sqlite"
    with Store(path) as s:
        s.put("t", record(1))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer") as e:
        Store(path)
    assert str(path) in str(e.value)
    with sqlite3.connect(path) as conn:  # untouched
        assert conn.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION + 1),)]
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)


def test_locked_database_is_retried_then_reported(tmp_path, monkeypatch):
    path = tmp_path / "locked.sqlite"
    with Store(path, busy_timeout_s=0.05, retry_timeout_s=0.3) as s:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="stayed locked"):
            s.put("t", record(1))
        assert time.monotonic() - t0 >= 0.3
        blocker.execute("ROLLBACK")
        # a lock released while retrying: the write goes through
        blocker.execute("BEGIN IMMEDIATE")
        calls = []
        real_sleep = time.sleep

        def sleep_then_release(seconds):
            calls.append(seconds)
            if blocker.in_transaction:
                blocker.execute("ROLLBACK")
            real_sleep(seconds)

        monkeypatch.setattr(store_module.time, "sleep", sleep_then_release)
        assert s.put("t", record(1)) is True
        assert calls and s.count() == 1
        blocker.close()


# --------------------------------------------------------------------------- code_version


def test_code_version_names_the_package_and_the_commit(monkeypatch):
    from importlib.metadata import version

    v = code_version()
    assert v.startswith(version("gradreg"))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=STORE_PY.parent, capture_output=True, text=True, timeout=5
        )
        expected = f"+g{head.stdout.strip()}" if head.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        expected = ""
    assert v == version("gradreg") + expected

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    def slow_git(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], 5)

    for fake in (no_git, slow_git):
        monkeypatch.setattr(store_module.subprocess, "run", fake)
        assert code_version.__wrapped__() == version("gradreg")  # silently the version alone


def test_key_migration_keeps_a_success_over_a_failure_of_the_same_config(tmp_path):
    """Re-keying an old-form success onto a stored new-form failure used to delete the
    success; the rule of put (a success replaces a failure) holds here too."""
    ok = {
        "config": {"wd": 0},
        "metrics": {"test": 0.9},
        "curve": [],
        "wall_time_s": 1.0,
        "steps_per_s": 1.0,
        "device": "cpu",
        "torch_version": "t",
    }
    with Store(tmp_path / "s.sqlite") as store:
        store.put("e", ok)
        store.put("e", {"config": {"wd": 0.0}, "error": "boom"})
        assert store.migrate_keys(lambda c: {**c, "wd": float(c["wd"])}) == 1
        rows = store.rows()
    assert len(rows) == 1
    assert rows[0]["run_key"] == run_key({"wd": 0.0}) and rows[0]["error"] is None
    assert rows[0]["metrics"] == {"test": 0.9}

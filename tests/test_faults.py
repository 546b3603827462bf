"""Faults a long sweep meets, and what must survive them.

- The driver is SIGKILLed mid-sweep (at three points, and inside a store transaction):
  rerunning the same command finishes the sweep, no stored run is lost or changed, none is
  duplicated, and the result equals a sweep that was never interrupted. (With packed chunks
  a rerun may repack the missing runs; then the results agree to float rounding only.)
- A training run is SIGKILLed twice: resuming from its checkpoint gives bitwise the result of
  an uninterrupted run.
- The store cannot be written (read-only, full disk, file size limit): a clear StoreError,
  nothing trained in vain, and the file intact with every earlier row.

Children run ``tests/helpers_faults.py`` with one torch thread, and the oracles here do too, so
CPU results are bitwise reproducible across processes. No Ray needed.
"""

import contextlib
import io
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import helpers_faults as H
from gradreg.sweep.runner import STORE_NAME, InProcessExecutor, run_experiment
from gradreg.sweep.store import Store, StoreError, run_key
from gradreg.train import train

HELPERS = str(Path(__file__).resolve().parent / "helpers_faults.py")
EXPERIMENT = H.small_sin_experiment()
N_RUNS = len(EXPERIMENT.runs())  # 6
KEYS = {run_key(c.to_dict()) for c in EXPERIMENT.runs()}
TIMINGS = {"wall_time_s", "steps_per_s", "created_at"}  # differ between any two sweeps
TIMEOUT = 120


# --------------------------------------------------------------------------- helpers


def start_sweep(out: Path, env=None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, HELPERS, "sweep", str(out)],
        env=env or H.subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def finish_sweep(out: Path) -> str:
    """The sweep command, run to the end in this process (it saves a torch import); its log."""
    log = io.StringIO()
    with H.one_torch_thread(), contextlib.redirect_stdout(log):
        assert H.main(["sweep", str(out)]) == 0
    return log.getvalue()


def count_runs(db: Path) -> int:
    """Rows committed so far, read without taking any lock a writer needs."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def kill_when(p: subprocess.Popen, ready, what: str) -> None:
    """SIGKILL ``p`` as soon as ``ready()``; fail if it exits first."""
    deadline = time.monotonic() + TIMEOUT
    try:
        while not ready():
            if p.poll() is not None:
                pytest.fail(f"the child exited ({p.returncode}) before {what}: {p.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL, f"the child was not killed but exited with {p.returncode}"


def snapshot(out: Path) -> dict:
    """run_key -> stored row without timings; also checks the file and that no run is doubled."""
    db = out / STORE_NAME
    with Store(db) as s:
        assert s.integrity_check() == "ok"
        rows = s.rows(EXPERIMENT.name)
    with sqlite3.connect(db) as conn:
        for table in ("runs", "memberships"):
            n, distinct = conn.execute(f"SELECT COUNT(*), COUNT(DISTINCT run_key) FROM {table}").fetchone()
            assert n == distinct, f"a run is stored twice in {table}"
    return {r["run_key"]: {k: v for k, v in r.items() if k not in TIMINGS} for r in rows}


def report(out: Path):
    """The rendered report without its timing line, where gradreg.sweep.report exists."""
    try:
        from gradreg.sweep import report as R
    except ImportError:
        return None
    if not hasattr(R, "build_report"):
        return None
    rep = R.build_report(out / STORE_NAME, EXPERIMENT.name)
    markdown = "\n".join(line for line in rep["markdown"].splitlines() if not line.startswith("hardware:"))
    return markdown, rep["csv"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same sweep, never interrupted."""
    out = tmp_path_factory.mktemp("uninterrupted")
    finish_sweep(out)
    rows = snapshot(out)
    assert set(rows) == KEYS
    return rows, report(out)


def assert_completed_like(out: Path, reference, before: dict) -> None:
    rows = snapshot(out)
    assert set(rows) == KEYS  # nothing missing
    for key, row in before.items():  # nothing stored before the kill was lost or rewritten
        assert rows[key] == row
    assert rows == reference[0]  # and the result is the uninterrupted sweep's
    assert report(out) == reference[1]


# --------------------------------------------------------------------------- a killed driver


@pytest.mark.parametrize("stored", [1, N_RUNS // 2, N_RUNS - 1], ids=["after-first", "after-half", "before-last"])
def test_a_driver_killed_mid_sweep_loses_and_duplicates_nothing(tmp_path, reference, stored):
    """SIGKILL arrives while the next run trains (or, rarely, while it is being stored)."""
    db = tmp_path / STORE_NAME
    kill_when(start_sweep(tmp_path), lambda: count_runs(db) >= stored, f"{stored} runs were stored")
    before = snapshot(tmp_path)
    assert stored <= len(before) < N_RUNS

    log = finish_sweep(tmp_path)
    assert f"{len(before)} already stored, {N_RUNS - len(before)} to train" in log  # stored runs are not retrained
    assert_completed_like(tmp_path, reference, before)


def test_a_driver_killed_inside_a_store_transaction_leaves_no_trace_of_it(tmp_path, reference):
    """Killed after the INSERTs of the 3rd run, before COMMIT: that run is not in the store
    (not even half of it), the two before are, and the rerun retrains only what is missing."""
    p = start_sweep(tmp_path, env={**H.subprocess_env(), H.KILL_IN_PUT_ENV: "3"})
    p.communicate(timeout=TIMEOUT)
    assert p.returncode == -signal.SIGKILL
    before = snapshot(tmp_path)
    assert len(before) == 2

    assert f"2 already stored, {N_RUNS - 2} to train" in finish_sweep(tmp_path)
    assert_completed_like(tmp_path, reference, before)


class Killed(BaseException):
    """Stands in for SIGKILL where the kill must land between two stores of one chunk."""


def packed_sweep_killed_mid_chunk(out: Path) -> None:
    """max_members=2 (chunks {0,1} {2,3} {4,5}), killed after run 4 was stored but before run 5
    of the same chunk was; the rerun then trains run 5 alone, in a chunk of one."""

    class DiesAfterFive:
        def run(self, configs, on_result):
            def store_then_die(i, result):
                on_result(i, result)
                if i == 4:
                    raise Killed

            InProcessExecutor(max_members=2).run(configs, store_then_die)

    with H.one_torch_thread():
        with pytest.raises(Killed):
            run_experiment(EXPERIMENT, out, DiesAfterFive(), log=lambda *a: None)
        run_experiment(EXPERIMENT, out, InProcessExecutor(max_members=2), log=lambda *a: None)


@pytest.fixture(scope="module")
def packed_runs(tmp_path_factory):
    """(uninterrupted, killed mid-chunk and rerun) stores of the packed sweep, run_key -> row."""
    clean, resumed = tmp_path_factory.mktemp("packed_clean"), tmp_path_factory.mktemp("packed_resumed")
    with H.one_torch_thread():
        run_experiment(EXPERIMENT, clean, InProcessExecutor(max_members=2), log=lambda *a: None)
    packed_sweep_killed_mid_chunk(resumed)
    return snapshot(clean), snapshot(resumed)


def test_a_packed_sweep_killed_mid_chunk_agrees_with_an_uninterrupted_one_to_float_rounding(packed_runs):
    clean, resumed = packed_runs
    assert set(clean) == set(resumed) == KEYS
    for key in KEYS:
        a, b = clean[key]["metrics"], resumed[key]["metrics"]
        for name in ("dev", "test", "train_loss"):
            assert b[name] == pytest.approx(a[name], rel=1e-4, abs=0), (key, name)


def test_a_packed_sweep_killed_mid_chunk_is_bitwise_equal_to_an_uninterrupted_one(packed_runs):
    clean, resumed = packed_runs

    def numbers(rows):  # every metric, curve included: on CPU each run is its own single run
        return {k: (row["metrics"], row["curve"]) for k, row in rows.items()}

    assert numbers(resumed) == numbers(clean)


# --------------------------------------------------------------------------- a killed training run


def test_a_training_run_killed_twice_resumes_from_its_checkpoint_bitwise(tmp_path):
    cfg = H.long_sin_config()
    ckpt = tmp_path / "run.ckpt"
    cmd = [sys.executable, HELPERS, "train", str(ckpt)]

    seen = {}

    def step() -> int:  # the checkpoint's step, loaded again only when the file was replaced
        st = ckpt.stat()
        stamp = st.st_mtime_ns, st.st_ino
        if stamp not in seen:
            seen[stamp] = torch.load(ckpt, weights_only=False)["step"]
        return seen[stamp]

    def start():
        return subprocess.Popen(cmd, env=H.subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    kill_when(start(), ckpt.exists, "the first checkpoint")
    first_kill = step()
    kill_when(start(), lambda: step() >= first_kill + 100, "100 more steps")  # resumed, not restarted
    second_kill = step()
    assert 0 < first_kill < second_kill < cfg.steps

    resumed_at = []
    with H.one_torch_thread():
        resumed = train(cfg, checkpoint=ckpt, resume=True, on_step=lambda s: resumed_at.append(s))
        fresh = train(cfg)
    assert resumed_at[0] == second_kill + 1
    skip = {"wall_time_s", "steps_per_s"}
    got, want = resumed.to_dict(), fresh.to_dict()
    assert {k: v for k, v in got.items() if k not in skip} == {k: v for k, v in want.items() if k not in skip}


# --------------------------------------------------------------------------- a store that cannot be written


class RefusingExecutor:
    """Fails the test if the sweep gets as far as training."""

    def run(self, configs, on_result):
        pytest.fail("the sweep trained although its store cannot be written")


def test_a_store_whose_directory_cannot_be_created_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file, not a directory")  # also stops root, unlike chmod
    with pytest.raises(StoreError, match="cannot create the directory") as e:
        run_experiment(EXPERIMENT, blocker / "out", RefusingExecutor(), log=lambda *a: None)
    assert str(blocker / "out" / STORE_NAME) in str(e.value)
    assert blocker.read_text() == "a file, not a directory"


def test_a_store_in_an_unwritable_file_system_fails_before_training():
    with pytest.raises(StoreError, match="cannot create or open the file") as e:
        run_experiment(EXPERIMENT, Path("/proc"), RefusingExecutor(), log=lambda *a: None)
    assert f"/proc/{STORE_NAME}" in str(e.value)


def chattr(flag: str, path: Path) -> bool:
    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0
    except OSError:
        return False


class TrainsTwo:
    """Trains only the first two runs (a sweep stopped early)."""

    def run(self, configs, on_result):
        with H.one_torch_thread():
            InProcessExecutor(max_members=1).run(configs[:2], on_result)


def test_a_read_only_store_fails_before_training_and_keeps_its_rows(tmp_path):
    """An immutable file (``chattr +i``) is read-only even for root."""
    db = tmp_path / STORE_NAME
    run_experiment(EXPERIMENT, tmp_path, TrainsTwo(), log=lambda *a: None)
    before = snapshot(tmp_path)
    assert len(before) == 2
    if not chattr("+i", db):
        pytest.skip(
            "cannot make a file immutable here (chattr +i needs ext4-like file systems and CAP_LINUX_IMMUTABLE)"
        )
    try:
        with pytest.raises(StoreError, match="read-only") as e:
            run_experiment(EXPERIMENT, tmp_path, RefusingExecutor(), log=lambda *a: None)
        assert str(db) in str(e.value)
    finally:
        chattr("-i", db)
    assert snapshot(tmp_path) == before


class FillsUp(Store):
    """A store on a disk that is full after ``room`` more puts: SQLite's page limit is pinned
    at the file's size, so the next put fails as on a full disk (SQLITE_FULL)."""

    room = 2

    def put_many(self, experiment, records):
        if FillsUp.room == 0:
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
            self._conn.execute(f"PRAGMA max_page_count = {pages}")
        FillsUp.room -= 1
        return super().put_many(experiment, records)


def test_a_full_disk_stops_the_sweep_with_a_clear_error_and_keeps_earlier_rows(tmp_path, monkeypatch, reference):
    import gradreg.sweep.runner

    monkeypatch.setattr(gradreg.sweep.runner, "Store", FillsUp)
    monkeypatch.setattr(FillsUp, "room", 2)
    with H.one_torch_thread(), pytest.raises(StoreError, match="full") as e:
        run_experiment(EXPERIMENT, tmp_path, InProcessExecutor(max_members=1), log=lambda *a: None)
    assert "rolled back" in str(e.value) and str(tmp_path / STORE_NAME) in str(e.value)
    before = snapshot(tmp_path)
    assert len(before) == 2

    monkeypatch.undo()  # space freed: the same sweep completes
    assert f"2 already stored, {N_RUNS - 2} to train" in finish_sweep(tmp_path)
    assert_completed_like(tmp_path, reference, before)


def test_a_file_size_limit_mid_sweep_fails_cleanly_and_the_rerun_completes(tmp_path, reference):
    """A real failed write: the child may not grow any file past 120 kB (RLIMIT_FSIZE, which
    binds root too), so the store's WAL cannot grow after a few runs."""
    limit = 120_000

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = start_sweep(tmp_path, preexec_fn=limit_file_size)
    _, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 1, err
    assert "StoreError" in err and f"cannot write to result store {tmp_path / STORE_NAME}" in err
    before = snapshot(tmp_path)
    assert 1 <= len(before) < N_RUNS
    assert all(f.stat().st_size <= limit for f in tmp_path.iterdir())

    assert f"{len(before)} already stored" in finish_sweep(tmp_path)
    assert_completed_like(tmp_path, reference, before)

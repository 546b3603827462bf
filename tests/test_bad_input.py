"""Bad input on the command line and in the files it reads: each gives one line on stderr,
``gradreg COMMAND: error: ...``, a non-zero exit status and no traceback, and nothing is
written or lost (a damaged store stays byte-for-byte as it was; no partial output appears).

The CLI runs in-process (``gradreg.cli.main``) with tiny SIN runs; one subprocess test checks
the real exit path and ``--debug``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import gradreg.paper.experiments as E
from conftest import DATA
from gradreg.cli import main
from gradreg.config import paper_config
from gradreg.paper.experiments import EXPERIMENTS, PROFILES
from gradreg.sweep.runner import STORE_NAME

STEPS = 20


# --------------------------------------------------------------------------- helpers


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``main(argv)`` -> (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root: Path) -> dict:
    """Every file and directory under ``root``: relative path -> bytes (None for a directory)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def assert_one_line_error(code, err, expected: str, status: int = 1) -> None:
    assert "Traceback" not in err
    assert code == status, err
    assert err.splitlines()[-1] == expected, err


def tiny(monkeypatch) -> None:
    """The quick profile at STEPS SIN steps and one seed: fig5 trains 5 runs in about a second."""
    monkeypatch.setitem(E.PROFILES, "quick", dataclasses.replace(PROFILES["quick"], steps={"sin": STEPS}, seeds=(1,)))


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> bytes:
    """The bytes of a real result store: ``gradreg run fig5`` with the tiny quick profile."""
    out = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        tiny(mp)
        assert main(["run", "fig5", "--out", str(out), "--quiet"]) == 0
    return (out / STORE_NAME).read_bytes()


def damaged(expected_command: str, path: Path, detail: str) -> str:
    return (
        f"gradreg {expected_command}: error: result store {path} is not a gradreg result store or is damaged: "
        f"{detail}. gradreg left it unchanged. Move it away (e.g. mv {path} {path}.damaged) and run again to "
        "start a new store"
    )


MALFORMED = "the SQLite file is malformed, for example truncated or overwritten in part"


def _overwrite(data: bytes, token: bytes, junk: bytes) -> bytes:
    at = data.index(token)
    return data[:at] + junk * (len(token) // len(junk)) + data[at + len(token) :]


def _garbage_over_the_runs_tree(data: bytes, tmp: Path) -> bytes:
    """Random bytes over the first 512 bytes of the page holding the root of the ``runs`` table."""
    probe = tmp / "probe.sqlite"
    probe.write_bytes(data)
    with contextlib.closing(sqlite3.connect(probe)) as conn:
        page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    probe.unlink()
    at = (page - 1) * size
    junk = bytes(random.Random(0).getrandbits(8) for _ in range(512))
    return data[:at] + junk + data[at + 512 :]


def _foreign_sqlite(tmp: Path) -> bytes:
    other = tmp / "other.sqlite"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE t (a)")
        conn.commit()
    data = other.read_bytes()
    other.unlink()
    return data


DAMAGE = {
    "truncated to half": (lambda d, tmp: d[: len(d) // 2], MALFORMED),
    "truncated inside the header": (lambda d, tmp: d[:50], MALFORMED),
    "random bytes": (lambda d, tmp: random.Random(1).randbytes(20_000), "the file is not an SQLite database"),
    "garbage over the runs b-tree": (_garbage_over_the_runs_tree, MALFORMED),
    "garbage inside a stored record": (
        lambda d, tmp: _overwrite(d, b'"grad_norms"', b"@"),
        "a stored record is not valid JSON",
    ),
    "invalid UTF-8 inside a stored record": (
        lambda d, tmp: _overwrite(d, b'"grad_norms"', b"\xff\xfe"),
        "a stored record is not valid UTF-8 text",
    ),
    "another program's SQLite file": (
        lambda d, tmp: _foreign_sqlite(tmp),
        "it is an SQLite database with other tables (t)",
    ),
}


@contextlib.contextmanager
def read_only_dir(path: Path):
    """A directory nobody may write into, even root (``chattr +i``); else chmod for other users.
    Yields the errno a write into it fails with."""
    path.mkdir()
    try:
        immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    except OSError:
        immutable = False
    if immutable:
        try:
            yield errno.EPERM
        finally:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        return
    if os.geteuid() == 0:
        pytest.skip("root ignores permissions and chattr +i is not available here")
    path.chmod(0o500)
    try:
        yield errno.EACCES
    finally:
        path.chmod(0o700)


# --------------------------------------------------------------------------- damaged stores


@pytest.mark.parametrize("command", ["run", "report"])
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_store_is_one_line_and_left_unchanged(kind, command, good_store, tmp_path, capsys):
    corrupt, detail = DAMAGE[kind]
    out = tmp_path / "out"
    out.mkdir()
    store = out / STORE_NAME
    store.write_bytes(corrupt(good_store, tmp_path))
    before = snapshot(out)
    code, _, err = run_cli([command, "fig5", "--out", out], capsys)
    assert_one_line_error(code, err, damaged(command, store, detail))
    assert snapshot(out) == before  # the store byte-for-byte, and no report, -wal or -shm file


def test_a_store_path_that_is_a_directory(tmp_path, capsys):
    (tmp_path / STORE_NAME).mkdir()
    before = snapshot(tmp_path)
    code, _, err = run_cli(["run", "fig5", "--out", tmp_path], capsys)
    assert_one_line_error(
        code, err, f"gradreg run: error: result store {tmp_path / STORE_NAME}: is a directory; move it away"
    )
    assert snapshot(tmp_path) == before


def test_report_without_a_store(tmp_path, capsys):
    code, _, err = run_cli(["report", "fig5", "--out", tmp_path], capsys)
    assert_one_line_error(
        code,
        err,
        f"gradreg report: error: no result store at {tmp_path / STORE_NAME}; "
        f"run `gradreg run fig5 --out {tmp_path}` first",
    )
    assert snapshot(tmp_path) == {}


def test_report_of_a_profile_that_was_not_run(good_store, tmp_path, capsys):
    (tmp_path / STORE_NAME).write_bytes(good_store)
    before = snapshot(tmp_path)
    code, _, err = run_cli(["report", "fig5", "--out", tmp_path, "--profile", "paper"], capsys)
    assert_one_line_error(
        code,
        err,
        f"gradreg report: error: the store {tmp_path / STORE_NAME} has no plan for 'fig5' "
        f"with profile 'paper' (it has: quick); run `gradreg run fig5 --profile paper "
        f"--out {tmp_path}` first",
    )
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- output paths


def test_train_out_is_a_directory(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    code, _, err = run_cli(["train", "--dataset", "sin", "--steps", STEPS, "--quiet", "--out", tmp_path / "d"], capsys)
    assert_one_line_error(
        code,
        err,
        f"gradreg train: error: --out {tmp_path / 'd'}: is a directory; give a file name, "
        f"e.g. {tmp_path / 'd' / 'result.json'}",
    )
    assert snapshot(tmp_path) == {"d": None}


def test_train_out_under_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("a file")
    code, _, err = run_cli(
        ["train", "--dataset", "sin", "--steps", STEPS, "--quiet", "--out", tmp_path / "f" / "r.json"], capsys
    )
    assert_one_line_error(
        code,
        err,
        f"gradreg train: error: --out {tmp_path / 'f' / 'r.json'}: {tmp_path / 'f'} is a file, not a directory",
    )
    assert snapshot(tmp_path) == {"f": b"a file"}


def test_train_out_in_a_read_only_directory(tmp_path, capsys):
    ro = tmp_path / "ro"
    with read_only_dir(ro) as err_no:
        code, _, err = run_cli(
            ["train", "--dataset", "sin", "--steps", STEPS, "--quiet", "--out", ro / "r.json"], capsys
        )
        assert_one_line_error(
            code, err, f"gradreg train: error: --out {ro / 'r.json'}: cannot write into {ro} ({os.strerror(err_no)})"
        )
    assert snapshot(tmp_path) == {"ro": None}


def test_train_out_with_missing_directories_leaves_no_trace_on_failure(tmp_path, capsys):
    """The probe makes the missing directories and removes them again when a later check fails."""
    out = tmp_path / "a" / "b" / "r.json"
    code, _, err = run_cli(["train", "--dataset", "sin", "--data-dir", tmp_path / "nowhere", "--out", out], capsys)
    assert code == 1 and "--data-dir" in err
    assert snapshot(tmp_path) == {}


def test_train_checkpoint_under_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("a file")
    ckpt = tmp_path / "f" / "c.ckpt"
    code, _, err = run_cli(
        [
            "train",
            "--dataset",
            "sin",
            "--steps",
            STEPS,
            "--quiet",
            "--checkpoint-every",
            "5",
            "--out",
            tmp_path / "r.json",
            "--checkpoint",
            ckpt,
        ],
        capsys,
    )
    assert_one_line_error(
        code, err, f"gradreg train: error: --checkpoint {ckpt}: {tmp_path / 'f'} is a file, not a directory"
    )
    assert snapshot(tmp_path) == {"f": b"a file"}  # no result either: the check ran before training


def test_run_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("a file")
    code, _, err = run_cli(["run", "fig5", "--out", tmp_path / "f"], capsys)
    assert_one_line_error(code, err, f"gradreg run: error: --out {tmp_path / 'f'}: is a file, not a directory")
    assert snapshot(tmp_path) == {"f": b"a file"}


def test_run_out_in_a_read_only_directory(tmp_path, capsys):
    ro = tmp_path / "ro"
    with read_only_dir(ro) as err_no:
        code, _, err = run_cli(["run", "fig5", "--out", ro / "results"], capsys)
        assert_one_line_error(
            code,
            err,
            f"gradreg run: error: --out {ro / 'results'}: cannot create the directory "
            f"{ro / 'results'} ({os.strerror(err_no)})",
        )
    assert snapshot(tmp_path) == {"ro": None}


def test_run_report_file_that_is_a_directory_stops_before_training(tmp_path, capsys):
    (tmp_path / "fig5.quick.md").mkdir()
    code, _, err = run_cli(["run", "fig5", "--out", tmp_path], capsys)
    assert_one_line_error(
        code, err, f"gradreg run: error: report file {tmp_path / 'fig5.quick.md'}: is a directory; move it away"
    )
    assert snapshot(tmp_path) == {"fig5.quick.md": None}  # no store: nothing trained


def test_bench_json_is_a_directory_stops_before_measuring(tmp_path, capsys, monkeypatch):
    import gradreg.bench

    monkeypatch.setattr(gradreg.bench, "run_bench", lambda *a, **k: pytest.fail("bench ran"))
    code, _, err = run_cli(["bench", "--quick", "--json", tmp_path], capsys)
    assert_one_line_error(
        code,
        err,
        f"gradreg bench: error: --json {tmp_path}: is a directory; give a file name, e.g. {tmp_path / 'result.json'}",
    )


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("value", ["-2", "0", "two"])
def test_max_members_must_be_a_positive_integer(value, tmp_path, capsys):
    code, _, err = run_cli(["run", "fig5", "--out", tmp_path, "--max-members", value], capsys)
    assert_one_line_error(
        code, err, f"gradreg run: error: argument --max-members: must be a positive integer, got {value!r}", status=2
    )
    assert snapshot(tmp_path) == {}


def test_unknown_experiment_and_profile(tmp_path, capsys):
    code, _, err = run_cli(["run", "table99", "--out", tmp_path], capsys)
    assert code == 2 and err.splitlines()[-1].startswith("gradreg run: error: argument name: invalid choice: 'table99'")
    assert all(name in err for name in EXPERIMENTS)
    code, _, err = run_cli(["run", "fig5", "--profile", "huge", "--out", tmp_path], capsys)
    assert code == 2 and err.splitlines()[-1].startswith(
        "gradreg run: error: argument --profile: invalid choice: 'huge'"
    )
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "dtagrad=1",
            "unknown regularizer 'dtagrad' (did you mean 'datagrad'?); valid names: confidence, confidencepenalty, "
            "cp, datagrad, dg, frob, frobreg, jac, jacreg, onehot, random_onehot, randomonehot, rndonehot, spect, "
            "spectreg, sr",
        ),
        ("datagrad", "regularizer 'datagrad' needs a weight, e.g. datagrad=0.1"),
        ("datagrad=abc", "regularizer 'datagrad=abc': weight 'abc' is not a number"),
        (
            "spectreg=1,foo=2",
            "SpectReg has no option 'foo'; valid options: every, fd_scheme, fd_step, method, n_proj, norm, normalize, "
            "projection",
        ),
        ("spectreg=1,n_proj", "regularizer option 'n_proj' must be key=value"),
    ],
)
def test_bad_regularizer_strings(spec, message, tmp_path, capsys):
    code, _, err = run_cli(["train", "--dataset", "sin", "--reg", spec, "--out", tmp_path / "r.json"], capsys)
    assert_one_line_error(code, err, f"gradreg train: error: {message}", status=2)
    assert snapshot(tmp_path) == {}


def test_sin_train_size_is_worded_for_the_command_line(tmp_path, capsys):
    code, _, err = run_cli(["train", "--dataset", "sin", "--train-size", "50", "--out", tmp_path / "r.json"], capsys)
    assert_one_line_error(
        code,
        err,
        "gradreg train: error: --train-size 50: sin has a fixed training set of 100 points; "
        "leave --train-size out (or pass --train-size none)",
        status=2,
    )
    assert snapshot(tmp_path) == {}


def test_config_errors_name_the_option(tmp_path, capsys):
    code, _, err = run_cli(["train", "--dataset", "sin", "--steps", "0", "--out", tmp_path / "r.json"], capsys)
    assert_one_line_error(code, err, "gradreg train: error: --steps must be >= 1, got 0", status=2)
    assert snapshot(tmp_path) == {}


# --------------------------------------------------------------------------- data


def test_a_missing_data_dir(tmp_path, capsys):
    code, _, err = run_cli(
        ["train", "--dataset", "mnist", "--dry-run", "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "r.json"],
        capsys,
    )
    assert_one_line_error(
        code,
        err,
        f"gradreg train: error: --data-dir {tmp_path / 'nowhere'}: no such directory; give the "
        "directory that holds mnist/ and cifar10/, or add --download to fetch the data into it",
    )
    assert snapshot(tmp_path) == {}


def test_data_files_not_found(tmp_path, capsys, monkeypatch):
    empty, cache = tmp_path / "empty", tmp_path / "xdg"
    empty.mkdir()
    monkeypatch.setenv("GRADREG_DATA_DIR", str(empty))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    code, _, err = run_cli(["train", "--dataset", "mnist", "--dry-run", "--out", tmp_path / "r.json"], capsys)
    assert_one_line_error(
        code,
        err,
        f"gradreg train: error: data file 'train-images-idx3-ubyte' not found in any of {empty}, "
        f"{cache / 'gradreg'}; pass --download to fetch it into {empty}, or --data-dir (or "
        "GRADREG_DATA_DIR) naming a directory that holds mnist/ and cifar10/",
    )
    assert snapshot(tmp_path) == {"empty": None}  # nothing downloaded, no result


def test_a_failed_download(tmp_path, capsys, monkeypatch):
    import gradreg.data.download as download

    def offline(url, dest, progress):
        raise OSError("network is unreachable")

    monkeypatch.setattr(download, "urllib_fetch", offline)
    monkeypatch.delenv("GRADREG_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = tmp_path / "data"
    code, _, err = run_cli(
        ["train", "--dataset", "mnist", "--dry-run", "--download", "--data-dir", data, "--out", tmp_path / "r.json"],
        capsys,
    )
    failures = "; ".join(
        f"download into {data} failed: {base}train-images-idx3-ubyte.gz: OSError: network is unreachable"
        for base in download.DEFAULT_SOURCES.mnist_urls
    )
    assert_one_line_error(
        code,
        err,
        f"gradreg train: error: data file 'train-images-idx3-ubyte' not found in any of "
        f"{data}, {tmp_path / 'xdg' / 'gradreg'}; {failures}",
    )
    assert not (tmp_path / "r.json").exists()
    assert [p for p in data.rglob("*") if p.is_file()] == []  # no partial download left behind


# --------------------------------------------------------------------------- a diverged run


def test_a_diverged_run_names_the_step_and_the_term(tmp_path, capsys, monkeypatch):
    import gradreg.train
    from gradreg.train import TrainingDiverged

    def diverges(cfg, **kwargs):
        raise TrainingDiverged("step 7: the 'DataGrad' term is inf; stopping (the last checkpoint, if any, is kept)")

    monkeypatch.setattr(gradreg.train, "train", diverges)
    out = tmp_path / "r.json"
    code, _, err = run_cli(["train", "--dataset", "sin", "--reg", "datagrad=1e30", "--out", out], capsys)
    assert_one_line_error(
        code,
        err,
        "gradreg train: error: training diverged at step 7: the 'DataGrad' term is inf; stopping "
        f"(the last checkpoint, if any, is kept); nothing was written to {out}. A smaller --lr "
        "or regularizer weight may help",
    )
    assert snapshot(tmp_path) == {}


def test_a_real_divergence(tmp_path, capsys):
    out = tmp_path / "r.json"
    code, _, err = run_cli(
        ["train", "--dataset", "sin", "--lr", "1e30", "--steps", "50", "--quiet", "--out", out], capsys
    )
    assert "Traceback" not in err and code == 1
    line = err.splitlines()[-1]
    assert line.startswith("gradreg train: error: training diverged at step ") and " term is " in line
    assert f"nothing was written to {out}" in line
    assert snapshot(tmp_path) == {}


# --------------------------------------------------------------------------- the real process


def test_the_installed_command_exits_with_one_line_and_debug_shows_the_traceback(tmp_path):
    (tmp_path / STORE_NAME).write_bytes(b"not a store" * 100)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gradreg.cli", "report", "fig5", "--out", str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.splitlines() == [damaged("report", tmp_path / STORE_NAME, "the file is not an SQLite database")]
    p = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode != 0 and "Traceback" in p.stderr and "StoreError" in p.stderr
    assert (tmp_path / STORE_NAME).read_bytes() == b"not a store" * 100


# ------------------------------------------------------------ review findings (each failed before its fix)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "foo"], "--device must be one of cpu, cuda, mps, xpu (or e.g. 'cuda:1'), got 'foo'"),
        (["--device", "meta"], "--device must be one of cpu, cuda, mps, xpu (or e.g. 'cuda:1'), got 'meta'"),
        (["--seed", "-1"], "--seed must be in [0, 2**32), got -1"),
        (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
        (["--lr-gamma", "-1"], "--lr-gamma must be a finite number > 0, got -1.0"),
        (["--lr-gamma", "nan"], "--lr-gamma must be a finite number > 0, got nan"),
        (["--lr-milestones", "inf"], "--lr-milestones must be fractions of the steps in [0, 1], got inf"),
        (["--lr-milestones", "0.5", "-1"], "--lr-milestones must be fractions of the steps in [0, 1], got -1.0"),
        (["--lr-milestones", "nan"], "--lr-milestones must be fractions of the steps in [0, 1], got nan"),
        (["--reg", "spectreg=0.03,normalize=no"], "SpectReg option normalize must be true or false, got 'no'"),
        (
            ["--reg", "datagrad=1,fd_step=0.001"],
            "DataGrad: fd_step and fd_scheme apply to method='finite_difference' only, not 'double_backprop'",
        ),
        (
            ["--reg", "cp=0.5"],
            "ConfidencePenalty is a function of the softmax, which is constant for sin's one output (it would be "
            "0); use it on mnist or cifar10",
        ),
        (
            ["--reg", "jacreg=1"],
            "JacReg is a function of the softmax, which is constant for sin's one output (it would be 0); use it "
            "on mnist or cifar10",
        ),
        (["--checkpoint", "c.ckpt"], "--checkpoint needs --checkpoint-every N (the steps between checkpoints)"),
    ],
)
def test_nonsense_train_options_are_one_line_errors(args, message, tmp_path, capsys, monkeypatch):
    """Each used to be accepted (a silent wrong run: gradient ascent, a normalized draw for
    normalize=no, a zero penalty, no checkpoint) or to end in a traceback."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--dataset", "sin", "--steps", "2", *args, "--out", tmp_path / "r.json"], capsys)
    assert_one_line_error(code, err, f"gradreg train: error: {message}", status=2)
    assert snapshot(tmp_path) == {}


def test_checkpoint_that_is_the_output_file_is_refused(tmp_path, capsys):
    out = tmp_path / "x.ckpt"
    code, _, err = run_cli(
        ["train", "--dataset", "sin", "--steps", "2", "--checkpoint-every", "1", "--checkpoint", out, "--out", out],
        capsys,
    )
    assert_one_line_error(
        code,
        err,
        f"gradreg train: error: --checkpoint and --out are the same file ({out}); the result would overwrite it",
        status=2,
    )
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize("content", [b"garbage\n", bytes(range(256)) * 4])
def test_resume_from_a_file_that_is_not_a_checkpoint(content, tmp_path, capsys):
    ckpt = tmp_path / "c.ckpt"
    ckpt.write_bytes(content)
    code, _, err = run_cli(
        ["train", "--dataset", "sin", "--steps", "2", "--checkpoint", ckpt, "--resume", "--out", tmp_path / "r.json"],
        capsys,
    )
    assert "Traceback" not in err and code == 1, err
    assert err.splitlines()[-1].startswith(f"gradreg train: error: {ckpt} is not a gradreg checkpoint ("), err
    assert ckpt.read_bytes() == content and not (tmp_path / "r.json").exists()


def test_divergence_on_the_last_step_is_not_a_success(tmp_path, capsys):
    """The loop checks each step's loss before its update, so an update that blows up the last
    step used to be reported as a finished run with a NaN test MSE."""
    code, _, err = run_cli(
        ["train", "--dataset", "sin", "--steps", "1", "--lr", "1e30", "--out", tmp_path / "r.json"], capsys
    )
    assert "Traceback" not in err and code == 1, err
    assert "training diverged at step 0: after the last update the weights, metrics or input gradients are not" in err
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize(
    "options,expected",
    [
        (
            ["--dataset", "sin", "--augment"],
            "--augment translates and flips images, and dataset 'sin' has none; it works on mnist, cifar10",
        ),
        (
            ["--dataset", "sin", "--dropout", "0.5"],
            "--dropout 0.5 does nothing: model 'mlp_sin' does not read it (it reads no model option); leave it out",
        ),
        (
            ["--dataset", "sin2", "--batchnorm"],
            "--batchnorm True does nothing: model 'mlp_sin' does not read it (it reads no model option); leave it out",
        ),
        (
            ["--dataset", "cifar10", "--dropout", "0.3"],
            "--dropout 0.3 does nothing: model 'resnet_cifar' does not read it (it reads bn_batch_stats_at_eval); "
            "leave it out",
        ),
        (
            ["--dataset", "sin", "--model", "tests.helpers_faults:anything", "--dropout", "0.3"],
            "--dropout does nothing for an import-path model: its factory (tests.helpers_faults:anything) builds "
            "the model",
        ),
    ],
)
def test_an_option_the_model_or_data_would_ignore_is_refused(options, expected, tmp_path, capsys):
    """These trained without a word, as if the option had not been given."""
    code, _, err = run_cli(["train", *options, "--steps", "2", "--out", tmp_path / "r.json"], capsys)
    assert_one_line_error(code, err, f"gradreg train: error: {expected}", status=2)
    assert snapshot(tmp_path) == {}
    # the library refuses the same configs (the import-path case only on the command line)
    if "--model" not in options:
        with pytest.raises(ValueError, match="does nothing|has none"):
            paper_config(options[1], **{options[2][2:]: float(options[3]) if len(options) > 3 else True})


def test_only_a_value_gradreg_rejects_is_a_one_line_error_a_bug_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    """A ValueError from an unpacking inside gradreg (the old --augment on SIN gave `not enough
    values to unpack (expected 4, got 2)`, exit 2, as if an option were bad) is a bug: its
    traceback must show, in every command. A value gradreg checks and rejects stays one line."""
    import torch

    import gradreg.data as gd

    def unpack_bug(*a, **kw):
        return gd.random_translate_flip(torch.zeros(5, 1), torch.Generator())

    def type_bug(*a, **kw):
        return len(5)

    monkeypatch.setattr("gradreg.train.train", unpack_bug)
    with pytest.raises(ValueError, match="not enough values to unpack"):
        main(["train", "--dataset", "sin", "--steps", "2", "--out", str(tmp_path / "r.json")])
    monkeypatch.setattr("gradreg.train.train", type_bug)
    with pytest.raises(TypeError, match="has no len"):
        main(["train", "--dataset", "sin", "--steps", "2", "--out", str(tmp_path / "r.json")])
    monkeypatch.setattr("gradreg.sweep.runner.run_experiment", unpack_bug)
    with pytest.raises(ValueError, match="not enough values to unpack"):
        main(["run", "fig5", "--out", str(tmp_path / "o"), "--no-records"])
    assert not (tmp_path / "r.json").exists()
    code, _, err = run_cli(["train", "--dataset", "sin", "--lr", "-1", "--out", tmp_path / "r.json"], capsys)
    assert_one_line_error(code, err, "gradreg train: error: --lr must be a finite number > 0, got -1.0", status=2)


def test_a_submodule_or_model_that_does_not_exist_is_a_one_line_error(tmp_path, capsys):
    """--wrt is checked when training starts (the model has to exist), --model before."""
    out = tmp_path / "r.json"
    code, _, err = run_cli(
        ["train", "--dataset", "sin", "--steps", "2", "--reg", "datagrad=1", "--wrt", "fc9", "--out", out], capsys
    )
    assert "Traceback" not in err and code == 1, err
    assert err.splitlines()[-1].startswith("gradreg train: error: Sequential has no submodule 'fc9'; did you mean ")
    code, _, err = run_cli(["train", "--dataset", "sin", "--model", "no_such_module_here:f", "--out", out], capsys)
    assert_one_line_error(
        code,
        err,
        "gradreg train: error: model import path 'no_such_module_here:f': cannot import module "
        "'no_such_module_here' (No module named 'no_such_module_here')",
        status=2,
    )
    assert snapshot(tmp_path) == {}


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="needs shared/data/mnist")
def test_a_training_set_larger_than_the_pool_is_a_one_line_error(tmp_path, capsys):
    code, _, err = run_cli(
        ["train", "--dataset", "mnist", "--train-size", "60000", "--data-dir", DATA, "--out", tmp_path / "r.json"],
        capsys,
    )
    assert_one_line_error(
        code, err, "gradreg train: error: train_size must be in 1..50000 (the training pool), got 60000"
    )
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize(
    "executor, error, status",
    [
        ("inprocess", "RecordsError", 1),  # damaged text records in DIR/records
        ("ray", "ClusterTooSmall", 2),  # --device cuda on a Ray cluster without GPUs
    ],
)
def test_the_sweeps_own_errors_are_one_line(executor, error, status, tmp_path, capsys, monkeypatch):
    from gradreg.sweep.ray import ClusterTooSmall
    from gradreg.sweep.records import RecordsError

    if executor == "ray":
        pytest.importorskip("ray")
    kind = {"RecordsError": RecordsError, "ClusterTooSmall": ClusterTooSmall}[error]

    def fails(*a, **kw):
        raise kind(f"a {error} the sweep raised")

    monkeypatch.setattr("gradreg.sweep.runner.run_experiment", fails)
    code, _, err = run_cli(["run", "fig5", "--executor", executor, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, f"gradreg run: error: a {error} the sweep raised", status)


def test_resume_from_a_checkpoint_of_another_config_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "r.json"
    base = ["train", "--dataset", "sin", "--quiet", "--checkpoint-every", "2", "--out", out]
    assert run_cli([*base, "--steps", "4"], capsys)[0] == 0
    ckpt = tmp_path / "r.ckpt"
    before = snapshot(tmp_path)
    code, _, err = run_cli([*base, "--steps", "6", "--resume"], capsys)
    assert_one_line_error(
        code,
        err,
        f"gradreg train: error: checkpoint {ckpt} was written by a different config; refusing to resume from it",
    )
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("strategy", ["packed", "vmap"])
def test_divergence_on_the_last_step_in_the_engine_marks_that_member_only(strategy):
    """The engine, like the single run, checks each step's terms before its update; a member
    whose last update blows up was reported as a success with NaN metrics."""
    import math

    from gradreg.config import paper_config
    from gradreg.ensemble.loop import train_many

    base = paper_config("sin", steps=1, eval_every=0)
    blown, fine = base.replace(seed=1, lr=1e30), base.replace(seed=2)
    bad, good = train_many([blown, fine], strategy=strategy, workers=1)
    assert bad.error == (
        "step 0: after the last update the weights, metrics or input gradients are not finite; this member diverged"
    )
    assert good.error is None and math.isfinite(good.test)
    (alone,) = train_many([fine], strategy=strategy, workers=1)
    assert good.test == pytest.approx(alone.test, rel=1e-6)  # the neighbour did not touch it


def test_run_on_ray_without_ray_or_on_cuda_without_cuda_stops_before_any_work(tmp_path, capsys, monkeypatch):
    import importlib.util

    import torch

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    code, _, err = run_cli(["run", "fig5", "--profile", "quick", "--executor", "ray", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(
        code, err, "gradreg run: error: --executor ray needs Ray, which is not installed: pip install 'gradreg[ray]'", 2
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(["run", "fig5", "--profile", "quick", "--device", "cuda", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(
        code,
        err,
        "gradreg run: error: --device cuda was requested, but CUDA is not available here; use --device cpu",
        2,
    )
    assert snapshot(tmp_path) == {}


def test_ctrl_c_in_train_is_one_line_that_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import gradreg.train as T

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "train", interrupted)
    code, _, err = run_cli(["train", "--dataset", "sin", "--steps", "2", "--out", tmp_path / "r.json"], capsys)
    assert "Traceback" not in err and code == 130, err
    assert err.splitlines()[-1] == (
        f"gradreg train: interrupted; nothing was written to {tmp_path / 'r.json'}; no checkpoint was written "
        "(--checkpoint-every N keeps one)"
    )
    ckpt = tmp_path / "r.ckpt"
    ckpt.write_bytes(b"kept")
    code, _, err = run_cli(
        ["train", "--dataset", "sin", "--steps", "2", "--checkpoint-every", "1", "--out", tmp_path / "r.json"], capsys
    )
    assert code == 130 and err.splitlines()[-1].endswith(
        f"the last checkpoint, {ckpt}, is kept: add --resume to the same command to continue"
    ), err

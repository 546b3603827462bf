"""Interrupted sweeps lose nothing: a chunk killed with SIGKILL between two checkpoints, or
stopped with SIGINT, resumes from its checkpoint, and the final results are bitwise those of an
uninterrupted sweep (CPU)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers_faults import subprocess_env

STEPS = 1500
DRIVER = r"""
import sys, threading, signal, dataclasses
from pathlib import Path
import torch
torch.set_num_threads(1)
from gradreg.paper.experiments import build, Cell
from gradreg.sweep.runner import InProcessExecutor, run_experiment
out, steps = Path(sys.argv[1]), int(sys.argv[2])
exp = build("table7", "quick")
short = lambda cfg: cfg.replace(steps=steps, eval_every=steps // 3)
cells = tuple(Cell(c.row, c.col, tuple((lam, short(cfg)) for lam, cfg in c.candidates), c.x)
              for c in exp.cells if c.x in (0.01, 0.03))
exp = dataclasses.replace(exp, name="interrupt_test", cells=cells, seeds=(1, 2))
stop = threading.Event()
signal.signal(signal.SIGINT, lambda s, f: stop.set())
ex = InProcessExecutor(progress=False, checkpoint_dir=out / "checkpoints", checkpoint_seconds=0.2, stop=stop)
summary = run_experiment(exp, out, ex, log=lambda *_: None, records_dir=out / "records", export_every_s=0.0)
sys.exit(130 if summary.interrupted else 0)
"""


def start(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(out), str(STEPS)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def results(out: Path) -> dict:
    lines = (out / "records" / "runs.jsonl").read_text().splitlines()
    return {r["run_key"]: (r["metrics"], r["curve"]) for r in map(json.loads, lines)}


def wait_for_checkpoint(out: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.time()
    while not list((out / "checkpoints").glob("*.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted")
    p = start(out)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return results(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_chunk_stopped_between_checkpoints_resumes_bitwise(sig, uninterrupted, tmp_path):
    p = start(tmp_path)
    wait_for_checkpoint(tmp_path, p)
    time.sleep(0.3)  # past a checkpoint, before the next few
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert p.returncode == 130, err  # stopped on request after checkpointing
    else:
        assert p.returncode == -signal.SIGKILL
    assert list((tmp_path / "checkpoints").glob("*.pt")), "the running parts' checkpoints are kept"
    assert not list((tmp_path / "checkpoints").glob(".*.tmp")) or sig == signal.SIGKILL
    p = start(tmp_path)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert results(tmp_path) == uninterrupted  # metrics and learning curves, bitwise
    assert not list((tmp_path / "checkpoints").glob("*")), "finished parts leave no checkpoint behind"


def test_one_overall_progress_line():
    import io

    from gradreg.ensemble.loop import ProgressLine

    out = io.StringIO()
    line = ProgressLine(runs=4, chunks=2, member_steps=400, stream=out, enabled=True)
    line.steps(100, 2)  # 200 of 400 member-steps
    line.run_done()
    line.chunk_done()
    text = out.getvalue().split("\r")[-1]
    assert text.startswith("runs 1/4  chunks 1/2   50.0% of training  ETA ")
    line.close()
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1  # one line, redrawn in place

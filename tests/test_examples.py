"""Every script in examples/ runs with --dry-run (random tensors shaped like the data, a few
steps) in a subprocess, exits 0 and prints its final ``done:`` line."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

SCRIPTS = {
    "mnist_quickstart.py": "done: test accuracy",
    "cifar_resnet_spectreg.py": "done: test accuracy",
    "transformer_embedding.py": "done: test accuracy",
    "custom_regularizer.py": "done: 2 ensemble members and one single run",
}


def run(args, timeout=120):
    proc = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_every_example_is_tested():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(SCRIPTS) | {"ddp_launch.py"}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_example_dry_run(script):
    out = run([sys.executable, str(EXAMPLES / script), "--dry-run"])
    assert SCRIPTS[script] in out.splitlines()[-1], out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_example_under_torchrun():
    """Two gloo ranks on CPU, launched the documented way (torchrun is torch.distributed.run)."""
    out = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(EXAMPLES / "ddp_launch.py"),
            "--dry-run",
        ]
    )
    assert "done: world size 2," in out.splitlines()[-1], out

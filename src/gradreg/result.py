"""What one run produced: `RunResult`, and `TrainingDiverged`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch


def hardware(device) -> str:
    """The device a run trained on, in words: the GPU's name, or the CPU's model and the torch threads in use.

    Args:
        device (torch.device | str): The device.

    Returns:
        E.g. `"cuda:0 (NVIDIA H100)"` or `"cpu (<model name>, 16 cores)"`.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        import platform

        model = platform.processor()
    return f"cpu ({model or 'unknown CPU'}, {os.cpu_count()} cores)"


class Interrupted(Exception):
    """Training stopped on request; every running run saved its checkpoint first."""


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or Inf. The message names the step and the term."""


@dataclass
class RunResult:
    """What one run produced.

    `dev`/`test` are accuracies in [0, 1] for classification and mean squared errors for SIN
    (`metric` says which). The comment on each field gives its meaning.
    """

    config: dict
    metric: str
    dev: float
    test: float
    train_loss: float  # mean data loss over the last `penalty_window` steps
    penalties: dict  # each regularizer's unweighted penalty, mean over the last steps
    weight_norm_sq: float  # sum ||w||^2 over conv/dense weights (the paper's Figure 4)
    wall_time_s: float
    steps_per_s: float
    curve: list = field(default_factory=list)  # [{"step", "train_loss", "dev", "test"}, ...]
    torch_version: str = torch.__version__
    device: str = "cpu"
    steps_done: int = 0
    grad_norms: dict = field(default_factory=dict)  # mean ||J_g||_F at train/test/off-manifold points
    fit: list | None = None  # regression only: predictions on the test grid (SIN figures)
    ensemble_size: int = 1  # members trained together (wall time and steps/s are per member)
    error: str | None = None  # set when an ensemble member diverged (a single run raises)
    robust: dict | None = None  # robustness probes (gradreg.probes), when the config asks for them

    def to_dict(self) -> dict:
        """The result as a JSON-ready dict (`dataclasses.asdict`).

        Returns:
            Every field, recursively converted.
        """
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """The result in one line (two with robustness probes), for a log.

        Returns:
            Dataset, model, size, seed, regularizers, dev/test score (accuracy or MSE), training
            loss, steps, time and device; then `robust_summary` of the probes, if any.
        """
        cfg = self.config
        regs = " ".join(f"{r['name']}={r['weight']:g}" for r in cfg["regularizers"]) or "NoGR"
        if self.metric == "accuracy":
            score = f"dev {100 * self.dev:.2f}%  test {100 * self.test:.2f}%"
        else:
            score = f"dev MSE {self.dev:.5f}  test MSE {self.test:.5f}"
        line = (
            f"{cfg['dataset']} {cfg['model']} n={cfg['train_size']} seed={cfg['seed']} {regs}: {score}  "
            f"train loss {self.train_loss:.4f}  {self.steps_done} steps in {self.wall_time_s:.1f}s "
            f"({self.steps_per_s:.1f} steps/s, {self.device})"
        )
        return line if self.robust is None else line + "\n" + robust_summary(self.robust)


def robust_summary(robust: dict) -> str:
    """The robustness probes of a run in one line: PGD accuracy per budget and the masking flags.

    Args:
        robust: A run's `robust` record (`gradreg.probes.robust_probes`).

    Returns:
        For example `robust accuracy (PGD-20, 1000 test images): Linf 0.1 76.9%, L2 2 40.4%;
        masking flags: none (probes 28.2 s)`.
    """
    points = ", ".join(
        f"{'Linf' if p['norm'] == 'linf' else 'L2'} {p['eps']:g} {100 * p['pgd']:.1f}%" for p in robust["points"]
    )
    flags = "; ".join(robust["flags"]) or "none"
    return (
        f"robust accuracy (PGD-{robust['steps']}, {robust['examples']} test images): {points}; "
        f"masking flags: {flags} (probes {robust['seconds']:.1f} s)"
    )

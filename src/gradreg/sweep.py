"""Run an experiment: its plan and every missing run go into the store, then the report is
rebuilt from the store.

Restartable by construction: a run is stored in its own transaction as soon as its chunk
finishes, and a rerun of the same command trains only the runs the store lacks. An
executor decides where chunks train: :class:`InProcessExecutor` here (the default, no extra
dependencies) or :class:`gradreg.ray_executor.RayExecutor` on a Ray cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

from .config import TrainConfig
from .engine import iter_train_many
from .experiments import Experiment
from .store import Store
from .train import RunResult

STORE_NAME = "gradreg.sqlite"


def result_record(result: RunResult) -> dict:
    """A :class:`RunResult` as a store record (config, metrics, curve, timings, device)."""
    metrics = {
        "metric": result.metric, "dev": result.dev, "test": result.test, "train_loss": result.train_loss,
        "penalties": result.penalties, "weight_norm_sq": result.weight_norm_sq, "grad_norms": result.grad_norms,
        "fit": result.fit, "ensemble_size": result.ensemble_size, "steps_done": result.steps_done,
    }
    rec = {
        "config": result.config, "metrics": metrics, "curve": result.curve, "wall_time_s": result.wall_time_s,
        "steps_per_s": result.steps_per_s, "device": result.device, "torch_version": result.torch_version,
    }
    if result.error:
        rec["error"] = result.error
    return rec


OnResult = Callable[[int, RunResult], None]


class Executor(Protocol):
    def run(self, configs: Sequence[TrainConfig], on_result: OnResult) -> None:
        """Train ``configs``; call ``on_result(index, result)`` as each finishes."""


@dataclass
class InProcessExecutor:
    """Trains in this process with the ensemble engine."""

    data_dir: Optional[str] = None
    max_members: Optional[int] = None
    progress: Optional[bool] = None

    def run(self, configs: Sequence[TrainConfig], on_result: OnResult) -> None:
        for o in iter_train_many(configs, data_dir=self.data_dir, max_members=self.max_members, progress=self.progress):
            on_result(o.index, o.result)


@dataclass
class SweepSummary:
    experiment: str
    planned: int
    already_stored: int
    trained: int
    wall_time_s: float


def run_experiment(exp: Experiment, out_dir: Path, executor: Executor, log=print, meta: Optional[dict] = None) -> SweepSummary:
    """Store ``exp``'s plan (with ``meta``, e.g. the command), train the runs the store lacks,
    store each as it finishes."""
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    with Store(out_dir / STORE_NAME) as store:
        store.put_plan(exp.name, exp.plan() | (meta or {}))
        runs = exp.runs()
        dicts = [c.to_dict() for c in runs]
        done = [d for d in dicts if store.has(d)]
        store.link(exp.name, done)
        todo = [c for c, d in zip(runs, dicts) if not store.has(d)]
        log(f"{exp.name}: {len(runs)} runs planned, {len(done)} already stored, {len(todo)} to train")

        def on_result(i: int, result: RunResult) -> None:
            store.put(exp.name, result_record(result))

        if todo:
            executor.run(todo, on_result)
    return SweepSummary(exp.name, len(runs), len(done), len(todo), time.perf_counter() - t0)

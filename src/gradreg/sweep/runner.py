"""Run an experiment: its plan and every missing run go into the store, then the report is rebuilt from the store.

Restartable by construction: a run is stored in its own transaction as soon as its chunk
finishes, and a rerun of the same command trains only the runs the store lacks. An executor
decides where chunks train: `InProcessExecutor` here (the default, no extra dependencies) or
`gradreg.sweep.ray.RayExecutor` on a Ray cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..config import TrainConfig, canonical_config
from ..ensemble.loop import DEFAULT_CHECKPOINT_SECONDS, Interrupted, ProgressLine, iter_train_many
from ..ensemble.plan import plan_chunks
from ..paper.experiments import Experiment
from ..train import RunResult
from .records import RUNS_FILE, export_records, import_records
from .store import Store

STORE_NAME = "gradreg.sqlite"


def result_record(result: RunResult) -> dict:
    """A `RunResult` as a store record (config, metrics, curve, timings, device).

    Args:
        result: A finished run.

    Returns:
        The record `Store.put` takes; `error` only for a failed run, `robust` in the metrics
        only with probes.
    """
    metrics = {
        "metric": result.metric,
        "dev": result.dev,
        "test": result.test,
        "train_loss": result.train_loss,
        "penalties": result.penalties,
        "weight_norm_sq": result.weight_norm_sq,
        "grad_norms": result.grad_norms,
        "fit": result.fit,
        "ensemble_size": result.ensemble_size,
        "steps_done": result.steps_done,
    }
    if result.robust is not None:
        metrics["robust"] = result.robust
    rec = {
        "config": result.config,
        "metrics": metrics,
        "curve": result.curve,
        "wall_time_s": result.wall_time_s,
        "steps_per_s": result.steps_per_s,
        "device": result.device,
        "torch_version": result.torch_version,
    }
    if result.error:
        rec["error"] = result.error
    return rec


OnResult = Callable[[int, RunResult], None]


class Executor(Protocol):
    """Where the chunks of a sweep train: anything with this `run` method."""

    def run(self, configs: Sequence[TrainConfig], on_result: OnResult) -> None:
        """Train `configs`; call `on_result(index, result)` as each finishes.

        Args:
            configs: The runs to train.
            on_result: Called with the index into `configs` and the run's result.
        """


@dataclass
class InProcessExecutor:
    """Trains in this process with the ensemble engine.

    Args:
        data_dir: The data directory (None: `GRADREG_DATA_DIR` or the cache).
        max_members: The chunk size cap (None: the engine's default).
        progress: One overall progress line on stderr (None: only on a terminal).
        checkpoint_dir: Where each running part of a chunk is checkpointed every
            `checkpoint_seconds` of wall time (a rerun resumes it; None: no checkpoints).
        checkpoint_seconds: The checkpoint period, in seconds of wall time.
        stop: An event that, once set, makes every part checkpoint and raise
            `gradreg.ensemble.loop.Interrupted` within one step.
        download: Whether missing data may be downloaded (None: only into the cache).
    """

    data_dir: str | None = None
    max_members: int | None = None
    progress: bool | None = None
    checkpoint_dir: Path | None = None
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS
    stop: threading.Event | None = None
    download: bool | None = None

    def run(self, configs: Sequence[TrainConfig], on_result: OnResult) -> None:
        """Train `configs` chunk by chunk; call `on_result(index, result)` as each run finishes.

        Args:
            configs: The runs to train.
            on_result: Called with the index into `configs` and the run's result.

        Raises:
            gradreg.ensemble.loop.Interrupted: `stop` was set (the running parts are checkpointed).
        """
        configs = list(configs)
        chunks = plan_chunks(configs, self.max_members)
        line = ProgressLine(len(configs), len(chunks), sum(c.steps for c in configs), enabled=self.progress)
        chunk_of = {i: n for n, ch in enumerate(chunks) for i in ch}
        left = {n: len(ch) for n, ch in enumerate(chunks)}
        try:
            for o in iter_train_many(
                configs,
                data_dir=self.data_dir,
                max_members=self.max_members,
                progress=False,
                checkpoint_dir=self.checkpoint_dir,
                checkpoint_seconds=self.checkpoint_seconds,
                stop=self.stop,
                on_steps=line.steps,
                download=self.download,
            ):
                on_result(o.index, o.result)
                line.run_done()
                n = chunk_of[o.index]
                left[n] -= 1
                if not left[n]:
                    line.chunk_done()
        finally:
            line.close()


@dataclass
class SweepSummary:
    """What a sweep did.

    Attributes:
        experiment: The experiment's name.
        planned: The runs in its plan.
        already_stored: The runs found in the store before training.
        trained: The runs trained and stored now.
        wall_time_s: The sweep's wall time, in seconds.
        interrupted: Whether a stop request ended it early.
    """

    experiment: str
    planned: int
    already_stored: int
    trained: int
    wall_time_s: float
    interrupted: bool = False


def run_experiment(
    exp: Experiment,
    out_dir: Path,
    executor: Executor,
    log=print,
    meta: dict | None = None,
    records_dir: Path | None = None,
    export_every_s: float = 0.0,
) -> SweepSummary:
    """Store `exp`'s plan (with `meta`), train the runs the store lacks, store each as it finishes.

    Before training, the store is verified and its run keys migrated to this version's
    normalization.

    Args:
        exp: The experiment.
        out_dir: The directory of the store (`gradreg.sqlite`).
        executor: Where the runs train.
        log: Where progress lines go (default `print`).
        meta: Stored with the plan, e.g. the command.
        records_dir: Text run records (`gradreg.sweep.records`). Records found there are
            imported first (so a fresh machine trains only what is missing), and the store is
            exported there as runs finish (at most every `export_every_s` seconds) and at the
            end. None: no records.
        export_every_s: The least time between two exports, in seconds (default 0: after every
            run).

    Returns:
        The summary; `interrupted` when a stop request ended the sweep (finished runs are
        stored).

    Raises:
        StoreError: The store is damaged or cannot be written.
        RecordsError: The text records cannot be imported.
    """
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    with Store(out_dir / STORE_NAME) as store:
        store.verify()
        moved = store.migrate_keys(canonical_config)
        if moved:
            log(
                f"migrated {moved} stored runs to this gradreg version's run keys (numbers normalized, e.g. "
                "weight_decay=0 is 0.0); their results are kept"
            )
        if records_dir is not None and (Path(records_dir) / RUNS_FILE).is_file():
            n = import_records(store, Path(records_dir))
            if n:
                log(f"imported {n} runs from {Path(records_dir) / RUNS_FILE}")
        store.put_plan(exp.name, exp.plan() | (meta or {}))
        runs = exp.runs()
        dicts = [c.to_dict() for c in runs]
        done = [d for d in dicts if store.has(d)]
        store.link(exp.name, done)
        todo = [c for c, d in zip(runs, dicts) if not store.has(d)]
        log(f"{exp.name}: {len(runs)} runs planned, {len(done)} already stored, {len(todo)} to train")

        stored = 0
        last_export = time.perf_counter()

        def export() -> None:
            if records_dir is not None:
                export_records(store, Path(records_dir))

        def on_result(i: int, result: RunResult) -> None:
            nonlocal stored, last_export
            store.put(exp.name, result_record(result))
            stored += 1
            if time.perf_counter() - last_export >= export_every_s:
                export()
                last_export = time.perf_counter()

        try:
            if todo:
                executor.run(todo, on_result)
        except Interrupted:
            return SweepSummary(exp.name, len(runs), len(done), stored, time.perf_counter() - t0, interrupted=True)
        finally:
            export()
    return SweepSummary(exp.name, len(runs), len(done), len(todo), time.perf_counter() - t0)

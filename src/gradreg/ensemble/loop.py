"""Train many runs at once: the ensemble engine's loop.

`train_many(configs)` takes a list of `gradreg.config.TrainConfig` and returns one
`gradreg.result.RunResult` per config, in order; `iter_train_many` yields each as its chunk
finishes. Configs that differ only in seed, training-set size, regularizer weights, weight
decay and learning rate train together (`gradreg.ensemble.plan`): one forward and one backward
pass per step for all members of a chunk.

On CPU (`strategy="auto"`) each member is its own single run, the ops of
`gradreg.train.train` on one intra-op thread, with members spread over worker threads: packing
gains nothing measurable on CPU, and this way a member's record is bitwise the one
`gradreg train` gives for its config, whatever chunk, thread count, process or Ray worker
trained it. On a GPU the members of a chunk are packed.

Strategies: `"packed"` (`gradreg.ensemble.pack`: grouped convolutions and batched matmuls for
the layers it knows), `"vmap"` (`gradreg.ensemble.functional`: any module through
`torch.func`), `"sequential"` (one `gradreg.train.train` after the other, on CPU spread over
worker threads) and `"auto"`: sequential on CPU; on a GPU packed where the architecture packs,
else vmap where a trial step works, else sequential with a warning that says why.

One loop. A packed part (`train_part`) is driven by the single run's `gradreg.train.RunState`,
with K members: the same evaluation, final probes, loss windows, divergence checks,
checkpoints and progress; only the step differs (`EnsembleTrainer.step`).

Independence. A member's result does not depend on K or on its neighbours: members share no
parameters, no statistics and no random stream. Each member draws, from streams derived from
its own seed exactly as `gradreg.train.train` does, its training subset, init, batch order,
dropout masks (packed), projections and augmentation. A packed member therefore follows the
same trajectory as a single run, up to floating-point summation order.

Never lose work. With `checkpoint_dir`, every part of a chunk (a chunk is split over CPU
worker threads) is checkpointed atomically every `checkpoint_seconds` of wall time, and a
rerun of the same configs resumes it from there; on CPU the resumed result is bitwise the one
an uninterrupted run gives. Setting `stop` (a `threading.Event`; the CLI sets it on Ctrl-C)
makes every part save its checkpoint and raise `Interrupted` within one step.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import data as D
from .. import smoothness as S
from ..config import TrainConfig
from ..datasets import load_splits
from ..models import build_model
from ..probes import robust_probes
from ..result import Interrupted, RunResult
from ..streams import stream_seed
from ..train import RunOptions, RunState, smoothness_points, term_names, train_model
from .data import EnsembleData, ensemble_data
from .plan import (
    check_max_members,
    chunk_cap,
    cpu_workers,
    default_max_members,
    ensemble_key,
    group_configs,
    members_that_fit,
    on_one_thread,
    plan_chunks,
    single_threaded_ops,
    split_evenly,
)
from .trainer import STRATEGIES, EnsembleTrainer, choose_strategy, measure_member_bytes, warn_sequential

__all__ = [
    "train_many",
    "iter_train_many",
    "MemberOutcome",
    "Interrupted",
    "EnsembleTrainer",
    "PackedTrainer",
    "plan_chunks",
    "ensemble_key",
    "default_max_members",
    "members_that_fit",
    "chunk_cap",
    "split_evenly",
    "cpu_workers",
    "single_threaded_ops",
    "measure_member_bytes",
    "STRATEGIES",
]

PackedTrainer = EnsembleTrainer  # the name before the torch.func path existed
DEFAULT_CHECKPOINT_SECONDS = 300.0


@dataclass
class MemberOutcome:
    """One finished member.

    Attributes:
        index: Its index in the input list.
        result: Its result.
        state_dict: Its final weights under the single model's parameter names, when asked for.
    """

    index: int
    result: RunResult
    state_dict: dict | None = None


ProgressFn = Callable[[int, int], None]  # (steps just done by one part, members in that part)


# --------------------------------------------------------------------------- one part


def part_key(cfgs: Sequence[TrainConfig], strategy: str, dtype: torch.dtype) -> str:
    """The id of a part's checkpoint: its members' configs, strategy and dtype."""
    text = json.dumps([c.to_dict() for c in cfgs] + [strategy, str(dtype)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class _Part:
    """A part's members as `RunState` drives them (its `Members`).

    One ensemble model (`EnsembleTrainer`) on member-major batches (`lead` 2) of the members'
    data (`EnsembleData`), each member with its own batch sampler.
    """

    lead = 2

    def __init__(self, cfgs: list[TrainConfig], data: EnsembleData, trainer: EnsembleTrainer):
        self.cfgs, self.data, self.trainer = cfgs, data, trainer
        self.model, self.k, self.dtype, self.device = trainer.model, trainer.k, trainer.dtype, trainer.device
        self.samplers = [
            D.BatchSampler(len(i), c.batch_size, torch.Generator().manual_seed(stream_seed(c.seed, "batches")))
            for c, i in zip(cfgs, data.train_idx)
        ]

    def step(self, step: int, state: RunState) -> None:
        """One step of every member (`EnsembleTrainer.step`); its terms go to `state.record`."""
        data = self.data
        pool_idx = torch.stack([ti[next(s)] for ti, s in zip(data.train_idx, self.samplers)]).to(self.device)
        xb = data.inputs(data.pool_x[pool_idx], data.luts, self.dtype)
        terms, active = self.trainer.step(xb, data.pool_y[pool_idx], step)
        state.record(step, terms, [True, *(s in active for s in range(len(self.trainer.kinds)))])

    def state_dict(self) -> dict:
        return {"trainer": self.trainer.state_dict(), "samplers": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["trainer"])
        for s, sd in zip(self.samplers, state["samplers"]):
            s.load_state_dict(sd)

    def _inputs(self, raw: Tensor, luts: Tensor | None) -> Tensor:
        """`(b, *in)` raw values, shared by the members, as each member's inputs `(K, b, *in)`."""
        return self.data.inputs(raw.unsqueeze(0).expand(self.k, *raw.shape), luts, self.dtype)

    def eval_set(self, name: str, limit: int | None):
        x, y, luts = self.data.sets[name]
        return x[:limit], y[:limit], lambda raw: self._inputs(raw, luts)

    def _member_inputs(self, raw: Tensor, luts: Tensor | None, mi: int) -> Tensor:
        """`(b, *in)` raw values as member `mi`'s inputs (with its row of `luts`)."""
        return self.data.inputs(raw.unsqueeze(0), None if luts is None else luts[mi : mi + 1], self.dtype)[0]

    def smoothness_points(self) -> dict[str, Tensor]:
        """Each member's `smoothness_points`, as the member sees its inputs, stacked `(K, N, *in)`."""
        data, n = self.data, S.N_POINTS
        x_test, _, test_luts = data.sets["test"]
        points = []
        for mi, c in enumerate(self.cfgs):
            x_train = self._member_inputs(data.pool_x[data.train_idx[mi][:n].to(data.pool_x.device)], data.luts, mi)
            points.append(smoothness_points(c, x_train, x_test, partial(self._member_inputs, luts=test_luts, mi=mi)))
        return {key: torch.stack([p[key] for p in points]) for key in points[0]}

    def test_inputs(self) -> Tensor:
        return self._inputs(self.data.sets["test"][0], None)

    def weight_norms_sq(self) -> list[float]:
        return [float(sum(p[mi].detach().double().pow(2).sum() for p in self.trainer.decayed)) for mi in range(self.k)]

    def member_state(self, mi: int) -> dict[str, Tensor]:
        return self.model.member_state_dict(mi)

    def weights(self, mi: int) -> dict[str, Tensor]:
        """Member `mi`'s weights on the CPU, under the single model's names."""
        return {n: v.detach().cpu().clone() for n, v in self.member_state(mi).items()}


def train_part(
    cfgs: list[TrainConfig],
    data_dir,
    dtype,
    strategy: str,
    keep_weights: bool,
    *,
    run: RunOptions | None = None,
    download=None,
) -> list[tuple[RunResult, dict | None]]:
    """Train one part (a list of configs with one ensemble key) as one ensemble.

    Args:
        cfgs: The members' configs.
        data_dir: Where the datasets are.
        dtype: The ensemble's compute dtype.
        strategy: `"packed"` or `"vmap"`.
        keep_weights: Return each member's final weights.
        run: How the part is driven, as a single run is: its checkpoint (resumed from when
            `run.resume`), stop event and per-step callback. None: no checkpoint.
        download: Passed to the dataset loaders.

    Returns:
        Per member, its result (with its robustness probes, where its config asks for them) and
        its weights on the CPU under the single model's names (None unless `keep_weights`).

    Raises:
        ValueError: CUDA was asked for and is not available, or the checkpoint is of other runs.
        Interrupted: `stop` was set.
    """
    device = torch.device(cfgs[0].device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available; use device='cpu'")
    data = ensemble_data(cfgs, data_dir, device, download)
    part = _Part(cfgs, data, EnsembleTrainer(cfgs, device, dtype, strategy))
    state = RunState(cfgs, device, term_names(part.trainer.kinds))
    state.run_steps(part, run if run is not None else RunOptions())
    results = state.finish(part, robust=lambda mi: _member_probes(cfgs[mi], part.weights(mi), data_dir, download))
    return [(res, part.weights(mi) if keep_weights else None) for mi, res in enumerate(results)]


# --------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class _EngineOptions:
    """What every run and part that `iter_train_many` trains shares (its arguments)."""

    data_dir: Any
    dtype: torch.dtype
    keep_weights: bool
    ckdir: Path | None
    checkpoint_seconds: float
    stop: threading.Event | None
    on_steps: ProgressFn | None
    download: Any

    def checkpoint(self, kind: str, cfgs: Sequence[TrainConfig], strategy: str, dtype: torch.dtype) -> Path | None:
        """The checkpoint file of a run (`kind` `"run"`) or a part (`"part"`); None: no checkpoints."""
        return None if self.ckdir is None else self.ckdir / f"{kind}-{part_key(cfgs, strategy, dtype)}.pt"

    def run(self, checkpoint: Path | None, members: int) -> RunOptions:
        """How a run or a part of `members` members is driven: its checkpoint, stop and progress."""
        on_steps = self.on_steps
        return RunOptions(
            checkpoint=checkpoint,
            resume=checkpoint is not None,
            on_step=None if on_steps is None else (lambda _done: on_steps(1, members)),
            checkpoint_seconds=self.checkpoint_seconds if checkpoint is not None else None,
            stop=self.stop,
        )


def _parts(chunk: list[int], workers: int) -> list[list[int]]:
    return split_evenly(chunk, workers)


def _checked(configs, strategy: str, max_members, workers, checkpoint_seconds) -> list[TrainConfig]:
    """`iter_train_many`'s configs as a list, once its arguments are checked.

    Raises:
        ValueError: An argument is not valid.
        TypeError: A config is not a `TrainConfig`.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not valid; valid choices: {', '.join(STRATEGIES)}")
    check_max_members(max_members)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    if not checkpoint_seconds > 0:
        raise ValueError(f"checkpoint_seconds must be > 0, got {checkpoint_seconds!r}")
    configs = list(configs)
    for i, c in enumerate(configs):
        if not isinstance(c, TrainConfig):
            raise TypeError(f"configs[{i}] is a {type(c).__name__}, not a TrainConfig")
    return configs


def _auto_strategy(c0: TrainConfig, cpu: bool) -> tuple[str, str]:
    """What `strategy="auto"` trains a group with, and why it is not packed (`""`: no reason to give).

    On CPU every run is a single run; on a GPU see `choose_strategy`, except that a hidden-layer
    penalty needs the packed path and adversarial training a single model.
    """
    use, why = ("sequential", "") if cpu else choose_strategy(c0)
    if use == "vmap" and c0.wrt is not None:
        use, why = "sequential", f"{why}; wrt (a hidden layer) is not supported by the torch.func path"
    if use != "sequential" and c0.adversarial is not None:
        use, why = "sequential", "adversarial training runs one model at a time"
    return use, why


def iter_train_many(  # noqa: PLR0913 (the engine's public, keyword-only options, each documented)
    configs: Sequence[TrainConfig],
    *,
    data_dir=None,
    strategy: str = "auto",
    max_members: int | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool | None = False,
    keep_weights: bool = False,
    workers: int | None = None,
    checkpoint_dir: os.PathLike | None = None,
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
    stop: threading.Event | None = None,
    on_steps: ProgressFn | None = None,
    download=None,
) -> Iterator[MemberOutcome]:
    """Train `configs` and yield each member's outcome as soon as its part finishes.

    Configs are grouped by `ensemble_key`; each group is split into chunks of at most
    `max_members`; on CPU a chunk is split further over `workers` threads.

    Args:
        configs: The runs.
        data_dir: Where the datasets are.
        strategy: One of `STRATEGIES` (the module docstring).
        max_members: The chunk size cap; None: `default_max_members`.
        dtype: The ensemble's compute dtype (float64 for exactness tests).
        progress: Not used: progress is shown through `on_steps` (the sweep's `ProgressLine`).
        keep_weights: Return each member's final weights in its `MemberOutcome`.
        workers: CPU worker threads, each with one intra-op thread; None: `cpu_workers`.
        checkpoint_dir: Where parts and runs keep their checkpoints (the module docstring).
        checkpoint_seconds: Wall time between checkpoints.
        stop: Once set, every part and run checkpoints and raises `Interrupted`.
        on_steps: `on_steps(n, members)` after every step of every part (progress displays).
        download: Passed to the dataset loaders.

    Yields:
        Each member's `MemberOutcome`, as its part finishes.

    Raises:
        ValueError: An argument is not valid.
        TypeError: A config is not a `TrainConfig`.
    """
    configs = _checked(configs, strategy, max_members, workers, checkpoint_seconds)
    ckdir = None if checkpoint_dir is None else Path(checkpoint_dir)
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
        for stale in ckdir.glob(".*.tmp"):  # a write cut off by a hard kill
            stale.unlink(missing_ok=True)
    opts = _EngineOptions(data_dir, dtype, keep_weights, ckdir, checkpoint_seconds, stop, on_steps, download)
    for indices in group_configs(configs):
        c0 = configs[indices[0]]
        cpu = torch.device(c0.device).type == "cpu"
        n_workers = (cpu_workers(torch.device(c0.device)) if workers is None else workers) if cpu else 1
        use, why = (strategy, "") if strategy != "auto" else _auto_strategy(c0, cpu)
        if use == "sequential":
            if strategy == "auto" and why:
                warn_sequential(c0, len(indices), why)
            yield from _train_singles(indices, configs, n_workers, opts)
            continue
        cap = chunk_cap(c0, max_members)
        for start in range(0, len(indices), cap):
            chunk = indices[start : start + cap]
            yield from _train_chunk(chunk, configs, use, n_workers, opts)


def _member_probes(cfg: TrainConfig, state_dict: dict, data_dir, download) -> dict:
    """A packed member's robustness probes: its weights in a single model, probed as a single run is.

    Args:
        cfg: The member's config.
        state_dict: Its weights under the single model's names.
        data_dir: Where the datasets are.
        download: Passed to the dataset loaders.

    Returns:
        The probes (`gradreg.probes.robust_probes`).
    """
    device = torch.device(cfg.device)
    model = build_model(cfg, torch.Generator().manual_seed(stream_seed(cfg.seed, "init")))
    model.load_state_dict(state_dict)
    model.to(device)
    splits = load_splits(cfg, data_dir, device, download)
    return robust_probes(
        model, cfg, splits, device, lambda scfg: train_model(scfg, splits=splits, data_dir=data_dir, threads=None)[1]
    )


def _train_singles(
    indices: list[int], configs: list[TrainConfig], workers: int, opts: _EngineOptions
) -> Iterator[MemberOutcome]:
    """Each config as its own `gradreg.train.train_model` run, `workers` at a time.

    Each run has one intra-op thread. This is the CPU path: a member's record is bitwise the
    one `gradreg train` gives for its config.

    Yields:
        Each run's `MemberOutcome`, as it finishes; its checkpoint is deleted once the caller
        has it.
    """

    def path(i: int) -> Path | None:
        return opts.checkpoint("run", [configs[i]], "single", torch.float32)

    def one(i: int) -> MemberOutcome:
        if opts.stop is not None and opts.stop.is_set():
            raise Interrupted("stopped before the next run")
        cfg = configs[i]
        splits = load_splits(cfg, opts.data_dir, cfg.device, opts.download)
        res, model = train_model(cfg, splits=splits, data_dir=opts.data_dir, run=opts.run(path(i), 1), threads=1)
        sd = {n: v.detach().cpu().clone() for n, v in model.state_dict().items()} if opts.keep_weights else None
        return MemberOutcome(i, res, sd)

    def finished(i: int) -> None:
        ck = path(i)
        if ck is not None:
            ck.unlink(missing_ok=True)

    if workers == 1 or len(indices) == 1:
        for i in indices:
            outcome = one(i)
            yield outcome
            finished(i)  # after the caller stored it
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with single_threaded_ops(), ThreadPoolExecutor(max_workers=min(workers, len(indices))) as pool:
        futures = {pool.submit(on_one_thread(one), i): i for i in indices}
        error: BaseException | None = None
        for f in as_completed(futures):
            try:
                outcome = f.result()
            except BaseException as e:  # running runs finish or checkpoint; queued ones never start
                error = error or e
                for g in futures:
                    g.cancel()
                continue
            yield outcome
            finished(futures[f])
        if error is not None:
            raise error


def _train_chunk(
    chunk: list[int], configs: list[TrainConfig], strategy: str, workers: int, opts: _EngineOptions
) -> Iterator[MemberOutcome]:
    """A chunk's members packed (`train_part`), split into `workers` parts on worker threads.

    Yields:
        Each member's `MemberOutcome`, a part at a time as parts finish; a part's checkpoint is
        deleted once the caller has every member of it. An error in one part is raised after the
        other parts finish or checkpoint.
    """
    parts = _parts(chunk, workers)

    def path(part: list[int]) -> Path | None:
        return opts.checkpoint("part", [configs[i] for i in part], strategy, opts.dtype)

    def run(part: list[int]) -> list[MemberOutcome]:
        cfgs, o = [configs[i] for i in part], opts
        outs = train_part(
            cfgs, o.data_dir, o.dtype, strategy, o.keep_weights, run=o.run(path(part), len(part)), download=o.download
        )
        return [MemberOutcome(part[j], res, sd) for j, (res, sd) in enumerate(outs)]

    def finished(part: list[int]) -> None:
        p = path(part)
        if p is not None:
            p.unlink(missing_ok=True)

    if len(parts) == 1:
        outcomes = run(parts[0])
        yield from outcomes
        finished(parts[0])  # after the caller stored every member
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with single_threaded_ops(), ThreadPoolExecutor(max_workers=len(parts)) as pool:
        futures = {pool.submit(on_one_thread(run), p): p for p in parts}
        error: BaseException | None = None
        for f in as_completed(futures):
            try:
                outcomes = f.result()
            except BaseException as e:  # let the other parts finish or checkpoint first
                error = error or e
                continue
            yield from outcomes
            finished(futures[f])
        if error is not None:
            raise error


def train_many(configs: Sequence[TrainConfig], **kwargs) -> list[RunResult]:
    """One `RunResult` per config, in input order (`iter_train_many` takes the same arguments)."""
    out: list = [None] * len(configs)
    for o in iter_train_many(configs, **kwargs):
        out[o.index] = o.result
    return out


class ProgressLine:
    """One overall progress line on stderr: runs done / total, chunks done / total, ETA.

    `steps(n, members)` counts member-steps from the worker threads; `run_done()` and
    `chunk_done()` count finished work. The line is redrawn at most once a second.

    Args:
        runs: The runs in the sweep.
        chunks: Its chunks.
        member_steps: Its training steps, summed over the runs.
        stream: Where to write; None: stderr.
        enabled: Draw the line; None: only on a TTY.
    """

    def __init__(self, runs: int, chunks: int, member_steps: int, stream=None, enabled: bool | None = None):
        self.runs, self.chunks, self.total = runs, chunks, max(member_steps, 1)
        self.done_runs = self.done_chunks = self.done_steps = 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.lock = threading.Lock()

    def steps(self, n: int, members: int) -> None:
        with self.lock:
            self.done_steps += n * members
        self.draw()

    def run_done(self) -> None:
        self.done_runs += 1
        self.draw(force=True)

    def chunk_done(self) -> None:
        self.done_chunks += 1
        self.draw(force=True)

    def line(self) -> str:
        dt = time.perf_counter() - self.t0
        frac = min(self.done_steps / self.total, 1.0)
        eta = dt * (1 - frac) / frac if frac > 0 else float("nan")
        eta_s = "?" if eta != eta else f"{int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}"
        return (
            f"runs {self.done_runs}/{self.runs}  chunks {self.done_chunks}/{self.chunks}  "
            f"{100 * frac:5.1f}% of training  ETA {eta_s}"
        )

    def draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        self.stream.write("\r" + self.line() + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

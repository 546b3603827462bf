"""Train many runs at once: the ensemble engine's loop.

``train_many(configs)`` takes a list of :class:`~gradreg.config.TrainConfig` and returns one
:class:`~gradreg.result.RunResult` per config, in order; ``iter_train_many`` yields each as
its chunk finishes. Configs that differ only in seed, training-set size, regularizer weights,
weight decay and learning rate train together (:mod:`gradreg.ensemble.plan`): one forward
and one backward pass per step for all members of a chunk.

On CPU (``strategy="auto"``) each member is its own single run, the ops of
:func:`~gradreg.train.train` on one intra-op thread, with members spread over worker threads:
packing gains nothing measurable on CPU, and this way a member's record is bitwise the one
``gradreg train`` gives for its config, whatever chunk, thread count, process or Ray worker
trained it. On a GPU the members of a chunk are packed.

Strategies: ``"packed"`` (:mod:`gradreg.ensemble.pack`: grouped convolutions and batched
matmuls for the layers it knows), ``"vmap"`` (:mod:`gradreg.ensemble.functional`: any
module through ``torch.func``), ``"sequential"`` (one :func:`~gradreg.train.train` after the
other, on CPU spread over worker threads) and ``"auto"``: sequential on CPU; on a GPU packed
where the architecture packs, else vmap where a trial step works, else sequential with a
warning that says why.

Independence. A member's result does not depend on K or on its neighbours: members share no
parameters, no statistics and no random stream. Each member draws, from streams derived from
its own seed exactly as :func:`gradreg.train.train` does, its training subset, init, batch
order, dropout masks (packed), projections and augmentation. A packed member therefore
follows the same trajectory as a single run, up to floating-point summation order.

Never lose work. With ``checkpoint_dir``, every part of a chunk (a chunk is split over CPU
worker threads) is checkpointed atomically every ``checkpoint_seconds`` of wall time, and a
rerun of the same configs resumes it from there; on CPU the resumed result is bitwise the
one an uninterrupted run gives. Setting ``stop`` (a ``threading.Event``; the CLI sets it on
Ctrl-C) makes every part save its checkpoint and raise :class:`Interrupted` within one step.
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
from pathlib import Path

import torch

from .. import data as D
from .. import smoothness as S
from ..atomic import save_torch_atomic
from ..config import TrainConfig
from ..datasets import load_splits
from ..models import build_model
from ..probes import robust_probes, wants_probes
from ..result import Interrupted, RunResult, hardware
from ..streams import stream_seed
from ..train import RunOptions, train_model
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
    """One finished member: its index in the input list, its result, and (when asked for)
    its final weights under the single model's parameter names."""

    index: int
    result: RunResult
    state_dict: dict | None = None


ProgressFn = Callable[[int, int], None]  # (steps just done by one part, members in that part)


# --------------------------------------------------------------------------- one part


def part_key(cfgs: Sequence[TrainConfig], strategy: str, dtype: torch.dtype) -> str:
    """The id of a part's checkpoint: its members' configs, strategy and dtype."""
    text = json.dumps([c.to_dict() for c in cfgs] + [strategy, str(dtype)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _final_probes(trainer: EnsembleTrainer, data: EnsembleData, cfgs, metric: str):
    """Per member: mean ||J_g||_F at its smoothness points (as :func:`gradreg.train.smoothness_points`
    picks them) and, for regression, its predictions on the test grid."""
    model, k, dtype = trainer.model, trainer.k, trainer.dtype
    n = S.N_POINTS
    x_test, _, test_luts = data.sets["test"]
    pts: dict = {"train": [], "test": [], "off_manifold": []}
    for mi, c in enumerate(cfgs):
        lut_tr = None if data.luts is None else data.luts[mi : mi + 1]
        lut_te = None if test_luts is None else test_luts[mi : mi + 1]
        pts["train"].append(
            data.inputs(data.pool_x[data.train_idx[mi][:n].to(data.pool_x.device)].unsqueeze(0), lut_tr, dtype)[0]
        )
        pts["test"].append(data.inputs(x_test[:n].unsqueeze(0), lut_te, dtype)[0])
        a, b, t = S.interpolation_draws(
            len(x_test), n, torch.Generator().manual_seed(stream_seed(c.seed, "smoothness"))
        )
        xa = data.inputs(x_test[a.to(x_test.device)].unsqueeze(0), lut_te, dtype)[0]
        xb = data.inputs(x_test[b.to(x_test.device)].unsqueeze(0), lut_te, dtype)[0]
        pts["off_manifold"].append(S.interpolate(xa, xb, t.to(xa.device)))
    model.eval()
    norms = {key: S.jacobian_frobenius_norms(model, torch.stack(v), lead=2).mean(1).tolist() for key, v in pts.items()}
    fits = None
    if metric == "mse":
        with torch.no_grad():
            fits = model(data.inputs(x_test.unsqueeze(0).expand(k, *x_test.shape), None, dtype)).flatten(1).tolist()
    model.train()
    return [{key: norms[key][mi] for key in norms} for mi in range(k)], fits


def train_part(
    cfgs: list[TrainConfig],
    data_dir,
    dtype,
    strategy: str,
    keep_weights: bool,
    *,
    checkpoint: Path | None = None,
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
    stop: threading.Event | None = None,
    on_steps: ProgressFn | None = None,
    download=None,
) -> list[tuple[RunResult, dict | None]]:
    """Train one part (a list of configs with one ensemble key) as one ensemble."""
    c0 = cfgs[0]
    device = torch.device(c0.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available; use device='cpu'")
    k = len(cfgs)
    metric = "accuracy" if c0.loss == "cross_entropy" else "mse"
    data = ensemble_data(cfgs, data_dir, device, download)
    trainer = EnsembleTrainer(cfgs, device, dtype, strategy)
    model = trainer.model
    samplers = [
        D.BatchSampler(len(i), c0.batch_size, torch.Generator().manual_seed(stream_seed(c.seed, "batches")))
        for c, i in zip(cfgs, data.train_idx)
    ]
    n_terms = 1 + len(trainer.kinds)
    window = torch.zeros(c0.penalty_window, k, n_terms, device=device, dtype=torch.float64)
    seen = torch.zeros(c0.penalty_window, n_terms, device=device, dtype=torch.bool)  # lazy terms skip steps
    first_bad = torch.full((k,), -1, device=device, dtype=torch.long)
    bad_term = torch.full((k,), -1, device=device, dtype=torch.long)
    curves: list[list] = [[] for _ in cfgs]
    start, elapsed = 0, 0.0

    if checkpoint is not None and checkpoint.exists():
        st = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if st.get("configs") != [c.to_dict() for c in cfgs]:
            raise ValueError(f"checkpoint {checkpoint} belongs to other runs; move it away to start afresh")
        trainer.load_state_dict(st["trainer"])
        for s, sd in zip(samplers, st["samplers"]):
            s.load_state_dict(sd)
        window, seen = st["window"].to(device), st["seen"].to(device)
        first_bad, bad_term = st["first_bad"].to(device), st["bad_term"].to(device)
        curves, start, elapsed = st["curves"], st["step"], st["elapsed"]

    eval_chunk = c0.eval_batch_size if c0.bn_batch_stats_at_eval else min(c0.eval_batch_size, max(1, 50_000 // k))

    def evaluate_all() -> dict:
        model.eval()
        out = {}
        with torch.no_grad():
            for name, (xs, ys, luts) in data.sets.items():
                xs, ys = xs[: c0.eval_limit], ys[: c0.eval_limit]
                total = torch.zeros(k, dtype=torch.float64, device=device)
                for i in range(0, len(xs), eval_chunk):
                    raw = xs[i : i + eval_chunk]
                    xb = data.inputs(raw.unsqueeze(0).expand(k, *raw.shape), luts, dtype)
                    logits = model(xb)
                    yb = ys[i : i + eval_chunk]
                    if metric == "accuracy":
                        total += (logits.argmax(2) == yb).sum(1)
                    else:
                        total += (logits - yb.view(1, *yb.shape).to(dtype)).pow(2).flatten(1).sum(1)
                out[name] = (total / (len(xs) if metric == "accuracy" else ys.numel())).tolist()
        model.train()
        return out

    def term_means(step: int) -> list[list[float]]:
        n = min(step, c0.penalty_window)
        if not n:
            return [[float("nan")] * n_terms for _ in range(k)]
        mask = seen[:n].to(torch.float64)  # (n, T)
        sums = (window[:n] * mask.unsqueeze(1)).nansum(0)  # (K, T)
        counts = mask.sum(0)  # (T,)
        return (sums / counts).tolist()

    def curve_point(step: int) -> None:
        means = term_means(step)
        ev = evaluate_all()
        for mi in range(k):
            curves[mi].append({"step": step, "train_loss": means[mi][0], "dev": ev["dev"][mi], "test": ev["test"][mi]})

    t0 = time.perf_counter()
    last_save = t0

    def save(step: int) -> None:
        if checkpoint is None:
            return
        save_torch_atomic(
            checkpoint,
            {
                "configs": [c.to_dict() for c in cfgs],
                "step": step,
                "elapsed": elapsed + time.perf_counter() - t0,
                "trainer": trainer.state_dict(),
                "samplers": [s.state_dict() for s in samplers],
                "window": window.cpu(),
                "seen": seen.cpu(),
                "first_bad": first_bad.cpu(),
                "bad_term": bad_term.cpu(),
                "curves": curves,
            },
        )

    for step in range(start, c0.steps):
        if stop is not None and stop.is_set():
            save(step)
            raise Interrupted(f"stopped at step {step} of {c0.steps}")
        pool_idx = torch.stack([ti[next(s)] for ti, s in zip(data.train_idx, samplers)]).to(device)
        terms, active = trainer.step(data.inputs(data.pool_x[pool_idx], data.luts, dtype), data.pool_y[pool_idx], step)
        on = torch.zeros(n_terms, dtype=torch.bool, device=device)
        on[0] = True
        for s_ in active:
            on[1 + s_] = True
        finite = torch.isfinite(terms) | ~on
        newly = (first_bad < 0) & ~finite.all(1)
        bad_term = torch.where(newly, (~finite).long().argmax(1), bad_term)
        first_bad = torch.where(newly, torch.full_like(first_bad, step), first_bad)
        window[step % c0.penalty_window] = terms.to(torch.float64)
        seen[step % c0.penalty_window] = on
        done = step + 1
        if c0.eval_every and done % c0.eval_every == 0 and done != c0.steps:
            curve_point(done)
        if on_steps is not None:
            on_steps(1, k)
        now = time.perf_counter()
        if checkpoint is not None and now - last_save >= checkpoint_seconds and done < c0.steps:
            save(done)
            last_save = now
    elapsed += time.perf_counter() - t0
    curve_point(c0.steps)
    grad_norms, fits = _final_probes(trainer, data, cfgs, metric)
    means = term_means(c0.steps)
    bad, bad_t = first_bad.tolist(), bad_term.tolist()
    from ..train import all_finite, term_names

    names = term_names(trainer.kinds)
    term_label = ["loss"] + names
    dev_name = hardware(device)
    out = []
    for mi, c in enumerate(cfgs):
        res = RunResult(
            config=c.to_dict(),
            metric=metric,
            dev=curves[mi][-1]["dev"],
            test=curves[mi][-1]["test"],
            train_loss=means[mi][0],
            penalties={names[s]: means[mi][1 + s] for s in range(len(names))},
            weight_norm_sq=float(sum(p[mi].detach().double().pow(2).sum() for p in trainer.decayed)),
            wall_time_s=elapsed / k,
            steps_per_s=(c0.steps - start) * k / max(elapsed, 1e-9),
            curve=curves[mi],
            device=dev_name,
            steps_done=c0.steps,
            ensemble_size=k,
            grad_norms=grad_norms[mi],
            fit=None if fits is None else fits[mi],
        )
        if bad[mi] >= 0:
            res.error = f"step {bad[mi]}: the {term_label[bad_t[mi]]!r} term is not finite; this member diverged"
        elif not all_finite(model.member_state_dict(mi).values(), [res.dev, res.test, *res.grad_norms.values()]):
            # the loop checks each step's terms before its update; the last update is checked here
            res.error = (
                f"step {c0.steps - 1}: after the last update the weights, metrics or input gradients are not "
                "finite; this member diverged"
            )
        sd = {n: v.detach().cpu().clone() for n, v in model.member_state_dict(mi).items()} if keep_weights else None
        out.append((res, sd))
    return out


# --------------------------------------------------------------------------- the engine


def _parts(chunk: list[int], workers: int) -> list[list[int]]:
    return split_evenly(chunk, workers)


def iter_train_many(
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
    """Train ``configs`` and yield each member's outcome as soon as its part finishes.

    Configs are grouped by :func:`ensemble_key`; each group is split into chunks of at most
    ``max_members`` (default :func:`default_max_members`). ``dtype`` is the ensemble's compute
    dtype (float64 for exactness tests). On CPU a chunk is split further over ``workers``
    threads (default :func:`cpu_workers`), each running its own ensemble with one intra-op
    thread. ``checkpoint_dir``/``checkpoint_seconds``/``stop``: see the module docstring.
    ``on_steps(n, members)`` is called after every step of every part (progress displays).
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
    ckdir = None if checkpoint_dir is None else Path(checkpoint_dir)
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
        for stale in ckdir.glob(".*.tmp"):  # a write cut off by a hard kill
            stale.unlink(missing_ok=True)
    for indices in group_configs(configs):
        c0 = configs[indices[0]]
        cpu = torch.device(c0.device).type == "cpu"
        n_workers = (cpu_workers(torch.device(c0.device)) if workers is None else workers) if cpu else 1
        use, why = strategy, ""
        if strategy == "auto":
            use, why = ("sequential", "") if cpu else choose_strategy(c0)
            if use == "vmap" and c0.wrt is not None:
                use, why = "sequential", f"{why}; wrt (a hidden layer) is not supported by the torch.func path"
            if use != "sequential" and c0.adversarial is not None:
                use, why = "sequential", "adversarial training runs one model at a time"
        if use == "sequential":
            if strategy == "auto" and why:
                warn_sequential(c0, len(indices), why)
            yield from _train_singles(
                indices, configs, data_dir, keep_weights, n_workers, ckdir, checkpoint_seconds, stop, on_steps, download
            )
            continue
        cap = chunk_cap(c0, max_members)
        for start in range(0, len(indices), cap):
            chunk = indices[start : start + cap]
            yield from _train_chunk(
                chunk,
                configs,
                data_dir,
                dtype,
                use,
                keep_weights,
                n_workers,
                ckdir,
                checkpoint_seconds,
                stop,
                on_steps,
                download,
            )


def _member_probes(cfg: TrainConfig, state_dict: dict, data_dir, download) -> dict:
    """A packed member's robustness probes: its weights in a single model, probed as a single
    run is (:mod:`gradreg.probes`)."""
    device = torch.device(cfg.device)
    model = build_model(cfg, torch.Generator().manual_seed(stream_seed(cfg.seed, "init")))
    model.load_state_dict(state_dict)
    model.to(device)
    splits = load_splits(cfg, data_dir, device, download)
    return robust_probes(
        model, cfg, splits, device, lambda scfg: train_model(scfg, splits=splits, data_dir=data_dir, threads=None)[1]
    )


def _train_singles(
    indices, configs, data_dir, keep_weights, workers, ckdir, checkpoint_seconds, stop, on_steps, download
) -> Iterator[MemberOutcome]:
    """Each config as its own :func:`~gradreg.train.train_model` run (the single run's ops, one
    intra-op thread), ``workers`` at a time; yields each as it finishes. This is the CPU path:
    a member's record is bitwise the one ``gradreg train`` gives for its config."""

    def path(i: int) -> Path | None:
        return None if ckdir is None else ckdir / f"run-{part_key([configs[i]], 'single', torch.float32)}.pt"

    def one(i: int) -> MemberOutcome:
        if stop is not None and stop.is_set():
            raise Interrupted("stopped before the next run")
        cfg, ck = configs[i], path(i)
        opts = RunOptions(
            checkpoint=ck,
            resume=ck is not None,
            on_step=None if on_steps is None else (lambda _done: on_steps(1, 1)),
            checkpoint_seconds=checkpoint_seconds if ck is not None else None,
            stop=stop,
        )
        splits = load_splits(cfg, data_dir, cfg.device, download)
        res, model = train_model(cfg, splits=splits, data_dir=data_dir, run=opts, threads=1)
        sd = {n: v.detach().cpu().clone() for n, v in model.state_dict().items()} if keep_weights else None
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
    chunk,
    configs,
    data_dir,
    dtype,
    strategy,
    keep_weights,
    workers,
    ckdir,
    checkpoint_seconds,
    stop,
    on_steps,
    download,
) -> Iterator[MemberOutcome]:
    parts = _parts(chunk, workers)

    def path(part: list[int]) -> Path | None:
        if ckdir is None:
            return None
        return ckdir / f"part-{part_key([configs[i] for i in part], strategy, dtype)}.pt"

    def run(part: list[int]) -> list[MemberOutcome]:
        probed = any(wants_probes(configs[i]) for i in part)
        outs = train_part(
            [configs[i] for i in part],
            data_dir,
            dtype,
            strategy,
            keep_weights or probed,
            checkpoint=path(part),
            checkpoint_seconds=checkpoint_seconds,
            stop=stop,
            on_steps=on_steps,
            download=download,
        )
        for j, (res, sd) in enumerate(outs):
            if wants_probes(configs[part[j]]) and sd is not None and res.error is None:
                res.robust = _member_probes(configs[part[j]], sd, data_dir, download)
        return [MemberOutcome(part[j], res, sd if keep_weights else None) for j, (res, sd) in enumerate(outs)]

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
    """One :class:`RunResult` per config, in input order (see :func:`iter_train_many`)."""
    out: list = [None] * len(configs)
    for o in iter_train_many(configs, **kwargs):
        out[o.index] = o.result
    return out


class ProgressLine:
    """One overall progress line on stderr: runs done / total, chunks done / total, ETA.

    ``steps(n, members)`` counts member-steps from the worker threads; ``run_done()`` and
    ``chunk_done()`` count finished work. Redrawn at most once a second."""

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

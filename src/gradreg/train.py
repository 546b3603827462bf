"""One training run, exactly as the paper trained it, and the run state the engine shares.

`train` trains one model and returns its `RunResult`.

Randomness. Everything random in a run comes from `config.seed`, through independent
streams derived by `gradreg.streams.stream_seed`: the training subset
(`numpy.random.RandomState(seed)`, as the paper's code), the initialization, the batch order,
the dropout masks (the global torch RNG, forked so the caller's state is untouched), the
SpectReg/RandomOneHot draws and the augmentation. On CPU a run is bitwise reproducible, and a
resumed run is bitwise equal to an uninterrupted one.

One loop. `RunState` is the bookkeeping of K members trained in lockstep: the step to start
from, each member's loss window, divergence and learning curve, checkpoints and progress, and
the evaluation, final probes and results. A single run is K = 1 (`_SingleRun`: one model and
its step); a part of the engine (`gradreg.ensemble.loop.train_part`) is K members of one
ensemble model (`gradreg.ensemble.trainer.EnsembleTrainer.step`). Both hand `RunState` a
`Members` object that takes the step and reaches the members' model, data and weights.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from . import attacks as A
from . import data as D
from . import datasets
from . import probes as P
from . import smoothness as S
from .atomic import save_torch_atomic
from .config import TrainConfig
from .core import regularize, regularized_loss
from .hooks import capture
from .models import build_model, decayed_parameters
from .result import Interrupted, RunResult, TrainingDiverged, hardware
from .streams import piecewise_lr, stream_seed

__all__ = [
    "train",
    "RunResult",
    "TrainingDiverged",
    "Interrupted",
    "build_model",
    "piecewise_lr",
    "stream_seed",
    "load_splits",
]

SINGLE_RUN_KEYS = ("config", "step", "model", "optimizer")  # what every checkpoint of `train` holds


# --------------------------------------------------------------------------- pure pieces


def half_squared_norm(params) -> torch.Tensor:
    """The L2 term before its weight: `1/2 sum ||w||^2` over `params`.

    Args:
        params: The weight-decayed tensors.

    Returns:
        A scalar tensor.
    """
    return 0.5 * sum(p.pow(2).sum() for p in params)


def load_splits(cfg: TrainConfig, data_dir=None, device="cpu") -> D.Splits:
    """The config's train/dev/test tensors on `device` (`gradreg.datasets.load_splits`)."""
    return datasets.load_splits(cfg, data_dir, device)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam (betas 0.9, 0.999) or SGD with Nesterov momentum 0.9, as `cfg.optimizer` says."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, dampening=0.0)


@torch.no_grad()
def _scores(model, x: Tensor, y: Tensor, metric: str, batch_size: int, k: int = 1, inputs=None) -> Tensor:
    """Each of `k` members' accuracy (fraction correct) or mean squared error, in eval mode.

    Args:
        model: One model (`k` = 1, outputs `(b, m)`) or K members' ensemble model (outputs
            `(K, b, m)`).
        x: The examples, as the model takes them or as `inputs` maps them.
        y: Their targets, shared by the members.
        metric: `"accuracy"` or `"mse"`.
        batch_size: Examples per forward pass.
        k: The number of members.
        inputs: Maps a slice of `x` to the model's input; None: the slice itself.

    Returns:
        The `(k,)` scores, float64. Counts and squared errors are summed in float64 over the
        batches, each batch's squared errors in the model's dtype.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros(k, dtype=torch.float64, device=x.device)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        out = model(xb if inputs is None else inputs(xb))
        out = out.reshape(k, -1, out.shape[-1])
        if metric == "accuracy":
            total += (out.argmax(-1) == yb).sum(-1)
        else:
            total += (out - yb.reshape(out.shape[1:]).to(out.dtype)).pow(2).flatten(1).sum(1)
    model.train(was_training)
    return total / (len(x) if metric == "accuracy" else y.numel())


def evaluate(model: nn.Module, x: Tensor, y: Tensor, metric: str, batch_size: int) -> float:
    """Accuracy (fraction correct) or mean squared error of `model` in eval mode.

    Args:
        model: The model; its training mode is restored afterwards.
        x: The inputs, `(N, *in)`.
        y: The targets: class labels `(N,)`, or regression targets shaped as the outputs.
        metric: `"accuracy"` or `"mse"` (the mean over every output entry).
        batch_size: Examples per forward pass.

    Returns:
        The score.
    """
    return float(_scores(model, x, y, metric, batch_size)[0])


def smoothness_points(cfg: TrainConfig, x_train: Tensor, x_test: Tensor, test_inputs=None) -> dict[str, Tensor]:
    """The points where `gradreg.smoothness` measures a run's input gradients.

    They are the first N training and test inputs, and N interpolations between test inputs
    whose ends and weights are drawn from the run's own stream (`"smoothness"`).

    Args:
        cfg: The run's config (its seed).
        x_train: The run's training inputs; only the first N are used.
        x_test: The test inputs, or raw test values that `test_inputs` maps to inputs (the
            engine keeps images raw, and standardizes only the rows it needs).
        test_inputs: Maps rows of `x_test` to the model's inputs; None: they are inputs.

    Returns:
        `{"train", "test", "off_manifold"}`, each `(N, *in)`.
    """
    n = S.N_POINTS
    f = test_inputs if test_inputs is not None else (lambda v: v)
    a, b, t = S.interpolation_draws(len(x_test), n, torch.Generator().manual_seed(stream_seed(cfg.seed, "smoothness")))
    a, b = a.to(x_test.device), b.to(x_test.device)
    return {
        "train": x_train[:n],
        "test": f(x_test[:n]),
        "off_manifold": S.interpolate(f(x_test[a]), f(x_test[b]), t.to(x_test.device)),
    }


def term_names(regs) -> list[str]:
    """The `terms` keys of `regs`, as `gradreg.regularized_loss` names them."""
    from .core import _term_names

    return _term_names(list(regs))


def all_finite(tensors, values) -> bool:
    """Whether all `tensors` (floating-point ones; others are skipped) and all `values` are finite.

    The check after a run's last update, in single runs and the engine alike.
    """
    finite_tensors = all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
    return finite_tensors and all(math.isfinite(v) for v in values)


# --------------------------------------------------------------------------- building blocks


def _rng_states(device: torch.device) -> dict:
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` atomically (`gradreg.atomic`): a crash leaves either the old checkpoint or the new one."""
    save_torch_atomic(path, state)


def _load_checkpoint(path: Path, keys: Sequence[str] = SINGLE_RUN_KEYS) -> dict:
    """A gradreg checkpoint, or a one-line error naming the file.

    Args:
        path: The file.
        keys: What it must hold (the default: a single run's checkpoint).

    Raises:
        ValueError: The file is not a checkpoint, or lacks one of `keys`.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # unpickling garbage raises anything
        what = type(e).__name__
        raise ValueError(f"{path} is not a gradreg checkpoint ({what}); delete it, or resume another") from None
    if not isinstance(state, dict) or not set(keys) <= set(state):
        raise ValueError(f"{path} is not a gradreg checkpoint (no {', '.join(keys[:-1])} and {keys[-1]} in it)")
    return state


def _progress(total: int, initial: int, enabled: bool | None):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return tqdm(total=total, initial=initial, disable=disable, desc="train", leave=False, dynamic_ncols=True)


def _adversarial_batch(model, xb, yb, cfg, data: D.Splits, gen: torch.Generator) -> Tensor:
    """The batch the model trains on under adversarial training (`cfg.adversarial`).

    It is crafted in eval mode (no dropout), with every example taking every step.
    """
    eps = A.pixel_to_input(cfg.adversarial_eps, mean=data.mean, std=data.std)
    bounds = A.pixel_bounds(mean=data.mean, std=data.std)
    if cfg.adversarial == "fgsm":  # Wong et al. 2020: uniform start, one step of 1.25 eps
        steps, size = 1, 1.25 * eps
    else:
        steps, size = cfg.adversarial_steps, 2.5 * eps / cfg.adversarial_steps
    return A.pgd(model, xb, yb, eps, steps=steps, step_size=size, generator=gen, bounds=bounds, early_stop=False)


# --------------------------------------------------------------------------- how a run is driven


class RunOptions:
    """How a run is driven (not what it computes): checkpoints, stop, progress, callbacks.

    Args:
        checkpoint: The checkpoint file, or None for none.
        resume: Continue from `checkpoint` when it exists.
        progress: A tqdm bar; None: only on a TTY.
        on_step: Called with the number of steps done after each step.
        checkpoint_seconds: Also write the checkpoint whenever this much wall time has passed
            since the last one; None: only every `cfg.checkpoint_every` steps.
        stop: Once set, the run writes its checkpoint (if any) and raises `Interrupted` before
            its next step.

    Raises:
        ValueError: `resume` without a checkpoint, or `checkpoint_seconds` not > 0.
    """

    def __init__(self, checkpoint=None, resume=False, progress=False, on_step=None, checkpoint_seconds=None, stop=None):
        if resume and checkpoint is None:
            raise ValueError("resume=True needs a checkpoint path")
        if checkpoint_seconds is not None and not checkpoint_seconds > 0:
            raise ValueError(f"checkpoint_seconds must be > 0 or None, got {checkpoint_seconds!r}")
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.resume, self.progress, self.on_step = resume, progress, on_step
        self.checkpoint_seconds, self.stop = checkpoint_seconds, stop


class Members(Protocol):
    """What `RunState` needs of the K members it drives: their step, model, data and weights.

    `lead` is the number of leading index axes of the model's inputs and outputs: 1 for one
    model (`(B, *in)` to `(B, m)`), 2 for K members' ensemble model (`(K, B, *in)` to `(K, B, m)`).
    """

    lead: int

    @property
    def model(self) -> nn.Module:
        """The members' model: one model, or K members' ensemble model."""

    def step(self, step: int, state: RunState) -> None:
        """Take training step `step` and hand its terms to `state.record`."""

    def state_dict(self) -> dict:
        """The members' part of a checkpoint: weights, optimizer, samplers and random streams."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""

    def eval_set(self, name: str, limit: int | None) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor] | None]:
        """The first `limit` examples of `"dev"` or `"test"`: `(x, y, inputs)` as `_scores` takes them."""

    def smoothness_points(self) -> dict[str, Tensor]:
        """Each member's `smoothness_points`, with the model's leading axes."""

    def test_inputs(self) -> Tensor:
        """The test inputs, with the model's leading axes (for regression fits)."""

    def weight_norms_sq(self) -> list[float]:
        """Each member's `sum ||w||^2` over its weight-decayed tensors."""

    def member_state(self, mi: int) -> dict[str, Tensor]:
        """Member `mi`'s parameters and buffers under the single model's names."""


class RunState:
    """The bookkeeping of K members trained in lockstep; K = 1 is a single run.

    It holds the step to start from, the training time, each member's learning curve, loss
    window and divergence, and it is the one place that evaluates, probes, writes and reads
    checkpoints, shows progress and builds the results, for `train` and the engine alike.

    Args:
        cfgs: The members' configs; they differ only in member fields
            (`gradreg.ensemble.plan.MEMBER_FIELDS`).
        device: Where the members train.
        names: The regularizer terms' names (`term_names`), in the order of the terms.
        single: A single run (`train`): it stops with `TrainingDiverged` at the first
            non-finite term, and its checkpoint keeps the layout `train` has always written.
            Otherwise each member's first non-finite term is noted on the device (no
            synchronization per step) and reported in its result's `error`.
    """

    def __init__(
        self, cfgs: Sequence[TrainConfig], device: torch.device, names: Sequence[str], *, single: bool = False
    ):
        self.cfgs, self.c0, self.k, self.device, self.single = list(cfgs), cfgs[0], len(cfgs), device, single
        self.metric = "accuracy" if self.c0.loss == "cross_entropy" else "mse"
        self.names = ["loss", *names]
        self.start, self.elapsed = 0, 0.0
        self.curves: list[list[dict]] = [[] for _ in self.cfgs]
        # per step: the terms (K, T) in float64, and which of the T terms the step computed
        self.window: deque[tuple[Tensor, tuple[bool, ...]]] = deque(maxlen=self.c0.penalty_window)
        self.first_bad = torch.full((self.k,), -1, dtype=torch.long, device=device)  # a step; -1: none
        self.bad_term = torch.full((self.k,), -1, dtype=torch.long, device=device)
        self._masks: dict[tuple[bool, ...], Tensor] = {}

    # ------------------------------------------------------------------ steps

    def record(self, step: int, terms: Tensor, on: Sequence[bool]) -> None:
        """Check a step's terms and add them to the loss windows.

        Args:
            step: The step, from 0.
            terms: `(K, T)`: each member's data loss, then each regularizer's unweighted
                penalty; anything where `on` is False.
            on: Which of the T terms the step computed (a lazy regularizer skips steps).

        Raises:
            TrainingDiverged: In a single run, when a term is NaN or Inf. A single run records
                its terms before its update, so the last checkpoint stays finite.
        """
        on = tuple(on)
        if self.single:
            for name, value, computed in zip(self.names, terms[0].tolist(), on):
                if computed and not math.isfinite(value):
                    raise TrainingDiverged(
                        f"step {step}: the {name!r} term is {value}; stopping (the last checkpoint, if any, is kept)"
                    )
        else:
            if on not in self._masks:
                self._masks[on] = torch.tensor(on).to(self.device)
            finite = torch.isfinite(terms) | ~self._masks[on]
            newly = (self.first_bad < 0) & ~finite.all(1)
            self.bad_term = torch.where(newly, (~finite).long().argmax(1), self.bad_term)
            self.first_bad = torch.where(newly, torch.full_like(self.first_bad, step), self.first_bad)
        self.window.append((terms.detach().to(torch.float64), on))

    def windows(self) -> list[list[dict[str, float]]]:
        """Each member's loss window: per step, oldest first, `{name: value}` of the terms it computed."""
        rows = torch.stack([terms for terms, _ in self.window]).tolist() if self.window else []
        ons = [on for _, on in self.window]
        return [
            [{n: v for n, v, o in zip(self.names, row[mi], on) if o} for row, on in zip(rows, ons)]
            for mi in range(self.k)
        ]

    def term_means(self) -> list[dict[str, float]]:
        """Each member's mean of each term over its loss window.

        Returns:
            Per member, `{name: mean}` over the window's steps that computed the term (a lazy
            term skips steps), summed in step order; NaN where none did.
        """
        return [{n: _mean([step[n] for step in steps if n in step]) for n in self.names} for steps in self.windows()]

    def run_steps(self, members: Members, run: RunOptions) -> None:
        """Train the members to the last step, from the checkpoint when `run` resumes one.

        After each step: a curve point every `eval_every` steps, the checkpoint every
        `checkpoint_every` steps or `run.checkpoint_seconds`, the progress bar and `run.on_step`.

        Raises:
            Interrupted: `run.stop` was set; the checkpoint, if any, was written first.
            TrainingDiverged: A single run's term was not finite (`record`).
        """
        c0, path = self.c0, run.checkpoint
        if run.resume and path is not None and path.exists():
            members.load_state_dict(self.load(path))
        bar = _progress(c0.steps, self.start, run.progress)
        t0 = last_save = time.perf_counter()

        def save(step: int) -> None:
            if path is not None:
                save_checkpoint(path, self.checkpoint(step, self.elapsed + time.perf_counter() - t0, members))

        try:
            for step in range(self.start, c0.steps):
                if run.stop is not None and run.stop.is_set():
                    save(step)
                    raise Interrupted(f"stopped at step {step} of {c0.steps}")
                members.step(step, self)
                done = step + 1
                if c0.eval_every and done % c0.eval_every == 0 and done != c0.steps:
                    self.curve_point(members, done)
                now = time.perf_counter()
                every = bool(c0.checkpoint_every) and done % c0.checkpoint_every == 0
                timed = run.checkpoint_seconds is not None and now - last_save >= run.checkpoint_seconds
                if path is not None and (every or (timed and done < c0.steps)):
                    save(done)
                    last_save = now
                bar.update(1)
                if run.on_step is not None:
                    run.on_step(done)
        finally:
            bar.close()
        self.elapsed += time.perf_counter() - t0

    # ------------------------------------------------------------------ evaluation and probes

    def evaluate(self, members: Members) -> dict[str, list[float]]:
        """Each member's score on the first `eval_limit` dev and test examples.

        K members' batch shrinks with K (to 50 000 examples of all members together), except
        where BatchNorm normalizes with the batch's statistics at eval: there the batch is part
        of the model.

        Returns:
            `{"dev": [...], "test": [...]}`, one score per member.
        """
        c0 = self.c0
        batch = c0.eval_batch_size if c0.bn_batch_stats_at_eval else min(c0.eval_batch_size, max(1, 50_000 // self.k))
        scores = {}
        for name in ("dev", "test"):
            x, y, inputs = members.eval_set(name, c0.eval_limit)
            scores[name] = _scores(members.model, x, y, self.metric, batch, self.k, inputs).tolist()
        return scores

    def curve_point(self, members: Members, step: int) -> None:
        """Append `{"step", "train_loss", "dev", "test"}` to each member's curve."""
        means, scores = self.term_means(), self.evaluate(members)
        for mi, curve in enumerate(self.curves):
            curve.append(
                {"step": step, "train_loss": means[mi]["loss"], "dev": scores["dev"][mi], "test": scores["test"][mi]}
            )

    def final_probes(self, members: Members) -> tuple[list[dict[str, float]], list[list[float]] | None]:
        """What each trained member is probed for at the end, besides its scores.

        Returns:
            Per member, the mean input-gradient norm `||J||_F` at each kind of its
            `smoothness_points`; and for regression, per member, its predictions on the test
            inputs (else None).
        """
        model = members.model
        was_training = model.training
        model.eval()
        norms = {
            key: S.jacobian_frobenius_norms(model, x, lead=members.lead).reshape(self.k, -1).mean(1).tolist()
            for key, x in members.smoothness_points().items()
        }
        fits = None
        if self.metric == "mse":
            with torch.no_grad():
                fits = model(members.test_inputs()).reshape(self.k, -1).tolist()
        model.train(was_training)
        return [{key: v[mi] for key, v in norms.items()} for mi in range(self.k)], fits

    def errors(self, members: Members, grad_norms: list[dict[str, float]]) -> list[str | None]:
        """Why each member diverged, or None.

        A member diverged when a term was not finite at some step, or, after the last update
        (each step's terms are checked before its update), when its weights, final scores or
        input-gradient norms are not finite.
        """
        suffix = "" if self.single else "; this member diverged"
        bad, term = self.first_bad.tolist(), self.bad_term.tolist()
        errors: list[str | None] = []
        for mi, curve in enumerate(self.curves):
            final = [curve[-1]["dev"], curve[-1]["test"], *grad_norms[mi].values()]
            if bad[mi] >= 0:
                errors.append(f"step {bad[mi]}: the {self.names[term[mi]]!r} term is not finite{suffix}")
            elif not all_finite(members.member_state(mi).values(), final):
                errors.append(
                    f"step {self.c0.steps - 1}: after the last update the weights, metrics or input gradients "
                    f"are not finite{suffix}"
                )
            else:
                errors.append(None)
        return errors

    def finish(self, members: Members, robust: Callable[[int], dict] | None = None) -> list[RunResult]:
        """The members' results: a last curve point, the final probes, term means and divergence.

        Args:
            members: The trained members.
            robust: `robust(mi)`: member `mi`'s robustness probes (`gradreg.probes`), asked of
                the members whose config wants them and that did not diverge.

        Returns:
            One `RunResult` per member; a diverged member's has `error` set. Wall time and
            steps per second are per member.
        """
        c0, k = self.c0, self.k
        self.curve_point(members, c0.steps)
        grad_norms, fits = self.final_probes(members)
        means, errors, norms = self.term_means(), self.errors(members, grad_norms), members.weight_norms_sq()
        steps_run, device = c0.steps - self.start, hardware(self.device)
        results = []
        for mi, cfg in enumerate(self.cfgs):
            res = RunResult(
                config=cfg.to_dict(),
                metric=self.metric,
                dev=self.curves[mi][-1]["dev"],
                test=self.curves[mi][-1]["test"],
                train_loss=means[mi].pop("loss"),
                penalties=means[mi],
                weight_norm_sq=norms[mi],
                wall_time_s=self.elapsed / k,
                steps_per_s=steps_run * k / max(self.elapsed, 1e-9) if steps_run else 0.0,
                curve=self.curves[mi],
                device=device,
                steps_done=c0.steps,
                ensemble_size=k,
                grad_norms=grad_norms[mi],
                fit=None if fits is None else fits[mi],
                error=errors[mi],
            )
            if robust is not None and res.error is None and P.wants_probes(cfg):
                res.robust = robust(mi)
            results.append(res)
        return results

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self, step: int, elapsed: float, members: Members) -> dict:
        """The checkpoint before step `step`: this state's part, and the members' (`Members.state_dict`).

        A single run's has the layout `train` has always written (`config`, `step`, `elapsed`,
        the members' keys, `curve`, and `window` as a list of `{name: value}`): a checkpoint
        of an earlier version resumes here, and one written here resumes in an earlier version.
        A part's holds each member's window (`windows`) and divergence (`first_bad`, `bad_term`).
        """
        if self.single:
            return {
                "config": self.c0.to_dict(),
                "step": step,
                "elapsed": elapsed,
                **members.state_dict(),
                "curve": list(self.curves[0]),
                "window": self.windows()[0],
            }
        return {
            "configs": [c.to_dict() for c in self.cfgs],
            "step": step,
            "elapsed": elapsed,
            **members.state_dict(),
            "windows": self.windows(),
            "first_bad": self.first_bad.cpu(),
            "bad_term": self.bad_term.cpu(),
            "curves": self.curves,
        }

    def load(self, path: Path) -> dict:
        """Restore this state from the checkpoint at `path`.

        Returns:
            The checkpoint, for the members' part.

        Raises:
            ValueError: The file is not a checkpoint, or other configs wrote it.
        """
        st = _load_checkpoint(path, SINGLE_RUN_KEYS if self.single else ("configs", "step", "curves"))
        mine = self.c0.to_dict() if self.single else [c.to_dict() for c in self.cfgs]
        if st["config" if self.single else "configs"] != mine:
            raise ValueError(f"checkpoint {path} was written by a different config; refusing to resume from it")
        self.start, self.elapsed = st["step"], st["elapsed"]
        if self.single:
            self.curves, windows = [st["curve"]], [st["window"]]
        else:
            self.curves, windows = st["curves"], st["windows"] if "windows" in st else _ring_windows(st, self.names)
            self.first_bad, self.bad_term = st["first_bad"].to(self.device), st["bad_term"].to(self.device)
        self.window.clear()
        for j, step in enumerate(windows[0]):
            values = [[w[j].get(n, math.nan) for n in self.names] for w in windows]
            on = tuple(n in step for n in self.names)
            self.window.append((torch.tensor(values, dtype=torch.float64, device=self.device), on))
        return st


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _ring_windows(st: dict, names: Sequence[str]) -> list[list[dict[str, float]]]:
    """The per-member windows of a part checkpoint of an earlier version: a ring buffer of terms.

    Its `window` is `(W, K, T)`, with row `step % W` written at each step, and its `seen`
    `(W, T)` marks the terms each row's step computed.
    """
    ring, seen, step = st["window"], st["seen"], st["step"]
    n = min(step, len(ring))
    rows = [(step - n + j) % len(ring) for j in range(n)]
    return [
        [{name: float(ring[r, mi, t]) for t, name in enumerate(names) if seen[r, t]} for r in rows]
        for mi in range(ring.shape[1])
    ]


# --------------------------------------------------------------------------- one model


class _SingleRun:
    """One model, its optimizer, sampler and random streams: the `Members` of a single run.

    K = 1, and the model has no member axis (`lead` 1).
    """

    lead = 1

    def __init__(self, cfg: TrainConfig, device: torch.device, data: D.Splits):
        self.cfg, self.device, self.data = cfg, device, data
        self.x_train, self.y_train = data.x_train.to(device), data.y_train.to(device)
        self.model = build_model(cfg, torch.Generator().manual_seed(stream_seed(cfg.seed, "init"))).to(device)
        self.model.train()
        self.decayed = decayed_parameters(self.model)
        self.opt = build_optimizer(cfg, self.model)
        batches = torch.Generator().manual_seed(stream_seed(cfg.seed, "batches"))
        self.sampler = D.BatchSampler(len(self.x_train), cfg.batch_size, batches)
        self.proj_gen, self.aug_gen, self.adv_gen = (
            torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, name))
            for name in ("projections", "augment", "adversarial")
        )
        torch.manual_seed(stream_seed(cfg.seed, "dropout"))
        self.regs = list(cfg.regularizers)

    def step(self, step: int, state: RunState) -> None:
        """One step: the batch, the regularized loss, its check (`RunState.record`), the update."""
        cfg, model, regs = self.cfg, self.model, self.regs
        for g in self.opt.param_groups:
            g["lr"] = piecewise_lr(step, cfg.lr, cfg.steps, cfg.lr_milestones, cfg.lr_gamma)
        idx = next(self.sampler).to(self.device)
        xb, yb = self.x_train[idx], self.y_train[idx]
        if cfg.augment:
            xb = D.random_translate_flip(xb, self.aug_gen)
        if cfg.adversarial is not None:
            xb = _adversarial_batch(model, xb, yb, cfg, self.data, self.adv_gen)
        if cfg.wrt is None:
            loss, terms = regularized_loss(model, xb, yb, regs, loss=cfg.loss, generator=self.proj_gen, step=step)
        else:  # the penalties differentiate by a hidden activation
            with capture(model, cfg.wrt) as act:
                logits = model(xb)
            hidden = act.value if any(r.needs_input_grad and r.active(step) for r in regs) else None
            loss, terms = regularize(logits, yb, hidden, regs, loss=cfg.loss, generator=self.proj_gen, step=step)
        if cfg.weight_decay:
            loss = loss + cfg.weight_decay * half_squared_norm(self.decayed)
        values = dict(zip(terms, torch.stack(list(terms.values())).tolist()))
        row = torch.tensor([[values.get(n, math.nan) for n in state.names]], dtype=torch.float64, device=self.device)
        state.record(step, row, [n in values for n in state.names])  # raises here, before the update
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "sampler": self.sampler.state_dict(),
            "proj_gen": self.proj_gen.get_state(),
            "aug_gen": self.aug_gen.get_state(),
            "adv_gen": self.adv_gen.get_state(),
            "rng": _rng_states(self.device),
        }

    def load_state_dict(self, state: dict) -> None:
        # On the CPU: RNG and sampler states must stay CPU tensors; load_state_dict moves
        # the model's and the optimizer's tensors to their parameters' device.
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.proj_gen.set_state(state["proj_gen"])
        self.aug_gen.set_state(state["aug_gen"])
        if "adv_gen" in state:  # written since adversarial training exists
            self.adv_gen.set_state(state["adv_gen"])
        _set_rng_states(state["rng"], self.device)

    def eval_set(self, name: str, limit: int | None) -> tuple[Tensor, Tensor, None]:
        x, y = getattr(self.data, f"x_{name}"), getattr(self.data, f"y_{name}")
        return x[:limit].to(self.device), y[:limit].to(self.device), None

    def smoothness_points(self) -> dict[str, Tensor]:
        return smoothness_points(self.cfg, self.data.x_train.to(self.device), self.data.x_test.to(self.device))

    def test_inputs(self) -> Tensor:
        return self.data.x_test.to(self.device)

    def weight_norms_sq(self) -> list[float]:
        return [float(2 * half_squared_norm(self.decayed).detach())]

    def member_state(self, mi: int) -> dict[str, Tensor]:
        return self.model.state_dict()


# --------------------------------------------------------------------------- the entry points


def train(  # noqa: PLR0913 (the public, keyword-only options of a run, each documented)
    cfg: TrainConfig,
    *,
    data_dir=None,
    checkpoint: os.PathLike | None = None,
    resume: bool = False,
    progress: bool | None = False,
    splits: D.Splits | None = None,
    on_step: Callable[[int], None] | None = None,
    checkpoint_seconds: float | None = None,
    stop: threading.Event | None = None,
    threads: int | None = 1,
) -> RunResult:
    """Train one model as `cfg` says and return its `RunResult`.

    Args:
        cfg: The run.
        data_dir: Where the datasets are (None: the default location).
        checkpoint: A file written atomically every `cfg.checkpoint_every` steps (model,
            optimizer, RNG and sampler states, the step, the curve so far).
        resume: Continue from `checkpoint` when it exists; the result is bitwise the same as
            an uninterrupted run's on CPU.
        progress: A tqdm bar; None: only on a TTY.
        splits: Pre-loaded data (else loaded from `data_dir`).
        on_step: Called with the number of steps done after each step (for tests and tooling).
        checkpoint_seconds: Also write the checkpoint whenever this much wall time has passed
            since the last one.
        stop: Once set, the run writes its checkpoint (if any) and raises `Interrupted` before
            its next step.
        threads: torch's intra-op threads for the run on CPU (restored afterwards; None leaves
            them as they are). The default, 1, makes a run's numbers independent of the
            machine's core count and of how it was scheduled: alone, as one member of a
            sweep's chunk on a worker thread, in another process or on Ray, the same config
            gives bitwise the same record on one CPU. (Reductions split over more threads round
            differently: a LeNet run's test accuracy moves in the third digit after 40 steps.)

    Returns:
        The run's result.

    Raises:
        TrainingDiverged: A loss term is NaN or Inf; the last checkpoint, written before that
            step, is left in place.
        Interrupted: `stop` was set.
    """
    run = RunOptions(checkpoint, resume, progress, on_step, checkpoint_seconds, stop)
    return train_model(cfg, data_dir=data_dir, splits=splits, run=run, threads=threads)[0]


@contextlib.contextmanager
def intra_op_threads(device: torch.device, threads: int | None):
    """torch's intra-op thread count set to `threads` on CPU for the block, then restored.

    Raises:
        ValueError: `threads` is not a positive integer or None.
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    if device.type != "cpu" or threads is None:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def train_model(
    cfg: TrainConfig, *, data_dir=None, splits: D.Splits | None = None, run: RunOptions | None = None, threads=1
) -> tuple[RunResult, nn.Module]:
    """`train`, also returning the trained model (the engine keeps members' weights).

    Raises:
        ValueError: CUDA was asked for and is not available.
    """
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available; use --device cpu")
    run = run if run is not None else RunOptions()
    fork_devices = [device] if device.type == "cuda" else []
    with intra_op_threads(device, threads), torch.random.fork_rng(devices=fork_devices):
        return _train(cfg, device, data_dir, run, splits)


def _train(cfg, device, data_dir, run: RunOptions, splits) -> tuple[RunResult, nn.Module]:
    data = splits if splits is not None else load_splits(cfg, data_dir, device)
    one = _SingleRun(cfg, device, data)
    state = RunState([cfg], device, term_names(cfg.regularizers), single=True)
    state.run_steps(one, run)

    def train_surrogate(scfg):
        return train_model(scfg, data_dir=data_dir, splits=data, threads=None)[1]

    (result,) = state.finish(one, robust=lambda _: P.robust_probes(one.model, cfg, data, device, train_surrogate))
    if result.error is not None:
        raise TrainingDiverged(result.error)
    return result, one.model

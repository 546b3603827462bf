"""One training run, exactly as the paper trained it: :func:`train` and :class:`RunResult`.

Randomness. Everything random in a run comes from ``config.seed``, through independent
streams derived by :func:`stream_seed`: the training subset (``numpy.random.RandomState(seed)``,
as the paper's code), the initialization, the batch order, the dropout masks (the global
torch RNG, forked so the caller's state is untouched), the SpectReg/RandomOneHot draws and the
augmentation. On CPU a run is bitwise reproducible, and a resumed run is bitwise equal to an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

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


# --------------------------------------------------------------------------- pure pieces


def half_squared_norm(params) -> torch.Tensor:
    """``1/2 sum ||w||^2`` over ``params`` (the L2 term, multiplied by the weight decay)."""
    return 0.5 * sum(p.pow(2).sum() for p in params)


# --------------------------------------------------------------------------- building blocks


def load_splits(cfg: TrainConfig, data_dir=None, device="cpu") -> D.Splits:
    """The config's train/dev/test tensors on ``device`` (:func:`gradreg.datasets.load_splits`)."""
    return datasets.load_splits(cfg, data_dir, device)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, dampening=0.0)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, metric: str, batch_size: int) -> float:
    """Accuracy (fraction correct) or mean squared error of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, len(x), batch_size):
        out = model(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        if metric == "accuracy":
            total += (out.argmax(1) == yb).sum()
        else:
            total += (out - yb.view_as(out)).pow(2).sum()
    model.train(was_training)
    return float(total) / (len(x) if metric == "accuracy" else y.numel())


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
    """Write ``state`` atomically (:mod:`gradreg.atomic`): a crash leaves either the old
    checkpoint or the new one."""
    save_torch_atomic(path, state)


def _progress(total: int, initial: int, enabled: bool | None):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return tqdm(total=total, initial=initial, disable=disable, desc="train", leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------- the loop


def train(
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
    """Train one model as ``cfg`` says and return its :class:`RunResult`.

    ``checkpoint``: a file written atomically every ``cfg.checkpoint_every`` steps (model,
    optimizer, RNG and sampler states, the step, the curve so far). With ``resume=True`` and
    an existing checkpoint, training continues from it; the result is bitwise the same as an
    uninterrupted run's on CPU. ``progress``: a tqdm bar (None: only on a TTY).
    ``splits``: pre-loaded data (else loaded from ``data_dir``). ``on_step(step)`` is called
    after each completed step (for tests and tooling). ``checkpoint_seconds``: also write the
    checkpoint whenever this much wall time has passed since the last one. ``stop``: once set,
    the run writes its checkpoint (if any) and raises :class:`Interrupted` before its next step.

    ``threads``: torch's intra-op threads for the run on CPU (restored afterwards; ``None``
    leaves them as they are). The default, 1, makes a run's numbers independent of the machine's
    core count and of how it was scheduled: alone, as one member of a sweep's chunk on a worker
    thread, in another process or on Ray, the same config gives bitwise the same record on one
    CPU. (Reductions split over more threads round differently: a LeNet run's test accuracy moves
    in the third digit after 40 steps.)

    Raises :class:`TrainingDiverged` when a loss term is NaN or Inf; the last checkpoint,
    written before that step, is left in place.
    """
    run = RunOptions(checkpoint, resume, progress, on_step, checkpoint_seconds, stop)
    return train_model(cfg, data_dir=data_dir, splits=splits, run=run, threads=threads)[0]


class RunOptions:
    """How a run is driven (not what it computes): checkpoints, stop, progress, callbacks."""

    def __init__(self, checkpoint=None, resume=False, progress=False, on_step=None, checkpoint_seconds=None, stop=None):
        if resume and checkpoint is None:
            raise ValueError("resume=True needs a checkpoint path")
        if checkpoint_seconds is not None and not checkpoint_seconds > 0:
            raise ValueError(f"checkpoint_seconds must be > 0 or None, got {checkpoint_seconds!r}")
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.resume, self.progress, self.on_step = resume, progress, on_step
        self.checkpoint_seconds, self.stop = checkpoint_seconds, stop


@contextlib.contextmanager
def intra_op_threads(device: torch.device, threads: int | None):
    """torch's intra-op thread count set to ``threads`` on CPU for the block, then restored."""
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
    """:func:`train`, also returning the trained model (the engine keeps members' weights)."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available; use --device cpu")
    run = run if run is not None else RunOptions()
    fork_devices = [device] if device.type == "cuda" else []
    with intra_op_threads(device, threads), torch.random.fork_rng(devices=fork_devices):
        return _train(cfg, device, data_dir, run, splits)


def all_finite(tensors, values) -> bool:
    """Are all ``tensors`` (floating-point ones; others are skipped) and all ``values`` finite?
    The check after a run's last update, in single runs and the engine alike."""
    finite_tensors = all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
    return finite_tensors and all(math.isfinite(v) for v in values)


def _load_checkpoint(path: Path) -> dict:
    """A gradreg checkpoint, or a one-line error naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # unpickling garbage raises anything
        what = type(e).__name__
        raise ValueError(f"{path} is not a gradreg checkpoint ({what}); delete it, or resume another") from None
    if not isinstance(state, dict) or not {"config", "step", "model", "optimizer"} <= set(state):
        raise ValueError(f"{path} is not a gradreg checkpoint (no config, step, model and optimizer in it)")
    return state


def _adversarial_batch(model, xb, yb, cfg, data: D.Splits, gen: torch.Generator) -> torch.Tensor:
    """The batch the model trains on under adversarial training (``cfg.adversarial``), crafted in
    eval mode (no dropout) with every example taking every step."""
    eps = A.pixel_to_input(cfg.adversarial_eps, mean=data.mean, std=data.std)
    bounds = A.pixel_bounds(mean=data.mean, std=data.std)
    if cfg.adversarial == "fgsm":  # Wong et al. 2020: uniform start, one step of 1.25 eps
        steps, size = 1, 1.25 * eps
    else:
        steps, size = cfg.adversarial_steps, 2.5 * eps / cfg.adversarial_steps
    return A.pgd(model, xb, yb, eps, steps=steps, step_size=size, generator=gen, bounds=bounds, early_stop=False)


def _train(cfg, device, data_dir, run: RunOptions, splits) -> tuple[RunResult, nn.Module]:
    checkpoint, resume, progress, on_step = run.checkpoint, run.resume, run.progress, run.on_step
    metric = "accuracy" if cfg.loss == "cross_entropy" else "mse"
    data = splits if splits is not None else load_splits(cfg, data_dir, device)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)

    model = build_model(cfg, torch.Generator().manual_seed(stream_seed(cfg.seed, "init"))).to(device)
    model.train()
    decayed = decayed_parameters(model)
    opt = build_optimizer(cfg, model)
    sampler = D.BatchSampler(
        len(x_train), cfg.batch_size, torch.Generator().manual_seed(stream_seed(cfg.seed, "batches"))
    )
    proj_gen = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, "projections"))
    aug_gen = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, "augment"))
    adv_gen = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, "adversarial"))
    torch.manual_seed(stream_seed(cfg.seed, "dropout"))

    start, elapsed = 0, 0.0
    window: deque = deque(maxlen=cfg.penalty_window)
    curve: list = []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt is not None and ckpt.exists():
        # On the CPU: RNG and sampler states must stay CPU tensors; load_state_dict moves
        # the model's and the optimizer's tensors to their parameters' device.
        state = _load_checkpoint(ckpt)
        if state["config"] != cfg.to_dict():
            raise ValueError(f"checkpoint {ckpt} was written by a different config; refusing to resume from it")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        proj_gen.set_state(state["proj_gen"])
        aug_gen.set_state(state["aug_gen"])
        if "adv_gen" in state:
            adv_gen.set_state(state["adv_gen"])
        _set_rng_states(state["rng"], device)
        start, elapsed, curve = state["step"], state["elapsed"], state["curve"]
        window.extend(state["window"])

    def snapshot(step: int) -> dict:
        return {
            "config": cfg.to_dict(),
            "step": step,
            "elapsed": elapsed + time.perf_counter() - t0,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "sampler": sampler.state_dict(),
            "proj_gen": proj_gen.get_state(),
            "aug_gen": aug_gen.get_state(),
            "adv_gen": adv_gen.get_state(),
            "rng": _rng_states(device),
            "curve": list(curve),
            "window": list(window),
        }

    regs = list(cfg.regularizers)
    bar = _progress(cfg.steps, start, progress)
    t0 = time.perf_counter()
    last_save = t0
    try:
        for step in range(start, cfg.steps):
            if run.stop is not None and run.stop.is_set():
                if ckpt is not None:
                    save_checkpoint(ckpt, snapshot(step))
                raise Interrupted(f"stopped at step {step} of {cfg.steps}")
            for g in opt.param_groups:
                g["lr"] = piecewise_lr(step, cfg.lr, cfg.steps, cfg.lr_milestones, cfg.lr_gamma)
            idx = next(sampler).to(device)
            xb, yb = x_train[idx], y_train[idx]
            if cfg.augment:
                xb = D.random_translate_flip(xb, aug_gen)
            if cfg.adversarial is not None:
                xb = _adversarial_batch(model, xb, yb, cfg, data, adv_gen)
            if cfg.wrt is None:
                loss, terms = regularized_loss(model, xb, yb, regs, loss=cfg.loss, generator=proj_gen, step=step)
            else:  # the penalties differentiate by a hidden activation
                with capture(model, cfg.wrt) as act:
                    logits = model(xb)
                hidden = act.value if any(r.needs_input_grad and r.active(step) for r in regs) else None
                loss, terms = regularize(logits, yb, hidden, regs, loss=cfg.loss, generator=proj_gen, step=step)
            if cfg.weight_decay:
                loss = loss + cfg.weight_decay * half_squared_norm(decayed)
            values = dict(zip(terms, torch.stack(list(terms.values())).tolist()))
            for name, v in values.items():
                if not math.isfinite(v):
                    raise TrainingDiverged(
                        f"step {step}: the {name!r} term is {v}; stopping (the last checkpoint, if any, is kept)"
                    )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            window.append(values)
            done = step + 1
            if cfg.eval_every and (done % cfg.eval_every == 0) and done != cfg.steps:
                curve.append(_curve_point(model, data, done, window, metric, cfg, device))
            now = time.perf_counter()
            every = bool(cfg.checkpoint_every) and done % cfg.checkpoint_every == 0
            timed = run.checkpoint_seconds is not None and now - last_save >= run.checkpoint_seconds
            if ckpt is not None and (every or (timed and done < cfg.steps)):
                save_checkpoint(ckpt, snapshot(done))
                last_save = now
            bar.update(1)
            if on_step is not None:
                on_step(done)
    finally:
        bar.close()
    elapsed += time.perf_counter() - t0

    final = _curve_point(model, data, cfg.steps, window, metric, cfg, device)
    curve.append(final)
    grad_norms, fit = _final_probes(model, data, cfg, metric, device)
    robust = None
    if P.wants_probes(cfg):

        def train_surrogate(scfg):
            return train_model(scfg, data_dir=data_dir, splits=data, threads=None)[1]

        robust = P.robust_probes(model, cfg, data, device, train_surrogate)
    # the loop checks each step's loss before its update; the last update is checked here
    if not all_finite(model.parameters(), [final["dev"], final["test"], *grad_norms.values()]):
        raise TrainingDiverged(
            f"step {cfg.steps - 1}: after the last update the weights, metrics or input gradients are not finite"
        )
    means = window_means(window, ["loss"] + term_names(regs))
    steps_run = cfg.steps - start
    result = RunResult(
        config=cfg.to_dict(),
        metric=metric,
        dev=final["dev"],
        test=final["test"],
        train_loss=means.pop("loss"),
        penalties=means,
        weight_norm_sq=float(2 * half_squared_norm(decayed).detach()),
        wall_time_s=elapsed,
        steps_per_s=steps_run / max(elapsed, 1e-9) if steps_run else 0.0,
        curve=curve,
        device=hardware(device),
        steps_done=cfg.steps,
        grad_norms=grad_norms,
        fit=fit,
        robust=robust,
    )
    return result, model


def term_names(regs) -> list[str]:
    """The ``terms`` keys of ``regs``, as :func:`gradreg.regularized_loss` names them."""
    from .core import _term_names

    return _term_names(list(regs))


def window_means(window, names: list[str]) -> dict:
    """Mean of each term over the window's steps that have it (lazy terms skip steps); NaN if none."""
    out = {}
    for n in names:
        vals = [w[n] for w in window if n in w]
        out[n] = sum(vals) / len(vals) if vals else float("nan")
    return out


def smoothness_points(cfg: TrainConfig, x_train: torch.Tensor, x_test: torch.Tensor) -> dict:
    """The points of :mod:`gradreg.smoothness` for a run: the first N training and test
    inputs, and N interpolations between test inputs drawn from the run's own stream."""
    n = S.N_POINTS
    a, b, t = S.interpolation_draws(len(x_test), n, torch.Generator().manual_seed(stream_seed(cfg.seed, "smoothness")))
    a, b = a.to(x_test.device), b.to(x_test.device)
    return {
        "train": x_train[:n],
        "test": x_test[:n],
        "off_manifold": S.interpolate(x_test[a], x_test[b], t.to(x_test.device)),
    }


def _final_probes(model, data, cfg, metric, device) -> tuple[dict, list | None]:
    was = model.training
    model.eval()
    points = smoothness_points(cfg, data.x_train.to(device), data.x_test.to(device))
    norms = {k: float(S.jacobian_frobenius_norms(model, v).mean()) for k, v in points.items()}
    fit = None
    if metric == "mse":
        with torch.no_grad():
            fit = model(data.x_test.to(device)).flatten().tolist()
    model.train(was)
    return norms, fit


def _curve_point(model, data, step, window, metric, cfg, device) -> dict:
    n = cfg.eval_limit
    dev = evaluate(model, data.x_dev[:n].to(device), data.y_dev[:n].to(device), metric, cfg.eval_batch_size)
    test = evaluate(model, data.x_test[:n].to(device), data.y_test[:n].to(device), metric, cfg.eval_batch_size)
    train_loss = window_means(window, ["loss"])["loss"]
    return {"step": step, "train_loss": train_loss, "dev": dev, "test": test}

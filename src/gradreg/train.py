"""One training run, exactly as the paper trained it: :func:`train` and :class:`RunResult`.

Randomness. Everything random in a run comes from ``config.seed``, through independent
streams derived by :func:`stream_seed`: the training subset (``numpy.random.RandomState(seed)``,
as the paper's code), the initialization, the batch order, the dropout masks (the global
torch RNG, forked so the caller's state is untouched), the SpectReg/RandomOneHot draws and the
augmentation. On CPU a run is bitwise reproducible, and a resumed run is bitwise equal to an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from . import data as D
from . import models as M
from . import smoothness as S
from .config import TrainConfig
from .core import regularized_loss


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or Inf. The message names the step and the term."""


# --------------------------------------------------------------------------- pure pieces


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named random stream of run ``seed`` (independent streams)."""
    digest = hashlib.sha256(f"gradreg:{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def piecewise_lr(step: int, base_lr: float, steps: int, milestones=(0.5, 0.75), gamma: float = 0.1) -> float:
    """``base_lr * gamma^k`` where k is the number of milestones (fractions of ``steps``)
    reached: with the defaults, x0.1 from 50% and x0.01 from 75% of training."""
    k = sum(step >= int(round(m * steps)) for m in milestones)
    return base_lr * gamma**k


def half_squared_norm(params) -> torch.Tensor:
    """``1/2 sum ||w||^2`` over ``params`` (the L2 term, multiplied by the weight decay)."""
    return 0.5 * sum(p.pow(2).sum() for p in params)


# --------------------------------------------------------------------------- the result


@dataclass
class RunResult:
    """What one run produced. ``dev``/``test`` are accuracies in [0, 1] for classification
    and mean squared errors for SIN (``metric`` says which)."""

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
    fit: Optional[list] = None  # regression only: predictions on the test grid (SIN figures)
    ensemble_size: int = 1  # members trained together (wall time and steps/s are per member)
    error: Optional[str] = None  # set when an ensemble member diverged (a single run raises)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        cfg = self.config
        regs = " ".join(f"{r['name']}={r['weight']:g}" for r in cfg["regularizers"]) or "NoGR"
        if self.metric == "accuracy":
            score = f"dev {100 * self.dev:.2f}%  test {100 * self.test:.2f}%"
        else:
            score = f"dev MSE {self.dev:.5f}  test MSE {self.test:.5f}"
        return (
            f"{cfg['dataset']} {cfg['model']} n={cfg['train_size']} seed={cfg['seed']} {regs}: {score}  "
            f"train loss {self.train_loss:.4f}  {self.steps_done} steps in {self.wall_time_s:.1f}s "
            f"({self.steps_per_s:.1f} steps/s, {self.device})"
        )


# --------------------------------------------------------------------------- building blocks


def load_splits(cfg: TrainConfig, data_dir=None, device="cpu") -> "D.Splits":
    """The config's train/dev/test tensors on ``device``."""
    if cfg.dataset == "mnist":
        return D.load_mnist_splits(
            cfg.train_size, cfg.seed, data_dir, per_set_standardization=cfg.per_set_standardization, device=device
        )
    if cfg.dataset == "cifar10":
        return D.load_cifar10_splits(
            cfg.train_size,
            cfg.seed,
            data_dir,
            dev_is_test=cfg.dev_is_test,
            per_set_standardization=cfg.per_set_standardization,
            device=device,
        )
    splits = (D.make_sin if cfg.dataset == "sin" else D.make_sin2)(device=device)
    if cfg.train_size is not None and cfg.train_size != len(splits.x_train):
        raise ValueError(f"{cfg.dataset} has a fixed training set of {len(splits.x_train)} points; use train_size=None")
    return splits


def build_model(cfg: TrainConfig, generator: torch.Generator) -> nn.Module:
    if cfg.model == "lenet5":
        return M.lenet5(
            dropout=cfg.dropout, batchnorm=cfg.batchnorm, bn_batch_stats_at_eval=cfg.bn_batch_stats_at_eval,
            generator=generator,
        )
    if cfg.model == "resnet_cifar":
        return M.resnet_cifar(bn_batch_stats_at_eval=cfg.bn_batch_stats_at_eval, generator=generator)
    return M.mlp_sin(generator=generator)


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
    """Write ``state`` atomically: a temporary file in the same directory, fsynced, then
    renamed over ``path``. A crash leaves either the old checkpoint or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _progress(total: int, initial: int, enabled: Optional[bool]):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return tqdm(total=total, initial=initial, disable=disable, desc="train", leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------- the loop


def train(
    cfg: TrainConfig,
    *,
    data_dir=None,
    checkpoint: Optional[os.PathLike] = None,
    resume: bool = False,
    progress: Optional[bool] = False,
    splits: "Optional[D.Splits]" = None,
    on_step: Optional[Callable[[int], None]] = None,
) -> RunResult:
    """Train one model as ``cfg`` says and return its :class:`RunResult`.

    ``checkpoint``: a file written atomically every ``cfg.checkpoint_every`` steps (model,
    optimizer, RNG and sampler states, the step, the curve so far). With ``resume=True`` and
    an existing checkpoint, training continues from it; the result is bitwise the same as an
    uninterrupted run's on CPU. ``progress``: a tqdm bar (None: only on a TTY).
    ``splits``: pre-loaded data (else loaded from ``data_dir``). ``on_step(step)`` is called
    after each completed step (for tests and tooling).

    Raises :class:`TrainingDiverged` when a loss term is NaN or Inf; the last checkpoint,
    written before that step, is left in place.
    """
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available; use --device cpu")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        return _train(cfg, device, data_dir, checkpoint, resume, progress, splits, on_step)


def _train(cfg, device, data_dir, checkpoint, resume, progress, splits, on_step) -> RunResult:
    metric = "accuracy" if cfg.loss == "cross_entropy" else "mse"
    data = splits if splits is not None else load_splits(cfg, data_dir, device)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)

    model = build_model(cfg, torch.Generator().manual_seed(stream_seed(cfg.seed, "init"))).to(device)
    model.train()
    decayed = M.decayed_parameters(model)
    opt = build_optimizer(cfg, model)
    sampler = D.BatchSampler(len(x_train), cfg.batch_size, torch.Generator().manual_seed(stream_seed(cfg.seed, "batches")))
    proj_gen = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, "projections"))
    aug_gen = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, "augment"))
    torch.manual_seed(stream_seed(cfg.seed, "dropout"))

    start, elapsed = 0, 0.0
    window: deque = deque(maxlen=cfg.penalty_window)
    curve: list = []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt is not None and ckpt.exists():
        # On the CPU: RNG and sampler states must stay CPU tensors; load_state_dict moves
        # the model's and the optimizer's tensors to their parameters' device.
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state["config"] != cfg.to_dict():
            raise ValueError(f"checkpoint {ckpt} was written by a different config; refusing to resume from it")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        proj_gen.set_state(state["proj_gen"])
        aug_gen.set_state(state["aug_gen"])
        _set_rng_states(state["rng"], device)
        start, elapsed, curve = state["step"], state["elapsed"], state["curve"]
        window.extend(state["window"])

    def snapshot(step: int) -> dict:
        return {
            "config": cfg.to_dict(), "step": step, "elapsed": elapsed + time.perf_counter() - t0,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "sampler": sampler.state_dict(),
            "proj_gen": proj_gen.get_state(), "aug_gen": aug_gen.get_state(), "rng": _rng_states(device),
            "curve": list(curve), "window": list(window),
        }

    regs = list(cfg.regularizers)
    names = None
    bar = _progress(cfg.steps, start, progress)
    t0 = time.perf_counter()
    try:
        for step in range(start, cfg.steps):
            for g in opt.param_groups:
                g["lr"] = piecewise_lr(step, cfg.lr, cfg.steps, cfg.lr_milestones, cfg.lr_gamma)
            idx = next(sampler).to(device)
            xb, yb = x_train[idx], y_train[idx]
            if cfg.augment:
                xb = D.random_translate_flip(xb, aug_gen)
            loss, terms = regularized_loss(model, xb, yb, regs, loss=cfg.loss, generator=proj_gen)
            if cfg.weight_decay:
                loss = loss + cfg.weight_decay * half_squared_norm(decayed)
            values = torch.stack(list(terms.values())).tolist()
            names = list(terms)
            for name, v in zip(names, values):
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
            if ckpt is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                save_checkpoint(ckpt, snapshot(done))
            bar.update(1)
            if on_step is not None:
                on_step(done)
    finally:
        bar.close()
    elapsed += time.perf_counter() - t0

    final = _curve_point(model, data, cfg.steps, window, metric, cfg, device)
    curve.append(final)
    grad_norms, fit = _final_probes(model, data, cfg, metric, device)
    names = names or ["loss"] + [r.name for r in regs]
    means = [sum(col) / len(col) for col in zip(*window)] if window else [float("nan")] * len(names)
    steps_run = cfg.steps - start
    return RunResult(
        config=cfg.to_dict(),
        metric=metric,
        dev=final["dev"],
        test=final["test"],
        train_loss=means[0],
        penalties=dict(zip(names[1:], means[1:])),
        weight_norm_sq=float(2 * half_squared_norm(decayed).detach()),
        wall_time_s=elapsed,
        steps_per_s=steps_run / max(elapsed, 1e-9) if steps_run else 0.0,
        curve=curve,
        device=str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        steps_done=cfg.steps,
        grad_norms=grad_norms,
        fit=fit,
    )


def smoothness_points(cfg: TrainConfig, x_train: torch.Tensor, x_test: torch.Tensor) -> dict:
    """The points of :mod:`gradreg.smoothness` for a run: the first N training and test
    inputs, and N interpolations between test inputs drawn from the run's own stream."""
    n = S.N_POINTS
    a, b, t = S.interpolation_draws(len(x_test), n, torch.Generator().manual_seed(stream_seed(cfg.seed, "smoothness")))
    a, b = a.to(x_test.device), b.to(x_test.device)
    return {"train": x_train[:n], "test": x_test[:n], "off_manifold": S.interpolate(x_test[a], x_test[b], t.to(x_test.device))}


def _final_probes(model, data, cfg, metric, device) -> tuple[dict, Optional[list]]:
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
    train_loss = sum(v[0] for v in window) / len(window) if window else float("nan")
    return {"step": step, "train_loss": train_loss, "dev": dev, "test": test}

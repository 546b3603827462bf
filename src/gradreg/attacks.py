"""Adversarial attacks (FGSM, PGD), robust accuracy and gradient-masking diagnostics.

Conventions, for every function here:

- `x` is a floating tensor `(B, ...)`, `y` integer labels `(B,)`, and `model(x)` returns logits `(B, m)`.
- `eps` is in the units of the **model's input space**. The datasets standardize pixels in `[0, 1]` with one
  scalar mean and std (`(p - mean) / std`), so a budget of `eps` pixels is `eps / std` in input space, for
  both norms (a scalar affine map scales every norm by `1 / std`), and the valid pixel range `[0, 1]` is
  `[(0 - mean) / std, (1 - mean) / std]`: see [`pixel_to_input`][gradreg.attacks.pixel_to_input] and
  [`pixel_bounds`][gradreg.attacks.pixel_bounds].
- `norm="linf"` measures a perturbation by its largest absolute coordinate, `norm="l2"` by its Euclidean norm;
  both are **per example over all non-batch dims** (pixels x channels).
- `bounds=(lo, hi)` is the valid input box (floats, or tensors broadcastable to `x`), in input space; `None`
  means unbounded. `x` itself must lie inside it.

Guarantee, with no tolerance: every returned `x_adv` has `lo <= x_adv <= hi` and `distance(x_adv - x) <= eps`
per example, where `distance` is the max-abs (linf) or `torch.linalg.vector_norm` (l2) of the flattened
difference computed in `x`'s dtype and compared with `eps` cast to that dtype; for dtypes below float64 it also
holds for the difference of the stored values computed in float64 (free of the dtype's rounding; not on MPS).
Projection is onto the eps ball first, then a clamp to the box. For linf that is the exact projection onto the
intersection. For l2 it is a feasible point, not always the Euclidean projection onto the intersection: since `x`
is inside the box, the clamp moves each coordinate toward `x`, so `|x_adv - x|` only shrinks coordinatewise and
the l2 distance cannot grow. Rounding `x + delta` can still leave a point just outside the ball; a final loop then
pulls it in (linf: one ulp toward `x`; l2: rescaled to `eps` minus `2^k` times the norm of `x_adv`'s ulps)
and re-clamps. An example still outside after 8 rounds is returned as `x` (not seen in the tests, which go down
to `eps` of about 16 ulps of `x`).

Model handling: attacks run the model in eval mode (no dropout, BatchNorm uses its running statistics and never
updates them) and restore every submodule's `training` flag afterwards, also on an exception. Gradients are taken
with `torch.autograd.grad` w.r.t. the input only, so no parameter's `.grad` is created or changed, and they work
inside `torch.no_grad()`. Randomness comes only from the `generator` passed in.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "fgsm",
    "pgd",
    "robust_accuracy",
    "pixel_to_input",
    "pixel_bounds",
    "masking_flags",
    "NORMS",
    "LOSSES",
    "ATTACKS",
]

Norm = Literal["linf", "l2"]
Loss = Literal["ce", "margin"]
Bound = float | Tensor
Bounds = tuple[Bound, Bound]

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")
ATTACKS = ("pgd", "fgsm")
_MAX_FIX_ROUNDS = 8  # rounds of the exactness loop in _project; one is almost always enough


# --------------------------------------------------------------------------- input checks


def _check_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _check_options(
    eps: Any, norm: Any = "linf", loss: Any = "ce", steps: Any = 1, restarts: Any = 1, step_size: Any = None
) -> float:
    """Validate the scalar options of an attack; returns eps as a float."""
    eps = _check_real("eps", eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid losses: {', '.join(LOSSES)}")
    _check_count("steps", steps)
    _check_count("restarts", restarts)
    if step_size is not None and _check_real("step_size", step_size) <= 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    return eps


def _check_data(x: Any, y: Any) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must be an integer tensor of labels, got {getattr(y, 'dtype', type(y).__name__)}")
    if x.dim() < 1 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y batch sizes differ: x {tuple(x.shape)}, y {tuple(y.shape)} (y must be (B,))")


def _check_labels(logits: Tensor, y: Tensor) -> None:
    m = logits.shape[1]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= m):
        raise ValueError(f"labels out of range: y in [{int(y.min())}, {int(y.max())}], the model has {m} outputs")


def _as_bounds(x: Tensor, bounds: Bounds | None) -> tuple[Tensor, Tensor] | None:
    """`bounds` as two tensors in `x`'s dtype and device; raises if they are invalid or exclude `x`."""
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"bounds must be a (lo, hi) pair or None, got {bounds!r}")
    lo, hi = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in bounds)
    for name, b in (("lo", lo), ("hi", hi)):
        if not _broadcasts_to(b.shape, x.shape):
            raise ValueError(f"bounds {name} of shape {tuple(b.shape)} does not broadcast to x {tuple(x.shape)}")
        if b.isnan().any():
            raise ValueError(f"bounds {name} contains NaN")
    if (lo > hi).any():
        raise ValueError(f"bounds have lo > hi at {int((lo > hi).sum())} position(s)")
    below, above = (lo - x).clamp_min(0).max(), (x - hi).clamp_min(0).max()
    if below > 0 or above > 0:
        raise ValueError(f"bounds exclude x: x is below lo by up to {below:.4g} and above hi by up to {above:.4g}")
    return lo, hi


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


# --------------------------------------------------------------------------- model and loss


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put `model` in eval mode; restore every submodule's `training` flag on exit, even on an exception."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _per_example_loss(logits: Tensor, y: Tensor, loss: Loss) -> Tensor:
    """Cross-entropy, or the Carlini-Wagner margin `max_{k != y} z_k - z_y`; shape `(B,)`, to be maximized."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf)
    return others.amax(1) - z_y


def _logits(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    logits = model(x)
    _check_labels(logits, y)
    return logits


def _input_grad(model: nn.Module, x: Tensor, y: Tensor, loss: Loss) -> tuple[Tensor, Tensor]:
    """Gradient of the summed per-example loss w.r.t. `x` only, and the logits (detached)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = _logits(model, x, y)
        (grad,) = torch.autograd.grad(_per_example_loss(logits, y, loss).sum(), x)
    return grad, logits.detach()


# --------------------------------------------------------------------------- geometry


def _distance(delta: Tensor, norm: Norm) -> Tensor:
    """Per-example size of `delta` over all non-batch dims, in its dtype; shape `(B,)`."""
    flat = delta.flatten(1) if delta.dim() > 1 else delta[:, None]
    return flat.abs().amax(1) if norm == "linf" else torch.linalg.vector_norm(flat, dim=1)


def _per_example(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def _direction(grad: Tensor, norm: Norm) -> Tensor:
    """The steepest-ascent unit step: `sign(grad)` (linf) or `grad / ||grad||_2` per example (l2; 0 if 0)."""
    grad = torch.nan_to_num(grad, nan=0.0)
    if norm == "linf":
        return grad.sign()
    size = _distance(grad, "l2")
    return grad / _per_example(torch.where(size > 0, size, torch.ones_like(size)), grad)


def _clamp(x_adv: Tensor, box: tuple[Tensor, Tensor] | None) -> Tensor:
    return x_adv if box is None else torch.clamp(x_adv, box[0], box[1])


def _project(x_adv: Tensor, x: Tensor, eps: float, norm: Norm, box: tuple[Tensor, Tensor] | None) -> Tensor:
    """Project onto the eps ball around `x`, clamp to `box`, then enforce both exactly (module docstring)."""
    eps_t = torch.tensor(eps, dtype=x.dtype, device=x.device)
    if norm == "linf":
        x_adv = torch.max(torch.min(x_adv, x + eps_t), x - eps_t)
    else:
        x_adv = x + (x_adv - x) * _per_example(_l2_scale(x_adv - x, eps_t), x)
    x_adv = _clamp(x_adv, box)
    for k in range(_MAX_FIX_ROUNDS):
        outside = _per_example(_outside(x_adv, x, eps_t, norm), x)
        if not outside.any():
            return x_adv
        if norm == "linf":  # one ulp toward x: only coordinates that rounded past x +- eps can be outside
            x_adv = torch.where(outside & ((x_adv - x).abs() >= eps_t), torch.nextafter(x_adv, x), x_adv)
        else:  # aim inside by 2^k times the rounding that x + delta can add (the norm of x_adv's ulps)
            ulps = torch.nextafter(x_adv.abs(), torch.full_like(x_adv, math.inf)) - x_adv.abs()
            slack = 2**k * (_distance(ulps, "l2") + eps_t * torch.finfo(x.dtype).eps)
            scale = _l2_scale(x_adv - x, (eps_t - slack).clamp_min(0))
            x_adv = torch.where(outside, x + (x_adv - x) * _per_example(scale, x), x_adv)
        x_adv = _clamp(x_adv, box)
    return torch.where(_per_example(_outside(x_adv, x, eps_t, norm), x), x, x_adv)


def _l2_scale(delta: Tensor, radius: Tensor) -> Tensor:
    """Per example `min(1, radius / ||delta||_2)`; 1 where `delta` is 0."""
    size = _distance(delta, "l2")
    return torch.where(size > radius, radius / size, torch.ones_like(size))


def _outside(x_adv: Tensor, x: Tensor, eps_t: Tensor, norm: Norm) -> Tensor:
    """Examples whose distance exceeds eps (or is NaN), computed in `x`'s dtype and, below float64, also in
    float64 from the stored values (the perturbation as it really is, free of the dtype's rounding)."""
    sizes = [_distance(x_adv - x, norm)]
    if x.dtype != torch.float64 and x.device.type != "mps":  # MPS has no float64
        sizes.append(_distance(x_adv.double() - x.double(), norm))
    return torch.stack([~(size <= eps_t.to(size.dtype)) for size in sizes]).any(0)


def _random_start(x: Tensor, eps: float, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """A point uniform in the eps ball (linf: uniform cube; l2: gaussian direction, radius `eps * U^(1/d)`).

    Drawn from `generator` on the generator's device in `x`'s dtype, then moved to `x`'s device.
    """
    device = generator.device if generator is not None else x.device
    uniform = lambda *shape: torch.rand(shape, generator=generator, device=device, dtype=x.dtype)
    if norm == "linf":
        delta = (2 * uniform(*x.shape) - 1) * eps
    else:
        gauss = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
        radius = eps * uniform(x.shape[0]) ** (1.0 / math.prod(x.shape[1:]))
        delta = gauss / _per_example(_distance(gauss, "l2").clamp_min(torch.finfo(x.dtype).tiny), x)
        delta = delta * _per_example(radius, x)
    return x + delta.to(x.device)


# --------------------------------------------------------------------------- attacks


def fgsm(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, *, norm: Norm = "linf", bounds: Bounds | None = None
) -> Tensor:
    """Fast gradient (sign) method: one step of size `eps` up the cross-entropy loss (Goodfellow et al. 2015).

    `x_adv = x + eps * sign(grad)` (linf) or `x + eps * grad / ||grad||_2` per example (l2), then projected
    and clamped to `bounds` exactly (see the guarantee in the [module docstring][gradreg.attacks]).

    Args:
        model: Maps `x` to logits `(B, m)`; run in eval mode, its state restored afterwards.
        x: Inputs `(B, ...)`, floating point; not modified.
        y: Labels `(B,)`, integers in `[0, m)`.
        eps: Budget `>= 0` in model input units.
        norm: `"linf"` or `"l2"` (per example over all non-batch dims).
        bounds: `(lo, hi)` valid input box (floats or tensors broadcastable to `x`), or `None`.

    Returns:
        `x_adv` with the shape and dtype of `x`, detached.

    Raises:
        ValueError: Bad eps, norm, bounds, batch sizes or labels (one line naming the problem).
        TypeError: `x`, `y` or `eps` of the wrong type, or `bounds` not a `(lo, hi)` pair.
    """
    eps = _check_options(eps, norm)
    _check_data(x, y)
    box = _as_bounds(x, bounds)
    x = x.detach()
    with _eval_mode(model):
        grad, _ = _input_grad(model, x, y, "ce")
    return _project(x + eps * _direction(grad, norm), x, eps, norm, box)


def pgd(  # noqa: PLR0913 (the attack's options are its public, keyword-only interface, each documented)
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    norm: Norm = "linf",
    steps: int = 40,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    loss: Loss = "ce",
    generator: torch.Generator | None = None,
    bounds: Bounds | None = None,
    early_stop: bool = True,
) -> Tensor:
    """Projected gradient ascent on the loss within the eps ball (Madry et al. 2018), untargeted.

    Each step moves `step_size` along [`fgsm`][gradreg.attacks.fgsm]'s direction and projects (see the
    [module docstring][gradreg.attacks]). Early stop, per
    example: an example whose current iterate is misclassified keeps that iterate (it already is a successful
    adversarial example) and is no longer attacked, which saves its forward/backward passes. With `restarts > 1`
    each example keeps its worst case: a misclassified iterate beats a correctly classified one, and among equals
    the higher loss wins.

    Args:
        model: Maps `x` to logits `(B, m)`; run in eval mode, its state restored afterwards.
        x: Inputs `(B, ...)`, floating point; not modified.
        y: Labels `(B,)`, integers in `[0, m)`.
        eps: Budget `>= 0` in model input units; 0 returns `x` (after one forward pass to check the labels).
        norm: `"linf"` or `"l2"` (per example over all non-batch dims).
        steps: Gradient steps per restart, `>= 1`.
        step_size: Step length in input units; default `2.5 * eps / steps` (Madry et al.).
        random_start: Start uniformly at random in the eps ball (linf cube, or l2 ball) instead of at `x`.
        restarts: Independent runs, `>= 1`; each example keeps its worst case.
        loss: `"ce"` (cross-entropy) or `"margin"` (Carlini-Wagner `max_{k != y} z_k - z_y`), maximized.
        generator: Source of the random starts; drawn on its own device, then moved to `x`'s.
        bounds: `(lo, hi)` valid input box (floats or tensors broadcastable to `x`), or `None`.
        early_stop: Stop attacking an example once it is misclassified (the default, for evaluation). Adversarial
            training passes `False`: every example takes every step, so it trains on high-loss points.

    Returns:
        `x_adv` with the shape and dtype of `x`, detached.

    Raises:
        ValueError: Bad eps, norm, loss, steps, restarts, step_size, bounds, batch sizes or labels.
        TypeError: Arguments of the wrong type.
    """
    eps = _check_options(eps, norm, loss, steps, restarts, step_size)
    _check_data(x, y)
    box = _as_bounds(x, bounds)
    x = x.detach()
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    with _eval_mode(model):
        run = _PGDRun(eps, norm, steps, alpha, random_start, loss, generator, box, early_stop)
        best, best_loss, best_wrong = _pgd_run(model, x, y, run)
        for _ in range(restarts - 1):
            x_adv, value, wrong = _pgd_run(model, x, y, run)
            better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (value > best_loss))
            best = torch.where(_per_example(better, x), x_adv, best)
            best_loss, best_wrong = torch.where(better, value, best_loss), best_wrong | wrong
    return best


class _PGDRun(NamedTuple):
    """The settings of one PGD run, checked by `pgd` (see there)."""

    eps: float
    norm: Norm
    steps: int
    alpha: float  # the step size, in input units
    random_start: bool
    loss: Loss
    generator: torch.Generator | None
    box: tuple[Tensor, Tensor] | None
    early_stop: bool


def _pgd_run(model: nn.Module, x: Tensor, y: Tensor, run: _PGDRun) -> tuple[Tensor, Tensor, Tensor]:
    """One PGD run from `x`.

    Args:
        model: The network, in eval mode.
        x: The clean inputs `(B, ...)`, detached.
        y: Their labels `(B,)`.
        run: The attack's settings.

    Returns:
        The final iterate, its per-example loss and whether it is misclassified.
    """
    eps, norm, box = run.eps, run.norm, run.box
    x_adv = _project(_random_start(x, eps, norm, run.generator), x, eps, norm, box) if run.random_start else x.clone()
    active = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for _ in range(run.steps if eps > 0 else 0):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        grad, logits = _input_grad(model, x_adv[idx], y[idx], run.loss)
        wrong = logits.argmax(1) != y[idx]
        if not run.early_stop:
            wrong = torch.zeros_like(wrong)
        active[idx[wrong]] = False
        move, grad = idx[~wrong], grad[~wrong]
        stepped = x_adv[move] + run.alpha * _direction(grad, norm)
        x_adv[move] = _project(stepped, x[move], eps, norm, None if box is None else _select(box, x, move))
    with torch.no_grad():
        logits = _logits(model, x_adv, y)
        return x_adv, _per_example_loss(logits, y, run.loss), logits.argmax(1) != y


def _select(box: tuple[Tensor, Tensor], x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """The bounds of the examples `idx` (bounds broadcast to `x` first, so per-example rows exist)."""
    return box[0].expand_as(x)[idx], box[1].expand_as(x)[idx]


_ATTACK_FNS: dict[str, Callable[..., Tensor]] = {"pgd": pgd, "fgsm": fgsm}


def robust_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    attack: str = "pgd",
    batch_size: int = 1000,
    **attack_kwargs: Any,
) -> float:
    """Fraction of examples still classified correctly after the attack.

    Examples misclassified clean count as not robust and are not attacked. `eps == 0` gives clean accuracy.

    Args:
        model: Maps `x` to logits `(B, m)`; evaluated in eval mode, its state restored afterwards.
        x: Inputs `(N, ...)`.
        y: Labels `(N,)`.
        eps: Budget `>= 0` in model input units.
        attack: `"pgd"` or `"fgsm"`.
        batch_size: Examples per attack batch, `>= 1`.
        **attack_kwargs: Passed to the attack (`norm`, `steps`, `bounds`, `generator`, ...).

    Returns:
        Robust accuracy in `[0, 1]` (`nan` when `N == 0`).

    Raises:
        ValueError: Unknown attack, or any bad input the attack would reject (checked before attacking).
        TypeError: An argument the attack does not take, or of the wrong type.
    """
    if attack not in _ATTACK_FNS:
        raise ValueError(f"unknown attack {attack!r}; valid attacks: {', '.join(ATTACKS)}")
    fn = _ATTACK_FNS[attack]
    _check_keywords(attack, fn, attack_kwargs)
    options = {k: v for k, v in attack_kwargs.items() if k in ("norm", "loss", "steps", "restarts", "step_size")}
    eps = _check_options(eps, **options)
    _check_count("batch_size", batch_size)
    _check_data(x, y)
    box = _as_bounds(x, attack_kwargs.pop("bounds", None))
    correct = 0
    with _eval_mode(model), torch.no_grad():
        for start in range(0, len(x), batch_size):
            rows = slice(start, start + batch_size)
            xb, yb = x[rows].detach(), y[rows]
            clean = _logits(model, xb, yb).argmax(1) == yb
            if eps > 0 and clean.any():
                # bounds may have a batch axis, so they are cut like x
                bounds = None if box is None else (box[0].expand_as(x)[rows][clean], box[1].expand_as(x)[rows][clean])
                x_adv = fn(model, xb[clean], yb[clean], eps, bounds=bounds, **attack_kwargs)
                clean = model(x_adv).argmax(1) == yb[clean]
            correct += int(clean.sum())
    return correct / len(x) if len(x) else math.nan


def _check_keywords(attack: str, fn: Callable[..., Tensor], kwargs: dict[str, Any]) -> None:
    """Reject keywords `fn` does not take before any work (with eps == 0 it would never be called)."""
    accepted = {name for name, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(f"{attack} takes no argument {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}")


# --------------------------------------------------------------------------- pixel units


def pixel_to_input(eps: float, *, mean: float, std: float) -> float:
    """A budget of `eps` in pixel units (pixels in `[0, 1]`) as model input units: `eps / std`.

    The datasets feed `(p - mean) / std` to the model; `mean` cancels in a difference, so this
    holds for both norms.

    Args:
        eps: The budget in pixel units, `>= 0`.
        mean: The dataset's pixel mean (taken so that call sites read like `pixel_bounds`;
            unused).
        std: The dataset's pixel std, `> 0`.

    Returns:
        `eps / std`.

    Raises:
        TypeError: `eps` or `std` is not a real number.
        ValueError: `eps` is negative or not finite; `std` is not finite or not `> 0`.
    """
    del mean  # the shift cancels in x_adv - x; it is taken so that call sites read like pixel_bounds
    if _check_real("eps", eps) < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return float(eps) / _check_std(std)


def pixel_bounds(*, mean: float, std: float) -> tuple[float, float]:
    """The pixel range `[0, 1]` in model input units: `((0 - mean) / std, (1 - mean) / std)`.

    Args:
        mean: The dataset's pixel mean.
        std: The dataset's pixel std, `> 0`.

    Returns:
        `(lo, hi)`, to pass as `bounds` to the attacks.

    Raises:
        TypeError: `mean` or `std` is not a real number.
        ValueError: `mean` or `std` is not finite, or `std` is not `> 0`.
    """
    std = _check_std(std)
    mean = _check_real("mean", mean)
    return (0.0 - mean) / std, (1.0 - mean) / std


def _check_std(std: Any) -> float:
    if _check_real("std", std) <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    return float(std)


# --------------------------------------------------------------------------- gradient masking


def masking_flags(
    eps: Sequence[float],
    pgd_acc: Sequence[float],
    fgsm_acc: Sequence[float],
    *,
    transfer_acc: Sequence[float] | None = None,
    large_eps_acc: float | None = None,
    tol: float = 0.01,
    large_eps_max: float = 0.05,
) -> list[str]:
    """Signs of gradient masking in robust-accuracy curves of one norm (Carlini et al. 2019, section 5).

    Flags: (1) accuracy under PGD or FGSM rising with eps by more than `tol`; (2) PGD accuracy above FGSM
    accuracy at some eps by more than `tol` (the iterative attack should be at least as strong); (3) accuracy at
    a very large eps above `large_eps_max` (any input is reachable there, so it should be about 0); (4) transfer
    (black-box) accuracy below white-box PGD accuracy by more than `tol`.

    Args:
        eps: Budgets, ascending.
        pgd_acc: PGD robust accuracy in `[0, 1]` at each eps.
        fgsm_acc: FGSM robust accuracy at each eps.
        transfer_acc: Accuracy under a transfer attack at each eps, or `None`.
        large_eps_acc: Accuracy at a budget large enough to reach any input, or `None`.
        tol: Allowed slack in accuracy units; `1 / n` allows one example's worth of noise for `n` examples.
        large_eps_max: Largest accuracy accepted at the large budget.

    Returns:
        One human-readable line per sign found; an empty list means no sign of masking.

    Raises:
        ValueError: Lengths differ, eps not ascending, or tol negative.
    """
    _check_curves(eps, pgd_acc, fgsm_acc, transfer_acc, tol)
    flags = _rises_with_eps("PGD", eps, pgd_acc, tol) + _rises_with_eps("FGSM", eps, fgsm_acc, tol)
    flags += [
        f"PGD accuracy {p:.3f} above FGSM accuracy {f:.3f} at eps={e:g}: the one-step attack is stronger"
        for e, p, f in zip(eps, pgd_acc, fgsm_acc)
        if p > f + tol
    ]
    if large_eps_acc is not None and large_eps_acc > large_eps_max:
        flags.append(f"accuracy {large_eps_acc:.3f} at a large eps is not about 0 (> {large_eps_max:g})")
    flags += [
        f"transfer accuracy {t:.3f} below white-box PGD accuracy {p:.3f} at eps={e:g}: black-box is stronger"
        for e, p, t in zip(eps, pgd_acc, transfer_acc or ())
        if t < p - tol
    ]
    return flags


def _check_curves(
    eps: Sequence[float],
    pgd_acc: Sequence[float],
    fgsm_acc: Sequence[float],
    transfer_acc: Sequence[float] | None,
    tol: float,
) -> None:
    for name, curve in (("pgd_acc", pgd_acc), ("fgsm_acc", fgsm_acc), ("transfer_acc", transfer_acc)):
        if curve is not None and len(curve) != len(eps):
            raise ValueError(f"{name} has {len(curve)} values for {len(eps)} eps")
    if any(b < a for a, b in zip(eps, eps[1:])):
        raise ValueError(f"eps must be ascending, got {list(eps)}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")


def _rises_with_eps(name: str, eps: Sequence[float], acc: Sequence[float], tol: float) -> list[str]:
    return [
        f"{name} accuracy rises with eps: {acc[i]:.3f} at eps={eps[i]:g} -> {acc[i + 1]:.3f} at eps={eps[i + 1]:g}"
        for i in range(len(eps) - 1)
        if acc[i + 1] > acc[i] + tol
    ]

"""Robustness probes at the end of a run: what the trained model withstands, with masking checks.

A config with `robust_linf` or `robust_l2` (budgets in pixel units) gets, in its record, one row per
(norm, eps) on the first `robust_examples` test images:

- `pgd`: accuracy under PGD with `robust_steps` steps of `2.5 eps / steps`, a random start and the
  Carlini-Wagner margin loss (on a linear model, the margin loss comes within a point of the exact robust
  accuracy where cross-entropy PGD can miss by several; `tests/test_attacks.py`);
- `fgsm`: accuracy under FGSM (one step);
- `transfer`: accuracy on PGD examples crafted on an unregularized *surrogate*: the same config with no
  regularizer, no adversarial training and no probes, trained from the same seed.

and `large_linf`: PGD accuracy at L-infinity `LARGE_LINF` pixels, where almost any image is reachable, so
it should be about 0. [`gradreg.attacks.masking_flags`][gradreg.attacks.masking_flags] reads these rows for
signs of gradient masking.

Budgets in pixel units map to the model's input space through the run's standardization
([`gradreg.attacks.pixel_to_input`][gradreg.attacks.pixel_to_input]), and the attacks stay inside the valid
pixel range.

Randomness: each row's attack draws from its own stream (`stream_seed(seed, "robust:linf:0.1")`), so a row
does not depend on which other rows a config asks for. The surrogate's adversarial examples are cached in
`$XDG_CACHE_HOME/gradreg/surrogates` (keyed by the surrogate's config and the probe settings); the surrogate
itself, when no cached examples exist, is trained once (its config's run) and the run that *is* a surrogate
(an unregularized run with probes) fills the cache with its own model.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import attacks as A
from .atomic import save_torch_atomic
from .data.paths import default_cache_dir
from .data.splits import Splits
from .streams import stream_seed

LARGE_LINF = 0.5  # pixel units: half the pixel range, any digit can be drawn over
PROBE_FIELDS = ("robust_linf", "robust_l2", "robust_steps", "robust_examples")

TrainSurrogate = Callable[[Any], nn.Module]  # (surrogate config) -> trained model


def wants_probes(cfg) -> bool:
    """Whether a config asks for robustness probes.

    Args:
        cfg (TrainConfig): The run's config.

    Returns:
        True when `cfg.robust_linf` or `cfg.robust_l2` holds a budget.
    """
    return bool(cfg.robust_linf or cfg.robust_l2)


def points(cfg) -> list[tuple[str, float]]:
    """The (norm, eps) rows a config asks for, in order: L-infinity first.

    Args:
        cfg (TrainConfig): The run's config.

    Returns:
        `[("linf", eps), ..., ("l2", eps), ...]`, budgets in pixel units.
    """
    return [("linf", e) for e in cfg.robust_linf] + [("l2", e) for e in cfg.robust_l2]


def surrogate_config(cfg):
    """The unregularized run whose adversarial examples are transferred to `cfg`'s model.

    Args:
        cfg (TrainConfig): The run's config.

    Returns:
        (TrainConfig): `cfg` with no regularizer, no adversarial training and no probes.
    """
    return cfg.replace(regularizers=(), adversarial=None, robust_linf=(), robust_l2=())


def is_own_surrogate(cfg) -> bool:
    """Whether the run is its own surrogate: no regularizer and no adversarial training.

    Args:
        cfg (TrainConfig): The run's config.

    Returns:
        True where the trained model itself crafts the transfer examples.
    """
    return not cfg.regularizers and cfg.adversarial is None


def _generator(cfg, name: str, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, name))


def _pgd_kwargs(cfg, norm: str, splits: Splits) -> dict:
    return {
        "norm": norm,
        "steps": cfg.robust_steps,
        "loss": "margin",
        "bounds": A.pixel_bounds(mean=splits.mean, std=splits.std),
    }


def _to_input(eps: float, splits: Splits) -> float:
    return A.pixel_to_input(eps, mean=splits.mean, std=splits.std)


def _test_slice(cfg, splits: Splits, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    n = cfg.robust_examples
    return splits.x_test[:n].to(device), splits.y_test[:n].to(device)


def _cache_path(cfg) -> Path:
    text = json.dumps(
        [surrogate_config(cfg).to_dict(), points(cfg), cfg.robust_steps, cfg.robust_examples],
        sort_keys=True,
        default=str,
    )
    return default_cache_dir() / "surrogates" / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.pt"


def _craft_on(model: nn.Module, cfg, splits: Splits, device: torch.device) -> list[torch.Tensor]:
    x, y = _test_slice(cfg, splits, device)
    out = []
    for norm, eps in points(cfg):
        gen = _generator(cfg, f"transfer:{norm}:{eps!r}", device)
        out.append(A.pgd(model, x, y, _to_input(eps, splits), generator=gen, **_pgd_kwargs(cfg, norm, splits)).cpu())
    return out


def transfer_examples(
    model: nn.Module, cfg, splits: Splits, device: torch.device, train_surrogate: TrainSurrogate
) -> list[torch.Tensor]:
    """PGD examples crafted on `cfg`'s surrogate, one tensor per row of `points` (cached).

    Args:
        model: The trained model (used as the surrogate where the run is its own).
        cfg (TrainConfig): The run's config.
        splits: The run's data.
        device: The device the attacks run on.
        train_surrogate: Trains the surrogate from its config, where no cached examples exist.

    Returns:
        One tensor of adversarial test images per row, on the CPU.
    """
    path = _cache_path(cfg)
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    surrogate = model if is_own_surrogate(cfg) else train_surrogate(surrogate_config(cfg))
    crafted = _craft_on(surrogate, cfg, splits, device)
    save_torch_atomic(path, crafted)
    return crafted


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return A.robust_accuracy(model, x, y, 0.0)


def robust_probes(model: nn.Module, cfg, splits: Splits, device: torch.device, train_surrogate: TrainSurrogate) -> dict:
    """The probes of `cfg` on its trained `model` (see the module docstring): a JSON-ready dict.

    Args:
        model: The trained model.
        cfg (TrainConfig): The run's config.
        splits: The run's data.
        device: The device the attacks run on.
        train_surrogate: Trains the surrogate from its config, where no cached examples exist.

    Returns:
        The probe record: `examples`, `steps`, `loss`, `clean` accuracy, one row per point under
        `points` (`norm`, `eps`, `pgd`, `fgsm`, `transfer`), `large_linf`, the masking `flags`,
        and the time taken (`seconds`, `surrogate_seconds`).
    """
    t0 = time.perf_counter()
    x, y = _test_slice(cfg, splits, device)
    transfer = transfer_examples(model, cfg, splits, device, train_surrogate)
    t_transfer = time.perf_counter() - t0
    rows = []
    for (norm, eps), x_tr in zip(points(cfg), transfer):
        e = _to_input(eps, splits)
        kw = _pgd_kwargs(cfg, norm, splits)
        gen = _generator(cfg, f"robust:{norm}:{eps!r}", device)
        rows.append(
            {
                "norm": norm,
                "eps": eps,
                "pgd": A.robust_accuracy(model, x, y, e, attack="pgd", generator=gen, **kw),
                "fgsm": A.robust_accuracy(model, x, y, e, attack="fgsm", norm=norm, bounds=kw["bounds"]),
                "transfer": _accuracy(model, x_tr.to(device), y),
            }
        )
    gen = _generator(cfg, "robust:large", device)
    large = A.robust_accuracy(
        model, x, y, _to_input(LARGE_LINF, splits), attack="pgd", generator=gen, **_pgd_kwargs(cfg, "linf", splits)
    )
    result = {
        "examples": len(x),
        "steps": cfg.robust_steps,
        "loss": "margin",
        "clean": _accuracy(model, x, y),
        "points": rows,
        "large_linf": {"eps": LARGE_LINF, "pgd": large},
        "flags": masking(rows, large, len(x)),
        "seconds": time.perf_counter() - t0,
        "surrogate_seconds": t_transfer,
    }
    return result


def masking(rows: list[dict], large: float | None, examples: int) -> list[str]:
    """`gradreg.attacks.masking_flags` over each norm's rows, with a point of slack.

    One random start against another moves PGD accuracy by up to that: the tolerance is
    `max(0.01, 1 / examples)`.

    Args:
        rows: The probe rows (`norm`, `eps`, `pgd`, `fgsm`, `transfer`).
        large: PGD accuracy at `LARGE_LINF`, or None.
        examples: The number of test examples probed.

    Returns:
        One line per sign of masking, prefixed with its norm.
    """
    flags = []
    for norm in ("linf", "l2"):
        mine = sorted((r for r in rows if r["norm"] == norm), key=lambda r: r["eps"])
        if not mine:
            continue
        found = A.masking_flags(
            [r["eps"] for r in mine],
            [r["pgd"] for r in mine],
            [r["fgsm"] for r in mine],
            transfer_acc=[r["transfer"] for r in mine],
            large_eps_acc=large if norm == "linf" else None,
            tol=max(0.01, 1.0 / max(examples, 1)),  # a point: random starts alone move PGD by that
        )
        flags += [f"{norm}: {f}" for f in found]
    return flags

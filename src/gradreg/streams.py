"""Independent random streams per run: everything random in a run comes from its seed."""

from __future__ import annotations

import hashlib


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named random stream of run ``seed`` (independent streams):
    ``init``, ``batches``, ``dropout``, ``projections``, ``augment``, ``smoothness``."""
    digest = hashlib.sha256(f"gradreg:{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def piecewise_lr(step: int, base_lr: float, steps: int, milestones=(0.5, 0.75), gamma: float = 0.1) -> float:
    """``base_lr * gamma^k`` where k is the number of milestones (fractions of ``steps``)
    reached: with the defaults, x0.1 from 50% and x0.01 from 75% of training."""
    k = sum(step >= int(round(m * steps)) for m in milestones)
    return base_lr * gamma**k

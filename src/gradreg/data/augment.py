"""CIFAR augmentation: random translation by up to 4 px with zero fill, and random horizontal flip.

Convention, per example `i` with shift `(dy_i, dx_i)` and flip bit `f_i`:
`shifted[c, h, w] = x[c, h - dy_i, w - dx_i]` (zero where the source lies outside the image),
so positive `dy`/`dx` move content down/right; then, if `f_i`, `out = shifted.flip(-1)`.
This is the pad-by-`max_shift` then random-crop scheme, and translation and flip act
per example, all on the input's device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def translate_flip(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, max_shift: int = 4) -> torch.Tensor:
    """Deterministic part: shift each example of `x` then maybe flip it.

    Vectorized: one zero pad and one gather, no loop over the batch.

    Args:
        x: Images `(B, C, H, W)`.
        shifts: Integer `(B, 2)` tensor of `(dy, dx)` with `|dy|, |dx| <= max_shift`.
        flips: Bool `(B,)`.
        max_shift: The largest shift, in pixels (default 4).

    Returns:
        The augmented images, `(B, C, H, W)` on `x`'s device.

    Raises:
        ValueError: `shifts` or `flips` has the wrong shape, or a shift exceeds `max_shift`.
    """
    b = x.shape[0]
    if shifts.shape != (b, 2) or flips.shape != (b,):
        raise ValueError(
            f"expected shifts (B, 2) and flips (B,) for B={b}, got {tuple(shifts.shape)} and {tuple(flips.shape)}"
        )
    if b and int(shifts.abs().max()) > max_shift:
        raise ValueError(f"shifts must lie in [-{max_shift}, {max_shift}]")
    return _translate_flip(x, shifts, flips, max_shift)


def _translate_flip(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, max_shift: int) -> torch.Tensor:
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    shifts = shifts.to(device=x.device, dtype=torch.long)
    flips = flips.to(device=x.device, dtype=torch.bool)
    rows = torch.arange(h, device=x.device) + max_shift - shifts[:, :1]  # (B, H)
    out_cols = torch.arange(w, device=x.device).expand(b, w)
    out_cols = torch.where(flips[:, None], w - 1 - out_cols, out_cols)  # flip
    cols = out_cols + max_shift - shifts[:, 1:]  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # advanced indices split by the channel slice -> result (B, H, W, C)
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def random_translate_flip(
    x: torch.Tensor, generator: torch.Generator, max_shift: int = 4, flip_probability: float = 0.5
) -> torch.Tensor:
    """Randomly translate (zero fill) and horizontally flip each example of `x`.

    Draws, in this order, from `generator`:
    `shifts = torch.randint(-max_shift, max_shift + 1, (B, 2))` as `(dy, dx)`, then
    `flips = torch.rand(B) < flip_probability`; then applies `translate_flip`.

    Args:
        x: Images `(B, C, H, W)`.
        generator: The source of randomness; it must live on `x.device`.
        max_shift: The largest shift, in pixels (default 4).
        flip_probability: The probability of a flip (default 0.5).

    Returns:
        The augmented images, `(B, C, H, W)`.
    """
    b = x.shape[0]
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator, device=x.device)
    flips = torch.rand(b, generator=generator, device=x.device) < flip_probability
    return _translate_flip(x, shifts, flips, max_shift)  # in range by construction: no sync

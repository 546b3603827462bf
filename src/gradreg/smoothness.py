"""Global smoothness, as a number (the paper's section 6.2.8 argues it qualitatively).

For a trained model we report the mean input-gradient norm ``mean_i ||J_g(x_i)||_F`` of the
logits at three kinds of points: training points (where the regularizer acted), test points,
and off-manifold points -- random interpolations ``x_a + t (x_b - x_a)`` between two test
inputs, ``t ~ U(0, 1)``. If gradient control were only local, the last would stay large
while the first shrank.

Conventions: the model is in eval mode; norms are Frobenius (not squared) norms of the full
logit Jacobian; with BatchNorm on batch statistics at evaluation (the original ResNet) the
points of one chunk are coupled, like everything else evaluated that way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor

from . import penalties as P

N_POINTS = 200  # points of each kind


def interpolation_draws(n_pool: int, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Indices ``a``, ``b`` into a pool of ``n_pool`` inputs and weights ``t`` in [0, 1), drawn
    in this order from ``generator`` (CPU)."""
    a = torch.randint(0, n_pool, (n,), generator=generator)
    b = torch.randint(0, n_pool, (n,), generator=generator)
    t = torch.rand(n, generator=generator, dtype=torch.float64)
    return a, b, t


def interpolate(xa: Tensor, xb: Tensor, t: Tensor) -> Tensor:
    """``xa + t (xb - xa)`` with ``t`` broadcast over the trailing input dims."""
    t = t.to(xa.dtype).view(*t.shape, *([1] * (xa.dim() - t.dim())))
    return xa + t * (xb - xa)


def jacobian_frobenius_norms(fn: Callable[[Tensor], Tensor], x: Tensor, lead: int = 1) -> Tensor:
    """``||J(x_i)||_F`` of ``fn``'s last-axis outputs w.r.t. each point. ``x`` has ``lead``
    leading index dims (1 for ``(n, *in)``, 2 for a packed ``(K, n, *in)``); the result has
    those dims."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(xg)
        m = out.shape[-1]
        eye = torch.eye(m, device=x.device, dtype=out.dtype).view(m, *([1] * lead), m).expand(m, *out.shape)
        vjps = cast(Tensor, P.input_vjps(out, xg, eye, create_graph=False))  # a Tensor for Tensor inputs
    return vjps.pow(2).flatten(lead + 1).sum(-1).sum(0).sqrt().detach()

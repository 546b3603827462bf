"""The drop-in entry points: :func:`regularized_loss` and :func:`penalty`.

Both run the forward pass themselves on a detached copy of ``x`` that requires grad, so
the caller never sets ``requires_grad`` (and can never forget to). All regularizers share
that one forward pass and its graph.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .regularizers import Forward, Regularizer

LossFn = Callable[[Tensor, Tensor], Tensor]
LOSSES = ("cross_entropy", "half_sse", "mse")


# --------------------------------------------------------------------------- data losses


def per_example_loss(logits: Tensor, y: Tensor, loss: Union[str, LossFn]) -> Tensor:
    """The data loss of each example, ``(B,)``.

    - ``"cross_entropy"``: ``-log softmax(z_i)[y_i]``; ``y`` holds integer class labels.
    - ``"half_sse"``: ``1/2 ||z_i - y_i||^2`` (the paper's SIN loss, summed over the batch).
    - ``"mse"``: ``mean_k (z_ik - y_ik)^2``.
    - a callable ``(logits, y) -> (B,)``.
    """
    if callable(loss):
        out = loss(logits, y)
        if not isinstance(out, Tensor) or out.shape != logits.shape[:1]:
            raise ValueError(f"a loss callable must return per-example losses of shape ({logits.shape[0]},)")
        return out
    if loss == "cross_entropy":
        return F.cross_entropy(logits, y, reduction="none")
    diff = logits - y.reshape(logits.shape).to(logits.dtype)
    if loss == "half_sse":
        return 0.5 * diff.pow(2).sum(1)
    if loss == "mse":
        return diff.pow(2).mean(1)
    raise ValueError(f"unknown loss {loss!r}; valid losses: {', '.join(LOSSES)} or a callable")


def batch_data_loss(per_example: Tensor, loss: Union[str, LossFn]) -> Tensor:
    """The data term of the training loss: the batch mean, except ``"half_sse"``, which is
    the batch sum ``1/2 sum_i ||z_i - y_i||^2`` as in the paper's SIN experiment."""
    return per_example.sum() if loss == "half_sse" else per_example.mean()


# --------------------------------------------------------------------------- validation


def _check_input(x) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"x has dtype {x.dtype}; input gradients need a floating-point input (convert with x.float())"
        )
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty leading batch dimension, got shape {tuple(x.shape)}")


def _check_regularizers(regularizers) -> list[Regularizer]:
    if isinstance(regularizers, Regularizer):
        return [regularizers]
    if not isinstance(regularizers, Iterable):
        raise TypeError(f"regularizers must be a list of gradreg regularizers, got {type(regularizers).__name__}")
    regs = list(regularizers)
    for i, r in enumerate(regs):
        if not isinstance(r, Regularizer):
            raise TypeError(
                f"regularizers[{i}] is a {type(r).__name__}, not a gradreg regularizer "
                "(DataGrad, SpectReg, FrobReg, JacReg, OneHot, RandomOneHot, ConfidencePenalty)"
            )
    return regs


def _check_loss(loss) -> None:
    if not callable(loss) and loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid losses: {', '.join(LOSSES)} or a callable")


def _check_logits_and_targets(logits, x: Tensor, y, loss) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"the model must return a tensor of logits, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"the model's logits must be 2-D (batch, classes), got shape {tuple(logits.shape)}")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    b, m = logits.shape
    if b != x.shape[0] or y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"batch-size mismatch: x has {x.shape[0]} examples, logits {b}, y {tuple(y.shape)[:1] or 'a scalar'}"
        )
    if loss == "cross_entropy":
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
            raise TypeError(f"cross_entropy needs integer class labels, got y of dtype {y.dtype}")
        if y.dim() != 1:
            raise ValueError(f"class labels must be 1-D (batch,), got shape {tuple(y.shape)}")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= m:
            raise ValueError(f"labels out of range: the model has {m} classes (0..{m - 1}), y spans {lo}..{hi}")
    elif isinstance(loss, str) and y.numel() != logits.numel():
        raise ValueError(f"loss {loss!r} needs targets of shape {tuple(logits.shape)}, got {tuple(y.shape)}")


def forward(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, loss: Union[str, LossFn] = "cross_entropy") -> Forward:
    """Run ``model`` once on a detached copy of ``x`` that requires grad, validate
    everything, and return the shared :class:`Forward` record."""
    _check_input(x)
    _check_loss(loss)
    xg = x.detach().requires_grad_(True)
    logits = model(xg)
    _check_logits_and_targets(logits, x, y, loss)
    return Forward(xg, logits, y, per_example_loss(logits, y, loss))


def _check_labels_needed(regs: list[Regularizer], loss) -> None:
    for r in regs:
        if r.needs_labels and loss != "cross_entropy":
            raise ValueError(f"{r.name} projects on the one-hot class label, so it needs loss='cross_entropy'")


# --------------------------------------------------------------------------- public API


def penalty(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    reg: Regularizer,
    *,
    loss: Union[str, LossFn] = "cross_entropy",
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """One regularizer's *unweighted* penalty, as the mean over the batch's examples.

    The result carries a graph (it can be backpropagated to the parameters). ``generator``
    supplies the random projections of SpectReg and RandomOneHot.
    """
    (reg,) = _check_regularizers([reg])
    fwd = forward(model, x, y, loss)
    _check_labels_needed([reg], loss)
    return reg.per_example(fwd, generator).mean()


def regularized_loss(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    regularizers: Iterable[Regularizer],
    *,
    loss: Union[str, LossFn] = "cross_entropy",
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``data_loss + sum_j weight_j * penalty_j`` from one forward pass.

    Returns ``(loss, terms)``: the scalar total, and a dict of detached scalars -- the data
    loss under ``"loss"`` and each regularizer's unweighted penalty under its class name
    (a second regularizer of the same class gets ``"Name#2"``, and so on).

    - The data loss is the batch mean (``"half_sse"``: the batch sum). Every penalty is the
      batch mean of a per-example value (see each regularizer's docstring).
    - All penalties are vector-Jacobian products of the same graph.
    - A regularizer with weight 0 is evaluated for ``terms`` but not added to the loss, so it
      costs no second-order backward pass.
    - BatchNorm in training mode couples the examples; the penalties then use gradients of
      batch sums, as the paper's published numbers did.
    - Random projections are drawn, in list order, from ``generator`` (else the global RNG)
      on the input's device and dtype.
    """
    regs = _check_regularizers(regularizers)
    fwd = forward(model, x, y, loss)
    _check_labels_needed(regs, loss)
    data = batch_data_loss(fwd.per_example_loss, loss)
    terms: dict[str, Tensor] = {"loss": data.detach()}
    total = data
    for reg in regs:
        value = reg.per_example(fwd, generator).mean()
        key, n = reg.name, 2
        while key in terms:
            key, n = f"{reg.name}#{n}", n + 1
        terms[key] = value.detach()
        if reg.weight != 0:
            total = total + reg.weight * value
    return total, terms

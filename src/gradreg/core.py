"""The drop-in entry points: `regularize`, `regularized_loss` and `penalty`.

- [`regularize`][gradreg.regularize] takes a forward pass the caller already ran: the logits,
  the targets and `wrt`, the tensor(s) the penalties differentiate by (the input, several
  inputs, an embedding output or a hidden activation). It fits any model signature, autocast,
  DDP and `torch.compile`.
- [`regularized_loss`][gradreg.regularized_loss] runs the forward pass itself on a copy of `x`
  that requires grad, so the caller never sets `requires_grad` (and can never forget to). It
  is a thin layer on `regularize`; when no active regularizer needs an input gradient it does
  not ask for one, and costs what a plain training step costs.

All regularizers share the one forward pass and its graph.
"""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from types import FrameType

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import finite_difference as FD
from . import penalties as P
from .penalties import graph_nodes
from .regularizers import Forward, Regularizer

LossFn = Callable[[Tensor, Tensor], Tensor]
LOSSES = ("cross_entropy", "half_sse", "mse")
VALIDATE = ("auto", True, False)


# --------------------------------------------------------------------------- data losses


def per_example_loss(logits: Tensor, y: Tensor, loss: str | LossFn) -> Tensor:
    """The data loss of each example, of shape `logits.shape[:-1]`.

    The losses (`z_i` are example i's logits):

    - `"cross_entropy"`: `-log softmax(z_i)[y_i]`; `y` holds integer class labels.
    - `"half_sse"`: `1/2 ||z_i - y_i||^2` (the paper's SIN loss, summed over the batch).
    - `"mse"`: `mean_k (z_ik - y_ik)^2`.
    - a callable `(logits, y) -> (B,)`.

    Args:
        logits: The model's output, `(*batch, m)`.
        y: The targets: integer class labels `(*batch,)` for `"cross_entropy"`; for
            `"half_sse"` and `"mse"`, values that reshape to `logits.shape` (cast to the
            logits' dtype).
        loss: The name of a loss above, or a callable.

    Returns:
        The unreduced per-example losses, `logits.shape[:-1]`.

    Raises:
        ValueError: `loss` is an unknown name, or a callable that does not return a tensor of
            shape `logits.shape[:-1]`.
    """
    if callable(loss):
        out = loss(logits, y)
        if not isinstance(out, Tensor) or out.shape != logits.shape[:-1]:
            raise ValueError(f"a loss callable must return per-example losses of shape {tuple(logits.shape[:-1])}")
        return out
    m = logits.shape[-1]
    if loss == "cross_entropy":
        return F.cross_entropy(logits.reshape(-1, m), y.reshape(-1), reduction="none").view(logits.shape[:-1])
    diff = logits - y.reshape(logits.shape).to(logits.dtype)
    if loss == "half_sse":
        return 0.5 * diff.pow(2).sum(-1)
    if loss == "mse":
        return diff.pow(2).mean(-1)
    raise ValueError(f"unknown loss {loss!r}; valid losses: {', '.join(LOSSES)} or a callable")


def batch_data_loss(per_example: Tensor, loss: str | LossFn) -> Tensor:
    """The data term of the training loss: the mean over the last (batch) axis.

    The exception is `"half_sse"`: the batch sum `1/2 sum_i ||z_i - y_i||^2`, as in the paper's
    SIN experiment.

    Args:
        per_example: The per-example losses, `(*batch,)` (see `per_example_loss`).
        loss: The loss they were computed with, a name or a callable.

    Returns:
        `per_example` reduced over its last axis: `(*batch[:-1],)`, a scalar for one run.
    """
    return per_example.sum(-1) if loss == "half_sse" else per_example.mean(-1)


# --------------------------------------------------------------------------- validation


def check_grad_mode(where: str) -> None:
    """Refuse to run where autograd is off.

    Args:
        where: The name of the caller, for the message (e.g. `"gradreg.regularize"`).

    Raises:
        RuntimeError: Under `torch.inference_mode()` or `torch.no_grad()`.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{where} needs autograd, but it runs under torch.inference_mode()")
    if not torch.is_grad_enabled():
        raise RuntimeError(f"{where} needs autograd, but it runs under torch.no_grad()")


def _check_input(x) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x has dtype {x.dtype}; input gradients need a floating-point input (convert with x.float())")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty leading batch dimension, got shape {tuple(x.shape)}")


def check_regularizers(regularizers) -> list[Regularizer]:
    """The regularizers as a list, each checked to be one.

    Args:
        regularizers: One `Regularizer`, or an iterable of them.

    Returns:
        A new list of the regularizers (a single one becomes a list of one).

    Raises:
        TypeError: `regularizers` is not iterable (or is a string), or an element is not a
            `Regularizer`.
    """
    if isinstance(regularizers, Regularizer):
        return [regularizers]
    if not isinstance(regularizers, Iterable) or isinstance(regularizers, (str, bytes)):
        raise TypeError(f"regularizers must be a list of gradreg regularizers, got {type(regularizers).__name__}")
    regs = list(regularizers)
    for i, r in enumerate(regs):
        if not isinstance(r, Regularizer):
            raise TypeError(
                f"regularizers[{i}] is a {type(r).__name__}, not a gradreg regularizer "
                "(DataGrad, SpectReg, FrobReg, JacReg, OneHot, RandomOneHot, ConfidencePenalty or a subclass)"
            )
    return regs


def _check_loss(loss) -> None:
    if not callable(loss) and loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid losses: {', '.join(LOSSES)} or a callable")


def _labels(y: Tensor, loss) -> Tensor:
    """Integer labels of any integer dtype become int64 (what cross_entropy indexes with)."""
    if (
        loss == "cross_entropy"
        and isinstance(y, Tensor)
        and not y.dtype.is_floating_point
        and not y.is_complex()
        and y.dtype != torch.bool
        and y.dtype != torch.int64
    ):
        return y.long()
    return y


def check_logits_and_targets(logits, y, loss, *, batch: int | None = None, validate="auto") -> None:
    """Check the shapes and dtypes of logits `(*batch, m)` and targets, and the label range.

    Args:
        logits: The model's output, `(*batch, m)`.
        y: The targets; for `"cross_entropy"`, integer labels of shape `batch`.
        loss: The data loss, a name or a callable.
        batch: The number of examples in the input, checked against the logits' last batch
            axis; None: not checked.
        validate: Whether to check the label range, which reads the labels' min and max:
            `"auto"` on CPU only, where it needs no device synchronization; `True` always;
            `False` never.

    Raises:
        TypeError: `logits` or `y` is not a tensor, or `loss` is `"cross_entropy"` and `y` is
            not of an integer dtype.
        ValueError: `logits` has fewer than 2 axes; the batch sizes or shapes of `x`, the
            logits and `y` do not match; labels lie outside `0..m-1` (where checked).
    """
    if not isinstance(logits, Tensor):
        raise TypeError(f"the model must return a tensor of logits, got {type(logits).__name__}")
    if logits.dim() < 2:
        raise ValueError(f"the logits must be 2-D (batch, classes), got shape {tuple(logits.shape)}")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    lead, m = logits.shape[:-1], logits.shape[-1]
    b = lead[-1]
    if (batch is not None and batch != b) or y.dim() < len(lead) or y.shape[: len(lead)] != lead:
        raise ValueError(
            f"batch-size mismatch: x has {batch if batch is not None else '?'} examples, logits {tuple(lead)}, "
            f"y {tuple(y.shape)[: len(lead)] or 'a scalar'}"
        )
    if loss == "cross_entropy":
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
            raise TypeError(f"cross_entropy needs integer class labels, got y of dtype {y.dtype}")
        if y.dim() != len(lead):
            raise ValueError(f"class labels must have shape {tuple(lead)}, got {tuple(y.shape)}")
        if validate is True or (validate == "auto" and y.device.type == "cpu"):
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= m:
                raise ValueError(f"labels out of range: the model has {m} classes (0..{m - 1}), y spans {lo}..{hi}")
    elif isinstance(loss, str) and y.numel() != logits.numel():
        raise ValueError(f"loss {loss!r} needs targets of shape {tuple(logits.shape)}, got {tuple(y.shape)}")


def _check_labels_needed(regs: list[Regularizer], loss, logits: Tensor | None = None) -> None:
    for r in regs:
        if r.needs_labels and loss != "cross_entropy":
            raise ValueError(f"{r.name} projects on the one-hot class label, so it needs loss='cross_entropy'")
        if r.on_softmax and isinstance(logits, Tensor) and logits.shape[-1] == 1:
            raise ValueError(
                f"{r.name} is a function of the softmax, which is constant with one output, so it would be 0 "
                "here; it needs a classifier's logits (two or more classes)"
            )


def _check_wrt(wrt, lead: torch.Size) -> tuple[Tensor, ...]:
    xs = P.as_inputs(wrt)
    if not xs:
        raise ValueError("wrt is empty: pass the tensor(s) the logits depend on")
    for j, t in enumerate(xs):
        if not isinstance(t, Tensor):
            raise TypeError(f"wrt[{j}] is a {type(t).__name__}, not a tensor")
        if not t.is_floating_point():
            raise TypeError(
                f"wrt[{j}] has dtype {t.dtype}; input gradients need floating point "
                "(for token ids, regularize w.r.t. the embedding output)"
            )
        if t.shape[: len(lead)] != lead:
            raise ValueError(
                f"shape mismatch: wrt[{j}] has shape {tuple(t.shape)}, but its leading axes must be the logits' "
                f"batch axes {tuple(lead)}"
            )
    return xs


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _term_names(regs: list[Regularizer]) -> list[str]:
    names: list[str] = []
    for reg in regs:
        key, n = reg.name, 2
        while key in names or key == "loss":
            key, n = f"{reg.name}#{n}", n + 1
        names.append(key)
    return names


# --------------------------------------------------------------------------- public API


def regularize(
    logits: Tensor,
    y: Tensor,
    wrt,
    regularizers: Iterable[Regularizer],
    *,
    loss: str | LossFn = "cross_entropy",
    generator: torch.Generator | None = None,
    step: int | None = None,
    validate="auto",
) -> tuple[Tensor, dict[str, Tensor]]:
    """`data_loss + sum_j weight_j * penalty_j` for a forward pass the caller already ran.

    Each input in `wrt` must have the batch as its leading axis. With several, a penalty's
    per-example value is the **sum** over them of the per-example squared norms
    (`norm="l1"`: of the L1 norms), i.e. the norm of the concatenated gradient.

    - The data loss is the batch mean (`"half_sse"`: the batch sum). Every penalty is the batch
      mean of a per-example value (see each regularizer's docstring).
    - A regularizer with weight 0 is evaluated for `terms` but not added to the loss.
    - BatchNorm in training mode couples the examples; the penalties then use gradients of batch
      sums, as the paper's published numbers did.
    - `method="auto"` is the exact penalty here: falling back to finite differences needs
      [`regularized_loss`][gradreg.regularized_loss], which runs the model itself.
    - A penalty whose projection the batch shares (SpectReg's `projection="batch"`, FrobReg),
      found 0 because BatchNorm in training mode makes the logits' batch sum constant, warns
      once per regularizer (`gradreg.core.warn_if_projection_vanishes`).

    Every failure is a one-line error -- `wrt` does not require grad, the logits do not depend
    on it, it runs under `no_grad`/`inference_mode`, or shapes do not match: never a silent 0.

    Args:
        logits: The model's output, `(B, m)`.
        y: The targets: integer class labels `(B,)` for `"cross_entropy"` (any integer dtype;
            converted to int64), else values of the logits' shape.
        wrt (Tensor | tuple[Tensor, ...] | None): The tensor, or a tuple of tensors, that the
            penalties differentiate by: the input (made to require grad *before* the forward
            pass), several inputs, an embedding output, or a hidden activation (see
            [`capture`][gradreg.capture]). May be `None` only when no active regularizer needs
            an input gradient.
        regularizers: The regularizers, a list (or a single one).
        loss: The data loss: `"cross_entropy"` (default), `"half_sse"`, `"mse"` or a callable
            `(logits, y) -> (B,)` (see [`per_example_loss`][gradreg.per_example_loss]).
        generator: The source of the random projections, drawn in list order on the logits'
            device and dtype; None: the global RNG.
        step: The training step, needed by lazy regularizers (`every > 1`); on steps they skip
            they cost nothing and are absent from `terms`. None: no step (every regularizer must
            have `every=1`).
        validate (str | bool): The label-range check reads the labels' min and max, a host synchronization
            on an accelerator: `"auto"` runs it on CPU only, `True` always, `False` never.

    Returns:
        `(loss, terms)`: the scalar total, and a dict of detached scalars -- the data loss under
        `"loss"` and each *applied* regularizer's unweighted penalty under its class name (a
        second regularizer of the same class gets `"Name#2"`, and so on).

    Raises:
        RuntimeError: It runs under `torch.no_grad()` or `torch.inference_mode()`; or an
            operation of the model has no double backward (a `once_differentiable` custom
            Function, a fused kernel, a `torch.compile`'d graph): the message names the fix.
        NoInputGradient: An input in `wrt` does not require grad, or the logits do not depend
            on it (a `ValueError`).
        TypeError: `regularizers` holds something that is not a regularizer; `generator` is not
            a `torch.Generator`; `logits` or `y` is not a tensor; cross-entropy labels are not
            integers; an element of `wrt` is not a floating-point tensor.
        ValueError: `loss` or `validate` is not valid; the logits are not 2-D; the shapes of the
            logits, `y` and `wrt` do not match; labels are out of range (where checked); a
            regularizer needs class labels (OneHot) but `loss` is not `"cross_entropy"`; a
            function of the softmax (JacReg, ConfidencePenalty) meets a model with one output;
            an active regularizer has `method="finite_difference"`; `wrt` is None or empty
            where an active regularizer needs an input gradient; a lazy regularizer gets no
            `step`.
    """
    check_grad_mode("gradreg.regularize")
    regs = check_regularizers(regularizers)
    y = _check_forward_pass(logits, y, regs, loss, generator, validate)
    active = _exact_terms(regs, step)
    xs = _inputs_to_differentiate(wrt, logits, active)
    pel = per_example_loss(logits, y, loss)
    x_arg = None if xs is None else (xs if isinstance(wrt, (tuple, list)) else xs[0])
    fwd = Forward(x_arg, logits, y, pel)  # type: ignore[arg-type]
    return _add_exact_penalties(batch_data_loss(pel, loss), fwd, active, generator)


def _check_forward_pass(logits, y, regs: list[Regularizer], loss, generator, validate) -> Tensor:
    """`regularize`'s checks of its options and of the forward pass it is handed, in the order it runs them.

    Args:
        logits: The model's output; it must be 2-D `(B, m)`.
        y: The targets.
        regs: The regularizers, as `check_regularizers` returns them.
        loss: The data loss, a name or a callable.
        generator: The projections' generator, or None.
        validate: The label-range check option: `"auto"`, `True` or `False`.

    Returns:
        `y`, with integer class labels converted to int64 for `"cross_entropy"`.

    Raises:
        TypeError: As `regularize` raises for `loss`, `generator`, `logits` and `y`.
        ValueError: `loss` or `validate` is not valid; the logits are not 2-D; as
            `check_logits_and_targets` raises; a regularizer needs class labels or more than
            one output and does not get them.
    """
    _check_loss(loss)
    _check_generator(generator)
    if validate not in VALIDATE:
        raise ValueError(f"validate={validate!r} is not valid; valid choices: 'auto', True, False")
    y = _labels(y, loss)
    if isinstance(logits, Tensor) and logits.dim() != 2:
        raise ValueError(
            f"the logits must be 2-D (batch, classes), got shape {tuple(logits.shape)}; the penalties are per "
            "example, so a sequence model needs one prediction per example (a pooled or last-position output)"
        )
    check_logits_and_targets(logits, y, loss, validate=validate)
    _check_labels_needed(regs, loss, logits)
    return y


def _exact_terms(regs: list[Regularizer], step: int | None) -> list[tuple[str, Regularizer]]:
    """The regularizers that apply at `step`, under their term names; none may use finite differences.

    Args:
        regs: The regularizers, in list order.
        step: The training step, or None (see `Regularizer.active`).

    Returns:
        `(term name, regularizer)` of each active regularizer, in list order.

    Raises:
        ValueError: An active regularizer has `method="finite_difference"`, which `regularize`
            cannot run; or as `Regularizer.active` raises for a lazy one without `step`.
    """
    active = [(n, r) for n, r in zip(_term_names(regs), regs) if r.active(step)]
    fd = [r.name for _, r in active if getattr(r, "finite_difference", False)]
    if fd:
        raise ValueError(
            f"{', '.join(fd)}: method='finite_difference' re-runs the model on a shifted input, which regularize() "
            "cannot do on a forward pass it did not run; use gr.regularized_loss(model, x, y, ...)"
        )
    return active


def _inputs_to_differentiate(wrt, logits: Tensor, active: list[tuple[str, Regularizer]]) -> tuple[Tensor, ...] | None:
    """The checked tensors of `wrt`, where an active regularizer differentiates by them.

    Args:
        wrt: `regularize`'s `wrt`: a tensor, a tuple or list of them, or None.
        logits: The model's output `(B, m)`, which must depend on every tensor of `wrt`.
        active: The active regularizers, as `_exact_terms` returns them.

    Returns:
        The tensors of `wrt` as a tuple, or None where no active regularizer needs an input
        gradient (`wrt` is then not looked at).

    Raises:
        ValueError: `wrt` is None or empty, or its shapes do not match the logits'.
        TypeError: An element of `wrt` is not a floating-point tensor.
        NoInputGradient: A tensor of `wrt` does not require grad, or the logits do not depend
            on it.
    """
    if not any(r.needs_input_grad for _, r in active):
        return None
    if wrt is None:
        raise ValueError(
            "wrt is None, but "
            + ", ".join(r.name for _, r in active if r.needs_input_grad)
            + " differentiate(s) by the input: pass wrt"
        )
    xs = _check_wrt(wrt, logits.shape[:-1])
    P.check_differentiable(logits, xs)
    return xs


def _add_exact_penalties(
    data: Tensor, fwd: Forward, active: list[tuple[str, Regularizer]], generator: torch.Generator | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """`data + sum_j weight_j * penalty_j` with every penalty exact, and the detached terms.

    Args:
        data: The batch data loss.
        fwd: The shared forward pass.
        active: The active regularizers, as `_exact_terms` returns them; each penalty is drawn
            in this order.
        generator: The source of the random projections, or None (the global RNG).

    Returns:
        `(loss, terms)`, as `regularize` returns them.

    Raises:
        RuntimeError: An operation of the model has no double backward (the message names the
            fix; for `method="auto"` it adds that only `regularized_loss` falls back).
    """
    terms: dict[str, Tensor] = {"loss": data.detach()}
    total = data
    for name, reg in active:
        value = _exact_penalty(reg, fwd, generator)
        warn_if_projection_vanishes(reg, fwd, value)
        terms[name] = value.detach()
        if reg.weight != 0:
            total = total + reg.effective_weight * value
    return total, terms


def _exact_penalty(reg: Regularizer, fwd: Forward, generator: torch.Generator | None) -> Tensor:
    """The batch mean of `reg`'s exact penalty, refused now where it could not be trained.

    Args:
        reg: An active regularizer, not by finite differences.
        fwd: The shared forward pass.
        generator: The source of its random projection, or None.

    Returns:
        The scalar penalty, with its graph.

    Raises:
        RuntimeError: An operation of the model has no double backward (see
            `check_double_differentiable`); for `method="auto"` the message adds that only
            `regularized_loss`, which runs the model itself, falls back to finite differences.
    """
    try:
        try:
            value = reg.value(fwd, generator).mean()
        except RuntimeError as e:
            raise _explain_double_backward(e, reg.name) from e
        if reg.needs_input_grad:
            check_double_differentiable(value, reg.name)
    except RuntimeError as e:
        if not reg.auto_method:
            raise
        raise RuntimeError(
            f"{e} (method='auto' falls back to finite differences in gr.regularized_loss only, which runs the "
            "model itself)"
        ) from e
    return value


def check_double_differentiable(value: Tensor, name: str) -> None:
    """Raise now, with advice, where a penalty's graph holds an operation without a double backward.

    Such an operation is a custom `autograd.Function` marked `once_differentiable`, a fused
    kernel, or a `torch.compile`'d graph: autograd would only fail later, inside the caller's
    `loss.backward()`. The check is a walk over the penalty's autograd graph (tens of
    microseconds for LeNet).

    Args:
        value: The penalty, built with `create_graph=True`.
        name: The regularizer's name, for the message.

    Raises:
        RuntimeError: The graph holds such an operation; the message names the fix
            (`method='finite_difference'`, the math attention kernel, or the eager model).
    """
    gap = _double_backward_gap(value)
    if gap is None:
        return
    if gap[0] == "once":
        raise RuntimeError(
            f"{name}: the model contains an operation without a double backward (a custom autograd.Function "
            "marked once_differentiable, or a fused kernel), so the exact penalty cannot be trained; use "
            f"{name}(..., method='finite_difference')"
        )
    if gap[0] == "missing":
        raise RuntimeError(
            f"{name}: an operation in the model has no double backward (for attention, PyTorch's fused "
            "kernels: run the forward pass under torch.nn.attention.sdpa_kernel(SDPBackend.MATH)); or use "
            f"{name}(..., method='finite_difference')"
        )
    raise RuntimeError(
        f"{name}: the model is torch.compile'd, and compiled graphs have no double backward, so the exact "
        f"penalty cannot be trained; use {name}(..., method='finite_difference'), or the eager model"
    )


def _double_backward_gap(value: Tensor) -> tuple[str, object] | None:
    """The first node of a penalty's graph that cannot be differentiated.

    Args:
        value: A penalty built with `create_graph=True`.

    Returns:
        `(kind, node)` -- `"once"` (an `Error` node: a backward marked
        `once_differentiable`), `"missing"` (`NotImplemented`: no derivative formula) or
        `"compiled"` (a `torch.compile`'d graph) -- or None when every node has a backward.
    """
    for fn in graph_nodes(value):
        kind = type(fn).__name__
        if kind in ("Error", "DelayedError"):
            return "once", fn
        if kind == "NotImplemented":
            return "missing", fn
        if kind == "CompiledFunctionBackwardBackward":
            return "compiled", fn
    return None


def check_no_reentrant_checkpoint(t: Tensor) -> None:
    """Refuse a finite-difference pass whose graph holds a reentrant `torch.utils.checkpoint` segment.

    Such a segment runs its forward under `no_grad` and again in `backward()`, past the frozen
    kinks; the non-reentrant form is caught inside the pass by the kink mode.

    Args:
        t: The output of the first pass (the logits), with its graph.

    Raises:
        RuntimeError: The graph holds a reentrant checkpoint segment.
    """
    if any(type(node).__name__ == "CheckpointFunctionBackward" for node in graph_nodes(t)):
        raise RuntimeError(FD.CHECKPOINT_ERROR)


def regularized_loss(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    regularizers: Iterable[Regularizer],
    *,
    loss: str | LossFn = "cross_entropy",
    generator: torch.Generator | None = None,
    step: int | None = None,
    validate="auto",
) -> tuple[Tensor, dict[str, Tensor]]:
    """`data_loss + sum_j weight_j * penalty_j` from one forward pass of `model` on `x`.

    Runs `model` on a detached copy of `x` that requires grad -- only when an active
    regularizer differentiates by the input, so a step with none (or only the confidence
    penalty, or lazy regularizers on a skipped step) costs a plain step -- and hands the logits
    to [`regularize`][gradreg.regularize]; see there for `terms`, `step`, `generator` and
    `validate`.

    Regularizers with `method="finite_difference"` re-run `model` on a shifted input
    (`gradreg.finite_difference`); the returned loss then has the true value and the
    surrogate's gradient. `method="auto"` is decided once per model and regularizer
    (`gradreg.core.resolve_method`).

    Args:
        model: The network, `x -> logits` of shape `(B, m)`.
        x: A batch of inputs, `(B, ...)`, of a floating-point dtype; it need not require grad.
        y: The targets, as in `regularize`.
        regularizers: The regularizers, a list (or a single one).
        loss: The data loss: `"cross_entropy"` (default), `"half_sse"`, `"mse"` or a callable
            `(logits, y) -> (B,)` (see [`per_example_loss`][gradreg.per_example_loss]).
        generator: The source of the random projections; None: the global RNG.
        step: The training step, needed by lazy regularizers (`every > 1`).
        validate (str | bool): The label-range check: `"auto"` (CPU only), `True` or `False`.

    Returns:
        `(loss, terms)`: the scalar total and a dict of detached scalars, as `regularize`
        returns them.

    Raises:
        RuntimeError: It runs under `torch.no_grad()` or `torch.inference_mode()`; an operation
            of the model has no double backward (for an exact penalty); a finite-difference
            pass meets a reentrant `torch.utils.checkpoint` segment.
        NoInputGradient: The logits do not depend on `x` (a `ValueError`).
        TypeError: `x` is not a floating-point tensor; `regularizers` holds something that is
            not a regularizer; `generator` is not a `torch.Generator`; the logits or `y` are
            not tensors, or cross-entropy labels are not integers.
        ValueError: `x` has no non-empty leading batch axis; `loss` or `validate` is not valid;
            the model's logits are not 2-D or their batch size is not `x`'s; any other check of
            `regularize` fails.
    """
    check_grad_mode("gradreg.regularized_loss")
    regs = check_regularizers(regularizers)
    _check_input(x)
    _check_loss(loss)
    _check_generator(generator)
    active = [r for r in regs if r.active(step)]
    if any(r.auto_method for r in active):
        labels = _labels(y, loss)
        regs = [resolve_method(r, model, x, labels, loss, validate=validate) if r.active(step) else r for r in regs]
        active = [r for r in regs if r.active(step)]
    if any(getattr(r, "finite_difference", False) for r in active):
        return _fd_regularized_loss(model, x, y, regs, loss, generator, step, validate)
    needs_grad = any(r.needs_input_grad for r in active)
    xg = x.detach().requires_grad_(True) if needs_grad else x
    logits = _model_logits(model, xg, x)
    return regularize(
        logits, y, xg if needs_grad else None, regs, loss=loss, generator=generator, step=step, validate=validate
    )


def _model_logits(model, xg: Tensor, x: Tensor) -> Tensor:
    logits = model(xg)
    if isinstance(logits, Tensor) and (logits.dim() != 2 or logits.shape[0] != x.shape[0]):
        if logits.dim() != 2:
            raise ValueError(f"the model's logits must be 2-D (batch, classes), got shape {tuple(logits.shape)}")
        raise ValueError(f"batch-size mismatch: x has {x.shape[0]} examples, logits {logits.shape[0]}")
    return logits


def _explain_double_backward(e: RuntimeError, name: str) -> Exception:
    """A model op without a double backward fails deep in autograd; say what to do."""
    text = str(e)
    first = text.splitlines()[0] if text else type(e).__name__
    kind = _double_backward_error(text)
    if kind == "compiled":
        return RuntimeError(
            f"{name}: the model is torch.compile'd, and compiled graphs have no double backward, so the exact "
            f"penalty cannot be trained ({first}); use {name}(..., method='finite_difference'), or the eager model"
        )
    if kind == "missing":
        return RuntimeError(
            f"{name}: the exact penalty needs a double backward through the model, which an operation in it does "
            f"not support ({first}); use {name}(..., method='finite_difference')"
        )
    return e


def _double_backward_error(text: str) -> str | None:
    """What an autograd error says about a double backward.

    Args:
        text: The error's message.

    Returns:
        `"compiled"` (a `torch.compile`'d graph) or `"missing"` where it says a double
        backward is not available, else None (another error).
    """
    if any(m in text for m in ("aot_autograd", "was compiled", "donated buffer", "CompiledFunction")):
        return "compiled"
    if any(m in text for m in ("once_differentiable", "double backward", "differentiate twice", "not implemented")):
        return "missing"
    return None


def _fd_regularized_loss(model, x, y, regs, loss, generator, step, validate):
    """regularized_loss with finite-difference regularizers (see `gradreg.finite_difference`)."""
    y = _labels(y, loss)
    rerun = FD.Rerun(model, lambda z, t: per_example_loss(z, t, loss), x.device)
    xg = x.detach().requires_grad_(True)
    with rerun.first_pass():
        logits = _model_logits(model, xg, x)
    if isinstance(logits, Tensor):
        check_no_reentrant_checkpoint(logits)
    check_logits_and_targets(logits, y, loss, validate=validate)
    _check_labels_needed(regs, loss, logits)
    names = _term_names(regs)
    active = [(n, r) for n, r in zip(names, regs) if r.active(step)]
    pel = per_example_loss(logits, y, loss)
    data = batch_data_loss(pel, loss)
    fwd = Forward(xg, logits, y, pel)
    b, m = logits.shape
    draws = {n: r.draw(b, m, generator, logits.device, logits.dtype) for n, r in active}  # in list order
    terms: dict[str, Tensor] = {"loss": data.detach()}
    fd = [(n, r) for n, r in active if getattr(r, "finite_difference", False)]
    exact = [(n, r) for n, r in active if not getattr(r, "finite_difference", False)]
    dtype = rerun.compute_dtype(logits)
    if FD.fuses([r for _, r in active], [r.effective_weight for _, r in active]):
        (name, reg), w = fd[0], fd[0][1].effective_weight
        fused = FD.fused_step(reg, fwd, rerun, w, dtype, b if loss != "half_sse" else 1)  # data = F / scale
        if fused is not None:
            objective, terms[name] = fused
            return objective - objective.detach() + (data.detach() + w * terms[name]), terms
    total = data
    for name, reg in exact:
        pen = reg.checked(fwd, draws[name]).mean()
        warn_if_projection_vanishes(reg, fwd, pen)
        terms[name] = pen.detach()
        if reg.weight != 0:
            total = total + reg.effective_weight * pen
    for name, reg in fd:
        w = reg.effective_weight
        terms[name], term = FD.penalty_term(reg, fwd, draws[name], rerun, w, dtype, shift=FD.trains([w]))
        warn_if_projection_vanishes(reg, fwd, terms[name])
        if term is not None:
            total = total + term
    return total, terms


# --------------------------------------------------------------------------- method="auto"

# model -> {regularizer: what its "auto" resolved to}, held weakly; a model that cannot be
# weakly referenced is tried again at every call
_RESOLVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# the code object every once_differentiable wrapper shares: how a custom Function with one is named
_ONCE_CODE = once_differentiable(lambda ctx: None).__code__


def resolve_method(
    reg: Regularizer,
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    loss: str | LossFn = "cross_entropy",
    *,
    generators: Sequence[torch.Generator] = (),
    validate="auto",
    ensemble: bool = False,
) -> Regularizer:
    """What `method="auto"` means for `reg` on `model`: exact where it can be, else finite differences.

    The first call for a model and a regularizer runs the model once on `x` and builds the
    exact penalty (its double-backward graph) inside `gradreg.finite_difference.Replay`,
    with a throwaway projection generator: the random state (the global one and
    `generators`) and the buffers (BatchNorm's running statistics) are left as they were, so
    the step that follows trains exactly as it would with the method resolved to. Where an
    operation has no double backward (a `once_differentiable` custom Function, a fused
    kernel such as CPU attention, a `torch.compile`'d graph) it warns once, naming it, and
    resolves to finite differences. The decision is cached per model (held weakly) and
    regularizer.

    Args:
        reg: A regularizer; one whose `method` is not `"auto"` is returned as it is.
        model: The network, `x -> logits`.
        x: A batch of inputs: `(B, ...)`, or `(K, B, ...)` for an ensemble model.
        y: Its targets (integer labels already int64 for cross-entropy).
        loss: The data loss, as in [`regularized_loss`][gradreg.regularized_loss].
        generators: Further generators the model draws from (the engine's dropout streams).
        validate (str | bool): The label-range check, as in [`regularize`][gradreg.regularize].
        ensemble: Whether `model` is an ensemble (logits `(K, B, m)`); else its logits
            must be `(B, m)`, as `regularized_loss` requires.

    Returns:
        `reg` with `method="double_backprop"` or `"finite_difference"`: the same object
        for the same model and regularizer every time.

    Raises:
        RuntimeError: An error of the trial pass that is not a missing double backward.
        ValueError: Invalid logits or targets, as the training step would raise.
    """
    if not reg.auto_method:
        return reg
    owner = getattr(model, "__self__", model)  # a bound method is made anew at each access; its object is not
    try:
        cache = _RESOLVED.setdefault(owner, {})
    except TypeError:
        cache = {}
    key = _cache_key(reg)
    if key not in cache:
        why = _exact_unavailable(reg, model, x, y, loss, generators, validate, ensemble)
        if why is None:
            cache[key] = reg.with_method("double_backprop")  # type: ignore[attr-defined]
        else:
            warnings.warn(
                f"{reg.name}: exact double backward is not available for {why}; using finite differences",
                UserWarning,
                stacklevel=_user_stacklevel(),
            )
            cache[key] = reg.with_method("finite_difference")  # type: ignore[attr-defined]
    return cache[key]


def _cache_key(reg: Regularizer) -> object:
    """The key of `reg` in `resolve_method`'s cache.

    Args:
        reg: A regularizer.

    Returns:
        `reg` itself (a frozen dataclass: equal options, one key), or its identity where a
        field is unhashable.
    """
    try:
        hash(reg)
    except TypeError:
        return id(reg)
    return reg


def _exact_unavailable(reg, model, x, y, loss, generators, validate, ensemble) -> str | None:
    """Why `reg`'s exact penalty cannot train `model`: one replayed forward pass on `x` and
    the exact penalty on it, of which nothing lasts (see `resolve_method`, whose
    arguments these are).

    Returns:
        The operation without a double backward and why (`"SquareOnce (its backward is
        marked once_differentiable)"`), or None where every operation has one.

    Raises:
        RuntimeError: A trial error that is not a missing double backward.
    """
    with FD.Replay(x.device, generators, model).capture()():
        xg = x.detach().requires_grad_(True)
        logits = model(xg) if ensemble else _model_logits(model, xg, x)
        check_logits_and_targets(logits, y, loss, validate=validate)
        fwd = Forward(xg, logits, y, per_example_loss(logits, y, loss))
        b, m = logits.shape[-2], logits.shape[-1]
        d = reg.draw(b, m, torch.Generator(device=logits.device), logits.device, logits.dtype)
        draw = None if d is None else d.expand(*fwd.batch_shape[:-1], *d.shape)  # one draw for every run
        try:
            value = reg.checked(fwd, draw).sum()
        except RuntimeError as e:
            if _double_backward_error(str(e)) is None:
                raise
            return f"{_model_kind(logits)} ({str(e).splitlines()[0]})"
        gap = _double_backward_gap(value)
        return None if gap is None else _describe_gap(gap[0], gap[1], logits)


def _model_kind(logits: Tensor) -> str:
    """What to call the model in a fallback warning.

    Args:
        logits: Its output, with the forward pass's graph.

    Returns:
        `"a torch.compile'd model"` where the graph holds a compiled function, else
        `"an operation of the model"`.
    """
    compiled = any(type(n).__name__ == "CompiledFunctionBackward" for n in graph_nodes(logits))
    return "a torch.compile'd model" if compiled else "an operation of the model"


def _describe_gap(kind: str, node, logits: Tensor) -> str:
    """The operation without a double backward, and why.

    Args:
        kind: What `_double_backward_gap` found.
        node: The node it found.
        logits: The forward pass's output (a `once_differentiable` Function is named from
            its graph).

    Returns:
        E.g. `"SquareOnce (its backward is marked once_differentiable)"` or
        `"aten::_scaled_dot_product_flash_attention_for_cpu_backward (its derivative is not
        implemented)"`.
    """
    if kind == "compiled":
        return "a torch.compile'd model (compiled graphs have no double backward)"
    if kind == "once":
        names = [
            fn._forward_cls.__name__
            for fn in graph_nodes(logits)
            if getattr(getattr(getattr(fn, "_forward_cls", None), "backward", None), "__code__", None) is _ONCE_CODE
        ]
        return f"{names[0] if names else 'a custom autograd.Function'} (its backward is marked once_differentiable)"
    found = re.search(r"derivative for (\S+) is not implemented", _node_error(node))
    op = found.group(1) if found else "an operation of the model"
    return f"{op} (its derivative is not implemented)"


def _node_error(node) -> str:
    """The message an `Error`/`NotImplemented` autograd node raises when run: it names the
    operation. Run on zeros, such a node only raises.

    Args:
        node: The autograd node.

    Returns:
        Its error message, or `""` where it raises none.
    """
    try:
        node(*[torch.zeros(())] * len(getattr(node, "_input_metadata", ())))
    except Exception as e:  # the message is what is wanted
        return str(e)
    return ""


# --------------------------------------------------------------------------- batch-shared zeros

_CHECKED_ZERO: dict[int, Callable[[], object]] = {}  # regularizer instances decided, by identity


def warn_if_projection_vanishes(reg: Regularizer, fwd: Forward, penalty: Tensor) -> None:
    """Warn once per regularizer instance where a batch-shared projection is 0 by construction.

    With BatchNorm in training mode feeding affine layers to the logits (the paper's
    LeNet-BN), the batch sum `sum_i z_i` does not depend on the input, so every projection
    shared by the batch -- SpectReg and RandomOneHot with `projection="batch"`, FrobReg's
    basis vectors -- has input gradient 0: the penalty is 0 up to rounding and regularizes
    nothing. The warning names the fix; no number changes.

    Cost: nothing for other regularizers or once decided; else a walk over the logits' graph
    for a BatchNorm node in training mode (no hooks), and where there is one, once, two
    vector-Jacobian products without `create_graph`: the batch sum projected on a fixed
    `u`, and the same with alternating signs per example (which BatchNorm does not cancel).
    It warns when the penalty and the first are both below `eps` (of the compute dtype;
    `sqrt(eps)` for `norm="l1"`) times the second -- measured, float32: 1e-13 (l1: 1e-6) on
    the LeNet-BN and an MLP ending BatchNorm -> Linear; 0.05 to 1.6 with the BatchNorm before a
    nonlinearity. A model in eval mode is decided at its first step in training mode.

    Args:
        reg: The regularizer (see
            [`Regularizer.batch_shared_projection`][gradreg.Regularizer.batch_shared_projection]).
        fwd: The forward pass it was evaluated on, its graph still there.
        penalty: Its penalty (the batch mean), per run.
    """
    if not reg.batch_shared_projection or _decided(reg):
        return
    modes = [
        bool(getattr(n, "_saved_training", "NoUpdate" not in type(n).__name__))
        for n in graph_nodes(fwd.logits)
        if "BatchNorm" in type(n).__name__
    ]
    if modes and not any(modes):
        return  # BatchNorm in eval mode only: decide in training mode
    _decide(reg)
    if modes and _batch_sum_is_constant(reg, fwd, penalty):
        fix = "projection='example'" if hasattr(reg, "projection") else "SpectReg(..., projection='example')"
        warnings.warn(
            f"{reg.name}: the penalty is 0 up to rounding on this model: its projection is shared by the batch, and "
            "with BatchNorm in training mode the batch sum of the logits does not depend on the input (see "
            f"SpectReg's docstring); use {fix} (one projection per example)",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )


def _batch_sum_is_constant(reg: Regularizer, fwd: Forward, penalty: Tensor) -> bool:
    """The test of `warn_if_projection_vanishes` (see there).

    Args:
        reg: The regularizer (its `norm`, if it has one, is used).
        fwd: The forward pass, its graph still there.
        penalty: Its penalty per run.

    Returns:
        Whether, for some run, the penalty and the batch-shared projection on `u` are
        rounding next to the sign-alternating one.
    """
    logits, bd = fwd.logits, fwd.batch_dims
    b, m = logits.shape[-2], logits.shape[-1]
    norm: P.Norm = getattr(reg, "norm", "l2")
    u = torch.arange(1, m + 1, device=logits.device, dtype=logits.dtype)
    u = u * (math.sqrt(m) / u.norm())  # ||u||^2 = m = E||r||^2
    signs = 1 - 2 * (torch.arange(b, device=logits.device) % 2).to(logits.dtype)

    def size(cotangent: Tensor) -> Tensor:
        v = P.input_vjp(logits, fwd.x, cotangent.expand_as(logits), create_graph=False)
        return P.per_example_norm(v, norm, bd).mean(-1)

    shared, signed = size(u), size(signs[:, None] * u)
    eps = torch.finfo(FD.compute_dtype(logits.dtype, logits.device.type)).eps
    tol = eps if norm == "l2" else math.sqrt(eps)  # a ratio of squared norms is the square of the norms' ratio
    small = (shared <= tol * signed) & (penalty.detach() <= tol * signed) & (signed > 0)
    return bool(small.any())


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_stacklevel() -> int:
    """The `stacklevel` that points a warning at the first caller outside gradreg.

    Returns:
        For a `warnings.warn` in the calling function: 2 is that function's caller, and so on.
    """
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _decided(reg: Regularizer) -> bool:
    """Whether `warn_if_projection_vanishes` has decided about this very instance.

    Args:
        reg: A regularizer.

    Returns:
        True once `_decide` was called on it (and it is still alive).
    """
    ref = _CHECKED_ZERO.get(id(reg))
    return ref is not None and ref() is reg


def _decide(reg: Regularizer) -> None:
    """Record that this instance is decided; the record goes when the instance does.

    Args:
        reg: A regularizer.
    """
    key = id(reg)
    try:
        _CHECKED_ZERO[key] = weakref.ref(reg, lambda _, k=key: _CHECKED_ZERO.pop(k, None))  # type: ignore[misc]
    except TypeError:  # not weakly referenceable (slots): held
        _CHECKED_ZERO[key] = lambda: reg


def forward(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, loss: str | LossFn = "cross_entropy") -> Forward:
    """Run `model` once on a detached copy of `x` that requires grad, validate everything, and return the record.

    Args:
        model: The network, `x -> logits` of shape `(B, m)`.
        x: A batch of inputs, `(B, ...)`, of a floating-point dtype.
        y: The targets (integer labels of any integer dtype become int64 for cross-entropy).
        loss: The data loss, as in [`per_example_loss`][gradreg.per_example_loss].

    Returns:
        The shared [`Forward`][gradreg.Forward] record: the input copy, the logits, the targets
        and the per-example data loss.

    Raises:
        RuntimeError: Under `torch.no_grad()` or `torch.inference_mode()`.
        TypeError: `x`, the logits or `y` is not a tensor of a valid dtype.
        ValueError: `x` has no non-empty batch axis; `loss` is unknown; the logits are not 2-D;
            the shapes or labels do not match (see `check_logits_and_targets`).
    """
    check_grad_mode("gradreg forward")
    _check_input(x)
    _check_loss(loss)
    y = _labels(y, loss)
    xg = x.detach().requires_grad_(True)
    logits = model(xg)
    if isinstance(logits, Tensor) and logits.dim() != 2:
        raise ValueError(f"the model's logits must be 2-D (batch, classes), got shape {tuple(logits.shape)}")
    check_logits_and_targets(logits, y, loss, batch=x.shape[0])
    return Forward(xg, logits, y, per_example_loss(logits, y, loss))


def penalty(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    reg: Regularizer,
    *,
    loss: str | LossFn = "cross_entropy",
    generator: torch.Generator | None = None,
) -> Tensor:
    """One regularizer's *unweighted* penalty, as the mean over the batch's examples.

    The result carries a graph (it can be backpropagated to the parameters). Lazy settings
    (`every`) are ignored: this is the value itself.

    Args:
        model: The network, `x -> logits` of shape `(B, m)`.
        x: A batch of inputs, `(B, ...)`, of a floating-point dtype.
        y: The targets, as in [`regularize`][gradreg.regularize].
        reg: One regularizer.
        loss: The data loss, as in [`per_example_loss`][gradreg.per_example_loss].
        generator: The source of the random projections of SpectReg and RandomOneHot; None:
            the global RNG.

    Returns:
        A scalar tensor with a graph to the parameters.

    Raises:
        RuntimeError: Under `torch.no_grad()` or `torch.inference_mode()`.
        TypeError: `reg` is not a regularizer; `generator` is not a `torch.Generator`; `x`,
            the logits or `y` is not a tensor of a valid dtype.
        ValueError: The checks of `gradreg.core.forward` fail; the regularizer needs class
            labels but `loss` is not `"cross_entropy"`, or is a function of the softmax and the
            model has one output.
    """
    check_grad_mode("gradreg.penalty")
    (reg,) = check_regularizers([reg])
    _check_generator(generator)
    fwd = forward(model, x, y, loss)
    _check_labels_needed([reg], loss, fwd.logits)
    return reg.value(fwd, generator).mean()

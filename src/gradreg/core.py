"""The drop-in entry points: :func:`regularize`, :func:`regularized_loss` and :func:`penalty`.

- :func:`regularize` takes a forward pass the caller already ran: the logits, the targets and
  ``wrt``, the tensor(s) the penalties differentiate by (the input, several inputs, an
  embedding output or a hidden activation). It fits any model signature, autocast, DDP and
  ``torch.compile``.
- :func:`regularized_loss` runs the forward pass itself on a copy of ``x`` that requires grad,
  so the caller never sets ``requires_grad`` (and can never forget to). It is a thin layer
  on :func:`regularize`; when no active regularizer needs an input gradient it does not ask
  for one, and costs what a plain training step costs.

All regularizers share the one forward pass and its graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import penalties as P
from .regularizers import Forward, Regularizer

LossFn = Callable[[Tensor, Tensor], Tensor]
LOSSES = ("cross_entropy", "half_sse", "mse")
VALIDATE = ("auto", True, False)


# --------------------------------------------------------------------------- data losses


def per_example_loss(logits: Tensor, y: Tensor, loss: str | LossFn) -> Tensor:
    """The data loss of each example, ``logits.shape[:-1]``.

    - ``"cross_entropy"``: ``-log softmax(z_i)[y_i]``; ``y`` holds integer class labels.
    - ``"half_sse"``: ``1/2 ||z_i - y_i||^2`` (the paper's SIN loss, summed over the batch).
    - ``"mse"``: ``mean_k (z_ik - y_ik)^2``.
    - a callable ``(logits, y) -> (B,)``.
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
    """The data term of the training loss: the mean over the last (batch) axis, except
    ``"half_sse"``, the batch sum ``1/2 sum_i ||z_i - y_i||^2`` as in the paper's SIN experiment."""
    return per_example.sum(-1) if loss == "half_sse" else per_example.mean(-1)


# --------------------------------------------------------------------------- validation


def check_grad_mode(where: str) -> None:
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
    """Shapes and dtypes of logits ``(*batch, m)`` and targets; the label range where
    ``validate`` says so (``"auto"``: on CPU only, where it needs no device synchronization)."""
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
    """``data_loss + sum_j weight_j * penalty_j`` for a forward pass the caller already ran.

    ``logits`` ``(B, m)`` and targets ``y``; ``wrt`` is the tensor, or a tuple of tensors,
    that the penalties differentiate by: the input (made to require grad *before* the
    forward pass), several inputs, an embedding output, or a hidden activation (see
    :func:`gradreg.capture`). Each must have the batch as its leading axis. With several,
    a penalty's per-example value is the **sum** over them of the per-example squared
    norms (``norm="l1"``: of the L1 norms), i.e. the norm of the concatenated gradient.
    ``wrt`` may be ``None`` only when no active regularizer needs an input gradient.

    Returns ``(loss, terms)``: the scalar total, and a dict of detached scalars -- the data
    loss under ``"loss"`` and each *applied* regularizer's unweighted penalty under its class
    name (a second regularizer of the same class gets ``"Name#2"``, and so on).

    - The data loss is the batch mean (``"half_sse"``: the batch sum). Every penalty is the
      batch mean of a per-example value (see each regularizer's docstring).
    - A regularizer with weight 0 is evaluated for ``terms`` but not added to the loss.
    - ``step``: the training step, needed by lazy regularizers (``every > 1``); on steps they
      skip they cost nothing and are absent from ``terms``.
    - BatchNorm in training mode couples the examples; the penalties then use gradients of
      batch sums, as the paper's published numbers did.
    - Random projections are drawn, in list order, from ``generator`` (else the global RNG)
      on the logits' device and dtype.
    - ``validate``: the label-range check reads the labels' min and max, a host
      synchronization on an accelerator; ``"auto"`` runs it on CPU only, ``True`` always,
      ``False`` never.

    Raises a one-line error when ``wrt`` does not require grad, the logits do not depend on
    it, it runs under ``no_grad``/``inference_mode``, or shapes do not match: never a silent 0.
    """
    check_grad_mode("gradreg.regularize")
    regs = check_regularizers(regularizers)
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
    names = _term_names(regs)
    active = [(n, r) for n, r in zip(names, regs) if r.active(step)]
    fd = [r.name for _, r in active if getattr(r, "finite_difference", False)]
    if fd:
        raise ValueError(
            f"{', '.join(fd)}: method='finite_difference' re-runs the model on a shifted input, which regularize() "
            "cannot do on a forward pass it did not run; use gr.regularized_loss(model, x, y, ...)"
        )
    xs: tuple[Tensor, ...] | None = None
    if any(r.needs_input_grad for _, r in active):
        if wrt is None:
            raise ValueError(
                "wrt is None, but "
                + ", ".join(r.name for _, r in active if r.needs_input_grad)
                + " differentiate(s) by the input: pass wrt"
            )
        xs = _check_wrt(wrt, logits.shape[:-1])
        P.check_differentiable(logits, xs)
    pel = per_example_loss(logits, y, loss)
    data = batch_data_loss(pel, loss)
    terms: dict[str, Tensor] = {"loss": data.detach()}
    total = data
    x_arg = None if xs is None else (xs if isinstance(wrt, (tuple, list)) else xs[0])
    fwd = Forward(x_arg, logits, y, pel)  # type: ignore[arg-type]
    for name, reg in active:
        try:
            value = reg.value(fwd, generator).mean()
        except RuntimeError as e:
            raise _explain_double_backward(e, reg.name) from e
        if reg.needs_input_grad:
            check_double_differentiable(value, reg.name)
        terms[name] = value.detach()
        if reg.weight != 0:
            total = total + reg.effective_weight * value
    return total, terms


def check_double_differentiable(value: Tensor, name: str) -> None:
    """Raise now, with advice, where a penalty's graph holds an operation without a double
    backward (a custom ``autograd.Function`` marked ``once_differentiable``, a
    ``torch.compile``'d graph): autograd would only fail later, inside the caller's
    ``loss.backward()``. A walk over the penalty's autograd graph (tens of microseconds for LeNet)."""
    for fn in graph_nodes(value):
        kind = type(fn).__name__
        if kind in ("Error", "DelayedError"):
            raise RuntimeError(
                f"{name}: the model contains an operation without a double backward (a custom autograd.Function "
                "marked once_differentiable, or a fused kernel), so the exact penalty cannot be trained; use "
                f"{name}(..., method='finite_difference')"
            )
        if kind == "NotImplemented":
            raise RuntimeError(
                f"{name}: an operation in the model has no double backward (for attention, PyTorch's fused "
                "kernels: run the forward pass under torch.nn.attention.sdpa_kernel(SDPBackend.MATH)); or use "
                f"{name}(..., method='finite_difference')"
            )
        if kind == "CompiledFunctionBackwardBackward":
            raise RuntimeError(
                f"{name}: the model is torch.compile'd, and compiled graphs have no double backward, so the exact "
                f"penalty cannot be trained; use {name}(..., method='finite_difference'), or the eager model"
            )


def graph_nodes(t: Tensor):
    """Each node of ``t``'s autograd graph once, depth first, in a fixed order."""
    seen, stack = set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(f for f, _ in node.next_functions)


def graph_leaves(t: Tensor) -> list[Tensor]:
    """The leaf tensors that ``t.backward()`` would accumulate gradients into (the
    ``AccumulateGrad`` nodes' variables), in a fixed order."""
    return [node.variable for node in graph_nodes(t) if hasattr(node, "variable")]


def check_no_reentrant_checkpoint(t: Tensor) -> None:
    """Refuse a finite-difference pass whose graph holds a reentrant ``torch.utils.checkpoint``
    segment (it runs its forward under ``no_grad`` and again in ``backward()``, past the frozen
    kinks; the non-reentrant form is caught inside the pass by the kink mode)."""
    from .finite_difference import CHECKPOINT_ERROR

    if any(type(node).__name__ == "CheckpointFunctionBackward" for node in graph_nodes(t)):
        raise RuntimeError(CHECKPOINT_ERROR)


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
    """``data_loss + sum_j weight_j * penalty_j`` from one forward pass of ``model`` on ``x``.

    Runs ``model`` on a detached copy of ``x`` that requires grad -- only when an active
    regularizer differentiates by the input, so a step with none (or only the confidence
    penalty, or lazy regularizers on a skipped step) costs a plain step -- and hands the
    logits to :func:`regularize`; see there for ``terms``, ``step``, ``generator`` and
    ``validate``.

    Regularizers with ``method="finite_difference"`` re-run ``model`` on a shifted input
    (:mod:`gradreg.finite_difference`); the returned loss then has the true value and the
    surrogate's gradient.
    """
    check_grad_mode("gradreg.regularized_loss")
    regs = check_regularizers(regularizers)
    _check_input(x)
    _check_loss(loss)
    _check_generator(generator)
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
    if any(m in text for m in ("aot_autograd", "was compiled", "donated buffer", "CompiledFunction")):
        return RuntimeError(
            f"{name}: the model is torch.compile'd, and compiled graphs have no double backward, so the exact "
            f"penalty cannot be trained ({first}); use {name}(..., method='finite_difference'), or the eager model"
        )
    if any(m in text for m in ("once_differentiable", "double backward", "differentiate twice", "not implemented")):
        return RuntimeError(
            f"{name}: the exact penalty needs a double backward through the model, which an operation in it does "
            f"not support ({first}); use {name}(..., method='finite_difference')"
        )
    return e


def _fd_regularized_loss(model, x, y, regs, loss, generator, step, validate):
    """regularized_loss with finite-difference regularizers (see :mod:`gradreg.finite_difference`)."""
    from . import finite_difference as FD

    replay = FD.Replay(x.device, model=model).capture()
    kinks = FD.FrozenKinks(model)
    xg = x.detach().requires_grad_(True)
    with kinks.record():
        logits = _model_logits(model, xg, x)
    if isinstance(logits, Tensor):
        check_no_reentrant_checkpoint(logits)
    y = _labels(y, loss)
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
    params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    dtype = FD.compute_dtype(logits.dtype, x.device.type, params)
    fused = len(fd) == 1 and not exact and fd[0][1].name == "DataGrad" and fd[0][1].weight != 0
    total = data
    value = data.detach()
    f_sum = pel.sum()
    # every tensor the data loss trains (the model's parameters, and any other leaf: a learnable
    # loss, a weight from outside the module), so that none loses its data gradient
    leaves = [t for t in graph_leaves(f_sum) if t is not xg] if fused else []
    if fused and leaves:  # one backward at x gives v and the data gradient (DataGrad's F is the summed data loss)
        name, reg = fd[0]
        gx, *g_params = torch.autograd.grad(f_sum, [xg, *leaves], allow_unused=True)
        v = gx.detach()
        pen, surr, h = _fd_surrogate_shifted(
            model, x, y, loss, reg, v, draws[name], replay, kinks, b, f_sum, dtype, central_base=None
        )
        terms[name] = pen
        w = reg.effective_weight
        scale = b if loss != "half_sse" else 1  # data = F / scale
        # grad = grad_data + w * grad_S, with grad_S = (kappa / (B h)) (grad F(x + h d) - grad F(x)) (one-sided)
        _, kappa = FD.direction(v, getattr(reg, "norm", "l2"))
        # a tensor (no host sync on an accelerator); h = 0 (v = 0) leaves the data gradient alone
        if reg.fd_scheme == "one_sided":
            coef = torch.where(h > 0, 1.0 / scale - w * kappa / (b * torch.where(h > 0, h, 1.0)), 1.0 / scale)
        else:
            coef = torch.full_like(h, 1.0 / scale)
        have = [(p, g) for p, g in zip(leaves, g_params) if g is not None]
        torch._foreach_mul_([g for _, g in have], coef.to(have[0][1].dtype) if have else coef)
        carried = carry_gradients([p for p, _ in have], [g for _, g in have])
        total = carried + w * surr
        value = value + w * pen
        return total - total.detach() + value, terms
    for name, reg in exact:
        pen = reg.checked(fwd, draws[name]).mean()
        terms[name] = pen.detach()
        if reg.weight != 0:
            total = total + reg.effective_weight * pen
    for name, reg in fd:
        f_base = reg.objective(fwd, draws[name]).sum()
        (gx,) = torch.autograd.grad(f_base, xg, retain_graph=True)
        pen, surr, _ = _fd_surrogate_shifted(
            model, x, y, loss, reg, gx.detach(), draws[name], replay, kinks, b, f_base, dtype
        )
        terms[name] = pen
        if reg.weight != 0:
            total = total + reg.effective_weight * (surr - surr.detach() + pen)
    return total, terms


class _CarryGradients(torch.autograd.Function):
    """A zero scalar whose gradient with respect to each of ``params`` is the given tensor
    (times the incoming gradient, so a scaled loss scales it too): one autograd node that
    carries gradients already computed into the returned loss's ``backward()``."""

    @staticmethod
    def forward(ctx, grads, *params):
        ctx.grads = grads
        return params[0].new_zeros(())

    @staticmethod
    def backward(ctx, out):
        grads = ctx.grads
        ctx.grads = None
        return (None, *torch._foreach_mul(grads, out))


def carry_gradients(params: list[Tensor], grads: list[Tensor]) -> Tensor:
    """``0``, with ``d/dp = grad`` for each parameter ``p`` (see :class:`_CarryGradients`)."""
    if not params:
        return torch.zeros(())
    return _CarryGradients.apply([g.detach() for g in grads], *params)


def _fd_surrogate_shifted(model, x, y, loss, reg, v, draw, replay, kinks, b, f_base, dtype, central_base="auto"):
    """The true penalty (detached), the surrogate S (with a graph through the shifted pass(es)
    and, one-sided, through ``f_base``) and the step h, for one regularizer."""
    from . import finite_difference as FD

    norm = getattr(reg, "norm", "l2")
    pen = P.per_example_norm(v, norm, 1).mean()
    d, kappa = FD.direction(v, norm)
    h = FD.step_size(x, d, reg.relative_step(dtype), 1)  # a constant: nothing flows back through h

    def f_at(sign: float) -> Tensor:
        xs = FD.shifted(x, h, d, sign)
        with replay(), kinks.replay():
            logits = model(xs)
        return reg.objective(Forward(xs, logits, y, per_example_loss(logits, y, loss)), draw).sum()

    if reg.fd_scheme == "central":
        surr = FD.surrogate(f_at(1.0), f_at(-1.0), h, kappa, b, "central")
    else:
        base = f_base if central_base == "auto" else f_base.detach()
        surr = FD.surrogate(f_at(1.0), base, h, kappa, b, "one_sided")
    return pen.detach(), surr, h


def forward(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, loss: str | LossFn = "cross_entropy") -> Forward:
    """Run ``model`` once on a detached copy of ``x`` that requires grad, validate
    everything, and return the shared :class:`Forward` record."""
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

    The result carries a graph (it can be backpropagated to the parameters). ``generator``
    supplies the random projections of SpectReg and RandomOneHot. Lazy settings
    (``every``) are ignored: this is the value itself.
    """
    check_grad_mode("gradreg.penalty")
    (reg,) = check_regularizers([reg])
    _check_generator(generator)
    fwd = forward(model, x, y, loss)
    _check_labels_needed([reg], loss, fwd.logits)
    return reg.value(fwd, generator).mean()

"""Input-gradient penalties as pure functions of a network's output and its input.

Every function here takes the tensors it needs -- an output with an autograd graph back to
the input `x` -- and returns one value per example. Nothing is averaged over the batch
here; [`gradreg.regularize`][gradreg.regularize] takes the batch mean. All results are built with
`create_graph=True`, so they are differentiable w.r.t. the parameters (double backprop)
and can be added to a training loss.

Notation (the paper's, section 2 and 5): `z = g(x)` are the logits, `p = softmax(z)`
the class probabilities, `m` the number of classes, `J_g(x_i) = dz_i/dx_i` the
(m x d) Jacobian of the logits of example `i` w.r.t. its own input, `J_f` the same
for `p`.

Shapes. The logits are `(*batch, m)`: `batch` is `(B,)` for one model and `(K, B)`
for an ensemble of K members (`gradreg.ensemble`); every example axis is a leading
axis, and every result has the shape `batch`. The input `x` is one tensor
`(*batch, ...)` or a tuple of them (several inputs, or hidden activations); the norm of a
tuple is the per-example **sum** of the norms of its parts.

Vector-Jacobian products (the trick of section 5.2): `J_g(x_i)^T v_i` is the input
gradient of `sum_i <z_i, v_i>`. For a network whose examples do not interact this is
exactly the per-example product. For batch-coupled layers (BatchNorm in training mode)
the result is the gradient of the *batch sum*, which also contains the cross-example
terms through the batch statistics; this is what the paper's published numbers used.

Norms: `"l2"` is the squared Euclidean norm `||v||_2^2` over all input coordinates
(pixels x channels), `"l1"` is `||v||_1`. The paper uses squared L2 and names L1 as
an alternative.

No silent zeros: an output that does not depend on an input, or an input that does not
require grad, raises [`NoInputGradient`][gradreg.NoInputGradient] instead of returning 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Norm = Literal["l2", "l1"]
Method = Literal["auto", "batched", "loop"]
Projection = Literal["batch", "example"]
Inputs = Union[Tensor, tuple[Tensor, ...]]  # noqa: UP007 (a runtime alias; X | Y needs 3.10 objects)

NORMS = ("l2", "l1")
METHODS = ("auto", "batched", "loop")
PROJECTIONS = ("batch", "example")


class NoInputGradient(ValueError):
    """The output has no autograd path to an input, so its input gradient is undefined.

    A `ValueError`: raised instead of returning a silent 0.
    """


def as_inputs(x: Inputs) -> tuple[Tensor, ...]:
    """The input(s) as a tuple.

    Args:
        x: One tensor, or a tuple or list of them.

    Returns:
        `x` as a tuple (one tensor becomes a tuple of one).
    """
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


# --------------------------------------------------------------------------- norms


def per_example_norm(v: Inputs, norm: Norm = "l2", batch_dims: int = 1) -> Tensor:
    """`||v_i||_2^2` (`"l2"`, squared) or `||v_i||_1` (`"l1"`) of each example.

    The norm is taken over all but the leading `batch_dims` axes, and summed over the parts of
    a tuple.

    Args:
        v: One tensor `(*batch, ...)` or a tuple of them.
        norm: `"l2"` (default, squared Euclidean) or `"l1"`.
        batch_dims: The number of leading batch axes (default 1).

    Returns:
        `v.shape[:batch_dims]`.

    Raises:
        ValueError: `norm` is not `"l2"` or `"l1"`.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    total: Tensor | None = None
    for t in as_inputs(v):
        flat = t.reshape(*t.shape[:batch_dims], -1)
        part = flat.pow(2).sum(-1) if norm == "l2" else flat.abs().sum(-1)
        total = part if total is None else total + part
    assert total is not None
    return total


# --------------------------------------------------------------------------- VJPs


def check_differentiable(outputs: Tensor, x: Inputs) -> None:
    """Refuse inputs without a gradient: every input must require grad and `outputs` must have a graph.

    Args:
        outputs: The tensor to differentiate.
        x: One input tensor or a tuple of them.

    Raises:
        NoInputGradient: Autograd is off (`torch.no_grad()` or `inference_mode()`); an input
            does not require grad; `outputs` has no autograd graph (computed under `no_grad`, or
            detached).
        TypeError: An input is not a tensor.
    """
    if not torch.is_grad_enabled():
        raise NoInputGradient("input gradients need autograd, but this runs under torch.no_grad() or inference_mode()")
    for j, t in enumerate(as_inputs(x)):
        if not isinstance(t, Tensor):
            raise TypeError(f"input #{j} is a {type(t).__name__}, not a tensor")
        if not t.requires_grad:
            raise NoInputGradient(
                f"input #{j} (shape {tuple(t.shape)}) does not require grad; call x.requires_grad_() *before* "
                "the forward pass, or use gr.regularized_loss, which does it for you"
            )
    if not outputs.requires_grad:
        raise NoInputGradient("the outputs have no autograd graph (computed under no_grad, or detached)")


def graph_nodes(t: Tensor) -> Iterator:
    """Each node of `t`'s autograd graph once, depth first, in a fixed order.

    Args:
        t: A tensor; one without a graph (`t.grad_fn` is None) yields nothing.

    Returns:
        An iterator over the `torch.autograd.graph.Node` objects `t.backward()` would visit.
    """
    seen, stack = set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(f for f, _ in node.next_functions)


def graph_leaves(t: Tensor) -> list[Tensor]:
    """The leaf tensors that `t.backward()` would accumulate gradients into.

    Args:
        t: A tensor with an autograd graph.

    Returns:
        The variables of the graph's `AccumulateGrad` nodes, in
        [`graph_nodes`][gradreg.penalties.graph_nodes] order.
    """
    return [node.variable for node in graph_nodes(t) if hasattr(node, "variable")]


def _grads(
    outputs: Tensor, x: Inputs, cotangent: Tensor, create_graph: bool, batched: bool = False
) -> tuple[Tensor, ...]:
    xs = as_inputs(x)
    check_differentiable(outputs, xs)
    gs = torch.autograd.grad(
        outputs,
        xs,
        grad_outputs=cotangent,
        create_graph=create_graph,
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=batched,
    )
    for j, g in enumerate(gs):
        if g is None:
            raise NoInputGradient(
                f"the outputs do not depend on input #{j} (shape {tuple(xs[j].shape)}): was it made to require grad "
                "after the forward pass, or is it not used by the model?"
            )
    return tuple(gs)


def _same_kind(x: Inputs, gs: tuple[Tensor, ...]) -> Inputs:
    return gs if isinstance(x, (tuple, list)) else gs[0]


def input_vjp(outputs: Tensor, x: Inputs, cotangent: Tensor, *, create_graph: bool = True) -> Inputs:
    """`J^T v`: the input gradient of `sum_i <outputs_i, cotangent_i>`, shaped like `x`.

    The graph of `outputs` is retained, so several penalties can share one forward pass.

    Args:
        outputs: `(*batch, m)`, with a graph to `x`.
        x: One input tensor or a tuple of them, each requiring grad.
        cotangent: `(*batch, m)`.
        create_graph: Build the result's graph, so it can be differentiated again (default
            True: double backprop).

    Returns:
        The product, shaped like `x` (a tuple for a tuple).

    Raises:
        NoInputGradient: An input does not require grad, `outputs` has no graph or does not
            depend on an input, or autograd is off.
        TypeError: An input is not a tensor.
    """
    return _same_kind(x, _grads(outputs, x, cotangent, create_graph))


def input_grad(scalar: Tensor, x: Inputs, *, create_graph: bool = True) -> Inputs:
    """`d scalar / d x` (retaining the graph).

    Args:
        scalar: A tensor with a graph to `x` (a scalar; otherwise the gradient of its sum).
        x: One input tensor or a tuple of them, each requiring grad.
        create_graph: Build the result's graph (default True: double backprop).

    Returns:
        The gradient, shaped like `x` (a tuple for a tuple).

    Raises:
        NoInputGradient: As [`input_vjp`][gradreg.penalties.input_vjp] raises.
        TypeError: An input is not a tensor.
    """
    return _same_kind(x, _grads(scalar, x, torch.ones_like(scalar), create_graph))


def resolve_method(method: Method, device: torch.device) -> str:
    """The method of a batch of vector-Jacobian products: `"auto"` resolved for `device`.

    `"auto"` is `"batched"` on accelerators, where one vmapped call saves m-1 launch sequences,
    and `"loop"` on CPU, where `gradreg bench` measured the vmapped backward slower than the
    loop (same FLOPs, worse kernels under vmap).

    Args:
        method: `"auto"`, `"batched"` or `"loop"`.
        device: The device the products run on.

    Returns:
        `"batched"` or `"loop"`.

    Raises:
        ValueError: `method` is not one of the three.
    """
    if method == "auto":
        return "loop" if device.type == "cpu" else "batched"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    return method


def input_vjps(
    outputs: Tensor, x: Inputs, cotangents: Tensor, *, method: Method = "auto", create_graph: bool = True
) -> Inputs:
    """`K` vector-Jacobian products at once.

    `"batched"` makes one vmapped backward call (`is_grads_batched=True`): one launch sequence
    for all K products, which wins where kernel launches dominate (GPUs). `"loop"` makes K
    ordinary backward calls. Both do the same FLOPs, K times those of one backward pass.

    Args:
        outputs: `(*batch, m)`, with a graph to `x`.
        x: One input tensor or a tuple of them, each requiring grad.
        cotangents: `(K, *batch, m)`.
        method: `"auto"` (default; see [`resolve_method`][gradreg.penalties.resolve_method]),
            `"batched"` or `"loop"`.
        create_graph: Build the result's graph (default True: double backprop).

    Returns:
        Shaped like `x` with a leading `K` axis: each part `(K, *x.shape)`.

    Raises:
        NoInputGradient: As [`input_vjp`][gradreg.penalties.input_vjp] raises.
        TypeError: An input is not a tensor.
        ValueError: `method` is not valid.
    """
    xs = as_inputs(x)
    if resolve_method(method, xs[0].device) == "batched":
        return _same_kind(x, _grads(outputs, xs, cotangents, create_graph, batched=True))
    per = [_grads(outputs, xs, c, create_graph) for c in cotangents]
    return _same_kind(x, tuple(torch.stack(parts) for parts in zip(*per)))


def basis_cotangents(outputs: Tensor) -> Tensor:
    """The basis cotangents: cotangent k is `e_k` for every example.

    Args:
        outputs: `(*batch, m)`; its device and dtype are used.

    Returns:
        `(m, *batch, m)`, an expanded view of the identity.
    """
    m = outputs.shape[-1]
    eye = torch.eye(m, device=outputs.device, dtype=outputs.dtype)
    return eye.view(m, *([1] * (outputs.dim() - 1)), m).expand(m, *outputs.shape)


# --------------------------------------------------------------------------- penalties


def datagrad(per_example_loss: Tensor, x: Inputs, norm: Norm = "l2") -> Tensor:
    """DataGrad / double backpropagation (Drucker & LeCun 1991): `||d l_i / d x_i||^2`.

    The gradient taken is that of the *sum* of the per-example losses, so example i gets
    `d l_i / d x_i` -- not the gradient of the batch mean, which would be B times smaller. For
    cross-entropy this equals `J_g^T (softmax(z_i) - y_i)` (the paper's Claim 2).

    Args:
        per_example_loss: `(*batch,)`, the data loss of each example (e.g. the per-example
            cross-entropy, `reduction="none"`), with a graph to `x`.
        x: One input tensor or a tuple of them, each requiring grad.
        norm: `"l2"` (default, squared) or `"l1"`.

    Returns:
        `(*batch,)`.

    Raises:
        NoInputGradient: The loss does not depend on an input that requires grad (see
            [`check_differentiable`][gradreg.penalties.check_differentiable]).
        ValueError: `norm` is not valid.
    """
    return per_example_norm(input_grad(per_example_loss.sum(), x), norm, per_example_loss.dim())


def projected_jacobian(logits: Tensor, x: Inputs, r: Tensor, norm: Norm = "l2") -> Tensor:
    """`||J_g(x_i)^T r_i||^2` for one projection vector per example.

    The building block of SpectReg, OneHot and RandomOneHot.

    Args:
        logits: `(*batch, m)`, with a graph to `x`.
        x: One input tensor or a tuple of them, each requiring grad.
        r: `(*batch, m)` or broadcastable to it (`(m,)`: shared by the batch).
        norm: `"l2"` (default, squared) or `"l1"`.

    Returns:
        `(*batch,)`.

    Raises:
        NoInputGradient: The logits do not depend on an input that requires grad.
        ValueError: `norm` is not valid.
    """
    return per_example_norm(input_vjp(logits, x, r.expand_as(logits)), norm, logits.dim() - 1)


def projected_jacobian_mean(logits: Tensor, x: Inputs, r: Tensor, norm: Norm = "l2", method: Method = "auto") -> Tensor:
    """`mean_k ||J_g(x_i)^T r_{k,i}||^2` over K projections.

    Args:
        logits: `(*batch, m)`, with a graph to `x`.
        x: One input tensor or a tuple of them, each requiring grad.
        r: `(K, *batch, m)` (or broadcastable to it per projection).
        norm: `"l2"` (default, squared) or `"l1"`.
        method: How the K products are issued, as in
            [`input_vjps`][gradreg.penalties.input_vjps] (unused for K = 1).

    Returns:
        `(*batch,)`.

    Raises:
        NoInputGradient: The logits do not depend on an input that requires grad.
        ValueError: `norm` or `method` is not valid.
    """
    if r.shape[0] == 1:
        return projected_jacobian(logits, x, r[0], norm)
    vjps = input_vjps(logits, x, r.expand(r.shape[0], *logits.shape), method=method)
    return per_example_norm(vjps, norm, logits.dim()).mean(0)


def frobenius(outputs: Tensor, x: Inputs, method: Method = "auto") -> Tensor:
    """Exact `||J(x_i)||_F^2 = sum_k ||J(x_i)^T e_k||^2` of `outputs` w.r.t. `x`.

    Cost: m vector-Jacobian products, i.e. m backward passes' FLOPs (about m/2 times a training
    step's backward). `"batched"` issues them as one vmapped call, `"loop"` as a Python loop
    over the classes (as the original code did).

    Args:
        outputs: `(*batch, m)`, with a graph to `x`.
        x: One input tensor or a tuple of them, each requiring grad.
        method: `"auto"` (default), `"batched"` or `"loop"` (see
            [`resolve_method`][gradreg.penalties.resolve_method]).

    Returns:
        `(*batch,)`.

    Raises:
        NoInputGradient: The outputs do not depend on an input that requires grad.
        ValueError: `method` is not valid.
    """
    vjps = input_vjps(outputs, x, basis_cotangents(outputs), method=method)
    return per_example_norm(vjps, "l2", outputs.dim()).sum(0)


def frobreg(logits: Tensor, x: Inputs, method: Method = "auto") -> Tensor:
    """FrobReg: `||J_g(x_i)||_F^2`, the squared Frobenius norm of the logits' Jacobian.

    Args:
        logits: `(*batch, m)`, with a graph to `x`.
        x: One input tensor or a tuple of them, each requiring grad.
        method: `"auto"` (default), `"batched"` or `"loop"`, as in
            [`frobenius`][gradreg.penalties.frobenius].

    Returns:
        `(*batch,)`.

    Raises:
        NoInputGradient: The logits do not depend on an input that requires grad.
        ValueError: `method` is not valid.
    """
    return frobenius(logits, x, method)


def jacreg(logits: Tensor, x: Inputs, method: Method = "auto") -> Tensor:
    """JacReg (Sokolic et al. 2017): `||J_f(x_i)||_F^2`, of the softmax probabilities `f = softmax(g)`.

    The squared Frobenius norm of the Jacobian of the probabilities.

    Args:
        logits: `(*batch, m)`, with a graph to `x`.
        x: One input tensor or a tuple of them, each requiring grad.
        method: `"auto"` (default), `"batched"` or `"loop"`, as in
            [`frobenius`][gradreg.penalties.frobenius].

    Returns:
        `(*batch,)`.

    Raises:
        NoInputGradient: The logits do not depend on an input that requires grad.
        ValueError: `method` is not valid.
    """
    return frobenius(torch.softmax(logits, dim=-1), x, method)


def confidence_penalty(logits: Tensor) -> Tensor:
    """Confidence penalty (Pereyra et al. 2017): the negative entropy `sum_k p_k log p_k`.

    Computed from `log_softmax`, so it is finite for saturated outputs, and for masked ones (a
    `-inf` logit: its `p log p` is 0, the limit, not `0 * -inf`).

    Args:
        logits: `(*batch, m)`.

    Returns:
        The negative entropy of each example's predicted distribution, `(*batch,)`.
    """
    logp = torch.log_softmax(logits, dim=-1)
    return (logp.exp() * logp.clamp_min(torch.finfo(logp.dtype).min)).sum(-1)


# --------------------------------------------------------------------------- random projections


def check_projection(projection) -> None:
    """Check a projection mode.

    Args:
        projection (str): `"batch"` or `"example"`.

    Raises:
        ValueError: `projection` is neither.
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"projection={projection!r} is not valid; valid choices: {', '.join(map(repr, PROJECTIONS))}")


def check_generator(generator, device: torch.device) -> None:
    """Check that a generator can draw on `device`.

    Args:
        generator (torch.Generator | None): A `torch.Generator` or None (the global RNG; always valid).
        device: The device the draws are made on (the logits').

    Raises:
        TypeError: `generator` is neither a `torch.Generator` nor None.
        ValueError: `generator` is on another device type than `device`.
    """
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if torch.device(generator.device).type != torch.device(device).type:
        raise ValueError(
            f"generator is on {generator.device} but the logits are on {device}; "
            "random projections are drawn on the logits' device, so pass a generator for that device"
        )


def gaussian_projections(
    n_proj: int,
    batch: int,
    m: int,
    *,
    projection: Projection = "batch",
    normalize: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """SpectReg's projection vectors, `(n_proj, batch, m)`, with covariance `I_m`.

    `r ~ N(0, I_m)`; with `normalize=True`, `r` is uniform on the sphere of radius `sqrt(m)`
    (`sqrt(m) g / ||g||`), whose covariance is also `I_m`.

    Args:
        n_proj: The number of projections.
        batch: The number of examples `B`.
        m: The number of classes.
        projection: `"batch"` (default) draws one r per projection, shared by all examples (as
            the paper's code did); `"example"` draws one per example.
        normalize: Draw on the sphere of radius `sqrt(m)` instead (default False).
        generator: The source of randomness; None: the global RNG.
        device: The device to draw on (default `"cpu"`).
        dtype: The dtype to draw in; None: the default dtype.

    Returns:
        `(n_proj, batch, m)` (with `"batch"`, a view expanded over the batch).

    Raises:
        TypeError: `generator` is not a `torch.Generator` or None.
        ValueError: `generator` is on another device type than `device`; `projection` is not
            valid.
    """
    device = torch.device(device)
    check_generator(generator, device)
    check_projection(projection)
    rows = 1 if projection == "batch" else batch
    r = torch.randn(n_proj, rows, m, generator=generator, device=device, dtype=dtype)
    if normalize:
        r = r * (math.sqrt(m) / r.norm(dim=2, keepdim=True))
    return r.expand(n_proj, batch, m)


def random_onehot_projections(
    batch: int,
    m: int,
    *,
    projection: Projection = "batch",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """RandomOneHot's projection vectors `sqrt(m) e_k`, `(batch, m)`, with `k` uniform over all m classes.

    The original code never drew the last class. The covariance is `I_m`.

    Args:
        batch: The number of examples `B`.
        m: The number of classes.
        projection: `"batch"` (default) draws one k for the whole batch, `"example"` one per
            example.
        generator: The source of randomness; None: the global RNG.
        device: The device to draw on (default `"cpu"`).
        dtype: The dtype of the result; None: the default dtype.

    Returns:
        `(batch, m)` (with `"batch"`, a view expanded over the batch).

    Raises:
        TypeError: `generator` is not a `torch.Generator` or None.
        ValueError: `generator` is on another device type than `device`; `projection` is not
            valid.
    """
    device = torch.device(device)
    check_generator(generator, device)
    check_projection(projection)
    rows = 1 if projection == "batch" else batch
    k = torch.randint(0, m, (rows,), generator=generator, device=device)
    r = F.one_hot(k, m).to(dtype) * math.sqrt(m)
    return r.expand(batch, m)

"""Input-gradient penalties as pure functions of a network's output and its input.

Every function here takes the tensors it needs -- an output with an autograd graph back to
the input ``x`` -- and returns one value per example, shape ``(B,)``. Nothing is averaged
over the batch here; :func:`gradreg.penalty` takes the batch mean. All results are built
with ``create_graph=True``, so they are differentiable w.r.t. the parameters (double
backprop) and can be added to a training loss.

Notation (the paper's, section 2 and 5): ``z = g(x)`` are the logits, ``p = softmax(z)``
the class probabilities, ``m`` the number of classes, ``J_g(x_i) = dz_i/dx_i`` the
(m x d) Jacobian of the logits of example ``i`` w.r.t. its own input, ``J_f`` the same
for ``p``.

Vector-Jacobian products (the trick of section 5.2): ``J_g(x_i)^T v_i`` is the input
gradient of ``sum_i <z_i, v_i>``. For a network whose examples do not interact this is
exactly the per-example product. For batch-coupled layers (BatchNorm in training mode)
the result is the gradient of the *batch sum*, which also contains the cross-example
terms through the batch statistics; this is what the paper's published numbers used.

Norms: ``"l2"`` is the squared Euclidean norm ``||v||_2^2`` over all input coordinates
(pixels x channels), ``"l1"`` is ``||v||_1``. The paper uses squared L2 and names L1 as
an alternative.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

Norm = Literal["l2", "l1"]
Method = Literal["auto", "batched", "loop"]
Projection = Literal["batch", "example"]

NORMS = ("l2", "l1")
METHODS = ("auto", "batched", "loop")
PROJECTIONS = ("batch", "example")


# --------------------------------------------------------------------------- norms


def per_example_norm(v: Tensor, norm: Norm = "l2") -> Tensor:
    """``||v_i||_2^2`` (``"l2"``, squared) or ``||v_i||_1`` (``"l1"``) over all but the
    leading batch dimension. ``v`` has shape ``(B, ...)``; returns ``(B,)``."""
    flat = v.flatten(1)
    if norm == "l2":
        return flat.pow(2).sum(1)
    if norm == "l1":
        return flat.abs().sum(1)
    raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")


# --------------------------------------------------------------------------- VJPs


def _grad_or_zeros(grad: Optional[Tensor], like: Tensor) -> Tensor:
    # autograd returns None when the output does not depend on the input at all; the
    # Jacobian is then exactly zero.
    return torch.zeros_like(like) if grad is None else grad


def input_vjp(outputs: Tensor, x: Tensor, cotangent: Tensor, *, create_graph: bool = True) -> Tensor:
    """``J^T v``: the input gradient of ``sum_i <outputs_i, cotangent_i>``, shape of ``x``.

    ``outputs`` is ``(B, m)`` with a graph to ``x``; ``cotangent`` is ``(B, m)``. The graph
    of ``outputs`` is retained, so several penalties can share one forward pass.
    """
    (g,) = torch.autograd.grad(
        outputs, x, grad_outputs=cotangent, create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    return _grad_or_zeros(g, x)


def resolve_method(method: Method, device: torch.device) -> str:
    """``"auto"`` is ``"batched"`` on accelerators, where one vmapped call saves m-1 launch
    sequences, and ``"loop"`` on CPU, where ``gradreg bench`` measured the vmapped backward
    slower than the loop (same FLOPs, worse kernels under vmap)."""
    if method == "auto":
        return "loop" if device.type == "cpu" else "batched"
    return method


def input_vjps(
    outputs: Tensor, x: Tensor, cotangents: Tensor, *, method: Method = "auto", create_graph: bool = True
) -> Tensor:
    """``K`` vector-Jacobian products at once: ``cotangents`` is ``(K, B, m)``, the result
    ``(K, *x.shape)``.

    ``"batched"`` makes one vmapped backward call (``is_grads_batched=True``): one launch
    sequence for all K products, which wins where kernel launches dominate (GPUs).
    ``"loop"`` makes K ordinary backward calls. Both do the same FLOPs, K times those of
    one backward pass. ``"auto"``: see :func:`resolve_method`.
    """
    method = resolve_method(method, x.device)
    if method == "batched":
        (g,) = torch.autograd.grad(
            outputs,
            x,
            grad_outputs=cotangents,
            create_graph=create_graph,
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
        return _grad_or_zeros(g, x.expand(cotangents.shape[0], *x.shape))
    if method == "loop":
        return torch.stack([input_vjp(outputs, x, c, create_graph=create_graph) for c in cotangents])
    raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")


def _basis_cotangents(outputs: Tensor) -> Tensor:
    """``(m, B, m)``: cotangent k is e_k for every example."""
    b, m = outputs.shape
    eye = torch.eye(m, device=outputs.device, dtype=outputs.dtype)
    return eye.unsqueeze(1).expand(m, b, m)


# --------------------------------------------------------------------------- penalties


def datagrad(per_example_loss: Tensor, x: Tensor, norm: Norm = "l2") -> Tensor:
    """DataGrad / double backpropagation (Drucker & LeCun 1991): ``||d l_i / d x_i||^2``.

    ``per_example_loss`` is ``(B,)``, the data loss of each example (e.g. the per-example
    cross-entropy, ``reduction="none"``). The gradient taken is that of the *sum* of the
    per-example losses, so example i gets ``d l_i / d x_i`` -- not the gradient of the batch
    mean, which would be B times smaller. For cross-entropy this equals
    ``J_g^T (softmax(z_i) - y_i)`` (the paper's Claim 2).
    """
    (g,) = torch.autograd.grad(per_example_loss.sum(), x, create_graph=True, retain_graph=True, allow_unused=True)
    return per_example_norm(_grad_or_zeros(g, x), norm)


def projected_jacobian(logits: Tensor, x: Tensor, r: Tensor, norm: Norm = "l2") -> Tensor:
    """``||J_g(x_i)^T r_i||^2`` for one projection vector per example; ``r`` is ``(B, m)``
    or ``(m,)`` (shared by the batch). The building block of SpectReg, OneHot and
    RandomOneHot."""
    return per_example_norm(input_vjp(logits, x, r.expand_as(logits)), norm)


def projected_jacobian_mean(
    logits: Tensor, x: Tensor, r: Tensor, norm: Norm = "l2", method: Method = "auto"
) -> Tensor:
    """``mean_k ||J_g(x_i)^T r_{k,i}||^2`` over K projections ``r`` of shape ``(K, B, m)``."""
    if r.shape[0] == 1:
        return projected_jacobian(logits, x, r[0], norm)
    vjps = input_vjps(logits, x, r, method=method)
    return per_example_norm(vjps.flatten(0, 1), norm).view(r.shape[0], -1).mean(0)


def frobenius(outputs: Tensor, x: Tensor, method: Method = "auto") -> Tensor:
    """Exact ``||J(x_i)||_F^2 = sum_k ||J(x_i)^T e_k||^2`` of ``outputs`` (B, m) w.r.t. ``x``.

    Cost: m vector-Jacobian products, i.e. m backward passes' FLOPs (about m/2 times a
    training step's backward). ``"batched"`` issues them as one vmapped call, ``"loop"`` as
    a Python loop over the classes (as the original code did).
    """
    vjps = input_vjps(outputs, x, _basis_cotangents(outputs), method=method)
    return vjps.pow(2).flatten(2).sum(2).sum(0)


def frobreg(logits: Tensor, x: Tensor, method: Method = "auto") -> Tensor:
    """FrobReg: ``||J_g(x_i)||_F^2``, the squared Frobenius norm of the logits' Jacobian."""
    return frobenius(logits, x, method)


def jacreg(logits: Tensor, x: Tensor, method: Method = "auto") -> Tensor:
    """JacReg (Sokolic et al. 2017): ``||J_f(x_i)||_F^2``, the squared Frobenius norm of the
    Jacobian of the softmax probabilities ``f = softmax(g)``."""
    return frobenius(torch.softmax(logits, dim=1), x, method)


def confidence_penalty(logits: Tensor) -> Tensor:
    """Confidence penalty (Pereyra et al. 2017): the negative entropy ``sum_k p_k log p_k``
    of each example's predicted distribution, ``(B,)``. Computed from ``log_softmax`` so it
    is finite for saturated outputs."""
    logp = torch.log_softmax(logits, dim=1)
    return (logp.exp() * logp).sum(1)


# --------------------------------------------------------------------------- random projections


def _check_generator(generator: Optional[torch.Generator], device: torch.device) -> None:
    if generator is not None and torch.device(generator.device).type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but the input is on {device}; "
            "random projections are drawn on the input's device, so pass a generator for that device"
        )


def gaussian_projections(
    n_proj: int,
    batch: int,
    m: int,
    *,
    projection: Projection = "batch",
    normalize: bool = False,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str = "cpu",
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """SpectReg's projection vectors, ``(n_proj, batch, m)``, with covariance ``I_m``.

    ``r ~ N(0, I_m)``; with ``normalize=True``, ``r`` is uniform on the sphere of radius
    ``sqrt(m)`` (``sqrt(m) g / ||g||``), whose covariance is also ``I_m``. ``"batch"`` draws one
    r per projection, shared by all examples (as the paper's code did); ``"example"`` draws
    one per example. The draw is made on ``device`` in ``dtype`` from ``generator``.
    """
    device = torch.device(device)
    _check_generator(generator, device)
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
    generator: Optional[torch.Generator] = None,
    device: torch.device | str = "cpu",
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """RandomOneHot's projection vectors ``sqrt(m) e_k``, ``(batch, m)``, with ``k`` uniform
    over all m classes (the original code never drew the last class). The covariance is
    ``I_m``. ``"batch"`` draws one k for the whole batch, ``"example"`` one per example."""
    device = torch.device(device)
    _check_generator(generator, device)
    rows = 1 if projection == "batch" else batch
    k = torch.randint(0, m, (rows,), generator=generator, device=device)
    r = F.one_hot(k, m).to(dtype) * math.sqrt(m)
    return r.expand(batch, m)

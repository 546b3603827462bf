"""The paper's regularizers as small frozen dataclasses.

Each one holds its weight ``lambda`` and its options, and knows which pure function of
:mod:`gradreg.penalties` it is. The value it contributes to the loss is
``weight * mean_i penalty_i``: every penalty is a *mean over the examples of the batch*.

Projection vectors ``r`` are applied to the logits ``z = g(x)``; ``J_i = dz_i/dx_i`` is the
(m x d) Jacobian of example i. With BatchNorm in training mode the examples are coupled
and every vector-Jacobian product is the input gradient of a *batch sum*
(``d/dx sum_i <z_i, r_i>``), as in the paper's published numbers.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from numbers import Real
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from . import penalties as P


class Forward(NamedTuple):
    """One forward pass shared by all regularizers: the input (a leaf that requires
    grad), its logits ``(B, m)``, the targets and the per-example data loss ``(B,)``."""

    x: Tensor
    logits: Tensor
    y: Tensor
    per_example_loss: Tensor


def _check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; valid choices: {', '.join(map(repr, valid))}")


@dataclass(frozen=True)
class Regularizer(abc.ABC):
    """Base class. ``weight`` is the paper's ``lambda``: a finite, non-negative real."""

    weight: float

    def __post_init__(self) -> None:
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, Real):
            raise TypeError(f"{type(self).__name__}: weight must be a real number, got {type(w).__name__}")
        if math.isnan(w) or math.isinf(w) or w < 0:
            raise ValueError(f"{type(self).__name__}: weight must be finite and >= 0, got {w}")

    @property
    def name(self) -> str:
        return type(self).__name__

    # Classification-only regularizers read class labels from ``y``.
    needs_labels = False

    @abc.abstractmethod
    def per_example(self, fwd: Forward, generator: Optional[torch.Generator] = None) -> Tensor:
        """The penalty of each example, ``(B,)``."""


@dataclass(frozen=True)
class DataGrad(Regularizer):
    """DataGrad / double backpropagation: ``mean_i ||d l_i / d x_i||_2^2``.

    ``l_i`` is example i's data loss (per-example cross-entropy for classification). The
    gradient is that of the per-example loss -- not of the batch-mean loss, which is B
    times smaller. By the paper's Claim 2 it equals ``J_i^T (softmax(z_i) - y_i)``.
    Published weight at MNIST N=2000: 50. ``norm="l1"`` uses ``||.||_1``.
    """

    norm: str = "l2"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("norm", self.norm, P.NORMS)

    def per_example(self, fwd, generator=None):
        return P.datagrad(fwd.per_example_loss, fwd.x, self.norm)


@dataclass(frozen=True)
class SpectReg(Regularizer):
    """Spectral regularization: ``mean_i ||J_i^T r||_2^2``, ``r ~ N(0, I_m)``.

    Conventions (as the published numbers were made): one ``r`` shared by the batch
    (``projection="batch"``; ``"example"`` draws one per example), *not* scaled by
    ``1/sqrt(m)`` (the paper's printed factor was not in its code), squared norm. Since
    ``E[r r^T] = I`` it is an unbiased estimator of FrobReg (Claim 1).
    ``normalize=True`` draws r uniformly on the sphere of radius ``sqrt(m)`` (covariance
    still I, still unbiased); ``n_proj`` averages that many independent draws.
    Published weight at MNIST N=2000: 0.03.
    """

    projection: str = "batch"
    normalize: bool = False
    n_proj: int = 1
    norm: str = "l2"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("projection", self.projection, P.PROJECTIONS)
        _check_choice("norm", self.norm, P.NORMS)
        if isinstance(self.n_proj, bool) or not isinstance(self.n_proj, int) or self.n_proj < 1:
            raise ValueError(f"SpectReg: n_proj must be an integer >= 1, got {self.n_proj!r}")

    def per_example(self, fwd, generator=None):
        b, m = fwd.logits.shape
        r = P.gaussian_projections(
            self.n_proj,
            b,
            m,
            projection=self.projection,
            normalize=self.normalize,
            generator=generator,
            device=fwd.logits.device,
            dtype=fwd.logits.dtype,
        )
        return P.projected_jacobian_mean(fwd.logits, fwd.x, r, self.norm)


@dataclass(frozen=True)
class FrobReg(Regularizer):
    """FrobReg: the exact ``mean_i ||J_g(x_i)||_F^2`` of the logits.

    Cost: m vector-Jacobian products (m backward passes' FLOPs), issued as one batched
    call (``method="batched"``, vmapped) or a loop over the classes (``"loop"``, as the
    original code did). ``"auto"`` picks the loop on CPU and the batched call elsewhere:
    ``gradreg bench`` on 2 CPU cores measured a LeNet step (B=50) with FrobReg at about 8x
    the plain step with the loop and about 1.2x slower still batched.
    Published weight at MNIST N=2000: 0.03.
    """

    method: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("method", self.method, P.METHODS)

    def per_example(self, fwd, generator=None):
        return P.frobreg(fwd.logits, fwd.x, self.method)


@dataclass(frozen=True)
class JacReg(Regularizer):
    """JacReg (Sokolic et al.): the exact ``mean_i ||J_f(x_i)||_F^2`` of the softmax
    probabilities ``f = softmax(g)``. Same cost and ``method`` choice as FrobReg.
    Published weight: 1."""

    method: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("method", self.method, P.METHODS)

    def per_example(self, fwd, generator=None):
        return P.jacreg(fwd.logits, fwd.x, self.method)


@dataclass(frozen=True)
class OneHot(Regularizer):
    """True-label projection: ``mean_i ||J_i^T y_i||_2^2`` with ``y_i`` the one-hot label,
    i.e. the squared input gradient of the true class's logit. Published weight: 0.3."""

    norm: str = "l2"
    needs_labels = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("norm", self.norm, P.NORMS)

    def per_example(self, fwd, generator=None):
        r = torch.nn.functional.one_hot(fwd.y, fwd.logits.shape[1]).to(fwd.logits.dtype)
        return P.projected_jacobian(fwd.logits, fwd.x, r, self.norm)


@dataclass(frozen=True)
class RandomOneHot(Regularizer):
    """Random one-hot projection: ``mean_i ||J_i^T sqrt(m) e_k||_2^2`` with ``k`` uniform
    over **all** m classes (the original drew only 0..m-2, an off-by-one not copied here).
    The ``sqrt(m)`` makes the covariance I, so it is an unbiased estimator of FrobReg.
    ``projection="batch"`` draws one k per batch, ``"example"`` one per example.
    Published weight: 0.3."""

    projection: str = "batch"
    norm: str = "l2"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("projection", self.projection, P.PROJECTIONS)
        _check_choice("norm", self.norm, P.NORMS)

    def per_example(self, fwd, generator=None):
        b, m = fwd.logits.shape
        r = P.random_onehot_projections(
            b, m, projection=self.projection, generator=generator, device=fwd.logits.device, dtype=fwd.logits.dtype
        )
        return P.projected_jacobian(fwd.logits, fwd.x, r, self.norm)


@dataclass(frozen=True)
class ConfidencePenalty(Regularizer):
    """Confidence penalty: ``mean_i sum_k p_ik log p_ik`` (the negative entropy, <= 0, so
    adding it with a positive weight rewards entropy).

    The weight is per-example-mean: the paper's code *summed* over the batch, so its
    weight converts as ``weight_here = weight_original * B`` (0.01 there is 0.5 here at
    B = 50). Published weight at MNIST N=2000: 0.01 in the original's convention.
    """

    def per_example(self, fwd, generator=None):
        return P.confidence_penalty(fwd.logits)


REGULARIZERS = {
    cls.__name__: cls for cls in (DataGrad, SpectReg, FrobReg, JacReg, OneHot, RandomOneHot, ConfidencePenalty)
}

"""The paper's regularizers as small frozen dataclasses, and the contract a new one implements.

Each one holds its weight `lambda` and its options, and knows which pure function of
[`gradreg.penalties`][gradreg.penalties] it is. The value it contributes to the loss is
`weight * mean_i penalty_i`: every penalty is a *mean over the examples of the batch*.

Projection vectors `r` are applied to the logits `z = g(x)`; `J_i = dz_i/dx_i` is the
(m x d) Jacobian of example i. With BatchNorm in training mode the examples are coupled
and every vector-Jacobian product is the input gradient of a *batch sum*
(`d/dx sum_i <z_i, r_i>`), as in the paper's published numbers.

**The contract.** A regularizer is a frozen dataclass subclass of
[`Regularizer`][gradreg.Regularizer] with a `weight` and its options. It implements

- `per_example(fwd, draw) -> Tensor`: the *unweighted* penalty of every example, shape
  `fwd.batch_shape`. `fwd` is a [`Forward`][gradreg.Forward]: the input(s) `x`, the logits
  `(*batch, m)`, the targets and the per-example data loss. `batch` is `(B,)` for one
  run and `(K, B)` for an ensemble of K members, so write it over the *trailing* axes
  (`logits.shape[-1]` is m; reduce with `P.per_example_norm(v, norm, fwd.batch_dims)`).
- `draw(batch, m, generator, device, dtype) -> Tensor | None` (only if it is random): its
  random draws for one batch of one run, with the batch as the leading axis. The ensemble
  engine calls it once per member with that member's generator and stacks the draws, so a
  member draws exactly what it would draw alone.
- the class attributes `needs_input_grad` (False for output-only penalties such as the
  confidence penalty: then no input gradient is taken at all) and `needs_labels`.

Everything that runs a regularizer -- [`gradreg.regularize`][gradreg.regularize],
[`gradreg.regularized_loss`][gradreg.regularized_loss], single runs and the ensemble engine --
calls these two methods, so a user-defined subclass trains inside an ensemble exactly as it
trains alone. Every concrete subclass is registered by its class name (and its `aliases`) in
[`REGISTRY`][gradreg.REGISTRY], from which the command line's
`--reg` names and the experiment specs are derived. Subclasses outside gradreg serialize
by their import path `"package.module:ClassName"`.

Lazy regularization (StyleGAN2's lazy R1): `every=k` applies the penalty only on steps
`i` with `i % k == 0`, with weight `k * weight`, so its expected contribution per step
is unchanged; skipped steps cost nothing. That is a first-order match: with a strong penalty, one
step at `k * weight` does more than `k` steps at `weight` (measured, with what to do, in
docs/dropin.md, "Lazy regularization").
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from . import penalties as P

# The largest weight accepted: a penalty times a larger weight overflows float32 (3.4e38)
# for any penalty above 1e-8, which is a mistake, not a setting.
MAX_WEIGHT = 1e30


class Forward(NamedTuple):
    """One forward pass, shared by all regularizers.

    Attributes:
        x: The input(s): leaves or activations that require grad; one tensor `(*batch, ...)` or
            a tuple of them.
        logits: The model's output, `(*batch, m)`.
        y: The targets.
        per_example_loss: The data loss of each example, `(*batch,)`.
    """

    x: P.Inputs
    logits: Tensor
    y: Tensor
    per_example_loss: Tensor

    @property
    def batch_dims(self) -> int:
        """The number of leading batch axes, `logits.dim() - 1`: 1 for one run `(B, m)`, 2 for an ensemble."""
        return self.logits.dim() - 1

    @property
    def batch_shape(self) -> torch.Size:
        """The batch axes of the logits, `logits.shape[:-1]`: `(B,)` for one run, `(K, B)` for an ensemble.

        It is the shape of every per-example value.
        """
        return self.logits.shape[:-1]


def _check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; valid choices: {', '.join(map(repr, valid))}")


REGISTRY: dict[str, type[Regularizer]] = {}
"""Every registered regularizer class, by class name.

The built-ins and the user classes added with [`register`][gradreg.register]. The command
line's `--reg` names and the experiment specs are derived from it.
"""
ALIASES: dict[str, str] = {}  # lower-case alias -> class name (command-line names)


def register(cls: type[Regularizer]) -> type[Regularizer]:
    """Add `cls` to [`REGISTRY`][gradreg.REGISTRY] under its class name and its `aliases`.

    Used as a class decorator. The lower-case class name and each alias become command-line
    names.

    Args:
        cls: A `Regularizer` subclass.

    Returns:
        `cls` itself.
    """
    REGISTRY[cls.__name__] = cls
    for alias in (cls.__name__.lower(), *cls.aliases):
        ALIASES[alias] = cls.__name__
    return cls


@dataclass(frozen=True)
class Regularizer(abc.ABC):
    """The base class of every regularizer: a frozen dataclass with a weight and options.

    A subclass implements `per_example` (and `draw` if it is random); see the contract in
    `gradreg.regularizers`.

    Args:
        weight: The paper's `lambda`: a finite, non-negative real, at most `1e30` (a larger one
            overflows the loss); stored as a float.
        every: Apply on every k-th step only, with weight `k * weight` (lazy regularization);
            1 (default): every step. Keyword-only.

    Attributes:
        needs_input_grad: Whether the penalty differentiates through the input (class
            attribute; False for the confidence penalty).
        needs_labels: Whether it reads class labels from `y`, so it is for classification only
            (class attribute).
        on_softmax: Whether it is a function of the softmax probabilities: constant, so
            identically 0, with one output (class attribute).
        aliases: Extra command-line names; the lower-case class name is always one (class
            attribute).
        fuses_fd_step: Whether its finite-difference step fuses with the data loss's backward
            pass: only where its objective `F` is the summed per-example data loss itself
            (DataGrad), so that one backward pass at `x` gives both `v = dF/dx` and the data
            gradient (`gradreg.finite_difference.fused_step`). Inherited: a subclass that
            changes `objective` must set it False (class attribute).

    Raises:
        TypeError: `weight` is not a real number (a bool is not one).
        ValueError: `weight` is NaN, infinite, negative or above `1e30`; `every` is not an
            integer >= 1.
    """

    weight: float
    every: int = field(default=1, kw_only=True, metadata={"added": True})

    # Does the penalty differentiate through the input? (False: the confidence penalty.)
    needs_input_grad: ClassVar[bool] = True
    # Classification-only regularizers read class labels from `y`.
    needs_labels: ClassVar[bool] = False
    # a function of the softmax probabilities: constant, so identically 0, with one output
    on_softmax: ClassVar[bool] = False
    # Extra command-line names (the lower-case class name is always one).
    aliases: ClassVar[tuple[str, ...]] = ()
    # Does its finite-difference step fuse with the data loss's backward pass? Only where its
    # objective F is the summed per-example data loss itself (DataGrad), so that one backward
    # pass at x gives both v = dF/dx and the data gradient (gradreg.finite_difference.fused_step).
    # Inherited: a subclass that changes `objective` must set it False.
    fuses_fd_step: ClassVar[bool] = False

    def __post_init__(self) -> None:
        w = self.weight
        name = type(self).__name__
        if isinstance(w, bool) or not isinstance(w, Real):
            raise TypeError(f"{name}: weight must be a real number, got {type(w).__name__}")
        if math.isnan(w) or math.isinf(w) or w < 0:
            raise ValueError(f"{name}: weight must be finite and >= 0, got {w}")
        if w > MAX_WEIGHT:
            raise ValueError(f"{name}: weight {w:g} is larger than {MAX_WEIGHT:g}; the loss would overflow to inf")
        object.__setattr__(self, "weight", float(w))
        k = self.every
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{name}: every must be an integer >= 1, got {k!r}")

    @property
    def name(self) -> str:
        """The regularizer's name, `type(self).__name__` (the key of its penalty in `terms`)."""
        return type(self).__name__

    def draw(self, batch: int, m: int, generator: torch.Generator | None, device, dtype) -> Tensor | None:
        """Random draws for one batch of one run, batch axis first; `None` if not random.

        Args:
            batch: The number of examples `B`.
            m: The number of classes (the logits' last axis).
            generator: The source of randomness; None: the global RNG.
            device (torch.device | str): The device to draw on (the logits').
            dtype (torch.dtype): The dtype to draw in (the logits').

        Returns:
            A tensor `(batch, ...)`, or `None` (this base class: not random).
        """
        return None

    @abc.abstractmethod
    def per_example(self, fwd: Forward, draw: Tensor | None = None) -> Tensor:
        """The unweighted penalty of each example.

        Args:
            fwd: The shared forward pass.
            draw: What `draw` returned for this batch, or `None`.

        Returns:
            One value per example, shape `fwd.batch_shape`.
        """

    # ----------------------------------------------------------------- derived, not overridden

    def active(self, step: int | None) -> bool:
        """Whether the penalty is applied at `step` (always, unless `every > 1`).

        Args:
            step: The training step; may be None only when `every == 1`.

        Returns:
            True when `every == 1` or `step % every == 0`.

        Raises:
            ValueError: `every > 1` and `step` is None.
        """
        if self.every == 1:
            return True
        if step is None:
            raise ValueError(f"{self.name}(every={self.every}) is lazy: pass step= (the training step) to apply it")
        return step % self.every == 0

    @property
    def effective_weight(self) -> float:
        """The weight on the steps where it is applied: `every * weight`."""
        return self.every * self.weight

    def value(self, fwd: Forward, generator: torch.Generator | None = None) -> Tensor:
        """Draw (for this run) and evaluate: the checked per-example penalty.

        Args:
            fwd: The forward pass of one run (logits `(B, m)`).
            generator: The source of the random draws; None: the global RNG.

        Returns:
            The per-example penalty, shape `fwd.batch_shape`.

        Raises:
            ValueError: `fwd` holds several runs and the regularizer is random (the ensemble
                engine stacks per-member draws itself), or `per_example` returns the wrong shape.
        """
        b, m = fwd.logits.shape[-2], fwd.logits.shape[-1]
        d = self.draw(b, m, generator, fwd.logits.device, fwd.logits.dtype)
        if fwd.batch_dims > 1 and d is not None:
            raise ValueError("value() evaluates one run; the ensemble engine stacks per-member draws itself")
        return self.checked(fwd, d)

    def checked(self, fwd: Forward, draw: Tensor | None) -> Tensor:
        """`per_example` with the contract's shape check.

        Args:
            fwd: The shared forward pass.
            draw: The draws for this batch, or `None`.

        Returns:
            The per-example penalty, shape `fwd.batch_shape`.

        Raises:
            ValueError: `per_example` returned something other than a tensor of shape
                `fwd.batch_shape`.
        """
        out = self.per_example(fwd, draw)
        if not isinstance(out, Tensor) or out.shape != fwd.batch_shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"{self.name}.per_example returned {got}; a regularizer returns one value per example, shape "
                f"{tuple(fwd.batch_shape)} (see the contract in gradreg.regularizers)"
            )
        return out

    def options(self) -> dict[str, Any]:
        """Every field but the weight.

        Returns:
            A dict from field name to value (e.g. `every`, `norm`, `projection`).
        """
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "weight"}

    @property
    def batch_shared_projection(self) -> bool:
        """Whether every example of a batch is projected on the same vector(s).

        Such a penalty is the input gradient of `sum_i <z_i, r>`, which vanishes where the logits
        are affine in the output of a BatchNorm in training mode (see [`SpectReg`][gradreg.SpectReg]);
        [`gradreg.regularize`][gradreg.regularize] warns when it finds it 0.

        False here; True for SpectReg and RandomOneHot with `projection="batch"`, and for FrobReg.
        """
        return False

    @property
    def auto_method(self) -> bool:
        """Whether exact double backprop or finite differences is chosen per model.

        False here; True for a `ProjectedGradient` (DataGrad, SpectReg, OneHot, RandomOneHot) with
        `method="auto"` (FrobReg's and JacReg's `method` is another option: how their products are
        batched).
        """
        return False


METHODS = ("double_backprop", "finite_difference", "auto")


@dataclass(frozen=True)
class ProjectedGradient(Regularizer):
    """A penalty `mean_i ||d F / d x_i||` of a scalar `F = sum_i f_i`.

    Subclasses give `objective(fwd, draw)`, the per-example `f_i`.

    `method="double_backprop"` (default, exact) differentiates the input gradient;
    `"finite_difference"` trains with the first-order surrogate of `gradreg.finite_difference`
    (one extra forward/backward pass, no double backward). Either way the value reported is the
    exact penalty. `"auto"` is exact double backprop where every operation of the penalty's
    graph has a double backward, and finite differences (with `fd_scheme` and `fd_step`)
    elsewhere: [`gradreg.regularized_loss`][gradreg.regularized_loss] and the ensemble engine
    try the exact penalty once per model, on a replayed forward pass that changes no state, and
    warn when they fall back. [`gradreg.regularize`][gradreg.regularize], which cannot re-run
    the model, uses the exact penalty.

    Args:
        weight: The paper's `lambda` (see [`Regularizer`][gradreg.Regularizer]).
        method: `"double_backprop"` (default), `"finite_difference"` or `"auto"`. Keyword-only.
        fd_scheme: `"one_sided"` (default) or `"central"`; finite differences only.
            Keyword-only.
        fd_step: The relative step, in (0, 1). None: 1e-3 one-sided, 1e-2 central in float32,
            larger when the network computes in float16/bfloat16, smaller in float64 (see
            `gradreg.finite_difference`). Finite differences only. Keyword-only.
        every: Lazy regularization, as in `Regularizer`. Keyword-only.

    Raises:
        TypeError: As [`Regularizer`][gradreg.Regularizer] raises for `weight`.
        ValueError: `method` or `fd_scheme` is not valid; `fd_step` or a non-default
            `fd_scheme` is given with `method="double_backprop"`; `fd_step` is not a number in
            (0, 1); or as `Regularizer` raises.
    """

    method: str = field(default="double_backprop", kw_only=True, metadata={"added": True})
    fd_scheme: str = field(default="one_sided", kw_only=True, metadata={"added": True})
    fd_step: float | None = field(default=None, kw_only=True, metadata={"added": True})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("method", self.method, METHODS)
        _check_choice("fd_scheme", self.fd_scheme, ("one_sided", "central"))
        if self.method == "double_backprop" and (self.fd_step is not None or self.fd_scheme != "one_sided"):
            raise ValueError(  # the message is matched verbatim by tests/test_bad_input.py ('auto' takes them too)
                f"{self.name}: fd_step and fd_scheme apply to method='finite_difference' only, not {self.method!r}"
            )
        if self.fd_step is not None:
            if isinstance(self.fd_step, bool) or not isinstance(self.fd_step, Real) or not 0 < self.fd_step < 1:
                raise ValueError(f"{self.name}: fd_step must be a number in (0, 1) or None, got {self.fd_step!r}")
            object.__setattr__(self, "fd_step", float(self.fd_step))

    @property
    def finite_difference(self) -> bool:
        """Whether it trains by finite differences (`method="finite_difference"`; not `"auto"`)."""
        return self.method == "finite_difference"

    @property
    def auto_method(self) -> bool:
        """Whether `method == "auto"` (see [`Regularizer.auto_method`][gradreg.Regularizer.auto_method])."""
        return self.method == "auto"

    def with_method(self, method: str) -> ProjectedGradient:
        """This regularizer with another `method` (what `"auto"` resolves to).

        Args:
            method: `"double_backprop"` (`fd_scheme` and `fd_step` are reset, as that
                method takes none) or `"finite_difference"`.

        Returns:
            A copy with every other field unchanged.

        Raises:
            ValueError: For a method that is not valid.
        """
        if method == "double_backprop":
            return dataclasses.replace(self, method=method, fd_scheme="one_sided", fd_step=None)
        return dataclasses.replace(self, method=method)

    def relative_step(self, dtype: torch.dtype = torch.float32) -> float:
        """`fd_step`, or the default for a network whose logits come out in `dtype`.

        Args:
            dtype: The logits' dtype (default float32).

        Returns:
            The relative finite-difference step.
        """
        from .finite_difference import default_step

        return self.fd_step if self.fd_step is not None else default_step(self.fd_scheme, dtype)

    @abc.abstractmethod
    def objective(self, fwd: Forward, draw: Tensor | None) -> Tensor:
        """The per-example `f_i` whose sum's input gradient is `v`.

        Args:
            fwd: The shared forward pass.
            draw: The draws for this batch, or `None`.

        Returns:
            `f_i`, shape `fwd.batch_shape`.
        """

    def gradient_norm(self, v: P.Inputs, batch_dims: int) -> Tensor:
        """The per-example norm of an input gradient, in the regularizer's `norm` (`"l2"` if it has none).

        Args:
            v: The input gradient: one tensor `(*batch, ...)` or a tuple of them.
            batch_dims: The number of leading batch axes.

        Returns:
            `v.shape[:batch_dims]` (see `gradreg.penalties.per_example_norm`).
        """
        return P.per_example_norm(v, getattr(self, "norm", "l2"), batch_dims)


@register
@dataclass(frozen=True)
class DataGrad(ProjectedGradient):
    """DataGrad / double backpropagation: `mean_i ||d l_i / d x_i||_2^2`.

    `l_i` is example i's data loss (per-example cross-entropy for classification). The
    gradient is that of the per-example loss -- not of the batch-mean loss, which is B times
    smaller. By the paper's Claim 2 it equals `J_i^T (softmax(z_i) - y_i)`. Published weight at
    MNIST N=2000: 50.

    `method="double_backprop"` differentiates the input gradient; `"finite_difference"` trains
    with a first-order surrogate (one extra forward/backward pass, no double backward; the value
    reported is still the exact penalty); `"auto"` is exact where every operation of the model
    has a double backward, and finite differences elsewhere (decided once per model by
    [`gradreg.regularized_loss`][gradreg.regularized_loss]).

    Args:
        weight: The paper's `lambda`: finite, >= 0.
        norm: `"l2"` (default, squared Euclidean) or `"l1"` (`||.||_1`).
        method: `"double_backprop"` (default, exact), `"finite_difference"` or `"auto"`.
            Keyword-only.
        fd_scheme: `"one_sided"` (default) or `"central"`; finite differences only.
            Keyword-only.
        fd_step: The relative finite-difference step in (0, 1); None: the default for the
            network's dtype (1e-3 one-sided, 1e-2 central in float32). Keyword-only.
        every: Apply on every k-th step only, with weight `k * weight`. Keyword-only.

    Raises:
        TypeError: `weight` is not a real number.
        ValueError: `weight` is negative, not finite or above `1e30`; `norm`, `method` or
            `fd_scheme` is not valid; `fd_step` is not in (0, 1), or `fd_step`/`fd_scheme` is
            given with `method="double_backprop"`; `every` is not an integer >= 1.
    """

    norm: P.Norm = "l2"
    aliases: ClassVar[tuple[str, ...]] = ("dg",)
    fuses_fd_step: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("norm", self.norm, P.NORMS)

    def per_example(self, fwd, draw=None):
        """`||d l_i / d x_i||` of each example's data loss.

        See [`datagrad`][gradreg.penalties.datagrad].

        Args:
            fwd (Forward): The shared forward pass.
            draw (Tensor | None): Unused (DataGrad is not random).

        Returns:
            (Tensor): The per-example penalty, shape `fwd.batch_shape`.
        """
        return P.datagrad(fwd.per_example_loss, fwd.x, self.norm)

    def objective(self, fwd, draw=None):
        """The per-example data loss `l_i` (the finite-difference objective).

        Args:
            fwd (Forward): The shared forward pass.
            draw (Tensor | None): Unused.

        Returns:
            (Tensor): `fwd.per_example_loss`.
        """
        return fwd.per_example_loss


@register
@dataclass(frozen=True)
class SpectReg(ProjectedGradient):
    """Spectral regularization: `mean_i ||J_i^T r||_2^2`, `r ~ N(0, I_m)`.

    Conventions (as the published numbers were made): one `r` shared by the batch
    (`projection="batch"`; `"example"` draws one per example), *not* scaled by `1/sqrt(m)`
    (the paper's printed factor was not in its code), squared norm. Since `E[r r^T] = I` it is
    an unbiased estimator of FrobReg (Claim 1). Published weight at MNIST N=2000: 0.03.

    With BatchNorm in training mode, `projection="batch"` vanishes on a model whose logits are
    affine in a BatchNorm output (the paper's LeNet-BN: BatchNorm1d(84), then fc2): the batch
    mean of a BatchNorm output is its offset, so `sum_i z_i` does not depend on the input and
    `grad_x sum_i <z_i, r> = 0`. Use `projection="example"` there (training warns once when it
    finds the penalty 0 this way).

    Args:
        weight: The paper's `lambda`: finite, >= 0.
        projection: `"batch"` (default: one `r` for the batch) or `"example"` (one per
            example).
        normalize: False (default): `r ~ N(0, I_m)`; True: `r` uniform on the sphere of radius
            `sqrt(m)` (covariance still I, still unbiased).
        n_proj: The number of independent draws averaged (default 1; more needs
            `method="double_backprop"`).
        norm: `"l2"` (default, squared Euclidean) or `"l1"`.
        method: `"double_backprop"` (default, exact), `"finite_difference"` or `"auto"`, as for
            [`DataGrad`][gradreg.DataGrad]. Keyword-only.
        fd_scheme: `"one_sided"` (default) or `"central"`; finite differences only.
            Keyword-only.
        fd_step: The relative finite-difference step in (0, 1); None: the default for the
            network's dtype. Keyword-only.
        every: Apply on every k-th step only, with weight `k * weight`. Keyword-only.

    Raises:
        TypeError: `weight` is not a real number; `normalize` is not a bool.
        ValueError: `weight` is negative, not finite or above `1e30`; `projection`, `norm`,
            `method` or `fd_scheme` is not valid; `n_proj` is not an integer >= 1, or is not 1
            with a method other than `"double_backprop"`; `fd_step` is not in (0, 1), or
            `fd_step`/`fd_scheme` is given with `method="double_backprop"`; `every` is not an
            integer >= 1.
    """

    projection: P.Projection = "batch"
    normalize: bool = False
    n_proj: int = 1
    norm: P.Norm = "l2"
    aliases: ClassVar[tuple[str, ...]] = ("spect", "sr")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("projection", self.projection, P.PROJECTIONS)
        _check_choice("norm", self.norm, P.NORMS)
        if not isinstance(self.normalize, bool):
            raise TypeError(f"{self.name}: normalize must be True or False, got {self.normalize!r}")
        if isinstance(self.n_proj, bool) or not isinstance(self.n_proj, int) or self.n_proj < 1:
            raise ValueError(f"SpectReg: n_proj must be an integer >= 1, got {self.n_proj!r}")
        if self.method != "double_backprop" and self.n_proj != 1:
            raise ValueError(f"SpectReg: method={self.method!r} needs n_proj=1 (one direction per step)")

    @property
    def batch_shared_projection(self) -> bool:
        """Whether `projection == "batch"`.

        See [`Regularizer.batch_shared_projection`][gradreg.Regularizer.batch_shared_projection].
        """
        return self.projection == "batch"

    def draw(self, batch, m, generator, device, dtype):
        """The Gaussian projections for one batch.

        See [`gaussian_projections`][gradreg.penalties.gaussian_projections].

        Args:
            batch (int): The number of examples `B`.
            m (int): The number of classes.
            generator (torch.Generator | None): The source of randomness; None: the global RNG.
            device (torch.device | str): The device to draw on.
            dtype (torch.dtype): The dtype to draw in.

        Returns:
            (Tensor): `(batch, n_proj, m)`.
        """
        r = P.gaussian_projections(
            self.n_proj,
            batch,
            m,
            projection=self.projection,
            normalize=self.normalize,
            generator=generator,
            device=device,
            dtype=dtype,
        )
        return r.transpose(0, 1)  # (batch, n_proj, m)

    def per_example(self, fwd, draw=None):
        """`mean_k ||J_i^T r_k||^2` over the `n_proj` draws.

        See [`projected_jacobian_mean`][gradreg.penalties.projected_jacobian_mean].

        Args:
            fwd (Forward): The shared forward pass.
            draw (Tensor | None): What `draw` returned, `(*batch, n_proj, m)`.

        Returns:
            (Tensor): The per-example penalty, shape `fwd.batch_shape`.
        """
        return P.projected_jacobian_mean(fwd.logits, fwd.x, draw.movedim(-2, 0), self.norm)

    def objective(self, fwd, draw=None):
        """The projected logits `<z_i, r_i>` (the finite-difference objective; the first draw).

        Args:
            fwd (Forward): The shared forward pass.
            draw (Tensor | None): What `draw` returned, `(*batch, n_proj, m)`.

        Returns:
            (Tensor): Shape `fwd.batch_shape`.
        """
        return (fwd.logits * draw[..., 0, :]).sum(-1)


@register
@dataclass(frozen=True)
class FrobReg(Regularizer):
    """FrobReg: the exact `mean_i ||J_g(x_i)||_F^2` of the logits.

    Cost: m vector-Jacobian products (m backward passes' FLOPs), issued as one batched call
    (`method="batched"`, vmapped) or a loop over the classes (`"loop"`, as the original code
    did). `"auto"` picks the loop on CPU and the batched call elsewhere: `gradreg bench` on 2
    CPU cores measured a LeNet step (B=50) with FrobReg at about 8x the plain step with the
    loop and about 1.2x slower still batched. Published weight at MNIST N=2000: 0.03.

    Its basis vectors are shared by the batch, so under BatchNorm in training mode it vanishes
    where SpectReg's `projection="batch"` does (see there); one r per example
    (`SpectReg(..., projection="example")`) does not.

    Args:
        weight: The paper's `lambda`: finite, >= 0.
        method: How the m products are issued: `"auto"` (default), `"batched"` or `"loop"`.
        every: Apply on every k-th step only, with weight `k * weight`. Keyword-only.

    Raises:
        TypeError: `weight` is not a real number.
        ValueError: `weight` is negative, not finite or above `1e30`; `method` is not valid;
            `every` is not an integer >= 1.
    """

    method: P.Method = "auto"
    aliases: ClassVar[tuple[str, ...]] = ("frob",)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("method", self.method, P.METHODS)

    @property
    def batch_shared_projection(self) -> bool:
        """True: the basis vectors `e_k` are shared by the batch."""
        return True

    def per_example(self, fwd, draw=None):
        """`||J_g(x_i)||_F^2` of each example (see [`frobreg`][gradreg.penalties.frobreg]).

        Args:
            fwd (Forward): The shared forward pass.
            draw (Tensor | None): Unused (FrobReg is not random).

        Returns:
            (Tensor): The per-example penalty, shape `fwd.batch_shape`.
        """
        return P.frobreg(fwd.logits, fwd.x, self.method)


@register
@dataclass(frozen=True)
class JacReg(Regularizer):
    """JacReg (Sokolic et al.): the exact `mean_i ||J_f(x_i)||_F^2` of the softmax probabilities.

    `f = softmax(g)`. Same cost and `method` choice as [`FrobReg`][gradreg.FrobReg]. Published
    weight: 1.

    Args:
        weight: The paper's `lambda`: finite, >= 0.
        method: How the m products are issued: `"auto"` (default), `"batched"` or `"loop"`.
        every: Apply on every k-th step only, with weight `k * weight`. Keyword-only.

    Raises:
        TypeError: `weight` is not a real number.
        ValueError: `weight` is negative, not finite or above `1e30`; `method` is not valid;
            `every` is not an integer >= 1.
    """

    method: P.Method = "auto"
    aliases: ClassVar[tuple[str, ...]] = ("jac",)
    on_softmax: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("method", self.method, P.METHODS)

    def per_example(self, fwd, draw=None):
        """`||J_f(x_i)||_F^2` of each example (see [`jacreg`][gradreg.penalties.jacreg]).

        Args:
            fwd (Forward): The shared forward pass.
            draw (Tensor | None): Unused (JacReg is not random).

        Returns:
            (Tensor): The per-example penalty, shape `fwd.batch_shape`.
        """
        return P.jacreg(fwd.logits, fwd.x, self.method)


@register
@dataclass(frozen=True)
class OneHot(ProjectedGradient):
    """True-label projection: `mean_i ||J_i^T y_i||_2^2` with `y_i` the one-hot label.

    That is, the squared input gradient of the true class's logit. It needs class labels
    (`loss="cross_entropy"`). Published weight: 0.3.

    Args:
        weight: The paper's `lambda`: finite, >= 0.
        norm: `"l2"` (default, squared Euclidean) or `"l1"`.
        method: `"double_backprop"` (default, exact), `"finite_difference"` or `"auto"`, as for
            [`DataGrad`][gradreg.DataGrad]. Keyword-only.
        fd_scheme: `"one_sided"` (default) or `"central"`; finite differences only.
            Keyword-only.
        fd_step: The relative finite-difference step in (0, 1); None: the default for the
            network's dtype. Keyword-only.
        every: Apply on every k-th step only, with weight `k * weight`. Keyword-only.

    Raises:
        TypeError: `weight` is not a real number.
        ValueError: `weight` is negative, not finite or above `1e30`; `norm`, `method` or
            `fd_scheme` is not valid; `fd_step` is not in (0, 1), or `fd_step`/`fd_scheme` is
            given with `method="double_backprop"`; `every` is not an integer >= 1.
    """

    norm: P.Norm = "l2"
    needs_labels: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("norm", self.norm, P.NORMS)

    def per_example(self, fwd, draw=None):
        """`||J_i^T y_i||^2` of each example (see [`projected_jacobian`][gradreg.penalties.projected_jacobian]).

        Args:
            fwd (Forward): The shared forward pass; `fwd.y` holds the class labels.
            draw (Tensor | None): Unused (OneHot is not random).

        Returns:
            (Tensor): The per-example penalty, shape `fwd.batch_shape`.
        """
        return P.projected_jacobian(fwd.logits, fwd.x, self._r(fwd), self.norm)

    def objective(self, fwd, draw=None):
        """The true class's logit `<z_i, y_i>` (the finite-difference objective).

        Args:
            fwd (Forward): The shared forward pass.
            draw (Tensor | None): Unused.

        Returns:
            (Tensor): Shape `fwd.batch_shape`.
        """
        return (fwd.logits * self._r(fwd)).sum(-1)

    @staticmethod
    def _r(fwd):
        return torch.nn.functional.one_hot(fwd.y, fwd.logits.shape[-1]).to(fwd.logits.dtype)


@register
@dataclass(frozen=True)
class RandomOneHot(ProjectedGradient):
    """Random one-hot projection: `mean_i ||J_i^T sqrt(m) e_k||_2^2`, `k` uniform over all m classes.

    `k` is uniform over **all** m classes (the original drew only 0..m-2, an off-by-one not
    copied here). The `sqrt(m)` makes the covariance I, so it is an unbiased estimator of
    FrobReg. Published weight: 0.3.

    Args:
        weight: The paper's `lambda`: finite, >= 0.
        projection: `"batch"` (default: one k per batch) or `"example"` (one per example).
        norm: `"l2"` (default, squared Euclidean) or `"l1"`.
        method: `"double_backprop"` (default, exact), `"finite_difference"` or `"auto"`, as for
            [`DataGrad`][gradreg.DataGrad]. Keyword-only.
        fd_scheme: `"one_sided"` (default) or `"central"`; finite differences only.
            Keyword-only.
        fd_step: The relative finite-difference step in (0, 1); None: the default for the
            network's dtype. Keyword-only.
        every: Apply on every k-th step only, with weight `k * weight`. Keyword-only.

    Raises:
        TypeError: `weight` is not a real number.
        ValueError: `weight` is negative, not finite or above `1e30`; `projection`, `norm`,
            `method` or `fd_scheme` is not valid; `fd_step` is not in (0, 1), or
            `fd_step`/`fd_scheme` is given with `method="double_backprop"`; `every` is not an
            integer >= 1.
    """

    projection: P.Projection = "batch"
    norm: P.Norm = "l2"
    aliases: ClassVar[tuple[str, ...]] = ("random_onehot", "rndonehot")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("projection", self.projection, P.PROJECTIONS)
        _check_choice("norm", self.norm, P.NORMS)

    @property
    def batch_shared_projection(self) -> bool:
        """Whether `projection == "batch"`.

        See [`Regularizer.batch_shared_projection`][gradreg.Regularizer.batch_shared_projection].
        """
        return self.projection == "batch"

    def draw(self, batch, m, generator, device, dtype):
        """The scaled one-hot projections for one batch.

        See [`random_onehot_projections`][gradreg.penalties.random_onehot_projections].

        Args:
            batch (int): The number of examples `B`.
            m (int): The number of classes.
            generator (torch.Generator | None): The source of randomness; None: the global RNG.
            device (torch.device | str): The device to draw on.
            dtype (torch.dtype): The dtype to draw in.

        Returns:
            (Tensor): `(batch, m)`.
        """
        return P.random_onehot_projections(
            batch, m, projection=self.projection, generator=generator, device=device, dtype=dtype
        )

    def per_example(self, fwd, draw=None):
        """`||J_i^T r_i||^2` of each example (see [`projected_jacobian`][gradreg.penalties.projected_jacobian]).

        Args:
            fwd (Forward): The shared forward pass.
            draw (Tensor | None): What `draw` returned, `(*batch, m)`.

        Returns:
            (Tensor): The per-example penalty, shape `fwd.batch_shape`.
        """
        return P.projected_jacobian(fwd.logits, fwd.x, draw, self.norm)

    def objective(self, fwd, draw=None):
        """The projected logits `<z_i, r_i>` (the finite-difference objective).

        Args:
            fwd (Forward): The shared forward pass.
            draw (Tensor | None): What `draw` returned, `(*batch, m)`.

        Returns:
            (Tensor): Shape `fwd.batch_shape`.
        """
        return (fwd.logits * draw).sum(-1)


@register
@dataclass(frozen=True)
class ConfidencePenalty(Regularizer):
    """Confidence penalty: `mean_i sum_k p_ik log p_ik`, the negative entropy.

    The value is <= 0, so adding it with a positive weight rewards entropy. It needs no input
    gradient.

    The weight is per-example-mean: the paper's code *summed* over the batch, so its weight
    converts as `weight_here = weight_original * B` (0.01 there is 0.5 here at B = 50).
    Published weight at MNIST N=2000: 0.01 in the original's convention.

    Args:
        weight: The weight of the per-example mean: finite, >= 0.
        every: Apply on every k-th step only, with weight `k * weight`. Keyword-only.

    Raises:
        TypeError: `weight` is not a real number.
        ValueError: `weight` is negative, not finite or above `1e30`; `every` is not an
            integer >= 1.
    """

    needs_input_grad: ClassVar[bool] = False
    on_softmax: ClassVar[bool] = True
    aliases: ClassVar[tuple[str, ...]] = ("cp", "confidence")

    def per_example(self, fwd, draw=None):
        """`sum_k p_ik log p_ik` of each example (see [`confidence_penalty`][gradreg.penalties.confidence_penalty]).

        Args:
            fwd (Forward): The shared forward pass (only its logits are read).
            draw (Tensor | None): Unused (not random).

        Returns:
            (Tensor): The per-example penalty, shape `fwd.batch_shape`.
        """
        return P.confidence_penalty(fwd.logits)


# Kept for compatibility: the built-in regularizers by class name.
REGULARIZERS = dict(REGISTRY)
"""The built-in regularizers by class name: a copy of `REGISTRY` made before any user class is registered."""


# --------------------------------------------------------------------------- serialization


def type_name(cls: type) -> str:
    """The registry name of a built-in, else the import path `"module:QualName"`.

    The import path is used also for a user class registered with
    [`register`][gradreg.register], so a worker that never imported its module can still
    resolve it.

    Args:
        cls: A regularizer class.

    Returns:
        The name that `resolve` turns back into `cls`.
    """
    if REGISTRY.get(cls.__name__) is cls and cls.__module__.startswith("gradreg."):
        return cls.__name__
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve(name: str) -> type[Regularizer]:
    """A regularizer class from its registry name or import path `"module:ClassName"`.

    Args:
        name: A key of [`REGISTRY`][gradreg.REGISTRY] (a class name), or an import path.

    Returns:
        The `Regularizer` subclass.

    Raises:
        TypeError: The import path names something that is not a `Regularizer` subclass.
        ValueError: `name` is not in the registry, or the import path is malformed or cannot
            be imported (see `import_object`).
    """
    if ":" in name:
        cls = import_object(name, "regularizer")
        if not (isinstance(cls, type) and issubclass(cls, Regularizer)):
            raise TypeError(f"{name!r} is not a gradreg.Regularizer subclass")
        return cls
    if name not in REGISTRY:
        raise ValueError(f"unknown regularizer {name!r}; valid: {', '.join(REGISTRY)} or an import path 'module:Class'")
    return REGISTRY[name]


def import_object(path: str, what: str):
    """`"package.module:attr"` -> the object, with a one-line error naming what failed.

    Args:
        path: The import path; `attr` may be dotted (`"pkg.mod:Outer.Inner"`).
        what: What the object is, for the message (e.g. `"regularizer"`).

    Returns:
        The object.

    Raises:
        ValueError: `path` does not look like `"package.module:name"`, its module cannot be
            imported, or the module has no such attribute.
    """
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{what} import path {path!r} must look like 'package.module:name'")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"{what} import path {path!r}: cannot import module {module!r} ({e})") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} import path {path!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def to_dict(r: Regularizer) -> dict:
    """A regularizer as a JSON-ready dict: `{"name": type_name, **fields}`.

    Args:
        r: A regularizer.

    Returns:
        Its `type_name` under `"name"`, and every dataclass field (the weight included).
    """
    return {"name": type_name(type(r)), **{f.name: getattr(r, f.name) for f in dataclasses.fields(r)}}


def from_dict(d: dict) -> Regularizer:
    """The regularizer that `to_dict` wrote.

    Args:
        d: A dict with `"name"` (a registry name or import path) and the constructor's fields.

    Returns:
        A new regularizer.

    Raises:
        TypeError: The name resolves to something that is not a `Regularizer` subclass, or a
            field is not valid for its constructor.
        ValueError: The name is unknown, or a field's value is not valid.
    """
    d = dict(d)
    cls = resolve(d.pop("name"))
    return cls(**d)

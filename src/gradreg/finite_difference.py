"""Finite-difference penalties: input-gradient regularization without double backprop.

Every projected-gradient penalty has the form `P = mean_i ||v_i||^2` with
`v_i = d F / d x_i` for a scalar `F(x; theta) = sum_i f_i` -- DataGrad: `f_i = l_i`;
SpectReg, OneHot, RandomOneHot: `f_i = <z_i, r_i>`. Its parameter gradient is a
Hessian-vector product in input space:

```text
grad_theta P = (2/B) grad_theta [ d/dh F(x + h v_bar) ]_{h=0},   v_bar = v held constant,
```

so the surrogate `S = (2/B) (F(x + h v_bar) - F(x)) / h` (one-sided) or
`(2/B) (F(x + h v_bar) - F(x - h v_bar)) / (2h)` (central) has `grad_theta S ~ grad_theta P`,
and every pass is first-order: it trains models that have no double backward (custom
`autograd.Function` with `once_differentiable`, fused kernels, `torch.compile`). For
`norm="l1"` (`P = mean_i ||v_i||_1`) the direction is `sign(v_bar)` and the factor 1.

Step size. `h = rel * rms(x) / rms(d)` over each run's batch (`d` the direction), so the
perturbation `h d` is `rel` times the input in RMS, whatever the scales of `x` and `v`.
The error of the surrogate's gradient is O(rel) one-sided and O(rel^2) central (truncation),
plus ~ eps/rel (float cancellation in `F(x + h d) - F(x)`, eps = 1.2e-7 in float32): the
optimum is near sqrt(eps) = 3e-4 one-sided and eps^(1/3) = 5e-3 central. Measured on LeNet in
float32 (`tests/test_finite_difference.py`, see the defaults' note there): the defaults
`rel = 1e-3` (one-sided) and `1e-2` (central) give a parameter-gradient cosine similarity
to exact double backprop >= 0.999. In float64 (eps = 2.2e-16) the same trade-off puts the
optimum near 1e-8 one-sided and 1e-5 central; measured on a tanh MLP and LeNet with dropout
(DataGrad, SpectReg), the relative error at 1e-3 / 1e-2 was up to 2.8e-3 / 9.2e-4, at the
float64 defaults `1e-7` / `1e-5` at most 2.8e-7 / 9.2e-10 (1e-8 one-sided: 3.3e-8, but
1e-9 already rounds: 1.9e-7, so the default keeps a decade of margin).

Low precision. When the network computes in float16 or bfloat16 (autocast, or a half model;
`compute_dtype`: the coarsest of the logits', autocast's and the parameters' dtypes),
eps is 9.8e-4 or 7.8e-3 and those steps drown in rounding:
measured on LeNet (B=50, DataGrad) against exact float32, bfloat16 autocast at `rel = 1e-3`
one-sided gave a relative gradient error of 2.4 (cosine 0.37). The defaults there are the
measured best (`tests/test_finite_difference.py::test_fd_default_step_under_low_precision_autocast`):
float16 `1e-2` one-sided (error 0.03) and `3e-2` central (0.02; exact double backprop
under the same autocast: 0.02); bfloat16 `3e-2` and `6e-2` (0.12 both; exact: 0.12).

The surrogate is only what the loss carries: the value reported (and added to the loss's
*value*) is the true penalty `mean_i ||v_bar_i||^2`.

Replays. The shifted forward pass must see the same function as the first one: the same
dropout masks (the RNG is replayed), the same BatchNorm mode (batch statistics of the shifted
batch, the batch-sum convention of the exact path), and it must leave no trace (running
statistics are restored afterwards).

The step. `Rerun`, `penalty_term` and `fused_step` are the one implementation that
[`gradreg.regularized_loss`][gradreg.regularized_loss] (batch axes `(B,)`) and the ensemble
engine (`(K, B)`) both call, with one zero-weight rule (`trains`, `fuses`) and one way to
find the tensors a step trains (`step_leaves`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from . import penalties as P

SCHEMES = ("one_sided", "central")
DEFAULT_STEP = {"one_sided": 1e-3, "central": 1e-2}  # float32
STEP_BY_DTYPE = {  # the network's compute dtype -> scheme -> relative step (measured, above)
    torch.float16: {"one_sided": 1e-2, "central": 3e-2},
    torch.bfloat16: {"one_sided": 3e-2, "central": 6e-2},
    torch.float64: {"one_sided": 1e-7, "central": 1e-5},
}


def default_step(scheme: str, dtype: torch.dtype) -> float:
    """The default relative step for a network that computes in `dtype` (see `compute_dtype`).

    Args:
        scheme: `"one_sided"` or `"central"`.
        dtype: The network's compute dtype; float16, bfloat16 and float64 have their own
            defaults, any other dtype float32's.

    Returns:
        The relative step `rel` (see the module docstring for the measurements behind it).
    """
    return STEP_BY_DTYPE.get(dtype, DEFAULT_STEP)[scheme]


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes in on `device_type` when it is on there, else None.

    Args:
        device_type: A device type, e.g. `"cpu"` or `"cuda"`.

    Returns:
        Autocast's dtype on that device type, or None where autocast is off (or unknown there).
    """
    try:
        on = torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # torch < 2.4, or a device type autocast does not know
        on = device_type in ("cpu", "cuda") and (
            torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
        )
        if on:
            return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()
        return None
    return torch.get_autocast_dtype(device_type) if on else None


def compute_dtype(logits_dtype: torch.dtype, device_type: str, params=()) -> torch.dtype:
    """The lowest floating precision the network computes in.

    That is the coarsest of the logits' dtype, autocast's when it is on, and the parameters'.
    The logits alone can hide it: a half-precision body may end in `.float()`, and autocast
    runs softmax and the losses in float32.

    Args:
        logits_dtype: The dtype of the logits.
        device_type: The device type the network runs on (for autocast).
        params (Iterable[Tensor]): The network's parameters (default none); non-floating ones
            are ignored.

    Returns:
        The floating dtype with the largest machine epsilon among them.
    """
    found = {logits_dtype}
    amp = autocast_dtype(device_type)
    if amp is not None:
        found.add(amp)
    found.update(p.dtype for p in params if p.is_floating_point())
    return max((d for d in found if d.is_floating_point), key=lambda d: torch.finfo(d).eps)


def direction(v: Tensor, norm: str) -> tuple[Tensor, float]:
    """The finite-difference direction and the penalty's factor.

    Args:
        v: The input gradient `dF/dx`.
        norm: `"l2"` (squared) or `"l1"`.

    Returns:
        `(v, 2)` for squared L2, `(sign v, 1)` for L1.
    """
    return (v, 2.0) if norm == "l2" else (torch.sign(v), 1.0)


def rms(t: Tensor, batch_dims: int) -> Tensor:
    """Root mean square over everything but the leading `batch_dims - 1` (run) axes.

    Args:
        t: A tensor `(*runs, B, ...)`.
        batch_dims: The number of batch axes (runs and examples).

    Returns:
        One value per run, shape `t.shape[: batch_dims - 1]`.
    """
    return t.reshape(*t.shape[: batch_dims - 1], -1).pow(2).mean(-1).sqrt()


def step_size(x: Tensor, d: Tensor, rel: float, batch_dims: int) -> Tensor:
    """`h = rel * rms(x) / rms(d)` per run (0 where the direction is 0).

    Computed in float32 at least: in half precision the squares of a small gradient underflow
    to 0.

    Args:
        x: The input.
        d: The direction, shaped like `x`.
        rel: The relative step.
        batch_dims: The number of batch axes (runs and examples).

    Returns:
        `h`, one value per run, in float32 or wider (detached).
    """
    dt = torch.promote_types(x.dtype, torch.float32)
    rx, rd = rms(x.detach().to(dt), batch_dims), rms(d.detach().to(dt), batch_dims)
    tiny = torch.finfo(dt).tiny
    return torch.where(rd > 0, rel * rx.clamp_min(tiny) / rd.clamp_min(tiny), torch.zeros_like(rd))


def shifted(x: Tensor, h: Tensor, d: Tensor, sign: float) -> Tensor:
    """`x + sign * h * d`, detached, in `x`'s dtype; the sum is formed in `h`'s precision.

    Args:
        x: The input.
        h: The step, one value per run.
        d: The direction, shaped like `x`.
        sign: `1.0` or `-1.0`.

    Returns:
        The shifted input, shaped like `x`.
    """
    return (x.detach().to(h.dtype) + sign * broadcast_runs(h, d) * d.to(h.dtype)).to(x.dtype).detach()


def surrogate(f_plus: Tensor, f_minus: Tensor, h: Tensor, kappa: float, batch: int, scheme: str) -> Tensor:
    """`(kappa / B) (F(x + h d) - F(x [- h d])) / (h or 2h)` per run; 0 where h is 0.

    Args:
        f_plus: `F(x + h d)` per run.
        f_minus: `F(x)` (one-sided) or `F(x - h d)` (central) per run.
        h: The step per run.
        kappa: The penalty's factor (2 for squared L2, 1 for L1; see `direction`).
        batch: The number of examples `B`.
        scheme: `"one_sided"` or `"central"`.

    Returns:
        The surrogate per run.
    """
    span = h if scheme == "one_sided" else 2 * h
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (kappa / batch) * (f_plus - f_minus) / safe, torch.zeros_like(span))


def broadcast_runs(h: Tensor, like: Tensor) -> Tensor:
    """`h` (one value per run) shaped to multiply `like` (runs, batch, ...).

    Args:
        h: One value per run.
        like: The tensor to multiply.

    Returns:
        A view of `h` with trailing singleton axes up to `like.dim()`.
    """
    return h.reshape(tuple(h.shape) + (1,) * (like.dim() - h.dim()))


def device_rng(device: torch.device):
    """The module that holds `device`'s default random generator.

    Args:
        device (torch.device): The device the model runs on.

    Returns:
        (ModuleType | None): The module (`torch.cuda`, `torch.mps`, `torch.xpu`, ...), or None
        for the CPU's (and the meta device's).

    Raises:
        ValueError: Torch has no `get_rng_state`/`set_rng_state` for the device type, so its
            random draws (dropout) cannot be replayed.
    """
    if device.type in ("cpu", "meta"):
        return None
    getter = getattr(torch, "get_device_module", None)
    try:
        mod = getter(device.type) if getter is not None else getattr(torch, device.type)
    except (AttributeError, RuntimeError):
        mod = None
    if mod is None or not hasattr(mod, "get_rng_state") or not hasattr(mod, "set_rng_state"):
        raise ValueError(
            f"finite differences: cannot replay the random draws (dropout) of a {device.type!r} device: torch has "
            "no get_rng_state/set_rng_state for it; use method='double_backprop'"
        )
    return mod


class Replay:
    """Run a forward pass again as the first one ran: the same random draws, and no lasting change to buffers.

    `capture()` before the first pass; `with replay(): model(x2)`.

    Buffers (BatchNorm's running statistics) are swapped for copies during the replay, so its
    in-place updates touch neither the values nor the versions that the first pass's graph
    saved.

    Args:
        device: The device the model runs on (its random generator is replayed, with the
            CPU's).
        generators: Further generators the model draws from (default none).
        model (nn.Module | None): The model whose buffers are protected; None (or a plain
            callable): no buffers.

    Raises:
        ValueError: On entering the replay (and in `capture`), where the device's random state
            cannot be saved and restored (see `device_rng`).
    """

    def __init__(self, device: torch.device, generators: Sequence[torch.Generator] = (), model=None):
        self.device = torch.device(device)
        self.generators = list(generators)
        self.modules = [m for m in model.modules() if m._buffers] if isinstance(model, nn.Module) else []
        self.states: tuple | None = None

    def capture(self) -> Replay:
        """Save the random state (the CPU's, the device's and each generator's) before the first pass.

        Returns:
            This object.

        Raises:
            ValueError: The device's random state cannot be saved (see `device_rng`).
        """
        rng = device_rng(self.device)
        dev = rng.get_rng_state(self.device) if rng is not None else None
        self.states = (torch.get_rng_state(), dev, [g.get_state() for g in self.generators])
        return self

    @contextlib.contextmanager
    def __call__(self):
        assert self.states is not None, "Replay.capture() first"
        cpu, dev, gens = self.states
        rng = device_rng(self.device)
        originals = [dict(m._buffers) for m in self.modules]
        saved_gens = [g.get_state() for g in self.generators]
        fork = {"devices": [self.device], "device_type": self.device.type} if rng is not None else {"devices": []}
        try:
            for m in self.modules:
                for name, b in m._buffers.items():
                    if b is not None:
                        m._buffers[name] = b.detach().clone()
            with torch.random.fork_rng(**fork):
                torch.set_rng_state(cpu)
                if rng is not None:
                    rng.set_rng_state(dev, self.device)
                for g, st in zip(self.generators, gens):
                    g.set_state(st)
                yield
        finally:
            for m, orig in zip(self.modules, originals):
                m._buffers.update(orig)
            for g, st in zip(self.generators, saved_gens):
                g.set_state(st)


def _relu_kind(func) -> str | None:
    """`"relu"` or `"relu_"` (in place) for every spelling of ReLU, else None."""
    if func in (F.relu, torch.relu, Tensor.relu):
        return "relu"
    if func in (F.relu_, torch.relu_, Tensor.relu_):
        return "relu_"
    return None


_MAX_POOLS = {  # functional max-pooling -> (its with-indices kernel, spatial dims)
    F.max_pool1d: (F.max_pool1d_with_indices, 1),
    F.max_pool2d: (F.max_pool2d_with_indices, 2),
    F.max_pool3d: (F.max_pool3d_with_indices, 3),
    F.max_pool1d_with_indices: (F.max_pool1d_with_indices, 1),
    F.max_pool2d_with_indices: (F.max_pool2d_with_indices, 2),
    F.max_pool3d_with_indices: (F.max_pool3d_with_indices, 3),
}


def frozen_relu(inp: Tensor, mask: Tensor, inplace: bool) -> Tensor:
    """ReLU through a recorded pattern: `inp * mask`, a linear map of `inp`.

    Args:
        inp: The pre-activation.
        mask: The first pass's `out > 0`, shaped like `inp`.
        inplace: Multiply `inp` in place (for `relu_` and `inplace=True`).

    Returns:
        `inp * mask`, in `inp`'s dtype.
    """
    m = mask.to(inp.dtype)
    return inp.mul_(m) if inplace else inp * m


def frozen_max_pool(inp: Tensor, argmax: Tensor, dims: int) -> Tensor:
    """Max-pooling through recorded argmaxes: a gather, linear in `inp`.

    Args:
        inp: The input of the pooling.
        argmax: Flat indices into each plane's `dims` spatial axes, as the with-indices kernels
            return them.
        dims: The number of spatial axes (1, 2 or 3).

    Returns:
        The pooled tensor, shaped like `argmax`.
    """
    return inp.flatten(-dims).gather(-1, argmax.flatten(-dims)).view(argmax.shape)


def _under_checkpoint() -> bool:
    """Whether a non-reentrant `torch.utils.checkpoint` segment is packing saved tensors now."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    hooks = top(False) if top is not None else None
    return hooks is not None and "_checkpoint_hook" in getattr(hooks[0], "__qualname__", "")


CHECKPOINT_ERROR = (
    "finite differences: the model uses gradient checkpointing (torch.utils.checkpoint), which recomputes "
    "its forward during backward(), outside the frozen kinks of the shifted pass, so the surrogate's gradient "
    "would be wrong; use method='double_backprop', or train without checkpointing"
)


class _KinkMode(TorchFunctionMode):
    """Sees every torch call of a forward pass. Recording, it saves each ReLU's mask and
    each max-pooling's argmax, in call order; replaying, the n-th kinked call applies the
    n-th pattern, and a call that does not match it (another kind or shape, or one too many:
    the model's control flow depends on its input) is an error, as is one too few
    (`check_complete`)."""

    def __init__(self, patterns: list, replaying: bool):
        super().__init__()
        self.patterns, self.replaying, self.calls = patterns, replaying, 0

    def check_complete(self) -> None:
        if self.replaying and self.calls != len(self.patterns):
            raise RuntimeError(
                f"finite differences: the shifted pass made {self.calls} ReLU/max-pooling calls, the first pass "
                f"{len(self.patterns)}; the model's control flow depends on its input, so the two passes are "
                "not the same function: use method='double_backprop'"
            )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        relu = _relu_kind(func)
        pool = _MAX_POOLS.get(func)
        if relu is None and pool is None:
            return func(*args, **kwargs)
        inp = args[0] if args else kwargs["input"]
        with_indices = pool is not None and (
            func is pool[0] or bool(kwargs.get("return_indices", args[6] if len(args) > 6 else False))
        )
        positional = args[1] if func is F.relu and len(args) > 1 else False  # F.relu(x, True)
        inplace = relu == "relu_" or bool(kwargs.get("inplace", positional))
        key = ("relu" if relu else f"pool{pool[1]}", tuple(inp.shape))  # type: ignore[index]
        if self.replaying:
            if _under_checkpoint():
                raise RuntimeError(CHECKPOINT_ERROR)
            n, self.calls = self.calls, self.calls + 1
            if n >= len(self.patterns) or self.patterns[n][0] != key:
                first = self.patterns[n][0] if n < len(self.patterns) else None
                seen = f"{first[0]} of shape {first[1]}" if first else "none"
                raise RuntimeError(
                    f"finite differences: kinked call {n + 1} of the shifted pass ({key[0]} of shape {key[1]}) does "
                    f"not match the first pass's ({seen}); the model's control flow depends on its input, so the "
                    "two passes are not the same function: use method='double_backprop'"
                )
            pattern = self.patterns[n][1]
            if relu:
                return frozen_relu(inp, pattern, inplace)
            out = frozen_max_pool(inp, pattern, pool[1])  # type: ignore[index]
            return (out, pattern) if with_indices else out
        if relu:
            out = func(*args, **kwargs)
            self.patterns.append((key, out > 0))
            return out
        kw = {k: v for k, v in kwargs.items() if k != "return_indices"}
        out, idx = pool[0](*args[:6], **kw)  # type: ignore[index]
        self.patterns.append((key, idx))
        return (out, idx) if with_indices else out


class FrozenKinks:
    """The shifted pass through the *same* piecewise-linear pieces as the first pass.

    ReLU and max-pooling are kinked: a shifted input that moves a pre-activation across 0,
    or changes a pooling window's argmax, changes the parameter gradient by O(1), and the
    finite difference divides that by h. Summed over the units that cross (a number
    proportional to h, with random signs), the error grows like h^(-1/2) -- measured on LeNet:
    10x the gradient itself; on a small `nn.TransformerEncoder` (ReLU inside its
    feed-forward, a functional call) a parameter-gradient cosine of 0.89 to exact. Double
    backprop differentiates with the activation pattern held fixed; so does this:
    `record` watches the first pass through a `TorchFunctionMode` and saves, in call
    order, every ReLU's mask (`nn.ReLU`, `F.relu`, `torch.relu`, `Tensor.relu` and
    their in-place forms) and every max-pooling's argmax (`nn.MaxPool1d/2d/3d` and the
    functional forms); inside `replay` each of those calls applies its recorded pattern
    instead of recomputing it. Along the direction the function is then smooth, and the
    surrogate's error is O(h) (O(h^2) central) again. Other kinked functions (`relu6`,
    `hardtanh`, `leaky_relu`, `clamp`, `abs`) are computed as usual: their kinks add
    the error above (smooth activations such as GELU, SiLU and tanh need nothing).

    A model that runs under `vmap` (the engine's `torch.func` ensembles, marked by
    `records_kinks_inside = True`) cannot keep patterns recorded inside the transform:
    batched tensors must not outlive it. Such a model calls `vmap` instead of
    `torch.func.vmap` while a pass is in progress, and each member's patterns leave the
    transform as extra outputs (stacked on the member axis) and re-enter it as extra inputs.
    `FrozenKinks(None)` does nothing.

    The shifted pass must make the same kinked calls, in the same order, as the first: a model
    whose control flow depends on its input is refused with a clear error, and so is gradient
    checkpointing (`torch.utils.checkpoint` recomputes the forward inside `backward()`,
    where no pattern applies; the reentrant form is caught by `core.check_no_reentrant_checkpoint`).

    Args:
        model: The model; None: do nothing. A model with `records_kinks_inside = True` is
            handed this object as its `frozen_kinks` during a pass, and calls `vmap`.

    Raises:
        RuntimeError: In the shifted pass, where a kinked call does not match the first
            pass's (another kind or shape, one too many or one too few), or under gradient
            checkpointing.
    """

    def __init__(self, model) -> None:
        self.enabled = model is not None
        self.inside = model if getattr(model, "records_kinks_inside", False) else None
        self.patterns: list = []
        self.replaying: bool | None = None  # inside a vmapped model: the pass in progress

    @contextlib.contextmanager
    def record(self):
        """The first pass: every kinked call as usual, its pattern saved.

        Yields:
            This object.
        """
        self.patterns = []
        with self._pass(replaying=False):
            yield self

    @contextlib.contextmanager
    def replay(self):
        """The shifted pass: the n-th kinked call applies the n-th recorded pattern.

        Yields:
            This object.

        Raises:
            RuntimeError: A kinked call does not match the recorded one, the pass makes fewer
                kinked calls than the first, or it runs under gradient checkpointing.
        """
        with self._pass(replaying=True):
            yield self

    @contextlib.contextmanager
    def _pass(self, replaying: bool):
        if not self.enabled:
            yield
        elif self.inside is not None:  # the model calls self.vmap during the pass
            self.inside.frozen_kinks, self.replaying = self, replaying
            try:
                yield
            finally:
                self.inside.frozen_kinks, self.replaying = None, None
        else:
            with _KinkMode(self.patterns, replaying=replaying) as mode:
                yield
            mode.check_complete()

    def vmap(self, fn, in_dims: tuple, randomness: str, *args):
        """`torch.func.vmap(fn, in_dims, randomness=randomness)(*args)`, recording or replaying each member's kinks.

        Args:
            fn: The per-member function.
            in_dims: `vmap`'s `in_dims` for `args`.
            randomness: `vmap`'s `randomness` (e.g. `"different"`).
            *args: The arguments to map over.

        Returns:
            (Any): What the vmapped `fn` returns.

        Raises:
            RuntimeError: Replaying, a member's kinked calls do not match its recorded ones.
        """
        if not self.replaying:
            keys: list = []

            def recording(*a):
                patterns: list = []
                with _KinkMode(patterns, replaying=False):
                    out = fn(*a)
                keys[:] = [k for k, _ in patterns]
                return out, tuple(p for _, p in patterns)

            out, stacked = torch.func.vmap(recording, in_dims=in_dims, randomness=randomness)(*args)
            self.patterns = list(zip(keys, stacked))
            return out
        keys = [k for k, _ in self.patterns]
        stacked = tuple(p for _, p in self.patterns)

        def replaying(*a):
            n = len(a) - len(stacked)
            with _KinkMode(list(zip(keys, a[n:])), replaying=True) as mode:
                out = fn(*a[:n])
            mode.check_complete()
            return out

        dims = (*in_dims, *([0] * len(stacked)))
        return torch.func.vmap(replaying, in_dims=dims, randomness=randomness)(*args, *stacked)


# --------------------------------------------------------------------------- the step
#
# The one finite-difference step, for a single run and for the ensemble engine alike: every
# tensor has the runs' axes first, so "per run" means shape `fwd.batch_shape[:-1]` -- `()`
# for one run (batch `(B,)`), `(K,)` for K members (batch `(K, B)`), as in
# `gradreg.penalties`. `reg` is a `gradreg.regularizers.ProjectedGradient` and
# `fwd` a `gradreg.Forward` whose `x` is the input leaf that requires grad (typed
# `Any` here: this module imports nothing from gradreg but the penalties, so that the
# regularizers and the entry points can both import it without a cycle).


class Rerun:
    """The first forward pass, and the same function again at a shifted input.

    `with rerun.first_pass(): logits = model(x)` captures the random state
    (`Replay`) and records the ReLU and max-pooling patterns (`FrozenKinks`);
    `rerun(fwd, xs)` then runs `model(xs)` with the same dropout masks and the same
    pieces, leaving no trace in the buffers.

    Args:
        model: The network, `x -> logits`.
        per_example_loss: `(logits, y) -> (*batch,)`, the data loss of each example.
        device: The device the model runs on (its random generator is replayed).
        generators: Further generators the model draws from (the engine's dropout streams).
    """

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        per_example_loss: Callable[[Tensor, Tensor], Tensor],
        device: torch.device,
        generators: Sequence[torch.Generator] = (),
    ) -> None:
        self.model, self.per_example_loss, self.device = model, per_example_loss, torch.device(device)
        self.replay = Replay(self.device, generators, model)
        self.kinks = FrozenKinks(model)

    @contextlib.contextmanager
    def first_pass(self) -> Iterator[Rerun]:
        """Run the first forward pass inside: captures the random state, records the kinks.

        Yields:
            This object.
        """
        self.replay.capture()
        with self.kinks.record():
            yield self

    def __call__(self, fwd: Any, xs: Tensor) -> Any:
        """The forward pass at `xs`, as the first one ran.

        Args:
            fwd: The first pass's [`gradreg.Forward`][gradreg.Forward] (its targets are reused).
            xs: The shifted input, shaped like `fwd.x`.

        Returns:
            `fwd` with the shifted input, its logits and its per-example loss.
        """
        with self.replay(), self.kinks.replay():
            logits = self.model(xs)
        return fwd._replace(x=xs, logits=logits, per_example_loss=self.per_example_loss(logits, fwd.y))

    def compute_dtype(self, logits: Tensor) -> torch.dtype:
        """`compute_dtype` of the first pass: its logits, autocast and the model's parameters.

        Args:
            logits: The first pass's logits.

        Returns:
            The coarsest floating dtype the network computes in (it sets the default step).
        """
        params = self.model.parameters() if isinstance(self.model, nn.Module) else ()
        return compute_dtype(logits.dtype, self.device.type, params)


def trains(weights: Iterable[float]) -> bool:
    """The zero-weight rule: a run whose weight is 0 trains as it would without the regularizer.

    Its penalty is still measured (one backward pass gives `v`), but nothing is added to its
    loss; the shifted pass runs only when some run trains, and the fused step, which forms
    the data gradient its own way, only when every run does (`fuses`).

    Args:
        weights: The effective weight of each run (one for a single run).

    Returns:
        Whether any run's weight is nonzero.
    """
    return any(w != 0 for w in weights)


def fuses(active: Sequence[Any], weights: Iterable[float]) -> bool:
    """Whether a step takes the fused path (`fused_step`).

    Args:
        active: The regularizers applied at this step (one per kind, for an ensemble).
        weights: The effective weight of each run for the one in `active`.

    Returns:
        True when `active` is one finite-difference regularizer whose class fuses
        (`fuses_fd_step`, inherited by subclasses) and every run's weight is nonzero.
    """
    if len(active) != 1:
        return False
    (reg,) = active
    ws = list(weights)
    return bool(getattr(reg, "finite_difference", False) and type(reg).fuses_fd_step and ws and all(ws))


def step_leaves(t: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    """The tensors a step trains: every leaf of `t`'s graph but the inputs.

    That is the model's parameters that `t` uses and any other leaf it reaches (a learnable
    loss, a weight from outside the module), so that none loses its gradient.

    Args:
        t: The first pass's objective.
        inputs: The input leaves, which are data, not trained.

    Returns:
        The leaves, in [`gradreg.penalties.graph_leaves`][gradreg.penalties.graph_leaves] order.
    """
    return [v for v in P.graph_leaves(t) if not any(v is u for u in inputs)]


def _shifted_surrogate(
    reg: Any, fwd: Any, draw: Tensor | None, rerun: Rerun, v: Tensor, base: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """The exact penalty, the surrogate and the step for a known `v = dF/dx` and `F(x)`.

    Args:
        reg: The regularizer.
        fwd: The first pass.
        draw: Its projections for this batch (`None` if it draws none).
        rerun: Replays the first pass at a shifted input.
        v: The input gradient of `F`, detached, shaped like `fwd.x`.
        base: `F(x)` per run: with its graph (the one-sided surrogate then trains through
            it), or detached (the fused step carries that gradient itself).
        dtype: The network's compute dtype (`compute_dtype`), which sets the default step.

    Returns:
        `(penalty, surrogate, h)`, each per run; the penalty `mean_i ||v_i||` is detached.
    """
    bd, b = fwd.batch_dims, fwd.logits.shape[-2]
    pen = reg.gradient_norm(v, bd).mean(-1)
    d, kappa = direction(v, getattr(reg, "norm", "l2"))
    h = step_size(fwd.x, d, reg.relative_step(dtype), bd)  # a constant: nothing flows back through h

    def f_at(sign: float) -> Tensor:
        return reg.objective(rerun(fwd, shifted(fwd.x, h, d, sign)), draw).sum(-1)

    if reg.fd_scheme == "central":
        surr = surrogate(f_at(1.0), f_at(-1.0), h, kappa, b, "central")
    else:
        surr = surrogate(f_at(1.0), base, h, kappa, b, "one_sided")
    return pen.detach(), surr, h


def penalty_term(
    reg: Any,
    fwd: Any,
    draw: Tensor | None,
    rerun: Rerun,
    weight: float | Tensor,
    dtype: torch.dtype,
    *,
    shift: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """One finite-difference regularizer's penalty and its term of the loss.

    The term is `weight * (S - S.detach() + P)`: the exact penalty `P` as its value and the
    surrogate `S`'s gradient (see the module docstring).

    Args:
        reg: The regularizer (`method="finite_difference"`).
        fwd: The first pass; `fwd.x` the input leaf, whose graph is kept for the caller.
        draw: Its projections for this batch, per run (`None` if it draws none).
        rerun: Replays the first pass at a shifted input.
        weight: The effective weight: a float for a single run, a tensor per run otherwise.
        dtype: The network's compute dtype (`Rerun.compute_dtype`).
        shift: False where no run trains (`trains`): the shifted pass is skipped.

    Returns:
        `(penalty, term)`: the penalty per run, detached, and the loss term per run, or
        None without `shift`.
    """
    f = reg.objective(fwd, draw).sum(-1)
    (gx,) = torch.autograd.grad(f.sum(), fwd.x, retain_graph=True)
    v = gx.detach()
    if not shift:
        return reg.gradient_norm(v, fwd.batch_dims).mean(-1), None
    pen, surr, _ = _shifted_surrogate(reg, fwd, draw, rerun, v, f, dtype)
    return pen, weight * (surr - surr.detach() + pen)


def fused_step(
    reg: Any, fwd: Any, rerun: Rerun, weight: float | Tensor, dtype: torch.dtype, data_scale: float
) -> tuple[Tensor, Tensor] | None:
    """The data loss and one finite-difference regularizer whose objective is that loss, fused.

    For a regularizer that fuses (`fuses_fd_step`: its `F` is the summed data loss, as
    DataGrad's is), one backward pass at `x` gives both `v` and the data gradient `G`
    of every leaf; one forward/backward pass at `x + h d` (two, central) gives the rest.
    `G` is carried into the returned objective with the coefficient of each run:
    `1 / data_scale - weight * kappa / (B h)` one-sided (`F(x)` enters the surrogate with
    that factor), `1 / data_scale` central, and `1 / data_scale` where `h` is 0.

    Args:
        reg: The regularizer (see `fuses`).
        fwd: The first pass; its graph is freed here.
        rerun: Replays the first pass at a shifted input.
        weight: The effective weight: a float for a single run, a tensor per run otherwise.
        dtype: The network's compute dtype (`Rerun.compute_dtype`).
        data_scale: The data loss is `F / data_scale` (B for a batch mean, 1 for a sum).

    Returns:
        `(objective, penalty)`: a scalar whose `backward()` gives every leaf its gradient
        of the data loss plus the weighted penalty (its value is not the loss), and the
        penalty per run, detached; or None where the loss trains no leaf.
    """
    x = fwd.x
    f = reg.objective(fwd, None).sum(-1)
    leaves = step_leaves(f, [x])
    if not leaves:
        return None
    gx, *g_leaves = torch.autograd.grad(f.sum(), [x, *leaves], allow_unused=True)
    v = gx.detach()
    pen, surr, h = _shifted_surrogate(reg, fwd, None, rerun, v, f.detach(), dtype)
    _, kappa = direction(v, getattr(reg, "norm", "l2"))
    b = fwd.logits.shape[-2]
    if reg.fd_scheme == "one_sided":  # a tensor (no host sync); h = 0 (v = 0) leaves the data gradient alone
        safe = torch.where(h > 0, h, torch.ones_like(h))
        coef = torch.where(h > 0, 1.0 / data_scale - weight * kappa / (b * safe), torch.full_like(h, 1.0 / data_scale))
    else:
        coef = torch.full_like(h, 1.0 / data_scale)
    have = [(p, g) for p, g in zip(leaves, g_leaves) if g is not None]
    carried = carry_gradients([p for p, _ in have], [broadcast_runs(coef.to(g.dtype), g) * g for _, g in have])
    return carried + (weight * surr).sum(), pen


class _CarryGradients(torch.autograd.Function):
    """A zero scalar whose gradient with respect to each of `params` is the given tensor
    (times the incoming gradient, so a scaled loss scales it too): one autograd node that
    carries gradients already computed into the returned loss's `backward()`."""

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
    """A zero scalar whose gradient with respect to each parameter is the given tensor.

    Args:
        params: The tensors to train.
        grads: One gradient per parameter, already computed.

    Returns:
        `0`, with `d/dp = grad` for each `p` (times whatever scales it); a plain zero
        when `params` is empty.
    """
    if not params:
        return torch.zeros(())
    return _CarryGradients.apply([g.detach() for g in grads], *params)

"""One training step for K members at once, every penalty through the regularizer objects.

`EnsembleTrainer` holds the members' ensemble model (packed, or `torch.func`), their optimizer
and their random streams. `EnsembleTrainer.step` runs one forward pass for all members, the
data loss, and each regularizer *kind* once for all members through `Regularizer.per_example`
-- the code `gradreg.regularized_loss` runs -- with each member's own weight and each member's
own random draws (`Regularizer.draw` from the member's generator, so `projection="batch"` means
one r per member's batch). All members of a chunk have the same regularizer kinds
(`gradreg.ensemble.plan`), so none pays for a penalty it does not have, and none takes an input
gradient when no active kind needs one.

The bookkeeping around the step (evaluation, loss windows, divergence, checkpoints, probes) is
the single run's, `gradreg.train.RunState`, driven by `gradreg.ensemble.loop.train_part`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Union, cast

import torch
from torch import Tensor, nn

from .. import data as D
from .. import datasets
from .. import finite_difference as FD
from ..config import TrainConfig
from ..core import batch_data_loss, per_example_loss, resolve_method, warn_if_projection_vanishes
from ..models import build_model
from ..regularizers import Forward
from ..streams import piecewise_lr, stream_seed
from .functional import FunctionalEnsemble
from .optim import PackedOptimizer
from .pack import NotPackable, PackedModel

STRATEGIES = ("auto", "packed", "vmap", "sequential")


def input_shape(cfg: TrainConfig) -> tuple:
    """The shape of one input of `cfg`'s dataset, without the batch axis."""
    return datasets.INPUT_SHAPES[cfg.dataset]


EnsembleModel = Union[PackedModel, FunctionalEnsemble]  # noqa: UP007 (a runtime alias)


def build_ensemble(models: Sequence[nn.Module], strategy: str) -> EnsembleModel:
    """The members as one ensemble model.

    Args:
        models: The members, one architecture.
        strategy: `"packed"`: a `PackedModel`; `"vmap"`: a `FunctionalEnsemble`.

    Returns:
        The ensemble model, mapping `(K, B, *in)` to `(K, B, m)`.

    Raises:
        NotPackable: `"packed"`, and a layer the packer does not know.
        ValueError: Another strategy.
    """
    if strategy == "packed":
        return PackedModel(models)
    if strategy == "vmap":
        return FunctionalEnsemble(models)
    raise ValueError(f"no ensemble model for strategy {strategy!r}")


def choose_strategy(cfg: TrainConfig) -> tuple[str, str]:
    """What `strategy="auto"` trains `cfg`'s runs with on a GPU.

    Returns:
        `(strategy, why)`: `"packed"` where the packer knows every layer, else `"vmap"` if a
        2-member trial step through `torch.func` works, else `"sequential"` (one run at a
        time); `why` says why the packer (and vmap) could not be used, `""` where it could.
    """
    singles = [build_model(cfg.replace(seed=s), torch.Generator().manual_seed(s)) for s in (1, 2)]
    try:
        PackedModel(singles)
        return "packed", ""
    except NotPackable as e:
        why = str(e)
    try:
        trainer = EnsembleTrainer(
            [cfg.replace(seed=1), cfg.replace(seed=2)], torch.device("cpu"), torch.float32, "vmap"
        )
        x = torch.randn(2, min(cfg.batch_size, 4), *input_shape(cfg))
        y = (
            torch.zeros(2, x.shape[1], dtype=torch.long)
            if cfg.loss == "cross_entropy"
            else torch.zeros(2, x.shape[1], 1)
        )
        trainer.step(x, y, 0)
        return "vmap", why
    except Exception as e:  # any failure of vmap on this module means: train one at a time
        return "sequential", f"{why}; torch.func.vmap failed too ({type(e).__name__}: {str(e).splitlines()[0]})"


class EnsembleTrainer:
    """K members' ensemble model, optimizer and per-member random streams.

    `step` does one training step on a member-major batch. Used by the engine and by
    `gradreg bench`.

    Args:
        cfgs: The members' configs: one ensemble key (`gradreg.ensemble.plan.ensemble_key`).
        device: Where they train.
        dtype: The compute dtype.
        strategy: `"packed"` or `"vmap"` (`build_ensemble`).
    """

    def __init__(self, cfgs: Sequence[TrainConfig], device: torch.device, dtype: torch.dtype, strategy: str = "packed"):
        c0 = cfgs[0]
        self.cfgs, self.c0, self.k, self.device, self.dtype = list(cfgs), c0, len(cfgs), device, dtype
        singles = [build_model(c, torch.Generator().manual_seed(stream_seed(c.seed, "init"))) for c in cfgs]
        self.model: EnsembleModel = build_ensemble(singles, strategy).to(device=device, dtype=dtype)
        self.model.train()
        self.dropout_gens = [torch.Generator(device=device).manual_seed(stream_seed(c.seed, "dropout")) for c in cfgs]
        self.model.set_dropout_generators(self.dropout_gens)
        self.decayed = self.model.decayed_parameters()
        self.opt = PackedOptimizer(list(self.model.parameters()), c0.optimizer, self.k)
        self.proj_gens = [torch.Generator(device=device).manual_seed(stream_seed(c.seed, "projections")) for c in cfgs]
        self.aug_gens = [torch.Generator(device=device).manual_seed(stream_seed(c.seed, "augment")) for c in cfgs]
        # Every member has the same regularizer kinds, in the same order (plan.ensemble_key).
        self.regs = [list(c.regularizers) for c in cfgs]
        self.kinds = self.regs[0]
        n = len(self.kinds)
        self.weights = torch.tensor(
            [[r.effective_weight for r in regs] for regs in self.regs], dtype=dtype, device=device
        ).view(self.k, n)
        self.wd = torch.tensor([c.weight_decay for c in cfgs], device=device, dtype=dtype)
        self.any_wd = any(c.weight_decay for c in cfgs)
        self.base_lr = torch.tensor([c.lr for c in cfgs], device=device, dtype=torch.float64)

    def active(self, step: int) -> list[int]:
        """The regularizer slots applied at `step` (a lazy one skips steps)."""
        return [s for s, r in enumerate(self.kinds) if r.active(step)]

    def _draws(self, s: int, b: int, m: int) -> Tensor | None:
        """Slot `s`'s draws for every member, each from its own generator, stacked `(K, ...)`.

        Args:
            s: The slot.
            b: The batch size.
            m: The number of outputs.

        Returns:
            The draws, or None where the slot's kind draws nothing.
        """
        first = self.regs[0][s].draw(b, m, self.proj_gens[0], self.device, self.dtype)
        if first is None:
            return None
        rest = [self.regs[i][s].draw(b, m, self.proj_gens[i], self.device, self.dtype) for i in range(1, self.k)]
        return torch.stack([first, *cast(list[Tensor], rest)])  # one kind per slot: all draw, or none

    def step(self, xb: Tensor, yb: Tensor, step: int) -> tuple[Tensor, list[int]]:
        """One training step of every member.

        Args:
            xb: The members' batches, `(K, B, *in)`.
            yb: Their targets, `(K, B[, ...])`.
            step: The step, from 0 (the learning-rate schedule and lazy regularizers).

        Returns:
            `(terms, active)`: the detached terms `(K, 1 + slots)` -- the data loss, then each
            slot's unweighted penalty, NaN where a lazy slot was skipped -- and the active slots.
        """
        c0, k = self.c0, self.k
        lr = self.base_lr * piecewise_lr(step, 1.0, c0.steps, c0.lr_milestones, c0.lr_gamma)
        if c0.augment:
            xb = torch.stack([D.random_translate_flip(xb[mi], self.aug_gens[mi]) for mi in range(k)])
        active = self.active(step)
        logits, wrt, rerun = self._forward(xb, yb, active)
        fd = [s for s in active if getattr(self.kinds[s], "finite_difference", False)]
        b, m = logits.shape[1], logits.shape[2]
        pel = per_example_loss(logits, yb, c0.loss)
        data_loss = batch_data_loss(pel, c0.loss)  # (K,)
        fwd = Forward(wrt, logits, yb, pel)
        terms = torch.full((k, 1 + len(self.kinds)), float("nan"), dtype=data_loss.dtype, device=data_loss.device)
        terms[:, 0] = data_loss.detach()
        total = data_loss
        draws = {s: self._draws(s, b, m) for s in active}  # each member's draws in its list order
        dtype = rerun.compute_dtype(logits) if rerun is not None else self.dtype
        if len(active) == 1 and FD.fuses(
            [self.kinds[active[0]]], [regs[active[0]].effective_weight for regs in self.regs]
        ):
            assert rerun is not None
            s = active[0]
            scale = 1.0 if self.c0.loss == "half_sse" else float(b)  # data = F / scale
            fused = FD.fused_step(self.kinds[s], fwd, rerun, self.weights[:, s], dtype, scale)
            if fused is not None:
                total, terms[:, 1 + s] = fused
                if self.any_wd:
                    total = total + self._decay().sum()
                self._apply(total, lr)
                return terms, active
        for s in active:
            reg = self.kinds[s]
            if s in fd:
                assert rerun is not None
                weights = [regs[s].effective_weight for regs in self.regs]
                pen, term = FD.penalty_term(
                    reg, fwd, draws[s], rerun, self.weights[:, s], dtype, shift=FD.trains(weights)
                )
                if term is not None:
                    total = total + term
            else:
                pen = reg.checked(fwd, draws[s]).mean(-1)  # (K,)
                total = total + self.weights[:, s] * pen
            warn_if_projection_vanishes(reg, fwd, pen)
            terms[:, 1 + s] = pen.detach()
        if self.any_wd:
            total = total + self._decay()
        self._apply(total.sum(), lr)
        return terms, active

    def _forward(self, xb: Tensor, yb: Tensor, active: list[int]) -> tuple[Tensor, Tensor, FD.Rerun | None]:
        """The members' forward pass, after resolving the active `method="auto"` slots.

        Args:
            xb: The batch, `(K, B, *in)`.
            yb: Its targets.
            active: The slots applied at this step.

        Returns:
            `(logits, wrt, rerun)`: the logits `(K, B, m)`; what the penalties differentiate by
            (the input, which requires grad when an active slot needs an input gradient, or the
            `wrt` submodule's output); and, when a slot takes finite differences, the rerun whose
            first pass this was (else None).
        """
        wrt = self.c0.wrt
        if wrt is not None:  # a hidden-layer penalty is exact (finite differences perturb the input)
            return *self._forward_capturing(xb.detach(), wrt), None
        self._resolve_auto(active, xb, yb)
        needs_grad = any(self.kinds[s].needs_input_grad for s in active)
        x = xb.detach().requires_grad_(needs_grad)
        if any(getattr(self.kinds[s], "finite_difference", False) for s in active):
            loss = self.c0.loss
            rerun = FD.Rerun(self.model, lambda z, t: per_example_loss(z, t, loss), self.device, self.dropout_gens)
            with rerun.first_pass():
                return self.model(x), x, rerun
        return self.model(x), x, None

    def _decay(self) -> Tensor:
        """Each member's weight-decay term, `wd * 1/2 sum ||w||^2`, `(K,)`."""
        return self.wd * 0.5 * sum(p.pow(2).flatten(1).sum(1) for p in self.decayed)

    def _apply(self, objective: Tensor, lr: Tensor) -> None:
        """Backpropagate `objective` and take the optimizer step.

        Args:
            objective: A scalar whose gradient is the step's.
            lr: Each member's learning rate at this step.
        """
        for p in self.model.parameters():
            p.grad = None
        objective.backward()
        self.opt.step(lr)

    def _resolve_auto(self, active: list[int], xb: Tensor, yb: Tensor) -> None:
        """Resolve each active `method="auto"` slot once, for every member at once.

        This is `gradreg.core.resolve_method` on the ensemble model; it warns where it falls back.

        Args:
            active: The slots applied at this step.
            xb: The batch, `(K, B, *in)`.
            yb: Its targets.
        """
        for s in active:
            if not self.kinds[s].auto_method:
                continue
            resolved = resolve_method(
                self.kinds[s], self.model, xb, yb, self.c0.loss, generators=self.dropout_gens, ensemble=True
            )
            method = cast(Any, resolved).method
            self.regs = [[*regs[:s], cast(Any, regs[s]).with_method(method), *regs[s + 1 :]] for regs in self.regs]
            self.kinds = self.regs[0]

    def _forward_capturing(self, x: Tensor, name: str) -> tuple[Tensor, Tensor]:
        """The logits, and submodule `name`'s output laid out `(K, B, ...)`.

        The rest of the forward pass depends on that very tensor, so it can be differentiated by.

        Args:
            x: The inputs, `(K, B, *in)`.
            name: The submodule, as the single model names it.

        Returns:
            `(logits, activation)`.

        Raises:
            ValueError: The model is not packed, has no such submodule, or runs it other than once.
        """
        if not isinstance(self.model, PackedModel):
            raise ValueError("wrt (a hidden layer) needs the packed strategy in the engine")
        module = dict(self.model.net.named_modules()).get(name)
        if module is None:
            raise ValueError(f"wrt={name!r}: the model has no submodule of that name")
        k, seen = self.k, []

        def hook(mod, args, out):
            b = out.shape[0]
            act = out.reshape(b, k, -1, *out.shape[2:]).transpose(0, 1)  # (K, B, C, ...): member k's channels
            seen.append(act)
            return act.transpose(0, 1).reshape(out.shape)

        handle = module.register_forward_hook(hook)
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise ValueError(f"wrt={name!r}: the submodule ran {len(seen)} times in one forward pass, not once")
        return logits, seen[0]

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """The model, optimizer and every member's random streams, for a checkpoint."""
        return {
            "model": {n: t.detach().clone() for n, t in self.model.state_dict().items()},
            "opt": self.opt.state_dict(),
            "dropout_gens": [g.get_state() for g in self.dropout_gens],
            "proj_gens": [g.get_state() for g in self.proj_gens],
            "aug_gens": [g.get_state() for g in self.aug_gens],
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restore what `state_dict` returned."""
        self.model.load_state_dict(sd["model"])
        self.opt.load_state_dict(sd["opt"])
        for gens, key in (
            (self.dropout_gens, "dropout_gens"),
            (self.proj_gens, "proj_gens"),
            (self.aug_gens, "aug_gens"),
        ):
            for g, s in zip(gens, sd[key]):
                g.set_state(s)


def measure_member_bytes(cfg: TrainConfig, device: torch.device, strategy: str = "packed") -> int:
    """Peak CUDA memory of one training step per member, from a 2-member trial step.

    Args:
        cfg: The runs' config.
        device: The CUDA device.
        strategy: `"packed"` or `"vmap"`.

    Returns:
        Bytes per member.
    """
    k = 2
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    trainer = EnsembleTrainer([cfg.replace(seed=s) for s in range(1, k + 1)], device, torch.float32, strategy)
    x = torch.randn(k, cfg.batch_size, *input_shape(cfg), device=device)
    y = (
        torch.randint(0, 10, (k, cfg.batch_size), device=device)
        if cfg.loss == "cross_entropy"
        else torch.randn(k, cfg.batch_size, 1, device=device)
    )
    trainer.step(x, y, 0)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del trainer, x, y
    torch.cuda.empty_cache()
    return int(peak / k)


def warn_sequential(cfg: TrainConfig, n: int, why: str) -> None:
    """Warn that `n` runs of `cfg`'s model train one at a time, and why."""
    warnings.warn(f"{cfg.model}: training its {n} runs one at a time: {why}", stacklevel=3)

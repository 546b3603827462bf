"""One training step for K members at once, every penalty through the regularizer objects.

:class:`EnsembleTrainer` holds the members' ensemble model (packed, or ``torch.func``), their
optimizer and their random streams. :meth:`EnsembleTrainer.step` runs one forward pass for
all members, the data loss, and each regularizer *kind* once for all members through
``Regularizer.per_example`` -- the code :func:`gradreg.regularized_loss` runs -- with each
member's own weight and each member's own random draws (``Regularizer.draw`` from the
member's generator, so ``projection="batch"`` means one r per member's batch). All members of
a chunk have the same regularizer kinds (:mod:`gradreg.ensemble.plan`), so none pays for a
penalty it does not have, and none takes an input gradient when no active kind needs one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Union, cast

import torch
from torch import Tensor, nn

from .. import data as D
from .. import datasets
from .. import finite_difference as FD
from ..config import TrainConfig
from ..core import batch_data_loss, carry_gradients, per_example_loss
from ..models import build_model
from ..regularizers import Forward, ProjectedGradient
from ..streams import piecewise_lr, stream_seed
from .functional import FunctionalEnsemble
from .optim import PackedOptimizer
from .pack import NotPackable, PackedModel

STRATEGIES = ("auto", "packed", "vmap", "sequential")


def input_shape(cfg: TrainConfig) -> tuple:
    return datasets.INPUT_SHAPES[cfg.dataset]


EnsembleModel = Union[PackedModel, FunctionalEnsemble]  # noqa: UP007 (a runtime alias)


def build_ensemble(models: Sequence[nn.Module], strategy: str) -> EnsembleModel:
    """``"packed"``: :class:`PackedModel` (raises :class:`NotPackable`); ``"vmap"``:
    :class:`FunctionalEnsemble`."""
    if strategy == "packed":
        return PackedModel(models)
    if strategy == "vmap":
        return FunctionalEnsemble(models)
    raise ValueError(f"no ensemble model for strategy {strategy!r}")


def choose_strategy(cfg: TrainConfig) -> tuple[str, str]:
    """``("packed" | "vmap" | "sequential", why)`` for ``strategy="auto"``: the packer where it
    knows every layer, else ``torch.func`` if a 2-member trial step works, else one run at a time."""
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
    """K members' ensemble model, optimizer and per-member random streams; :meth:`step` does
    one training step on a member-major batch. Used by the engine and by ``gradreg bench``."""

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
        return [s for s, r in enumerate(self.kinds) if r.active(step)]

    def _draws(self, s: int, b: int, m: int) -> Tensor | None:
        """Slot ``s``'s draws for every member, each from its own generator, stacked ``(K, ...)``."""
        first = self.regs[0][s].draw(b, m, self.proj_gens[0], self.device, self.dtype)
        if first is None:
            return None
        rest = [self.regs[i][s].draw(b, m, self.proj_gens[i], self.device, self.dtype) for i in range(1, self.k)]
        return torch.stack([first, *cast(list[Tensor], rest)])  # one kind per slot: all draw, or none

    def step(self, xb: Tensor, yb: Tensor, step: int) -> tuple[Tensor, list[int]]:
        """One step on ``xb`` (K, B, *in), ``yb`` (K, B[, ...]). Returns the detached terms
        (K, 1 + slots) -- the data loss, then each slot's unweighted penalty, NaN where a lazy
        slot was skipped -- and the active slots."""
        c0, k = self.c0, self.k
        lr = self.base_lr * piecewise_lr(step, 1.0, c0.steps, c0.lr_milestones, c0.lr_gamma)
        if c0.augment:
            xb = torch.stack([D.random_translate_flip(xb[mi], self.aug_gens[mi]) for mi in range(k)])
        active = self.active(step)
        needs_grad = any(self.kinds[s].needs_input_grad for s in active)
        fd = [s for s in active if getattr(self.kinds[s], "finite_difference", False)]
        hidden = self.c0.wrt is not None
        x = xb.detach().requires_grad_(needs_grad and not hidden)
        if hidden:
            assert self.c0.wrt is not None
            logits, wrt = self._forward_capturing(x, self.c0.wrt)
        elif fd:
            replay = FD.Replay(self.device, self.dropout_gens, self.model).capture()
            kinks = FD.FrozenKinks(self.model)
            with kinks.record():
                logits = self.model(x)
        else:
            logits = self.model(x)
        b, m = logits.shape[1], logits.shape[2]
        pel = per_example_loss(logits, yb, c0.loss)
        data_loss = batch_data_loss(pel, c0.loss)  # (K,)
        fwd = Forward(wrt if hidden else x, logits, yb, pel)
        terms = torch.full((k, 1 + len(self.kinds)), float("nan"), dtype=data_loss.dtype, device=data_loss.device)
        terms[:, 0] = data_loss.detach()
        total = data_loss
        draws = {s: self._draws(s, b, m) for s in active}  # each member's draws in its list order
        if fd and len(active) == 1 and self.kinds[fd[0]].name == "DataGrad":
            return self._fused_datagrad_step(fd[0], fwd, data_loss, terms, replay, kinks, yb, lr), active
        for s in active:
            if s in fd:
                pen, surr = self._fd(self.kinds[s], fwd, draws[s], replay, kinks, yb)
                terms[:, 1 + s] = pen
                total = total + self.weights[:, s] * (surr - surr.detach() + pen)
                continue
            pen = self.kinds[s].checked(fwd, draws[s]).mean(-1)  # (K,)
            terms[:, 1 + s] = pen.detach()
            total = total + self.weights[:, s] * pen
        if self.any_wd:
            total = total + self.wd * 0.5 * sum(p.pow(2).flatten(1).sum(1) for p in self.decayed)
        for p in self.model.parameters():
            p.grad = None
        total.sum().backward()
        self.opt.step(lr)
        return terms, active

    def _compute_dtype(self, fwd: Forward) -> torch.dtype:
        return FD.compute_dtype(fwd.logits.dtype, torch.device(self.device).type, self.model.parameters())

    def _fused_datagrad_step(self, s: int, fwd: Forward, data_loss: Tensor, terms: Tensor, replay, kinks, yb, lr):
        """Finite-difference DataGrad alone, fused (as :func:`gradreg.regularized_loss` does it):
        one backward at x gives every member's v and its data gradient G; one forward/backward
        at x + h v gives the rest; G is carried into the loss with each member's coefficient."""
        reg, x = self.kinds[s], fwd.x
        assert isinstance(x, Tensor) and isinstance(reg, ProjectedGradient)
        b = fwd.logits.shape[1]
        params = list(self.model.parameters())
        f_base = fwd.per_example_loss.sum(-1)  # (K,): F of each member
        gx, *g_params = torch.autograd.grad(f_base.sum(), [x, *params], allow_unused=True)
        v = gx.detach()
        pen = reg.gradient_norm(v, 2).mean(-1)
        d, kappa = FD.direction(v, getattr(reg, "norm", "l2"))
        h = FD.step_size(x, d, reg.relative_step(self._compute_dtype(fwd)), 2)  # (K,)
        w = self.weights[:, s]
        scale = 1.0 if self.c0.loss == "half_sse" else float(b)  # data = F / scale

        def f_at(sign: float) -> Tensor:
            xs = FD.shifted(x, h, d, sign)
            with replay(), kinks.replay():
                logits = self.model(xs)
            return per_example_loss(logits, yb, self.c0.loss).sum(-1)

        if reg.fd_scheme == "central":
            surr = FD.surrogate(f_at(1.0), f_at(-1.0), h, kappa, b, "central")
            coef = torch.full_like(h, 1.0 / scale)
        else:
            surr = FD.surrogate(f_at(1.0), f_base.detach(), h, kappa, b, "one_sided")
            safe = torch.where(h > 0, h, torch.ones_like(h))
            coef = torch.where(h > 0, 1.0 / scale - w * kappa / (b * safe), torch.full_like(h, 1.0 / scale))
        have = [(p, g) for p, g in zip(params, g_params) if g is not None]
        carried = carry_gradients([p for p, _ in have], [FD.broadcast_runs(coef.to(p.dtype), g) * g for p, g in have])
        total = carried + (w * surr).sum()
        if self.any_wd:
            total = total + (self.wd * 0.5 * sum(p.pow(2).flatten(1).sum(1) for p in self.decayed)).sum()
        terms[:, 1 + s] = pen
        for p in params:
            p.grad = None
        total.backward()
        self.opt.step(lr)
        return terms

    def _forward_capturing(self, x: Tensor, name: str) -> tuple[Tensor, Tensor]:
        """The logits, and submodule ``name``'s output laid out ``(K, B, ...)`` such that the
        rest of the forward pass depends on that very tensor (so it can be differentiated by)."""
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

    def _fd(self, reg, fwd: Forward, draw, replay, kinks, yb) -> tuple[Tensor, Tensor]:
        """A finite-difference regularizer for all members: the exact penalty (K,), detached,
        and the surrogate (K,) (:mod:`gradreg.finite_difference`), one h per member."""
        x = fwd.x
        assert isinstance(x, Tensor)  # the engine differentiates by its one input tensor
        b = fwd.logits.shape[1]
        f_base = reg.objective(fwd, draw).sum(-1)  # (K,)
        (gx,) = torch.autograd.grad(f_base.sum(), x, retain_graph=True)
        v = gx.detach()
        norm = getattr(reg, "norm", "l2")
        pen = reg.gradient_norm(v, 2).mean(-1)
        d, kappa = FD.direction(v, norm)
        h = FD.step_size(x, d, reg.relative_step(self._compute_dtype(fwd)), 2)

        def f_at(sign: float) -> Tensor:
            xs = FD.shifted(x, h, d, sign)
            with replay(), kinks.replay():
                logits = self.model(xs)
            pel = per_example_loss(logits, yb, self.c0.loss)
            return reg.objective(Forward(xs, logits, yb, pel), draw).sum(-1)

        if reg.fd_scheme == "central":
            surr = FD.surrogate(f_at(1.0), f_at(-1.0), h, kappa, b, "central")
        else:
            surr = FD.surrogate(f_at(1.0), f_base, h, kappa, b, "one_sided")
        return pen, surr

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        return {
            "model": {n: t.detach().clone() for n, t in self.model.state_dict().items()},
            "opt": self.opt.state_dict(),
            "dropout_gens": [g.get_state() for g in self.dropout_gens],
            "proj_gens": [g.get_state() for g in self.proj_gens],
            "aug_gens": [g.get_state() for g in self.aug_gens],
        }

    def load_state_dict(self, sd: dict) -> None:
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
    """Peak CUDA memory of one training step per member, from a 2-member trial step."""
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
    warnings.warn(f"{cfg.model}: training its {n} runs one at a time: {why}", stacklevel=3)

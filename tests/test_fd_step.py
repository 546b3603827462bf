"""The one finite-difference step (gradreg.finite_difference.penalty_term / fused_step), as the
single run and the ensemble engine both call it, and fusion as a property of the class.

Oracles: the same step computed by the other caller (a single run of each member, in float64),
the general (unfused) path for the fused one (the same gradient, assembled another way), and
the exact penalty's value."""

import dataclasses
from typing import ClassVar

import pytest
import torch

import gradreg as gr
import gradreg.finite_difference as FD
from gradreg.config import paper_config
from gradreg.ensemble.trainer import EnsembleTrainer
from gradreg.models import build_model
from gradreg.streams import stream_seed

FDK = dict(method="finite_difference", fd_step=1e-3)  # one h for both sides; float64 amplifies rounding 1e3x only


def member_gradients(
    trainer: EnsembleTrainer, k: int, single: torch.nn.Module
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, the engine's gradient of member k, the single run's) for every parameter."""
    grads = {n: p.grad for n, p in single.named_parameters()}
    out = []
    for name, mod in trainer.model.net.named_modules():
        if hasattr(mod, "member_state") and mod is not trainer.model.net:
            for pname, p in mod.named_parameters(recurse=False):
                ref = grads[f"{name}.{pname}"]
                mine = None if p.grad is None else p.grad[k]
                out.append((f"{name}.{pname}", mine, ref))
    return out


CASES = {
    "sin DataGrad one-sided (fused)": ("sin", [gr.DataGrad(0.1, **FDK), gr.DataGrad(0.3, **FDK)]),
    "sin DataGrad central (fused)": ("sin", [gr.DataGrad(0.1, fd_scheme="central", **FDK)] * 2),
    "sin SpectReg batch projection": ("sin", [gr.SpectReg(0.03, **FDK), gr.SpectReg(0.05, **FDK)]),
    "mnist DataGrad one-sided (fused)": ("mnist", [gr.DataGrad(2.0, **FDK), gr.DataGrad(5.0, **FDK)]),
    "mnist SpectReg central per example": (
        "mnist",
        [gr.SpectReg(0.3, projection="example", fd_scheme="central", **FDK)] * 2,
    ),
    # a zero weight: the engine leaves the fused path for both members; alone, member 1 fuses
    "mnist DataGrad weights 0 and 5": ("mnist", [gr.DataGrad(0.0, **FDK), gr.DataGrad(5.0, **FDK)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_engine_and_regularized_loss_take_the_same_finite_difference_step(case):
    """float64, one step of two members: each member's parameter gradient and penalty in the
    engine (packed, batch axes (K, B)) equal those of gr.regularized_loss on that member alone
    (batch axis (B,)), same initial weights and projection draws: gradients to 1e-9 relative
    (the packed layers round differently, and the difference quotient divides that by h), the
    penalty (the exact ||v||^2, no quotient) to 1e-12."""
    dataset, regs = CASES[case]
    extra = {"dropout": None} if dataset == "mnist" else {}
    cfgs = [
        paper_config(dataset, steps=10, eval_every=0, seed=s, weight_decay=0.0, regularizers=(r,), **extra)
        for s, r in zip((1, 2), regs)
    ]
    trainer = EnsembleTrainer(cfgs, torch.device("cpu"), torch.float64, "packed")
    singles = [
        build_model(c, torch.Generator().manual_seed(stream_seed(c.seed, "init"))).double().train() for c in cfgs
    ]
    g = torch.Generator().manual_seed(0)
    shape = (1,) if dataset == "sin" else (1, 28, 28)
    x = torch.randn(2, 12, *shape, generator=g, dtype=torch.float64)
    y = torch.randn(2, 12, 1, generator=g, dtype=torch.float64) if dataset == "sin" else torch.randint(0, 10, (2, 12))
    terms, _ = trainer.step(x, y, 0)
    for k, (cfg, model) in enumerate(zip(cfgs, singles)):
        gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "projections"))
        loss, single_terms = gr.regularized_loss(model, x[k], y[k], cfg.regularizers, loss=cfg.loss, generator=gen)
        loss.backward()
        name = cfg.regularizers[0].name
        torch.testing.assert_close(terms[k, 1], single_terms[name], rtol=1e-12, atol=0)
        torch.testing.assert_close(terms[k, 0], single_terms["loss"], rtol=1e-12, atol=0)
        for pname, mine, ref in member_gradients(trainer, k, model):
            torch.testing.assert_close(mine, ref, rtol=1e-9, atol=1e-12, msg=f"{case}: member {k}, {pname}")


# --------------------------------------------------------------------------- fusion is a class property


@dataclasses.dataclass(frozen=True)
class MyDataGrad(gr.DataGrad):
    """A user's subclass: it inherits DataGrad's fusion."""


@dataclasses.dataclass(frozen=True)
class UnfusedDataGrad(gr.DataGrad):
    """The same penalty, with the fused step switched off."""

    fuses_fd_step: ClassVar[bool] = False


def tanh_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5)).double()


def spy_on_fused_step(monkeypatch) -> list:
    calls: list = []
    original = FD.fused_step

    def spy(*args, **kwargs):
        calls.append(type(args[0]).__name__)
        return original(*args, **kwargs)

    monkeypatch.setattr(FD, "fused_step", spy)
    return calls


def gradients(model, x, y, reg):
    model.zero_grad()
    loss, terms = gr.regularized_loss(model, x, y, [reg])
    loss.backward()
    return loss.detach(), terms, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("scheme", ["one_sided", "central"])
def test_a_datagrad_subclass_takes_the_fused_path_and_it_equals_the_unfused_one(monkeypatch, scheme):
    """Fusion is decided by the class attribute ``fuses_fd_step``, which subclasses inherit (it
    used to be ``reg.name == "DataGrad"``, so a subclass took the slow path). The fused step
    of MyDataGrad is called, and gives DataGrad's numbers bit for bit; the unfused path (the
    general surrogate, assembled another way) gives the same gradient to 1e-10 relative in
    float64, and the same loss value and penalty."""
    calls = spy_on_fused_step(monkeypatch)
    model, g = tanh_mlp(), torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randint(0, 5, (8,), generator=g)
    kw = dict(method="finite_difference", fd_scheme=scheme, fd_step=1e-4)
    base = gradients(model, x, y, gr.DataGrad(2.0, **kw))
    sub = gradients(model, x, y, MyDataGrad(2.0, **kw))
    assert calls == ["DataGrad", "MyDataGrad"]
    unfused = gradients(model, x, y, UnfusedDataGrad(2.0, **kw))
    assert calls == ["DataGrad", "MyDataGrad"]  # not called for the unfused class
    assert torch.equal(sub[0], base[0]) and all(torch.equal(a, b) for a, b in zip(sub[2], base[2]))
    assert torch.equal(sub[1]["MyDataGrad"], base[1]["DataGrad"])
    torch.testing.assert_close(unfused[0], base[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(unfused[1]["UnfusedDataGrad"], base[1]["DataGrad"], rtol=1e-12, atol=0)
    for a, b in zip(unfused[2], base[2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_the_engine_fuses_a_datagrad_subclass_too(monkeypatch):
    """The ensemble engine asks the same question of the class: MyDataGrad takes its fused step."""
    calls = spy_on_fused_step(monkeypatch)
    cfgs = [paper_config("sin", steps=10, eval_every=0, seed=s, regularizers=(MyDataGrad(0.1, **FDK),)) for s in (1, 2)]
    trainer = EnsembleTrainer(cfgs, torch.device("cpu"), torch.float64, "packed")
    trainer.step(torch.randn(2, 8, 1, dtype=torch.float64), torch.randn(2, 8, 1, dtype=torch.float64), 0)
    assert calls == ["MyDataGrad"]


def test_zero_weight_rule_is_one_rule():
    """A run whose weight is 0 trains as it would without the regularizer: no shifted pass
    where no run trains, no fused step unless every run does. Oracle for the single run: the
    loss and gradients of a plain step, bit for bit, with the penalty still reported."""
    assert FD.trains([0.0, 1.0]) and not FD.trains([0.0, 0.0]) and not FD.trains([0.0])
    dg = gr.DataGrad(1.0, method="finite_difference")
    assert FD.fuses([dg], [1.0, 2.0]) and not FD.fuses([dg], [0.0, 2.0])
    assert not FD.fuses([gr.DataGrad(1.0)], [1.0]) and not FD.fuses([dg, gr.ConfidencePenalty(1.0)], [1.0])
    assert not FD.fuses([gr.SpectReg(1.0, method="finite_difference")], [1.0])

    model, g = tanh_mlp(), torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randint(0, 5, (8,), generator=g)
    for reg in (gr.DataGrad(0.0, method="finite_difference"), gr.SpectReg(0.0, method="finite_difference")):
        model.zero_grad()
        shifted = []
        model.register_forward_pre_hook(lambda m, a, seen=shifted: seen.append(a[0].requires_grad))
        loss, terms = gr.regularized_loss(model, x, y, [reg], generator=torch.Generator().manual_seed(0))
        loss.backward()
        assert shifted == [True]  # the first pass only: no shifted pass
        zero = [p.grad.clone() for p in model.parameters()]
        model._forward_pre_hooks.clear()
        plain = gradients(model, x, y, gr.DataGrad(0.0))  # the exact path, weight 0: a plain step
        assert torch.equal(loss.detach(), plain[0]) and all(torch.equal(a, b) for a, b in zip(zero, plain[2]))
        exact = gr.penalty(model, x, y, reg.with_method("double_backprop"), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(terms[reg.name], exact.detach(), rtol=1e-12, atol=0)

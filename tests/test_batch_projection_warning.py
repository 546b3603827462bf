"""A batch-shared projection that BatchNorm in training mode makes 0 warns once, naming the fix.

Oracle for when it must warn: the penalty itself next to the per-example projection's
(``gr.penalty``, independent of the warning's own test) -- below 1e-9 of it where the logits'
batch sum is constant (BatchNorm -> Linear), above 1e-3 where it is not (BatchNorm before a
nonlinearity). And the warning changes no number: a step with it equals one without, bit for bit."""

import warnings

import pytest
import torch
import torch.nn as nn

import gradreg as gr
import gradreg.core as core
from gradreg.config import paper_config
from gradreg.ensemble.trainer import EnsembleTrainer
from gradreg.networks import lenet5

VANISH = "the penalty is 0 up to rounding on this model"


def bn_last(seed=0):
    """BatchNorm feeding the last (affine) layer: in training mode the batch sum of the logits
    is W (B beta) + B b, whatever the input."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 5)).train()


def bn_inside(seed=0):
    """BatchNorm before a nonlinearity: the batch sum depends on the input."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 5)).train()


def no_bn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5)).train()


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=g), torch.randint(0, 5, (16,), generator=g)


def vanishing_warnings(fn, *args, **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fn(*args, **kwargs)
    return [str(w.message) for w in record if VANISH in str(w.message)]


def ratio(model, reg):
    """The batch-shared penalty over the per-example SpectReg's in the same norm, both exact
    (the oracle): rounding where it vanishes -- for the squared L2 norm about eps^2, for L1 eps."""
    x, y = data()
    norm = getattr(reg, "norm", "l2")
    shared = gr.penalty(model, x, y, reg, generator=torch.Generator().manual_seed(0))
    example = gr.penalty(
        model, x, y, gr.SpectReg(1.0, projection="example", norm=norm), generator=torch.Generator().manual_seed(0)
    )
    return float(shared.detach() / example.detach())


def train_steps(model, regs, n=3):
    x, y = data()
    for i in range(n):
        model.zero_grad()
        loss, _ = gr.regularized_loss(model, x, y, regs, generator=torch.Generator().manual_seed(i))
        loss.backward()


REGS = {
    "SpectReg": (lambda: gr.SpectReg(0.1), "use projection='example'"),
    "RandomOneHot": (lambda: gr.RandomOneHot(0.1), "use projection='example'"),
    "FrobReg": (lambda: gr.FrobReg(0.1), "use SpectReg(..., projection='example')"),
    "SpectReg l1": (lambda: gr.SpectReg(0.1, norm="l1"), "use projection='example'"),
    "SpectReg finite differences": (lambda: gr.SpectReg(0.1, method="finite_difference"), "use projection='example'"),
}


@pytest.mark.parametrize("name", sorted(REGS))
def test_a_vanishing_batch_shared_penalty_warns_once_naming_the_fix(name):
    make, fix = REGS[name]
    model = bn_last()
    assert ratio(model, make()) < (1e-9 if getattr(make(), "norm", "l2") == "l2" else 1e-4)  # 0, by the oracle
    said = vanishing_warnings(train_steps, model, [make()], n=3)
    assert len(said) == 1 and said[0].startswith(f"{make().name}: {VANISH}") and fix in said[0], said


@pytest.mark.parametrize("case", ["per-example projection", "eval mode", "BatchNorm before tanh", "no BatchNorm"])
def test_no_warning_where_the_penalty_does_not_vanish(case):
    model, reg = bn_last(), gr.SpectReg(0.1)
    if case == "per-example projection":
        reg = gr.SpectReg(0.1, projection="example")
    elif case == "eval mode":
        model.eval()
    elif case == "BatchNorm before tanh":
        model = bn_inside()
        assert ratio(model, reg) > 1e-3  # not 0, by the oracle
    else:
        model = no_bn()
    if case != "BatchNorm before tanh":
        assert ratio(model, reg) > 1e-3
    assert vanishing_warnings(train_steps, model, [reg, gr.FrobReg(0.1)] if case == "no BatchNorm" else [reg]) == []


def test_eval_mode_first_decides_nothing_training_mode_then_warns():
    model, reg = bn_last(), gr.SpectReg(0.1)
    model.eval()
    assert vanishing_warnings(train_steps, model, [reg], n=1) == []
    model.train()
    assert len(vanishing_warnings(train_steps, model, [reg], n=2)) == 1
    assert vanishing_warnings(train_steps, model, [reg], n=1) == []  # once per instance
    assert len(vanishing_warnings(train_steps, model, [gr.SpectReg(0.1)], n=1)) == 1  # a new instance


def test_the_check_changes_no_number(monkeypatch):
    """Three steps with the check (its two extra vector-Jacobian products run at the first)
    equal three with it switched off, bit for bit: loss, penalty, gradients, running statistics."""

    def run():
        model, x, y = bn_last(), *data()
        out = []
        for i in range(3):
            model.zero_grad()
            loss, terms = gr.regularized_loss(
                model, x, y, [gr.SpectReg(0.1), gr.FrobReg(0.1)], generator=torch.Generator().manual_seed(i)
            )
            loss.backward()
            out += [loss.detach(), *terms.values(), *[p.grad.clone() for p in model.parameters()]]
        return out + [b.clone() for b in model.buffers()]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checked = run()
        monkeypatch.setattr(core, "_batch_sum_is_constant", lambda *a: pytest.fail("switched off"))
        monkeypatch.setattr(core, "warn_if_projection_vanishes", lambda *a: None)
        unchecked = run()
    assert all(torch.equal(a, b) for a, b in zip(checked, unchecked))


def test_regularize_and_the_engine_warn_too():
    """The drop-in regularize() on the paper's LeNet-BN (BatchNorm1d(84) -> fc2), and the
    ensemble engine on the same network (each member's penalty is 0): once each."""
    model = lenet5(dropout=None, batchnorm=True, generator=torch.Generator().manual_seed(0)).train()
    x, y = torch.randn(8, 1, 28, 28).requires_grad_(), torch.randint(0, 10, (8,))
    reg = gr.SpectReg(0.03)

    def drop_in():
        for _ in range(2):
            gr.regularize(model(x), y, x, [reg], generator=torch.Generator().manual_seed(0))

    assert len(vanishing_warnings(drop_in)) == 1
    fresh = gr.SpectReg(0.03)  # the warning is once per instance, and reg has given its own
    cfgs = [
        paper_config("mnist", dropout=None, batchnorm=True, steps=4, eval_every=0, seed=s, regularizers=(fresh,))
        for s in (1, 2)
    ]
    trainer = EnsembleTrainer(cfgs, torch.device("cpu"), torch.float32, "packed")

    def engine():
        for i in range(2):
            trainer.step(torch.randn(2, 8, 1, 28, 28), torch.randint(0, 10, (2, 8)), i)

    said = vanishing_warnings(engine)
    assert len(said) == 1 and "use projection='example'" in said[0]

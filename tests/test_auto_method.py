"""``method="auto"``: exact double backprop where every operation has a double backward,
finite differences elsewhere, with a one-line warning naming the operation.

Oracles: the explicit methods themselves -- "auto" must train bit for bit as
``method="double_backprop"`` where that works (so its trial pass changes no state: random
streams, BatchNorm statistics, projection draws) and as ``method="finite_difference"`` where
it does not -- and, for the fallback, exact double backprop on a twin model built from
twice-differentiable operations."""

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

import gradreg as gr
from gradreg.config import TrainConfig, canonical_config, paper_config, parse_regularizer, regularizer_to_dict
from gradreg.ensemble.trainer import EnsembleTrainer
from gradreg.identity import run_key
from gradreg.networks import lenet5

FALLBACK = r"^{}: exact double backward is not available for {}; using finite differences$"


class SquareOnce(torch.autograd.Function):
    """x^2 with a first-order-only backward (as many fused kernels have)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class SquareNet(nn.Module):
    def __init__(self, once: bool):
        super().__init__()
        self.once = once
        self.l1, self.l2 = nn.Linear(6, 12), nn.Linear(12, 5)

    def forward(self, x):
        h = self.l1(x)
        return self.l2(SquareOnce.apply(h) if self.once else h * h)


class Attention(nn.Module):
    """A small transformer classifier: on CPU its attention runs PyTorch's fused kernel,
    whose backward has no derivative."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.enc, self.head = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.enc(x).mean(1))


class AttentionSin(nn.Module):
    """The SIN task (x of shape (1,)) through the same fused attention."""

    def __init__(self):
        super().__init__()
        self.inp, self.head = nn.Linear(1, 32), nn.Linear(8, 1)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.head(self.enc(self.inp(x).view(-1, 4, 8)).mean(1))


def attention_sin():
    """AttentionSin, by import path: the engine trains it through torch.func (vmap)."""
    return AttentionSin()


def fallback_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "exact double backward is not available" in str(w.message)]


def steps(model, make_x, y, regs, n=3, generator_seed=None):
    """n SGD steps with gr.regularized_loss; every number they produce, and the state after."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = None if generator_seed is None else torch.Generator().manual_seed(generator_seed)
    out = []
    for i in range(n):
        opt.zero_grad()
        loss, terms = gr.regularized_loss(model, make_x(i), y, regs, generator=gen)
        loss.backward()
        out += [loss.detach().clone(), *terms.values(), *[p.grad.clone() for p in model.parameters()]]
        opt.step()
    out += [torch.get_rng_state(), *[b.clone() for b in model.buffers()]]
    if gen is not None:
        out.append(gen.get_state())
    return out


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


@pytest.mark.parametrize("arch", ["dropout", "batchnorm"])
def test_auto_is_double_backprop_bit_for_bit_where_every_op_has_a_double_backward(arch):
    """LeNet with dropout (the trial pass must not consume the masks' random stream) or with
    BatchNorm (nor update the running statistics), DataGrad and SpectReg (nor draw from the
    projection generator): three steps with "auto" equal three with "double_backprop" bit for
    bit -- losses, penalties, gradients, global RNG, buffers, generator -- and nothing warns
    that it falls back."""
    options = {"dropout": dict(dropout=0.5), "batchnorm": dict(dropout=None, batchnorm=True)}[arch]
    x = torch.randn(3, 8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (8,))

    def run(method):
        model = lenet5(generator=torch.Generator().manual_seed(1), **options).train()
        regs = [gr.DataGrad(2.0, method=method), gr.SpectReg(0.1, projection="example", method=method)]
        torch.manual_seed(5)
        return steps(model, lambda i: x[i], y, regs, generator_seed=7)

    exact = run("double_backprop")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        auto = run("auto")
    assert fallback_warnings(record) == []
    assert_same(auto, exact)


def test_auto_falls_back_on_a_once_differentiable_function_and_warns_once():
    """A custom autograd.Function whose backward is once_differentiable: "auto" warns once,
    naming it, and then trains bit for bit as method="finite_difference"; its gradient matches
    exact double backprop on the twin model (h * h instead of SquareOnce) to 1e-6 relative,
    its penalty to 1e-12 (float64, central, h = 1e-4)."""
    torch.manual_seed(0)
    once, twin = SquareNet(True).double(), SquareNet(False).double()
    twin.load_state_dict(once.state_dict())
    xs = torch.randn(3, 8, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (8,))
    kw = dict(fd_scheme="central", fd_step=1e-4)
    start = {n: t.clone() for n, t in once.state_dict().items()}
    with pytest.warns(UserWarning) as record:
        auto = steps(once, lambda i: xs[i], y, [gr.DataGrad(1.0, method="auto", **kw)])
    (message,) = fallback_warnings(record)  # once, for three steps
    assert re.match(FALLBACK.format("DataGrad", r"SquareOnce \(its backward is marked once_differentiable\)"), message)
    once.load_state_dict(start)
    fd = steps(once, lambda i: xs[i], y, [gr.DataGrad(1.0, method="finite_difference", **kw)])
    assert_same(auto, fd)

    once.load_state_dict(start)
    once.zero_grad()
    loss, terms = gr.regularized_loss(once, xs[0], y, [gr.DataGrad(1.0, method="auto", **kw)])
    loss.backward()
    ref, ref_terms = gr.regularized_loss(twin, xs[0], y, [gr.DataGrad(1.0)])
    ref.backward()
    torch.testing.assert_close(terms["DataGrad"], ref_terms["DataGrad"], rtol=1e-12, atol=0)
    for p, q in zip(once.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)


def test_auto_falls_back_on_fused_attention_and_not_under_the_math_kernel():
    """On CPU, scaled_dot_product_attention's fused kernel has no double backward (checked in
    torch 2.13): "auto" names its backward op and trains as finite differences, bit for bit.
    A fresh model whose forward runs under the math kernel, which has one, is exact."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    x, y = torch.randn(2, 8, 5, 16, generator=torch.Generator().manual_seed(0)), torch.randint(0, 3, (8,))

    def run(method, math=False):
        torch.manual_seed(0)
        model = Attention().train()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            if math:
                with sdpa_kernel(SDPBackend.MATH):
                    out = steps(model, lambda i: x[i], y, [gr.DataGrad(1.0, method=method)], n=2)
            else:
                out = steps(model, lambda i: x[i], y, [gr.DataGrad(1.0, method=method)], n=2)
        return out, fallback_warnings(record)

    auto, said = run("auto")
    fd, _ = run("finite_difference")
    assert len(said) == 1
    assert re.match(
        FALLBACK.format(
            "DataGrad",
            r"aten::_scaled_dot_product_flash_attention_for_cpu_backward \(its derivative is not implemented\)",
        ),
        said[0],
    ), said[0]
    assert_same(auto, fd)
    auto_math, said_math = run("auto", math=True)
    exact_math, _ = run("double_backprop", math=True)
    assert said_math == []
    assert_same(auto_math, exact_math)


def compiled_fallback(backend):
    """A torch.compile'd tanh MLP: "auto" says the model is compiled and trains as finite
    differences on the same compiled model, bit for bit."""
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 5))
    model = torch.compile(inner, backend=backend)
    xs, y = torch.randn(2, 16, 6), torch.randint(0, 5, (16,))
    start = {n: t.clone() for n, t in inner.state_dict().items()}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        auto = steps(model, lambda i: xs[i], y, [gr.DataGrad(1.0, method="auto")], n=2)
    said = fallback_warnings(record)
    assert len(said) == 1 and said[0].startswith(
        "DataGrad: exact double backward is not available for a torch.compile'd model ("
    ), said
    inner.load_state_dict(start)
    assert_same(auto, steps(model, lambda i: xs[i], y, [gr.DataGrad(1.0, method="finite_difference")], n=2))


@pytest.mark.usefixtures("fresh_compile")
def test_auto_falls_back_on_a_compiled_model_aot_eager():
    compiled_fallback("aot_eager")


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_compile")
def test_auto_falls_back_on_an_inductor_compiled_model():
    """The default backend, inductor (C++ kernels built with the system compiler on CPU)."""
    compiled_fallback("inductor")


def test_regularize_on_a_forward_pass_it_did_not_run_cannot_fall_back_and_says_so():
    torch.manual_seed(0)
    model, x, y = SquareNet(True), torch.randn(4, 6, requires_grad=True), torch.randint(0, 5, (4,))
    with pytest.raises(RuntimeError, match=r"falls back to finite differences in gr.regularized_loss only"):
        gr.regularize(model(x), y, x, [gr.DataGrad(1.0, method="auto")])


def test_auto_in_the_engine_resolves_once_for_all_members():
    """The ensemble engine: on the packed LeNet "auto" is exact (three steps equal
    "double_backprop" bit for bit, no warning); on a torch.func (vmap) ensemble with fused
    attention it warns once and equals "finite_difference" bit for bit."""

    def run(method, dataset, strategy, model=None):
        extra = {"model": model} if model else {"dropout": 0.5}
        cfgs = [
            paper_config(
                dataset, steps=10, eval_every=0, seed=s, regularizers=(gr.DataGrad(0.5, method=method),), **extra
            )
            for s in (1, 2)
        ]
        trainer = EnsembleTrainer(cfgs, torch.device("cpu"), torch.float64, strategy)
        g = torch.Generator().manual_seed(0)
        shape = (1, 28, 28) if dataset == "mnist" else (1,)
        out = []
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            for i in range(3):
                x = torch.randn(2, 6, *shape, generator=g, dtype=torch.float64)
                y = (
                    torch.randint(0, 10, (2, 6), generator=g)
                    if dataset == "mnist"
                    else torch.randn(2, 6, 1, generator=g, dtype=x.dtype)
                )
                terms, _ = trainer.step(x, y, i)
                out.append(terms.clone())
        out.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
        return out, fallback_warnings(record)

    auto, said = run("auto", "mnist", "packed")
    exact, _ = run("double_backprop", "mnist", "packed")
    assert said == [] and all(torch.equal(a, b) for a, b in zip(auto, exact))
    model = f"{__name__}:attention_sin"
    auto, said = run("auto", "sin", "vmap", model)
    fd, _ = run("finite_difference", "sin", "vmap", model)
    assert len(said) == 1 and "_scaled_dot_product_flash_attention_for_cpu_backward" in said[0]
    assert all(torch.equal(a, b) for a, b in zip(auto, fd))


def test_auto_is_opt_in_and_configs_keep_their_run_keys():
    """The default stays "double_backprop", absent from a config's dict, so every stored run
    keeps its key (oracle: the keys committed in tests/data/records_sample); "auto" is
    serialized, round-trips, parses from the command line and takes fd_scheme/fd_step.
    FrobReg's and JacReg's own "auto" (how their products are batched) is another option."""
    sample = Path(__file__).parent / "data" / "records_sample" / "runs.jsonl"
    for line in sample.read_text().splitlines():
        rec = json.loads(line)
        assert run_key(canonical_config(rec["config"])) == rec["run_key"]
    assert regularizer_to_dict(gr.DataGrad(50.0)) == {"name": "DataGrad", "weight": 50.0, "norm": "l2"}
    auto = gr.SpectReg(0.03, method="auto", fd_scheme="central")
    d = regularizer_to_dict(auto)
    assert d["method"] == "auto" and d["fd_scheme"] == "central"
    cfg = paper_config("sin", regularizers=(auto,))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert parse_regularizer("dg=1,method=auto,fd_step=0.001") == gr.DataGrad(1.0, method="auto", fd_step=1e-3)
    assert auto.auto_method and not gr.SpectReg(0.03).auto_method and not gr.FrobReg(1.0).auto_method
    with pytest.raises(ValueError, match="needs n_proj=1"):
        gr.SpectReg(1.0, method="auto", n_proj=2)
    with pytest.raises(
        ValueError, match="fd_step and fd_scheme apply to method='finite_difference' only, not 'double_backprop'"
    ):
        gr.DataGrad(1.0, fd_step=1e-3)
    assert gr.DataGrad(1.0, method="auto", fd_step=1e-3).with_method("double_backprop") == gr.DataGrad(1.0)

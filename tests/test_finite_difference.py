"""Finite-difference penalties and lazy regularization, against exact double backprop.

Oracles: exact double backprop in float64 (the finite-difference parameter gradient's error
must shrink as O(h) one-sided and O(h^2) central, as predicted), the exact penalty value, and
the paper's own weighting for lazy steps (k * lambda on steps i % k == 0, nothing otherwise)."""

import pytest
import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

import gradreg as gr
import gradreg.finite_difference as FD
from conftest import DATA, needs_mnist
from gradreg.config import paper_config, parse_regularizer
from gradreg.networks import lenet5


def tanh_mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 5))


def tanh_convnet():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 6, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    )


MODELS = {
    "tanh_mlp": (tanh_mlp, (6,), 5),
    "tanh_convnet": (tanh_convnet, (1, 12, 12), 5),
    "lenet_dropout": (lambda: lenet5(dropout=0.5, generator=torch.Generator().manual_seed(1)), (1, 28, 28), 10),
    "lenet_bn": (
        lambda: lenet5(dropout=None, batchnorm=True, generator=torch.Generator().manual_seed(1)),
        (1, 28, 28),
        10,
    ),
}
REGS = {
    "DataGrad": lambda **k: gr.DataGrad(5.0, **k),
    "DataGrad_l1": lambda **k: gr.DataGrad(5.0, norm="l1", **k),
    "SpectReg": lambda **k: gr.SpectReg(0.5, projection="example", **k),
    "OneHot": lambda **k: gr.OneHot(0.5, **k),
    "RandomOneHot": lambda **k: gr.RandomOneHot(0.5, projection="example", **k),
}


def penalty_gradient(model, x, y, reg, zero=None, autocast=None):
    """The parameter gradient of ``weight * penalty`` alone (the data term subtracted: the step
    with ``zero``, a zero-weight twin, or with no regularizer when None), and the terms;
    ``autocast`` a CPU autocast dtype, or None."""

    def grads(r):
        model.zero_grad()
        torch.manual_seed(11)  # dropout masks: the same in every call
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            loss, terms = gr.regularized_loss(
                model, x, y, [] if r is None else [r], generator=torch.Generator().manual_seed(3)
            )
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), loss.detach(), terms

    g, value, terms = grads(reg)
    g0, _, _ = grads(zero)
    return g - g0, value, terms


def setup(name, dtype):
    make, shape, m = MODELS[name]
    torch.manual_seed(0)
    model = make().to(dtype).train()
    x = torch.randn(16, *shape, dtype=dtype)
    y = torch.randint(0, m, (16,))
    return model, x, y


@pytest.mark.parametrize("reg", sorted(REGS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_fd_error_shrinks_as_h_one_sided_and_h_squared_central(name, reg):
    """float64: relative error of the finite-difference parameter gradient against exact double
    backprop at h and h/10: one-sided drops ~10x (O(h)), central ~100x (O(h^2)). LeNet has
    ReLU, max-pooling and dropout (masks replayed); its kinks are frozen for the shifted pass."""
    model, x, y = setup(name, torch.float64)
    make = REGS[reg]
    exact, value, terms = penalty_gradient(model, x, y, make(), make().__class__(0.0))
    assert exact.norm() > 0
    # train-mode BatchNorm (batch statistics of 16 examples) reaches the asymptotic regime later
    steps = (1e-4, 1e-5) if name == "lenet_bn" else (1e-2, 1e-3)
    for scheme, lo, hi in (("one_sided", 6, 16), ("central", 40, 250)):
        errs = []
        for h in steps:
            g, v, t = penalty_gradient(
                model, x, y, make(method="finite_difference", fd_scheme=scheme, fd_step=h), make().__class__(0.0)
            )
            errs.append(float((g - exact).norm() / exact.norm()))
            # the value the loss carries and reports is the exact penalty's
            assert torch.allclose(v, value, rtol=1e-12) and torch.allclose(
                t[make().name], terms[make().name], rtol=1e-12
            )
        assert errs[1] < 1e-2
        if errs[0] < 1e-9:
            # projections of the logits of a piecewise-linear net with its kinks frozen are
            # linear in x: the difference quotient is exact up to rounding
            assert name.startswith("lenet") and reg in ("OneHot", "SpectReg", "RandomOneHot")
            continue
        assert lo < errs[0] / errs[1] < hi, (scheme, errs)


@pytest.mark.parametrize("reg", ["DataGrad", "SpectReg", "OneHot"])
def test_fd_float32_default_step_cosine_on_lenet_with_dropout(reg):
    """float32, the default relative steps (1e-3 one-sided, 1e-2 central): cosine similarity of
    the penalty's parameter gradient to exact double backprop >= 0.999 on LeNet with dropout."""
    model, x, y = setup("lenet_dropout", torch.float32)
    x, y = torch.randn(50, 1, 28, 28), torch.randint(0, 10, (50,))
    make = REGS[reg]
    exact, _, _ = penalty_gradient(model, x, y, make(), make().__class__(0.0))
    for scheme in ("one_sided", "central"):
        g, _, _ = penalty_gradient(
            model, x, y, make(method="finite_difference", fd_scheme=scheme), make().__class__(0.0)
        )
        assert torch.nn.functional.cosine_similarity(g, exact, dim=0) >= 0.999


def test_fd_leaves_batchnorm_statistics_and_rng_as_the_exact_step_does():
    model, x, y = setup("lenet_bn", torch.float64)
    twin = lenet5(dropout=None, batchnorm=True).double().train()
    twin.load_state_dict(model.state_dict())
    torch.manual_seed(4)
    gr.regularized_loss(model, x, y, [gr.DataGrad(1.0)])[0].backward()
    after_exact = torch.randn(3)
    torch.manual_seed(4)
    gr.regularized_loss(twin, x, y, [gr.DataGrad(1.0, method="finite_difference")])[0].backward()
    after_fd = torch.randn(3)
    for (n, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
        assert torch.equal(a, b), n  # the shifted pass left no trace in the running statistics
    assert torch.equal(after_exact, after_fd)  # nor in the global RNG


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


def test_exact_penalty_on_a_once_differentiable_op_is_a_clear_error_and_fd_trains_it():
    torch.manual_seed(0)
    once, twin = SquareNet(True).double(), SquareNet(False).double()
    twin.load_state_dict(once.state_dict())
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 5, (8,))
    with pytest.raises(RuntimeError, match=r"without a double backward .* method='finite_difference'"):
        gr.regularized_loss(once, x, y, [gr.DataGrad(1.0)])
    fd = gr.DataGrad(1.0, method="finite_difference", fd_scheme="central", fd_step=1e-4)
    loss, _ = gr.regularized_loss(once, x, y, [fd])
    loss.backward()
    ref, _ = gr.regularized_loss(twin, x, y, [gr.DataGrad(1.0)])  # the same function, exact
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-12)
    for p, q in zip(once.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.usefixtures("fresh_compile")
def test_compiled_model_trains_with_fd_and_matches_eager_and_exact_is_a_clear_error():
    """torch.compile (aot_eager backend, CPU): the finite-difference path matches the eager
    model's to 1e-5 relative in float32; the exact path raises the clear error."""
    torch.manual_seed(0)
    eager, inner = tanh_mlp(), tanh_mlp()
    inner.load_state_dict(eager.state_dict())
    compiled = torch.compile(inner, backend="aot_eager")
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    with pytest.raises(RuntimeError, match="torch.compile'd, and compiled graphs have no double backward"):
        gr.regularized_loss(compiled, x, y, [gr.DataGrad(1.0)])
    reg = gr.DataGrad(1.0, method="finite_difference")
    for m in (eager, compiled):
        loss, _ = gr.regularized_loss(m, x, y, [reg])
        loss.backward()
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7)


def test_fd_in_the_engine_equals_the_single_run():
    from gradreg.ensemble.loop import train_many
    from gradreg.train import train

    # one step size on both sides: the engine runs in float64 here, the single run in float32,
    # and their default steps differ (float64's is smaller)
    for reg in (
        gr.DataGrad(0.1, method="finite_difference", fd_step=1e-3),
        gr.SpectReg(0.03, method="finite_difference", fd_scheme="central", fd_step=1e-2),
    ):
        cfgs = [paper_config("sin", steps=40, eval_every=0, seed=s, regularizers=(reg,)) for s in (1, 2)]
        ens = train_many(cfgs, dtype=torch.float64, workers=1, strategy="packed")
        single = train(cfgs[1])
        assert ens[1].test == pytest.approx(single.test, rel=1e-4)
        assert ens[1].penalties == pytest.approx(single.penalties, rel=1e-4)


# --------------------------------------------------------------------------- lazy


class Spy(nn.Module):
    """Records whether the input it was called with required grad."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x):
        self.calls.append(x.requires_grad)
        return self.inner(x)


def test_lazy_every_k_applies_k_lambda_on_its_steps_and_nothing_else():
    torch.manual_seed(0)
    model = Spy(tanh_mlp().double())
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 5, (8,))
    k, lam = 4, 0.3
    for reg_cls in (gr.DataGrad, gr.SpectReg):
        for i in range(6):
            lazy, terms = gr.regularized_loss(
                model, x, y, [reg_cls(lam, every=k)], step=i, generator=torch.Generator().manual_seed(i)
            )
            if i % k == 0:
                ref, _ = gr.regularized_loss(
                    model, x, y, [reg_cls(k * lam)], generator=torch.Generator().manual_seed(i)
                )
                assert set(terms) == {"loss", reg_cls.__name__} and model.calls[-1]
            else:
                ref, _ = gr.regularized_loss(model, x, y, [], generator=torch.Generator().manual_seed(i))
                assert set(terms) == {"loss"} and not model.calls[-1]  # no input-gradient work at all
            assert torch.equal(lazy, ref)
    every1, _ = gr.regularized_loss(model, x, y, [gr.DataGrad(lam, every=1)], step=3)
    plain, _ = gr.regularized_loss(model, x, y, [gr.DataGrad(lam)])
    assert torch.equal(every1, plain)


def test_lazy_in_training_runs_and_the_engine():
    from gradreg.ensemble.loop import train_many
    from gradreg.train import train

    cfg = paper_config("sin", steps=40, eval_every=0, regularizers=(gr.SpectReg(0.03, every=4),))
    single = train(cfg)
    (ens,) = train_many([cfg], dtype=torch.float32, strategy="packed")
    assert ens.test == pytest.approx(single.test, rel=1e-3)
    assert ens.penalties == pytest.approx(single.penalties, rel=1e-3) and set(ens.penalties) == {"SpectReg"}
    assert cfg.to_dict()["regularizers"][0]["every"] == 4
    # every=1 and the other added options keep the run keys of configs made before they existed
    assert "every" not in paper_config("sin", regularizers=(gr.SpectReg(0.03),)).to_dict()["regularizers"][0]


def test_cli_strings_and_bad_options():
    assert parse_regularizer("datagrad=50,method=finite_difference") == gr.DataGrad(50.0, method="finite_difference")
    assert parse_regularizer("spectreg=0.03,every=4") == gr.SpectReg(0.03, every=4)
    assert parse_regularizer("dg=1,method=finite_difference,fd_scheme=central,fd_step=0.01").fd_step == 0.01
    model, x, y = tanh_mlp(), torch.randn(4, 6), torch.randint(0, 5, (4,))
    with pytest.raises(ValueError, match=r"every=4\) is lazy: pass step="):
        gr.regularized_loss(model, x, y, [gr.DataGrad(1.0, every=4)])
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        gr.DataGrad(1.0, every=0)
    with pytest.raises(ValueError, match="valid choices: 'double_backprop', 'finite_difference'"):
        gr.DataGrad(1.0, method="fd")
    with pytest.raises(ValueError, match="fd_step must be a number in"):
        gr.SpectReg(1.0, method="finite_difference", fd_step=2.0)
    with pytest.raises(ValueError, match="needs n_proj=1"):
        gr.SpectReg(1.0, method="finite_difference", n_proj=2)
    with pytest.raises(ValueError, match="valid choices: 'auto', 'batched', 'loop'"):
        gr.FrobReg(1.0, method="finite_difference")


@needs_mnist
def test_fused_fd_datagrad_in_the_engine_equals_the_single_run_on_lenet():
    """Cross-entropy (a batch mean, so data = F / B) with dropout: the engine's fused
    finite-difference DataGrad step follows the single run's."""
    from gradreg.ensemble.loop import train_many
    from gradreg.train import train

    reg = gr.DataGrad(50.0, method="finite_difference", fd_step=1e-3)  # float64 engine, float32 run: one h
    cfgs = [
        paper_config("mnist", steps=6, eval_every=0, eval_limit=200, train_size=200, seed=s, regularizers=(reg,))
        for s in (1, 2)
    ]
    ens = train_many(cfgs, data_dir=DATA, dtype=torch.float64, workers=1, strategy="packed")
    single = train(cfgs[1], data_dir=DATA)
    assert ens[1].penalties == pytest.approx(single.penalties, rel=1e-4)
    assert ens[1].grad_norms == pytest.approx(single.grad_norms, rel=1e-3)


def test_regularize_on_an_existing_forward_pass_refuses_finite_differences():
    model, x, y = tanh_mlp(), torch.randn(4, 6).requires_grad_(), torch.randint(0, 5, (4,))
    with pytest.raises(ValueError, match="re-runs the model on a shifted input.*use gr.regularized_loss"):
        gr.regularize(model(x), y, x, [gr.DataGrad(1.0, method="finite_difference")])


def test_carry_gradients_is_zero_with_the_given_gradients_scaled_by_the_loss_scale():
    """The fused finite-difference step hands back gradients it already computed through one
    autograd node: value 0, d/dp = the given tensor, times whatever scales the loss."""
    from gradreg.finite_difference import carry_gradients

    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, generator=g, requires_grad=True)
    b = torch.randn(2, 2, generator=g, requires_grad=True)
    ga, gb = torch.randn(3, generator=g), torch.randn(2, 2, generator=g)
    z = carry_gradients([a, b], [ga, gb])
    assert z.item() == 0.0
    (3.0 * (z + (a * a).sum())).backward()
    torch.testing.assert_close(a.grad, 3.0 * ga + 6.0 * a.detach())
    torch.testing.assert_close(b.grad, 3.0 * gb)


class EverySpelling(nn.Module):
    """ReLU and max-pooling spelled every way a model might: modules, functional calls,
    torch functions, tensor methods, in place, pooling with and without indices."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.c3, self.head = nn.Conv1d(4, 4, 3, padding=1), nn.Linear(4 * 2, 5)
        self.relu, self.pool = nn.ReLU(), nn.MaxPool2d(2)

    def forward(self, x):
        h = self.pool(self.relu(self.c1(x)))  # modules: (B, 4, 4, 4)
        h = torch.relu(self.c2(h)).relu()  # torch function, tensor method
        h, _ = torch.nn.functional.max_pool2d(h, 2, return_indices=True)  # (B, 4, 2, 2)
        h = self.c3(h.flatten(2))  # (B, 4, 4)
        h = torch.nn.functional.relu(h, True)  # in place, positionally
        h = torch.nn.functional.max_pool1d(h.clone().relu_(), 2)  # in place, then 1-d pooling
        return self.head(h.flatten(1))


def test_fd_freezes_relu_and_max_pooling_however_they_are_spelled():
    """float64: with every kink frozen (6 ReLUs, 3 poolings, recorded in call order), the
    central difference along the direction is smooth, so its parameter gradient matches exact
    double backprop to O(h^2) (h = 1e-3 relative: measured 1.2e-8, asserted < 1e-6); with
    freezing switched off, the kinks the shift crosses make it 0.33 (asserted > 0.1)."""
    torch.manual_seed(0)
    model = EverySpelling().double().train()
    x, y = torch.randn(16, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (16,))
    exact, _, _ = penalty_gradient(model, x, y, gr.DataGrad(5.0), gr.DataGrad(0.0))
    fd = gr.DataGrad(5.0, method="finite_difference", fd_scheme="central", fd_step=1e-3)
    g, _, _ = penalty_gradient(model, x, y, fd, gr.DataGrad(0.0))
    assert (g - exact).norm() / exact.norm() < 1e-6
    kinks = FD.FrozenKinks(model)
    with kinks.record():
        model(x)
    assert [k[0] for k, _ in kinks.patterns] == ["relu", "pool2", "relu", "relu", "pool2", "relu", "relu", "pool1"]
    original = FD.FrozenKinks.__init__

    def unfrozen(self, m):
        original(self, None)

    try:
        FD.FrozenKinks.__init__ = unfrozen  # type: ignore[method-assign]
        g_off, _, _ = penalty_gradient(model, x, y, fd, gr.DataGrad(0.0))
    finally:
        FD.FrozenKinks.__init__ = original  # type: ignore[method-assign]
    assert (g_off - exact).norm() / exact.norm() > 0.1


def test_fd_trains_a_transformer_whose_fused_attention_has_no_double_backward():
    """An nn.TransformerEncoder classifier (ReLU inside its feed-forward, a functional call):
    the exact path fails on PyTorch's fused attention with the clear error; the finite-difference
    path trains it, and its parameter gradient matches exact double backprop through the math
    attention kernel (float32: cosine >= 0.9999, relative error < 1e-2), the reported penalty
    the exact one. Unfrozen, the ReLU kinks gave a cosine of 0.89 here."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
            self.enc, self.head = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.enc(x).mean(1))

    model = Classifier().train()
    x, y = torch.randn(8, 5, 16), torch.randint(0, 3, (8,))
    with pytest.raises(RuntimeError, match=r"no double backward .* method='finite_difference'"):
        gr.regularized_loss(model, x, y, [gr.DataGrad(1.0)])

    def grad(reg):
        model.zero_grad()
        loss, terms = gr.regularized_loss(model, x, y, [reg])
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()]), terms["DataGrad"]

    g_fd, pen_fd = grad(gr.DataGrad(1.0, method="finite_difference"))
    with sdpa_kernel(SDPBackend.MATH):
        g_ex, pen_ex = grad(gr.DataGrad(1.0))
    assert torch.nn.functional.cosine_similarity(g_fd, g_ex, dim=0) >= 0.9999
    assert (g_fd - g_ex).norm() / g_ex.norm() < 1e-2
    torch.testing.assert_close(pen_fd, pen_ex, rtol=1e-5, atol=0)


def relu_mlp():
    """A ReLU model the packer does not know (an import path): the engine trains it through vmap."""
    return nn.Sequential(nn.Linear(1, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def test_fd_through_vmap_freezes_kinks_per_member_and_equals_the_single_run(monkeypatch):
    """The engine's torch.func ensembles run the model under vmap; their finite-difference
    passes record each member's ReLU masks inside the transform and replay them there, so a
    member trains as gradreg.train trains it alone (float64, 150 steps: to 1e-6). Without the
    frozen masks the trajectory drifts (measured 2% in test MSE after 200 steps)."""
    from gradreg.ensemble.loop import train_many
    from gradreg.train import train

    reg = gr.DataGrad(0.1, method="finite_difference", fd_step=1e-3)  # float64 engine, float32 run: one h
    cfgs = [
        paper_config("sin", model=f"{__name__}:relu_mlp", steps=150, eval_every=0, seed=s, regularizers=(reg,))
        for s in (1, 2)
    ]
    ens = train_many(cfgs, dtype=torch.float64, workers=1, strategy="vmap")
    single = train(cfgs[1])
    assert ens[1].test == pytest.approx(single.test, rel=1e-6)
    assert ens[1].penalties == pytest.approx(single.penalties, rel=1e-6)
    original = FD.FrozenKinks.__init__
    monkeypatch.setattr(FD.FrozenKinks, "__init__", lambda self, m: original(self, None))
    drifted = train_many(cfgs, dtype=torch.float64, workers=1, strategy="vmap")
    assert drifted[1].penalties["DataGrad"] != pytest.approx(single.penalties["DataGrad"], rel=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fd_default_step_under_low_precision_autocast(dtype):
    """Under float16/bfloat16 autocast (CPU), the default step follows the logits' dtype: the
    finite-difference parameter gradient is then about as close to exact float32 as exact double
    backprop under the same autocast is (measured: float16 0.03/0.02 vs exact 0.02; bfloat16
    0.12/0.12 vs 0.12), while the float32 default step (1e-3) was far off (0.31; 2.4)."""
    torch.manual_seed(0)
    model = lenet5(dropout=None).train()
    x, y = torch.randn(50, 1, 28, 28), torch.randint(0, 10, (50,))

    def grad(reg, autocast):
        return penalty_gradient(model, x, y, reg, reg.__class__(0.0), dtype if autocast else None)[0]

    def err(g):
        return float((g - ref).norm() / ref.norm())

    ref = grad(gr.DataGrad(1.0), False)
    exact = err(grad(gr.DataGrad(1.0), True))
    for scheme in ("one_sided", "central"):
        assert err(grad(gr.DataGrad(1.0, method="finite_difference", fd_scheme=scheme), True)) < 2 * exact + 0.02
    old = err(grad(gr.DataGrad(1.0, method="finite_difference", fd_step=1e-3), True))
    assert old > 2 * exact + 0.02


@pytest.mark.usefixtures("fresh_compile")
def test_compiled_lenet_keeps_its_kinks_frozen_under_finite_differences():
    """A torch.compile'd LeNet (aot_eager, CPU): the kink-freezing mode reaches into the
    compiled forward, so the finite-difference penalty gradient matches the eager model's exact
    one (cosine >= 0.9999; measured 0.999999). With freezing switched off it was 0.03."""
    torch.manual_seed(0)
    eager, inner = lenet5(dropout=None), lenet5(dropout=None)
    inner.load_state_dict(eager.state_dict())
    compiled = torch.compile(inner, backend="aot_eager")
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))

    exact, _, _ = penalty_gradient(eager, x, y, gr.DataGrad(1.0))
    fd, _, _ = penalty_gradient(compiled, x, y, gr.DataGrad(1.0, method="finite_difference"))
    assert torch.nn.functional.cosine_similarity(fd, exact, dim=0) >= 0.9999


# ------------------------------------------------------------ review findings (each failed before its fix)


class _OutsideWeightHead(nn.Module):
    """A model that also trains a weight it does not register (held in a list): the fused
    finite-difference step must not lose that weight's data gradient."""

    def __init__(self, outside: torch.Tensor):
        super().__init__()
        self.body = tanh_mlp()
        self.outside = [outside]

    def forward(self, x):
        return self.body(x) * self.outside[0]


def test_fused_fd_datagrad_trains_every_leaf_the_loss_reaches_not_only_registered_parameters():
    """A learnable temperature in the loss callable and a weight the module does not register:
    with the fused one-sided DataGrad step (float64, h = 1e-7 relative) their gradients match
    exact double backprop to 1e-5 relative. Before, the data loss's part of their gradient was
    lost: the temperature's gradient was 1e7 times too small."""
    torch.manual_seed(0)
    temp = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    outside = torch.ones(5, dtype=torch.float64, requires_grad=True)
    model = _OutsideWeightHead(outside).double()
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 5, (16,))

    def loss(z, t):
        return torch.nn.functional.cross_entropy(z / temp, t, reduction="none")

    def grads(reg):
        leaves = [temp, outside, *model.parameters()]
        for t in leaves:
            t.grad = None
        total, _ = gr.regularized_loss(model, x, y, [reg], loss=loss)
        total.backward()
        return [t.grad.clone() for t in leaves]

    exact = grads(gr.DataGrad(2.0))
    fd = grads(gr.DataGrad(2.0, method="finite_difference", fd_step=1e-7))
    for a, b in zip(fd, exact):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


def test_fd_on_an_input_that_requires_grad_sends_nothing_upstream_like_the_exact_path():
    """``x`` from an embedding (it requires grad): the penalty treats x as data, as the exact
    path does (the upstream weight gets no gradient from regularized_loss), for the fused DataGrad
    step (it used to fail with a no-grad view error) and for SpectReg (it used to leak a
    gradient upstream through the step size h)."""
    torch.manual_seed(0)
    emb, model = nn.Embedding(10, 6), tanh_mlp()
    tokens, y = torch.randint(0, 10, (8,)), torch.randint(0, 5, (8,))
    for reg in (
        gr.DataGrad(1.0),
        gr.DataGrad(1.0, method="finite_difference"),
        gr.SpectReg(0.5, method="finite_difference"),
    ):
        emb.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        loss, _ = gr.regularized_loss(model, emb(tokens), y, [reg], generator=torch.Generator().manual_seed(0))
        loss.backward()
        assert emb.weight.grad is None, reg
        assert all(p.grad is not None for p in model.parameters()), reg


def test_step_size_of_a_half_precision_gradient_is_computed_in_float32():
    """In float16 the squares of a gradient of size 1e-4 underflow, so h came out 0 and the
    penalty silently stopped training. h is now the float64 formula on the same half values
    to 1e-6 relative, and not 0."""
    torch.manual_seed(0)
    x = torch.randn(16, 784).half()
    d = (torch.randn(16, 784) * 1e-4).half()
    h = FD.step_size(x, d, 1e-2, 1)
    xd, dd = x.double(), d.double()
    want = 1e-2 * xd.pow(2).mean().sqrt() / dd.pow(2).mean().sqrt()
    assert h.dtype == torch.float32 and h > 0
    torch.testing.assert_close(h.double(), want, rtol=1e-6, atol=0)
    xs = FD.shifted(x, h, d, 1.0)
    assert xs.dtype == torch.float16 and not xs.requires_grad
    torch.testing.assert_close(xs.double(), (xd + want * dd).half().double(), rtol=0, atol=1e-3)


def test_compute_dtype_sees_autocast_and_the_parameters_behind_float32_logits():
    """A model whose last op is ``.float()`` (or autocast's float32 softmax) hides its low
    precision from the logits' dtype: the default step follows autocast's dtype, or the lowest
    parameter dtype. Under bfloat16 autocast, such a model's finite-difference step is the
    same computation as one with bfloat16's default step (3e-2) given by hand."""
    p16 = [torch.zeros(2, dtype=torch.float16), torch.zeros(2)]
    assert FD.compute_dtype(torch.float32, "cpu") is torch.float32
    assert FD.compute_dtype(torch.float32, "cpu", p16) is torch.float16
    assert FD.compute_dtype(torch.float64, "meta") is torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert FD.compute_dtype(torch.float32, "cpu") is torch.bfloat16
        assert FD.compute_dtype(torch.float16, "cpu", p16) is torch.bfloat16  # the coarser of the two

    class FloatLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tanh_mlp()

        def forward(self, x):
            return self.net(x).float()

    torch.manual_seed(0)
    model = FloatLogits()
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    by_default, _, _ = penalty_gradient(
        model, x, y, gr.DataGrad(1.0, method="finite_difference"), autocast=torch.bfloat16
    )
    by_hand, _, _ = penalty_gradient(
        model, x, y, gr.DataGrad(1.0, method="finite_difference", fd_step=3e-2), autocast=torch.bfloat16
    )
    assert torch.equal(by_default, by_hand)


class _Checkpointed(nn.Module):
    def __init__(self, reentrant: bool):
        super().__init__()
        self.a, self.b, self.reentrant = nn.Linear(6, 16), nn.Linear(16, 5), reentrant

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        h = checkpoint(lambda t: torch.relu(self.a(t)), x, use_reentrant=self.reentrant)
        return self.b(h)


@pytest.mark.parametrize("reentrant", [False, True])
def test_fd_refuses_gradient_checkpointing_with_a_clear_error(reentrant):
    """torch.utils.checkpoint recomputes the forward inside backward(), past the frozen kinks:
    the surrogate's gradient was a silent hybrid (measured 237 against 285 frozen). Refused,
    both forms. The exact path trains the non-reentrant form; the reentrant form cannot run
    under torch.autograd.grad at all (torch's own error)."""
    torch.manual_seed(0)
    model = _Checkpointed(reentrant)
    x, y = torch.randn(8, 6), torch.randint(0, 5, (8,))
    with pytest.raises(RuntimeError, match=r"gradient checkpointing \(torch.utils.checkpoint\)"):
        gr.regularized_loss(model, x, y, [gr.DataGrad(1.0, method="finite_difference")])
    if reentrant:
        with pytest.raises(RuntimeError, match="use_reentrant=True, torch.utils.checkpoint is incompatible with .grad"):
            gr.regularized_loss(model, x, y, [gr.DataGrad(1.0)])
        return
    loss, _ = gr.regularized_loss(model, x, y, [gr.DataGrad(1.0)])
    loss.backward()
    assert model.a.weight.grad is not None


def test_fd_refuses_a_model_whose_kinked_calls_change_between_the_passes():
    """A model that makes another number of ReLU calls in the shifted pass than in the first
    (its control flow depends on its input, or on its state): the replay used to compute the
    extra calls unfrozen, silently. Now it is a clear error, for too many calls and too few."""

    class Flip(nn.Module):
        def __init__(self, extra_on_odd: bool):
            super().__init__()
            self.lin, self.out, self.calls, self.extra_on_odd = nn.Linear(6, 6), nn.Linear(6, 5), 0, extra_on_odd

        def forward(self, x):
            self.calls += 1
            h = torch.relu(self.lin(x))
            if (self.calls % 2 == 1) == self.extra_on_odd:
                h = torch.relu(h - 0.1)
            return self.out(h)

    x, y = torch.randn(8, 6), torch.randint(0, 5, (8,))
    with pytest.raises(RuntimeError, match=r"shifted pass made 1 ReLU/max-pooling calls, the first pass 2"):
        gr.regularized_loss(Flip(True), x, y, [gr.DataGrad(1.0, method="finite_difference")])
    with pytest.raises(
        RuntimeError, match=r"kinked call 2 of the shifted pass \(relu of shape \(8, 6\)\) does not match"
    ):
        gr.regularized_loss(Flip(False), x, y, [gr.SpectReg(1.0, method="finite_difference")])


def test_replay_restores_the_random_state_of_any_device_with_an_rng_module():
    """Dropout on MPS or XPU draws from that device's generator, which the replay used to
    leave alone (the shifted pass then drew other masks). In a fresh process, a fake device
    module registered for ``privateuseone``: the replay sets the captured state and gives the
    advanced one back afterwards. A device without one is a clear error."""
    import subprocess
    import sys

    code = """
import types, torch
import gradreg.finite_difference as FD
state = {"s": torch.tensor([1], dtype=torch.uint8)}
mod = types.ModuleType("fake")
mod.get_rng_state = lambda device=None: state["s"].clone()
def set_rng_state(s, device=None): state["s"] = s.clone()
mod.set_rng_state = set_rng_state
mod.device_count = lambda: 1
torch._register_device_module("privateuseone", mod)
replay = FD.Replay(torch.device("privateuseone")).capture()
state["s"] = torch.tensor([2], dtype=torch.uint8)  # the first pass drew
with replay():
    inside = int(state["s"])
    state["s"] = torch.tensor([3], dtype=torch.uint8)
print(inside, int(state["s"]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "2"]
    code_bad = "import torch, gradreg.finite_difference as FD; FD.Replay(torch.device('privateuseone')).capture()"
    out = subprocess.run([sys.executable, "-c", code_bad], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "cannot replay the random draws (dropout) of a 'privateuseone' device" in out.stderr


@pytest.mark.parametrize("name", ["tanh_mlp", "lenet_dropout"])
@pytest.mark.parametrize("reg", ["DataGrad", "SpectReg"])
def test_fd_default_step_in_float64_is_float64s_not_float32s(name, reg):
    """float64 has its own defaults (1e-7 one-sided, 1e-5 central): against exact double
    backprop the relative error of the penalty gradient is below 1e-6 and 1e-8 (measured
    at most 2.8e-7 and 9.2e-10), where float32's 1e-3 / 1e-2 gave up to 2.8e-3 / 9.2e-4."""
    model, x, y = setup(name, torch.float64)
    exact, _, _ = penalty_gradient(model, x, y, REGS[reg]())
    for scheme, bound in (("one_sided", 1e-6), ("central", 1e-8)):
        g, _, _ = penalty_gradient(model, x, y, REGS[reg](method="finite_difference", fd_scheme=scheme))
        assert ((g - exact).norm() / exact.norm()).item() < bound, scheme

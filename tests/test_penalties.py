"""Oracle tests of every penalty: float64 brute force from the full per-example Jacobian
(torch.func.jacrev), the paper's Claims 1 and 2, its linear edge case, and gradcheck."""

import dataclasses
import math

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call, jacrev, vmap

import gradreg as gr
from gradreg import penalties as P

RTOL = 1e-10


@pytest.fixture(autouse=True)
def float64_default():
    """Every test here runs in float64; the default is restored for other test modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def mlp(d=6, m=7, act=nn.ReLU):
    return nn.Sequential(nn.Linear(d, 9), act(), nn.Linear(9, 8), act(), nn.Linear(8, m))


def convnet(m=5, act=nn.ReLU):
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), act(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), act(), nn.Flatten(), nn.Linear(4, m)
    )


CASES = {
    "mlp": (lambda: mlp(), (6,), 7),
    "mlp_tanh": (lambda: mlp(act=nn.Tanh), (6,), 7),
    "convnet": (lambda: convnet(), (2, 6, 6), 5),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
    torch.manual_seed(0)
    make, shape, m = CASES[request.param]
    model = make()
    x = torch.randn(5, *shape)
    y = torch.randint(0, m, (5,))
    return model, x, y, m


def per_example_jacobian(fn, x):
    """(B, m, *x.shape[1:]) Jacobian of fn at each example separately (float64 brute force)."""
    return vmap(jacrev(lambda xi: fn(xi.unsqueeze(0)).squeeze(0)))(x)


def rel_close(a, b, rtol=RTOL):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    assert torch.allclose(a, b, rtol=rtol, atol=1e-14), (a, b)


def flat_sq(t):
    return t.flatten(1).pow(2).sum(1)


# --------------------------------------------------------------------------- brute force


def test_frobreg_matches_brute_force(case):
    model, x, y, m = case
    J = per_example_jacobian(model, x)
    expected = J.flatten(2).pow(2).sum((1, 2)).mean()
    for method in ("auto", "batched", "loop"):
        rel_close(gr.penalty(model, x, y, gr.FrobReg(1.0, method=method)), expected)


def test_jacreg_matches_brute_force(case):
    model, x, y, m = case
    J = per_example_jacobian(lambda v: torch.softmax(model(v), 1), x)
    expected = J.flatten(2).pow(2).sum((1, 2)).mean()
    for method in ("auto", "batched", "loop"):
        rel_close(gr.penalty(model, x, y, gr.JacReg(1.0, method=method)), expected)


def test_datagrad_matches_per_example_brute_force(case):
    model, x, y, m = case
    # gradient of each example's own loss, one example at a time
    grads = []
    for xi, yi in zip(x, y):
        xi = xi.unsqueeze(0).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(xi), yi.unsqueeze(0)), xi)
        grads.append(g)
    g = torch.cat(grads)
    rel_close(gr.penalty(model, x, y, gr.DataGrad(1.0)), flat_sq(g).mean())
    rel_close(gr.penalty(model, x, y, gr.DataGrad(1.0, norm="l1")), g.flatten(1).abs().sum(1).mean())
    # not the gradient of the batch-mean loss, which is B times smaller
    xb = x.clone().requires_grad_(True)
    (gm,) = torch.autograd.grad(nn.functional.cross_entropy(model(xb), y), xb)
    rel_close(flat_sq(gm * len(x)).mean(), flat_sq(g).mean())


def test_claim2_datagrad_gradient_is_projected_jacobian(case):
    """Claim 2: d l_i / d x_i = J_g(x_i)^T (softmax(z_i) - y_i)."""
    model, x, y, m = case
    J = per_example_jacobian(model, x).flatten(2)  # (B, m, d)
    with torch.no_grad():
        w = torch.softmax(model(x), 1) - nn.functional.one_hot(y, m)
    projected = torch.einsum("bmd,bm->bd", J, w)
    fwd = gr.core.forward(model, x, y)
    (g,) = torch.autograd.grad(fwd.per_example_loss.sum(), fwd.x)
    rel_close(g.flatten(1), projected)


def test_onehot_matches_brute_force(case):
    model, x, y, m = case
    J = per_example_jacobian(model, x).flatten(2)
    rows = J[torch.arange(len(x)), y]  # gradient of the true logit
    rel_close(gr.penalty(model, x, y, gr.OneHot(1.0)), rows.pow(2).sum(1).mean())
    rel_close(gr.penalty(model, x, y, gr.OneHot(1.0, norm="l1")), rows.abs().sum(1).mean())


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_projected_jacobian_matches_brute_force(case, shared, norm):
    model, x, y, m = case
    J = per_example_jacobian(model, x).flatten(2)
    r = torch.randn(m) if shared else torch.randn(len(x), m)
    v = torch.einsum("bmd,bm->bd", J, r.expand(len(x), m))
    expected = v.pow(2).sum(1) if norm == "l2" else v.abs().sum(1)
    fwd = gr.core.forward(model, x, y)
    rel_close(P.projected_jacobian(fwd.logits, fwd.x, r, norm), expected)
    # K projections at once, batched or looped
    rs = torch.randn(3, len(x), m)
    vs = torch.einsum("bmd,kbm->kbd", J, rs)
    expected_k = (vs.pow(2).sum(2) if norm == "l2" else vs.abs().sum(2)).mean(0)
    for method in ("auto", "batched", "loop"):
        rel_close(P.projected_jacobian_mean(fwd.logits, fwd.x, rs, norm, method), expected_k)


@pytest.mark.parametrize(
    "reg",
    [
        gr.SpectReg(1.0),
        gr.SpectReg(1.0, projection="example"),
        gr.SpectReg(1.0, normalize=True, n_proj=4),
        gr.SpectReg(1.0, projection="example", normalize=True, n_proj=2, norm="l1"),
        gr.RandomOneHot(1.0),
        gr.RandomOneHot(1.0, projection="example", norm="l1"),
    ],
    ids=repr,
)
def test_random_penalties_match_brute_force_with_the_same_draw(case, reg):
    """The regularizer's value equals the brute-force norm of J^T r for the r its
    generator produced (the draw is reproduced from an identically seeded generator)."""
    model, x, y, m = case
    B = len(x)
    got = gr.penalty(model, x, y, reg, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    if isinstance(reg, gr.SpectReg):
        rows = 1 if reg.projection == "batch" else B
        r = torch.randn(reg.n_proj, rows, m, generator=g)
        if reg.normalize:
            r = r / r.norm(dim=2, keepdim=True) * math.sqrt(m)
        r = r.expand(reg.n_proj, B, m)
    else:
        rows = 1 if reg.projection == "batch" else B
        k = torch.randint(0, m, (rows,), generator=g)
        r = (torch.eye(m)[k] * math.sqrt(m)).expand(B, m).unsqueeze(0)
    J = per_example_jacobian(model, x).flatten(2)
    v = torch.einsum("bmd,kbm->kbd", J, r)
    per = v.pow(2).sum(2) if reg.norm == "l2" else v.abs().sum(2)
    rel_close(got, per.mean(0).mean())


def test_confidence_penalty_matches_numpy(case):
    model, x, y, m = case
    with torch.no_grad():
        z = model(x).numpy()
    import numpy as np

    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = (p * np.log(p)).sum(1).mean()
    rel_close(gr.penalty(model, x, y, gr.ConfidencePenalty(1.0)), torch.tensor(expected))
    assert expected < 0


def test_batchnorm_penalties_use_gradients_of_batch_sums():
    """With BatchNorm in training mode, the VJP is the input gradient of the batch sum."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6, track_running_stats=False), nn.ReLU(), nn.Linear(6, 3)
    ).train()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    Jfull = jacrev(model)(x)  # (B, m, B, d): batch statistics couple the examples
    per_class = Jfull.sum(0)  # d/dx sum_i z_ik, (m, B, d)
    expected = per_class.pow(2).sum((0, 2)).mean()
    rel_close(gr.penalty(model, x, y, gr.FrobReg(1.0)), expected)
    r = torch.randn(3)
    rel_close(
        P.projected_jacobian(*_fwd(model, x, y)[:2], r).mean(),
        torch.einsum("kbd,k->bd", per_class, r).pow(2).sum(1).mean(),
    )


def _fwd(model, x, y):
    f = gr.core.forward(model, x, y)
    return f.logits, f.x


# --------------------------------------------------------------------------- the paper's claims


def test_linear_layer_frobreg_is_weight_norm():
    """Section 5.2: for one dense linear layer, FrobReg is ||W||_F^2 (L2 weight decay)."""
    torch.manual_seed(2)
    lin = nn.Linear(11, 4)
    x, y = torch.randn(6, 11), torch.randint(0, 4, (6,))
    rel_close(gr.penalty(lin, x, y, gr.FrobReg(1.0)), lin.weight.pow(2).sum())


ESTIMATORS = [
    gr.SpectReg(1.0),
    gr.SpectReg(1.0, projection="example"),
    gr.SpectReg(1.0, normalize=True),
    gr.SpectReg(1.0, projection="example", normalize=True),
    gr.SpectReg(1.0, n_proj=3),
    gr.RandomOneHot(1.0),
    gr.RandomOneHot(1.0, projection="example"),
]


def sample_mean_and_stderr(model, x, y, reg, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    draws = torch.stack([gr.penalty(model, x, y, reg, generator=g).detach() for _ in range(n)])
    return draws.mean(), draws.std() / math.sqrt(n)


@pytest.mark.parametrize("reg", ESTIMATORS, ids=repr)
def test_claim1_unbiased_estimators_of_frobreg(reg):
    """Claim 1: with E[r r^T] = I, E||J^T r||^2 = ||J||_F^2. The sample mean of N draws must
    lie within 5 standard errors (computed from the sample) of the exact FrobReg."""
    torch.manual_seed(3)
    model, x, y = mlp(d=5, m=6), torch.randn(4, 5), torch.randint(0, 6, (4,))
    exact = gr.penalty(model, x, y, gr.FrobReg(1.0)).detach()
    mean, se = sample_mean_and_stderr(model, x, y, reg, n=600)
    assert se > 0
    assert abs(mean - exact) < 5 * se, (float(mean), float(exact), float(se))


def test_claim1_bound_has_power_against_a_biased_estimator():
    """The same bound rejects the paper's printed 1/sqrt(m) scaling, which is biased by 1/m."""
    torch.manual_seed(3)
    m = 6
    model, x, y = mlp(d=5, m=m), torch.randn(4, 5), torch.randint(0, m, (4,))
    exact = gr.penalty(model, x, y, gr.FrobReg(1.0)).detach()
    mean, se = sample_mean_and_stderr(model, x, y, gr.SpectReg(1.0), n=3000)
    assert abs(mean / m - exact) > 5 * se / m


def test_random_onehot_draws_every_class_including_the_last():
    m = 4
    k = P.random_onehot_projections(4000, m, projection="example", generator=torch.Generator().manual_seed(0))
    counts = (k > 0).sum(0)
    assert (counts > 0).all() and counts.sum() == 4000
    assert torch.allclose(k.max(1).values, torch.full((4000,), math.sqrt(m)))
    # uniform: each class count within 5 binomial standard deviations of n/m
    sd = math.sqrt(4000 * (1 / m) * (1 - 1 / m))
    assert ((counts - 1000).abs() < 5 * sd).all(), counts


def test_normalized_projection_lies_on_sphere_of_radius_sqrt_m():
    r = P.gaussian_projections(
        5, 3, 7, projection="example", normalize=True, generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(r.norm(dim=2), torch.full((5, 3), math.sqrt(7)))
    shared = P.gaussian_projections(2, 3, 7, projection="batch")
    assert torch.equal(shared[:, 0], shared[:, 2])


# --------------------------------------------------------------------------- differentiability


def _penalty_of_params(model, reg, x, y, seed=5):
    names = [n for n, _ in model.named_parameters()]

    def f(*params):
        g = torch.Generator().manual_seed(seed)
        call = lambda v: functional_call(model, dict(zip(names, params)), (v,))  # noqa: E731
        return gr.penalty(call, x, y, reg, generator=g)

    return f, tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())


@pytest.mark.parametrize(
    "reg",
    [
        gr.DataGrad(1.0),
        gr.SpectReg(1.0),
        gr.SpectReg(1.0, projection="example", normalize=True, n_proj=2),
        gr.FrobReg(1.0),
        gr.JacReg(1.0),
        gr.OneHot(1.0),
        gr.RandomOneHot(1.0),
        gr.ConfidencePenalty(1.0),
    ],
    ids=repr,
)
def test_parameter_gradients_pass_gradcheck(reg):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(3, 3), torch.randint(0, 3, (3,))
    f, params = _penalty_of_params(model, reg, x, y)
    assert torch.autograd.gradcheck(f, params)


# --------------------------------------------------------------------------- API contract


def test_same_generator_seed_gives_same_penalty():
    torch.manual_seed(6)
    model, x, y = mlp(), torch.randn(5, 6), torch.randint(0, 7, (5,))
    for reg in (gr.SpectReg(1.0), gr.RandomOneHot(1.0, projection="example")):
        a = gr.penalty(model, x, y, reg, generator=torch.Generator().manual_seed(11))
        b = gr.penalty(model, x, y, reg, generator=torch.Generator().manual_seed(11))
        c = gr.penalty(model, x, y, reg, generator=torch.Generator().manual_seed(12))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_regularized_loss_is_data_loss_plus_weighted_penalties():
    torch.manual_seed(7)
    model, x, y = mlp(), torch.randn(5, 6), torch.randint(0, 7, (5,))
    regs = [gr.DataGrad(50.0), gr.SpectReg(0.03), gr.ConfidencePenalty(0.5), gr.RandomOneHot(0.3), gr.FrobReg(0.0)]
    total, terms = gr.regularized_loss(model, x, y, regs, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # the same draws, in list order
    expected = nn.functional.cross_entropy(model(x), y)
    parts = {"loss": expected}
    for reg in regs:
        parts[reg.name] = gr.penalty(model, x, y, reg, generator=g)
        expected = expected + reg.weight * parts[reg.name]
    rel_close(total, expected)
    assert list(terms) == ["loss", "DataGrad", "SpectReg", "ConfidencePenalty", "RandomOneHot", "FrobReg"]
    for k, v in terms.items():
        assert not v.requires_grad
        rel_close(v, parts[k])
    total.backward()  # differentiable end to end


def test_regularized_loss_names_duplicates_and_half_sse():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(6, 1), torch.randn(6, 1)
    total, terms = gr.regularized_loss(model, x, y, [gr.SpectReg(0.1), gr.SpectReg(0.2, n_proj=2)], loss="half_sse")
    assert set(terms) == {"loss", "SpectReg", "SpectReg#2"}
    with torch.no_grad():
        rel_close(terms["loss"], 0.5 * (model(x) - y).pow(2).sum())
    # DataGrad of the SIN loss: per-example gradient of 1/2 (z_i - y_i)^2
    J = per_example_jacobian(model, x).flatten(1)  # (B, d) since m = 1
    with torch.no_grad():
        res = (model(x) - y).squeeze(1)
    rel_close(gr.penalty(model, x, y, gr.DataGrad(1.0), loss="half_sse"), (res[:, None] * J).pow(2).sum(1).mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_input(dtype):
    model = mlp().to(dtype)
    x, y = torch.randn(4, 6, dtype=dtype), torch.randint(0, 7, (4,))
    for reg in (gr.SpectReg(1.0, normalize=True), gr.RandomOneHot(1.0), gr.FrobReg(1.0)):
        assert gr.penalty(model, x, y, reg).dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_on_device_and_matches_cpu():
    torch.manual_seed(9)
    model, x, y = mlp(), torch.randn(4, 6), torch.randint(0, 7, (4,))
    cpu = gr.penalty(model, x, y, gr.FrobReg(1.0))
    gpu = gr.penalty(model.cuda(), x.cuda(), y.cuda(), gr.FrobReg(1.0))
    rel_close(gpu.cpu(), cpu, rtol=1e-9)
    s = gr.penalty(model, x.cuda(), y.cuda(), gr.SpectReg(1.0), generator=torch.Generator("cuda").manual_seed(0))
    assert s.is_cuda
    with pytest.raises(ValueError, match="generator is on"):
        gr.penalty(model, x.cuda(), y.cuda(), gr.SpectReg(1.0), generator=torch.Generator().manual_seed(0))


def test_caller_never_sets_requires_grad():
    model, x, y = mlp(), torch.randn(4, 6), torch.randint(0, 7, (4,))
    assert not x.requires_grad
    assert gr.penalty(model, x, y, gr.DataGrad(1.0)) > 0
    assert not x.requires_grad


# --------------------------------------------------------------------------- errors


def test_errors_name_the_problem():
    model, x, y = mlp(), torch.randn(4, 6), torch.randint(0, 7, (4,))
    with pytest.raises(ValueError, match="must be 2-D"):
        gr.penalty(lambda v: model(v).unsqueeze(1), x, y, gr.DataGrad(1.0))
    with pytest.raises(ValueError, match="batch-size mismatch"):
        gr.penalty(model, x, y[:3], gr.DataGrad(1.0))
    with pytest.raises(ValueError, match="batch-size mismatch"):
        gr.penalty(lambda v: model(v)[:2], x, y, gr.DataGrad(1.0))
    with pytest.raises(TypeError, match="floating-point"):
        gr.penalty(model, x.long(), y, gr.DataGrad(1.0))
    with pytest.raises(ValueError, match="labels out of range"):
        gr.penalty(model, x, torch.tensor([0, 1, 7, 2]), gr.DataGrad(1.0))
    with pytest.raises(ValueError, match="labels out of range"):
        gr.penalty(model, x, torch.tensor([0, -1, 3, 2]), gr.DataGrad(1.0))
    with pytest.raises(TypeError, match="integer class labels"):
        gr.penalty(model, x, y.double(), gr.DataGrad(1.0))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        gr.regularized_loss(model, x, y, [], loss="hinge")
    with pytest.raises(TypeError, match=r"regularizers\[1\] is a float"):
        gr.regularized_loss(model, x, y, [gr.DataGrad(1.0), 0.5])
    with pytest.raises(TypeError, match="not a gradreg regularizer"):
        gr.penalty(model, x, y, "datagrad")
    with pytest.raises(ValueError, match="needs loss='cross_entropy'"):
        gr.penalty(model, x, torch.randn(4, 7), gr.OneHot(1.0), loss="half_sse")
    with pytest.raises(ValueError, match="targets of shape"):
        gr.penalty(model, x, torch.randn(4, 3), gr.DataGrad(1.0), loss="half_sse")


@pytest.mark.parametrize("cls", list(gr.REGULARIZERS.values()), ids=lambda c: c.__name__)
def test_invalid_weights_raise(cls):
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight must be finite and >= 0"):
            cls(bad)
    with pytest.raises(TypeError, match="weight must be a real number"):
        cls("50")
    assert cls(0).weight == 0


def test_invalid_options_list_the_valid_choices():
    with pytest.raises(ValueError, match="valid choices: 'l2', 'l1'"):
        gr.DataGrad(1.0, norm="l3")
    with pytest.raises(ValueError, match="valid choices: 'batch', 'example'"):
        gr.SpectReg(1.0, projection="pixel")
    with pytest.raises(ValueError, match="n_proj must be an integer >= 1"):
        gr.SpectReg(1.0, n_proj=0)
    with pytest.raises(ValueError, match="valid choices: 'auto', 'batched', 'loop'"):
        gr.FrobReg(1.0, method="vmap")
    with pytest.raises(TypeError):
        gr.Regularizer(1.0)  # abstract


def test_regularizers_are_frozen():
    reg = gr.DataGrad(50.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        reg.weight = 1.0


def test_shared_projection_spectreg_vanishes_under_train_mode_batchnorm_before_the_last_layer():
    """A finding, not a bug: with BatchNorm (training mode) feeding the final dense layer, as
    in the paper's LeNet-BN, sum_i <z_i, r> = <W sum_i BN(h)_i, r> + B <b, r> does not depend
    on x (BN outputs sum to B*beta over the batch), so every batch-shared projection -- SpectReg
    with projection="batch", RandomOneHot with "batch", and the basis vectors of exact FrobReg --
    is 0 up to rounding under the batch-sum convention. Per-example projections do not vanish."""
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 5)).train()
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    frob = gr.penalty(model, x, y, gr.FrobReg(1.0))
    shared = gr.penalty(model, x, y, gr.SpectReg(1.0), generator=torch.Generator().manual_seed(0))
    per_example = gr.penalty(
        model, x, y, gr.SpectReg(1.0, projection="example"), generator=torch.Generator().manual_seed(0)
    )
    assert per_example > 1e-3
    assert shared < 1e-20 * per_example and frob < 1e-20 * per_example


def test_batch_projected_spectreg_vanishes_on_lenet_batchnorm_in_train_mode():
    """The paper's LeNet-BN ends BatchNorm1d(84) -> fc2, so in training mode the batch sum of
    the logits is W (B beta) + B b, whatever the input: the batch-projected SpectReg objective
    sum_i <z_i, r> is constant in x (checked by a float64 central difference of that objective
    in a random direction) and its penalty is 0, while one r per example gives a positive value."""
    from gradreg.networks import lenet5

    g = torch.Generator().manual_seed(3)
    model = lenet5(dropout=None, batchnorm=True, generator=g).double().train()
    x = torch.randn(16, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g)
    r = torch.randn(10, generator=g, dtype=torch.float64)
    d = torch.randn(x.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        objective = [(model(x + s * 1e-3 * d) @ r).sum().item() for s in (1.0, -1.0)]
    assert abs(objective[0] - objective[1]) / 2e-3 < 1e-9
    gen = torch.Generator().manual_seed(0)
    batch = gr.penalty(model, x, y, gr.SpectReg(1.0), generator=gen)
    example = gr.penalty(model, x, y, gr.SpectReg(1.0, projection="example"), generator=gen)
    assert batch.item() < 1e-20 and example.item() > 1e-3


# ------------------------------------------------------------ review findings (each failed before its fix)


def test_confidence_penalty_of_masked_logits_is_the_entropy_limit_not_nan():
    """A -inf logit (a masked class) has p log p = 0 in the limit; the penalty used to be NaN
    (0 * -inf) while cross-entropy on the same logits was finite. Oracle: the penalty of the
    logits with the masked class removed, and a finite gradient."""
    z = torch.tensor([[2.0, 0.0, -math.inf], [1.0, 1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    got = P.confidence_penalty(z)
    want = P.confidence_penalty(torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64))
    want = torch.stack([want[0], P.confidence_penalty(torch.ones(1, 3, dtype=torch.float64))[0]])
    torch.testing.assert_close(got, want)
    got.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_projection_helpers_refuse_an_unknown_projection():
    """A typo used to fall through to per-example draws, silently changing the estimator."""
    with pytest.raises(ValueError, match=r"projection='batches' is not valid; valid choices: 'batch', 'example'"):
        P.gaussian_projections(1, 4, 3, projection="batches")
    with pytest.raises(ValueError, match=r"projection='batches' is not valid"):
        P.random_onehot_projections(4, 3, projection="batches")


def test_regularize_refuses_sequence_logits_with_advice():
    """(B, T, m) logits used to be read as an ensemble of B runs: the loss came back with one
    value per example (backward() then failed far away) or SpectReg raised an engine message."""
    emb = torch.randn(3, 4, 5, requires_grad=True)
    logits = nn.Linear(5, 6)(emb)
    y = torch.randint(0, 6, (3, 4))
    for reg in (gr.DataGrad(1.0), gr.SpectReg(1.0)):
        with pytest.raises(ValueError, match=r"the logits must be 2-D \(batch, classes\), got shape \(3, 4, 6\)"):
            gr.regularize(logits, y, emb, [reg])
    # the advice works: one (pooled) prediction per sequence
    loss, _ = gr.regularize(logits.mean(1), y[:, 0], emb, [gr.DataGrad(1.0)])
    assert loss.dim() == 0


def test_softmax_penalties_refuse_a_model_with_one_output():
    """A softmax over one output is constant, so ConfidencePenalty and JacReg were silently 0
    (OneHot was already refused); a one-line error now says why."""
    x = torch.randn(4, 3, requires_grad=True)
    logits = nn.Linear(3, 1)(x)
    y = torch.randint(0, 1, (4,))
    for reg in (gr.ConfidencePenalty(0.5), gr.JacReg(1.0)):
        with pytest.raises(ValueError, match=rf"{reg.name} is a function of the softmax, which is constant with one"):
            gr.regularize(logits, y, x, [reg])

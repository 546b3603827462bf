"""Tests of gradreg.attacks. Each compares with an independent computation:

- a linear classifier's exact robust accuracy (closed form with dual norms, in NumPy);
- the ball and box constraints checked exactly in the input's dtype (and in float64 for float32 inputs);
- another library's PGD and FGSM (adversarial-robustness-toolbox) on a small CNN;
- the model's state, buffers, ``.grad`` and the global RNG before vs after;
- attacks in pixel units vs the same attacks in standardized units;
- hand-made accuracy curves for the masking flags.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradreg.attacks import (
    NORMS,
    fgsm,
    masking_flags,
    pgd,
    pixel_bounds,
    pixel_to_input,
    robust_accuracy,
)

CLASSES = 5


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mlp(d_in: int, classes: int = 3, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, 16), nn.Tanh(), nn.Linear(16, classes)).to(dtype)


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


# --------------------------------------------------------------------------- 1. exact linear oracle


@pytest.fixture(scope="module")
def linear_problem():
    """``z = W x + b`` (20 inputs, 5 classes, float64) and 300 examples, 10% of them with a random label."""
    torch.manual_seed(0)
    model = nn.Linear(20, CLASSES).double()
    x = torch.randn(300, 20, dtype=torch.float64)
    y = _predict(model, x)
    flip = torch.rand(300) < 0.1
    y[flip] = torch.randint(0, CLASSES, (int(flip.sum()),))
    return model, x, y


def _exact_critical_eps(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, norm: str) -> np.ndarray:
    """Per example, the largest eps it is robust to: ``min_k m_k / ||w_y - w_k||_*`` (<= 0 if misclassified),
    with ``m_k = (w_y - w_k) . x + b_y - b_k`` and the dual norm (L1 for linf, L2 for l2)."""
    W, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    X, Y = x.numpy(), y.numpy()
    out = np.empty(len(X))
    for i in range(len(X)):
        others = [k for k in range(CLASSES) if k != Y[i]]
        dw = W[Y[i]] - W[others]
        margin = dw @ X[i] + b[Y[i]] - b[others]
        dual = np.abs(dw).sum(1) if norm == "linf" else np.sqrt((dw**2).sum(1))
        out[i] = (margin / dual).min()
    return out


@pytest.mark.parametrize("norm", NORMS)
def test_pgd_and_fgsm_bound_the_exact_robust_accuracy_of_a_linear_model(linear_problem, norm):
    model, x, y = linear_problem
    critical = _exact_critical_eps(model, x, y, norm)
    assert robust_accuracy(model, x, y, 0.0) == (critical > 0).mean()
    ranked = np.sort(critical[critical > 0])
    for q in (0.2, 0.5, 0.8):
        j = int(q * len(ranked))
        eps = float(ranked[j] + ranked[j + 1]) / 2  # halfway between two examples' critical eps
        exact_robust = critical > eps
        for loss in ("ce", "margin"):
            x_adv = pgd(model, x, y, eps, norm=norm, loss=loss, restarts=5, generator=_gen(1))
            kept = _predict(model, x_adv) == y
            assert not (exact_robust & ~kept.numpy()).any(), f"PGD ({loss}) broke a provably robust example"
            if loss == "margin":
                assert kept.double().mean().item() - exact_robust.mean() <= 0.01, (norm, eps, loss)
        kept = _predict(model, fgsm(model, x, y, eps, norm=norm)) == y
        assert not (exact_robust & ~kept.numpy()).any(), "FGSM broke a provably robust example"
        acc = robust_accuracy(model, x, y, eps, norm=norm, loss="margin", restarts=5, generator=_gen(2))
        assert exact_robust.mean() <= acc <= exact_robust.mean() + 0.01


# --------------------------------------------------------------------------- 2. ball and box, exactly


def _assert_feasible(x_adv, x, eps, norm, lo=None, hi=None):
    """Per-example distance <= eps and lo <= x_adv <= hi, with no tolerance, in x's dtype (float64 as well)."""
    eps_t = torch.tensor(eps, dtype=x.dtype)
    delta = (x_adv - x).flatten(1)
    if norm == "linf":
        sizes = [delta.abs().amax(1), (x_adv.double() - x.double()).flatten(1).abs().amax(1)]
    else:
        sizes = [torch.linalg.vector_norm(delta, dim=1), (x_adv.double() - x.double()).flatten(1).pow(2).sum(1).sqrt()]
    assert (sizes[0] <= eps_t).all(), (sizes[0].max().item(), eps)
    assert (sizes[1] <= eps_t.double()).all(), (sizes[1].max().item(), eps)
    if lo is not None:
        assert (torch.as_tensor(lo, dtype=x.dtype) <= x_adv).all() and (
            x_adv <= torch.as_tensor(hi, dtype=x.dtype)
        ).all()
    return sizes[0]


def _box_inputs(dtype, n=64, seed=0):
    """Inputs (n, 3, 2, 2) in [0, 1], a third of the coordinates exactly on an edge."""
    g = _gen(seed)
    x = torch.rand(n, 3, 2, 2, generator=g, dtype=dtype)
    edge = torch.rand(x.shape, generator=g) < 1 / 3
    return torch.where(edge, (torch.rand(x.shape, generator=g) < 0.5).to(dtype), x)


CASES = [("linf", 0.1), ("linf", 1 / 3), ("linf", 0.7), ("l2", 0.3), ("l2", 1.7), ("l2", 5.0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm,eps", CASES)
def test_attacks_stay_in_the_ball_and_the_box_exactly(dtype, norm, eps):
    model = _mlp(12, dtype=dtype)
    x = _box_inputs(dtype)
    y = _predict(model, x)  # all correct clean, so that early stop does not leave any example at x
    per_channel = (torch.tensor([0.0, -0.5, 0.0], dtype=dtype).view(1, 3, 1, 1), torch.ones(1, 3, 1, 1, dtype=dtype))
    for lo, hi in [(0.0, 1.0), per_channel]:
        for x_adv in (
            fgsm(model, x, y, eps, norm=norm, bounds=(lo, hi)),
            pgd(model, x, y, eps, norm=norm, steps=5, generator=_gen(0), bounds=(lo, hi)),
            pgd(model, x, y, eps, norm=norm, steps=5, step_size=3 * eps, random_start=False, bounds=(lo, hi)),
        ):
            assert x_adv.dtype == dtype and x_adv.shape == x.shape
            sizes = _assert_feasible(x_adv, x, eps, norm, lo, hi)
            assert (sizes > 0).float().mean() > 0.9  # the attack moved (else this test could not fail)


def test_clamping_to_the_box_cannot_increase_the_l2_distance():
    """The claim behind projecting onto the ball first, then clamping: with x in the box, the clamp moves every
    coordinate toward x, so the distance to x cannot grow (checked in float64, without the library)."""
    g = _gen(5)
    x = torch.rand(1000, 10, generator=g, dtype=torch.float64)
    x_adv = x + 0.8 * torch.randn(1000, 10, generator=g, dtype=torch.float64)
    clamped = x_adv.clamp(0, 1)
    assert ((clamped - x).abs() <= (x_adv - x).abs()).all()
    assert (torch.linalg.vector_norm(clamped - x, dim=1) <= torch.linalg.vector_norm(x_adv - x, dim=1)).all()
    assert (clamped != x_adv).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm,eps", [("linf", 1e-3), ("l2", 1e-2), ("l2", 0.1)])
def test_rounding_far_from_zero_cannot_leave_the_ball(dtype, norm, eps):
    """|x| ~ 300: the ulp of x is a large fraction of eps, so x + delta rounds; the result must still be inside."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).to(dtype)  # linear: its gradient does not saturate
    with torch.no_grad():
        model[1].weight /= 300  # logits of order 1: in float32 a saturated softmax would have a zero gradient
    x = 300 * torch.randn(64, 3, 2, 2, generator=_gen(3), dtype=dtype)
    y = _predict(model, x)
    for x_adv in (fgsm(model, x, y, eps, norm=norm), pgd(model, x, y, eps, norm=norm, steps=3, generator=_gen(0))):
        sizes = _assert_feasible(x_adv, x, eps, norm)
        assert (sizes > eps / 2).float().mean() > 0.9


# --------------------------------------------------------------------------- 3. cross-check with ART


@pytest.fixture(scope="module")
def small_cnn():
    """A small CNN trained for 1.5 s on separable synthetic 1x8x8 images in [0, 1] (3 noisy class templates)."""
    torch.manual_seed(0)
    templates = torch.rand(3, 1, 8, 8)
    y = torch.randint(0, 3, (2000,))
    x = (0.5 * templates[y] + 0.25 + 0.2 * torch.randn(2000, 1, 8, 8)).clamp(0, 1)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 3),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        for idx in torch.randperm(800).split(100):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    assert robust_accuracy(model, x[800:], y[800:], 0.0) > 0.95
    return model, x[800:], y[800:]


def _art():
    pytest.importorskip("art", reason="adversarial-robustness-toolbox is not installed (pip install -e .[test])")
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier, ProjectedGradientDescentPyTorch, FastGradientMethod


def _accuracy(model, x_adv, y) -> float:
    return (_predict(model, torch.as_tensor(x_adv)) == y).double().mean().item()


@pytest.mark.parametrize("norm,eps", [("linf", 0.06), ("l2", 0.5)])
def test_pgd_and_fgsm_agree_with_art(small_cnn, norm, eps):
    classifier, art_pgd, art_fgsm = _art()
    model, x, y = small_cnn
    clf = classifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=3, clip_values=(0.0, 1.0))
    art_norm, steps = (np.inf if norm == "linf" else 2), 20
    alpha = 2.5 * eps / steps
    for random_start in (False, True):
        art_acc, our_acc = [], []
        for seed in range(3 if random_start else 1):  # the mean of 3 seeds: one seed's noise is ~1 point
            np.random.seed(seed)  # ART draws its random start from NumPy's global generator
            attack = art_pgd(clf, norm=art_norm, eps=eps, eps_step=alpha, max_iter=steps,
                             num_random_init=int(random_start), batch_size=len(x), verbose=False)  # fmt: skip
            art_acc.append(_accuracy(model, attack.generate(x.numpy(), y.numpy()), y))
            ours = robust_accuracy(model, x, y, eps, norm=norm, steps=steps, step_size=alpha,
                                   random_start=random_start, generator=_gen(seed), bounds=(0.0, 1.0))  # fmt: skip
            our_acc.append(ours)
        assert 0.2 < np.mean(art_acc) < 0.9  # a budget where the attack matters
        assert abs(np.mean(art_acc) - np.mean(our_acc)) <= 0.01, (random_start, art_acc, our_acc)
    art_x = art_fgsm(clf, norm=art_norm, eps=eps, batch_size=len(x)).generate(x.numpy(), y.numpy())
    ours = fgsm(model, x, y, eps, norm=norm, bounds=(0.0, 1.0))
    np.testing.assert_allclose(ours.numpy(), art_x, rtol=0, atol=1e-6)
    assert _accuracy(model, art_x, y) == robust_accuracy(model, x, y, eps, attack="fgsm", norm=norm, bounds=(0.0, 1.0))


# --------------------------------------------------------------------------- 4. behaviour


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(16, 3),
        nn.Dropout(0.2),
    )  # fmt: skip
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.train()
    model[6].eval()  # mixed flags: each must come back as it was
    return model


def _snapshot(model: nn.Module):
    flags = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    return flags, buffers


def _assert_unchanged(model: nn.Module, snapshot) -> None:
    flags, buffers = snapshot
    assert [m.training for m in model.modules()] == flags
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k


ATTACK_CALLS = {
    "fgsm": lambda m, x, y: fgsm(m, x, y, 0.1),
    "pgd": lambda m, x, y: pgd(m, x, y, 0.1, steps=3, restarts=2, generator=_gen(0)),
    "robust_accuracy": lambda m, x, y: robust_accuracy(m, x, y, 0.1, steps=3, generator=_gen(0)),
}


@pytest.mark.parametrize("name", list(ATTACK_CALLS))
def test_model_state_buffers_grads_and_global_rng_are_untouched(name):
    model, attack = _bn_model(), ATTACK_CALLS[name]
    x, y = torch.randn(32, 1, 4, 4, generator=_gen(1)), torch.arange(32) % 3
    model[0].bias.requires_grad_(False)
    snapshot, rng = _snapshot(model), torch.get_rng_state()
    attack(model, x, y)
    _assert_unchanged(model, snapshot)
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True, True, True]
    assert torch.equal(torch.get_rng_state(), rng)  # no dropout ran, no global randomness used
    grads = [torch.randn_like(p) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    attack(model, x, y)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


class _Fails(nn.Module):
    """Wraps a model and raises on its ``n``-th forward call."""

    def __init__(self, model: nn.Module, n: int):
        super().__init__()
        self.model, self.n, self.calls = model, n, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("boom")
        return self.model(x)


def test_state_is_restored_after_an_exception():
    model = _Fails(_bn_model(), n=2)
    snapshot = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        pgd(model, torch.randn(8, 1, 4, 4), torch.zeros(8, dtype=torch.long), 0.1, steps=3)
    _assert_unchanged(model, snapshot)


def test_the_generator_alone_decides_the_result_also_under_no_grad():
    model, x, y = _bn_model(), torch.randn(32, 1, 4, 4, generator=_gen(1)), torch.arange(32) % 3
    first = pgd(model, x, y, 0.3, steps=3, generator=_gen(7))
    with torch.no_grad():
        again = pgd(model, x, y, 0.3, steps=3, generator=_gen(7))
    other = pgd(model, x, y, 0.3, steps=3, generator=_gen(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not first.requires_grad


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_is_uniform_in_the_ball(norm):
    """A model with zero input gradient leaves PGD at its random start, which must be uniform in the ball
    (Kolmogorov-Smirnov): linf, each coordinate uniform on [-eps, eps]; l2, radius^d uniform on [0, eps^d] and
    the direction isotropic (mean about 0)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    d, n, eps = 3, 4000, 0.5
    model = nn.Linear(d, 2).double()
    with torch.no_grad():
        model.weight.zero_()
    x, y = torch.zeros(n, d, dtype=torch.float64), torch.zeros(n, dtype=torch.long)
    delta = pgd(model, x, y, eps, norm=norm, steps=1, generator=_gen(0)) - x
    if norm == "linf":
        assert scipy_stats.kstest(delta.flatten().numpy(), "uniform", args=(-eps, 2 * eps)).pvalue > 1e-3
    else:
        radius = torch.linalg.vector_norm(delta, dim=1).numpy()
        assert scipy_stats.kstest((radius / eps) ** d, "uniform").pvalue > 1e-3
        assert np.abs(delta.mean(0).numpy()).max() < 4 * eps / np.sqrt(n)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: a generator on another device than x")
def test_a_generator_on_another_device_draws_there_and_moves_the_draw():
    """A model with zero input gradient leaves PGD at its random start: the same CPU generator gives the same start
    for x on the CPU and x on CUDA; a CUDA generator works for x on the CPU."""
    model = nn.Linear(12, 3).double()
    with torch.no_grad():
        model.weight.zero_()
    x, y = torch.rand(16, 12, dtype=torch.float64), torch.zeros(16, dtype=torch.long)
    on_cpu = pgd(model, x, y, 0.3, steps=1, generator=_gen(0))
    on_cuda = pgd(model.cuda(), x.cuda(), y.cuda(), 0.3, steps=1, generator=_gen(0))
    assert on_cuda.device.type == "cuda" and torch.equal(on_cuda.cpu(), on_cpu)
    cuda_gen = torch.Generator(device="cuda").manual_seed(0)
    from_cuda_gen = pgd(model.cpu(), x, y, 0.3, norm="l2", steps=1, generator=cuda_gen)
    assert from_cuda_gen.device.type == "cpu" and not torch.equal(from_cuda_gen, x)


def test_restarts_keep_the_worst_case_per_example():
    """Three restarts in one call equal three single calls on one generator stream, combined by the rule: a
    misclassified iterate beats a correct one, then the higher loss wins."""
    model = _mlp(12, seed=3)
    x, y = torch.randn(200, 12, generator=_gen(4), dtype=torch.float64), torch.arange(200) % 3
    eps, kw = 0.4, {"steps": 2, "step_size": 0.1}
    stream = _gen(5)
    singles = torch.stack([pgd(model, x, y, eps, generator=stream, **kw) for _ in range(3)])  # (3, B, 12)
    best = pgd(model, x, y, eps, restarts=3, generator=_gen(5), **kw)
    with torch.no_grad():
        logits = model(singles.flatten(0, 1)).view(3, len(x), 3)
        loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(3), reduction="none").view(3, len(x))
        wrong = logits.argmax(2) != y
        best_logits = model(best)
    score = wrong.double() * 1e9 + loss  # misclassified first, then loss
    expected = singles[score.argmax(0), torch.arange(len(x))]
    assert torch.equal(best, expected)
    assert torch.equal(best_logits.argmax(1) != y, wrong.any(0))
    assert (wrong.any(0) & ~wrong.all(0)).any()  # some examples fall to some restarts only
    assert (~wrong.any(0) & (loss.amax(0) > loss.amin(0) + 1e-6)).any()  # and losses differ among the survivors


def test_early_stop_keeps_a_misclassified_iterate():
    model = _mlp(12, seed=3)
    x, y = torch.randn(100, 12, generator=_gen(4), dtype=torch.float64), torch.arange(100) % 3
    wrong = _predict(model, x) != y
    x_adv = pgd(model, x, y, 0.5, random_start=False, steps=5)
    assert wrong.any() and torch.equal(x_adv[wrong], x[wrong])
    assert (x_adv[~wrong] != x[~wrong]).any()
    for norm in NORMS:  # a step where no example moves, and an empty batch
        assert torch.equal(pgd(model, x[wrong], y[wrong], 0.5, norm=norm, random_start=False), x[wrong])
        assert pgd(model, x[:0], y[:0], 0.5, norm=norm).shape == (0, 12)


# --------------------------------------------------------------------------- robust_accuracy


class _Counts(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.model(x)


def test_robust_accuracy_attacks_only_clean_correct_examples_in_batches():
    base = _mlp(12, seed=3)
    x, y = torch.rand(50, 12, generator=_gen(4), dtype=torch.float64), torch.arange(50) % 3
    lo, hi = torch.zeros_like(x), torch.ones_like(x)  # bounds with a batch axis are cut like x
    correct = _predict(base, x) == y
    x_adv = fgsm(base, x, y, 0.2, bounds=(lo, hi))
    expected = (correct & (_predict(base, x_adv) == y)).double().mean().item()
    model = _Counts(base)
    assert robust_accuracy(model, x, y, 0.2, attack="fgsm", batch_size=20, bounds=(lo, hi)) == expected
    batches = [correct[i : i + 20].sum().item() for i in (0, 20, 40)]
    assert model.sizes == [20, batches[0], batches[0], 20, batches[1], batches[1], 10, batches[2], batches[2]]
    assert 0 < expected < correct.double().mean().item()


# --------------------------------------------------------------------------- pixel units


@pytest.mark.parametrize("norm", NORMS)
def test_pixel_units_map_to_input_units(norm):
    """Attacking ``net((p - mean) / std)`` in pixels with eps equals attacking ``net`` in input units with
    pixel_to_input(eps) and pixel_bounds, after standardizing."""
    mean, std, eps_px = 0.1307, 0.3081, 0.1
    assert pixel_to_input(eps_px, mean=mean, std=std) == eps_px / std
    assert pixel_bounds(mean=mean, std=std) == (-mean / std, (1 - mean) / std)
    net = _mlp(12, seed=1)
    pixel_model = nn.Sequential(_Standardize(mean, std), net)
    p, y = _box_inputs(torch.float64).flatten(1), torch.arange(64) % 3
    z = (p - mean) / std
    eps_z, bounds_z = pixel_to_input(eps_px, mean=mean, std=std), pixel_bounds(mean=mean, std=std)
    pairs = [
        (
            fgsm(pixel_model, p, y, eps_px, norm=norm, bounds=(0.0, 1.0)),
            fgsm(net, z, y, eps_z, norm=norm, bounds=bounds_z),
        ),
        (
            pgd(pixel_model, p, y, eps_px, norm=norm, steps=5, random_start=False, bounds=(0.0, 1.0)),
            pgd(net, z, y, eps_z, norm=norm, steps=5, random_start=False, bounds=bounds_z),
        ),
    ]
    for in_pixels, in_inputs in pairs:
        np.testing.assert_allclose(((in_pixels - mean) / std).numpy(), in_inputs.numpy(), rtol=0, atol=1e-9)


class _Standardize(nn.Module):
    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return (x - self.mean) / self.std


# --------------------------------------------------------------------------- 5. bad input


BAD_INPUTS = [
    (lambda m, x, y: pgd(m, x, y, -0.1), ValueError, "eps must be >= 0"),
    (lambda m, x, y: pgd(m, x, y, float("inf")), ValueError, "eps must be finite"),
    (lambda m, x, y: fgsm(m, x, y, float("nan")), ValueError, "eps must be finite"),
    (lambda m, x, y: pgd(m, x, y, "0.1"), TypeError, "eps must be a real number"),
    (lambda m, x, y: pgd(m, x, y, 0.1, norm="l1"), ValueError, "unknown norm 'l1'; valid norms: linf, l2"),
    (lambda m, x, y: fgsm(m, x, y, 0.1, norm="inf"), ValueError, "unknown norm 'inf'"),
    (
        lambda m, x, y: pgd(m, x, y, 0.1, loss="hinge"),
        ValueError,
        "unknown loss 'hinge'; valid losses: ce, margin",
    ),
    (
        lambda m, x, y: robust_accuracy(m, x, y, 0.1, attack="cw"),
        ValueError,
        "unknown attack 'cw'; valid attacks",
    ),
    (lambda m, x, y: robust_accuracy(m, x, y, 0.0, norm="l3"), ValueError, "unknown norm 'l3'"),
    (lambda m, x, y: pgd(m, x, y, 0.1, steps=0), ValueError, "steps must be >= 1"),
    (lambda m, x, y: pgd(m, x, y, 0.1, steps=2.0), TypeError, "steps must be an int"),
    (lambda m, x, y: pgd(m, x, y, 0.1, restarts=0), ValueError, "restarts must be >= 1"),
    (lambda m, x, y: pgd(m, x, y, 0.1, step_size=0.0), ValueError, "step_size must be > 0"),
    (lambda m, x, y: pgd(m, x, y, 0.1, step_size=-1), ValueError, "step_size must be > 0"),
    (lambda m, x, y: robust_accuracy(m, x, y, 0.1, batch_size=0), ValueError, "batch_size must be >= 1"),
    (
        lambda m, x, y: robust_accuracy(m, x, y, 0.0, attack="fgsm", loss="ce"),
        TypeError,
        "fgsm takes no argument loss",
    ),
    (lambda m, x, y: pgd(m, x, y, 0.1, bounds=(1.0, 0.0)), ValueError, "bounds have lo > hi"),
    (
        lambda m, x, y: pgd(m, x, y, 0.1, bounds=(0.0, 0.5)),
        ValueError,
        r"bounds exclude x: .* above hi by up to 0\.\d",
    ),
    (lambda m, x, y: fgsm(m, x - 2, y, 0.1, bounds=(-1.5, 1)), ValueError, r"below lo by up to 0\.\d+"),
    (lambda m, x, y: pgd(m, x, y, 0.1, bounds=(0.0,)), TypeError, r"bounds must be a \(lo, hi\) pair"),
    (lambda m, x, y: pgd(m, x, y, 0.1, bounds=(torch.zeros(5), 1.0)), ValueError, "does not broadcast to x"),
    (lambda m, x, y: pgd(m, x, y + 1, 0.1), ValueError, r"labels out of range: y in \[1, 3\], the model has 3"),
    (lambda m, x, y: fgsm(m, x, y - 1, 0.1), ValueError, "labels out of range"),
    (lambda m, x, y: robust_accuracy(m, x, y + 1, 0.0), ValueError, "labels out of range"),
    (lambda m, x, y: pgd(m, x, y[:5], 0.1), ValueError, r"x and y batch sizes differ: x \(6, 4\), y \(5,\)"),
    (lambda m, x, y: pgd(m, x, y.double(), 0.1), TypeError, "y must be an integer tensor"),
    (lambda m, x, y: pgd(m, x.long(), y, 0.1), TypeError, "x must be a floating-point tensor"),
    (lambda m, x, y: pixel_to_input(0.1, mean=0.5, std=0.0), ValueError, "std must be > 0"),
]


@pytest.mark.parametrize("call,error,match", BAD_INPUTS, ids=[match for _, _, match in BAD_INPUTS])
def test_bad_input_raises_one_clear_line(call, error, match):
    model, x, y = _mlp(4), torch.rand(6, 4, dtype=torch.float64), torch.arange(6) % 3
    with pytest.raises(error, match=match) as info:
        call(model, x, y)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- 6. masking flags


EPS = [0.0, 0.1, 0.2, 0.3]


def test_masking_flags_quiet_for_healthy_curves():
    pgd_acc, fgsm_acc = [0.99, 0.70, 0.40, 0.10], [0.99, 0.75, 0.50, 0.30]
    assert masking_flags(EPS, pgd_acc, fgsm_acc, transfer_acc=[0.99, 0.8, 0.6, 0.4], large_eps_acc=0.0) == []
    # within tolerance: a rise of one example in 200, PGD above FGSM by the same
    assert masking_flags(EPS, [0.99, 0.70, 0.704, 0.10], [0.99, 0.696, 0.70, 0.30], tol=1 / 200) == []


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"pgd_acc": [0.99, 0.40, 0.45, 0.10]}, ["PGD accuracy rises with eps: 0.400 at eps=0.1 -> 0.450 at eps=0.2"]),
        (
            {"fgsm_acc": [0.99, 0.75, 0.50, 0.60]},
            ["FGSM accuracy rises with eps: 0.500 at eps=0.2 -> 0.600 at eps=0.3"],
        ),
        ({"pgd_acc": [0.99, 0.70, 0.40, 0.35]}, ["PGD accuracy 0.350 above FGSM accuracy 0.300 at eps=0.3"]),
        ({"large_eps_acc": 0.2}, ["accuracy 0.200 at a large eps is not about 0 (> 0.05)"]),
        ({"transfer_acc": [0.99, 0.8, 0.3, 0.4]}, ["transfer accuracy 0.300 below white-box PGD accuracy 0.400"]),
    ],
)
def test_masking_flags_fire_one_at_a_time(kwargs, expected):
    args = {"pgd_acc": [0.99, 0.70, 0.40, 0.10], "fgsm_acc": [0.99, 0.75, 0.50, 0.30], **kwargs}
    flags = masking_flags(EPS, args.pop("pgd_acc"), args.pop("fgsm_acc"), **args)
    assert len(flags) == len(expected)
    assert all(flag.startswith(e) for flag, e in zip(flags, expected)), flags


def test_masking_flags_reject_inconsistent_curves():
    with pytest.raises(ValueError, match="fgsm_acc has 3 values for 4 eps"):
        masking_flags(EPS, [1, 1, 1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="eps must be ascending"):
        masking_flags([0.2, 0.1], [1, 1], [1, 1])

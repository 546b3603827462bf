"""The ensemble's optimizer, member by member, against torch.optim in float64."""

import pytest
import torch

from gradreg.ensemble.optim import PackedOptimizer


@pytest.mark.parametrize("kind", ["adam", "sgd_nesterov"])
def test_packed_optimizer_equals_torch_optim_per_member(kind):
    """K=3 members with different learning rates, 200 steps of random gradients (a fresh draw
    each step, as training gives): every member's parameters equal what torch.optim.Adam /
    SGD(momentum=0.9, nesterov=True) makes of the same gradients, in float64."""
    torch.manual_seed(0)
    k, shapes = 3, [(4, 5), (5,), (2, 3, 3, 3)]
    lrs = torch.tensor([1e-3, 5e-3, 2e-2], dtype=torch.float64)
    packed = [torch.randn(k, *s, dtype=torch.float64) for s in shapes]
    singles = [[p[i].clone().requires_grad_(True) for p in packed] for i in range(k)]
    opt = PackedOptimizer(packed, kind, k)
    refs = [
        torch.optim.Adam(ps, lr=float(lrs[i]), betas=(0.9, 0.999), eps=1e-8)
        if kind == "adam"
        else torch.optim.SGD(ps, lr=float(lrs[i]), momentum=0.9, nesterov=True, dampening=0.0)
        for i, ps in enumerate(singles)
    ]
    for step in range(200):
        scale = 0.1 ** (step // 100)  # a step in the schedule, as piecewise_lr makes
        grads = [torch.randn_like(p) for p in packed]
        for p, g in zip(packed, grads):
            p.grad = g
        opt.step(lrs * scale)
        for i, (ps, ref) in enumerate(zip(singles, refs)):
            for group in ref.param_groups:
                group["lr"] = float(lrs[i]) * scale
            for p, g in zip(ps, grads):
                p.grad = g[i].clone()
            ref.step()
    for i in range(k):
        for p, q in zip(packed, singles[i]):
            torch.testing.assert_close(p[i], q.detach(), rtol=1e-12, atol=1e-14)


def test_packed_optimizer_state_round_trips():
    p = [torch.randn(2, 3, dtype=torch.float64)]
    a = PackedOptimizer(p, "adam", 2)
    p[0].grad = torch.randn(2, 3, dtype=torch.float64)
    a.step(torch.ones(2, dtype=torch.float64))
    b = PackedOptimizer([p[0].clone()], "adam", 2)
    b.load_state_dict(a.state_dict())
    assert b.t == 1 and torch.equal(b.state[0]["m"], a.state[0]["m"]) and torch.equal(b.state[0]["v"], a.state[0]["v"])
    with pytest.raises(ValueError, match="valid choices: adam, sgd_nesterov"):
        PackedOptimizer(p, "rmsprop", 2)

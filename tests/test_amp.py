"""fp16 autocast with ``torch.amp.GradScaler``: the recipe of docs/dropin.md ("Mixed precision").

The inner input gradient is taken of ``S * f`` and unscaled in float32; the parameter backward
is scaled by the scaler as usual. Checked against float32 gradreg on CPU (float16 autocast),
and on CUDA where one is present (the device test)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradreg as gr

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def _model(device):
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 10))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m.to(device)


def _batch(device):
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 20, generator=g).to(device), torch.randint(0, 10, (32,), generator=g).to(device)


def _recipe_loss(model, x, y, scaler, reg, r, lam):
    """docs/dropin.md's loop body: the penalty from an inner gradient of S * f, unscaled in float32."""
    s = scaler.get_scale()
    xg = x.clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=torch.float16):
        logits = model(xg)
    assert logits.dtype == torch.float16
    pel = F.cross_entropy(logits.float(), y, reduction="none")
    f = pel.sum() if reg == "DataGrad" else (logits.float() @ r).sum()
    (g,) = torch.autograd.grad(f * s, xg, create_graph=True)
    penalty = (g.float() / s).flatten(1).pow(2).sum(1).mean()
    return pel.mean() + lam * penalty, penalty


def _settle(model, x, y, scaler, opt, reg="DataGrad", r=None, lam=1.0) -> int:
    """Recipe steps until the scaler takes one (its scale does not back off); the number of
    skipped steps. GradScaler starts at S = 2^16, where an inner gradient can overflow fp16;
    like an overflowing parameter gradient, that skips the step and halves S."""
    for skipped in range(40):
        s0 = scaler.get_scale()
        loss, _ = _recipe_loss(model, x, y, scaler, reg, r, lam)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if scaler.get_scale() >= s0:
            return skipped
    raise AssertionError("the scaler never took a step")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reg", ["DataGrad", "SpectReg"])
def test_fp16_gradscaler_recipe_matches_float32_gradreg(device, reg):
    model, (x, y) = _model(device), _batch(device)
    r = torch.randn(10, generator=torch.Generator().manual_seed(2)).to(device)
    lam = 0.5
    scaler = torch.amp.GradScaler(device)
    _settle(model, x, y, scaler, torch.optim.SGD(model.parameters(), lr=0.0), reg, r, lam)
    loss, penalty = _recipe_loss(model, x, y, scaler, reg, r, lam)
    model.zero_grad()
    scaler.scale(loss).backward()
    scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.0))  # the float32 gradients, unscaled
    fp16 = torch.cat([p.grad.flatten() for p in model.parameters()])

    ref_reg = gr.DataGrad(lam) if reg == "DataGrad" else gr.SpectReg(lam)
    model.zero_grad()
    if reg == "DataGrad":
        ref_loss, terms = gr.regularized_loss(model, x, y, [ref_reg])
    else:  # the same r: SpectReg's per-example value with r given
        xg = x.clone().requires_grad_()
        logits = model(xg)
        (gx,) = torch.autograd.grad((logits @ r).sum(), xg, create_graph=True)
        pen32 = gx.flatten(1).pow(2).sum(1).mean()
        ref_loss, terms = F.cross_entropy(logits, y) + lam * pen32, {"SpectReg": pen32.detach()}
    ref_loss.backward()
    fp32 = torch.cat([p.grad.flatten() for p in model.parameters()])
    rel = abs(penalty.item() - terms[reg].item()) / terms[reg].item()
    assert rel < 0.02, rel
    assert torch.isfinite(fp16).all()
    assert F.cosine_similarity(fp16, fp32, dim=0).item() > 0.999


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_inner_gradient_overflow_skips_the_step_and_lowers_the_scale(device):
    """With S = 2^40 the inner backward through the fp16 layers overflows (fp16 max 65504): the
    scaler sees inf in the parameter gradients, skips the step, and lowers S for the next one."""
    model, (x, y) = _model(device), _batch(device)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**40)
    loss, _ = _recipe_loss(model, x, y, scaler, "DataGrad", None, 1.0)
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))
    assert scaler.get_scale() < 2.0**40
    # the scaler backs off until a step goes through, and that step trains
    skipped = _settle(model, x, y, scaler, opt)
    assert skipped >= 0 and scaler.get_scale() < 2.0**40
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))

"""The ensemble engine: packed models equal their members, a member's trajectory does not
depend on its neighbours, and K=1 matches a single `gradreg train` run."""

import os
from pathlib import Path

import pytest
import torch

import gradreg as gr
from gradreg import models as M
from gradreg.config import paper_config
from gradreg.engine import ensemble_key, iter_train_many, train_many
from gradreg.pack import NotPackable, PackedModel
from gradreg.train import train

DATA = Path(os.environ.get("GRADREG_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_mnist = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"MNIST not found under {DATA}")

ARCHS = {
    "lenet_dropout": (lambda g: M.lenet5(generator=g), (1, 28, 28)),
    "lenet_bn": (lambda g: M.lenet5(dropout=None, batchnorm=True, generator=g), (1, 28, 28)),
    "mlp_sin": (lambda g: M.mlp_sin(generator=g), (1,)),
    "resnet_small": (lambda g: M.resnet_cifar(widths=(4, 8, 16), blocks=2, generator=g), (3, 16, 16)),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_packed_model_equals_its_members_forward_and_penalty_gradients(arch):
    """float64: packed logits, FrobReg-style input gradients and parameter gradients equal
    those of each member run alone (dropout masks from the same seeds)."""
    make, shape = ARCHS[arch]
    k = 3
    singles = [make(torch.Generator().manual_seed(i)).double() for i in range(k)]
    packed = PackedModel(singles).double().train()
    packed.set_dropout_generators([torch.Generator().manual_seed(100 + i) for i in range(k)])
    x = torch.randn(k, 4, *shape, dtype=torch.float64)
    xp = x.clone().requires_grad_(True)
    out = packed(xp)
    r = torch.randn(k, 4, out.shape[2], dtype=torch.float64)
    (gx,) = torch.autograd.grad(out, xp, r, create_graph=True)
    gx.pow(2).sum().backward()  # double backprop through the packed model
    for i, m in enumerate(singles):
        m.train()
        torch.manual_seed(100 + i)  # nn.Dropout draws from the global RNG
        xi = x[i].clone().requires_grad_(True)
        oi = m(xi)
        torch.testing.assert_close(out[i], oi, rtol=1e-12, atol=1e-12)
        (gi,) = torch.autograd.grad(oi, xi, r[i], create_graph=True)
        torch.testing.assert_close(gx[i], gi, rtol=1e-12, atol=1e-12)
        gi.pow(2).sum().backward()
        grads = {n: p.grad for n, p in m.named_parameters()}
        for name, mod in packed.net.named_modules():
            if hasattr(mod, "member_state") and mod is not packed.net:
                for pname, p in mod.named_parameters(recurse=False):
                    ref = grads[f"{name}.{pname}"]
                    if p.grad is None:  # e.g. the last bias: input gradients do not depend on it
                        assert ref is None or not ref.any()
                    else:
                        torch.testing.assert_close(p.grad[i], ref, rtol=1e-10, atol=1e-12)


def test_unpackable_layers_are_refused():
    with pytest.raises(NotPackable, match="cannot pack a GELU"):
        PackedModel([torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.GELU())])


@needs_mnist
def test_member_trajectory_does_not_depend_on_its_ensemble():
    """A member trained inside a K=5 ensemble of different seeds, sizes, regularizers,
    weight decays and learning rates reaches the same weights after 50 steps as alone."""
    base = paper_config("mnist", steps=50, eval_every=0, eval_limit=500)
    target = base.replace(seed=3, train_size=300, regularizers=(gr.DataGrad(20.0), gr.SpectReg(0.03)))
    others = [
        base.replace(seed=1, train_size=200),
        base.replace(seed=2, train_size=500, regularizers=(gr.SpectReg(0.1, projection="example"),), lr=2e-3),
        base.replace(seed=4, train_size=200, regularizers=(gr.ConfidencePenalty(0.5), gr.DataGrad(50.0)), weight_decay=0.0),
        base.replace(seed=5, train_size=250, regularizers=(gr.RandomOneHot(0.3), gr.SpectReg(0.01))),
    ]
    ensemble = others[:2] + [target] + others[2:]
    kw = dict(data_dir=DATA, dtype=torch.float64, keep_weights=True, strategy="packed", workers=1)
    inside = {o.index: o for o in iter_train_many(ensemble, **kw)}[2]
    (alone,) = list(iter_train_many([target], **kw))
    assert inside.result.ensemble_size == 5 and alone.result.ensemble_size == 1
    for name, w in alone.state_dict.items():
        torch.testing.assert_close(inside.state_dict[name], w, rtol=1e-9, atol=1e-12)
    assert inside.result.penalties == pytest.approx(alone.result.penalties, rel=1e-9)
    assert inside.result.dev == alone.result.dev and inside.result.test == alone.result.test
    assert inside.result.grad_norms == pytest.approx(alone.result.grad_norms, rel=1e-9)


@needs_mnist
@pytest.mark.parametrize("arch", ["dropout", "batchnorm"])
def test_single_member_engine_matches_gradreg_train(arch):
    opts = dict(dropout=0.5) if arch == "dropout" else dict(dropout=None, batchnorm=True)
    cfg = paper_config(
        "mnist", train_size=200, steps=6, eval_every=3, penalty_window=3, eval_limit=1000,
        regularizers=(gr.DataGrad(50.0), gr.SpectReg(0.03), gr.ConfidencePenalty(0.5)), **opts,
    )
    a = train(cfg, data_dir=DATA)
    (b,) = train_many([cfg], data_dir=DATA, strategy="packed")
    assert b.config == a.config and b.metric == a.metric
    assert b.train_loss == pytest.approx(a.train_loss, rel=1e-4)
    assert b.weight_norm_sq == pytest.approx(a.weight_norm_sq, rel=1e-5)
    # SpectReg under BatchNorm is ~1e-11 (see test_spectreg_vanishes_under_batchnorm): abs
    assert b.penalties == pytest.approx(a.penalties, rel=1e-3, abs=1e-8)
    assert b.grad_norms == pytest.approx(a.grad_norms, rel=1e-3)
    for pa, pb in zip(a.curve, b.curve):
        assert pa["step"] == pb["step"]
        assert pb["dev"] == pytest.approx(pa["dev"], abs=2e-3) and pb["test"] == pytest.approx(pa["test"], abs=2e-3)


def test_sin_ensemble_matches_single_runs_and_keeps_input_order():
    cfgs = [
        paper_config("sin", steps=60, eval_every=30, seed=s, regularizers=regs)
        for s, regs in [(1, ()), (2, (gr.SpectReg(0.03),)), (3, (gr.DataGrad(0.1), gr.FrobReg(0.01)))]
    ]
    cfgs.append(paper_config("sin2", steps=40, seed=1))  # another group
    results = train_many(cfgs, strategy="packed", workers=1)
    for c, r in zip(cfgs, results):
        assert r.config == c.to_dict()
        single = train(c)
        assert r.test == pytest.approx(single.test, rel=1e-3)
        assert r.penalties == pytest.approx(single.penalties, rel=1e-3)
        assert r.grad_norms == pytest.approx(single.grad_norms, rel=1e-3)
        assert r.fit == pytest.approx(single.fit, rel=1e-3, abs=1e-4) and len(r.fit) == 900
    assert [r.ensemble_size for r in results] == [3, 3, 3, 1]


def test_sequential_strategy_is_gradreg_train():
    cfg = paper_config("sin", steps=30, regularizers=(gr.SpectReg(0.03),))
    (r,) = train_many([cfg], strategy="sequential")
    s = train(cfg)
    assert (r.dev, r.test, r.penalties) == (s.dev, s.test, s.penalties)


def test_max_members_chunks_and_results_stream_out():
    cfgs = [paper_config("sin", steps=10, seed=s) for s in range(1, 6)]
    seen = [o.index for o in iter_train_many(cfgs, max_members=2, workers=1)]
    assert sorted(seen) == list(range(5))
    assert [o.result.ensemble_size for o in iter_train_many(cfgs[:3], max_members=2, workers=1)] == [2, 2, 1]


def test_a_diverging_member_is_reported_and_does_not_disturb_the_others():
    good = paper_config("sin", steps=30, seed=1)
    bad = good.replace(seed=2, lr=1e6, regularizers=(gr.DataGrad(1.0),))
    r_good, r_bad = train_many([good, bad], strategy="packed")
    assert r_bad.error and "not finite" in r_bad.error
    assert r_good.error is None
    assert r_good.test == pytest.approx(train(good).test, rel=1e-4)


def test_ensemble_key_groups_only_member_fields():
    a = paper_config("mnist")
    assert ensemble_key(a) == ensemble_key(a.replace(seed=9, lr=0.1, weight_decay=0, train_size=100,
                                                      regularizers=(gr.DataGrad(1.0),)))
    assert ensemble_key(a) != ensemble_key(a.replace(steps=5))
    assert ensemble_key(a) != ensemble_key(a.replace(dropout=None))


def test_bad_engine_arguments():
    with pytest.raises(ValueError, match="valid choices: auto, packed, sequential"):
        train_many([paper_config("sin")], strategy="vmap")
    with pytest.raises(TypeError, match=r"configs\[0\] is a dict"):
        train_many([{"dataset": "sin"}])


def test_members_that_fit_the_free_memory():
    from gradreg.engine import members_that_fit

    assert members_that_fit(free_bytes=10_000, per_member_bytes=100, cap=512) == 70  # 70% headroom
    assert members_that_fit(free_bytes=10_000, per_member_bytes=100, cap=16) == 16
    assert members_that_fit(free_bytes=50, per_member_bytes=100, cap=16) == 1


def test_cpu_chunks_split_over_worker_threads_give_the_same_results():
    from gradreg.engine import split_evenly

    assert split_evenly([1, 2, 3, 4, 5], 2) == [[1, 2, 3], [4, 5]] and split_evenly([1], 4) == [[1]]
    cfgs = [paper_config("sin", steps=40, seed=s, regularizers=(gr.SpectReg(0.03),)) for s in (1, 2, 3)]
    threads = torch.get_num_threads()
    one = train_many(cfgs, workers=1, dtype=torch.float64)
    two = train_many(cfgs, workers=2, dtype=torch.float64)
    assert torch.get_num_threads() == threads  # restored
    for a, b in zip(one, two):
        assert a.config == b.config
        assert b.test == pytest.approx(a.test, rel=1e-9) and b.penalties == pytest.approx(a.penalties, rel=1e-9)

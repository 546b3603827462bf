"""The ensemble engine: packed models equal their members, a member's trajectory does not
depend on its neighbours, and K=1 matches a single `gradreg train` run."""

import dataclasses

import pytest
import torch

import gradreg as gr
from conftest import DATA, needs_mnist
from gradreg import networks as M
from gradreg.config import paper_config
from gradreg.ensemble.loop import ensemble_key, iter_train_many, train_many
from gradreg.ensemble.pack import NotPackable, PackedModel
from gradreg.train import train

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
    weight decays and learning rates reaches the same weights after 20 steps as alone."""
    base = paper_config("mnist", steps=20, eval_every=0, eval_limit=500)
    target = base.replace(seed=3, train_size=300, regularizers=(gr.DataGrad(20.0), gr.SpectReg(0.03)))
    # chunks hold one set of regularizer kinds; members differ in every member field
    others = [
        base.replace(seed=1, train_size=200, regularizers=(gr.DataGrad(0.0), gr.SpectReg(0.3))),
        base.replace(seed=2, train_size=500, regularizers=(gr.DataGrad(5.0), gr.SpectReg(0.1)), lr=2e-3),
        base.replace(seed=4, train_size=200, regularizers=(gr.DataGrad(50.0), gr.SpectReg(0.01)), weight_decay=0.0),
        base.replace(seed=5, train_size=250, regularizers=(gr.DataGrad(1.0), gr.SpectReg(0.0))),
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
        "mnist",
        train_size=200,
        steps=6,
        eval_every=3,
        penalty_window=3,
        eval_limit=1000,
        regularizers=(gr.DataGrad(50.0), gr.SpectReg(0.03), gr.ConfidencePenalty(0.5)),
        **opts,
    )
    a = train(cfg, data_dir=DATA, threads=None)  # the packed member runs on this thread's count too
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
        for s, regs in [
            (1, (gr.SpectReg(0.01),)),
            (2, (gr.SpectReg(0.03),)),
            (4, (gr.SpectReg(0.0),)),
            (3, (gr.DataGrad(0.1), gr.FrobReg(0.01))),
        ]
    ]
    cfgs.append(paper_config("sin2", steps=40, seed=1))  # another group
    results = train_many(cfgs, workers=2)  # CPU: each member is its own single run, bitwise
    for c, r in zip(cfgs, results):
        assert r.config == c.to_dict()
        single = train(c)
        assert (r.dev, r.test, r.train_loss, r.penalties) == (
            single.dev,
            single.test,
            single.train_loss,
            single.penalties,
        )
        assert (r.curve, r.grad_norms, r.fit) == (single.curve, single.grad_norms, single.fit) and len(r.fit) == 900
    assert [r.ensemble_size for r in results] == [1, 1, 1, 1, 1]


def test_sequential_strategy_is_gradreg_train():
    cfg = paper_config("sin", steps=30, regularizers=(gr.SpectReg(0.03),))
    (r,) = train_many([cfg], strategy="sequential")
    s = train(cfg)
    assert (r.dev, r.test, r.penalties) == (s.dev, s.test, s.penalties)


def test_max_members_chunks_and_results_stream_out():
    cfgs = [paper_config("sin", steps=10, seed=s) for s in range(1, 6)]
    seen = [o.index for o in iter_train_many(cfgs, max_members=2, workers=1)]
    assert sorted(seen) == list(range(5))
    assert [o.result.ensemble_size for o in iter_train_many(cfgs[:3], max_members=2, workers=1, strategy="packed")] == [
        2,
        2,
        1,
    ]


def test_a_diverging_member_is_reported_and_does_not_disturb_the_others():
    good = paper_config("sin", steps=30, seed=1, regularizers=(gr.DataGrad(1.0),))
    bad = good.replace(seed=2, lr=1e6)
    r_good, r_bad = train_many([good, bad], strategy="packed", workers=1)
    assert r_good.ensemble_size == r_bad.ensemble_size == 2
    assert r_bad.error and "not finite" in r_bad.error
    assert r_good.error is None
    assert r_good.test == pytest.approx(train(good).test, rel=1e-4)


def test_ensemble_key_groups_only_member_fields():
    a = paper_config("mnist", regularizers=(gr.DataGrad(50.0),))
    assert ensemble_key(a) == ensemble_key(
        a.replace(seed=9, lr=0.1, weight_decay=0, train_size=100, regularizers=(gr.DataGrad(1.0),))
    )
    assert ensemble_key(a) != ensemble_key(a.replace(steps=5))
    assert ensemble_key(a) != ensemble_key(a.replace(dropout=None))
    # regularizer kinds are part of the key: no member pays for a penalty it does not have
    assert ensemble_key(a) != ensemble_key(a.replace(regularizers=()))
    assert ensemble_key(a) != ensemble_key(a.replace(regularizers=(gr.DataGrad(50.0, norm="l1"),)))
    assert ensemble_key(a) != ensemble_key(a.replace(regularizers=(gr.DataGrad(50.0, every=4),)))


def test_bad_engine_arguments():
    with pytest.raises(ValueError, match="valid choices: auto, packed, vmap, sequential"):
        train_many([paper_config("sin")], strategy="jit")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="max_members must be a positive integer"):
            train_many([paper_config("sin")], max_members=bad)
    with pytest.raises(TypeError, match=r"configs\[0\] is a dict"):
        train_many([{"dataset": "sin"}])


def test_members_that_fit_the_free_memory():
    from gradreg.ensemble.loop import members_that_fit

    assert members_that_fit(free_bytes=10_000, per_member_bytes=100, cap=512) == 70  # 70% headroom
    assert members_that_fit(free_bytes=10_000, per_member_bytes=100, cap=16) == 16
    assert members_that_fit(free_bytes=50, per_member_bytes=100, cap=16) == 1


def test_cpu_chunks_split_over_worker_threads_give_the_same_results():
    from gradreg.ensemble.loop import split_evenly

    assert split_evenly([1, 2, 3, 4, 5], 2) == [[1, 2, 3], [4, 5]] and split_evenly([1], 4) == [[1]]
    cfgs = [paper_config("sin", steps=40, seed=s, regularizers=(gr.SpectReg(0.03),)) for s in (1, 2, 3)]
    threads = torch.get_num_threads()
    one = train_many(cfgs, workers=1, dtype=torch.float64)
    two = train_many(cfgs, workers=2, dtype=torch.float64)
    assert torch.get_num_threads() == threads  # restored
    for a, b in zip(one, two):
        assert a.config == b.config
        assert b.test == pytest.approx(a.test, rel=1e-9) and b.penalties == pytest.approx(a.penalties, rel=1e-9)


# --------------------------------------------------------------------------- any regularizer, any model


@dataclasses.dataclass(frozen=True)
class LogitGradL1(gr.Regularizer):
    """A user-defined regularizer: mean_i ||d (sum_k z_ik) / d x_i||_1, plus a random sign
    per example (exercises draw()). Not registered: it serializes by its import path."""

    def draw(self, batch, m, generator, device, dtype):
        return torch.randint(0, 2, (batch, 1), generator=generator, device=device).to(dtype) * 2 - 1

    def per_example(self, fwd, draw=None):
        from gradreg import penalties as P

        r = draw.expand(*fwd.logits.shape)
        return P.projected_jacobian(fwd.logits, fwd.x, r, "l1")


def tiny_mlp():
    """A model the packer does not know (Tanh MLP with LayerNorm): trains through torch.func."""
    return torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.LayerNorm(16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


TINY = f"{__name__}:tiny_mlp"


def _alone_and_inside(target, others, strategy, dtype=torch.float64):
    kw = dict(dtype=dtype, keep_weights=True, strategy=strategy, workers=1)
    inside = {o.index: o for o in iter_train_many(others[:1] + [target] + others[1:], **kw)}[1]
    (alone,) = list(iter_train_many([target], **kw))
    return inside, alone


@pytest.mark.parametrize("strategy", ["packed", "vmap"])
def test_user_regularizer_trains_in_an_ensemble_as_alone(strategy):
    base = paper_config("sin", steps=25, eval_every=0)
    target = base.replace(seed=3, regularizers=(LogitGradL1(0.05), gr.SpectReg(0.01)))
    others = [
        base.replace(seed=s, lr=0.005 * s, regularizers=(LogitGradL1(0.2 * s), gr.SpectReg(0.02))) for s in (1, 2)
    ]
    inside, alone = _alone_and_inside(target, others, strategy)
    assert inside.result.ensemble_size == 3 and alone.result.ensemble_size == 1
    for name, w in alone.state_dict.items():
        torch.testing.assert_close(inside.state_dict[name], w, rtol=1e-9, atol=1e-12)
    assert inside.result.penalties == pytest.approx(alone.result.penalties, rel=1e-9)
    assert set(alone.result.penalties) == {"LogitGradL1", "SpectReg"}
    assert alone.result.config["regularizers"][0]["name"] == f"{__name__}:LogitGradL1"  # its import path
    # ... and alone in the engine as in gradreg.train (one code path for the penalty)
    single = train(target.replace(), progress=False)
    assert alone.result.penalties == pytest.approx(single.penalties, rel=1e-3)


def test_import_path_model_trains_through_vmap_as_alone_and_as_a_single_run():
    base = paper_config("sin", model=TINY, steps=30, eval_every=10)
    target = base.replace(seed=2, regularizers=(gr.DataGrad(0.05),))
    others = [base.replace(seed=s, weight_decay=1e-3, regularizers=(gr.DataGrad(0.3),)) for s in (1, 5)]
    with pytest.warns(None) if False else _no_warning():
        results = train_many([others[0], target, others[1]], workers=1, dtype=torch.float64, strategy="vmap")
    inside, alone = _alone_and_inside(target, others, "vmap")
    for name, w in alone.state_dict.items():
        torch.testing.assert_close(inside.state_dict[name], w, rtol=1e-9, atol=1e-12)
    assert results[1].test == pytest.approx(inside.result.test, rel=1e-9)
    single = train(target)
    assert single.test == pytest.approx(alone.result.test, rel=1e-3)
    assert single.penalties == pytest.approx(alone.result.penalties, rel=1e-3)


class _no_warning:
    def __enter__(self):
        import warnings

        self.cm = warnings.catch_warnings()
        self.cm.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)


def test_vmap_ensemble_keeps_per_member_batchnorm_statistics():
    from gradreg.ensemble.functional import FunctionalEnsemble

    torch.manual_seed(0)
    singles = [
        torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
        for _ in range(3)
    ]
    ens = FunctionalEnsemble(singles).train()
    x = torch.randn(3, 8, 3)
    out = ens(x)
    for i, m in enumerate(singles):
        m.train()
        torch.testing.assert_close(out[i], m(x[i]))
        torch.testing.assert_close(ens.member_state_dict(i)["1.running_mean"], m[1].running_mean)
    ens.eval()
    for m in singles:
        m.eval()
    torch.testing.assert_close(ens(x)[2], singles[2](x[2]))


def test_unvmappable_model_falls_back_to_sequential_with_a_reason():
    from gradreg.ensemble.trainer import choose_strategy

    cfg = paper_config("sin", model=f"{__name__}:data_dependent", steps=5, eval_every=0)
    use, why = choose_strategy(cfg)  # what "auto" picks on a GPU (on CPU every run is a single run)
    assert use == "sequential" and "vmap failed" in why
    (r,) = train_many([cfg])
    assert r.steps_done == 5


class DataDependent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(1, 1)

    def forward(self, x):
        if x.sum() > 1e9:  # data-dependent control flow: vmap cannot trace it
            return x
        return self.fc(x)


def data_dependent():
    return DataDependent()


def test_bad_model_paths_and_factories_name_the_problem():
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        train_many([paper_config("sin", model="no_such_module:f", steps=2)])
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        train_many([paper_config("sin", model=f"{__name__}:nope", steps=2)])
    with pytest.raises(TypeError, match="returned a int, not a torch.nn.Module"):
        train_many([paper_config("sin", model=f"{__name__}:not_a_module", steps=2)])
    with pytest.raises(ValueError, match="must look like 'package.module:factory'"):
        paper_config("sin", model=":f")
    with pytest.raises(ValueError, match="valid choices: mlp_sin"):
        paper_config("sin", model="lenet5")


def not_a_module():
    return 3


def test_a_regularizer_that_breaks_the_contract_is_named():
    @dataclasses.dataclass(frozen=True)
    class Scalar(gr.Regularizer):
        def per_example(self, fwd, draw=None):
            return fwd.logits.sum()

    with pytest.raises(
        ValueError, match=r"Scalar.per_example returned \(\); a regularizer returns one value per example"
    ):
        train_many([paper_config("sin", steps=2, regularizers=(Scalar(1.0),))], strategy="packed")


@needs_mnist
def test_hidden_layer_penalty_in_the_engine_equals_alone_and_the_single_run():
    """wrt="pool1" (LeNet's first conv block): a member inside an ensemble reaches the same
    weights as alone (float64), and the engine's penalties equal gradreg.train's."""
    base = paper_config("mnist", steps=8, eval_every=0, eval_limit=200, train_size=200, wrt="pool1")
    target = base.replace(seed=3, regularizers=(gr.DataGrad(5.0), gr.SpectReg(0.3)))
    others = [base.replace(seed=s, regularizers=(gr.DataGrad(1.0 * s), gr.SpectReg(0.1))) for s in (1, 2)]
    kw = dict(data_dir=DATA, dtype=torch.float64, keep_weights=True, strategy="packed", workers=1)
    inside = {o.index: o for o in iter_train_many(others[:1] + [target] + others[1:], **kw)}[1]
    (alone,) = list(iter_train_many([target], **kw))
    for name, w in alone.state_dict.items():
        torch.testing.assert_close(inside.state_dict[name], w, rtol=1e-9, atol=1e-12)
    single = train(target, data_dir=DATA)
    assert alone.result.penalties == pytest.approx(single.penalties, rel=1e-5)
    assert alone.result.penalties != train(target.replace(wrt=None), data_dir=DATA).penalties

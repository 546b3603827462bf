"""Config identity (equal configs, equal run keys, through the store) and the library's
answers to bad input: each a clear TypeError/ValueError that names the problem."""

import pytest
import torch

import gradreg as gr
from gradreg.config import TrainConfig, paper_config
from gradreg.paper.experiments import build
from gradreg.sweep.store import Store, run_key


def test_equal_configs_have_equal_run_keys_through_the_store(tmp_path):
    a = paper_config("mnist", weight_decay=0, lr=1, regularizers=(gr.DataGrad(50),))
    b = paper_config("mnist", weight_decay=0.0, lr=1.0, regularizers=(gr.DataGrad(50.0),))
    assert a == b and a.to_dict() == b.to_dict() and run_key(a.to_dict()) == run_key(b.to_dict())
    assert TrainConfig.from_dict(a.to_dict()) == a
    with Store(tmp_path / "s.sqlite") as store:
        store.put(
            "x",
            {
                "config": a.to_dict(),
                "metrics": {},
                "curve": [],
                "wall_time_s": 1.0,
                "steps_per_s": 1.0,
                "device": "cpu",
                "torch_version": "t",
            },
        )
        assert store.has(b.to_dict())
    # the specs' configs and the store agree on what is the same run
    exp = build("table4", "quick")
    assert len({run_key(c.to_dict()) for c in exp.runs()}) == len(exp.runs())


def test_options_added_later_keep_old_run_keys():
    """A config written before `every`/`method` existed has the same dict, so the same key."""
    old = {"name": "DataGrad", "weight": 50.0, "norm": "l2"}
    cfg = paper_config("mnist", regularizers=(gr.DataGrad(50.0),))
    assert cfg.to_dict()["regularizers"] == [old]
    assert paper_config("mnist", regularizers=(gr.DataGrad(50.0, every=2),)).to_dict()["regularizers"][0]["every"] == 2


def test_unknown_config_fields_are_named():
    d = paper_config("sin").to_dict() | {"warp_drive": 1}
    with pytest.raises(ValueError, match="unknown field.*warp_drive"):
        TrainConfig.from_dict(d)


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))


def test_under_no_grad_or_inference_mode_is_a_clear_error():
    model, x, y = mlp(), torch.randn(3, 6), torch.randint(0, 4, (3,))
    for ctx, word in ((torch.no_grad, "no_grad"), (torch.inference_mode, "inference_mode")):
        for fn in (
            lambda: gr.regularized_loss(model, x, y, [gr.DataGrad(1.0)]),
            lambda: gr.penalty(model, x, y, gr.SpectReg(1.0)),
        ):
            with ctx(), pytest.raises(RuntimeError, match=f"needs autograd, but it runs under torch.{word}"):
                fn()


def test_generator_must_be_a_torch_generator():
    model, x, y = mlp(), torch.randn(3, 6), torch.randint(0, 4, (3,))
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        gr.regularized_loss(model, x, y, [gr.SpectReg(1.0)], generator=123)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        gr.penalty(model, x, y, gr.SpectReg(1.0), generator=123)


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int16, torch.int8])
def test_integer_labels_of_any_integer_dtype_are_accepted(dtype):
    torch.manual_seed(0)
    model, x, y = mlp(), torch.randn(5, 6), torch.randint(0, 4, (5,))
    ref, t_ref = gr.regularized_loss(model, x, y, [gr.DataGrad(1.0), gr.OneHot(0.3)])
    got, t_got = gr.regularized_loss(model, x, y.to(dtype), [gr.DataGrad(1.0), gr.OneHot(0.3)])
    assert torch.equal(ref, got) and t_ref.keys() == t_got.keys()


def test_a_weight_that_overflows_the_loss_is_refused_where_it_is_set():
    with pytest.raises(ValueError, match="weight 1e\\+40 is larger than 1e\\+30; the loss would overflow to inf"):
        gr.DataGrad(1e40)
    assert gr.DataGrad(1e30).weight == 1e30


def test_functional_layer_never_returns_silent_zeros():
    from gradreg import penalties as P

    model, x = mlp(), torch.randn(3, 6)
    logits = model(x)
    x.requires_grad_()  # too late: the logits do not depend on it
    with pytest.raises(gr.NoInputGradient, match="do not depend on input #0"):
        P.frobreg(logits, x)
    with pytest.raises(gr.NoInputGradient, match="do not depend on input #0"):
        P.projected_jacobian(logits, x, torch.randn(4))
    z = torch.randn(3, 6)
    with pytest.raises(gr.NoInputGradient, match="does not require grad"):
        P.datagrad(model(z).sum(1), z)


def test_a_store_written_with_unnormalized_keys_is_migrated_and_keeps_its_results(tmp_path, capsys):
    """A 0.1 store keyed `weight_decay: 0` (int): the next run re-keys it (message) instead of
    retraining, and the run is found under the new key."""
    from gradreg.paper.experiments import Cell, Experiment
    from gradreg.sweep.runner import STORE_NAME, InProcessExecutor, run_experiment

    cfg = paper_config("sin", steps=5, eval_every=0, weight_decay=0.0)
    old = dict(cfg.to_dict(), weight_decay=0)  # as gradreg 0.1 serialized an int
    assert run_key(old) != run_key(cfg.to_dict())
    with Store(tmp_path / STORE_NAME) as store:
        store.put(
            "x",
            {
                "config": old,
                "metrics": {"test": 0.5},
                "curve": [],
                "wall_time_s": 1.0,
                "steps_per_s": 1.0,
                "device": "cpu",
                "torch_version": "t",
            },
        )
    exp = Experiment("x", "t", "table", "mse", (Cell("r", "c", ((None, cfg),)),), (1,))
    summary = run_experiment(exp, tmp_path, InProcessExecutor(progress=False), log=print)
    assert summary.trained == 0 and summary.already_stored == 1
    assert "migrated 1 stored runs" in capsys.readouterr().out
    with Store(tmp_path / STORE_NAME) as store:
        assert store.has(cfg.to_dict()) and store.count() == 1

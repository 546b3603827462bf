"""Robustness probes in run records, adversarial training, and the robustness report.

Each probe row is checked against the attack run independently on the trained model with the
documented pixel-unit mapping (eps / std, bounds of the pixel range); the engine's records
against ``gradreg.train``'s with ``==``; a stopped and resumed adversarial run against an
uninterrupted one with ``==``; the report's statistics against scipy.
"""

import math
import os
import threading

import pytest
import torch

import gradreg as gr
from gradreg import attacks as A
from gradreg.config import paper_config
from gradreg.datasets import load_splits
from gradreg.ensemble.loop import train_many
from gradreg.streams import stream_seed
from gradreg.train import Interrupted, train, train_model

DATA = os.environ.get("GRADREG_DATA_DIR")
needs_data = pytest.mark.skipif(not DATA, reason="needs MNIST (set GRADREG_DATA_DIR)")


def _cfg(**kw):
    base = dict(train_size=100, steps=6, eval_every=0, eval_limit=100, robust_examples=40, robust_steps=3)
    return paper_config("mnist", **{**base, **kw})


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the surrogates' examples


@needs_data
def test_each_probe_row_is_the_attack_run_on_the_trained_model_in_pixel_units():
    cfg = _cfg(robust_linf=(0.1,), robust_l2=(1.5,), regularizers=(gr.DataGrad(5.0),))
    result, model = train_model(cfg, data_dir=DATA)
    splits = load_splits(cfg, DATA)
    x, y = splits.x_test[:40], splits.y_test[:40]
    bounds = ((0 - splits.mean) / splits.std, (1 - splits.mean) / splits.std)
    probe = result.robust
    assert probe["examples"] == 40 and probe["clean"] == float((model.eval()(x).argmax(1) == y).float().mean())
    for row in probe["points"]:
        eps = row["eps"] / splits.std
        gen = torch.Generator().manual_seed(stream_seed(cfg.seed, f"robust:{row['norm']}:{row['eps']!r}"))
        kw = dict(norm=row["norm"], steps=3, loss="margin", bounds=bounds)
        assert row["pgd"] == A.robust_accuracy(model, x, y, eps, generator=gen, **kw)
        assert row["fgsm"] == A.robust_accuracy(model, x, y, eps, attack="fgsm", norm=row["norm"], bounds=bounds)
    assert [(r["norm"], r["eps"]) for r in probe["points"]] == [("linf", 0.1), ("l2", 1.5)]


@needs_data
def test_a_row_does_not_depend_on_the_other_rows_and_the_own_surrogate_transfers_its_own_pgd():
    both = train(_cfg(robust_linf=(0.1, 0.3)), data_dir=DATA).robust
    one = train(_cfg(robust_linf=(0.3,)), data_dir=DATA).robust
    assert both["points"][1] == one["points"][0]
    # NoGR is its own surrogate: the transfer examples are PGD on this very model (another stream)
    assert all(0 <= r["transfer"] <= 1 for r in both["points"]) and both["large_linf"]["pgd"] <= 0.05


@needs_data
def test_probes_in_the_engine_are_bitwise_those_of_single_runs():
    cfgs = [_cfg(seed=s, robust_linf=(0.1,), regularizers=regs) for s, regs in ((1, ()), (2, (gr.SpectReg(0.03),)))]
    engine = train_many(cfgs, data_dir=DATA, workers=2)
    for c, r in zip(cfgs, engine):
        alone = train(c, data_dir=DATA)
        assert r.robust["points"] == alone.robust["points"] and (r.test, r.curve) == (alone.test, alone.curve)


@needs_data
def test_adversarial_training_stopped_and_resumed_is_bitwise_an_uninterrupted_run(tmp_path):
    cfg = _cfg(adversarial="fgsm", steps=8)
    clean = train(cfg, data_dir=DATA)
    stop = threading.Event()
    ck = tmp_path / "run.pt"
    with pytest.raises(Interrupted):
        train(cfg, data_dir=DATA, checkpoint=ck, stop=stop, on_step=lambda done: done == 4 and stop.set())
    resumed = train(cfg, data_dir=DATA, checkpoint=ck, resume=True)
    assert (resumed.test, resumed.train_loss, resumed.weight_norm_sq) == (
        clean.test,
        clean.train_loss,
        clean.weight_norm_sq,
    )
    assert clean.train_loss != train(cfg.replace(adversarial=None), data_dir=DATA).train_loss


@needs_data
def test_the_adversarial_batch_stays_in_the_ball_and_the_pixel_range():
    from gradreg.train import _adversarial_batch

    cfg = _cfg(adversarial="pgd", adversarial_steps=3, adversarial_eps=0.2)
    splits = load_splits(cfg, DATA)
    model = gr_model(cfg)
    x, y = splits.x_train[:30], splits.y_train[:30]
    adv = _adversarial_batch(model, x, y, cfg, splits, torch.Generator().manual_seed(0))
    eps = torch.tensor(0.2 / splits.std, dtype=x.dtype)
    assert (adv - x).abs().max() <= eps and (adv - x).abs().max() > 0.5 * eps
    lo, hi = A.pixel_bounds(mean=splits.mean, std=splits.std)
    assert adv.min() >= torch.tensor(lo, dtype=x.dtype) and adv.max() <= torch.tensor(hi, dtype=x.dtype)


def gr_model(cfg):
    from gradreg.models import build_model

    return build_model(cfg, torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(dataset="sin", robust_linf=(0.1,)), "attack images"),
        (dict(robust_linf=(-0.1,)), "robust_linf must hold finite numbers > 0"),
        (dict(adversarial="pgd7"), "adversarial='pgd7' is not valid"),
        (dict(adversarial_eps=0.0), "adversarial_eps must be"),
        (dict(robust_examples=0), "robust_examples must be >= 1"),
    ],
)
def test_bad_probe_and_adversarial_options_are_one_line_errors(kw, match):
    dataset = kw.pop("dataset", "mnist")
    with pytest.raises(ValueError, match=match):
        paper_config(dataset, **kw)


def test_probe_fields_keep_old_run_keys_and_round_trip():
    from gradreg.config import TrainConfig

    plain = paper_config("mnist")
    assert "robust_linf" not in plain.to_dict() and "adversarial" not in plain.to_dict()
    probed = plain.replace(robust_linf=[0.1, 0.2], robust_l2=(1,))
    assert probed.robust_linf == (0.1, 0.2) and probed.robust_l2 == (1.0,)
    assert TrainConfig.from_dict(probed.to_dict()) == probed


def test_cli_flags_set_the_probes_and_adversarial_training():
    from gradreg.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        ["train", "--dataset", "mnist", "--robust-linf", "0.05", "0.1", "--robust-l2", "1", "--adversarial", "fgsm"]
    )
    cfg = config_from_args(args)
    assert (cfg.robust_linf, cfg.robust_l2, cfg.adversarial) == ((0.05, 0.1), (1.0,), "fgsm")


# --------------------------------------------------------------------------- the report


def _row(col, seed, pgd, steps_per_s=10.0):
    points = [{"norm": "linf", "eps": 0.1, "pgd": pgd, "fgsm": pgd + 0.1, "transfer": pgd + 0.2}]
    probe = {"examples": 1000, "clean": 0.97, "points": points, "large_linf": {"pgd": 0.0}, "flags": []}
    return {"metrics": {"robust": probe}, "steps_per_s": steps_per_s, "seed": seed}


class _Summary:
    def __init__(self, col, runs, lam=None):
        self.row, self.col, self.lam, self.runs = "r", col, lam, runs


def test_report_welch_and_bonferroni_match_scipy_and_masking_reads_the_means():
    from scipy import stats as sps

    from gradreg.sweep import robust

    base = [_row("NoGR", s, p) for s, p in enumerate((0.50, 0.52, 0.49))]
    reg = [_row("DataGrad", s, p, 5.0) for s, p in enumerate((0.60, 0.63, 0.61))]
    other = [_row("CP", s, p) for s, p in enumerate((0.51, 0.50, 0.53))]
    cells = [robust.robust_cell(_Summary(c, rows)) for c, rows in (("NoGR", base), ("DataGrad", reg), ("CP", other))]
    robust.compare(cells, "NoGR")
    p = sps.ttest_ind([0.60, 0.63, 0.61], [0.50, 0.52, 0.49], equal_var=False).pvalue
    assert cells[1].p_adj[("linf", 0.1)] == pytest.approx(min(1.0, 2 * p), rel=1e-9)
    assert all(c.flags == [] for c in cells)
    text = "\n".join(robust.section([_Summary("NoGR", base), _Summary("DataGrad", reg)], "NoGR"))
    assert "| r / DataGrad | 3 | 97.0 (0.0) | 61.3 (1.5) * | 2.00× |" in text
    # a cell whose PGD is weaker than FGSM is flagged
    masked = [_row("X", 0, 0.5)]
    masked[0]["metrics"]["robust"]["points"][0]["fgsm"] = 0.3
    flagged = robust.robust_cell(_Summary("X", masked))
    assert flagged.flags and "above FGSM" in flagged.flags[0]
    assert not math.isnan(cells[0].clean[0])


def test_a_run_summary_prints_each_pgd_point_and_the_masking_flags():
    from gradreg.result import RunResult

    cfg = {"dataset": "mnist", "model": "lenet5", "train_size": 2000, "seed": 1, "regularizers": []}
    robust = {
        "steps": 20,
        "examples": 1000,
        "points": [
            {"norm": "linf", "eps": 0.1, "pgd": 0.769, "fgsm": 0.827, "transfer": 0.968},
            {"norm": "l2", "eps": 2.0, "pgd": 0.404, "fgsm": 0.661, "transfer": 0.96},
        ],
        "flags": [],
        "seconds": 28.19,
    }
    run = RunResult(cfg, "accuracy", 0.98, 0.979, 0.01, {}, 1.0, 104.0, 96.2, robust=robust)
    first, second = run.summary().split("\n")
    assert first.startswith("mnist lenet5 n=2000 seed=1 NoGR: dev 98.00%  test 97.90%")
    assert second == (
        "robust accuracy (PGD-20, 1000 test images): Linf 0.1 76.9%, L2 2 40.4%; masking flags: none (probes 28.2 s)"
    )
    flagged = RunResult(cfg, "accuracy", 0.98, 0.979, 0.01, {}, 1.0, 104.0, 96.2, robust=robust | {"flags": ["a", "b"]})
    assert flagged.summary().endswith("masking flags: a; b (probes 28.2 s)")
    assert "\n" not in RunResult(cfg, "accuracy", 0.98, 0.979, 0.01, {}, 1.0, 104.0, 96.2).summary()

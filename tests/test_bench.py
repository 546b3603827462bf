"""`gradreg bench` produces the documented JSON. Speed itself is not asserted here: it is
measured by the bench, side by side, never in a timed unit test."""

import copy
import json

import torch

import gradreg.bench as B
from gradreg.cli import main


def test_interleaved_median_times_calls_every_variant_equally():
    calls = {"a": 0, "b": 0}

    def mk(k):
        def f():
            calls[k] += 1

        return f

    times = B.interleaved_median_times(
        {"a": mk("a"), "b": mk("b")}, rounds=3, inner=4, device=torch.device("cpu"), warmup=1
    )
    assert calls == {"a": 13, "b": 13} and set(times) == {"a", "b"} and all(t >= 0 for t in times.values())


def test_cpu_memory_measure_counts_saved_tensors():
    w = torch.randn(5, 5, requires_grad=True)
    x = torch.randn(7, 5)
    got = B.step_memory(lambda: (x @ w).tanh().sum().backward(), torch.device("cpu"))
    # matmul saves x (7x5) [w is a leaf: saved too], tanh saves its output (7x5), float32
    assert got >= (7 * 5 + 7 * 5) * 4


def test_bench_json_has_the_documented_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(B, "BENCH_MODELS", tuple(m for m in B.BENCH_MODELS if m.name == "mlp_sin"))
    monkeypatch.setattr(B, "ensemble_sizes", lambda device, quick: (2,))
    monkeypatch.setattr(B, "_mnist_available", lambda: False)
    monkeypatch.setattr(B, "fast_regularization_cost", lambda device, quick, log: [{"config": "exact"}])
    monkeypatch.setattr(B, "frobreg_methods", lambda device, quick, log: [{"method": "plain"}])
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert {"device", "torch", "command", "regularizer_cost", "ensemble", "table1_projected_s"} <= set(rep)
    assert rep["command"] == f"gradreg bench --quick --json {out}"
    rows = {r["regularizer"]: r for r in rep["regularizer_cost"]}
    assert rows["plain"]["rel_time"] == 1.0 and "batched_over_loop" in rows["FrobReg[loop]"]
    assert {"regularized_loss([])", "DataGrad", "SpectReg"} <= set(rows)
    assert rep["fast_regularization"] == [{"config": "exact"}]
    assert rep["frobreg_methods"] == [{"method": "plain"}]
    (ens,) = rep["ensemble"]
    assert ens["K"] == 2
    for baseline in ("loop", "loop_split", "torch_func"):  # one key per baseline, measured side by side
        assert ens[f"engine_vs_{baseline}"] == ens[f"{baseline}_ms_per_model_step"] / ens["engine_ms_per_model_step"]
    if torch.get_num_threads() > 1:  # the first K also times one run on one thread: the split's ceiling
        workers = torch.get_num_threads()
        one = ens["loop_one_thread_ms_per_model_step"]
        assert ens["split_ceiling_vs_loop"] == B.split_ceiling(ens["loop_ms_per_model_step"], one, workers)
        assert abs(ens["split_ceiling_vs_loop"] - workers * ens["loop_ms_per_model_step"] / one) < 1e-9
    assert rep["table1_projected_s"] == 90 * 10_000 / ens["model_steps_per_s"]
    assert "vs torch.func" in capsys.readouterr().out


def test_fast_regularization_rows_cover_every_configuration(monkeypatch):
    """The fast-regularization table has every configuration for both regularizers, single
    runs and the engine, each a ratio to its plain step (timed with a stub clock here)."""
    monkeypatch.setattr(
        B, "interleaved_median_times", lambda fns, rounds, inner, device, warmup=1: {k: 1.0 for k in fns}
    )
    rows = B.fast_regularization_cost(torch.device("cpu"), True, log=lambda *_: None)
    configs = set(B.FAST_CONFIGS)
    for where in ("single run", "engine (8 LeNets)"):
        for reg in ("DataGrad", "SpectReg"):
            got = {r["config"] for r in rows if r["where"] == where and r["regularizer"] == reg}
            assert got == configs
    assert all(r["floor_rel_time"] == 1.0 for r in rows if r["where"] == "single run")
    lazy = [r for r in rows if r["config"] == "lazy k=4 exact" and r["where"] == "single run"]
    assert all(r["rel_time"] == 0.25 for r in lazy)  # a 4-step cycle divided by 4


def test_two_pass_floor_step_sums_the_gradients_at_x_and_at_the_shifted_input():
    """The floor step's update uses grad L(x) + grad L(x + 1e-3 grad_x L(x)), computed here
    by two independent backward passes on a copy of the model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    ref = copy.deepcopy(model)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    B.two_pass_floor_step(model, opt, x, y, "cross_entropy")()
    xg = x.clone().requires_grad_(True)
    gx = torch.autograd.grad(torch.nn.functional.cross_entropy(ref(xg), y), xg)[0]
    g1 = torch.autograd.grad(torch.nn.functional.cross_entropy(ref(x), y), list(ref.parameters()))
    g2 = torch.autograd.grad(torch.nn.functional.cross_entropy(ref(x + 1e-3 * gx), y), list(ref.parameters()))
    for p, q, a, b in zip(model.parameters(), ref.parameters(), g1, g2):
        torch.testing.assert_close(p, q - (a + b), rtol=1e-12, atol=1e-12)


def test_docs_benchmarks_are_the_committed_bench_json():
    """docs/benchmarks.md's generated block is what scripts/bench_md.py renders from the
    committed results/bench_cpu_quick.json: no number in it was typed by hand."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    rendered = subprocess.run(
        [sys.executable, str(root / "scripts" / "bench_md.py"), str(root / "results" / "bench_cpu_quick.json")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    page = (root / "docs" / "benchmarks.md").read_text()
    block = page.split("<!-- bench: python scripts/bench_md.py results/bench_cpu_quick.json -->", 1)[1]
    assert block.split("<!-- /bench -->", 1)[0].strip() == rendered


def test_every_exact_frobreg_candidate_takes_the_library_s_step():
    """The floor, the B·m-rows step and the torch.func step compute exact FrobReg their own
    way; on a model without randomness one SGD step of each moves every parameter as
    `FrobReg(1.0)`'s loop and batched methods do (float64)."""
    torch.manual_seed(0)
    base = B.N.lenet5(dropout=None).double().eval()
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    gen = torch.Generator().manual_seed(0)

    def after(make):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        make(model, opt)()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    start = torch.cat([p.detach().flatten() for p in base.parameters()])
    ref = after(lambda m, o: B.eager_step(m, o, x, y, [B.R.FrobReg(1.0, method="loop")], "cross_entropy", gen))
    plain = after(lambda m, o: B.plain_step(m, o, x, y, "cross_entropy"))
    assert (ref - plain).abs().max() > 1e-6  # the penalty moves the step: the comparison can fail
    for make in (
        lambda m, o: B.eager_step(m, o, x, y, [B.R.FrobReg(1.0, method="batched")], "cross_entropy", gen),
        lambda m, o: B._frob_floor_step(m, o, x, y),
        lambda m, o: B._frob_rows_step(m, o, x, y),
        lambda m, o: B._frob_func_step(m, o, x, y),
    ):
        got = after(make)
        torch.testing.assert_close(got - start, ref - start, rtol=1e-9, atol=1e-12)


def test_the_adversarial_training_step_is_the_one_gradreg_train_takes():
    """The bench's FGSM and PGD-7 steps move every parameter as a plain step on the batch that
    training crafts (`gradreg.train._adversarial_batch`, same generator seed) does."""
    from types import SimpleNamespace

    from gradreg.config import paper_config
    from gradreg.train import _adversarial_batch

    torch.manual_seed(0)
    base = B.N.lenet5()
    x = torch.randn(8, 1, 28, 28).clamp(-0.42, 2.8)  # inside MNIST's pixel range, as data is
    y = torch.randint(0, 10, (8,))
    data = SimpleNamespace(mean=B.MNIST_MEAN_STD[0], std=B.MNIST_MEAN_STD[1])
    for kind, steps in (("fgsm", 1), ("pgd", 7)):
        bench_model, ref_model = copy.deepcopy(base), copy.deepcopy(base)
        torch.manual_seed(1)  # the same dropout masks in both training forwards
        B.adversarial_step(bench_model, torch.optim.SGD(bench_model.parameters(), lr=0.1), x, y, steps)()
        cfg = paper_config("mnist", adversarial=kind, adversarial_eps=0.3, adversarial_steps=steps)
        x_adv = _adversarial_batch(ref_model, x, y, cfg, data, torch.Generator().manual_seed(0))
        opt = torch.optim.SGD(ref_model.parameters(), lr=0.1)
        torch.manual_seed(1)
        torch.nn.functional.cross_entropy(ref_model(x_adv), y).backward()
        opt.step()
        moved = [(p - q).abs().max() for p, q in zip(ref_model.parameters(), base.parameters())]
        assert max(moved) > 1e-4  # the step moved the weights
        for p, q in zip(bench_model.parameters(), ref_model.parameters()):
            assert torch.equal(p, q), kind

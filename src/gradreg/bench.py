"""``gradreg bench``: what each regularizer costs, and what the ensemble engine buys.

Everything is measured in one process, on one device, side by side: the variants of a
table are timed in interleaved rounds (A B C A B C ...) and each gets the median of its
rounds, so drift in machine load hits all of them alike. Ratios are the result; absolute
times mean something only on a named GPU.

Memory: on CUDA the peak allocated during one step, above what was allocated before it. On
CPU, where the allocator keeps no peak, the bytes of tensors autograd saves during one step
(forward, penalty and its double-backward graph), through ``saved_tensors_hooks``.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from . import models as M
from . import regularizers as R
from .config import paper_config
from .core import regularized_loss
from .engine import PackedTrainer, cpu_workers, single_threaded_ops, split_evenly

PAPER_TABLE1_RUNS = 90  # 3 architectures x {NoGR, SpectReg, DataGrad} x 10 seeds
PAPER_TABLE1_STEPS = 10_000


@dataclass(frozen=True)
class BenchModel:
    name: str
    make: Callable[[], nn.Module]
    input_shape: tuple
    batch: int
    classes: int
    loss: str


BENCH_MODELS = (
    BenchModel("lenet5", lambda: M.lenet5(), (1, 28, 28), 50, 10, "cross_entropy"),
    BenchModel("resnet_cifar", lambda: M.resnet_cifar(bn_batch_stats_at_eval=True), (3, 32, 32), 128, 10, "cross_entropy"),
    BenchModel("mlp_sin", lambda: M.mlp_sin(), (1,), 50, 1, "half_sse"),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_median_times(fns: dict, rounds: int, inner: int, device: torch.device, warmup: int = 1) -> dict:
    """Seconds per call of each function, the median over ``rounds`` interleaved rounds of
    ``inner`` calls each."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    _sync(device)
    samples: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            _sync(device)
            samples[k].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in samples.items()}


def eager_step(model: nn.Module, opt, x, y, regs, loss: str, gen) -> Callable[[], None]:
    """One plain training step with :func:`gradreg.regularized_loss` (the one-run path)."""

    def step():
        total, _ = regularized_loss(model, x, y, regs, loss=loss, generator=gen)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    return step


def step_memory(step: Callable[[], None], device: torch.device) -> int:
    """Bytes of one step's peak (CUDA) or of the tensors autograd saves in it (CPU)."""
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return total[0]


def _regularizer_set(bm: BenchModel, quick_cpu: bool) -> dict:
    regs: dict = {"plain": [], "DataGrad": [R.DataGrad(1.0)], "SpectReg": [R.SpectReg(1.0)]}
    if quick_cpu and bm.name == "resnet_cifar":
        return regs  # a ResNet step takes seconds on 2 cores: the quick bench keeps the three that matter
    regs |= {
        "FrobReg[batched]": [R.FrobReg(1.0, method="batched")],
        "FrobReg[loop]": [R.FrobReg(1.0, method="loop")],
    }
    if bm.classes > 1:
        regs |= {"JacReg[batched]": [R.JacReg(1.0, method="batched")], "JacReg[loop]": [R.JacReg(1.0, method="loop")]}
    if bm.classes > 1:
        regs |= {"OneHot": [R.OneHot(1.0)], "RandomOneHot": [R.RandomOneHot(1.0)], "ConfidencePenalty": [R.ConfidencePenalty(1.0)]}
    return regs


def regularizer_cost(device: torch.device, quick: bool, log=print) -> list:
    rows = []
    for bm in BENCH_MODELS:
        torch.manual_seed(0)
        model = bm.make().to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = torch.randn(bm.batch, *bm.input_shape, device=device)
        y = torch.randint(0, bm.classes, (bm.batch,), device=device) if bm.loss == "cross_entropy" else torch.randn(bm.batch, 1, device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        regs = _regularizer_set(bm, quick and device.type == "cpu")
        fns = {k: eager_step(model, opt, x, y, r, bm.loss, gen) for k, r in regs.items()}
        heavy = bm.name == "resnet_cifar" and device.type == "cpu"
        rounds, inner = ((2, 1) if quick else (3, 1)) if heavy else ((5, 3) if quick else (7, 10))
        times = interleaved_median_times(fns, rounds, inner, device)
        mems = {k: step_memory(f, device) for k, f in fns.items()}
        for k in regs:
            row = {
                "model": bm.name, "batch": bm.batch, "regularizer": k,
                "step_ms": 1e3 * times[k], "rel_time": times[k] / times["plain"],
                "peak_mem_rel": mems[k] / max(mems["plain"], 1),
            }
            if k.endswith("[loop]"):
                batched = k.replace("[loop]", "[batched]")
                row["batched_over_loop"] = times[batched] / times[k]
            rows.append(row)
            log(f"  {bm.name:13s} B={bm.batch:<4d} {k:18s} {1e3 * times[k]:9.2f} ms  x{row['rel_time']:6.2f} time"
                f"  x{row['peak_mem_rel']:6.2f} mem" + (f"  batched/loop {row['batched_over_loop']:.2f}" if "batched_over_loop" in row else ""))
    return rows


def ensemble_speed(device: torch.device, ks: tuple, quick: bool, log=print) -> list:
    """LeNet DataGrad: model-steps per second of K packed members vs. the eager one-run loop
    (one model, torch's default threads). On CPU the K members are split over the engine's
    worker threads exactly as :func:`gradreg.engine.iter_train_many` splits a chunk."""
    b = 50
    cfg = paper_config("mnist", device=str(device), regularizers=(R.DataGrad(50.0),))
    torch.manual_seed(0)
    model = M.lenet5().to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x1 = torch.randn(b, 1, 28, 28, device=device)
    y1 = torch.randint(0, 10, (b,), device=device)
    fns = {"loop": eager_step(model, opt, x1, y1, [R.DataGrad(50.0)], "cross_entropy", None)}
    workers = cpu_workers(device)
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    for k in ks:
        # The engine's layout: K members packed, on CPU split over `workers` single-threaded packs.
        parts = split_evenly(list(range(1, k + 1)), workers if pool else 1)
        steps = []
        for part in parts:
            tr = PackedTrainer([cfg.replace(seed=s) for s in part], device, torch.float32)
            xk = torch.randn(len(part), b, 1, 28, 28, device=device)
            yk = torch.randint(0, 10, (len(part), b), device=device)
            steps.append(lambda tr=tr, xk=xk, yk=yk: tr.step(xk, yk, 0))
        if len(steps) == 1:
            fns[k] = steps[0]
        else:
            def parallel(steps=steps):
                with single_threaded_ops():
                    list(pool.map(lambda f: f(), steps))
            fns[k] = parallel
    rounds, inner = (3, 3) if quick else (5, 10)
    times = interleaved_median_times(fns, rounds, inner, device)
    if pool is not None:
        pool.shutdown()
    loop_rate = 1.0 / times["loop"]
    rows = [{"K": "loop", "step_ms": 1e3 * times["loop"], "model_steps_per_s": loop_rate, "speedup_vs_loop": 1.0}]
    for k in ks:
        rate = k / times[k]
        rows.append({"K": k, "step_ms": 1e3 * times[k], "model_steps_per_s": rate, "speedup_vs_loop": rate / loop_rate})
    for r in rows:
        log(f"  K={str(r['K']):5s} step {r['step_ms']:9.2f} ms  {r['model_steps_per_s']:9.1f} model-steps/s  x{r['speedup_vs_loop']:.2f} vs loop")
    return rows


def ensemble_sizes(device: torch.device, quick: bool) -> tuple:
    if device.type == "cuda":
        return (1, 8, 64, 256) if quick else (1, 8, 64, 256, 512)
    return (1, 2, 4, 8, 16) if quick else (1, 2, 4, 8, 16, 32)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def run_bench(device: str = "cpu", quick: bool = False, command: Optional[str] = None, log=print) -> dict:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available; use --device cpu")
    log(f"gradreg bench on {device_name(dev)}, torch {torch.__version__}{' (quick)' if quick else ''}")
    log("regularizer cost (one eager training step, relative to the plain step):")
    cost = regularizer_cost(dev, quick, log)
    log("ensemble engine, LeNet DataGrad, B=50:")
    ens = ensemble_speed(dev, ensemble_sizes(dev, quick), quick, log)
    best = max(r["model_steps_per_s"] for r in ens)
    projected = PAPER_TABLE1_RUNS * PAPER_TABLE1_STEPS / best
    loop_projected = PAPER_TABLE1_RUNS * PAPER_TABLE1_STEPS / ens[0]["model_steps_per_s"]
    log(f"Table 1 ({PAPER_TABLE1_RUNS} runs x {PAPER_TABLE1_STEPS} steps, at DataGrad cost): "
        f"{projected:.0f} s with the engine, {loop_projected:.0f} s one run at a time")
    return {
        "device": device_name(dev),
        "torch": torch.__version__,
        "command": command or " ".join(["gradreg", "bench", "--device", device] + (["--quick"] if quick else [])),
        "quick": quick,
        "regularizer_cost": cost,
        "ensemble": ens,
        "table1_projected_s": projected,
        "table1_projected_loop_s": loop_projected,
    }

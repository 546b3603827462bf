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

import copy
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from . import networks as N
from . import regularizers as R
from .config import paper_config
from .core import regularized_loss
from .ensemble.plan import cpu_workers, on_one_thread, single_threaded_ops, split_evenly
from .ensemble.trainer import EnsembleTrainer

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
    BenchModel("lenet5", lambda: N.lenet5(), (1, 28, 28), 50, 10, "cross_entropy"),
    BenchModel(
        "resnet_cifar", lambda: N.resnet_cifar(bn_batch_stats_at_eval=True), (3, 32, 32), 128, 10, "cross_entropy"
    ),
    BenchModel("mlp_sin", lambda: N.mlp_sin(), (1,), 50, 1, "half_sse"),
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
    """One training step with :func:`gradreg.regularized_loss` (the one-run path)."""

    def step():
        total, _ = regularized_loss(model, x, y, regs, loss=loss, generator=gen)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    return step


def hand_written_data_loss(out, y, loss: str):
    """The data loss the hand-written baselines compute: mean cross-entropy or the ½-sum of squares."""
    return F.cross_entropy(out, y) if loss == "cross_entropy" else 0.5 * (out - y).pow(2).sum()


def plain_step(model: nn.Module, opt, x, y, loss: str) -> Callable[[], None]:
    """The hand-written plain step every cost is measured against: forward, loss, backward,
    update -- no library code."""

    def step():
        out = model(x)
        data = hand_written_data_loss(out, y, loss)
        opt.zero_grad(set_to_none=True)
        data.backward()
        opt.step()

    return step


def two_pass_floor_step(model: nn.Module, opt, x, y, loss: str) -> Callable[[], None]:
    """What any finite-difference step must pay, hand-written with no library code: a plain
    step that also takes the input gradient (the direction), plus a second forward and
    backward at the shifted input, their parameter gradients summed, one update. Two passes,
    with one input gradient: the floor that the issue's "limit 2.0" leaves the input
    gradient's cost out of."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        xg = x.detach().requires_grad_(True)
        gx, *g = torch.autograd.grad(hand_written_data_loss(model(xg), y, loss), [xg, *params])
        opt.zero_grad(set_to_none=True)
        hand_written_data_loss(model(x + 1e-3 * gx), y, loss).backward()
        torch._foreach_add_([cast(torch.Tensor, p.grad) for p in params], list(g))
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


MNIST_MEAN_STD = (0.1307, 0.3081)  # the full training set's pixel statistics (a run uses its subset's)


def adversarial_step(model: nn.Module, opt, x, y, steps: int, eps_px: float = 0.3) -> Callable[[], None]:
    """One adversarial-training step as `gradreg train --adversarial` takes it (its
    `_adversarial_batch`): the batch replaced by PGD examples in MNIST's pixel range, `eps_px`
    in pixel units (`steps` = 1: FGSM from a random start, step 1.25 eps; else steps of
    2.5 eps / steps), crafted in eval mode, then a plain step on them."""
    from . import attacks as A

    mean, std = MNIST_MEAN_STD
    eps = A.pixel_to_input(eps_px, mean=mean, std=std)
    bounds = A.pixel_bounds(mean=mean, std=std)
    gen = torch.Generator(device=x.device).manual_seed(0)
    size = 1.25 * eps if steps == 1 else 2.5 * eps / steps
    x = x.clamp(*bounds)  # an image: the bench's random batch brought into the pixel range

    def step():
        x_adv = A.pgd(model, x, y, eps, steps=steps, step_size=size, generator=gen, bounds=bounds, early_stop=False)
        loss = F.cross_entropy(model(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _regularizer_set(bm: BenchModel, quick_cpu: bool) -> dict:
    regs: dict = {
        "regularized_loss([])": [],
        "DataGrad": [R.DataGrad(1.0)],
        "SpectReg": [R.SpectReg(1.0)],
    }
    if quick_cpu and bm.name == "resnet_cifar":
        return regs  # a ResNet step takes seconds on 2 cores: the quick bench keeps the three that matter
    regs |= {
        "FrobReg[batched]": [R.FrobReg(1.0, method="batched")],
        "FrobReg[loop]": [R.FrobReg(1.0, method="loop")],
    }
    if bm.classes > 1:
        regs |= {"JacReg[batched]": [R.JacReg(1.0, method="batched")], "JacReg[loop]": [R.JacReg(1.0, method="loop")]}
    if bm.classes > 1:
        regs |= {
            "OneHot": [R.OneHot(1.0)],
            "RandomOneHot": [R.RandomOneHot(1.0)],
            "ConfidencePenalty": [R.ConfidencePenalty(1.0)],
        }
    return regs


def _lazy_cycle(model, opt, x, y, regs, loss, gen) -> Callable[[], None]:
    """``every`` consecutive steps of a lazy regularizer (one with the penalty, the rest without)."""
    k = max(r.every for r in regs)

    def cycle():
        for i in range(k):
            total, _ = regularized_loss(model, x, y, regs, loss=loss, generator=gen, step=i)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()

    return cycle


def regularizer_cost(device: torch.device, quick: bool, log=print) -> list:
    rows = []
    for bm in BENCH_MODELS:
        torch.manual_seed(0)
        model = bm.make().to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = torch.randn(bm.batch, *bm.input_shape, device=device)
        y = (
            torch.randint(0, bm.classes, (bm.batch,), device=device)
            if bm.loss == "cross_entropy"
            else torch.randn(bm.batch, 1, device=device)
        )
        gen = torch.Generator(device=device).manual_seed(0)
        regs = _regularizer_set(bm, quick and device.type == "cpu")
        fns = {"plain": plain_step(model, opt, x, y, bm.loss)}
        fns |= {
            k: _lazy_cycle(model, opt, x, y, r, bm.loss, gen)
            if any(g.every > 1 for g in r)
            else eager_step(model, opt, x, y, r, bm.loss, gen)
            for k, r in regs.items()
        }
        if bm.name == "lenet5":  # what users pick for robustness instead, in the same rounds
            for name, steps in (("FGSM AT", 1), ("PGD-7 AT", 7)):
                fns[name] = adversarial_step(model, opt, x, y, steps)
                regs[name] = []
        regs = {"plain": []} | regs
        heavy = bm.name == "resnet_cifar" and device.type == "cpu"
        rounds, inner = ((2, 1) if quick else (3, 1)) if heavy else ((5, 3) if quick else (7, 10))
        times = interleaved_median_times(fns, rounds, inner, device)
        mems = {k: step_memory(f, device) for k, f in fns.items()}  # lazy rows: a cycle of `every` steps
        for k, r in regs.items():
            if any(g.every > 1 for g in r):
                times[k] /= max(g.every for g in r)
        for k in regs:
            row = {
                "model": bm.name,
                "batch": bm.batch,
                "regularizer": k,
                "step_ms": 1e3 * times[k],
                "rel_time": times[k] / times["plain"],
                "peak_mem_rel": mems[k] / max(mems["plain"], 1),
            }
            if k.endswith("[loop]"):
                batched = k.replace("[loop]", "[batched]")
                row["batched_over_loop"] = times[batched] / times[k]
            rows.append(row)
            log(
                f"  {bm.name:13s} B={bm.batch:<4d} {k:18s} {1e3 * times[k]:9.2f} ms  x{row['rel_time']:6.2f} time"
                f"  x{row['peak_mem_rel']:6.2f} mem"
                + (f"  batched/loop {row['batched_over_loop']:.2f}" if "batched_over_loop" in row else "")
            )
    return rows


def _classifier_setup(bm: BenchModel, device: torch.device) -> tuple:
    """A seeded classifier of `bm` in train mode, its Adam, a random batch with labels, a generator."""
    torch.manual_seed(0)
    model = bm.make().to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(bm.batch, *bm.input_shape, device=device)
    y = torch.randint(0, bm.classes, (bm.batch,), device=device)
    return model, opt, x, y, torch.Generator(device=device).manual_seed(0)


def _frob_floor_step(model: nn.Module, opt, x, y) -> Callable[[], None]:
    """The floor of an exact FrobReg step, hand-written: the plain step's forward, m input VJPs
    (one per class, keeping their graphs) and one backward through them all -- the work every
    exact method must do, with no library code around it."""

    def step():
        xg = x.detach().requires_grad_(True)
        z = model(xg)
        pen = sum(torch.autograd.grad(z[:, k].sum(), xg, create_graph=True)[0].pow(2).sum() for k in range(z.shape[1]))
        opt.zero_grad(set_to_none=True)
        (F.cross_entropy(z, y) + pen / len(x)).backward()
        opt.step()

    return step


def _frob_rows_step(model: nn.Module, opt, x, y) -> Callable[[], None]:
    """Exact FrobReg as one backward over B·m rows: the batch repeated once per class, row
    block k differentiated through logit k. A fresh forward: under dropout each block draws
    its own mask, so it matches the other methods only for deterministic models."""

    def step():
        z = model(x)
        m = z.shape[1]
        xr = x.detach().repeat(m, *([1] * (x.dim() - 1))).requires_grad_(True)
        zr = model(xr).view(m, len(x), m)
        picked = torch.diagonal(zr, dim1=0, dim2=2).sum()  # sum over k of block k's logit k
        (g,) = torch.autograd.grad(picked, xr, create_graph=True)
        opt.zero_grad(set_to_none=True)
        (F.cross_entropy(z, y) + g.pow(2).sum() / len(x)).backward()
        opt.step()

    return step


def _frob_func_step(model: nn.Module, opt, x, y) -> Callable[[], None]:
    """Exact FrobReg with torch.func: the per-example Jacobian by `vmap(jacrev(...))` over a
    functional call of the model (a fresh forward, dropout drawn per example)."""
    from torch.func import functional_call, jacrev, vmap

    names = [n for n, _ in model.named_parameters()]

    def one(params, xi):
        return functional_call(model, dict(zip(names, params)), (xi.unsqueeze(0),)).squeeze(0)

    def step():
        params = tuple(model.parameters())
        jac = vmap(jacrev(one, argnums=1), in_dims=(None, 0), randomness="different")(params, x)
        opt.zero_grad(set_to_none=True)
        (F.cross_entropy(model(x), y) + jac.pow(2).sum() / len(x)).backward()
        opt.step()

    return step


def frobreg_methods(device: torch.device, quick: bool, log=print) -> list:
    """Exact FrobReg on LeNet, B=50: each way to compute it, against the floor and a plain step.

    The library's methods (`loop`, `batched`) differentiate the training forward itself; `rows`
    and `torch.func` recompute it (see their steps), so they are candidates only for models
    without dropout. Each row: step time and its ratio to the plain step and to the floor.
    """
    bm = next(m for m in BENCH_MODELS if m.name == "lenet5")
    model, opt, x, y, gen = _classifier_setup(bm, device)
    fns = {
        "plain": plain_step(model, opt, x, y, bm.loss),
        "floor (m VJPs + backward)": _frob_floor_step(model, opt, x, y),
        "FrobReg[loop]": eager_step(model, opt, x, y, [R.FrobReg(1.0, method="loop")], bm.loss, gen),
        "FrobReg[batched]": eager_step(model, opt, x, y, [R.FrobReg(1.0, method="batched")], bm.loss, gen),
        "rows (one backward, B·m rows)": _frob_rows_step(model, opt, x, y),
        "torch.func vmap(jacrev)": _frob_func_step(model, opt, x, y),
    }
    times = interleaved_median_times(fns, *((5, 2) if quick else (9, 5)), device)
    floor = times["floor (m VJPs + backward)"]
    rows = []
    for k, t in times.items():
        rows.append(
            {
                "model": bm.name,
                "batch": bm.batch,
                "method": k,
                "step_ms": 1e3 * t,
                "rel_time": t / times["plain"],
                "over_floor": t / floor,
            }
        )
        log(
            f"  {bm.name:13s} B={bm.batch:<4d} {k:30s} {1e3 * t:9.2f} ms  x{t / times['plain']:6.2f} plain"
            f"  x{t / floor:5.2f} floor"
        )
    return rows


FAST_CONFIGS = {  # issue "fast regularization": (method, scheme, every) and the target cost x plain
    "exact": ("double_backprop", "one_sided", 1),
    "finite-difference one-sided": ("finite_difference", "one_sided", 1),
    "finite-difference central": ("finite_difference", "central", 1),
    "lazy k=4 exact": ("double_backprop", "one_sided", 4),
    "finite-difference + lazy k=4": ("finite_difference", "one_sided", 4),
}
FAST_TARGETS = {"finite-difference one-sided": 2.1, "lazy k=4 exact": 1.5, "finite-difference + lazy k=4": 1.3}


def _fast_regularizers() -> dict[str | tuple[str, str], tuple[R.Regularizer, ...]]:
    """DataGrad and SpectReg at weight 1 in each of `FAST_CONFIGS`, keyed (regularizer, config)."""
    out: dict[str | tuple[str, str], tuple[R.Regularizer, ...]] = {}
    for reg_name, cls in (("DataGrad", R.DataGrad), ("SpectReg", R.SpectReg)):
        for label, (method, scheme, every) in FAST_CONFIGS.items():
            out[(reg_name, label)] = (cls(1.0, method=method, fd_scheme=scheme, every=every),)
    return out


def fast_regularization_cost(device: torch.device, quick: bool, log=print) -> list:
    """DataGrad and SpectReg by method (exact, finite differences, lazy), as multiples of a
    hand-written plain step, in single runs (LeNet B=50, the paper's ResNet at B=16) and in
    the ensemble engine (8 LeNets, against the engine's own NoGR step). Lazy rows time a
    cycle of `every` steps and divide by it."""
    models = [
        BenchModel("lenet5", lambda: N.lenet5(), (1, 28, 28), 50, 10, "cross_entropy"),
        BenchModel("resnet_cifar", lambda: N.resnet_cifar(), (3, 32, 32), 16, 10, "cross_entropy"),
    ]
    rows = [row for bm in models for row in _fast_single_run_rows(bm, device, quick, log)]
    return rows + _fast_engine_rows(device, quick, log)


def _fast_single_run_rows(bm: BenchModel, device: torch.device, quick: bool, log) -> list:
    """`fast_regularization_cost`'s rows for one model trained alone, with the two-pass floor."""
    model, opt, x, y, gen = _classifier_setup(bm, device)
    regs = _fast_regularizers()
    fns: dict[str | tuple[str, str], Callable[[], None]] = {
        "plain": plain_step(model, opt, x, y, bm.loss),
        "floor": two_pass_floor_step(model, opt, x, y, bm.loss),
    }
    for key, r in regs.items():
        fns[key] = (_lazy_cycle if r[0].every > 1 else eager_step)(model, opt, x, y, r, bm.loss, gen)
    heavy = bm.name == "resnet_cifar" and device.type == "cpu"
    rounds, inner = ((3, 1) if quick else (5, 2)) if heavy else ((9, 6) if quick else (9, 10))
    times = interleaved_median_times(fns, rounds, inner, device)
    log(
        f"  {bm.name:13s} B={bm.batch:<3d} two passes + the input gradient (the floor, hand-written) "
        f"x{times['floor'] / times['plain']:5.2f} plain"
    )
    rows = []
    for key, r in regs.items():
        t = times[key] / r[0].every
        row = {
            "where": "single run",
            "model": bm.name,
            "batch": bm.batch,
            "regularizer": key[0],
            "config": key[1],
            "rel_time": t / times["plain"],
            "target": FAST_TARGETS.get(key[1]),
            "floor_rel_time": times["floor"] / times["plain"],
        }
        rows.append(row)
        log(
            f"  {bm.name:13s} B={bm.batch:<3d} {key[0]:9s} {key[1]:30s} x{row['rel_time']:5.2f} plain"
            + (f"  (target <= {row['target']})" if row["target"] else "")
        )
    return rows


def _fast_engine_rows(device: torch.device, quick: bool, log) -> list:
    """`fast_regularization_cost`'s rows for 8 LeNets in the engine, split over the workers,
    against the engine's own NoGR step."""
    workers = cpu_workers(device)
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    parts = split_evenly(list(range(1, 9)), workers if pool else 1)
    configs: dict[str | tuple[str, str], tuple[R.Regularizer, ...]] = {"plain": (), **_fast_regularizers()}
    fns = {}
    for key, regs_ in configs.items():
        steps = []
        for part in parts:
            cfg = paper_config("mnist", device=str(device), regularizers=regs_)
            tr = EnsembleTrainer([cfg.replace(seed=s_) for s_ in part], device, torch.float32, "packed")
            xk = torch.randn(len(part), 50, 1, 28, 28, device=device)
            yk = torch.randint(0, 10, (len(part), 50), device=device)
            every = regs_[0].every if regs_ else 1
            steps.append(lambda tr=tr, xk=xk, yk=yk, every=every: [tr.step(xk, yk, i) for i in range(every)])
        fns[key] = _split(steps, pool)
    times = interleaved_median_times(fns, 3 if quick else 5, 1 if quick else 3, device)
    if pool is not None:
        pool.shutdown()
    rows = []
    for key, regs_ in configs.items():
        if key == "plain":
            continue
        row = {
            "where": "engine (8 LeNets)",
            "model": "lenet5",
            "batch": 50,
            "regularizer": key[0],
            "config": key[1],
            "rel_time": times[key] / regs_[0].every / times["plain"],
            "target": FAST_TARGETS.get(key[1]),
        }
        rows.append(row)
        log(f"  engine x8     B=50  {key[0]:9s} {key[1]:30s} x{row['rel_time']:5.2f} the engine's NoGR step")
    return rows


def _torch_func_datagrad(models: list, weight: float, device) -> Callable:
    """The best torch.func alternative for K LeNets with DataGrad: ``stack_module_state``,
    ``vmap`` over members of ``grad`` of a loss whose penalty is itself a ``torch.func.grad``
    w.r.t. the input, and an Adam update over the stacked parameters (the PyTorch
    model-ensembling recipe with double backprop)."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    from .ensemble.optim import PackedOptimizer

    params, buffers = stack_module_state(models)
    params = {n: p.detach().clone().requires_grad_(False) for n, p in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    opt = PackedOptimizer(list(params.values()), "adam", len(models))

    def member_loss(p, b, x, y):
        def ce(xx):
            per = F.cross_entropy(functional_call(base, (p, b), (xx,)), y, reduction="none")
            return per.sum(), per

        gx, per = grad(ce, has_aux=True)(x)
        return per.mean() + weight * gx.pow(2).flatten(1).sum(1).mean()

    g = vmap(grad(member_loss), randomness="different")
    lr = torch.full((len(models),), 1e-4, dtype=torch.float64, device=device)

    def step(x, y):
        grads = g(params, buffers, x, y)
        for n, t in params.items():
            t.grad = grads[n]
        opt.step(lr)

    return step


def _repeat(step: Callable[[], None], n: int) -> Callable[[], None]:
    """``n`` steps of one run: what a loop over runs costs per K model-steps."""

    def run():
        for _ in range(n):
            step()

    return run


def split_ceiling(loop_s: float, one_thread_s: float, workers: int) -> float:
    """The most that running unpacked single-threaded runs side by side on ``workers``
    threads can gain over the one-run loop (each run on all threads): ``workers`` runs
    finish in one single-threaded step time, ideally, against ``workers`` loop steps."""
    return workers * loop_s / one_thread_s


def _on_one_thread_here(fn: Callable[[], None]) -> Callable[[], None]:
    def run():
        with single_threaded_ops():
            fn()

    return run


def _split(fns: list, pool) -> Callable[[], None]:
    if len(fns) == 1:
        return fns[0]

    def parallel():
        with single_threaded_ops():
            list(pool.map(lambda f: on_one_thread(f)(), fns))

    return parallel


def ensemble_speed(device: torch.device, ks: tuple, quick: bool, log=print) -> list:
    """LeNet DataGrad (lambda 50), B=50: ms per model-step of the engine against three
    baselines, side by side in one run (interleaved medians), at each K:

    - ``loop``: the one-run loop: runs one after the other, torch's default threads -- timed as
      K steps of one model (a user's loop trains one run at a time, its model cache-hot);
    - ``loop_split``: the same loop split over the engine's worker threads, one intra-op
      thread each (the engine's own layout, so the comparison isolates the packing): each
      worker steps one model as many times as it has members;
    - ``torch_func``: a ``torch.func`` ensemble (:func:`_torch_func_datagrad`) with that split.
    """
    b = 50
    cfg = paper_config("mnist", device=str(device), regularizers=(R.DataGrad(50.0),))
    workers = cpu_workers(device)
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    rows = []
    for k in ks:
        parts = split_evenly(list(range(1, k + 1)), workers if pool else 1)
        fns: dict = {}
        engine, split_loop, tfunc = [], [], []
        singles_all = []
        for part in parts:
            tr = EnsembleTrainer([cfg.replace(seed=s) for s in part], device, torch.float32, "packed")
            xk = torch.randn(len(part), b, 1, 28, 28, device=device)
            yk = torch.randint(0, 10, (len(part), b), device=device)
            engine.append(lambda tr=tr, xk=xk, yk=yk: tr.step(xk, yk, 0))
            singles = [N.lenet5(generator=torch.Generator().manual_seed(s)).to(device).train() for s in part]
            singles_all += list(zip(singles, xk, yk))
            steps = [
                eager_step(
                    m,
                    torch.optim.Adam(m.parameters(), lr=1e-4),
                    xk[i],
                    yk[i],
                    [R.DataGrad(50.0)],
                    "cross_entropy",
                    None,
                )
                for i, m in enumerate(singles)
            ]
            split_loop.append(_repeat(steps[0], len(steps)))
            tf = _torch_func_datagrad(singles, 50.0, device)
            tfunc.append(lambda tf=tf, xk=xk, yk=yk: tf(xk, yk))
        loop_steps = [
            eager_step(m, torch.optim.Adam(m.parameters(), lr=1e-4), x, y, [R.DataGrad(50.0)], "cross_entropy", None)
            for m, x, y in singles_all
        ]
        fns["engine"] = _split(engine, pool)
        fns["loop"] = _repeat(loop_steps[0], len(loop_steps))
        fns["loop_split"] = _split(split_loop, pool)
        fns["torch_func"] = _split(tfunc, pool)
        if k == ks[0] and pool is not None:  # what splitting alone can buy: one run on one thread
            fns["loop_one_thread"] = _on_one_thread_here(fns["loop"])
        rounds, inner = (3, 2) if quick else (7, 3)
        times = interleaved_median_times(fns, rounds, inner, device)
        row = {"K": k, **{f"{n}_ms_per_model_step": 1e3 * t / k for n, t in times.items()}}
        row |= {f"engine_vs_{n}": times[n] / times["engine"] for n in ("loop", "loop_split", "torch_func")}
        if "loop_one_thread" in times:
            row["split_ceiling_vs_loop"] = split_ceiling(times["loop"], times["loop_one_thread"], workers)
            log(
                f"  one run on 1 thread: {1e3 * times['loop_one_thread'] / k:.2f} ms per step, on {workers} threads "
                f"{1e3 * times['loop'] / k:.2f}: splitting unpacked runs over {workers} workers can gain at most "
                f"x{row['split_ceiling_vs_loop']:.2f} over the one-run loop"
            )
        row["model_steps_per_s"] = k / times["engine"]
        rows.append(row)
        log(
            f"  K={k:<3d} ms per model-step: engine {row['engine_ms_per_model_step']:6.2f}  loop "
            f"{row['loop_ms_per_model_step']:6.2f}  loop split {row['loop_split_ms_per_model_step']:6.2f}  torch.func "
            f"{row['torch_func_ms_per_model_step']:6.2f}   engine x{row['engine_vs_loop']:.2f} vs loop, "
            f"x{row['engine_vs_loop_split']:.2f} vs loop split, x{row['engine_vs_torch_func']:.2f} vs torch.func"
        )
    if pool is not None:
        pool.shutdown()
    return rows


def mixed_sweep_cost(device: torch.device, quick: bool, data_dir=None, log=print) -> dict:
    """A sweep of NoGR, SpectReg and DataGrad runs (LeNet, 3 seeds each) costs what its three
    single-kind sweeps cost: the planner never packs different penalty kinds together.
    Wall time of ``train_many`` on the mixed list against the sum over the three lists, in
    interleaved rounds (short runs: 20 steps, evaluation on 200 examples)."""
    from .ensemble.loop import train_many

    base = paper_config("mnist", device=str(device), steps=20, eval_every=0, eval_limit=200)
    kinds = {"NoGR": (), "SpectReg": (R.SpectReg(0.03),), "DataGrad": (R.DataGrad(50.0),)}
    lists = {n: [base.replace(seed=s, regularizers=r) for s in (1, 2, 3)] for n, r in kinds.items()}
    mixed = [c for cs in lists.values() for c in cs]
    fns: dict[str, Callable[[], object]] = {"mixed": lambda: train_many(mixed, data_dir=data_dir)}
    # cast: mypy cannot infer a lambda with a default argument in a comprehension
    fns |= cast(
        "dict[str, Callable[[], object]]",
        {n: (lambda cs=cs: train_many(cs, data_dir=data_dir)) for n, cs in lists.items()},
    )
    times = interleaved_median_times(fns, 2 if quick else 3, 1, device)
    singles = sum(times[n] for n in kinds)
    out = {"mixed_s": times["mixed"], "sum_of_single_kind_s": singles, "mixed_over_sum": times["mixed"] / singles}
    log(
        f"  mixed sweep {times['mixed']:.2f} s, its single-kind sweeps {singles:.2f} s in sum: "
        f"x{out['mixed_over_sum']:.2f}"
    )
    return out


def ensemble_sizes(device: torch.device, quick: bool) -> tuple:
    if device.type == "cuda":
        return (1, 8, 64, 256) if quick else (1, 8, 64, 256, 512)
    return (1, 2, 4, 8, 16) if quick else (1, 2, 4, 8, 16, 32)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def run_bench(device: str = "cpu", quick: bool = False, command: str | None = None, log=print, data_dir=None) -> dict:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available; use --device cpu")
    log(f"gradreg bench on {device_name(dev)}, torch {torch.__version__}{' (quick)' if quick else ''}")
    log("regularizer cost (one training step, relative to a hand-written plain step):")
    cost = regularizer_cost(dev, quick, log)
    log("exact FrobReg, each method against the floor (LeNet, B=50):")
    frob = frobreg_methods(dev, quick, log)
    log("fast regularization (exact, finite differences, lazy), relative to a plain step:")
    fast = fast_regularization_cost(dev, quick, log)
    log("ensemble engine, LeNet DataGrad, B=50, against the best alternatives in the same thread layout:")
    ens = ensemble_speed(dev, ensemble_sizes(dev, quick), quick, log)
    best = max(r["model_steps_per_s"] for r in ens)
    projected = PAPER_TABLE1_RUNS * PAPER_TABLE1_STEPS / best
    loop_rate = max(1e3 / r["loop_ms_per_model_step"] for r in ens)
    loop_projected = PAPER_TABLE1_RUNS * PAPER_TABLE1_STEPS / loop_rate
    log(
        f"Table 1 ({PAPER_TABLE1_RUNS} runs x {PAPER_TABLE1_STEPS} steps, at DataGrad cost): "
        f"{projected:.0f} s with the engine, {loop_projected:.0f} s one run at a time"
    )
    out = {
        "device": device_name(dev),
        "torch": torch.__version__,
        "command": command or " ".join(["gradreg", "bench", "--device", device] + (["--quick"] if quick else [])),
        "quick": quick,
        "regularizer_cost": cost,
        "frobreg_methods": frob,
        "fast_regularization": fast,
        "ensemble": ens,
        "table1_projected_s": projected,
        "table1_projected_loop_s": loop_projected,
    }
    if data_dir is not None or _mnist_available():
        log("mixed sweep (NoGR + SpectReg + DataGrad) against its single-kind sweeps:")
        out["mixed_sweep"] = mixed_sweep_cost(dev, quick, data_dir, log)
    return out


def _mnist_available() -> bool:
    from .data.paths import data_dir_candidates

    return any(
        (Path(d) / "mnist").is_dir() or (Path(d) / "train-images-idx3-ubyte.gz").is_file()
        for d in data_dir_candidates(None)
    )

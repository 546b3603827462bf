"""Train many runs at once: the ensemble engine.

``train_many(configs)`` takes a list of :class:`~gradreg.config.TrainConfig` and returns one
:class:`~gradreg.train.RunResult` per config, in order. Configs that share the architecture,
dataset, steps and batch size (they may differ in seed, training-set size, regularizers and
their weights, weight decay and learning rate) are trained together as one packed model
(:mod:`gradreg.pack`): grouped convolutions and batched matmuls, one forward and one
backward pass per step for all members.

Independence. A member's result does not depend on K or on its neighbours: members share no
parameters, no statistics and no random stream. Each member draws, from streams derived from
its own seed exactly as :func:`gradreg.train.train` does, its training subset, init, batch
order, dropout masks, SpectReg/RandomOneHot projections and augmentation. On CPU a member
therefore follows the same trajectory as a single run, up to floating-point summation order
(grouped vs. plain convolution kernels). On CUDA, dropout masks come from per-member
generators, a different stream than ``train``'s fused kernel: same distribution, different
masks.

Strategies: ``"packed"`` (above), ``"sequential"`` (one :func:`~gradreg.train.train` after the
other) and ``"auto"``: packed where the architecture packs (all three paper models do, BN
included, since BatchNorm over packed channels keeps each member's statistics separate), else
sequential with a warning.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import data as D
from . import penalties as P
from . import regularizers as R
from . import smoothness as S
from .config import TrainConfig
from .core import per_example_loss
from .pack import NotPackable, PackedModel
from .train import RunResult, build_model, piecewise_lr, stream_seed, train

STRATEGIES = ("auto", "packed", "sequential")
# Fields that members of one ensemble may differ in; every other field must be equal.
MEMBER_FIELDS = ("seed", "train_size", "regularizers", "weight_decay", "lr")


def ensemble_key(cfg: TrainConfig) -> tuple:
    """Configs with equal keys can be trained as one packed ensemble."""
    d = cfg.to_dict()
    for f in MEMBER_FIELDS:
        d.pop(f)
    return tuple(sorted((k, repr(v)) for k, v in d.items()))


def default_max_members(device: torch.device, model: str) -> int:
    """How many members one packed chunk holds by default. On 2 CPU cores the gain
    saturates after a few members; on a GPU, LeNet and the MLP fit hundreds."""
    if device.type == "cpu":
        return {"lenet5": 16, "mlp_sin": 128, "resnet_cifar": 4}[model]
    return {"lenet5": 512, "mlp_sin": 1024, "resnet_cifar": 16}[model]


# --------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=2)
def _raw_dataset(dataset: str, data_dir: Optional[str]):
    if dataset == "mnist":
        x, y = D.load_mnist("train", data_dir)
        xt, yt = D.load_mnist("test", data_dir)
        return x[:, None], y, xt[:, None], yt
    x, y = D.load_cifar10("train", data_dir)
    xt, yt = D.load_cifar10("test", data_dir)
    return x, y, xt, yt


def _lut(mean: float, std: float) -> np.ndarray:
    # the same float64-then-float32 table as gradreg.data.splits.standardize
    return ((np.arange(256, dtype=np.float64) / 255.0 - mean) / std).astype(np.float32)


@dataclass
class EnsembleData:
    """Member-indexed data on the device. Image datasets are kept as uint8 and standardized
    per member through a 256-entry table (bit-identical to the single run's float32
    tensors); SIN is shared float data."""

    pool_x: Tensor  # (N, *in), uint8 or float
    pool_y: Tensor
    train_idx: list  # per member: indices of its training subset into the pool (CPU, int64)
    luts: Optional[Tensor]  # (K, 256) per-member standardization of training images
    sets: dict  # "dev"/"test" -> (x, y, luts or None)

    def inputs(self, raw: Tensor, luts: Optional[Tensor], dtype) -> Tensor:
        """(K, b, *in) raw values -> standardized floats of ``dtype``."""
        if luts is None:
            return raw.to(dtype)
        k = raw.shape[0]
        return luts.gather(1, raw.reshape(k, -1).long()).view(raw.shape).to(dtype)


def ensemble_data(cfgs: Sequence[TrainConfig], data_dir, device: torch.device) -> EnsembleData:
    c0 = cfgs[0]
    if c0.dataset in ("sin", "sin2"):
        s = (D.make_sin if c0.dataset == "sin" else D.make_sin2)(device=device)
        for c in cfgs:
            if c.train_size is not None and c.train_size != len(s.x_train):
                raise ValueError(f"{c.dataset} has a fixed training set of {len(s.x_train)} points; use train_size=None")
        idx = [torch.arange(len(s.x_train)) for _ in cfgs]
        return EnsembleData(s.x_train, s.y_train, idx, None, {"dev": (s.x_dev, s.y_dev, None), "test": (s.x_test, s.y_test, None)})

    x, y, xt, yt = _raw_dataset(c0.dataset, None if data_dir is None else str(data_dir))
    if c0.dataset == "mnist":
        pool, dev = (x[: D.splits.MNIST_POOL], y[: D.splits.MNIST_POOL]), (x[D.splits.MNIST_POOL :], y[D.splits.MNIST_POOL :])
    elif c0.dev_is_test:
        pool, dev = (x, y), (xt, yt)
    else:
        pool, dev = (x[: D.splits.CIFAR10_POOL], y[: D.splits.CIFAR10_POOL]), (x[D.splits.CIFAR10_POOL :], y[D.splits.CIFAR10_POOL :])
    idx, luts, dev_luts, test_luts = [], [], [], []
    for c in cfgs:
        n = len(pool[0]) if c.train_size is None else c.train_size
        i = D.training_subset_indices(len(pool[0]), n, c.seed)
        mean, std = D.pixel_mean_std(pool[0][i])
        idx.append(torch.from_numpy(i.astype(np.int64)))
        luts.append(_lut(mean, std))
        dev_luts.append(_lut(*D.pixel_mean_std(dev[0])) if c.per_set_standardization else luts[-1])
        test_luts.append(_lut(*D.pixel_mean_std(xt)) if c.per_set_standardization else luts[-1])

    def t(a, dtype=None):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    labels = lambda a: t(np.asarray(a, dtype=np.int64))  # noqa: E731
    return EnsembleData(
        t(pool[0]), labels(pool[1]), idx, t(np.stack(luts)),
        {"dev": (t(dev[0]), labels(dev[1]), t(np.stack(dev_luts))), "test": (t(xt), labels(yt), t(np.stack(test_luts)))},
    )


# --------------------------------------------------------------------------- regularizers


def _kind(reg: R.Regularizer) -> tuple:
    """A regularizer without its weight: members with equal kinds share one computation."""
    return (type(reg),) + tuple((f.name, getattr(reg, f.name)) for f in dataclasses.fields(reg) if f.name != "weight")


def _kinds(cfgs: Sequence[TrainConfig]) -> list[tuple]:
    """Ordered (kind, occurrence) slots across members; occurrence counts repeats of a kind
    within one member."""
    slots: list[tuple] = []
    for c in cfgs:
        seen: dict = {}
        for r in c.regularizers:
            k = _kind(r)
            seen[k] = seen.get(k, 0) + 1
            if (k, seen[k]) not in slots:
                slots.append((k, seen[k]))
    return slots


def _member_slots(cfg: TrainConfig, slots: list) -> list[tuple[int, R.Regularizer]]:
    """(slot index, regularizer) for each of the member's regularizers, in its list order."""
    seen: dict = {}
    out = []
    for r in cfg.regularizers:
        k = _kind(r)
        seen[k] = seen.get(k, 0) + 1
        out.append((slots.index((k, seen[k])), r))
    return out


def _norm(v: Tensor, norm: str) -> Tensor:
    """Per (member, example) norm of ``v`` (K, B, ...) -> (K, B)."""
    flat = v.flatten(2)
    return flat.pow(2).sum(2) if norm == "l2" else flat.abs().sum(2)


def _draw(reg: R.Regularizer, b: int, m: int, gen: torch.Generator, device, dtype) -> Optional[Tensor]:
    """A member's random projection for one regularizer, drawn as the single run draws it."""
    if isinstance(reg, R.SpectReg):
        return P.gaussian_projections(reg.n_proj, b, m, projection=reg.projection, normalize=reg.normalize,
                                      generator=gen, device=device, dtype=dtype)
    if isinstance(reg, R.RandomOneHot):
        return P.random_onehot_projections(b, m, projection=reg.projection, generator=gen, device=device, dtype=dtype)
    return None


def _slot_penalty(kind: tuple, x: Tensor, logits: Tensor, y: Tensor, pel: Tensor, draws: Optional[Tensor]) -> Tensor:
    """Per (member, example) penalty of one regularizer kind for all members, (K, B)."""
    cls, opts = kind[0], dict(kind[1:])
    k, b, m = logits.shape
    if cls is R.DataGrad:
        (g,) = torch.autograd.grad(pel.sum(), x, create_graph=True, retain_graph=True)
        return _norm(g, opts["norm"])
    if cls is R.ConfidencePenalty:
        return P.confidence_penalty(logits.reshape(k * b, m)).view(k, b)
    if cls in (R.FrobReg, R.JacReg):
        out = logits if cls is R.FrobReg else torch.softmax(logits, dim=2)
        eye = torch.eye(m, device=x.device, dtype=logits.dtype).view(m, 1, 1, m).expand(m, k, b, m)
        return P.input_vjps(out, x, eye, method=opts["method"]).pow(2).flatten(3).sum(3).sum(0)
    if cls is R.OneHot:
        r = torch.nn.functional.one_hot(y, m).to(logits.dtype)
        return _norm(P.input_vjp(logits, x, r), opts["norm"])
    if cls is R.RandomOneHot:
        return _norm(P.input_vjp(logits, x, draws), opts["norm"])
    if cls is R.SpectReg:  # draws: (n_proj, K, B, m)
        if draws.shape[0] == 1:
            return _norm(P.input_vjp(logits, x, draws[0]), opts["norm"])
        v = P.input_vjps(logits, x, draws)
        return _norm(v.flatten(0, 1), opts["norm"]).view(draws.shape[0], k, b).mean(0)
    raise NotPackable(f"no packed penalty for {cls.__name__}")


# --------------------------------------------------------------------------- optimizers


class PackedOptimizer:
    """Adam or Nesterov SGD over packed parameters, with one learning rate per member.

    The arithmetic follows ``torch.optim.Adam`` / ``torch.optim.SGD`` (dampening 0)."""

    def __init__(self, params: list[Tensor], kind: str, k: int):
        self.params, self.kind, self.k = params, kind, k
        self.t = 0
        self.state = [dict() for _ in params]

    def step(self, lr: Tensor) -> None:
        self.t += 1
        with torch.no_grad():
            for p, st in zip(self.params, self.state):
                if p.grad is None:
                    continue
                g = p.grad
                lr_p = lr.view(-1, *([1] * (p.dim() - 1))).to(p.dtype)
                if self.kind == "adam":
                    b1, b2, eps = 0.9, 0.999, 1e-8
                    if not st:
                        st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                    st["m"].lerp_(g, 1 - b1)
                    st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                    bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
                    denom = (st["v"].sqrt() / math.sqrt(bc2)).add_(eps)
                    p.sub_((lr_p / bc1) * st["m"] / denom)
                else:
                    if "buf" not in st:
                        st["buf"] = g.clone()
                    else:
                        st["buf"].mul_(0.9).add_(g)
                    p.sub_(lr_p * g.add(st["buf"], alpha=0.9))


# --------------------------------------------------------------------------- the engine


@dataclass
class MemberOutcome:
    """One finished member: its index in the input list, its result, and (when asked for)
    its final weights under the single model's parameter names."""

    index: int
    result: RunResult
    state_dict: Optional[dict] = None


def members_that_fit(free_bytes: int, per_member_bytes: int, cap: int, headroom: float = 0.7) -> int:
    """How many members fit in ``headroom`` of ``free_bytes`` at ``per_member_bytes`` each
    (at least 1, at most ``cap``)."""
    if per_member_bytes <= 0:
        return cap
    return max(1, min(cap, int(free_bytes * headroom // per_member_bytes)))


def measure_member_bytes(cfg: TrainConfig, device: torch.device) -> int:
    """Peak CUDA memory of one training step per member, from a 2-member trial step."""
    k = 2
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    trainer = PackedTrainer([cfg.replace(seed=s) for s in range(1, k + 1)], device, torch.float32)
    shape = {"lenet5": (1, 28, 28), "resnet_cifar": (3, 32, 32), "mlp_sin": (1,)}[cfg.model]
    x = torch.randn(k, cfg.batch_size, *shape, device=device)
    y = torch.randint(0, 10, (k, cfg.batch_size), device=device) if cfg.loss == "cross_entropy" else torch.randn(k, cfg.batch_size, 1, device=device)
    trainer.step(x, y, 0)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del trainer, x, y
    torch.cuda.empty_cache()
    return int(peak / k)


def chunk_cap(cfg: TrainConfig, max_members: Optional[int]) -> int:
    """``max_members`` when given; else the device default, on CUDA also limited to what fits
    in the free memory (measured with a trial step)."""
    if max_members:
        return max_members
    device = torch.device(cfg.device)
    cap = default_max_members(device, cfg.model)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        cap = members_that_fit(free, measure_member_bytes(cfg, device), cap)
    return cap


def plan_chunks(configs: Sequence[TrainConfig], max_members: Optional[int] = None) -> list[list[int]]:
    """Indices of ``configs`` split into the packed chunks the engine would train: grouped by
    :func:`ensemble_key`, at most ``max_members`` (default :func:`default_max_members`) each."""
    groups: dict = {}
    for i, c in enumerate(configs):
        groups.setdefault(ensemble_key(c), []).append(i)
    chunks = []
    for indices in groups.values():
        cap = chunk_cap(configs[indices[0]], max_members)
        chunks += [indices[s : s + cap] for s in range(0, len(indices), cap)]
    return chunks


def iter_train_many(
    configs: Sequence[TrainConfig],
    *,
    data_dir=None,
    strategy: str = "auto",
    max_members: Optional[int] = None,
    dtype: torch.dtype = torch.float32,
    progress: Optional[bool] = False,
    keep_weights: bool = False,
    workers: Optional[int] = None,
) -> Iterator[MemberOutcome]:
    """Train ``configs`` and yield each member's outcome as soon as its chunk finishes.

    Configs are grouped by :func:`ensemble_key`; each group is split into chunks of at most
    ``max_members`` (default :func:`default_max_members`). ``dtype`` is the packed
    strategy's compute dtype (float64 for exactness tests). On CPU a chunk is split further
    over ``workers`` threads (default :func:`cpu_workers`), each running its own packed
    model with one intra-op thread.
    """
    workers_ = workers
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not valid; valid choices: {', '.join(STRATEGIES)}")
    configs = list(configs)
    for i, c in enumerate(configs):
        if not isinstance(c, TrainConfig):
            raise TypeError(f"configs[{i}] is a {type(c).__name__}, not a TrainConfig")
    groups: dict = {}
    for i, c in enumerate(configs):
        groups.setdefault(ensemble_key(c), []).append(i)
    for indices in groups.values():
        c0 = configs[indices[0]]
        workers = cpu_workers(torch.device(c0.device)) if workers_ is None else workers_
        use = strategy
        if strategy == "auto":
            try:
                PackedModel([build_model(c0, torch.Generator().manual_seed(0))])
                use = "packed"
            except NotPackable as e:
                warnings.warn(f"{c0.model}: {e}; training its {len(indices)} runs sequentially")
                use = "sequential"
        cap = chunk_cap(c0, max_members) if use == "packed" else len(indices)
        for start in range(0, len(indices), cap):
            chunk = indices[start : start + cap]
            if use == "sequential":
                for i in chunk:
                    yield MemberOutcome(i, train(configs[i], data_dir=data_dir, progress=progress))
            else:
                yield from _train_chunk(chunk, configs, data_dir, dtype, progress, keep_weights, workers)


def cpu_workers(device: torch.device) -> int:
    """Threads to spread a CPU chunk over: torch's intra-op thread count (the cores it uses).
    A LeNet step is too small to keep two cores busy inside one op, so two single-threaded
    packed models side by side beat one packed model on two threads (``gradreg bench``)."""
    return max(1, torch.get_num_threads()) if device.type == "cpu" else 1


class single_threaded_ops:
    """Context: torch intra-op threads set to 1, restored on exit."""

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def split_evenly(items: list, parts: int) -> list[list]:
    """``items`` cut into at most ``parts`` consecutive runs of near-equal length."""
    parts = max(1, min(parts, len(items)))
    q, r = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + q + (i < r)
        out.append(items[start:end])
        start = end
    return out


def _train_chunk(chunk, configs, data_dir, dtype, progress, keep_weights, workers) -> Iterator[MemberOutcome]:
    def run(part: list) -> list[MemberOutcome]:
        outs = _train_packed([configs[i] for i in part], data_dir, dtype, progress, keep_weights)
        return [MemberOutcome(part[j], res, sd) for j, (res, sd) in enumerate(outs)]

    parts = split_evenly(chunk, workers)
    if len(parts) == 1:
        yield from run(parts[0])
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with single_threaded_ops(), ThreadPoolExecutor(max_workers=len(parts)) as pool:
        futures = [pool.submit(run, p) for p in parts]
        for f in as_completed(futures):
            yield from f.result()


def train_many(configs: Sequence[TrainConfig], **kwargs) -> list[RunResult]:
    """One :class:`RunResult` per config, in input order (see :func:`iter_train_many`)."""
    out: list = [None] * len(configs)
    for o in iter_train_many(configs, **kwargs):
        out[o.index] = o.result
    return out


class PackedTrainer:
    """K members' packed model, optimizer and per-member random streams; :meth:`step` does
    one training step on a member-major batch. Used by the engine and by ``gradreg bench``."""

    def __init__(self, cfgs: Sequence[TrainConfig], device: torch.device, dtype: torch.dtype):
        c0 = cfgs[0]
        self.cfgs, self.c0, self.k, self.device, self.dtype = list(cfgs), c0, len(cfgs), device, dtype
        singles = [build_model(c, torch.Generator().manual_seed(stream_seed(c.seed, "init"))) for c in cfgs]
        self.model = PackedModel(singles).to(device=device, dtype=dtype)
        self.model.train()
        self.model.set_dropout_generators(
            [torch.Generator(device=device).manual_seed(stream_seed(c.seed, "dropout")) for c in cfgs]
        )
        self.decayed = self.model.decayed_parameters()
        self.opt = PackedOptimizer(list(self.model.parameters()), c0.optimizer, self.k)
        self.proj_gens = [torch.Generator(device=device).manual_seed(stream_seed(c.seed, "projections")) for c in cfgs]
        self.aug_gens = [torch.Generator(device=device).manual_seed(stream_seed(c.seed, "augment")) for c in cfgs]
        self.slots = _kinds(cfgs)
        self.member_slots = [_member_slots(c, self.slots) for c in cfgs]
        k, n_slots = self.k, len(self.slots)
        weights = torch.zeros(k, n_slots, dtype=dtype)
        present = torch.zeros(k, 1 + n_slots, dtype=torch.bool)
        present[:, 0] = True
        for mi, ms in enumerate(self.member_slots):
            for s, r in ms:
                weights[mi, s] = r.weight
                present[mi, 1 + s] = True
        self.weights, self.present = weights.to(device), present.to(device)
        self.wd = torch.tensor([c.weight_decay for c in cfgs], device=device, dtype=dtype)
        self.any_wd = any(c.weight_decay for c in cfgs)
        self.base_lr = torch.tensor([c.lr for c in cfgs], device=device, dtype=torch.float64)
        self.random_slots = [i for i, (kind, _) in enumerate(self.slots) if kind[0] in (R.SpectReg, R.RandomOneHot)]

    def _draws(self, b: int, m: int) -> dict:
        """Random projections, drawn per member from its own generator in its own
        regularizer order (as a single run draws them); zeros where a member lacks the slot."""
        per_slot: dict = {s: [None] * self.k for s in self.random_slots}
        for mi, ms in enumerate(self.member_slots):
            for s, r in ms:
                d = _draw(r, b, m, self.proj_gens[mi], self.device, self.dtype)
                if d is not None:
                    per_slot[s][mi] = d
        draws = {}
        for s in self.random_slots:
            kind = self.slots[s][0]
            spect = kind[0] is R.SpectReg
            shape = (dict(kind[1:])["n_proj"], b, m) if spect else (b, m)
            rows = [d if d is not None else torch.zeros(shape, device=self.device, dtype=self.dtype) for d in per_slot[s]]
            stacked = torch.stack(rows)  # (K, [n_proj,] B, m)
            draws[s] = stacked.transpose(0, 1) if spect else stacked
        return draws

    def step(self, xb: Tensor, yb: Tensor, step: int) -> Tensor:
        """One step on ``xb`` (K, B, *in), ``yb`` (K, B[, ...]). Returns the detached terms
        (K, 1 + slots): the data loss, then each slot's unweighted penalty."""
        c0, k = self.c0, self.k
        lr = self.base_lr * piecewise_lr(step, 1.0, c0.steps, c0.lr_milestones, c0.lr_gamma)
        if c0.augment:
            xb = torch.stack([D.random_translate_flip(xb[mi], self.aug_gens[mi]) for mi in range(k)])
        b = xb.shape[1]
        x = xb.detach().requires_grad_(True)
        logits = self.model(x)
        m = logits.shape[2]
        pel = per_example_loss(logits.reshape(k * b, m), yb.reshape(k * b, *yb.shape[2:]), c0.loss).view(k, b)
        data_loss = pel.sum(1) if c0.loss == "half_sse" else pel.mean(1)  # as core.batch_data_loss
        draws = self._draws(b, m) if self.random_slots else {}
        pens = [_slot_penalty(kind, x, logits, yb, pel, draws.get(si)).mean(1) for si, (kind, _) in enumerate(self.slots)]
        pen = torch.stack(pens, 1) if pens else data_loss.new_zeros(k, 0)  # (K, S)
        total = data_loss + (self.weights * pen).sum(1)
        if self.any_wd:
            total = total + self.wd * 0.5 * sum(p.pow(2).flatten(1).sum(1) for p in self.decayed)
        for p in self.model.parameters():
            p.grad = None
        total.sum().backward()
        self.opt.step(lr)
        return torch.cat([data_loss.detach().unsqueeze(1), pen.detach()], 1)


def _final_probes(trainer: PackedTrainer, data: EnsembleData, cfgs, metric: str):
    """Per member: mean ||J_g||_F at its smoothness points (as :func:`gradreg.train.smoothness_points`
    picks them) and, for regression, its predictions on the test grid."""
    model, k, dtype = trainer.model, trainer.k, trainer.dtype
    n = S.N_POINTS
    x_test, _, test_luts = data.sets["test"]
    pts: dict = {"train": [], "test": [], "off_manifold": []}
    for mi, c in enumerate(cfgs):
        lut_tr = None if data.luts is None else data.luts[mi : mi + 1]
        lut_te = None if test_luts is None else test_luts[mi : mi + 1]
        pts["train"].append(data.inputs(data.pool_x[data.train_idx[mi][:n].to(data.pool_x.device)].unsqueeze(0), lut_tr, dtype)[0])
        pts["test"].append(data.inputs(x_test[:n].unsqueeze(0), lut_te, dtype)[0])
        a, b, t = S.interpolation_draws(len(x_test), n, torch.Generator().manual_seed(stream_seed(c.seed, "smoothness")))
        xa = data.inputs(x_test[a.to(x_test.device)].unsqueeze(0), lut_te, dtype)[0]
        xb = data.inputs(x_test[b.to(x_test.device)].unsqueeze(0), lut_te, dtype)[0]
        pts["off_manifold"].append(S.interpolate(xa, xb, t.to(xa.device)))
    model.eval()
    norms = {key: S.jacobian_frobenius_norms(model, torch.stack(v), lead=2).mean(1).tolist() for key, v in pts.items()}
    fits = None
    if metric == "mse":
        with torch.no_grad():
            fits = model(data.inputs(x_test.unsqueeze(0).expand(k, *x_test.shape), None, dtype)).flatten(1).tolist()
    model.train()
    return [{key: norms[key][mi] for key in norms} for mi in range(k)], fits


def _train_packed(cfgs: list[TrainConfig], data_dir, dtype, progress, keep_weights):
    c0 = cfgs[0]
    device = torch.device(c0.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available; use device='cpu'")
    k = len(cfgs)
    metric = "accuracy" if c0.loss == "cross_entropy" else "mse"
    data = ensemble_data(cfgs, data_dir, device)
    trainer = PackedTrainer(cfgs, device, dtype)
    model, decayed, slots, member_slots = trainer.model, trainer.decayed, trainer.slots, trainer.member_slots
    samplers = [D.BatchSampler(len(i), c0.batch_size, torch.Generator().manual_seed(stream_seed(c.seed, "batches")))
                for c, i in zip(cfgs, data.train_idx)]

    n_terms = 1 + len(slots)
    window = torch.zeros(c0.penalty_window, k, n_terms, device=device, dtype=torch.float64)
    first_bad = torch.full((k,), -1, device=device, dtype=torch.long)
    bad_term = torch.full((k,), -1, device=device, dtype=torch.long)
    curves: list[list] = [[] for _ in cfgs]
    # Evaluation batches hold K * chunk inputs; shrink the chunk for big ensembles unless BN
    # uses batch statistics at evaluation, where the chunk is part of the result.
    eval_chunk = c0.eval_batch_size if c0.bn_batch_stats_at_eval else min(c0.eval_batch_size, max(1, 50_000 // k))

    def evaluate_all() -> dict:
        model.eval()
        out = {}
        with torch.no_grad():
            for name, (xs, ys, luts) in data.sets.items():
                xs, ys = xs[: c0.eval_limit], ys[: c0.eval_limit]
                total = torch.zeros(k, dtype=torch.float64, device=device)
                for i in range(0, len(xs), eval_chunk):
                    raw = xs[i : i + eval_chunk]
                    xb = data.inputs(raw.unsqueeze(0).expand(k, *raw.shape), luts, dtype)
                    logits = model(xb)
                    yb = ys[i : i + eval_chunk]
                    if metric == "accuracy":
                        total += (logits.argmax(2) == yb).sum(1)
                    else:
                        total += (logits - yb.view(1, *yb.shape).to(dtype)).pow(2).flatten(1).sum(1)
                out[name] = (total / (len(xs) if metric == "accuracy" else ys.numel())).tolist()
        model.train()
        return out

    def curve_point(step: int) -> None:
        n = min(step, c0.penalty_window)
        means = window[:n].mean(0)[:, 0].tolist() if n else [float("nan")] * k
        ev = evaluate_all()
        for mi in range(k):
            curves[mi].append({"step": step, "train_loss": means[mi], "dev": ev["dev"][mi], "test": ev["test"][mi]})

    bar = tqdm(total=c0.steps, disable=(not sys.stderr.isatty()) if progress is None else not progress,
               desc=f"ensemble x{k}", leave=False)
    t0 = time.perf_counter()
    for step in range(c0.steps):
        pool_idx = torch.stack([ti[next(s)] for ti, s in zip(data.train_idx, samplers)]).to(device)
        terms = trainer.step(data.inputs(data.pool_x[pool_idx], data.luts, dtype), data.pool_y[pool_idx], step)
        finite = torch.isfinite(terms) | ~trainer.present
        newly = (first_bad < 0) & ~finite.all(1)
        bad_term = torch.where(newly, (~finite).long().argmax(1), bad_term)
        first_bad = torch.where(newly, torch.full_like(first_bad, step), first_bad)
        window[step % c0.penalty_window] = terms.to(torch.float64)
        done = step + 1
        if c0.eval_every and done % c0.eval_every == 0 and done != c0.steps:
            curve_point(done)
        bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - t0
    curve_point(c0.steps)
    grad_norms, fits = _final_probes(trainer, data, cfgs, metric)
    # Window rows are in ring order; the mean does not care.
    n = min(c0.steps, c0.penalty_window)
    means = window[:n].mean(0).tolist()
    bad = first_bad.tolist()
    bad_t = bad_term.tolist()
    term_names = ["loss"] + [slots[s][0][0].__name__ for s in range(len(slots))]
    names_dev = f"{device}" if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"
    for mi, c in enumerate(cfgs):
        pen_names = {}
        for s, r in member_slots[mi]:
            key, nn_ = r.name, 2
            while key in pen_names.values() or key == "loss":
                key, nn_ = f"{r.name}#{nn_}", nn_ + 1
            pen_names[s] = key
        res = RunResult(
            config=c.to_dict(),
            metric=metric,
            dev=curves[mi][-1]["dev"],
            test=curves[mi][-1]["test"],
            train_loss=means[mi][0],
            penalties={pen_names[s]: means[mi][1 + s] for s, _ in member_slots[mi]},
            weight_norm_sq=float(sum(p[mi].detach().double().pow(2).sum() for p in decayed)),
            wall_time_s=elapsed / k,
            steps_per_s=c0.steps * k / elapsed,
            curve=curves[mi],
            device=names_dev,
            steps_done=c0.steps,
            ensemble_size=k,
            grad_norms=grad_norms[mi],
            fit=None if fits is None else fits[mi],
        )
        if bad[mi] >= 0:
            res.error = f"step {bad[mi]}: the {term_names[bad_t[mi]]!r} term is not finite; this member diverged"
        sd = {n: v.detach().cpu().clone() for n, v in model.member_state_dict(mi).items()} if keep_weights else None
        yield res, sd

"""Chunk planning: which configs train together, and how many at a time.

Configs that share everything but the *member fields* (seed, training-set size, regularizer
weights, weight decay, learning rate) train as one ensemble. The regularizer *kinds* (class
and options, not weight) are part of the key, so no member pays for a penalty it does not
have: NoGR runs never share a chunk with DataGrad runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..config import TrainConfig

# Fields that members of one ensemble may differ in; every other field must be equal.
MEMBER_FIELDS = ("seed", "train_size", "regularizers", "weight_decay", "lr")


def regularizer_kinds(cfg: TrainConfig) -> tuple:
    """The config's regularizers without their weights, in order."""
    from ..regularizers import type_name

    return tuple(
        (type_name(type(r)), tuple(sorted((k, repr(v)) for k, v in r.options().items()))) for r in cfg.regularizers
    )


def ensemble_key(cfg: TrainConfig) -> tuple:
    """Configs with equal keys can be trained as one ensemble."""
    d = cfg.to_dict()
    for f in MEMBER_FIELDS:
        d.pop(f)
    return tuple(sorted((k, repr(v)) for k, v in d.items())) + (("regularizer_kinds", regularizer_kinds(cfg)),)


def default_max_members(device: torch.device, model: str) -> int:
    """How many members one chunk holds by default. On 2 CPU cores the gain saturates after
    a few members; on a GPU, LeNet and the MLP fit hundreds."""
    cpu = {"lenet5": 16, "mlp_sin": 128, "resnet_cifar": 4}
    gpu = {"lenet5": 512, "mlp_sin": 1024, "resnet_cifar": 16}
    return (cpu if device.type == "cpu" else gpu).get(model, 8 if device.type == "cpu" else 64)


def members_that_fit(free_bytes: int, per_member_bytes: int, cap: int, headroom: float = 0.7) -> int:
    """How many members fit in ``headroom`` of ``free_bytes`` at ``per_member_bytes`` each
    (at least 1, at most ``cap``)."""
    if per_member_bytes <= 0:
        return cap
    return max(1, min(cap, int(free_bytes * headroom // per_member_bytes)))


def check_max_members(max_members) -> None:
    if max_members is None:
        return
    if isinstance(max_members, bool) or not isinstance(max_members, int) or max_members < 1:
        raise ValueError(f"max_members must be a positive integer or None (the device default), got {max_members!r}")


def chunk_cap(cfg: TrainConfig, max_members: int | None) -> int:
    """``max_members`` when given; else the device default, on CUDA also limited to what fits
    in the free memory (measured with a trial step)."""
    check_max_members(max_members)
    if max_members:
        return max_members
    device = torch.device(cfg.device)
    cap = default_max_members(device, cfg.model)
    if device.type == "cuda" and torch.cuda.is_available():
        from .trainer import measure_member_bytes

        free, _ = torch.cuda.mem_get_info(device)
        cap = members_that_fit(free, measure_member_bytes(cfg, device), cap)
    return cap


def group_configs(configs: Sequence[TrainConfig]) -> list[list[int]]:
    """Indices of ``configs`` grouped by :func:`ensemble_key`, in first-seen order."""
    groups: dict = {}
    for i, c in enumerate(configs):
        groups.setdefault(ensemble_key(c), []).append(i)
    return list(groups.values())


def plan_chunks(configs: Sequence[TrainConfig], max_members: int | None = None) -> list[list[int]]:
    """Indices of ``configs`` split into the chunks the engine would train: grouped by
    :func:`ensemble_key`, at most ``max_members`` (default :func:`default_max_members`) each."""
    chunks = []
    for indices in group_configs(configs):
        cap = chunk_cap(configs[indices[0]], max_members)
        chunks += [indices[s : s + cap] for s in range(0, len(indices), cap)]
    return chunks


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


def cpu_workers(device: torch.device) -> int:
    """Threads to spread a CPU chunk over: torch's intra-op thread count (the cores it uses).
    A LeNet step is too small to keep two cores busy inside one op, so two single-threaded
    ensembles side by side beat one ensemble on two threads (``gradreg bench``)."""
    return max(1, torch.get_num_threads()) if device.type == "cpu" else 1


def on_one_thread(fn: Callable) -> Callable:
    """``fn`` wrapped to run its torch ops on one intra-op thread in whichever thread calls it.

    Use it for work submitted to a pool inside :class:`single_threaded_ops`: the count that
    context sets in the calling thread does not reach the pool's threads (OpenMP keeps it per
    thread), so each worker would open its own team of ``cores`` threads, ``workers x cores``
    threads on ``cores`` cores. Those idle teams also slowed the main thread's later work by
    about 1.6x (``gradreg bench``'s one-run loop, 33 against 21 ms per step, before this fix)."""

    def run(*args, **kwargs):
        torch.set_num_threads(1)
        return fn(*args, **kwargs)

    return run


class single_threaded_ops:
    """Context: torch intra-op threads set to 1, restored on exit."""

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)

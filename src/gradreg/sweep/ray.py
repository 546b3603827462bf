"""Train a sweep on a Ray cluster: one Ray task per packed chunk.

`RayExecutor` is a `gradreg.sweep.Executor`. It splits the runs into the same
chunks as the in-process executor (`gradreg.ensemble.loop.plan_chunks`), so given the same
runs, every run is trained with the same ensemble neighbours and, on CPU, gives bitwise the
same result. (A rerun that trains only the missing runs of a sweep may pack them differently,
and a packed member's result depends on its pack at the level of float rounding.) Each chunk
is one Ray task; the driver stores a chunk's runs as soon as its task finishes, so a killed
driver loses at most the chunks in flight, and a rerun trains only those.

Failures:

- A worker process that dies (killed, out of memory, its node lost) is a *system* failure:
  Ray reruns its chunk from the start, up to `max_retries` times.
- A Python exception raised while training (a bad config, missing data) is not retried, since
  it would only fail again. The other chunks still run and are reported; then the first error
  is raised, with a note that says how many chunks failed.

Ray is an optional dependency (`pip install 'gradreg[ray]'`), imported only when a sweep
runs. On a multi-node cluster every node needs the same gradreg and torch, and `data_dir`
must name a directory that exists on every node.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..ensemble.loop import plan_chunks, train_many
from ..train import RunResult

__all__ = ["RayExecutor", "RAY_MISSING", "ClusterTooSmall"]

RAY_MISSING = "the ray executor needs Ray: pip install 'gradreg[ray]'"


class ClusterTooSmall(ValueError):
    """A task asks for more CPUs or GPUs than the whole Ray cluster has (it would wait forever)."""


# The object store of a local cluster that this executor starts. Tasks pass only config
# dicts and result dicts (kilobytes each), and Ray's default (30% of RAM) would pin memory
# that training needs on a small machine.
LOCAL_OBJECT_STORE_BYTES = 200 * 2**20


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError(RAY_MISSING) from e
    return ray


def train_chunk(
    config_dicts: list[dict], data_dir: str | None, max_members: int | None, num_threads: int
) -> list[dict]:
    """The body of one Ray task: train one packed chunk in this process.

    Args:
        config_dicts: The chunk's configs, as `TrainConfig.to_dict` writes them.
        data_dir: The data directory on the worker (None: its `GRADREG_DATA_DIR` or cache).
        max_members: The chunk size cap.
        num_threads: The torch threads to use (the CPUs Ray reserved for this task).

    Returns:
        Each member's `RunResult.to_dict()`, in the order of `config_dicts`.
    """
    torch.set_num_threads(num_threads)  # the CPUs Ray reserved for this task, not the whole node's
    configs = [TrainConfig.from_dict(d) for d in config_dicts]
    return [r.to_dict() for r in train_many(configs, data_dir=data_dir, max_members=max_members)]


def _check_devices(configs: list[TrainConfig]) -> None:
    """Refuse a CUDA device other than `cuda`/`cuda:0`: each Ray task sees its own GPU as `cuda:0`.

    Args:
        configs: The runs to train.

    Raises:
        ValueError: A config asks for `cuda:1` or another index.
    """
    for i, c in enumerate(configs):
        device = torch.device(c.device)
        if device.type == "cuda" and device.index not in (None, 0):
            raise ValueError(
                f"configs[{i}] asks for device {c.device!r}; Ray gives each task its own GPU, which the "
                "task sees as cuda:0. Use device 'cuda'."
            )


@dataclass
class RayExecutor:
    """Trains each packed chunk as one Ray task (see the module docstring).

    Args:
        address: The Ray cluster to attach to (`"auto"`, `"ray://host:10001"`, ...). None: the
            cluster in `RAY_ADDRESS` if set, else a new local cluster on this machine's CPUs (and
            GPUs), which `run` shuts down when it returns. A Ray already initialized in this
            process is used as it is and left running.
        data_dir: The data directory on the workers (None: their `GRADREG_DATA_DIR` or cache).
        max_members: The chunk size cap (None: `gradreg.ensemble.loop.default_max_members`). A
            chunk is the unit of parallelism: an experiment of n runs gives about
            n / max_members tasks.
        num_cpus_per_task: CPUs Ray reserves per chunk; the task uses that many torch threads.
        num_gpus_per_task: GPUs Ray reserves per chunk (fractions share a GPU). 0: one GPU for a
            chunk on CUDA, none for a chunk on CPU.
        max_retries: How often a chunk whose worker died is rerun before the sweep fails.

    Raises:
        ValueError: `num_cpus_per_task` is not > 0, `num_gpus_per_task` is negative,
            `max_retries` is negative, or `max_members` is below 1.
    """

    address: str | None = None
    data_dir: str | None = None
    max_members: int | None = None
    num_cpus_per_task: float = 1
    num_gpus_per_task: float = 0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if not self.num_cpus_per_task > 0:
            raise ValueError(f"num_cpus_per_task must be > 0, got {self.num_cpus_per_task}")
        if not self.num_gpus_per_task >= 0:
            raise ValueError(f"num_gpus_per_task must be >= 0, got {self.num_gpus_per_task}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.max_members is not None and self.max_members < 1:
            raise ValueError(f"max_members must be >= 1 or None, got {self.max_members}")

    def run(self, configs: Sequence[TrainConfig], on_result: Callable[[int, RunResult], None]) -> None:
        """Train `configs`, reporting each member of a chunk as soon as that chunk's task finishes.

        Args:
            configs: The runs to train.
            on_result: `on_result(index, result)`, called in this process with the index into
                `configs`.

        Raises:
            ValueError: A config asks for a CUDA device other than `cuda`/`cuda:0` (each task sees
                its own GPU as `cuda:0`).
            ImportError: Ray is not installed.
            ClusterTooSmall: A task asks for more CPUs or GPUs than the whole cluster has.
            ray.exceptions.RayError: The first chunk that failed (a training error, or a worker dead
                for good), after the other chunks ran and were reported.
        """
        configs = list(configs)
        if not configs:
            return
        _check_devices(configs)
        ray = _import_ray()
        chunks = plan_chunks(configs, self.max_members)
        gpus = [self.gpus_for(configs[chunk[0]].device) for chunk in chunks]  # a chunk shares one device

        started = self._connect(ray)
        pending: dict = {}  # task ref -> its chunk, until reported; what a failure cancels
        try:
            self._check_resources(ray, max(gpus))
            self._submit(ray, configs, chunks, gpus, pending)
            self._collect(ray, pending, on_result, len(chunks))
        except BaseException:
            for ref in pending:  # on Ctrl-C or a store error, free the cluster
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
            raise
        finally:
            if started:
                ray.shutdown()

    def _submit(self, ray, configs: list[TrainConfig], chunks: list, gpus: list[float], pending: dict) -> None:
        """Start one Ray task per chunk.

        Args:
            ray: The `ray` module.
            configs: The runs to train.
            chunks: Indices into `configs`, one list per task (`plan_chunks`).
            gpus: The GPUs each chunk's task asks for.
            pending: Filled with task ref -> chunk as each task starts, so that a failure
                part-way cancels the tasks already started.
        """
        data_dir = None if self.data_dir is None else os.path.abspath(os.path.expanduser(str(self.data_dir)))
        threads = max(1, int(self.num_cpus_per_task))
        task = ray.remote(train_chunk)
        for n, chunk in enumerate(chunks):
            ref = task.options(
                name=f"gradreg-chunk-{n}",
                num_cpus=self.num_cpus_per_task,
                num_gpus=gpus[n],
                max_retries=self.max_retries,
                retry_exceptions=False,
            ).remote([configs[i].to_dict() for i in chunk], data_dir, self.max_members, threads)
            pending[ref] = chunk

    @staticmethod
    def _collect(ray, pending: dict, on_result: Callable[[int, RunResult], None], n_chunks: int) -> None:
        """Report each chunk's runs as its task finishes, then raise the first failure.

        Args:
            ray: The `ray` module.
            pending: Task ref -> chunk; each is removed once its task has finished.
            on_result: `on_result(index, result)`, as `run` takes it.
            n_chunks: The number of chunks, for the failure's note.

        Raises:
            ray.exceptions.RayError: The first chunk that failed, after every other chunk was
                reported.
        """
        failed: list = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                chunk = pending.pop(ref)
                try:
                    dicts = ray.get(ref)
                except ray.exceptions.RayError as e:  # a training error, or a worker dead for good
                    failed.append(e)
                    continue
                for i, d in zip(chunk, dicts):
                    on_result(i, RunResult(**d))
        if failed:
            first = failed[0]
            if hasattr(first, "add_note"):  # Python >= 3.11
                first.add_note(
                    f"gradreg: {len(failed)} of {n_chunks} chunks failed; the other chunks' runs were "
                    "reported (and so stored by a sweep), and a rerun trains only the missing ones"
                )
            raise first

    def gpus_for(self, device: str) -> float:
        """The GPUs one task asks Ray for when its chunk trains on `device`.

        Args:
            device: The chunk's device.

        Returns:
            `num_gpus_per_task`, or where that is 0, 1 on CUDA and 0 elsewhere.
        """
        return self.num_gpus_per_task or (1.0 if torch.device(device).type == "cuda" else 0.0)

    def _check_resources(self, ray, gpus: float) -> None:
        # Ray would keep an infeasible task waiting forever (for a node that may never join).
        have = ray.cluster_resources()
        for name, need in (("CPU", self.num_cpus_per_task), ("GPU", gpus)):
            if need > have.get(name, 0):
                raise ClusterTooSmall(
                    f"each task asks for {need:g} {name}(s), but the Ray cluster has {have.get(name, 0):g} in all; "
                    f"lower num_{name.lower()}s_per_task" + (" or train on device 'cpu'" if name == "GPU" else "")
                )

    def _connect(self, ray) -> bool:
        """Initialize Ray unless it already is; True when this call did (and so shuts it down)."""
        if ray.is_initialized():
            return False
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, ignore_reinit_error=True)
        else:
            ray.init(address=self.address, ignore_reinit_error=True)
        return True

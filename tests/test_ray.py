"""The Ray executor: a sweep through a local Ray cluster stores exactly what the in-process
executor stores, a worker killed mid-chunk is retried without losing or duplicating a run,
and a training error is not retried but surfaces.

The oracle is the in-process executor with the same chunking (``max_members``): on CPU a
packed chunk is bitwise reproducible, so every metric must be equal, not close.
"""

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

import helpers_faults as H
from gradreg.ensemble.loop import plan_chunks
from gradreg.sweep.runner import STORE_NAME, InProcessExecutor, run_experiment
from gradreg.sweep.store import Store, run_key

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'gradreg[ray]')")

MAX_MEMBERS = 2  # 6 runs -> 3 chunks -> 3 tasks on a 2-CPU cluster: one task waits for a free CPU
SKIP = {"wall_time_s", "steps_per_s", "created_at"}  # timings differ between any two sweeps


def stored(out_dir: Path, name: str) -> dict:
    """run_key -> the stored row without its timings."""
    with Store(out_dir / STORE_NAME) as s:
        return {r["run_key"]: {k: v for k, v in r.items() if k not in SKIP} for r in s.rows(name)}


@pytest.fixture(scope="module")
def experiment():
    return H.small_sin_experiment()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, experiment):
    """The same sweep through the in-process executor."""
    out = tmp_path_factory.mktemp("inprocess")
    with H.one_torch_thread():  # as the Ray tasks (1 CPU each)
        run_experiment(experiment, out, InProcessExecutor(max_members=MAX_MEMBERS), log=lambda *a: None)
    return stored(out, experiment.name)


@pytest.fixture(scope="module")
def kill_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("kill")


@pytest.fixture(scope="module")
def ray_cluster(kill_dir):
    """A local 2-CPU cluster whose workers run :func:`helpers_faults.ray_worker_setup`."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    tests = str(Path(__file__).resolve().parent)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
                H.KILL_DIR_ENV: str(kill_dir),
            },
            "worker_process_setup_hook": "helpers_faults.ray_worker_setup",
        },
    )
    yield ray
    ray.shutdown()


def attempts(kill_dir: Path) -> list[str]:
    log = kill_dir / "attempts.log"
    return log.read_text().splitlines() if log.exists() else []


def test_missing_ray_gives_a_clear_error(monkeypatch):
    from gradreg.sweep.ray import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'gradreg\[ray\]'"):
        RayExecutor().run(H.small_sin_experiment().runs()[:1], lambda i, r: None)


def test_bad_arguments_are_rejected_before_ray_starts():
    from gradreg.sweep.ray import RayExecutor

    with pytest.raises(ValueError, match="num_cpus_per_task"):
        RayExecutor(num_cpus_per_task=0)
    with pytest.raises(ValueError, match="max_retries"):
        RayExecutor(max_retries=-1)
    with pytest.raises(ValueError, match="max_members"):
        RayExecutor(max_members=0)


def test_a_task_asks_for_one_gpu_exactly_when_its_chunk_trains_on_cuda():
    from gradreg.sweep.ray import RayExecutor

    assert RayExecutor().gpus_for("cpu") == 0
    assert RayExecutor().gpus_for("cuda") == RayExecutor().gpus_for("cuda:0") == 1
    assert RayExecutor(num_gpus_per_task=0.25).gpus_for("cuda") == 0.25  # four chunks share a GPU
    cfg = H.small_sin_experiment().runs()[0].replace(device="cuda:1")
    with pytest.raises(ValueError, match="Use device 'cuda'"):  # Ray's task sees its GPU as cuda:0
        RayExecutor().run([cfg], lambda i, r: None)


@needs_ray
def test_executor_starts_its_own_local_cluster_and_shuts_it_down(tmp_path):
    """Without an initialized Ray, ``RayExecutor()`` starts a local cluster for the sweep and
    stops it afterwards (``gradreg run --executor ray`` on a laptop)."""
    import ray

    from gradreg.sweep.ray import RayExecutor

    if ray.is_initialized():
        pytest.skip("a Ray cluster is already initialized in this process")
    cfgs = [c.replace(steps=20, eval_every=0) for c in H.small_sin_experiment().runs()[:2]]
    got = {}
    RayExecutor(max_members=1).run(cfgs, lambda i, r: got.setdefault(i, r))
    assert not ray.is_initialized()
    assert sorted(got) == [0, 1]
    assert [got[i].config for i in range(2)] == [c.to_dict() for c in cfgs]


@needs_ray
def test_ray_sweep_stores_the_same_metrics_as_in_process(tmp_path, ray_cluster, experiment, reference, kill_dir):
    from gradreg.sweep.ray import RayExecutor

    before = len(attempts(kill_dir))
    summary = run_experiment(experiment, tmp_path, RayExecutor(max_members=MAX_MEMBERS), log=lambda *a: None)
    got = stored(tmp_path, experiment.name)

    assert ray_cluster.is_initialized(), "the executor shut down a cluster it only attached to"
    assert summary.trained == len(experiment.runs()) == 6
    assert set(got) == {run_key(c.to_dict()) for c in experiment.runs()}
    for key, row in reference.items():
        assert got[key]["metrics"]["ensemble_size"] == 1  # on CPU every run is its own single run
        assert got[key] == row, f"run {key} differs between the Ray and the in-process sweep"
    # one task per chunk, each attempted once
    assert len(attempts(kill_dir)) - before == len(plan_chunks(experiment.runs(), MAX_MEMBERS)) == 3


@needs_ray
def test_a_worker_killed_mid_chunk_is_retried_and_nothing_is_lost_or_duplicated(
    tmp_path, ray_cluster, experiment, reference, kill_dir
):
    from gradreg.sweep.ray import RayExecutor

    class Recording:  # the store's put is idempotent, so count the executor's calls directly
        def run(self, configs, on_result):
            RayExecutor(max_members=MAX_MEMBERS, max_retries=2).run(
                configs, lambda i, r: (calls.append(i), on_result(i, r))
            )

    calls = []
    before = len(attempts(kill_dir))
    (kill_dir / "arm").touch()
    try:
        run_experiment(experiment, tmp_path, Recording(), log=lambda *a: None)
    finally:
        (kill_dir / "arm").unlink()
    assert sorted(calls) == list(range(len(experiment.runs())))  # each run delivered exactly once

    fired = kill_dir / "fired"
    assert fired.exists(), "no worker was killed: the test did not test anything"
    killed_pid = int(fired.read_text())
    tries = attempts(kill_dir)[before:]
    assert len(tries) == 3 + 1, tries  # three chunks, one of them twice
    assert [t.split()[0] for t in tries].count(str(killed_pid)) == 1
    assert len({t.split()[1] for t in tries}) == 3  # the retried chunk has the same members

    with Store(tmp_path / STORE_NAME) as s:
        assert s.count(experiment.name) == len(experiment.runs())
        n, distinct = s._conn.execute("SELECT COUNT(*), COUNT(DISTINCT run_key) FROM memberships").fetchone()
        assert n == distinct == len(experiment.runs())
        assert s.integrity_check() == "ok"
    assert stored(tmp_path, experiment.name) == reference


@needs_ray
def test_a_chunk_out_of_retries_fails_the_sweep_after_the_others_are_stored(
    tmp_path, ray_cluster, experiment, reference, kill_dir
):
    """max_retries=0: the killed chunk is lost, the error surfaces once the other chunks are
    stored, and a rerun trains only the lost chunk."""
    from gradreg.sweep.ray import RayExecutor

    (kill_dir / "fired").unlink(missing_ok=True)
    (kill_dir / "arm").touch()
    try:
        with pytest.raises(ray_cluster.exceptions.RayError) as info:
            run_experiment(
                experiment, tmp_path, RayExecutor(max_members=MAX_MEMBERS, max_retries=0), log=lambda *a: None
            )
    finally:
        (kill_dir / "arm").unlink()
    assert (kill_dir / "fired").exists()
    assert "1 of 3 chunks failed" in "".join(getattr(info.value, "__notes__", []))
    partial = stored(tmp_path, experiment.name)
    assert len(partial) == len(experiment.runs()) - MAX_MEMBERS

    summary = run_experiment(experiment, tmp_path, RayExecutor(max_members=MAX_MEMBERS), log=lambda *a: None)
    assert (summary.already_stored, summary.trained) == (4, 2)
    assert stored(tmp_path, experiment.name) == reference


@needs_ray
def test_a_task_the_cluster_cannot_place_fails_at_once_instead_of_waiting(ray_cluster):
    from gradreg.sweep.ray import RayExecutor

    cfgs = H.small_sin_experiment().runs()[:1]
    with pytest.raises(ValueError, match="asks for 1 GPU.*has 0"):
        RayExecutor(num_gpus_per_task=1).run(cfgs, lambda i, r: pytest.fail("trained"))
    with pytest.raises(ValueError, match="asks for 3 CPU.*has 2"):
        RayExecutor(num_cpus_per_task=3).run(cfgs, lambda i, r: pytest.fail("trained"))
    assert ray_cluster.is_initialized()


@needs_ray
def test_a_training_error_is_not_retried_and_the_other_chunks_are_stored(tmp_path, ray_cluster, kill_dir):
    """SIN has a fixed training set, so ``train_size=5`` raises ValueError in the worker."""
    from gradreg.sweep.ray import RayExecutor

    good = [c.replace(steps=20, eval_every=0) for c in H.small_sin_experiment().runs()[:2]]
    bad = good[0].replace(train_size=5, steps=21)  # another step count: its own chunk
    cfgs = [good[0], bad, good[1]]
    got = {}
    before = len(attempts(kill_dir))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="fixed training set") as info:
        RayExecutor(max_members=2, max_retries=3).run(cfgs, lambda i, r: got.setdefault(i, r))
    assert "1 of 2 chunks failed" in "".join(getattr(info.value, "__notes__", []))
    assert sorted(got) == [0, 2]  # the good chunk was stored before the error was raised
    # the bad chunk raised before its first step; only the good chunk reached training, once
    assert len(attempts(kill_dir)) - before == 1
    assert time.perf_counter() - t0 < 60

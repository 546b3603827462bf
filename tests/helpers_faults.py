"""Shared pieces of the fault tests (test_faults.py, test_ray.py).

- :func:`small_sin_experiment`: a few cheap SIN runs shaped like Table 7 (no data files).
- A command line, so a test can run a sweep or a training run in a process it then kills::

      python helpers_faults.py sweep OUT_DIR [--max-members K]
      python helpers_faults.py train CHECKPOINT

  The sweep is ``run_experiment(small_sin_experiment(), OUT_DIR, InProcessExecutor(...))``;
  rerunning the same command finishes an interrupted sweep. With ``$GRADREG_TEST_KILL_IN_PUT=N``
  the sweep SIGKILLs itself inside the N-th run's store transaction (row inserted, not committed).
- :func:`ray_worker_setup`: a Ray ``worker_process_setup_hook`` that makes a worker SIGKILL
  itself in the middle of a chunk, once, when the test arms it (see its docstring).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
from pathlib import Path

SIN_LAMBDAS = (0, 0.03, 0.3)
SEEDS = (1, 2)
STEPS = 60


@contextlib.contextmanager
def one_torch_thread():
    """Train with one torch thread, as a Ray task with 1 CPU does and as the subprocesses of
    these tests do (``OMP_NUM_THREADS=1``). It keeps the tests fast on a busy 2-core machine,
    where two spinning OpenMP threads per process slow training down more than tenfold."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def subprocess_env() -> dict:
    """The environment for a child python: one torch thread, gradreg and this folder importable."""
    here = str(Path(__file__).resolve().parent)
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
    }


def small_sin_experiment(lambdas=SIN_LAMBDAS, seeds=SEEDS, steps: int = STEPS, name: str = "table7_small"):
    """Table 7 ("quick" profile) cut down to ``lambdas`` x ``seeds`` runs of ``steps`` steps."""
    from gradreg.paper.experiments import Cell, build

    exp = build("table7", "quick")
    cells = tuple(
        Cell(
            c.row,
            c.col,
            tuple((lam, cfg.replace(steps=steps, eval_every=max(steps // 3, 1))) for lam, cfg in c.candidates),
            c.x,
        )
        for c in exp.cells
        if c.x in lambdas
    )
    assert len(cells) == len(lambdas), "table7 no longer has these lambdas"
    return dataclasses.replace(exp, name=name, cells=cells, seeds=tuple(seeds))


def long_sin_config(steps: int = 400, checkpoint_every: int = 10):
    """One SIN run long enough to be killed mid-training, checkpointing often."""
    from gradreg.config import paper_config
    from gradreg.regularizers import SpectReg

    return paper_config(
        "sin", seed=3, steps=steps, eval_every=100, checkpoint_every=checkpoint_every, regularizers=(SpectReg(0.03),)
    )


# --------------------------------------------------------------------------- Ray fault injection

KILL_DIR_ENV = "GRADREG_TEST_KILL_DIR"
KILL_AT_STEP = 40


def ray_worker_setup() -> None:
    """Runs once in each Ray worker process (``runtime_env={"worker_process_setup_hook": ...}``).

    Wraps the engine (``iter_train_many``, called once per Ray task, i.e. per chunk, and
    ``train_model``, one run) so that, in the directory named by ``$GRADREG_TEST_KILL_DIR``:

    - every chunk that reaches its first training step appends ``"<pid> <its members' run keys>"`` to
      ``attempts.log``;
    - once ``arm`` exists, the first run to reach step ``KILL_AT_STEP`` creates ``fired``
      (atomically: exactly one wins) with its pid, and SIGKILLs its own worker process.
      Later attempts see ``fired`` and train normally.
    """
    folder = os.environ.get(KILL_DIR_ENV)
    if not folder:
        return
    folder = Path(folder)
    from gradreg.ensemble import loop as engine
    from gradreg.sweep.store import run_key
    from gradreg.train import RunOptions

    original_iter, original_train = engine.iter_train_many, engine.train_model
    pending: list[str] = []  # the chunk's line, written by its first run's first step

    def iter_train_many(configs, **kwargs):
        pending[:] = [f"{os.getpid()} {','.join(run_key(c.to_dict())[:8] for c in configs)}\n"]
        return original_iter(configs, **kwargs)

    def log_attempt() -> None:
        try:
            line = pending.pop()
        except IndexError:
            return
        with open(folder / "attempts.log", "a") as f:
            f.write(line)

    def maybe_kill(done: int) -> None:
        if done == KILL_AT_STEP and (folder / "arm").exists():
            try:
                fd = os.open(folder / "fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

    def train_model(cfg, *, run=None, **kwargs):
        run = run if run is not None else RunOptions()
        inner = run.on_step

        def on_step(done: int) -> None:
            if done == 1:
                log_attempt()
            maybe_kill(done)
            if inner is not None:
                inner(done)

        run.on_step = on_step
        return original_train(cfg, run=run, **kwargs)

    engine.iter_train_many, engine.train_model = iter_train_many, train_model


# --------------------------------------------------------------------------- the command line

KILL_IN_PUT_ENV = "GRADREG_TEST_KILL_IN_PUT"


def _die_inside_the_nth_put(n: int) -> None:
    """Make the n-th ``Store.put_many`` of this process SIGKILL it between its INSERTs and
    its COMMIT."""
    from gradreg.sweep.store import Store

    original = Store.put_many
    calls = 0

    def put_many(self, experiment, records):
        nonlocal calls
        calls += 1
        if calls == n:
            write = self._write

            def dying_write(fn, what):
                def insert_then_die(conn):
                    fn(conn)
                    assert conn.in_transaction
                    os.kill(os.getpid(), signal.SIGKILL)

                return write(insert_then_die, what)

            self._write = dying_write
        return original(self, experiment, records)

    Store.put_many = put_many


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("out")
    s.add_argument("--max-members", type=int, default=1)
    t = sub.add_parser("train")
    t.add_argument("checkpoint")
    args = p.parse_args(argv)

    if args.cmd == "sweep":
        from gradreg.sweep.runner import InProcessExecutor, run_experiment

        if os.environ.get(KILL_IN_PUT_ENV):
            _die_inside_the_nth_put(int(os.environ[KILL_IN_PUT_ENV]))
        run_experiment(small_sin_experiment(), Path(args.out), InProcessExecutor(max_members=args.max_members))
    else:
        from gradreg.train import train

        train(long_sin_config(), checkpoint=args.checkpoint, resume=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

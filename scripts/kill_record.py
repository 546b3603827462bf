"""Kill a sweep at random points, again and again, and show that nothing is lost.

A SIN sweep shaped like Table 7 (8 lambdas x 2 seeds = 16 runs, 4000 steps each, in 2 chunks:
NoGR and SpectReg) runs with a short checkpoint interval. The script starts it, waits a random
time, stops it with SIGINT or SIGKILL (alternating), and reruns the same command until the
sweep finishes. Then it compares every run (metrics and learning curves) with an
uninterrupted sweep of the same configs, and checks for each kill how much training it lost:
the steps done before the kill that the next start had to redo, which must be at most one
checkpoint interval's worth.

    python scripts/kill_record.py OUT_DIR [--kills 12] [--seed 0]

It writes OUT_DIR/kill_record.md and exits 1 if any run differs or any kill lost more.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

STEPS = 4000
CHECKPOINT_SECONDS = 1.0
DRIVER = r"""
import sys, time, threading, signal, json
from pathlib import Path
import torch
torch.set_num_threads(1)
from gradreg.paper.experiments import build, Cell
from gradreg.sweep.runner import InProcessExecutor, run_experiment
import gradreg.ensemble.loop as loop
import dataclasses
out = Path(sys.argv[1]); steps = int(sys.argv[2]); ck = float(sys.argv[3])
exp = build("table7", "quick")
lams = (0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1)
short = lambda cfg: cfg.replace(steps=steps, eval_every=steps // 3)
cells = tuple(Cell(c.row, c.col, tuple((lam, short(cfg)) for lam, cfg in c.candidates), c.x)
              for c in exp.cells if c.x in lams)
exp = dataclasses.replace(exp, name="kill_record", cells=cells, seeds=(1, 2))
# progress log: (wall clock, part, step) every 50 steps, for the loss accounting
log = open(out / "steps.log", "a")
orig = loop.train_model  # on CPU every run of a chunk trains through train_model
def traced(cfg, *, run=None, **kw):
    key = loop.part_key([cfg], "single", torch.float32)
    inner = run.on_step if run is not None else None
    def on(done):  # done: the run's absolute step, resumed steps included
        if inner is not None:
            inner(done)
        if done % 10 == 0:
            log.write(json.dumps({"t": time.time(), "part": key, "step": done}) + "\n"); log.flush()
    if run is not None:
        run.on_step = on
    out = orig(cfg, run=run, **kw)
    log.write(json.dumps({"t": time.time(), "part": key, "step": cfg.steps, "finished": True}) + "\n"); log.flush()
    return out
loop.train_model = traced
stop = threading.Event()
def handler(s, f):
    stop.set()
signal.signal(signal.SIGINT, handler)
ex = InProcessExecutor(progress=False, checkpoint_dir=out / "checkpoints", checkpoint_seconds=ck, stop=stop)
summary = run_experiment(exp, out, ex, log=lambda *_: None, records_dir=out / "records", export_every_s=0.0)
sys.exit(130 if summary.interrupted else 0)
"""


def run_driver(out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(out), str(STEPS), str(CHECKPOINT_SECONDS)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def records(out: Path) -> dict:
    path = out / "records" / "runs.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["run_key"]: (r["metrics"], r["curve"]) for r in rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    ref_dir, kill_dir = args.out / "uninterrupted", args.out / "killed"
    for d in (ref_dir, kill_dir):
        d.mkdir(parents=True, exist_ok=False)
    t0 = time.time()
    p = run_driver(ref_dir, env)
    _, err = p.communicate()
    assert p.returncode == 0, err
    full = time.time() - t0
    lines = [
        "# Kill record",
        "",
        f"Sweep: 16 SIN runs x {STEPS} steps in 2 chunks; checkpoint every {CHECKPOINT_SECONDS:g} s; "
        f"uninterrupted: {full:.1f} s.",
        "",
        "| # | signal | after (s) | exit | runs stored | checkpoints on disk | lost steps, worst part |",
        "|---|---|---|---|---|---|---|",
    ]
    bad: list[str] = []
    for n in range(1, args.kills + 1):
        row = kill_once(n, kill_dir, env, rng, bad)
        if row is None:
            break
        lines.append(row)
    else:
        lines.append(final_run(args.kills + 1, kill_dir, env, bad))
    ref, got = records(ref_dir), records(kill_dir)
    same = ref.keys() == got.keys() and all(ref[k] == got[k] for k in ref)
    lines += [
        "",
        f"Runs: {len(got)} of {len(ref)}; metrics and learning curves bitwise equal to the uninterrupted "
        f"sweep's: **{'yes' if same else 'NO'}**.",
    ]
    if not same:
        bad.append("the final results differ from the uninterrupted sweep's")
    lines += [
        "",
        "Redone steps: steps a part had done past its last checkpoint when it was killed (SIGINT saves a "
        "checkpoint at the kill, so it redoes none); each must be at most one checkpoint interval's steps.",
    ]
    lines += [""] + ([f"PROBLEMS: {b}" for b in bad] or ["No problems."])
    (args.out / "kill_record.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if bad else 0


def logged_lines(out: Path) -> int:
    """The progress lines the driver has logged under `out` (one per 10 steps of a part)."""
    log = out / "steps.log"
    return log.read_text().count("\n") if log.exists() else 0


def kill_once(n: int, kill_dir: Path, env: dict, rng: random.Random, bad: list[str]) -> str | None:
    """Start the sweep, stop it after a random stretch of training, and check what the stop lost.

    Kill `n` sends SIGINT when `n` is odd and SIGKILL when it is even. A problem is appended to
    `bad`. Returns the kill's table row, or None where the sweep finished before the kill.
    """
    before = logged_lines(kill_dir)
    p = run_driver(kill_dir, env)
    sig = signal.SIGINT if n % 2 else signal.SIGKILL
    target = rng.randint(10, 110)  # kill after this many new progress lines (10 steps each) of training
    t0 = time.time()
    while logged_lines(kill_dir) < before + target and p.poll() is None:
        time.sleep(0.02)
    if p.poll() is not None:
        p.communicate()
        bad.append(f"kill {n}: the sweep finished before the kill (exit {p.returncode}); use more steps")
        return None
    p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        bad.append(f"kill {n}: the process did not stop within 60 s of {sig.name}")
    expected = 130 if sig == signal.SIGINT else -signal.SIGKILL
    if p.returncode != expected:
        bad.append(f"kill {n}: exit {p.returncode}, expected {expected}: {err.strip()[-300:]}")
    ckpts = sorted((kill_dir / "checkpoints").glob("run-*.pt")) if (kill_dir / "checkpoints").exists() else []
    lost, allowed = lost_steps(kill_dir, before)
    if lost > allowed:
        bad.append(f"kill {n}: lost {lost} steps, more than one checkpoint interval ({allowed} steps)")
    return (
        f"| {n} | {sig.name} | {time.time() - t0:.1f} | {p.returncode} | {len(records(kill_dir))} "
        f"| {len(ckpts)} | {lost} (interval: {allowed}) |"
    )


def final_run(n: int, kill_dir: Path, env: dict, bad: list[str]) -> str:
    """The last start, left to finish the sweep; a nonzero exit is appended to `bad`. Returns its table row."""
    p = run_driver(kill_dir, env)
    _, err = p.communicate()
    if p.returncode != 0:
        bad.append(f"final run exited {p.returncode}: {err[-300:]}")
    return f"| {n} | none (final run) | – | {p.returncode} | {len(records(kill_dir))} | – | – |"


def lost_steps(out: Path, skip: int) -> tuple[int, int]:
    """Training lost by the last kill, per part: the last step the killed process logged (to
    10 steps) minus the step its checkpoint holds now (0 for a part that finished). Returns
    the worst part's loss and the steps one checkpoint interval holds at the logged rate (+10)."""
    import torch

    log = out / "steps.log"
    rows = [json.loads(x) for x in log.read_text().splitlines()[skip:] if x.strip()] if log.exists() else []
    worst, allowed = 0, 10
    per_part: dict = {}
    for r in rows:
        per_part.setdefault(r["part"], []).append(r)
    for part, rs in per_part.items():
        if len(rs) > 1 and rs[-1]["t"] > rs[0]["t"]:
            rate = (rs[-1]["step"] - rs[0]["step"]) / (rs[-1]["t"] - rs[0]["t"])
            allowed = max(allowed, int(rate * CHECKPOINT_SECONDS) + 20)
        if rs[-1].get("finished"):
            continue
        ck = out / "checkpoints" / f"run-{part}.pt"
        resume = torch.load(ck, weights_only=False)["step"] if ck.exists() else 0
        worst = max(worst, rs[-1]["step"] + 10 - resume)
    return worst, allowed


if __name__ == "__main__":
    sys.exit(main())

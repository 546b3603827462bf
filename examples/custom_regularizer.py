"""A regularizer of your own: subclass ``gr.Regularizer``, register it, train it alone and in an ensemble.

    python examples/custom_regularizer.py             # the paper's SIN task, 2000 steps per run
    python examples/custom_regularizer.py --dry-run   # 5 steps, a few seconds

The contract (the ``gradreg.regularizers`` docstring) is two methods:

- ``per_example(fwd, draw)``: the unweighted penalty of every example, shape
  ``fwd.batch_shape`` -- ``(B,)`` for one run, ``(K, B)`` for an ensemble of K members, so
  it is written over the trailing axes;
- ``draw(batch, m, generator, device, dtype)``, only if it is random: this batch's draws
  for one run, batch axis first. The ensemble engine calls it once per member with that
  member's generator, so a member draws exactly what it would draw alone.

``@gr.register`` adds the class to ``gr.REGISTRY`` under its class name, and configs then
record it by that name (an unregistered class: by its import path ``"module:ClassName"``).
In-process ``train_many`` only needs the class defined; a process that rebuilds it from a
stored config (a Ray worker, reading runs back) must import the module that defines it first,
so put a regularizer you keep in an importable module, not in ``__main__`` as here.

The ensemble runs follow the paper's SIN schedule (``paper_config``: lr x0.1 at 50% and 75%);
the plain loop keeps the learning rate constant, so the two do not give the same numbers.
The last line printed is ``done: ...``.
"""

import argparse
import time
from dataclasses import dataclass

import torch

import gradreg as gr
from gradreg import penalties as P
from gradreg.config import paper_config
from gradreg.data import make_sin
from gradreg.ensemble.loop import train_many
from gradreg.networks import mlp_sin

# Hyperparameters: the paper's SIN settings (gradreg.config.PAPER["sin"]), fewer steps.
STEPS = 2000  # optimizer steps per run (the paper: 10,000)
BATCH = 50  # examples per step
LR = 0.01  # Adam
WEIGHT = 0.01  # lambda of the new regularizer


@gr.register
@dataclass(frozen=True)
class Rademacher(gr.Regularizer):
    """``mean_i ||J_i^T r_i||_2^2`` with ``r_i`` uniform on ``{-1, +1}^m``, one per example.

    ``E[r r^T] = I``, so like SpectReg it is an unbiased estimator of FrobReg (Hutchinson's
    trick with Rademacher vectors, which have the smallest variance of such estimators). For
    one output (SIN, m = 1) it is ``||J_i||^2`` exactly.
    """

    def draw(self, batch, m, generator, device, dtype):
        bits = torch.randint(0, 2, (batch, m), generator=generator, device=device)
        return bits.to(dtype) * 2 - 1

    def per_example(self, fwd, draw=None):
        return P.projected_jacobian(fwd.logits, fwd.x, draw)  # (*batch, m) draws -> (*batch,)


def train_alone(steps, seed):
    """A plain training loop: the new regularizer through gr.regularized_loss."""
    torch.manual_seed(seed)
    data = make_sin()
    model = mlp_sin()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    draws, batches = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        idx = torch.randint(0, len(data.x_train), (BATCH,), generator=batches)
        loss, terms = gr.regularized_loss(
            model, data.x_train[idx], data.y_train[idx], [Rademacher(WEIGHT)], loss="half_sse", generator=draws
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = float((model(data.x_test) - data.y_test).pow(2).mean())
    print(f"alone: seed {seed}, {steps} steps: Rademacher {float(terms['Rademacher']):.4g}, test MSE {mse:.5f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="5 steps per run")
    p.add_argument("--steps", type=int, default=STEPS)
    args = p.parse_args()
    steps = 5 if args.dry_run else args.steps
    t0 = time.time()
    assert gr.REGISTRY["Rademacher"] is Rademacher

    train_alone(steps, seed=1)

    # The same regularizer in the ensemble engine: two seeds trained together.
    configs = [
        paper_config("sin", seed=s, steps=steps, eval_every=0, regularizers=(Rademacher(WEIGHT),)) for s in (1, 2)
    ]
    for result in train_many(configs):
        print("ensemble:", result.summary())
    print(f"done: {len(configs)} ensemble members and one single run in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()

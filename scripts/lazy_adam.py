"""Why lazy DataGrad (every=k, weight k*lambda) trains worse than exact on MNIST (fastgr).

Two explanations, which these short runs tell apart:
- Adam's second moment. Adam divides each coordinate's step by sqrt(v), the running mean of
  the squared gradient. A penalty gradient of k*lambda*g on one step in k adds k*lambda^2*g^2
  to v on average, where lambda*g every step adds lambda^2*g^2; the first moment averages the
  spikes back to lambda*g. So wherever the penalty is a large part of v, every step is up to
  sqrt(k) smaller: lazy trains as if with a smaller learning rate. Plain SGD has no sqrt(v),
  so under SGD lazy would track exact.
- The size of the lazy step. k*lambda every k-th step matches lambda every step only while
  one step at weight k*lambda stays in the linear regime of the penalty. If DataGrad at the
  paper's lambda=50 is too strong for that, one step at k*lambda = 200 does more than four
  steps at 50. Then SGD, with no normalization to limit that step, would suffer more than Adam,
  and a weak penalty (small lambda) or a small k would bring lazy back to exact.

The runs: the paper's MNIST-2000 LeNet with dropout and L2 5e-4, DataGrad, exact against
lazy, the same seeds, under the paper's Adam (1e-3) and/or Nesterov SGD (momentum 0.9), the
steps shortened and the paper's lr schedule scaled to them. Prints, per optimizer and method,
the means over seeds of the training loss (last 100 steps), test accuracy, squared weight norm,
||J||_F at test points, and, for Adam, the root mean square over every parameter coordinate
of sqrt(v) at the end. The outputs committed in results/lazy/ start with their command.

    GRADREG_DATA_DIR=... python scripts/lazy_adam.py [--steps 2000] [--seeds 1 2 3]
        [--optimizers adam sgd_nesterov] [--sgd-lr 0.01] [--lam 50] [--every 4]
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import gradreg as gr
from gradreg.config import paper_config
from gradreg.train import train

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--steps", type=int, default=2000)
p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
p.add_argument("--sgd-lr", type=float, default=0.01)
p.add_argument("--lam", type=float, default=50.0)
p.add_argument("--every", type=int, default=4)
p.add_argument("--optimizers", nargs="+", default=["adam", "sgd_nesterov"], choices=["adam", "sgd_nesterov"])
args = p.parse_args()
print("$ python scripts/lazy_adam.py " + " ".join(sys.argv[1:]), flush=True)


def rms_sqrt_v(optimizer_state: dict) -> float:
    """sqrt(mean over every coordinate of v): the scale Adam divides the first moment by."""
    vs = [s["exp_avg_sq"].flatten() for s in optimizer_state["state"].values()]
    return float(torch.cat(vs).mean().sqrt())


rows = []
with tempfile.TemporaryDirectory() as tmp:
    for opt in args.optimizers:
        lr = 1e-3 if opt == "adam" else args.sgd_lr
        for method, reg in (
            ("exact", gr.DataGrad(args.lam)),
            (f"lazy k={args.every}", gr.DataGrad(args.lam, every=args.every)),
        ):
            out = []
            for seed in args.seeds:
                ckpt = Path(tmp) / f"{opt}-{seed}-{reg.every}.pt"
                cfg = paper_config(
                    "mnist",
                    steps=args.steps,
                    eval_every=0,
                    seed=seed,
                    optimizer=opt,
                    lr=lr,
                    regularizers=(reg,),
                    checkpoint_every=args.steps,
                )
                r = train(cfg, checkpoint=ckpt)
                state = torch.load(ckpt, weights_only=False)["optimizer"]
                v = rms_sqrt_v(state) if opt == "adam" else float("nan")
                out.append((r.train_loss, r.test, r.weight_norm_sq, r.grad_norms["test"], v))
                print(
                    f"{opt} {method} seed {seed}: train loss {r.train_loss:.4f} test {r.test:.4f} "
                    f"|w|^2 {r.weight_norm_sq:.1f} ||J|| {r.grad_norms['test']:.3f} rms sqrt(v) {v:.3g}",
                    flush=True,
                )
            rows.append((opt, method, [statistics.mean(c) for c in zip(*out)]))

print(f"\nMNIST-2000 LeNet+dropout, DataGrad lambda={args.lam:g}, {args.steps} steps, seeds {args.seeds}; means:")
print("| optimizer | method | train loss | test acc | ‖w‖² | ‖J‖_F test | rms √v (Adam) |")
print("|---|---|---|---|---|---|---|")
for opt, method, m in rows:
    print(f"| {opt} | {method} | {m[0]:.4f} | {100 * m[1]:.2f} | {m[2]:.1f} | {m[3]:.3f} | {m[4]:.3g} |")

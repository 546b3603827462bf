"""MNIST quickstart: the paper's LeNet-5 trained with DataGrad through ``gr.regularized_loss``.

    python examples/mnist_quickstart.py --data-dir ~/data   # the paper's N=2000 run (10k steps)
    python examples/mnist_quickstart.py --dry-run           # random tensors, a few seconds on CPU

``regularized_loss`` runs the forward pass itself on a copy of x that requires grad, so there is
no ``requires_grad`` to forget. The last line printed is ``done: test accuracy ...``.
"""

import argparse
import time

import torch

import gradreg as gr
from gradreg.data import BatchSampler, load_mnist_splits
from gradreg.networks import decayed_parameters, lenet5

# Hyperparameters: the paper's MNIST settings (gradreg.config.PAPER["mnist"]).
TRAIN_SIZE = 2000  # training images, drawn by seed from train[0:50000]
STEPS = 10_000  # optimizer steps
BATCH = 50  # examples per step
LR = 1e-3  # Adam; x0.1 at 50% and 75% of the steps
WEIGHT_DECAY = 5e-4  # wd * 1/2 ||w||^2 over conv/dense weights, in the loss
DATAGRAD = 50.0  # lambda: the published DataGrad weight at N=2000
DROPOUT = 0.5  # on the 84 hidden units


def data(args):
    if args.dry_run:  # shaped like MNIST, no dataset needed
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(64, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (64,), generator=g)
        return x, y, x[:32], y[:32]
    s = load_mnist_splits(TRAIN_SIZE, args.seed, args.data_dir)
    return s.x_train, s.y_train, s.x_test, s.y_test


@torch.no_grad()
def accuracy(model, x, y, batch=1000):
    model.eval()
    hits = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    model.train()
    return hits / len(x)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="random data, 3 steps of batch 16")
    p.add_argument("--data-dir", default=None, help="a directory holding mnist/ (the gradreg data layout)")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    steps, batch = (3, 16) if args.dry_run else (args.steps, BATCH)

    torch.manual_seed(args.seed)  # init and dropout masks
    x_train, y_train, x_test, y_test = data(args)
    model = lenet5(dropout=DROPOUT)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [steps // 2, 3 * steps // 4], gamma=0.1)
    batches = BatchSampler(len(x_train), batch, torch.Generator().manual_seed(args.seed))
    regs = [gr.DataGrad(DATAGRAD)]
    t0 = time.time()
    for step in range(steps):
        idx = next(batches)
        loss, terms = gr.regularized_loss(model, x_train[idx], y_train[idx], regs)
        loss = loss + WEIGHT_DECAY * 0.5 * sum(w.pow(2).sum() for w in decayed_parameters(model))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            print(f"step {step}: loss {float(terms['loss']):.4f}  DataGrad {float(terms['DataGrad']):.4g}")
    acc = accuracy(model, x_test, y_test)
    print(f"done: test accuracy {100 * acc:.2f}% after {steps} steps in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()

"""CIFAR-10: the paper's ResNet with SpectReg through ``gr.regularize`` on a forward pass you run.

    python examples/cifar_resnet_spectreg.py --data-dir ~/data   # Table 3's N=2000 run (50k steps)
    python examples/cifar_resnet_spectreg.py --dry-run           # a narrow ResNet on random tensors

The pattern for any training loop: make x require grad *before* the forward pass, run the model
as usual, hand the logits and x to ``gr.regularize``. SpectReg draws its projection r from
``generator`` (on the logits' device and dtype), so a seeded run is reproducible.

BatchNorm: in training mode it couples the examples of a batch, so ``J^T r`` is the input
gradient of the *batch sum* ``sum_i <z_i, r>``, with cross-example terms through the batch
statistics -- the convention of the paper's published numbers. The last line printed is
``done: test accuracy ...``.
"""

import argparse
import time

import torch

import gradreg as gr
from gradreg.data import BatchSampler, load_cifar10_splits
from gradreg.networks import decayed_parameters, resnet_cifar

# Hyperparameters: the paper's CIFAR-10 settings (gradreg.config.PAPER["cifar10"]).
TRAIN_SIZE = 2000  # training images, drawn by seed from train[0:45000]
STEPS = 50_000  # optimizer steps
BATCH = 128  # examples per step
LR = 0.01  # SGD, Nesterov momentum 0.9; x0.1 at 50% and 75% of the steps
WEIGHT_DECAY = 0.003  # wd * 1/2 ||w||^2 over conv/dense weights, in the loss
SPECTREG = 0.003  # lambda: the published SpectReg weight for CIFAR-10 at N=2000


def data(args):
    if args.dry_run:  # shaped like CIFAR-10, no dataset needed
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(32, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (32,), generator=g)
        return x, y, x[:16], y[:16]
    s = load_cifar10_splits(TRAIN_SIZE, args.seed, args.data_dir)
    return s.x_train, s.y_train, s.x_test, s.y_test


@torch.no_grad()
def accuracy(model, x, y, batch=500):
    # The original always normalised with batch statistics (bn_batch_stats_at_eval=True below),
    # so evaluation in eval mode still uses each evaluation batch's statistics.
    model.eval()
    hits = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    model.train()
    return hits / len(x)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="random data, a narrow ResNet, 3 steps of batch 8")
    p.add_argument("--data-dir", default=None, help="a directory holding cifar10/cifar-10-batches-bin/")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    steps, batch = (3, 8) if args.dry_run else (args.steps, BATCH)
    arch = dict(widths=(8, 16, 32), blocks=1) if args.dry_run else {}

    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = data(args)
    model = resnet_cifar(**arch, bn_batch_stats_at_eval=True)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [steps // 2, 3 * steps // 4], gamma=0.1)
    batches = BatchSampler(len(x_train), batch, torch.Generator().manual_seed(args.seed))
    projections = torch.Generator().manual_seed(args.seed + 1)  # SpectReg's r, one per step
    regs = [gr.SpectReg(SPECTREG)]
    t0 = time.time()
    for step in range(steps):
        idx = next(batches)
        x = x_train[idx].requires_grad_()  # before the forward pass
        logits = model(x)  # your forward pass, as it is
        loss, terms = gr.regularize(logits, y_train[idx], x, regs, generator=projections)
        loss = loss + WEIGHT_DECAY * 0.5 * sum(w.pow(2).sum() for w in decayed_parameters(model))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            print(f"step {step}: loss {float(terms['loss']):.4f}  SpectReg {float(terms['SpectReg']):.4g}")
    acc = accuracy(model, x_test, y_test)
    print(f"done: test accuracy {100 * acc:.2f}% after {steps} steps in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()

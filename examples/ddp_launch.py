"""Data-parallel training with gradreg: DistributedDataParallel, gloo on CPU (nccl on GPUs).

Launch, one process per rank:

    torchrun --nproc_per_node=2 examples/ddp_launch.py --dry-run
    torchrun --nproc_per_node=2 examples/ddp_launch.py --data-dir ~/data      # MNIST, LeNet
    torchrun --nproc_per_node=2 --master_addr 127.0.0.1 --master_port 29511 examples/ddp_launch.py --dry-run

(``torchrun`` is ``python -m torch.distributed.run``.) Run with plain ``python``, the script
spawns the ranks itself (``--nproc``, default 2) on 127.0.0.1.

What DDP changes for the penalties, and what it does not:

- Each rank runs ``gr.regularized_loss`` on its shard of the global batch: the loss is the
  *mean over the shard*. DDP averages the ranks' gradients, which is the gradient of the
  full-batch mean when the shards are equal -- exactly a single process on the whole batch
  (tests/test_dropin.py checks it to 1e-10 in float64).
- The inner input gradient is taken per rank (``autograd.grad`` w.r.t. the input, which DDP
  does not see); only the final ``loss.backward()`` all-reduces.
- Random projections: each rank draws from its own generator, seeded by (seed, rank), so the
  ranks' r are independent (``projection="example"``: like one process drawing per example;
  ``"batch"``: each shard gets its own r -- seed every rank alike to share one r).
- Teardown: ``torch._dynamo`` is imported before ``init_process_group``, and the DDP wrapper is
  gone (``train`` has returned) before ``destroy_process_group``; otherwise gloo's threads can
  outlive the group and abort a rank at exit (torch 2.13; docs/dropin.md, DDP, "Teardown").
- BatchNorm (not in this LeNet): in training mode it couples the examples of each rank's
  shard; ``nn.SyncBatchNorm.convert_sync_batchnorm(model)`` couples the whole global batch
  instead. Either way the penalties use gradients of batch sums (docs/dropin.md).

The last line printed (by rank 0) is ``done: world size 2 ...``.
"""

import argparse
import os
import socket
import time

import torch
import torch._dynamo  # noqa: F401 -- before init_process_group; see "Teardown" above
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

import gradreg as gr
from gradreg.data import BatchSampler, load_mnist_splits
from gradreg.networks import decayed_parameters, lenet5

# Hyperparameters: the paper's MNIST settings, the global batch split over the ranks.
TRAIN_SIZE = 2000  # training images
STEPS = 10_000  # optimizer steps
GLOBAL_BATCH = 50  # examples per step, all ranks together
LR = 1e-3  # Adam; x0.1 at 50% and 75% of the steps
WEIGHT_DECAY = 5e-4  # wd * 1/2 ||w||^2 over conv/dense weights
DATAGRAD = 50.0  # lambda of DataGrad
SPECTREG = 0.03  # lambda of SpectReg, one r per example


def data(args):
    if args.dry_run:  # the same random tensors on every rank
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(64, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (64,), generator=g)
        return x, y, x[:32], y[:32]
    s = load_mnist_splits(TRAIN_SIZE, args.seed, args.data_dir, progress=False)
    return s.x_train, s.y_train, s.x_test, s.y_test


def train(args):
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if args.backend == "nccl" else "cpu")
    steps, global_batch = (3, 16) if args.dry_run else (args.steps, GLOBAL_BATCH)
    if global_batch % world:
        raise SystemExit(f"the global batch {global_batch} must split evenly over {world} ranks")

    torch.manual_seed(args.seed)  # the same init everywhere (DDP also broadcasts rank 0's)
    x_train, y_train, x_test, y_test = (t.to(device) for t in data(args))
    model = DDP(lenet5(dropout=0.5).to(device), device_ids=[device.index] if device.type == "cuda" else None)
    torch.manual_seed(args.seed * 1000 + rank)  # this rank's dropout masks
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [steps // 2, 3 * steps // 4], gamma=0.1)
    # The same global batches on every rank (same seed); each rank takes its slice.
    batches = BatchSampler(len(x_train), global_batch, torch.Generator(device=device).manual_seed(args.seed))
    projections = torch.Generator(device=device).manual_seed(args.seed * 1000 + rank)
    regs = [gr.DataGrad(DATAGRAD), gr.SpectReg(SPECTREG, projection="example")]
    t0 = time.time()
    for step in range(steps):
        idx = next(batches).chunk(world)[rank]
        loss, terms = gr.regularized_loss(model, x_train[idx], y_train[idx], regs, generator=projections)
        loss = loss + WEIGHT_DECAY * 0.5 * sum(w.pow(2).sum() for w in decayed_parameters(model.module))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # all-reduce: the mean of the ranks' gradients
        opt.step()
        sched.step()
        if rank == 0 and (step % max(1, steps // 10) == 0 or step == steps - 1):
            print(
                f"step {step}: rank 0 loss {float(terms['loss']):.4f}  DataGrad {float(terms['DataGrad']):.4g}  "
                f"SpectReg {float(terms['SpectReg']):.4g}",
                flush=True,
            )
    if rank == 0:
        model.module.eval()
        with torch.no_grad():
            acc = float((model.module(x_test).argmax(1) == y_test).float().mean())
        print(
            f"done: world size {world}, test accuracy {100 * acc:.2f}% after {steps} steps in {time.time() - t0:.1f}s",
            flush=True,
        )


def worker(rank, world, port, args):
    """One rank when the script spawns them itself (not under torchrun)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun sets it to 1; share the cores out likewise
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    run(args)


def run(args):
    dist.init_process_group(args.backend)  # env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    try:
        train(args)
    finally:
        dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="random data, 3 steps of global batch 16")
    p.add_argument("--data-dir", default=None, help="a directory holding mnist/")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backend", default="gloo", choices=("gloo", "nccl"), help="nccl: one GPU per rank")
    p.add_argument("--nproc", type=int, default=2, help="ranks to spawn when not launched by torchrun")
    args = p.parse_args()
    if "RANK" in os.environ:  # launched by torchrun
        run(args)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(args.nproc, port, args), nprocs=args.nproc, join=True)


if __name__ == "__main__":
    main()

"""What holds for packed members: the GPU's path, also run on CPU with strategy="packed".

On a CPU a sweep trains each run as its own module, bitwise the run alone (test_engine.py).
On a GPU runs of one shape are packed into one module, whose kernels sum in another order:
a member then equals the run alone to float rounding, not bitwise. This file states that
tolerance and checks it after 20 steps, before rounding differences have grown through
training (over thousands of steps they grow to the size of seed-to-seed noise)."""

import pytest
import torch

import gradreg as gr
from conftest import DATA, HAVE_MNIST
from gradreg.config import paper_config
from gradreg.ensemble.loop import train_many
from gradreg.train import train

PACKED_RTOL = 1e-3  # a packed member against the same run alone, after 20 steps (docs/experiments.md)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def _configs(device: str, data: bool) -> list:
    cfgs = [
        paper_config("sin", device=device, steps=20, eval_every=20, seed=s, regularizers=(gr.SpectReg(lam),))
        for s, lam in ((1, 0.01), (2, 0.03), (3, 0.003))
    ]
    if data:
        cfgs += [
            paper_config("mnist", device=device, steps=20, eval_every=20, seed=s, eval_limit=500, regularizers=regs)
            for s, regs in ((1, (gr.DataGrad(50.0),)), (2, (gr.DataGrad(10.0),)))
        ]
    return cfgs


@pytest.mark.parametrize("device", DEVICES)
def test_packed_members_equal_the_runs_alone_to_float_rounding(device):
    """SIN MLPs, and DataGrad LeNets where MNIST is present: every metric within PACKED_RTOL."""
    mnist_dir = DATA if HAVE_MNIST else None
    cfgs = _configs(device, data=HAVE_MNIST)
    packed = train_many(cfgs, strategy="packed", workers=1, data_dir=mnist_dir)
    assert all(r.ensemble_size > 1 for r in packed)  # they did train packed
    for cfg, member in zip(cfgs, packed):
        alone = train(cfg, data_dir=mnist_dir)
        for got, want in ((member.test, alone.test), (member.dev, alone.dev), (member.train_loss, alone.train_loss)):
            assert abs(got - want) <= PACKED_RTOL * abs(want), (cfg.dataset, cfg.seed, got, want)

"""Does BatchNorm's evaluation mode explain Table 1's BatchNorm row? A check, not a reproduction.

Trains the published Table 1 "LeNet Batchnorm / DataGrad" config (lambda 0.001) for 3000 steps
instead of 10000, for seeds 1 and 2, evaluated with running statistics (PyTorch's default) and
with the current batch's statistics (the original's behaviour, eval batches of 1000). Training
is identical between the two (same seed, same steps); only the evaluation differs.

    GRADREG_DATA_DIR=../shared/data python scripts/bn_eval_check.py

Measured (2 CPU cores, torch 2.13.0+cpu), test accuracy running / batch statistics:
seed 1: 96.44 / 96.35; seed 2: 96.61 / 96.62.
"""

import os

import torch

from gradreg import regularizers as R
from gradreg.config import paper_config
from gradreg.train import train

torch.set_num_threads(1)
for seed in (1, 2):
    accs = []
    for at_eval in (False, True):
        cfg = paper_config("mnist", device="cpu", regularizers=(R.DataGrad(0.001),)).replace(
            seed=seed, dropout=None, batchnorm=True, bn_batch_stats_at_eval=at_eval, steps=3000
        )
        accs.append(100 * train(cfg, data_dir=os.environ.get("GRADREG_DATA_DIR")).metrics["test"])
    print(f"seed {seed}: test accuracy {accs[0]:.2f} (running statistics) / {accs[1]:.2f} (batch statistics)")

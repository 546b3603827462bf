"""Member-indexed data on the device, through the one data path of :mod:`gradreg.datasets`.

Image datasets stay raw uint8 once; each member's images are standardized on the fly with
its own 256-entry table (:func:`gradreg.data.splits.standardization_table`, the one
:func:`gradreg.data.splits.split_and_standardize` uses), so a member sees bit-identical
inputs to a single run's float32 tensors at a fraction of the memory. SIN is shared float data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import datasets
from ..config import TrainConfig
from ..data import splits as S


@dataclass
class EnsembleData:
    pool_x: Tensor  # (N, *in), uint8 or float
    pool_y: Tensor
    train_idx: list  # per member: indices of its training subset into the pool (CPU, int64)
    luts: Tensor | None  # (K, 256) per-member standardization of training images
    sets: dict  # "dev"/"test" -> (x, y, luts or None)

    def inputs(self, raw: Tensor, luts: Tensor | None, dtype) -> Tensor:
        """(K, b, *in) raw values -> standardized floats of ``dtype``."""
        if luts is None:
            return raw.to(dtype)
        k = raw.shape[0]
        return luts.gather(1, raw.reshape(k, -1).long()).view(raw.shape).to(dtype)


def ensemble_data(cfgs: Sequence[TrainConfig], data_dir, device: torch.device, download=None) -> EnsembleData:
    c0 = cfgs[0]
    spec = datasets.DATASETS[c0.dataset]
    if spec.kind == "regression":
        assert spec.make is not None  # every regression spec has make
        s = spec.make(device)
        for c in cfgs:
            datasets.fixed_training_set(c, len(s.x_train))
        idx = [torch.arange(len(s.x_train)) for _ in cfgs]
        return EnsembleData(
            s.x_train, s.y_train, idx, None, {"dev": (s.x_dev, s.y_dev, None), "test": (s.x_test, s.y_test, None)}
        )

    raw = datasets.raw_images(c0.dataset, None if data_dir is None else str(data_dir), c0.dev_is_test, download)
    idx, luts, dev_luts, test_luts = [], [], [], []
    for c in cfgs:
        n = len(raw.pool_x) if c.train_size is None else c.train_size
        i = S.training_subset_indices(len(raw.pool_x), n, c.seed)
        x_train = raw.pool_x[i]
        mean, std = S.pixel_mean_std(x_train)
        idx.append(torch.from_numpy(i.astype(np.int64)))
        luts.append(S.standardization_table(mean, std))
        if c.per_set_standardization:
            dev_luts.append(S.standardization_table(*S.set_statistics(x_train, raw.dev_x, True)))
            test_luts.append(S.standardization_table(*S.set_statistics(x_train, raw.test_x, True)))
        else:
            dev_luts.append(luts[-1])
            test_luts.append(luts[-1])

    def t(a, dtype=None):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    def labels(a):
        return t(np.asarray(a, dtype=np.int64))

    return EnsembleData(
        t(raw.pool_x),
        labels(raw.pool_y),
        idx,
        t(np.stack(luts)),
        {
            "dev": (t(raw.dev_x), labels(raw.dev_y), t(np.stack(dev_luts))),
            "test": (t(raw.test_x), labels(raw.test_y), t(np.stack(test_luts))),
        },
    )

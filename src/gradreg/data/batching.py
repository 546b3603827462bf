"""Seeded, checkpointable mini-batch indices for datasets that live on the device.

The index stream is the concatenation of epoch permutations `torch.randperm(n, generator=g)`,
cut into consecutive batches of `batch_size`; a batch may straddle two epochs, so every batch
is full and every index appears exactly once per epoch (in the first `n` indices, the next
`n`, ...).

Generator use, exactly: one `torch.randperm(n, generator=generator, device=generator.device)`
call per epoch and nothing else, made lazily when a batch needs the next epoch's indices (the
first at the first `next()`). Share the generator with nothing else if the stream must be
reproducible from the seed alone.
"""

from __future__ import annotations

import torch


class BatchSampler:
    """Infinite iterator of int64 index tensors `(batch_size,)` on the generator's device.

    `state_dict()` captures the generator state, the current epoch's permutation and the
    position in it; `load_state_dict()` on a sampler built with the same `n` and `batch_size`
    resumes the identical stream.

    Args:
        n: The dataset's size.
        batch_size: Indices per batch.
        generator: The source of the permutations (see the module docstring).

    Raises:
        ValueError: `n < 1` or `batch_size < 1`.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        if n < 1 or batch_size < 1:
            raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        self.n = n
        self.batch_size = batch_size
        self.generator = generator
        self.epoch = 0  # number of permutations drawn so far
        self._permutation = torch.empty(0, dtype=torch.int64, device=generator.device)
        self._position = 0

    def __iter__(self) -> BatchSampler:
        return self

    def __next__(self) -> torch.Tensor:
        pieces, needed = [], self.batch_size
        while needed:
            if self._position == len(self._permutation):
                self._permutation = torch.randperm(self.n, generator=self.generator, device=self.generator.device)
                self._position = 0
                self.epoch += 1
            take = min(needed, len(self._permutation) - self._position)
            pieces.append(self._permutation[self._position : self._position + take])
            self._position += take
            needed -= take
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def state_dict(self) -> dict:
        """Everything needed to resume: generator state, permutation, position, epoch.

        Returns:
            A dict with `n`, `batch_size`, `epoch`, `position`, `permutation` and
            `generator_state`.
        """
        return {
            "n": self.n,
            "batch_size": self.batch_size,
            "epoch": self.epoch,
            "position": self._position,
            "permutation": self._permutation.clone(),
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict`; also sets the generator's state.

        Args:
            state: What `state_dict` returned.

        Raises:
            ValueError: `state` is for another `n` or `batch_size`.
        """
        if (state["n"], state["batch_size"]) != (self.n, self.batch_size):
            raise ValueError(
                f"state is for n={state['n']}, batch_size={state['batch_size']}; "
                f"this sampler has n={self.n}, batch_size={self.batch_size}"
            )
        self.generator.set_state(state["generator_state"])
        self._permutation = state["permutation"].to(self.generator.device)
        self._position = state["position"]
        self.epoch = state["epoch"]

"""Ensembles of any module through ``torch.func``: stacked parameters and buffers,
``functional_call`` under ``vmap``.

The general path for modules the packer (:mod:`gradreg.ensemble.pack`) does not know, the
PyTorch "model ensembling" recipe: member k's parameters and buffers are slice k of stacked
tensors with a leading member axis, the forward pass is ``vmap`` of ``functional_call`` over
that axis, and the penalties take input gradients of the stacked outputs outside ``vmap``, so
every regularizer runs exactly as it does in a single run. BatchNorm keeps per-member
statistics (its running buffers are stacked and updated in place).

Randomness: random layers (dropout) draw with ``vmap(randomness="different")`` from the
global RNG -- the same distribution as a single run, but not the same masks, so with random
layers a member's trajectory depends on its ensemble. Deterministic modules train exactly as
alone (tested); the packer keeps per-member dropout streams for the layers it knows.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from ..models import decayed_parameters

_RANDOM = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class FunctionalEnsemble(nn.Module):
    """K copies of one architecture as stacked tensors; ``forward`` maps ``(K, B, *in)`` to
    ``(K, B, *out)``."""

    base: nn.Module  # set with object.__setattr__ (not a submodule)
    records_kinks_inside = True  # finite differences freeze ReLU/max-pool inside vmap (forward)
    frozen_kinks = None  # the FrozenKinks of the pass in progress, set by it

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        models = list(models)
        if any(type(m) is not type(models[0]) for m in models):
            raise TypeError("all members of an ensemble must have the same architecture")
        self.k = len(models)
        params, buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        object.__setattr__(self, "base", base)  # not a submodule: its tensors live here, stacked
        self.names = list(params)
        self.buffer_names = list(buffers)
        self.stacked = nn.ParameterDict(
            {n.replace(".", "__"): nn.Parameter(p.detach().clone()) for n, p in params.items()}
        )
        for n, b in buffers.items():
            self.register_buffer("buf__" + n.replace(".", "__"), b.detach().clone())
        decayed = {id(p) for p in decayed_parameters(models[0])}
        self.decayed_names = [n for n, p in models[0].named_parameters() if id(p) in decayed]
        self.random = any(isinstance(m, _RANDOM) for m in models[0].modules())

    def stacked_params(self) -> dict:
        return {n: self.stacked[n.replace(".", "__")] for n in self.names}

    def stacked_buffers(self) -> dict:
        return {n: getattr(self, "buf__" + n.replace(".", "__")) for n in self.buffer_names}

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.train(mode)
        return self

    def forward(self, x: Tensor) -> Tensor:
        def one(params, buffers, xk):
            return functional_call(self.base, (params, buffers), (xk,))

        randomness = "different" if (self.random and self.training) else "error"
        args = (self.stacked_params(), self.stacked_buffers(), x)
        if self.frozen_kinks is not None:  # a finite-difference pass: see FrozenKinks.vmap
            return self.frozen_kinks.vmap(one, (0, 0, 0), randomness, *args)
        return torch.func.vmap(one, in_dims=(0, 0, 0), randomness=randomness)(*args)

    def decayed_parameters(self) -> list[Tensor]:
        return [self.stacked[n.replace(".", "__")] for n in self.decayed_names]

    def member_state_dict(self, k: int) -> dict:
        out = {n: p[k].detach() for n, p in self.stacked_params().items()}
        out.update({n: b[k].detach() for n, b in self.stacked_buffers().items()})
        return out

    def set_dropout_generators(self, generators) -> None:
        """Random layers here draw from the global RNG (see the module docstring)."""

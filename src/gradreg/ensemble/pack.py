"""Pack K models of one architecture into one module (grouped convolutions, batched matmuls).

Layout: member k's channels/features sit in block k of the channel axis, right after the
batch axis -- an activation is ``(B, K*C, H, W)`` or ``(B, K*F)``. Convolutions become one
conv with ``groups=K``; dense layers one batched matmul; BatchNorm over ``K*C`` channels
computes each member's statistics over its own batch only; ReLU and pooling act per
channel. So the members never interact: member k's outputs depend only on member k's inputs
and parameters, and the gradient of a sum of member losses w.r.t. member k's parameters is
the gradient of member k's own loss.

Every parameter has a leading member axis K (a conv weight is ``(K, O, I, kh, kw)``), so a
per-member optimizer is elementwise and member k's state is ``p[k]``.

Supported layers: Conv2d (and the ResNet's TF-'SAME' stride-2 conv), Linear, BatchNorm1d/2d,
ReLU, MaxPool2d, Flatten, Dropout (per-member masks from per-member generators), Sequential,
and the ResNet's BasicBlock and ResNetCifar. Anything else raises :class:`NotPackable`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import networks as N


class NotPackable(TypeError):
    """The architecture contains a layer the packer cannot batch faithfully."""


def _stack(params: Sequence[Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([p.detach().clone() for p in params]))


class PackedConv2d(nn.Module):
    def __init__(self, convs: Sequence[nn.Conv2d]):
        super().__init__()
        c = convs[0]
        if c.groups != 1 or c.padding_mode != "zeros":
            raise NotPackable("only ungrouped, zero-padded convolutions can be packed")
        self.k = len(convs)
        self.stride, self.padding, self.dilation, self.kernel_size = c.stride, c.padding, c.dilation, c.kernel_size
        self.tf_same = isinstance(c, N.Conv2dTFSame)
        self.weight = _stack([m.weight for m in convs])
        self.bias = _stack([cast(Tensor, m.bias) for m in convs]) if c.bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.flatten(0, 1)
        b = None if self.bias is None else self.bias.flatten()
        padding: str | tuple[int, ...] | int = self.padding
        if self.tf_same:
            x = F.pad(x, N.tf_same_padding(x.shape[-2:], self.kernel_size, self.stride, self.dilation))
            padding = 0
        return F.conv2d(x, w, b, self.stride, padding, self.dilation, groups=self.k)

    def member_state(self, k: int) -> dict:
        return {"weight": self.weight[k]} | ({} if self.bias is None else {"bias": self.bias[k]})


class PackedLinear(nn.Module):
    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__()
        self.k = len(linears)
        self.weight = _stack([m.weight for m in linears])  # (K, O, I)
        self.bias = _stack([m.bias for m in linears]) if linears[0].bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        xk = x.view(b, self.k, -1).transpose(0, 1)  # (K, B, I)
        wt = self.weight.transpose(1, 2)  # (K, I, O)
        out = torch.baddbmm(self.bias.unsqueeze(1), xk, wt) if self.bias is not None else torch.bmm(xk, wt)
        return out.transpose(0, 1).reshape(b, -1)

    def member_state(self, k: int) -> dict:
        return {"weight": self.weight[k]} | ({} if self.bias is None else {"bias": self.bias[k]})


class PackedBatchNorm(nn.Module):
    """K BatchNorms as one over K*C channels; each channel's statistics come from its own
    member's batch. Batch statistics in eval mode when the originals had no running stats."""

    running_mean: Tensor | None  # registered buffers when self.track, else None
    running_var: Tensor | None

    def __init__(self, bns: Sequence[nn.modules.batchnorm._BatchNorm]):
        super().__init__()
        bn = bns[0]
        self.k, self.eps, self.momentum = len(bns), bn.eps, bn.momentum
        self.track = bn.track_running_stats
        # cast: the paper's BatchNorms are affine (weight and bias set)
        self.weight = _stack([cast(Tensor, m.weight) for m in bns])
        self.bias = _stack([cast(Tensor, m.bias) for m in bns])
        if self.track:
            # cast: track_running_stats=True, so every member has its running buffers
            self.register_buffer("running_mean", torch.cat([cast(Tensor, m.running_mean) for m in bns]).clone())
            self.register_buffer("running_var", torch.cat([cast(Tensor, m.running_var) for m in bns]).clone())
        else:
            self.running_mean = self.running_var = None

    def forward(self, x: Tensor) -> Tensor:
        use_batch = self.training or not self.track
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight.flatten(),
            self.bias.flatten(),
            use_batch,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )

    def member_state(self, k: int) -> dict:
        c = self.weight.shape[1]
        out = {"weight": self.weight[k], "bias": self.bias[k]}
        if self.track:
            assert self.running_mean is not None and self.running_var is not None
            out |= {
                "running_mean": self.running_mean[k * c : (k + 1) * c],
                "running_var": self.running_var[k * c : (k + 1) * c],
            }
        return out


class PackedDropout(nn.Module):
    """Per-member dropout masks, member k's drawn from ``generators[k]`` exactly as
    ``torch.nn.functional.dropout`` draws from the global RNG on CPU
    (``bernoulli_(1 - p)``, divided by ``1 - p``), so a member's masks match a single run's."""

    def __init__(self, p: float, k: int):
        super().__init__()
        self.p, self.k = p, k
        self.generators: list[torch.Generator] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if self.generators is None:
            raise RuntimeError("PackedDropout needs one generator per member (set .generators)")
        b = x.shape[0]
        xk = x.view(b, self.k, -1)
        noise = torch.stack(
            [
                torch.empty(b, xk.shape[2], dtype=x.dtype, device=x.device).bernoulli_(1 - self.p, generator=g)
                for g in self.generators
            ],
            dim=1,
        )
        noise.div_(1 - self.p)
        return (xk * noise).view_as(x)

    def member_state(self, k: int) -> dict:
        return {}


class PackedBasicBlock(nn.Module):
    def __init__(self, blocks: Sequence[N.BasicBlock]):
        super().__init__()
        b = blocks[0]
        self.k, self.in_ch, self.out_ch, self.stride = len(blocks), b.in_ch, b.out_ch, b.stride
        self.conv1 = PackedConv2d([m.conv1 for m in blocks])
        self.bn1 = PackedBatchNorm([m.bn1 for m in blocks])
        self.conv2 = PackedConv2d([m.conv2 for m in blocks])
        self.bn2 = PackedBatchNorm([m.bn2 for m in blocks])

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        extra = self.out_ch - self.in_ch
        if not extra:
            return x
        b, _, h, w = x.shape
        x = F.pad(x.view(b, self.k, self.in_ch, h, w), (0, 0, 0, 0, 0, extra))  # zeros after each member's channels
        return x.view(b, self.k * self.out_ch, h, w)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PackedResNet(nn.Module):
    def __init__(self, nets: Sequence[N.ResNetCifar]):
        super().__init__()
        self.k = len(nets)
        self.stem_conv = PackedConv2d([n.stem_conv for n in nets])
        self.stem_bn = PackedBatchNorm([n.stem_bn for n in nets])
        self.stages = pack_module([n.stages for n in nets])
        self.fc = PackedLinear([n.fc for n in nets])

    def forward(self, x: Tensor) -> Tensor:
        out = self.stages(F.relu(self.stem_bn(self.stem_conv(x))))
        return self.fc(out.mean((2, 3)))


_STATELESS = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Identity, nn.Tanh)


def pack_module(mods: Sequence[nn.Module]) -> nn.Module:
    """The packed equivalent of K modules of one architecture (copies their parameters)."""
    m = mods[0]
    if any(type(x) is not type(m) for x in mods):
        raise NotPackable("all members must have the same architecture")
    if isinstance(m, nn.Sequential):
        names = [n for n, _ in m.named_children()]
        groups = zip(*[list(x.children()) for x in mods])
        return nn.Sequential(OrderedDict((n, pack_module(list(g))) for n, g in zip(names, groups)))
    if isinstance(m, nn.Conv2d):
        return PackedConv2d(cast("Sequence[nn.Conv2d]", mods))
    if isinstance(m, nn.Linear):
        return PackedLinear(cast("Sequence[nn.Linear]", mods))
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return PackedBatchNorm(cast("Sequence[nn.modules.batchnorm._BatchNorm]", mods))
    if isinstance(m, nn.Dropout):
        return PackedDropout(m.p, len(mods))
    if isinstance(m, N.BasicBlock):
        return PackedBasicBlock(cast("Sequence[N.BasicBlock]", mods))
    if isinstance(m, N.ResNetCifar):
        return PackedResNet(cast("Sequence[N.ResNetCifar]", mods))
    if isinstance(m, _STATELESS):
        return m
    raise NotPackable(f"cannot pack a {type(m).__name__}")


class PackedModel(nn.Module):
    """K models as one: ``forward`` maps member-major inputs ``(K, B, *in)`` to logits
    ``(K, B, m)``."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.k = len(models)
        self.net = pack_module(list(models))

    def forward(self, x: Tensor) -> Tensor:
        k, b = x.shape[:2]
        packed = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])
        out = self.net(packed)
        return out.view(b, k, -1).transpose(0, 1)

    def set_dropout_generators(self, generators: list[torch.Generator]) -> None:
        for mod in self.modules():
            if isinstance(mod, PackedDropout):
                mod.generators = generators

    def member_state_dict(self, k: int) -> dict:
        """Member k's parameters and buffers under the single model's names."""
        out = {}
        for name, mod in self.net.named_modules():
            if hasattr(mod, "member_state") and mod is not self.net:
                for key, value in mod.member_state(k).items():
                    out[f"{name}.{key}"] = value.detach()
        return out

    def decayed_parameters(self) -> list[nn.Parameter]:
        """Packed conv and dense weights (leading K axis): the weight-decay set."""
        return [m.weight for m in self.net.modules() if isinstance(m, (PackedConv2d, PackedLinear))]

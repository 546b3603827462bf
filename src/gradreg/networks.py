"""The paper's three networks: LeNet-5 (MNIST), a post-activation ResNet (CIFAR-10), an MLP (SIN).

They are general models, so they live in the library: the model registry (`gradreg.models`),
the engine and the benchmarks build them without importing `gradreg.paper`, which sits above
them. Defaults are the settings behind the
published numbers, read from the authors' TensorFlow code
(`danielvarga/improved_wgan_training`: `networks.py`, `tflib/ops/conv2d.py`,
`tflib/ops/batchnorm.py`), summarised in `docs/settings.md`.

Initialisation, shared by all builders (the `tflib` convention of the original):

* Conv kernels: U(-a, a) with std sqrt(4 / (fan_in + fan_out)), i.e. a = sqrt(3) * that std,
  where fan_in = in_channels * kh * kw and fan_out = out_channels * kh * kw / (stride_h * stride_w)
  (tflib `Conv2D(he_init=True)`; the stride division only matters for the ResNet's stride-2 convs).
* Dense weights: Glorot (Xavier) uniform, U(-b, b) with b = sqrt(6 / (fan_in + fan_out)).
* All biases zero; BatchNorm scale 1, offset 0, eps 1e-5.

Every builder takes an optional keyword-only `generator` (a CPU `torch.Generator`); without one
the global RNG is used, so `torch.manual_seed(s)` before the call fixes the init too. Models are
built on the CPU; move them with `.to(device)`.

Importing this module has no side effects.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicBlock",
    "Conv2dTFSame",
    "MODELS",
    "ResNetCifar",
    "build_model",
    "decayed_parameters",
    "lenet5",
    "mlp_sin",
    "resnet_cifar",
    "tf_same_padding",
]

_BN_EPS = 1e-5  # tflib Batchnorm's epsilon, also PyTorch's default

_ModuleT = TypeVar("_ModuleT", bound=nn.Module)


# ---------------------------------------------------------------------------------------------
# Initialisation


def _tf_he_uniform_(weight: torch.Tensor, stride: Sequence[int], generator=None) -> None:
    """U(-a, a) in place, std sqrt(4 / (fan_in + fan_out)); fan_out divided by the stride area."""
    out_ch, in_ch, kh, kw = weight.shape
    fan_in = in_ch * kh * kw
    fan_out = out_ch * kh * kw / (stride[0] * stride[1])
    bound = math.sqrt(3.0) * math.sqrt(4.0 / (fan_in + fan_out))
    nn.init.uniform_(weight, -bound, bound, generator=generator)


def _init_tflib_(model: _ModuleT, generator=None) -> _ModuleT:
    """Apply the module docstring's init to every conv, dense and BatchNorm layer of `model`."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            _tf_he_uniform_(m.weight, m.stride, generator)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight, generator=generator)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def decayed_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The tensors weight decay acts on: every conv kernel and dense weight matrix, in module order.

    Biases and BatchNorm scale/offset are excluded, as in the original. The paper's decay term is
    added to the loss as `wd * 0.5 * sum(w.pow(2).sum() for w in decayed_parameters(model))`
    (L2 in the loss, not AdamW-style decoupled decay).

    Args:
        model: The network.

    Returns:
        The `weight` of every `nn.Conv2d` and `nn.Linear`, in `model.modules()` order.
    """
    return [cast(nn.Parameter, m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _batchnorm(
    cls: type[nn.modules.batchnorm._BatchNorm], channels: int, batch_stats_at_eval: bool
) -> nn.modules.batchnorm._BatchNorm:
    # track_running_stats=False: batch statistics in train *and* eval mode, no running buffers.
    return cls(channels, eps=_BN_EPS, track_running_stats=not batch_stats_at_eval)


# ---------------------------------------------------------------------------------------------
# MNIST: LeNet-5


def lenet5(
    dropout: float | None = 0.5,
    batchnorm: bool = False,
    *,
    bn_batch_stats_at_eval: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """The authors' LeNet-5 for MNIST: input (B, 1, 28, 28), output logits (B, 10).

    Layers, in order (names are the `nn.Sequential` keys):

    ```text
    conv1 5x5 1->6 padding 2 ('same'), ReLU, 2x2 max-pool       -> (6, 14, 14)
    conv2 5x5 6->16 'valid', ReLU, 2x2 max-pool                 -> (16, 5, 5)
    conv3 5x5 16->120 'valid', ReLU, flatten                    -> (120,)
    fc1 120->84, ReLU
    `dropout` (nn.Dropout) or `bn` (BatchNorm1d(84)) or nothing
    fc2 84->10
    ```

    That is 61,706 parameters; `batchnorm=True` adds 168 (BN scale and offset).

    Args:
        dropout: Drop probability in [0, 1) (PyTorch convention; the TF original passed 0.5 as
            keep_prob, which is the same thing at 0.5), or None for no dropout layer.
        batchnorm: Put BatchNorm1d on the 84 units *instead of* dropout, as the original's BN
            variant did.
        bn_batch_stats_at_eval: The original's BN always normalised with the current batch's
            statistics, also at evaluation; True reproduces that (outputs then depend on the
            other batch members in eval mode too, and an eval batch of one is an error). False is
            PyTorch's running-statistics behaviour.
        generator: Optional CPU generator for the init (see the module docstring).

    Returns:
        The initialised model, on the CPU.

    Raises:
        ValueError: `dropout` is not None and not in [0, 1); or both are requested
            (`batchnorm=True` with `dropout` not None): pass `dropout=None, batchnorm=True`.
    """
    if dropout is not None and not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be None or in [0, 1), got {dropout!r}")
    if batchnorm and dropout is not None:
        raise ValueError(
            "the paper's LeNet uses BatchNorm *instead of* dropout: pass dropout=None together with batchnorm=True"
        )
    head: list[tuple[str, nn.Module]] = []
    if batchnorm:
        head.append(("bn", _batchnorm(nn.BatchNorm1d, 84, bn_batch_stats_at_eval)))
    elif dropout is not None:
        head.append(("dropout", nn.Dropout(p=float(dropout))))
    layers = [
        ("conv1", nn.Conv2d(1, 6, 5, padding=2)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(6, 16, 5)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(16, 120, 5)),
        ("relu3", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(120, 84)),
        ("relu4", nn.ReLU()),
        *head,
        ("fc2", nn.Linear(84, 10)),
    ]
    return _init_tflib_(nn.Sequential(OrderedDict(layers)), generator)


# ---------------------------------------------------------------------------------------------
# CIFAR-10: post-activation ResNet


class Conv2dTFSame(nn.Conv2d):
    """Conv2d with TensorFlow's padding='SAME': output size ceil(in / stride).

    The total padding max((out - 1) * stride + dilation * (k - 1) + 1 - in, 0) is split with the
    odd pixel at the bottom/right, as TF does. For a 3x3 stride-2 conv on an even-sized input
    that is 0 rows on top and 1 at the bottom, where PyTorch's padding=1 would pad 1 on each side
    (same output size, windows shifted by one pixel).
    """

    def __init__(self, *args, **kwargs) -> None:
        # cast: mypy cannot tell that *args stops before Conv2d's `padding` parameter
        cast("Callable[..., None]", super().__init__)(*args, padding=0, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of `x` padded as TensorFlow's 'SAME' pads it.

        Args:
            x: `(B, C, H, W)`.

        Returns:
            `(B, out_channels, ceil(H / stride), ceil(W / stride))`.
        """
        return super().forward(F.pad(x, tf_same_padding(x.shape[-2:], self.kernel_size, self.stride, self.dilation)))


def tf_same_padding(size_hw, kernel_size, stride, dilation) -> list[int]:
    """`F.pad` arguments (last dim first) for TensorFlow's 'SAME' padding of a 2-D conv.

    Args:
        size_hw (Sequence[int]): The input's `(H, W)`.
        kernel_size (Sequence[int]): The kernel's `(kh, kw)`.
        stride (Sequence[int]): The conv's stride.
        dilation (Sequence[int]): The conv's dilation.

    Returns:
        `[left, right, top, bottom]`, the odd pixel at the right/bottom.
    """
    pad: list[int] = []
    for size, k, s, d in reversed(list(zip(size_hw, kernel_size, stride, dilation))):
        total = max((math.ceil(size / s) - 1) * s + d * (k - 1) + 1 - size, 0)
        pad += [total // 2, total - total // 2]
    return pad


def _conv3x3(in_ch: int, out_ch: int, stride: int, bias: bool) -> nn.Conv2d:
    if stride == 1:
        return nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias)  # identical to TF 'SAME' here
    return Conv2dTFSame(in_ch, out_ch, 3, stride=stride, bias=bias)


class BasicBlock(nn.Module):
    """Post-activation basic block: `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.

    conv1 carries the stride. The shortcut is parameter-free, as in the original: avg-pool with
    kernel = stride = `stride` (when stride > 1), then `out_ch - in_ch` all-zero channels
    appended *after* the input channels (not split between both ends).

    Args:
        in_ch: Input channels.
        out_ch: Output channels, `>= in_ch`.
        stride: conv1's stride (default 1).
        conv_bias: Give the convs biases (default False; see `resnet_cifar`).
        bn_batch_stats_at_eval: BatchNorm with batch statistics also at evaluation (see
            `resnet_cifar`).

    Raises:
        ValueError: `out_ch < in_ch` (the zero-padding shortcut cannot drop channels).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        *,
        conv_bias: bool = False,
        bn_batch_stats_at_eval: bool = False,
    ) -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"zero-padding shortcut needs out_ch >= in_ch, got {in_ch}->{out_ch}")
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.conv1 = _conv3x3(in_ch, out_ch, stride, conv_bias)
        self.bn1 = _batchnorm(nn.BatchNorm2d, out_ch, bn_batch_stats_at_eval)
        self.conv2 = _conv3x3(out_ch, out_ch, 1, conv_bias)
        self.bn2 = _batchnorm(nn.BatchNorm2d, out_ch, bn_batch_stats_at_eval)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """The parameter-free shortcut: avg-pool by the stride, then zero channels appended.

        Args:
            x: `(B, in_ch, H, W)`.

        Returns:
            `(B, out_ch, H / stride, W / stride)`.
        """
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        extra = self.out_ch - self.in_ch
        return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`.

        Args:
            x: `(B, in_ch, H, W)`.

        Returns:
            `(B, out_ch, H / stride, W / stride)`.
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """Stem conv3x3-BN-ReLU, stages of `BasicBlock`s, global average pool, dense to logits.

    Stage i has width `widths[i]` and `blocks` blocks; the first block of every stage but the
    first has stride 2. See `resnet_cifar` for the paper's configuration.

    Args:
        widths: The width of each stage (default 48, 96, 192).
        blocks: Blocks per stage (default 3).
        bn_batch_stats_at_eval: BatchNorm with batch statistics also at evaluation (see
            `resnet_cifar`).
        num_classes: The number of logits (default 10).
        conv_bias: Give the convs biases (default False; see `resnet_cifar`).

    Raises:
        ValueError: `widths` is empty or `blocks < 1`; or a stage is narrower than the one
            before it (see `BasicBlock`).
    """

    def __init__(
        self,
        widths: Sequence[int] = (48, 96, 192),
        blocks: int = 3,
        bn_batch_stats_at_eval: bool = False,
        num_classes: int = 10,
        *,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or blocks < 1:
            raise ValueError(f"need at least one stage and one block, got {widths=}, {blocks=}")
        bn = dict(bn_batch_stats_at_eval=bn_batch_stats_at_eval)
        self.stem_conv = _conv3x3(3, widths[0], 1, conv_bias)
        self.stem_bn = _batchnorm(nn.BatchNorm2d, widths[0], bn_batch_stats_at_eval)
        stages, in_ch = [], widths[0]
        for i, width in enumerate(widths):
            stage = []
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                stage.append(BasicBlock(in_ch, width, stride, conv_bias=conv_bias, **bn))
                in_ch = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a batch of images.

        Args:
            x: `(B, 3, H, W)`.

        Returns:
            `(B, num_classes)`.
        """
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        x = self.stages(x)
        return self.fc(x.mean(dim=(2, 3)))


def resnet_cifar(
    widths: Sequence[int] = (48, 96, 192),
    blocks: int = 3,
    bn_batch_stats_at_eval: bool = False,
    num_classes: int = 10,
    *,
    conv_bias: bool = False,
    generator: torch.Generator | None = None,
) -> ResNetCifar:
    """The authors' CIFAR-10 ResNet: input (B, 3, H, W) with H, W divisible by 4, logits (B, C).

    Defaults: widths 48/96/192, 3 blocks per stage (spatial 32 -> 16 -> 8 for CIFAR), 2,412,730
    parameters. Convs are 3x3 with TensorFlow 'SAME' padding (see `Conv2dTFSame`; only the
    stride-2 convs differ from padding=1).

    Args:
        widths: The width of each stage (see `ResNetCifar`, `BasicBlock`).
        blocks: Blocks per stage.
        bn_batch_stats_at_eval: True reproduces the original, whose BatchNorm always used the
            current batch's statistics, also at evaluation (no running averages); every
            example's output then depends on its batch, so evaluate in large batches. False is
            PyTorch's running-statistics behaviour (momentum 0.1).
        num_classes: The number of logits C.
        conv_bias: The original's convs carried (zero-initialised) biases, 2,064 extra
            parameters (2,414,794 in total). A bias directly followed by BatchNorm cancels out of
            the output and gets no gradient, so the default leaves them out; True restores the
            original count.
        generator: Optional CPU generator for the init. The init is the original's tflib one
            (module docstring): He-like *uniform* convs with the stride-2 fan_out divided by 4,
            Glorot uniform dense layer, zero biases, BN scale 1 / offset 0 -- not PyTorch's
            Kaiming.

    Returns:
        The initialised model, on the CPU.

    Raises:
        ValueError: As `ResNetCifar` raises.
    """
    model = ResNetCifar(widths, blocks, bn_batch_stats_at_eval, num_classes, conv_bias=conv_bias)
    return _init_tflib_(model, generator)


# ---------------------------------------------------------------------------------------------
# SIN: MLP


def mlp_sin(*, generator: torch.Generator | None = None) -> nn.Sequential:
    """The SIN regression MLP: input (B, 1), output (B, 1).

    Dense 1->64, four dense 64->64, dense 64->1, ReLU after every layer but the last (16,833
    parameters). Glorot uniform weights, zero biases (tflib `Linear` default).

    Args:
        generator: Optional CPU generator for the init (see the module docstring).

    Returns:
        The initialised model, on the CPU.
    """
    sizes = [1, 64, 64, 64, 64, 64, 1]
    layers: list[tuple[str, nn.Module]] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append((f"fc{i}", nn.Linear(n_in, n_out)))
        if i < len(sizes) - 2:
            layers.append((f"relu{i}", nn.ReLU()))
    return _init_tflib_(nn.Sequential(OrderedDict(layers)), generator)


# ---------------------------------------------------------------------------------------------
# Registry

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": lenet5,
    "resnet_cifar": resnet_cifar,
    "mlp_sin": mlp_sin,
}


def build_model(name: str, **kwargs) -> nn.Module:
    """`MODELS[name](**kwargs)`.

    Args:
        name: `"lenet5"`, `"resnet_cifar"` or `"mlp_sin"`.
        **kwargs: The builder's arguments.

    Returns:
        The built model.

    Raises:
        ValueError: An unknown name (the message lists the valid ones), or as the builder
            raises.
    """
    try:
        builder = MODELS[name]
    except KeyError:
        valid = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; valid names: {valid}") from None
    return builder(**kwargs)

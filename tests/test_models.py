"""Tests for gradreg.networks: parameter counts, layer order, init statistics, shortcuts, BN modes."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradreg.networks import (
    MODELS,
    BasicBlock,
    Conv2dTFSame,
    build_model,
    decayed_parameters,
    lenet5,
    mlp_sin,
    resnet_cifar,
)

SMALL_RESNET = dict(widths=(4, 8, 16), blocks=1)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# --- independent parameter-count formulas ------------------------------------------------------


def conv_count(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def dense_count(n_in, n_out):
    return n_in * n_out + n_out


def lenet_count(batchnorm=False):
    convs = conv_count(1, 6, 5) + conv_count(6, 16, 5) + conv_count(16, 120, 5)
    return convs + dense_count(120, 84) + dense_count(84, 10) + (2 * 84 if batchnorm else 0)


def resnet_count(widths=(48, 96, 192), blocks=3, num_classes=10, conv_bias=False):
    total = conv_count(3, widths[0], 3, conv_bias) + 2 * widths[0]  # stem conv + BN
    c_in = widths[0]
    for width in widths:
        for _ in range(blocks):
            total += conv_count(c_in, width, 3, conv_bias) + conv_count(width, width, 3, conv_bias)
            total += 2 * (2 * width)  # two BNs, scale and offset
            c_in = width
    return total + dense_count(c_in, num_classes)


def mlp_count():
    sizes = [1] + [64] * 5 + [1]
    return sum(dense_count(a, b) for a, b in zip(sizes[:-1], sizes[1:]))


def test_lenet_parameter_counts():
    assert lenet_count() == 61_706 and lenet_count(batchnorm=True) == 61_706 + 168
    assert n_params(lenet5()) == 61_706
    assert n_params(lenet5(dropout=None)) == 61_706
    assert n_params(lenet5(dropout=None, batchnorm=True)) == 61_706 + 168


def test_mlp_parameter_count():
    assert mlp_count() == 16_833
    assert n_params(mlp_sin()) == 16_833


def test_resnet_parameter_counts():
    assert resnet_count() == 2_412_730
    assert n_params(resnet_cifar()) == 2_412_730
    assert abs(2_412_730 - 2.41e6) / 2.41e6 < 0.01
    # The original's convs carried biases: one per output channel of each of the 19 convs.
    assert resnet_count(conv_bias=True) == 2_412_730 + 48 + 6 * (48 + 96 + 192) == 2_414_794
    assert n_params(resnet_cifar(conv_bias=True)) == 2_414_794
    assert n_params(resnet_cifar(**SMALL_RESNET)) == resnet_count(**SMALL_RESNET)


# --- shapes and layer order --------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"dropout": None}, {"dropout": None, "batchnorm": True}, {"dropout": 0.0}])
def test_lenet_output_shape(kwargs):
    assert lenet5(**kwargs)(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_resnet_output_shape():
    torch.manual_seed(0)
    assert resnet_cifar()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    small = resnet_cifar(**SMALL_RESNET, num_classes=7)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_mlp_output_shape():
    assert mlp_sin()(torch.randn(5, 1)).shape == (5, 1)


def test_resnet_stage_strides():
    model = resnet_cifar()
    strides = [[blk.stride for blk in stage] for stage in model.stages]
    assert strides == [[1, 1, 1], [2, 1, 1], [2, 1, 1]]
    widths = [[(blk.in_ch, blk.out_ch) for blk in stage] for stage in model.stages]
    assert widths[1][0] == (48, 96) and widths[2][0] == (96, 192) and widths[2][2] == (192, 192)


def test_lenet_matches_functional_oracle():
    """The layer order of the paper, re-implemented with torch.nn.functional in float64."""
    torch.manual_seed(1)
    model = lenet5(dropout=0.5).double().eval()  # dropout is the identity in eval mode
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    p = dict(model.named_parameters())
    h = F.max_pool2d(F.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=2)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, p["conv2.weight"], p["conv2.bias"])), 2)
    h = F.relu(F.conv2d(h, p["conv3.weight"], p["conv3.bias"])).flatten(1)
    h = F.relu(h @ p["fc1.weight"].T + p["fc1.bias"])
    expected = h @ p["fc2.weight"].T + p["fc2.bias"]
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_lenet_dropout_and_validation():
    model = lenet5(dropout=0.5)
    assert model.dropout.p == 0.5
    x = torch.randn(8, 1, 28, 28)
    model.train()
    assert not torch.equal(model(x), model(x))  # a fresh mask each call
    model.eval()
    assert torch.equal(model(x), model(x))
    assert not any(isinstance(m, nn.Dropout) for m in lenet5(dropout=None).modules())
    bn_model = lenet5(dropout=None, batchnorm=True)
    assert not any(isinstance(m, nn.Dropout) for m in bn_model.modules())
    assert isinstance(bn_model.bn, nn.BatchNorm1d) and bn_model.bn.num_features == 84
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="dropout"):
            lenet5(dropout=bad)
    with pytest.raises(ValueError, match="instead of"):
        lenet5(dropout=0.5, batchnorm=True)


# --- initialisation ----------------------------------------------------------------------------


def check_uniform(w, bound):
    """w ~ U(-bound, bound): the bound holds, is nearly reached, and the std matches.

    For U(-a, a), sigma = a/sqrt(3) and the sample std has standard error sigma/sqrt(5n)
    (Var(s^2) = (mu4 - sigma^4)/n with mu4 = a^4/5, delta method). We allow 5 standard errors.
    The max |w| falls below a(1-delta) with probability (1-delta)^n; delta is set so that is 1e-9.
    """
    w = w.detach().double().flatten()
    n = w.numel()
    sigma = bound / math.sqrt(3)
    assert w.abs().max().item() <= bound * (1 + 1e-6)
    delta = 1 - 1e-9 ** (1 / n)
    assert w.abs().max().item() >= bound * (1 - delta)
    assert abs(w.std().item() - sigma) <= 5 * sigma / math.sqrt(5 * n)


def conv_bound(conv):
    c_out, c_in, kh, kw = conv.weight.shape
    fan_in = c_in * kh * kw
    fan_out = c_out * kh * kw / (conv.stride[0] * conv.stride[1])
    return math.sqrt(3) * math.sqrt(4 / (fan_in + fan_out))


def check_tflib_init(model):
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    denses = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for conv in convs:
        check_uniform(conv.weight, conv_bound(conv))
    for dense in denses:
        n_out, n_in = dense.weight.shape
        check_uniform(dense.weight, math.sqrt(6 / (n_in + n_out)))
    for m in model.modules():
        if getattr(m, "bias", None) is not None:
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert torch.all(m.weight == 1)
    return convs, denses


def test_lenet_init():
    torch.manual_seed(0)
    convs, denses = check_tflib_init(lenet5())
    assert len(convs) == 3 and len(denses) == 2
    # conv1: fan_in 25, fan_out 150 -> std sqrt(4/175); PyTorch's default would give 0.115.
    assert conv_bound(convs[0]) == pytest.approx(math.sqrt(3 * 4 / 175))
    check_tflib_init(lenet5(dropout=None, batchnorm=True))


def test_resnet_init():
    torch.manual_seed(0)
    model = resnet_cifar(conv_bias=True)
    convs, denses = check_tflib_init(model)
    assert len(convs) == 19 and len(denses) == 1
    # Stride-2 conv: tflib divides fan_out by stride**2.
    down = model.stages[1][0].conv1
    assert down.stride == (2, 2)
    assert conv_bound(down) == pytest.approx(math.sqrt(3 * 4 / (48 * 9 + 96 * 9 / 4)))


def test_mlp_init():
    torch.manual_seed(0)
    convs, denses = check_tflib_init(mlp_sin())
    assert not convs and [tuple(d.weight.shape) for d in denses] == [
        (64, 1),
        (64, 64),
        (64, 64),
        (64, 64),
        (64, 64),
        (1, 64),
    ]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_same_init(name):
    kwargs = SMALL_RESNET if name == "resnet_cifar" else {}

    def state(seed, generator=None):
        torch.manual_seed(seed)
        return build_model(name, **kwargs, generator=generator).state_dict()

    def equal(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert equal(state(seed=3), state(seed=3))
    assert not equal(state(seed=3), state(seed=4))
    # With a generator, the init no longer depends on the global RNG.
    a = state(seed=5, generator=torch.Generator().manual_seed(7))
    b = state(seed=6, generator=torch.Generator().manual_seed(7))
    assert equal(a, b)


# --- weight decay selection --------------------------------------------------------------------


def test_decayed_parameters_lenet():
    for model in (lenet5(), lenet5(dropout=None, batchnorm=True)):
        params = decayed_parameters(model)
        names = {id(p): n for n, p in model.named_parameters()}
        assert [names[id(p)] for p in params] == [
            "conv1.weight",
            "conv2.weight",
            "conv3.weight",
            "fc1.weight",
            "fc2.weight",
        ]
        assert sum(p.numel() for p in params) == 6 * 25 + 6 * 16 * 25 + 16 * 120 * 25 + 120 * 84 + 84 * 10


def test_decayed_parameters_resnet_and_mlp():
    model = resnet_cifar()
    expected = 3 * 48 * 9 + 192 * 10
    c_in = 48
    for width in (48, 96, 192):
        for _ in range(3):
            expected += (c_in * width + width * width) * 9
            c_in = width
    params = decayed_parameters(model)
    assert sum(p.numel() for p in params) == expected
    bn_ids = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert not bn_ids & {id(p) for p in params}
    assert all(p.dim() in (2, 4) for p in params)
    assert sum(p.numel() for p in decayed_parameters(mlp_sin())) == 64 + 4 * 64 * 64 + 64
    biased = resnet_cifar(**SMALL_RESNET, conv_bias=True)
    assert not {id(m.bias) for m in biased.modules() if isinstance(m, nn.Conv2d)} & {
        id(p) for p in decayed_parameters(biased)
    }


# --- ResNet block internals ---------------------------------------------------------------------


def test_downsampling_shortcut_is_avgpool_plus_zero_channels():
    block = BasicBlock(4, 8, stride=2)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    xn = x.numpy()
    pooled = xn.reshape(2, 4, 4, 2, 4, 2).mean(axis=(3, 5))
    expected = np.concatenate([pooled, np.zeros((2, 4, 4, 4))], axis=1)  # zeros appended last
    np.testing.assert_allclose(block.shortcut(x).numpy(), expected, rtol=0, atol=1e-15)
    identity = BasicBlock(8, 8, stride=1)
    y = torch.randn(2, 8, 4, 4)
    assert torch.equal(identity.shortcut(y), y)
    with pytest.raises(ValueError):
        BasicBlock(8, 4)


def test_downsampling_block_matches_functional_oracle():
    """relu(bn(conv(relu(bn(conv_s2(x))))) + shortcut), BN on batch stats, TF-'SAME' stride 2."""
    torch.manual_seed(0)
    block = BasicBlock(4, 8, stride=2, conv_bias=True).double().train()
    for m in block.modules():  # non-trivial BN affine and conv biases
        if isinstance(m, (nn.BatchNorm2d, nn.Conv2d)):
            nn.init.normal_(m.bias)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)

    def bn(h, m):
        mean = h.mean(dim=(0, 2, 3), keepdim=True)
        var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        return (h - mean) / torch.sqrt(var + 1e-5) * m.weight[:, None, None] + m.bias[:, None, None]

    # TF 'SAME' for k=3, s=2 on an even size: pad 0 before, 1 after.
    h = F.conv2d(F.pad(x, (0, 1, 0, 1)), block.conv1.weight, block.conv1.bias, stride=2)
    h = F.relu(bn(h, block.bn1))
    h = bn(F.conv2d(h, block.conv2.weight, block.conv2.bias, padding=1), block.bn2)
    short = torch.cat([F.avg_pool2d(x, 2), torch.zeros(3, 4, 4, 4, dtype=x.dtype)], dim=1)
    torch.testing.assert_close(block(x), F.relu(h + short), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("size, pad", [(8, (0, 1)), (9, (1, 1))])
def test_tf_same_conv_padding(size, pad):
    conv = Conv2dTFSame(2, 3, 3, stride=2).double()
    x = torch.randn(1, 2, size, size, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, pad + pad), conv.weight, conv.bias, stride=2)
    assert expected.shape[-1] == math.ceil(size / 2)
    torch.testing.assert_close(conv(x), expected)


# --- BatchNorm at evaluation ---------------------------------------------------------------------


def eval_output_of_first_example(model, x):
    """Output for x[0] in eval mode, within x and within x with the other examples replaced."""
    model.eval()
    with torch.no_grad():
        in_batch = model(x)[0]
        other = x.clone()
        other[1:] = torch.randn_like(other[1:]) * 3 + 1
        in_other_batch = model(other)[0]
    return in_batch, in_other_batch


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda s: resnet_cifar(**SMALL_RESNET, bn_batch_stats_at_eval=s), (4, 3, 16, 16)),
        (lambda s: lenet5(dropout=None, batchnorm=True, bn_batch_stats_at_eval=s), (4, 1, 28, 28)),
    ],
)
def test_bn_batch_stats_at_eval(build, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    in_batch, in_other_batch = eval_output_of_first_example(build(True), x)
    assert not torch.allclose(in_batch, in_other_batch, atol=1e-4)
    assert not any(
        m.track_running_stats for m in build(True).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )

    model = build(False)
    model.train()
    with torch.no_grad():
        model(x)  # move the running statistics away from their initial values
    in_batch, in_other_batch = eval_output_of_first_example(model, x)
    torch.testing.assert_close(in_batch, in_other_batch)
    with torch.no_grad():
        alone = model(x[:1])[0]  # running statistics: a batch of one is fine
    torch.testing.assert_close(alone, in_batch, rtol=1e-5, atol=1e-5)


# --- double backprop (what the gradient regularizers need) --------------------------------------


@pytest.mark.parametrize(
    "build, shape",
    [(lambda: lenet5(), (2, 1, 28, 28)), (lambda: resnet_cifar(**SMALL_RESNET), (2, 3, 8, 8))],
)
def test_input_gradient_penalty_reaches_weights(build, shape):
    torch.manual_seed(0)
    model = build().train()
    x = torch.randn(shape, requires_grad=True)
    loss = F.cross_entropy(model(x), torch.tensor([1, 2]))
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    g.pow(2).sum().backward()
    w = decayed_parameters(model)[0]
    assert w.grad is not None and torch.count_nonzero(w.grad) > 0


# --- registry and import -----------------------------------------------------------------------


def test_registry():
    assert MODELS == {"lenet5": lenet5, "resnet_cifar": resnet_cifar, "mlp_sin": mlp_sin}
    assert n_params(build_model("lenet5", dropout=None, batchnorm=True)) == 61_874
    with pytest.raises(ValueError) as err:
        build_model("vgg16")
    message = str(err.value)
    assert "vgg16" in message
    for name in MODELS:
        assert name in message


def test_import_has_no_side_effects():
    code = (
        "import torch; s = torch.get_rng_state(); import gradreg.networks; assert torch.equal(s, torch.get_rng_state())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""

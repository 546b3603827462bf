"""The model registry: a config's `model` is a registered name or an import path.

- A registered name (`MODELS`): the paper's `lenet5`, `resnet_cifar` and
  `mlp_sin`, built from the config's model options (dropout, BatchNorm) with the paper's
  initialization, drawn from the run's `init` stream.
- An import path `"package.module:factory"`: `factory()` returns an `nn.Module` mapping
  the dataset's inputs to logits `(B, m)` (regression: `(B, 1)`). It is called with the
  global RNG seeded from the run's `init` stream (and restored afterwards), so its
  initialization is reproducible per seed; the config's model options do not apply.

The ensemble engine packs the layers `gradreg.ensemble.pack` knows (the fast path) and
trains any other module as a `torch.func` ensemble (`gradreg.ensemble.functional`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import networks as N


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: the datasets it fits and how it is built.

    Attributes:
        datasets: The datasets it is valid for.
        build: `(cfg, generator) -> nn.Module`.
        reads: The model options (`MODEL_OPTIONS`) that `build` uses.
    """

    datasets: tuple[str, ...]
    build: Callable  # (cfg, generator) -> nn.Module
    reads: tuple[str, ...] = ()  # the model options (MODEL_OPTIONS) that `build` uses


# config fields that shape a registered model; each is "off" at None / False
MODEL_OPTIONS = ("dropout", "batchnorm", "bn_batch_stats_at_eval")

MODELS: dict[str, ModelSpec] = {
    "lenet5": ModelSpec(
        ("mnist",),
        lambda c, g: N.lenet5(
            dropout=c.dropout, batchnorm=c.batchnorm, bn_batch_stats_at_eval=c.bn_batch_stats_at_eval, generator=g
        ),
        MODEL_OPTIONS,
    ),
    "resnet_cifar": ModelSpec(
        ("cifar10",),
        lambda c, g: N.resnet_cifar(bn_batch_stats_at_eval=c.bn_batch_stats_at_eval, generator=g),
        ("bn_batch_stats_at_eval",),
    ),
    "mlp_sin": ModelSpec(("sin", "sin2"), lambda c, g: N.mlp_sin(generator=g)),
}


def check_model_options(cfg) -> None:
    """Refuse a model option that is on (not None / False) but that the registered model does not read.

    `dropout=0.5` on the SIN MLP would otherwise train without dropout, silently. (An
    import-path model is built by its factory; the command line refuses these options for it.)

    Args:
        cfg (TrainConfig): The config.

    Raises:
        ValueError: An option in `MODEL_OPTIONS` is on and the model does not read it.
    """
    if is_import_path(cfg.model):
        return
    reads = MODELS[cfg.model].reads
    for name in MODEL_OPTIONS:
        value = getattr(cfg, name)
        if value not in (None, False) and name not in reads:
            raise ValueError(
                f"{name}={value} does nothing: model {cfg.model!r} does not read it "
                f"(it reads {', '.join(reads) or 'no model option'}); leave it out"
            )


def is_import_path(name: str) -> bool:
    """Whether a model name is an import path `"package.module:factory"` (it holds a colon).

    Args:
        name: A config's `model`.

    Returns:
        True for an import path, False for a registered name.
    """
    return ":" in name


def models_for(dataset: str) -> tuple[str, ...]:
    """The registered model names valid for a dataset.

    Args:
        dataset: A dataset name.

    Returns:
        The names, in registry order.
    """
    return tuple(n for n, s in MODELS.items() if dataset in s.datasets)


def check_model_name(name, dataset: str) -> None:
    """Check a model name: a registered name that fits `dataset`, or a well-formed import path.

    An import path is resolved only when the model is built.

    Args:
        name: A config's `model`.
        dataset: The config's dataset.

    Raises:
        TypeError: `name` is not a non-empty string.
        ValueError: An import path without a module or attribute, or a registered name that
            does not fit `dataset` (the message lists the valid ones).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"model must be a registered name or an import path 'package.module:factory', got {name!r}")
    if is_import_path(name):
        module, _, attr = name.partition(":")
        if not module or not attr:
            raise ValueError(f"model import path {name!r} must look like 'package.module:factory'")
        return
    valid = models_for(dataset)
    if name not in valid:
        raise ValueError(
            f"model={name!r} is not valid for dataset {dataset!r}; valid choices: {', '.join(valid)}, "
            "or an import path 'package.module:factory'"
        )


def resolve_factory(path: str) -> Callable[[], nn.Module]:
    """The factory an import path names.

    Args:
        path: `"package.module:factory"`.

    Returns:
        The factory, `() -> nn.Module`.

    Raises:
        ValueError: The path is malformed or cannot be imported.
        TypeError: It names something that is not callable.
    """
    from .regularizers import import_object

    factory = import_object(path, "model")
    if not callable(factory):
        raise TypeError(f"model import path {path!r} names a {type(factory).__name__}, not a callable factory")
    return factory


def build_model(cfg, generator: torch.Generator) -> nn.Module:
    """The config's model, initialized from `generator`.

    A factory from an import path is called with the global RNG seeded from `generator` (and
    restored afterwards).

    Args:
        cfg (TrainConfig): The config.
        generator: A CPU generator seeded from the run's `init` stream.

    Returns:
        The model, on the CPU.

    Raises:
        TypeError: The factory is not callable or returns something that is not an
            `nn.Module`.
        ValueError: The import path cannot be resolved.
    """
    if not is_import_path(cfg.model):
        return MODELS[cfg.model].build(cfg, generator)
    factory = resolve_factory(cfg.model)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model factory {cfg.model!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def decayed_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Weight decay's set: conv kernels and dense weight matrices (no biases, no norm layers).

    As in the paper's code; the same rule for any module.

    Args:
        model: The network.

    Returns:
        The parameters, in module order (see `gradreg.networks.decayed_parameters`).
    """
    return N.decayed_parameters(model)

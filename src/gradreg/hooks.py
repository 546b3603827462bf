"""Take a submodule's output as `wrt`: [`capture`][gradreg.capture].

A penalty w.r.t. a hidden activation or an embedding output needs the very tensor the rest of
the network consumed. `capture` records it with a forward hook during the caller's own
forward pass:

```python
with gr.capture(model, "embed") as act:
    logits = model(tokens)
loss, terms = gr.regularize(logits, y, act.value, [gr.DataGrad(1.0)])
```

The conventions and the errors are in `capture`'s docstring.
"""

from __future__ import annotations

import difflib

import torch
from torch import Tensor, nn

__all__ = ["capture", "Capture", "UnknownSubmodule"]


class UnknownSubmodule(ValueError):
    """A submodule name that the model does not have; the message lists close matches.

    A `ValueError`.
    """


class Capture:
    """The handle [`capture`][gradreg.capture] returns; read `.value` (or `[name]`) after the forward pass.

    `.value` is one tensor for one name and a tuple, in the order of the names, for several
    (usable as `wrt` directly); `act[name]` is the output of one of them. Use it as a context
    manager: the hooks exist only inside the `with` block, and entering it again starts a fresh
    recording.

    Args:
        model: The model whose submodules are recorded.
        names: The submodule names, as in `model.named_modules()`.

    Attributes:
        names (tuple[str, ...]): The captured submodule names, in order.

    Raises:
        UnknownSubmodule: A name is not a submodule of `model` (a `ValueError`; the message
            lists close matches).
        RuntimeError: Entering the `with` block while it is already active (one `with` block
            at a time).
        KeyError: `act[name]` for a name that is not captured.
    """

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        self._model = model
        self.names = names
        self._modules = tuple(_submodule(model, n) for n in names)
        self._handles: list = []
        self._entered = False
        self._active = False
        self._records: dict[str, list] = {n: [] for n in names}

    # ----------------------------------------------------------------- context manager

    def __enter__(self) -> Capture:
        if self._active:
            raise RuntimeError(f"capture{self._args()} is already active: one with block at a time")
        self._records = {n: [] for n in self.names}
        try:
            for name, module in zip(self.names, self._modules):
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self._remove()
            raise
        self._entered = self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._remove()
        self._active = False

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name: str):
        records = self._records[name]

        def hook(module, args, output):
            if (
                isinstance(output, Tensor)
                and output.is_floating_point()
                and torch.is_grad_enabled()
                and not output.requires_grad
            ):
                # Nothing upstream requires grad, so a leaf loses nothing and gives the
                # gradient w.r.t. this output a place to exist. The forward pass goes on with a
                # copy: an in-place op later (nn.ReLU(inplace=True)) may not touch a leaf.
                leaf = output.detach().requires_grad_(True)
                records.append((leaf, leaf._version))
                return leaf.clone()
            records.append((output, output._version if isinstance(output, Tensor) else None))
            return None

        return hook

    # ----------------------------------------------------------------- reading

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._records:
            raise KeyError(f"{name!r} is not captured here; captured: {', '.join(map(repr, self.names))}")
        return self._one(name)

    @property
    def value(self) -> Tensor | tuple[Tensor, ...]:
        """The captured output (one name) or the tuple of outputs (several names), in the order of the names.

        Raises:
            RuntimeError: It is read before the `with` block was entered; a module was not called,
                or was called more than once, in the block; an output was modified in place after
                the module returned it; an output has no autograd graph (the forward pass ran under
                `torch.no_grad()` or `torch.inference_mode()`).
            TypeError: A module returned something other than a tensor.
        """
        values = tuple(self._one(n) for n in self.names)
        return values[0] if len(values) == 1 else values

    def _one(self, name: str) -> Tensor:
        if not self._entered:
            raise RuntimeError(
                f"capture{self._args()} records only inside a with block: "
                f"`with gr.capture(model, {name!r}) as act: logits = model(x)`, then read act.value"
            )
        records = self._records[name]
        if len(records) != 1:
            times = "was not called" if not records else f"was called {len(records)} times"
            raise RuntimeError(
                f"module {name!r} {times} in the with block; capture takes the output of exactly one call "
                "(run one forward pass per with block, and capture a module that the forward pass uses once)"
            )
        out, version = records[0]
        if not isinstance(out, Tensor):
            raise TypeError(
                f"module {name!r} returned a {type(out).__name__}, not a tensor; capture a submodule whose "
                "output is one tensor (or the submodule that computes the part you need)"
            )
        if out._version != version:
            raise RuntimeError(
                f"the output of {name!r} was modified in place after the module returned it (e.g. by "
                "nn.ReLU(inplace=True)); its gradient would be that of the modified tensor. Capture the "
                "module that does the in-place operation instead, or make it out of place"
            )
        if out.is_floating_point() and not out.requires_grad:
            raise RuntimeError(
                f"the output of {name!r} has no autograd graph: the forward pass ran under "
                "torch.no_grad() or torch.inference_mode()"
            )
        return out

    def _args(self) -> str:
        return "(model, " + ", ".join(map(repr, self.names)) + ")"

    def __repr__(self) -> str:
        state = "active" if self._active else ("done" if self._entered else "not entered")
        return f"<Capture {', '.join(map(repr, self.names))} of {type(self._model).__name__}: {state}>"


def capture(model: nn.Module, *names: str) -> Capture:
    """A context manager that records the output of the submodule(s) `names` of `model` during one forward pass.

    `with capture(model, "conv1") as act: logits = model(x)` then `act.value` is the `conv1`
    output the rest of the network consumed, ready to pass as `wrt` to
    [`gradreg.regularize`][gradreg.regularize]; with several names it is a tuple (the penalty is
    then the per-example sum over them, each gradient being the *total* derivative of the logits
    w.r.t. that activation).

    Conventions:

    - The module must run **exactly once** inside the `with` block (one forward pass); zero or
      several calls make `.value` raise, naming the module and the count.
    - The output must be a tensor (not a tuple or a dict: capture a submodule that returns one).
    - The gradient is that of the output *as the module returned it*. If a later in-place op
      (`nn.ReLU(inplace=True)`) overwrites it, the tensor now holds another value with another
      history, so `.value` raises instead of differentiating by the wrong thing.
    - An output that does not require grad (a frozen embedding, a parameter-free layer applied
      to an input that does not require grad) is recorded as a leaf that requires grad, so its
      gradient exists, and the rest of the forward pass runs on a copy of that leaf (so an
      in-place op there, `nn.ReLU(inplace=True)`, leaves the leaf alone); nothing upstream had a
      gradient to lose. The library sets `requires_grad`; the caller cannot forget it.
    - Under `torch.no_grad()` nothing is changed, and `.value` raises (no graph to
      differentiate).
    - The hooks are removed when the `with` block exits, also on an exception. The recorded
      values stay readable after the block, so `gr.regularize` can run inside or after it.

    Args:
        model: The model, an `nn.Module`.
        *names: One or more submodule names, as in `model.named_modules()` (e.g.
            `"features.0"`). A model wrapped in `DistributedDataParallel` or `torch.compile`
            prefixes its names with `module.` or `_orig_mod.`; capturing on the unwrapped model
            is the same thing.

    Returns:
        A [`Capture`][gradreg.Capture], to use as a context manager.

    Raises:
        TypeError: `model` is not an `nn.Module`, or a name is not a string.
        ValueError: No name is given, or a name is given twice.
        UnknownSubmodule: A name is not a submodule of `model` (a `ValueError` listing close
            matches).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"capture needs an nn.Module, got {type(model).__name__}")
    if not names:
        raise ValueError("capture needs at least one submodule name, e.g. capture(model, 'conv1')")
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"submodule names are strings (as in model.named_modules()), got {type(n).__name__}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"submodule name(s) {', '.join(map(repr, dup))} given twice")
    return Capture(model, tuple(names))


def _submodule(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    raise UnknownSubmodule(f"{type(model).__name__} has no submodule {name!r}{_suggest(name, list(modules))}")


def _suggest(name: str, names: list[str]) -> str:
    names = [n for n in names if n]
    by_suffix = [n for n in names if n.endswith("." + name)]
    close = by_suffix + [n for n in difflib.get_close_matches(name, names, n=5, cutoff=0.5) if n not in by_suffix]
    if close:
        return "; did you mean " + " or ".join(map(repr, close[:5])) + "?"
    shown: list[str] | None = names[:12]
    more = f", ... ({len(names)} in all)" if len(names) > 12 else ""
    return "; its submodules are " + (", ".join(map(repr, shown)) + more if shown else "none")

"""Layers by dotted name, and forward hooks that are always removed."""
from __future__ import annotations

import contextlib
import difflib
from typing import Iterator

import torch.nn as nn

from .errors import CsgError


def resolve_module(model: nn.Module, name: str | nn.Module) -> nn.Module:
    """Return the sub-module called ``name`` (``"layer4"``, ``"features.28"``).

    An unknown name raises :class:`CsgError` listing the closest names that exist.
    """
    if isinstance(name, nn.Module):
        return name
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    shown = close or names[:12]
    more = "" if close or len(names) <= 12 else f" (and {len(names) - 12} more)"
    raise CsgError(
        f"layer {name!r} does not exist in {type(model).__name__}; "
        f"{'did you mean' if close else 'layers are'}: {', '.join(shown)}{more}"
    )


@contextlib.contextmanager
def capture_outputs(model: nn.Module, names: list[str]) -> Iterator[dict[str, object]]:
    """Record the outputs of the named layers during the forward passes in the block.

    ``with capture_outputs(net, ["layer1", "layer2"]) as out: net(x)`` leaves
    ``out["layer1"]``; the hooks are removed on exit, even after an error.
    """
    store: dict[str, object] = {}
    handles = []
    try:
        for name in names:
            module = resolve_module(model, name)

            def hook(_m, _inp, output, _name=name):
                store[_name] = output

            handles.append(module.register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()

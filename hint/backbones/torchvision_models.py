"""torchvision classifiers: any model of ``torchvision.models.list_models(module=torchvision.models)``.

Weights, in order: an explicit ``weights=FILE`` (state_dict ``.pth``/``.pt``/``.safetensors`` or a
TorchScript archive; a file whose classifier head has another number of classes builds the model
with that many); with ``random_init=True`` none; otherwise torchvision's ``DEFAULT`` weights, read
from the torch hub cache (``$TORCH_HOME/hub/checkpoints``) or downloaded there (a short socket
timeout keeps offline use from hanging; failure is :class:`WeightsUnavailable`).

Input size and normalisation come from the ``DEFAULT`` weights' transforms (``crop_size``, ``mean``,
``std``; ImageNet's 224 and mean/std when a model has none). Hand-picked hidden layers (shapes at
the native input size):

* ``vgg16``: ``features.26`` = conv5_2, (512, 14, 14), pre-ReLU -> ``post_relu=False``
* ``vgg19``: ``features.30`` = conv5_2, (512, 14, 14), pre-ReLU (the HINT paper's layer)
* ``resnet50``: ``layer3.5`` = last bottleneck of stage 3, (1024, 14, 14), ends in ReLU
* ``inception_v3``: ``Mixed_6b`` at 299 input, (768, 17, 17), a concat of ReLU branches

Every other model gets :func:`hint.backbones.layers.default_layer` (the end of the stride-16 stage,
e.g. ``layer3`` (256, 14, 14) for ``resnet18``) with ``post_relu`` probed. Transformers (``vit_*``,
``swin_*``, ``maxvit_t``) build, but only their (N, C, H, W) outputs can be hooked.

Inception-v3 and GoogLeNet are built without the auxiliary classifiers and with
``transform_input=True`` (as torchvision does for its ImageNet weights), so they too take
torchvision-normalised input.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
from functools import cache
from pathlib import Path

import torch
import torchvision

from . import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    WeightsUnavailable,
    _disable_inplace,
    _one_line,
    file_sha256,
    load_into,
    load_weights_file,
)
from .layers import default_layer, survey

# name -> (default layer, post_relu) for the hand-picked ones
SPECS: dict[str, tuple[str, bool]] = {
    "vgg16": ("features.26", False),
    "vgg19": ("features.30", False),
    "resnet50": ("layer3.5", True),
    "inception_v3": ("Mixed_6b", True),
}
AUX_PREFIXES = {"inception_v3": ("AuxLogits.",), "googlenet": ("aux1.", "aux2.")}
DOWNLOAD_TIMEOUT_S = 20.0


@cache
def available() -> tuple[str, ...]:
    """The torchvision classification models (no detection, segmentation, video or quantized ones)."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def default_weights(name: str) -> torchvision.models.WeightsEnum | None:
    """torchvision's ``DEFAULT`` weights enum entry for ``name`` (None if it has none)."""
    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def input_spec(name: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(input size, mean, std) from the DEFAULT weights' transforms, ImageNet defaults otherwise."""
    w = default_weights(name)
    if w is None:
        return 224, IMAGENET_MEAN, IMAGENET_STD
    t = w.transforms()
    size = t.crop_size[0] if isinstance(t.crop_size, list | tuple) else t.crop_size
    return int(size), tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)


def _make(name: str, random_init: bool, input_size: int, num_classes: int = 1000) -> torch.nn.Module:
    kwargs: dict = {}
    if name in AUX_PREFIXES:
        kwargs = {"aux_logits": False, "transform_input": True, "init_weights": random_init}
    if name.startswith("vit_"):
        kwargs["image_size"] = input_size
    if num_classes != 1000:
        kwargs["num_classes"] = num_classes
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _head_classes(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> int | None:
    """The number of classes of ``sd`` when it differs from ``model``'s only in the classifier head."""
    own = model.state_dict()
    diff = [k for k in own if k in sd and own[k].shape != sd[k].shape]
    if not diff or any(own[k].shape[0] != 1000 or own[k].shape[1:] != sd[k].shape[1:] for k in diff):
        return None
    sizes = {sd[k].shape[0] for k in diff}
    return sizes.pop() if len(sizes) == 1 else None


def hub_weights(name: str) -> tuple[Path, str]:
    """torchvision's DEFAULT weights for ``name``: (file in the hub cache, description); download if absent."""
    w = default_weights(name)
    if w is None:
        raise WeightsUnavailable(
            f"{name}: torchvision has no pretrained weights; pass --weights FILE or random_init=True"
        )
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if not path.is_file():
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                torch.hub.load_state_dict_from_url(w.url, progress=False, check_hash=True, map_location="cpu")
        except Exception as e:  # offline, DNS, timeout, bad hash ...
            raise WeightsUnavailable(
                f"{name}: no ImageNet weights: not in the torch hub cache ({path.parent}) and download failed "
                f"(offline? {_one_line(e)}); pass --weights FILE or random_init=True"
            ) from e
        finally:
            socket.setdefaulttimeout(old)
    return path, f"torchvision {w} ({w.url})"


def build(name: str, weights: str | os.PathLike | None = None, random_init: bool = False) -> Backbone:
    """The registry entry for every torchvision model."""
    size, mean, std = input_spec(name)
    desc, sha = "random", None
    if random_init:
        model = _make(name, True, size)
    else:
        path, desc = (Path(weights), f"file {weights}") if weights is not None else hub_weights(name)
        sd = load_weights_file(name, path)
        if name in AUX_PREFIXES:
            sd = {k: v for k, v in sd.items() if not k.startswith(AUX_PREFIXES[name])}
        model = _make(name, False, size)
        classes = _head_classes(model, sd)
        if classes is not None:
            model = _make(name, False, size, classes)
            desc += f" ({classes} classes)"
        load_into(name, model, sd, str(path))
        sha = file_sha256(path)
    model.eval()
    if name in SPECS:
        layer, post_relu = SPECS[name]
    else:
        _disable_inplace(model)
        info = default_layer(survey(model, size), size, name)
        layer, post_relu = info.name, info.non_negative
    return Backbone(
        name=name,
        model=model,
        layer=layer,
        input_size=size,
        mean=mean,
        std=std,
        weights=desc,
        weights_sha256=sha,
        post_relu=post_relu,
    )

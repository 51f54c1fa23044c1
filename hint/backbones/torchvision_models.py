"""torchvision classifiers: VGG16, VGG19, ResNet-50, Inception-v3.

Weights, in order: an explicit ``weights=FILE`` (state_dict ``.pth`` or ``.safetensors``); with
``random_init=True`` none; otherwise torchvision's ``DEFAULT`` weights, read from the torch hub cache
(``$TORCH_HOME/hub/checkpoints``) or downloaded there (a short socket timeout keeps offline use from
hanging). Default hidden layers (shapes at the native input size):

* ``vgg16``: ``features.26`` = conv5_2, (512, 14, 14), pre-ReLU -> ``post_relu=False``
* ``vgg19``: ``features.30`` = conv5_2, (512, 14, 14), pre-ReLU (the HINT paper's layer)
* ``resnet50``: ``layer3.5`` = last bottleneck of stage 3, (1024, 14, 14), ends in ReLU
* ``inception_v3``: ``Mixed_6b`` at 299 input, (768, 17, 17), a concat of ReLU branches

Inception-v3 is built without the auxiliary classifier and with ``transform_input=True`` (as
torchvision does for its ImageNet weights), so it too takes torchvision-normalised input.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
from pathlib import Path

import torch
import torchvision

from . import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    WeightsUnavailable,
    _one_line,
    file_sha256,
    load_into,
    load_weights_file,
)

# name -> (default layer, input size, post_relu)
SPECS: dict[str, tuple[str, int, bool]] = {
    "vgg16": ("features.26", 224, False),
    "vgg19": ("features.30", 224, False),
    "resnet50": ("layer3.5", 224, True),
    "inception_v3": ("Mixed_6b", 299, True),
}
DOWNLOAD_TIMEOUT_S = 20.0


def _make(name: str, random_init: bool) -> torch.nn.Module:
    kwargs: dict = {}
    if name == "inception_v3":
        kwargs = {"aux_logits": False, "transform_input": True, "init_weights": random_init}
    return torchvision.models.get_model(name, weights=None, **kwargs)


def hub_weights(name: str) -> tuple[Path, str]:
    """torchvision's DEFAULT weights for ``name``: (file in the hub cache, description); download if absent."""
    w = torchvision.models.get_model_weights(name).DEFAULT
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
    """The registry entry for the torchvision families."""
    layer, size, post_relu = SPECS[name]
    desc, sha = "random", None
    if random_init:
        model = _make(name, random_init=True)
    else:
        path, desc = (Path(weights), f"file {weights}") if weights is not None else hub_weights(name)
        sd = load_weights_file(name, path)
        model = _make(name, random_init=False)
        if name == "inception_v3":
            sd = {k: v for k, v in sd.items() if not k.startswith("AuxLogits.")}
        load_into(name, model, sd, str(path))
        sha = file_sha256(path)
    return Backbone(
        name=name,
        model=model.eval(),
        layer=layer,
        input_size=size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights=desc,
        weights_sha256=sha,
        post_relu=post_relu,
    )

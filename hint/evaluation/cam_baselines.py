"""CAM baselines from the maintained library pytorch-grad-cam (PyPI ``grad-cam``), for the WSOL table.

Each method runs on the layer of the project's CAM (:data:`hint.evaluation.wsol.run.CAM_LAYERS`, ``_head_act`` for
efficientnet_lite0) for the ground-truth class (``ClassifierOutputTarget(label)``). The library's own
``BaseCAM.forward`` makes every map (forward pass, backward pass of the class logit, the method's
``get_cam_image``, ReLU, per-image min-max); the only change to what it computes is the size ``scale_cam_image``
resizes the map to, ``get_target_width_height``, here the layer's own grid instead of the input's, so the maps
stay at h × w (7 × 7) and the WSOL protocol upsamples and normalises them exactly as it does the CAM.
Resizing such a map bilinearly to the input and min-maxing it gives the library's ``__call__`` result.

Backward passes stop at the layer (:func:`_gradients_from`): the methods only use the gradients there, which
are the same, at about half the cost of a backward pass through the whole network.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch
from tqdm import tqdm

from hint.evaluation.wsol import metrics as wsol

BASELINES = {  # option name -> (row of the WSOL table, pytorch_grad_cam class)
    "gradcam": ("Grad-CAM (grad-cam)", "GradCAM"),
    "gradcam++": ("Grad-CAM++ (grad-cam)", "GradCAMPlusPlus"),
    "scorecam": ("Score-CAM (grad-cam)", "ScoreCAM"),
    "layercam": ("LayerCAM (grad-cam)", "LayerCAM"),
}
#: One forward and one backward pass per batch; Score-CAM (one forward pass per channel of the layer and
#: image: 40-110 s per image at efficientnet_lite0's 1280 channels, measured on 2 CPU cores) only when asked for.
DEFAULT = ("gradcam", "gradcam++", "layercam")
ONE_PASS_PER_CHANNEL = {"scorecam"}


def library_version() -> str:
    """``grad-cam <installed version>``, or ``grad-cam (not installed)``."""
    try:
        return f"grad-cam {version('grad-cam')}"
    except PackageNotFoundError:
        return "grad-cam (not installed)"


@functools.cache
def _at_layer_grid(cls: type) -> type:
    """The library class ``cls`` with ``get_target_width_height`` (the size ``BaseCAM`` resizes each map
    to) returning the target layer's own grid (its activations' last two dimensions), as (w, h)."""

    def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
        h, w = self.activations_and_grads.activations[0].shape[-2:]
        return w, h

    return type(cls.__name__, (cls,), {"get_target_width_height": get_target_width_height})


@contextlib.contextmanager
def _gradients_from(model: torch.nn.Module, layer: torch.nn.Module) -> Iterator[None]:
    """Backward passes from the output stop at ``layer``: the parameters are frozen and the layer's output
    becomes a leaf tensor that requires grad (the same values). Register before the library's hooks."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    hook = layer.register_forward_hook(lambda _m, _i, o: o.detach().requires_grad_())
    try:
        yield
    finally:
        hook.remove()
        for p in frozen:
            p.requires_grad_(True)


def library_cams(
    bb,
    anns: list[wsol.Annotation],
    methods: Sequence[str] = DEFAULT,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """pytorch-grad-cam's maps of the ground-truth class at the layer of the project's CAM.

    Args:
        bb: a :class:`hint.backbones.Backbone` listed in ``CAM_LAYERS``.
        anns: the images (``load_rgb(a.path)``, ``bb.preprocess``) and their classes (``a.label``).
        methods: keys of :data:`BASELINES`.
        batch_size: images per forward/backward pass; for Score-CAM, masked copies of one image per
            forward pass (the library's ``batch_size``; its N × C × 3 × S × S masked inputs are made one
            image at a time).
        progress: progress bars (the library's own bar over Score-CAM's channels included).

    Returns:
        Row name (``BASELINES[m][0]``) → (N, h, w) float32 maps at the layer's grid: ReLU of the method's
        weighted activations, each min-max normalised to [0, 1] (the library's ``1e-7`` guard: an all-zero
        map stays 0). ValueError for an unknown method, a backbone without a CAM layer, or no grad-cam.
    """
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as e:
        raise ValueError(
            f"library baselines need grad-cam (pip install -e '.[eval]'), or pass --baselines alone: {e}"
        ) from e

    from hint.build.datasets import load_rgb
    from hint.evaluation.wsol.run import CAM_LAYERS, _warn

    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    if bb.name not in CAM_LAYERS:
        raise ValueError(
            f"no CAM layer known for {bb.name} (hint.evaluation.wsol.run.CAM_LAYERS): no library baselines"
        )
    modules = dict(bb.model.named_modules())
    layer = modules[CAM_LAYERS[bb.name][0]]
    out = {}
    for m in methods:
        row, cls = BASELINES[m]
        if m in ONE_PASS_PER_CHANNEL:
            c = modules[CAM_LAYERS[bb.name][1]].weight.shape[1]
            _warn(
                f"{row}: {c} forward passes per image ({c} channels at {CAM_LAYERS[bb.name][0]}) on {len(anns)} "
                "images, 40-110 s per image measured on 2 CPU cores"
            )
        step = 1 if m in ONE_PASS_PER_CHANNEL else batch_size
        quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
        maps = []
        with _gradients_from(bb.model, layer), torch.enable_grad(), quiet:
            cam = _at_layer_grid(getattr(pytorch_grad_cam, cls))(bb.model, [layer])
            cam.batch_size = batch_size  # read by ScoreCAM only
            try:
                for s in tqdm(range(0, len(anns), step), desc=row, unit="batch", disable=not progress):
                    batch = anns[s : s + step]
                    x = bb.preprocess([load_rgb(a.path) for a in batch])
                    maps.append(cam(x, [ClassifierOutputTarget(a.label) for a in batch]))
            finally:
                cam.activations_and_grads.release()
        out[row] = np.concatenate(maps).astype(np.float32)
    return out

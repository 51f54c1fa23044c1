"""The localisation head: concept maps fused from classifiers at finer layers than the bank's.

The bank's probes live on one layer (7×7 for EfficientNet-Lite0's ``_blocks.15``), where the Shapley
tables and the neurons are. Maps and boxes come from a **head**: for every bank concept, one classifier
σ(αᵀz + b) at each of the head's ``layers`` (trained on that layer's step-1 regions with the bank's
samples rule, against the negative kinds ``negatives`` only), the concept's map being the mean of the
layers' maps on the finest grid (:func:`fuse`). Boxes: the fused map upsampled (:data:`UPSAMPLE`) to the
image, min-max normalised, cells >= ``box_threshold``, the largest contour (:func:`box_on_grid`).

The head's layers, negatives and box threshold are chosen on the selection half of the WSOL dev set
(docs/wsol.md); the head file is ``head.safetensors`` beside ``bank.safetensors`` (sha256 in the
manifest's ``files``, settings in its ``localisation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from hint.boxes import largest_box, normalise_minmax, scale_box, upsample_map
from hint.probes import probe_maps

FILE = "head.safetensors"
#: upsampling of a fused map to the image before its box (wsolevaluation's inference: cubic; a
#: hint.boxes.UPSAMPLING name)
UPSAMPLE = "cubic"
#: the head of a backbone when a build names none (chosen on the WSOL dev set's selection half)
DEFAULT_LAYERS = {"efficientnet_lite0": ("_blocks.14", "_blocks.12", "_blocks.10", "_blocks.9")}
#: negative kinds the head's classifiers are trained against (hint.build.concepts.SHARES keys)
DEFAULT_NEGATIVES = ("background",)


@dataclass
class LocalisationHead:
    """Per layer of ``layers``: classifiers ``weight[i]`` (E, D_i), ``bias[i]`` (E,) for the bank's E concepts."""

    layers: list[str]
    weight: list[torch.Tensor]
    bias: list[torch.Tensor]
    negatives: list[str] = field(default_factory=lambda: list(DEFAULT_NEGATIVES))
    grid: list[int] | None = None  # [h, w] of the fused map at the backbone's input size
    box_threshold: float = 0.5  # on the min-max normalised fused map
    info: dict = field(default_factory=dict)  # how it was fit and calibrated (manifest)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, (w, b) in enumerate(zip(self.weight, self.bias, strict=True)):
            out[f"weight.{i}"], out[f"bias.{i}"] = w.float().contiguous(), b.float().contiguous()
        return out

    def manifest(self) -> dict:
        return {
            "file": FILE,
            "layers": self.layers,
            "grid": self.grid,
            "negatives": self.negatives,
            "box_threshold": self.box_threshold,
            "upsample": UPSAMPLE,
            "fuse": "mean on the finest grid",
            **self.info,
        }

    @classmethod
    def from_files(cls, meta: dict, tensors: dict[str, torch.Tensor]) -> LocalisationHead:
        n = len(meta["layers"])
        known = {"file", "layers", "grid", "negatives", "box_threshold", "upsample", "fuse"}
        return cls(
            list(meta["layers"]),
            [tensors[f"weight.{i}"] for i in range(n)],
            [tensors[f"bias.{i}"] for i in range(n)],
            list(meta.get("negatives", DEFAULT_NEGATIVES)),
            meta.get("grid"),
            float(meta.get("box_threshold", 0.5)),
            {k: v for k, v in meta.items() if k not in known},
        )

    def maps(self, feats: Sequence[torch.Tensor], rows: torch.Tensor | None = None) -> torch.Tensor:
        """Fused concept maps (N, E', h, w) from the layers' activations ``feats[i]`` (N, D_i, h_i, w_i),
        for the bank rows ``rows`` (default all)."""
        out = []
        for z, w, b in zip(feats, self.weight, self.bias, strict=True):
            w, b = (w, b) if rows is None else (w[rows], b[rows])
            out.append(probe_maps(z.float(), w, b))
        return fuse(out)


def fuse(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean of maps (..., h_i, w_i), each resized (bilinear) to the finest grid among them."""
    if len(maps) == 1:
        return maps[0]
    h = max(m.shape[-2] for m in maps)
    w = max(m.shape[-1] for m in maps)
    up = []
    for m in maps:
        if tuple(m.shape[-2:]) != (h, w):
            lead = m.shape[:-2]
            m = F.interpolate(
                m.reshape(-1, 1, *m.shape[-2:]), size=(h, w), mode="bilinear", align_corners=False
            )
            m = m.reshape(*lead, h, w)
        up.append(m)
    return torch.stack(up).mean(0)


def normalised(score_map: np.ndarray, width: int, height: int) -> np.ndarray:
    """A (h, w) map upsampled (:data:`UPSAMPLE`) to (height, width) and min-max normalised (zeros when flat)."""
    return normalise_minmax(upsample_map(score_map, width, height, UPSAMPLE))


def box_on_grid(
    score_map: np.ndarray, width: int, height: int, threshold: float, grid: int | None = None
) -> tuple[list[int] | None, float]:
    """(box ``[x0, y0, x1, y1]`` in the image's pixels or None, area fraction) of the largest region of the
    :func:`normalised` map >= ``threshold``; the map is upsampled to at most ``grid`` pixels a side
    (default: the image) and the box scaled back to the image."""
    gw, gh = (min(width, grid), min(height, grid)) if grid else (width, height)
    box, frac = largest_box(normalised(score_map, gw, gh) >= threshold)
    return (None if box is None else scale_box(box, (gw, gh), (width, height))), frac

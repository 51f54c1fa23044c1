"""Neuron exemplars: each bank-layer neuron's top-k image patches and its NetDissect-style label.

Built by :mod:`hint.build.exemplars` (``offline build``, or ``offline exemplars`` for an existing bank) and
stored as ``exemplars.safetensors`` beside ``bank.safetensors`` (sha256 in the manifest's ``files``, the
settings in its ``exemplars``):

    jpeg (B,) uint8, offsets (D*K+1,) int64   the D×K thumbnails, JPEG files one after the other; patch
                                              (d, j) is ``jpeg[offsets[d*K+j]:offsets[d*K+j+1]]``
    activation (D, K) float32                 the neuron's peak activation on the patch's image, largest first
    image (D, K) int64                        the patch's image: an index into ``images`` (the file's metadata)
    box (D, K, 4) int32                       the patch in the photo's pixels, [x0, y0, x1, y1]
    concept (D,) int64, iou (D,) float32      label: the bank concept (row) with the neuron's largest φ, and the
                                              IoU of the neuron's thresholded activation with its regions
    iou_concept (D,) int64, iou_best (D,)     NetDissect's own label: the concept with the largest IoU, and it
    threshold (D,) float32                    the activation above which a cell counts as the neuron's

How patches, boxes, thresholds and IoUs are defined: :mod:`hint.build.exemplars` and docs/api.md ("Neuron
exemplars").
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

FILE = "exemplars.safetensors"
#: the manifest keys of the block :meth:`Exemplars.manifest` writes that are not settings
_KNOWN = ("file", "k", "neurons", "format")


@dataclass
class Exemplars:
    """The D neurons' K patches each (largest activation first) and their labels; shapes in the module doc."""

    jpeg: torch.Tensor
    offsets: torch.Tensor
    activation: torch.Tensor
    image: torch.Tensor
    box: torch.Tensor
    concept: torch.Tensor
    iou: torch.Tensor
    iou_concept: torch.Tensor
    iou_best: torch.Tensor
    threshold: torch.Tensor
    images: list[str]
    info: dict = field(default_factory=dict)  # how they were made (the manifest's ``exemplars`` block)

    @property
    def neurons(self) -> int:
        return int(self.activation.shape[0])

    @property
    def k(self) -> int:
        return int(self.activation.shape[1])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "jpeg": self.jpeg.to(torch.uint8).contiguous(),
            "offsets": self.offsets.long().contiguous(),
            "activation": self.activation.float().contiguous(),
            "image": self.image.long().contiguous(),
            "box": self.box.int().contiguous(),
            "concept": self.concept.long().contiguous(),
            "iou": self.iou.float().contiguous(),
            "iou_concept": self.iou_concept.long().contiguous(),
            "iou_best": self.iou_best.float().contiguous(),
            "threshold": self.threshold.float().contiguous(),
        }

    def metadata(self) -> dict[str, str]:
        """The safetensors header metadata: the image ids."""
        return {"images": json.dumps(self.images)}

    def manifest(self) -> dict:
        return {"file": FILE, "k": self.k, "neurons": self.neurons, "format": "jpeg", **self.info}

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        save_file(self.tensors(), str(path), metadata=self.metadata())

    @classmethod
    def read(cls, path: str | Path, meta: dict, concepts: int, channels: int) -> Exemplars:
        """The file at ``path`` with its manifest block ``meta``; ValueError when it does not fit a bank of
        ``concepts`` concepts and ``channels`` neurons."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
            images = json.loads((f.metadata() or {}).get("images", "[]"))
        ex = cls(**t, images=images, info={k: v for k, v in meta.items() if k not in _KNOWN})
        d, k = ex.activation.shape
        if (
            d != channels
            or ex.image.shape != (d, k)
            or ex.box.shape != (d, k, 4)
            or len(ex.offsets) != d * k + 1
        ):
            raise ValueError(f"shapes do not fit {channels} neurons")
        if int(ex.offsets[-1]) != len(ex.jpeg) or (ex.image.numel() and len(images) <= int(ex.image.max())):
            raise ValueError("the thumbnails or image ids are cut short")
        if any(t.numel() and int(t.max()) >= concepts for t in (ex.concept, ex.iou_concept)):
            raise ValueError(f"a label names a concept beyond the bank's {concepts}")
        return ex

    def thumbnail(self, neuron: int, j: int) -> bytes:
        """The JPEG file of neuron ``neuron``'s ``j``-th patch."""
        i = neuron * self.k + j
        return bytes(self.jpeg[int(self.offsets[i]) : int(self.offsets[i + 1])].numpy().tobytes())

    def patches(self, neuron: int) -> list[dict]:
        """The neuron's patches as the service answers them: rank, image id, box, activation, thumbnail
        (base64 JPEG)."""
        return [
            {
                "rank": j + 1,
                "image": self.images[int(self.image[neuron, j])],
                "box": self.box[neuron, j].tolist(),
                "activation": round(float(self.activation[neuron, j]), 4),
                "thumbnail": base64.b64encode(self.thumbnail(neuron, j)).decode("ascii"),
            }
            for j in range(self.k)
        ]

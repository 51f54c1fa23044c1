"""Bare TorchServe classification handler for the HINT backbone: top-5 classes, nothing else.

The baseline of ``benchmarks/serve.py``: it shares :mod:`hint_handler`'s request parsing and image
decoding (:func:`hint.serve.request.parse_request`), batching and JSON writing, so the latency difference
between ``/predictions/hint`` and ``/predictions/bare`` is what HINT adds (concept maps, chain, boxes,
neurons). Accepts raw image bytes, multipart, or JSON ``{"image": "<base64>"}`` (no options); answers
``{"prediction": [...5], "image": {...}, "model": {...}}``. The backbone is named in model-config.yaml
(``handler: backbone, layer``); no bank.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from hint_handler import DEFAULTS, HintHandler, Job
from PIL import Image

from hint.serve.options import Limits

logger = logging.getLogger(__name__)


class BareHandler(HintHandler):
    OPTIONS = ()  # the image only
    DEFAULTS = {**DEFAULTS, "backbone": "efficientnet_lite0", "layer": None}

    def _load(self, model_dir: Path) -> Limits:
        from hint.backbones import get_backbone
        from hint.hierarchy import Hierarchy

        self.backbone = get_backbone(str(self.cfg["backbone"]), self.cfg["layer"])
        self.model = self.backbone.model.to(self.device).eval()
        self.hierarchy = Hierarchy.load()
        with torch.inference_mode():  # warm-up
            self.model(self.backbone.preprocess([Image.new("RGB", (self.backbone.input_size,) * 2)]))
        logger.info("bare handler ready: %s, torch threads %d", self.backbone.name, torch.get_num_threads())
        return self.limits_for(self.backbone.input_size)

    @torch.inference_mode()
    def _answer(self, todo: list[Job]) -> None:
        x = self.backbone.preprocess([j.request.image for j in todo]).to(self.device)
        probs = F.softmax(self.model(x).float(), dim=1)
        p, idx = probs.topk(5, dim=1)
        h = self.hierarchy
        for i, job in enumerate(todo):
            width, height = job.request.size
            job.result = {
                "prediction": [
                    {"index": int(k), "wnid": h.classes[k], "name": h.class_names[k], "probability": float(v)}
                    for v, k in zip(p[i].tolist(), idx[i].tolist(), strict=True)
                ],
                "image": {"width": width, "height": height},
                "model": {"backbone": self.backbone.name},
            }


_service: BareHandler | None = None


def handle(data, context):
    """TorchServe's entry point (as :func:`hint_handler.handle`)."""
    global _service
    if _service is None:
        _service = BareHandler()
        _service.initialize(context)
    return None if data is None else _service.handle(data, context)

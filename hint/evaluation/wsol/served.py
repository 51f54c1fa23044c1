"""What the service answers on WSOL images: its maps and boxes, through the handler's code path.

:func:`served` asks :meth:`hint.explain.explainer.Explainer.answer` (``fast`` as in the TorchServe handler) for each
image's ``whole`` and ground-truth ancestor concept, with ``return_maps`` and ``all_boxes`` (a box whether
the concept is marked present or not: GT-known localisation knows the class). The maps are the rows
``HINT-whole (served)`` / ``HINT-ancestor (served)`` of the WSOL table; the boxes are scored as served
(:func:`box_hits`: IoU >= 0.5 against a GT box in the stored image's pixels). :func:`calibrate` chooses
the head's box threshold on the selection half only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from hint.evaluation.wsol import metrics as wsol
from hint.explain.explainer import Explainer

SERVED = {"whole": "HINT-whole (served)", "ancestor": "HINT-ancestor (served)"}


@dataclass
class Served:
    """Per image: the served map (N, h, w) and box (``[x0, y0, x1, y1]`` or None) of one concept kind."""

    maps: np.ndarray
    boxes: list[list[int] | None]
    present: np.ndarray  # (N,) the served ``present`` flag
    sizes: list[tuple[int, int]]  # (W, H) of each image
    levels: list[dict[str, list[int] | None]] = field(default_factory=list)  # per image: extra concept -> box


def request_options(wnids: list[str], box_threshold: float | None = None) -> dict:
    """The request the evaluation sends for one image: its concepts, maps, a box for each, no neurons."""
    return {
        "concepts": wnids,
        "return_maps": True,
        "all_boxes": True,
        "image_neurons": False,
        "top_k": 0,
        "box_threshold": box_threshold,
    }


def served(
    explainer: Explainer,
    anns: list[wsol.Annotation],
    whole: str,
    ancestors: list[str],
    batch_size: int = 32,
    progress: bool = False,
    box_threshold: float | None = None,
    levels: list[list[str]] | None = None,
) -> dict[str, Served]:
    """The served maps and boxes of ``whole`` and of each image's ancestor concept (``ancestors[n]``),
    from :meth:`Explainer.answer` in batches (one request per image, as the handler batches them); with
    ``levels[n]``, the boxes of those concepts too (the same request), in ``Served.levels`` of ``ancestor``."""
    from hint.build.datasets import load_rgb

    out: dict[str, dict[str, list]] = {k: {"maps": [], "boxes": [], "present": []} for k in SERVED}
    sizes: list[tuple[int, int]] = []
    extra: list[dict[str, list[int] | None]] = []
    for s in tqdm(range(0, len(anns), batch_size), desc="served maps", unit="batch", disable=not progress):
        batch = anns[s : s + batch_size]
        ims = [load_rgb(a.path) for a in batch]
        sizes += [im.size for im in ims]
        opts = [
            request_options(
                list(dict.fromkeys([whole, ancestors[s + i], *(levels[s + i] if levels else [])])),
                box_threshold,
            )
            for i in range(len(batch))
        ]
        with torch.no_grad():
            answers = explainer.answer(ims, [im.size for im in ims], opts)
        for n, a in enumerate(answers):
            by = {c["wnid"]: c for c in a["concepts"]}
            extra.append({w: by[w]["box"] for w in (levels[s + n] if levels else [])})
            for kind, w in (("whole", whole), ("ancestor", ancestors[s + n])):
                c = by[w]
                out[kind]["maps"].append(np.asarray(c["map"], np.float32))
                out[kind]["boxes"].append(c["box"])
                out[kind]["present"].append(bool(c["present"]))
    return {
        k: Served(
            np.stack(v["maps"]), v["boxes"], np.array(v["present"]), sizes, extra if k == "ancestor" else []
        )
        for k, v in out.items()
    }


def box_hits(
    boxes: list[list[int] | None], anns: list[wsol.Annotation], delta: float = wsol.IOU_LOC
) -> np.ndarray:
    """(N,) bool: the served box overlaps a GT box (stored pixels) with IoU >= ``delta``; no box: a miss."""
    return np.array(
        [
            b is not None and float(wsol.multiple_iou(b, a.boxes_float).max()) >= delta
            for b, a in zip(boxes, anns, strict=True)
        ]
    )


def level_hits(got: Served, anns: list[wsol.Annotation], delta: float = wsol.IOU_LOC) -> list[np.ndarray]:
    """Per image, (L_n,) bool: each extra concept's served box overlaps a GT box with IoU >= ``delta``."""
    return [box_hits(list(lv.values()), [a] * len(lv), delta) for lv, a in zip(got.levels, anns, strict=True)]


def threshold_curves(
    got: dict[str, Served], anns: list[wsol.Annotation], size: int, upsample: str = "cubic"
) -> dict[str, np.ndarray]:
    """Per served kind, (N, T) IoU of the largest-contour box at each wsolevaluation threshold
    (:data:`hint.evaluation.wsol.metrics.THRESHOLDS`), the maps scored as the protocol scores them (S × S, GT boxes resized)."""
    out = {}
    for kind, g in got.items():
        ious = []
        for a, m, wh in zip(anns, g.maps, g.sizes, strict=True):
            gt = wsol.resize_bbox(a.boxes_float, wh, (size, size))
            ious.append(wsol.image_ious(wsol.score_map(m, size, size, upsample), gt)[0])
        out[kind] = np.stack(ious)
    return out


def best_threshold(curves: list[np.ndarray]) -> dict:
    """The threshold with the best GT-known box accuracy over the pooled rows of ``curves`` (each (N, T))."""
    acc = wsol.box_accuracy(np.concatenate(curves))
    k = int(np.argmax(acc))
    return {
        "box_threshold": round(float(wsol.THRESHOLDS[k]), 4),
        "selection_box_acc": round(float(acc[k]), 4),
    }


def calibrate(
    explainer: Explainer,
    anns: list[wsol.Annotation],
    whole: str,
    ancestors: list[str],
    selection: np.ndarray,
    size: int,
    upsample: str = "cubic",
    batch_size: int = 32,
    progress: bool = False,
) -> dict:
    """The box threshold of the head, chosen on the ``selection`` images only: the protocol's threshold
    with the best GT-known box accuracy of the served maps, ``whole`` and ancestor images pooled.
    Returns ``{"box_threshold", "selection_box_acc", "images", "rule"}`` (and each kind's best alone)."""
    sel = [anns[i] for i in selection]
    got = served(explainer, sel, whole, [ancestors[i] for i in selection], batch_size, progress)
    curves = threshold_curves(got, sel, size, upsample)
    return {
        **best_threshold(list(curves.values())),
        "images": int(len(sel)),
        "alone": {k: best_threshold([c]) for k, c in curves.items()},
        "rule": "best GT-known box accuracy of the served whole and ancestor maps on the WSOL dev set's "
        "selection half (wsolevaluation's thresholds)",
    }

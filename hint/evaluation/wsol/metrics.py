"""Weakly supervised object localisation (WSOL) metrics, as in wsolevaluation (Choe et al., CVPR 2020).

Metrics only: this module knows score maps, boxes and splits, not models or concept banks (the
evaluation that makes the maps is :mod:`hint.evaluation.wsol.run`).

Score maps are (H, W) float arrays in [0, 1] in the pixel space of the ground-truth boxes: a
low-resolution map is upsampled (bilinear or bicubic, :func:`score_map`) and min-max normalised.
wsolevaluation evaluates at the network input (224 × 224, the image squashed) with GT boxes
resized by :func:`resize_bbox` (``int()`` of the scaled coordinates). For every score-map threshold τ in
:data:`THRESHOLDS` (``np.arange(0, 1, 0.01)``) the map is quantised as wsolevaluation does
(``uint8(map * 255)``, foreground where the value is > ``int(τ · max)``), boxes are read off its contours
(OpenCV ``RETR_TREE``, :func:`hint.boxes.contour_rects`; ``x1``/``y1`` clipped to
``W - 1``/``H - 1``; ``[0, 0, 0, 0]`` when nothing passes) and compared with every GT box of the image
(IoU with the +1 pixel convention, :func:`multiple_iou`).

Per image and τ this keeps two numbers: the best IoU of the *largest* contour's box against any GT
box (GT-known Loc, Top-1 Loc, MaxBoxAcc) and the best IoU over *all* contours' boxes against any GT
box (MaxBoxAccV2). The metrics (fractions in [0, 1]):

* ``MaxBoxAcc``: max over τ of the share of images with IoU ≥ 0.5 (largest contour).
* ``MaxBoxAccV2``: mean over δ ∈ {0.3, 0.5, 0.7} of the max over τ of the share of images whose
  best box over all contours has IoU ≥ δ.
* ``GT-known Loc``: the share of images with IoU ≥ 0.5 at one operating τ, chosen as the τ of the
  highest box accuracy on a separate *selection* split (never the test images).
* ``Top-1 Loc``: GT-known Loc and the top-1 class is right. For a class-conditional map (CAM) made for
  the ground-truth class this equals Top-1 Loc with the map of the predicted class: both classes are
  the same wherever the prediction is right.

Also the pointing game (the map's maximum falls inside a GT box) and the mean IoU at the operating τ.
:func:`write_metadata` and :func:`export_scoremap` write wsolevaluation's metadata and score-map layout.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hint._utils import stats
from hint.boxes import contour_rects, normalise_minmax, upsample_map
from hint.hierarchy import Hierarchy

THRESHOLDS = np.arange(0, 1, 0.01)  # wsolevaluation's cam_curve_interval = 0.01
IOU_THRESHOLDS = (30, 50, 70)  # MaxBoxAccV2's δ, in percent
IOU_LOC = 0.5  # GT-known Loc / MaxBoxAcc


# ------------------------------------------------------------------------------------------ annotations


@dataclass
class Annotation:
    image_id: str  # the CSV's ``file`` (wsolevaluation's image id; the .npy is named ``image_id + ".npy"``)
    path: Path
    wnid: str
    label: int
    width: int
    height: int
    boxes: np.ndarray  # (K, 4) int x0 y0 x1 y1, stored-image pixels (truncated as wsolevaluation does)
    boxes_float: np.ndarray  # (K, 4) as given


def parse_boxes(text: str) -> np.ndarray:
    """``"x0 y0 x1 y1;x0 y0 x1 y1"`` → (K, 4) float64."""
    rows = [r.split() for r in str(text).split(";") if r.strip()]
    if not rows or any(len(r) != 4 for r in rows):
        raise ValueError(f"bad boxes_xyxy {text!r}: expected 'x0 y0 x1 y1;...'")
    b = np.asarray(rows, dtype=np.float64)
    if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise ValueError(f"bad boxes_xyxy {text!r}: x1 < x0 or y1 < y0")
    return b


def gt_boxes_int(boxes: np.ndarray) -> np.ndarray:
    """Integer GT boxes: truncation, as wsolevaluation's ``resize_bbox`` does (``int(x)``)."""
    return np.trunc(np.asarray(boxes, dtype=np.float64)).astype(np.int64).reshape(-1, 4)


def resize_bbox(boxes: np.ndarray, image_size: tuple[int, int], resize_size: tuple[int, int]) -> np.ndarray:
    """(K, 4) x0 y0 x1 y1 boxes of a (W, H) image → int64 boxes of the image resized to ``resize_size``:
    wsolevaluation's ``resize_bbox`` (each coordinate scaled, then ``int()``), vectorised."""
    w, h = (float(v) for v in image_size)
    nw, nh = (float(v) for v in resize_size)
    scale = np.array([nw / w, nh / h, nw / w, nh / h])
    return gt_boxes_int(np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale)


def load_annotations(
    csv_path: str | Path, data_dir: str | Path | None = None, hierarchy: Hierarchy | None = None
) -> list[Annotation]:
    """Rows of ``file,wnid,label_index,...,width,height,...,boxes_xyxy``; files relative to ``data_dir``
    (or its ``images/`` folder, or the CSV's folder). ValueError on a bad row or a label that
    disagrees with the WNID; FileNotFoundError for a missing image."""
    h = hierarchy or Hierarchy.load()
    index = {w: i for i, w in enumerate(h.classes)}
    csv_path = Path(csv_path)
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"file", "wnid", "boxes_xyxy"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise ValueError(f"{csv_path}: needs columns {', '.join(sorted(need))}")
        rows = list(reader)
    root = Path(data_dir) if data_dir is not None else csv_path.parent
    out = []
    for n, r in enumerate(rows, start=2):
        wnid = r["wnid"].strip()
        if wnid not in index:
            raise ValueError(f"{csv_path}:{n}: unknown WNID {wnid!r}")
        label = index[wnid]
        if r.get("label_index") not in (None, "") and int(r["label_index"]) != label:
            raise ValueError(
                f"{csv_path}:{n}: label_index {r['label_index']} is not the index of {wnid} ({label})"
            )
        path = _find_image(root, r["file"])
        try:
            boxes = parse_boxes(r["boxes_xyxy"])
        except ValueError as e:
            raise ValueError(f"{csv_path}:{n}: {e}") from None
        w, hh = int(r.get("width") or 0), int(r.get("height") or 0)
        out.append(Annotation(r["file"], path, wnid, label, w, hh, gt_boxes_int(boxes), boxes))
    return out


def _find_image(root: Path, name: str) -> Path:
    for base in (root, root / "images"):
        p = base / name
        if p.is_file():
            return p
    raise FileNotFoundError(2, "no such image", str(root / name))


def split_indices(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(selection, test) image indices: a seeded random half for choosing the operating threshold
    (wsolevaluation's ``train-fullsup`` role) and the rest for reporting. Both sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return np.sort(perm[:half]), np.sort(perm[half:])


# -------------------------------------------------------------------------------------- maps and boxes


def score_map(raw: np.ndarray, width: int, height: int, upsample: str = "bilinear") -> np.ndarray:
    """A low-resolution map → (height, width) float32 in [0, 1]: resize (``bilinear`` or ``cubic``,
    wsolevaluation's ``cv2.INTER_CUBIC``), then min-max (a flat map becomes zeros)."""
    return normalise_minmax(upsample_map(raw, width, height, upsample))


def quantise(scoremap: np.ndarray) -> np.ndarray:
    """wsolevaluation's ``(scoremap * 255).astype(np.uint8)``."""
    return (np.asarray(scoremap, dtype=np.float32) * 255).astype(np.uint8)


def threshold_mask(q: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels of the quantised map above ``int(threshold · max)`` (``cv2.THRESH_BINARY``), uint8 0/1."""
    return (q > int(threshold * int(q.max()))).view(np.uint8)


def _clip(rects: np.ndarray, width: int, height: int) -> np.ndarray:
    """(x, y, w, h) rects → x0 y0 x1 y1 with ``x1 = min(x + w, W - 1)``, ``y1 = min(y + h, H - 1)``."""
    r = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    return np.stack(
        [
            r[:, 0],
            r[:, 1],
            np.minimum(r[:, 0] + r[:, 2], width - 1),
            np.minimum(r[:, 1] + r[:, 3], height - 1),
        ],
        1,
    )


def contour_boxes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(box of the largest contour (4,), boxes of all contours (K, 4)) of a 0/1 mask, int64 x0 y0 x1 y1.

    The contours of :func:`hint.boxes.contour_rects` (``RETR_TREE``, ``CHAIN_APPROX_SIMPLE``); "largest" by
    ``cv2.contourArea``, first one on ties;
    ``x1``/``y1`` = ``x + w``/``y + h`` clipped to ``W - 1``/``H - 1`` (wsolevaluation). An empty mask
    gives the degenerate box ``[0, 0, 0, 0]`` for both.
    """
    rects, big = contour_rects(np.ascontiguousarray(mask, dtype=np.uint8))
    boxes = _clip(rects, mask.shape[1], mask.shape[0])
    return boxes[big], boxes


def multiple_iou(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(A, B) IoU of boxes (A, 4) against GT boxes (B, 4), x0 y0 x1 y1, as wsolevaluation computes it: the
    +1 pixel convention (a box covers x0..x1 inclusive) and a non-positive union giving 0."""
    a = np.asarray(boxes, dtype=np.float64).reshape(-1, 1, 4)
    g = np.asarray(gt, dtype=np.float64).reshape(1, -1, 4)
    iw = np.clip(np.minimum(a[..., 2], g[..., 2]) - np.maximum(a[..., 0], g[..., 0]) + 1, 0, None)
    ih = np.clip(np.minimum(a[..., 3], g[..., 3]) - np.maximum(a[..., 1], g[..., 1]) + 1, 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_g = (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1)
    union = area_a + area_g - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def image_ious(scoremap: np.ndarray, gt: np.ndarray, thresholds: np.ndarray = THRESHOLDS):
    """Per threshold: (best IoU of the largest-contour box vs any GT box, best IoU of any contour box vs
    any GT box, the largest-contour boxes (T, 4)). ``scoremap`` in [0, 1] at the GT boxes' pixel size."""
    q = quantise(scoremap)
    qmax = int(q.max())
    rects, counts, big = [], [], []
    for t in thresholds:
        r, b = contour_rects((q > int(t * qmax)).view(np.uint8))
        big.append(len(rects) + b)
        rects += r
        counts.append(len(r))
    boxes = _clip(rects, q.shape[1], q.shape[0])
    ious = multiple_iou(boxes, gt).max(1)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    return ious[big], np.maximum.reduceat(ious, starts), boxes[big]


def pointing_hit(scoremap: np.ndarray, gt: np.ndarray) -> bool:
    """Pointing game: the map's maximum (first pixel on ties) lies inside a GT box (borders included)."""
    y, x = np.unravel_index(int(np.argmax(scoremap)), scoremap.shape)
    g = np.asarray(gt).reshape(-1, 4)
    return bool(((g[:, 0] <= x) & (x <= g[:, 2]) & (g[:, 1] <= y) & (y <= g[:, 3])).any())


# ----------------------------------------------------------------------------------------------- metrics


@dataclass
class MethodScores:
    """Per-image results of one score-map method over a dataset."""

    iou_largest: np.ndarray  # (N, T)
    iou_all: np.ndarray  # (N, T)
    pointing: np.ndarray  # (N,) bool

    @classmethod
    def empty(cls, n: int, t: int = len(THRESHOLDS)) -> MethodScores:
        return cls(np.zeros((n, t), np.float32), np.zeros((n, t), np.float32), np.zeros(n, bool))

    def add(self, i: int, scoremap: np.ndarray, gt: np.ndarray, thresholds: np.ndarray = THRESHOLDS):
        big, every, largest = image_ious(scoremap, gt, thresholds)
        self.iou_largest[i], self.iou_all[i], self.pointing[i] = big, every, pointing_hit(scoremap, gt)
        return largest


def box_accuracy(ious: np.ndarray, delta: float = IOU_LOC) -> np.ndarray:
    """(T,) share of images whose IoU at each threshold is ≥ δ (``ious`` (N, T))."""
    return (np.asarray(ious) >= delta).mean(0)


def max_box_acc(iou_largest: np.ndarray, delta: float = IOU_LOC) -> float:
    return float(box_accuracy(iou_largest, delta).max())


def max_box_acc_v2(iou_all: np.ndarray, deltas=IOU_THRESHOLDS) -> tuple[float, dict[int, float]]:
    """(MaxBoxAccV2, {δ: max over thresholds of the box accuracy at IoU δ}) from all-contour IoUs."""
    per = {int(d): float(box_accuracy(iou_all, d / 100).max()) for d in deltas}
    return float(np.mean(list(per.values()))), per


def select_threshold(iou_largest_selection: np.ndarray, delta: float = IOU_LOC) -> int:
    """Index of the threshold with the highest box accuracy on the selection split (lowest on ties)."""
    return int(np.argmax(box_accuracy(iou_largest_selection, delta)))


def localization_metrics(
    scores: MethodScores,
    correct: np.ndarray,
    selection: np.ndarray,
    test: np.ndarray,
    thresholds: np.ndarray = THRESHOLDS,
) -> dict:
    """All metrics of one method on the ``test`` indices, the operating threshold chosen on ``selection``."""
    k = select_threshold(scores.iou_largest[selection])
    t_big, t_all = scores.iou_largest[test], scores.iou_all[test]
    hit = t_big[:, k] >= IOU_LOC
    v2, per = max_box_acc_v2(t_all)
    return {
        "gt_known_loc": float(hit.mean()),
        "top1_loc": float((hit & np.asarray(correct)[test]).mean()),
        "max_box_acc": max_box_acc(t_big),
        "max_box_acc_v2": v2,
        "max_box_acc_v2_per_iou": per,
        "threshold": round(float(thresholds[k]), 4),
        "selection_box_acc": float((scores.iou_largest[selection][:, k] >= IOU_LOC).mean()),
        "mean_iou": float(t_big[:, k].mean()),
        "pointing_game": float(scores.pointing[test].mean()),
        "top1_cls": float(np.asarray(correct)[test].mean()),
        "n_test": int(len(test)),
        "n_selection": int(len(selection)),
    }


def bootstrap_metrics(
    scores: MethodScores, correct: np.ndarray, test: np.ndarray, threshold_index: int, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Each metric over the bootstrap resamples of the test images (``weights`` from
    :func:`hint._utils.stats.bootstrap_weights`; the operating threshold stays the one chosen on the selection split).
    Using the same weights for two methods gives paired differences."""
    n = len(test)
    big, every = scores.iou_largest[test], scores.iou_all[test]
    hit = big[:, threshold_index] >= IOU_LOC
    out = {
        "gt_known_loc": weights @ hit / n,
        "top1_loc": weights @ (hit & np.asarray(correct)[test]) / n,
        "max_box_acc": (weights @ (big >= IOU_LOC)).max(1) / n,
        "max_box_acc_v2": np.mean([(weights @ (every >= d / 100)).max(1) / n for d in IOU_THRESHOLDS], 0),
        "pointing_game": weights @ scores.pointing[test] / n,
        "mean_iou": weights @ big[:, threshold_index].astype(np.float64) / n,
    }
    return out


def ci95(samples: np.ndarray) -> list[float]:
    """The evaluation's 95 % bootstrap interval of ``samples`` (B,): :func:`hint._utils.stats.ci95` to 5 decimals."""
    return stats.ci95(samples, digits=5)


# ------------------------------------------------------------------------------------- export (npy)


def export_scoremap(folder: str | Path, image_id: str, scoremap: np.ndarray) -> Path:
    """wsolevaluation's layout: ``folder / (image_id + ".npy")``, float32 in [0, 1] at the image size."""
    p = Path(folder) / f"{image_id}.npy"
    p.parent.mkdir(parents=True, exist_ok=True)
    np.save(p, np.asarray(scoremap, dtype=np.float32))
    return p


def write_metadata(
    folder: str | Path,
    image_ids: list[str],
    labels: list[int],
    size: tuple[int, int],
    boxes: list[np.ndarray],
) -> Path:
    """One split's metadata in wsolevaluation's format (its ``data_loaders`` reads it): ``image_ids.txt``
    (``id``), ``class_labels.txt`` (``id,label``), ``image_sizes.txt`` (``id,W,H``) and
    ``localization.txt`` (``id,x0,y0,x1,y1``, one line per GT box, integers).

    ``size`` is the (W, H) of the score maps and ``boxes`` are integer boxes in that space, so
    wsolevaluation's ``resize_bbox`` to 224 × 224 is the identity when the maps are 224 × 224.
    """
    bad = [i for i in image_ids if "," in i or "\n" in i]
    if bad:
        raise ValueError(f"image id {bad[0]!r}: wsolevaluation's metadata cannot hold ',' or newlines")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    (folder / "image_ids.txt").write_text("".join(f"{i}\n" for i in image_ids))
    (folder / "class_labels.txt").write_text(
        "".join(f"{i},{int(c)}\n" for i, c in zip(image_ids, labels, strict=True))
    )
    (folder / "image_sizes.txt").write_text("".join(f"{i},{int(w)},{int(h)}\n" for i in image_ids))
    lines = []
    for i, bx in zip(image_ids, boxes, strict=True):
        b = np.asarray(bx)
        if not np.issubdtype(b.dtype, np.integer) or (b < 0).any():
            raise ValueError(f"{i}: boxes must be non-negative integers, got {b.tolist()}")
        lines += [f"{i},{','.join(str(int(v)) for v in row)}\n" for row in b.reshape(-1, 4)]
    (folder / "localization.txt").write_text("".join(lines))
    return folder

"""Weakly supervised object localisation from score maps (boxes as in wsolevaluation, Choe et al. 2020)."""

from __future__ import annotations

import math

import cv2
import numpy as np


def resize_map(score_map: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a (h, w) map to (height, width) pixels, float32."""
    return cv2.resize(np.asarray(score_map, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


#: Upsampling of low-resolution maps: OpenCV interpolation by name (``cubic``: wsolevaluation's inference).
UPSAMPLING = {"bilinear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def upsample_map(score_map: np.ndarray, width: int, height: int, mode: str = "bilinear") -> np.ndarray:
    """Resize a (h, w) map to (height, width) pixels, float32, with :data:`UPSAMPLING` ``mode``."""
    if mode not in UPSAMPLING:
        raise ValueError(f"unknown upsampling {mode!r}; choose from {', '.join(UPSAMPLING)}")
    return cv2.resize(np.asarray(score_map, dtype=np.float32), (width, height), interpolation=UPSAMPLING[mode])


def normalise_minmax(score_map: np.ndarray) -> np.ndarray:
    """wsolevaluation's ``normalize_scoremap``: (m − min) / (max − min), zeros when flat or NaN."""
    m = np.asarray(score_map, dtype=np.float32)
    if np.isnan(m).any():
        return np.zeros_like(m)
    lo, hi = m.min(), m.max()
    if hi == lo:
        return np.zeros_like(m)
    return (m - lo) / (hi - lo)


def boxes_at(score_map: np.ndarray, threshold: float, all_contours: bool = False) -> list[list[int]]:
    """Boxes ``[x0, y0, x1, y1]`` around the contours of ``score_map >= threshold``.

    The largest contour only (the default; GT-known Loc / MaxBoxAcc), or every contour
    (MaxBoxAccV2's multi-contour variant). Empty mask → a list with the degenerate box [0, 0, 0, 0].
    """
    mask = (np.asarray(score_map) >= threshold).astype(np.uint8)
    contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return [[0, 0, 0, 0]]
    if not all_contours:
        contours = [max(contours, key=cv2.contourArea)]
    out = []
    for c in contours:
        x, y, w, h = cv2.boundingRect(c)
        out.append([int(x), int(y), int(x + w), int(y + h)])
    return out


def box_from_map(score_map: np.ndarray, width: int, height: int, threshold: float) -> tuple[list[int] | None, float]:
    """The largest region where the (h, w) map, resized to the image, is ≥ ``threshold``.

    Returns (box in the image's pixels or None when no pixel passes, area fraction of passing pixels).
    A map whose maximum is below the threshold has no passing pixel once resized (bilinear values are
    convex combinations), so it is not resized at all.
    """
    if float(np.max(score_map)) < threshold - 1e-6:
        return None, 0.0
    return largest_box(resize_map(score_map, width, height) >= threshold)


def largest_box(passing: np.ndarray) -> tuple[list[int] | None, float]:
    """(box ``[x0, y0, x1, y1]`` around the largest contour of a bool (H, W) mask, or None when it is
    empty; the share of True pixels)."""
    count = int(np.count_nonzero(passing))
    if not count:
        return None, 0.0
    contours = cv2.findContours(passing.view(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    return [int(x), int(y), int(x + w), int(y + h)], count / passing.size


def scale_box(box: list[int], grid: tuple[int, int], size: tuple[int, int]) -> list[int]:
    """A box on a (W, H) ``grid`` → the smallest integer box covering it on an image of ``size`` (W, H)."""
    if tuple(grid) == tuple(size):
        return box
    sx, sy = size[0] / grid[0], size[1] / grid[1]
    return [int(math.floor(box[0] * sx)), int(math.floor(box[1] * sy)), min(size[0], int(math.ceil(box[2] * sx))),
            min(size[1], int(math.ceil(box[3] * sy)))]  # fmt: skip


def iou(box: list[float] | np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box against (K, 4) boxes, as wsolevaluation computes it (+1 pixel convention)."""
    b = np.asarray(box, dtype=np.float64)
    g = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ix0, iy0 = np.maximum(b[0], g[:, 0]), np.maximum(b[1], g[:, 1])
    ix1, iy1 = np.minimum(b[2], g[:, 2]), np.minimum(b[3], g[:, 3])
    inter = np.clip(ix1 - ix0 + 1, 0, None) * np.clip(iy1 - iy0 + 1, 0, None)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    area_g = (g[:, 2] - g[:, 0] + 1) * (g[:, 3] - g[:, 1] + 1)
    return inter / (area_b + area_g - inter)

"""Weakly supervised object localisation from score maps (boxes as in wsolevaluation, Choe et al. 2020)."""

from __future__ import annotations

import math

import cv2
import numpy as np


def resize_map(score_map: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a (h, w) map to (height, width) pixels, float32."""
    return cv2.resize(
        np.asarray(score_map, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR
    )


#: Upsampling of low-resolution maps: OpenCV interpolation by name (``cubic``: wsolevaluation's inference).
UPSAMPLING = {"bilinear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def upsample_map(score_map: np.ndarray, width: int, height: int, mode: str = "bilinear") -> np.ndarray:
    """Resize a (h, w) map to (height, width) pixels, float32, with :data:`UPSAMPLING` ``mode``."""
    if mode not in UPSAMPLING:
        raise ValueError(f"unknown upsampling {mode!r}; choose from {', '.join(UPSAMPLING)}")
    return cv2.resize(
        np.asarray(score_map, dtype=np.float32), (width, height), interpolation=UPSAMPLING[mode]
    )


def normalise_minmax(score_map: np.ndarray) -> np.ndarray:
    """wsolevaluation's ``normalize_scoremap``: (m − min) / (max − min), zeros when flat or NaN."""
    m = np.asarray(score_map, dtype=np.float32)
    if np.isnan(m).any():
        return np.zeros_like(m)
    lo, hi = m.min(), m.max()
    if hi == lo:
        return np.zeros_like(m)
    return (m - lo) / (hi - lo)


def contour_rects(mask: np.ndarray) -> tuple[list[tuple[int, int, int, int]], int]:
    """The contours of a mask as wsolevaluation reads them: one ``cv2.findContours`` call (``RETR_TREE``,
    ``CHAIN_APPROX_SIMPLE``), each contour's ``cv2.boundingRect``.

    Args:
        mask: (H, W) uint8 0/1 mask (C-contiguous).

    Returns:
        (rects ``(x, y, w, h)`` in contour order, index of the largest by ``cv2.contourArea``, the first on
        ties); ``[(0, 0, 0, 0)], 0`` for an empty mask.
    """
    contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return [(0, 0, 0, 0)], 0
    rects = [cv2.boundingRect(c) for c in contours]
    if len(contours) == 1:
        return rects, 0
    areas = [cv2.contourArea(c) for c in contours]
    return rects, areas.index(max(areas))


def box_from_map(
    score_map: np.ndarray, width: int, height: int, threshold: float
) -> tuple[list[int] | None, float]:
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
    rects, largest = contour_rects(passing.view(np.uint8))
    x, y, w, h = rects[largest]
    return [int(x), int(y), int(x + w), int(y + h)], count / passing.size


def scale_box(box: list[int], grid: tuple[int, int], size: tuple[int, int]) -> list[int]:
    """A box on a (W, H) ``grid`` → the smallest integer box covering it on an image of ``size`` (W, H)."""
    if tuple(grid) == tuple(size):
        return box
    sx, sy = size[0] / grid[0], size[1] / grid[1]
    return [
        int(math.floor(box[0] * sx)),
        int(math.floor(box[1] * sy)),
        min(size[0], int(math.ceil(box[2] * sx))),
        min(size[1], int(math.ceil(box[3] * sy))),
    ]

"""Overlays for the app: a concept's score map upsampled onto the image, coloured, alpha-blended,
with its WSOL box and a label — numpy, OpenCV and PIL only.

Maps are concept probabilities in [0, 1] (the bank's sigmoid), drawn on that absolute scale (not
min–max normalised) so that two overlays, e.g. before and after an ablation, compare directly.
Boxes come in the ORIGINAL image's pixels ``[x0, y0, x1, y1]`` and are rescaled to the drawn size.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

BOX_COLOR = (255, 0, 255)  # magenta: not in the JET colour map, so the box stands out on any heat map
LABEL_TEXT = (255, 255, 255)
DISPLAY_MAX_SIDE = 640


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PIL image or an array (grey, RGB, RGBA; float in [0, 1] or uint8)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(a * 255.0 if a.max() <= 1.0 else a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.shape[-1] == 4:
        a = a[..., :3]
    return np.ascontiguousarray(a)


def fit(image: Image.Image | np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """The image as RGB uint8, downscaled (area interpolation) so that its longer side is ≤ max_side."""
    a = to_rgb_array(image)
    h, w = a.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return a
    return cv2.resize(a, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def heatmap(score_map: np.ndarray, width: int, height: int, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """(height, width, 3) uint8 RGB: the map smoothly upsampled (bicubic, as the service's boxes), values
    clipped to [0, 1], coloured."""
    m = cv2.resize(np.asarray(score_map, dtype=np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    m8 = (np.clip(m, 0.0, 1.0) * 255).round().astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(m8, colormap), cv2.COLOR_BGR2RGB)


def scale_box(box, original_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box in original (width, height) pixels -> integer pixels of an image of ``size`` (w, h), clipped."""
    (ow, oh), (w, h) = original_size, size
    sx, sy = w / max(ow, 1), h / max(oh, 1)
    x0, y0, x1, y1 = (float(v) for v in box)
    return (
        int(np.clip(round(x0 * sx), 0, w - 1)),
        int(np.clip(round(y0 * sy), 0, h - 1)),
        int(np.clip(round(x1 * sx), 0, w - 1)),
        int(np.clip(round(y1 * sy), 0, h - 1)),
    )


def line_width(size: tuple[int, int]) -> int:
    return max(2, round(min(size) / 120))


@lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def draw_label(
    rgb: np.ndarray, text: str, xy: tuple[int, int], color=BOX_COLOR, above: bool = False
) -> np.ndarray:
    """``text`` on a filled ``color`` tag whose top-left corner is at xy, or with ``above`` whose
    bottom-left corner is there when it fits (a tag on top of a box); always moved inside the image."""
    h, w = rgb.shape[:2]
    im = Image.fromarray(rgb)
    d = ImageDraw.Draw(im)
    font = _font(max(12, round(min(h, w) / 15)))
    left, top, right, bottom = d.textbbox((0, 0), text, font=font)
    pad = max(2, (bottom - top) // 5)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x = int(np.clip(xy[0], 0, max(0, w - tw)))
    y = xy[1] - th if above and xy[1] - th >= 0 else xy[1]
    y = int(np.clip(y, 0, max(0, h - th)))
    d.rectangle([x, y, x + tw - 1, y + th - 1], fill=color)
    d.text((x + pad - left, y + pad - top), text, fill=LABEL_TEXT, font=font)
    return np.asarray(im).copy()


def overlay(
    image: Image.Image | np.ndarray,
    score_map: np.ndarray | None = None,
    box: list[int] | tuple[int, int, int, int] | None = None,
    label: str | None = None,
    *,
    original_size: tuple[int, int] | None = None,
    alpha: float = 0.5,
    box_color: tuple[int, int, int] = BOX_COLOR,
    colormap: int = cv2.COLORMAP_JET,
) -> np.ndarray:
    """The image with a concept's heat map blended in (``alpha`` of the colour map), its box and a label.

    ``image`` is drawn at its own size; ``box`` is in ``original_size`` pixels (width, height;
    default: the image's own size) and is rescaled. Returns (H, W, 3) uint8 RGB.
    """
    rgb = to_rgb_array(image)
    h, w = rgb.shape[:2]
    if score_map is not None:
        heat = heatmap(score_map, w, h, colormap)
        out = np.ascontiguousarray(cv2.addWeighted(rgb, 1.0 - alpha, heat, alpha, 0.0))
    else:
        out = rgb.copy()  # never draw on the caller's array
    lw = line_width((w, h))
    if box is not None:
        x0, y0, x1, y1 = scale_box(box, original_size or (w, h), (w, h))
        cv2.rectangle(out, (x0, y0), (x1, y1), box_color, lw)
        if label:
            out = draw_label(out, label, (x0 - lw // 2, y0 - lw // 2), box_color, above=True)
    elif label:
        out = draw_label(out, label, (0, 0), (90, 90, 90))
    return out


def side_by_side(images: list[np.ndarray], gap: int = 8, background: int = 255) -> np.ndarray:
    """Images of any sizes in one row (top-aligned, ``gap`` pixels apart), RGB uint8."""
    arrays = [to_rgb_array(a) for a in images]
    h = max(a.shape[0] for a in arrays)
    w = sum(a.shape[1] for a in arrays) + gap * (len(arrays) - 1)
    out = np.full((h, w, 3), background, np.uint8)
    x = 0
    for a in arrays:
        out[: a.shape[0], x : x + a.shape[1]] = a
        x += a.shape[1] + gap
    return out


KEPT_COLOR = "#4c78a8"
REMOVED_COLOR = "#e45756"


def _bar_axes(values: list[float], colors: list[str], ylabel: str, xlabel: str, title: str | None, **bar):
    """(figure, axes) with ``values`` as bars in the house frame (``bar``: more ``Axes.bar`` arguments)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(values)), values, color=colors, width=0.8, **bar)
    ax.set_xlim(-0.6, max(len(values), 1) - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig, ax


def neuron_bars(neurons: list[dict], removed: int = 0, title: str | None = None):
    """A matplotlib Figure: the neurons' Shapley values as bars (± their standard error), the first
    ``removed`` ones in red. Built without pyplot, so nothing is kept after it is drawn."""
    from matplotlib.patches import Patch

    labels = [f"#{n['neuron']}" for n in neurons]
    values = [float(n["shapley"]) for n in neurons]
    errors = [float(n.get("shapley_se", 0.0)) for n in neurons]
    colors = [REMOVED_COLOR if i < removed else KEPT_COLOR for i in range(len(neurons))]
    fig, ax = _bar_axes(
        values,
        colors,
        "Shapley value",
        "neuron (largest Shapley value first)",
        title,
        yerr=errors,
        ecolor="#333333",
        capsize=2,
    )
    ax.set_xticks(range(len(values)), labels, rotation=60, fontsize=8)
    if removed:
        ax.legend(
            handles=[
                Patch(color=REMOVED_COLOR, label=f"removed (top {removed})"),
                Patch(color=KEPT_COLOR, label="kept"),
            ],
            fontsize=8,
            frameon=False,
        )
    return fig


POSITIVE_COLOR = "#54a24b"  # a neuron that raises the concept's probe logit on this image
NEGATIVE_COLOR = "#b279a2"  # one that lowers it


def image_neuron_bars(neurons: list[dict], removed: int = 0, title: str | None = None):
    """A matplotlib Figure: this image's signed Shapley values (``image_neurons``), green when the neuron
    raises the concept's probe logit here, purple when it lowers it, the first ``removed`` in red; each
    tick reads ``#neuron`` over ``g<global rank>`` (its rank in the bank's global table)."""
    from matplotlib.patches import Patch

    values = [float(n["signed"]) for n in neurons]
    labels = [f"#{n['neuron']}\ng{n.get('global_rank', '?')}" for n in neurons]
    colors = [
        REMOVED_COLOR if i < removed else POSITIVE_COLOR if v >= 0 else NEGATIVE_COLOR
        for i, v in enumerate(values)
    ]
    fig, ax = _bar_axes(
        values,
        colors,
        "signed Shapley value (this image)",
        "neuron, g = its rank in the bank's global table",
        title,
    )
    ax.axhline(0, color="#333333", linewidth=0.8)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    handles = [
        Patch(color=POSITIVE_COLOR, label="raises the concept here"),
        Patch(color=NEGATIVE_COLOR, label="lowers it"),
    ]
    if removed:
        handles.append(Patch(color=REMOVED_COLOR, label=f"removed (top {removed})"))
    ax.legend(handles=handles, fontsize=8, frameon=False)
    return fig

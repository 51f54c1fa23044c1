"""app/drawing.py: overlay shape, colours, box pixels in the right place (and rescaled), labels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.drawing import BOX_COLOR, fit, heatmap, line_width, overlay, scale_box, side_by_side, to_rgb_array


def is_box(px) -> bool:
    return tuple(int(v) for v in px) == BOX_COLOR


def test_overlay_shape_and_dtype():
    im = np.full((90, 160, 3), 128, np.uint8)
    m = np.random.default_rng(0).random((14, 14))
    out = overlay(im, m, [10, 10, 100, 60], "feline 0.99")
    assert out.shape == (90, 160, 3) and out.dtype == np.uint8
    assert not np.shares_memory(out, im)
    assert (im == 128).all(), "the input image is left as it was"


def test_box_pixels_drawn_in_the_right_place():
    im = np.zeros((100, 200, 3), np.uint8)
    x0, y0, x1, y1 = 20, 10, 120, 70
    out = overlay(im, None, [x0, y0, x1, y1])
    assert (im == 0).all(), "drawn on a copy"
    for y, x in [(y0, 70), (y1, 70), (40, x0), (40, x1), (y0, x0), (y1, x1)]:  # edges and corners
        assert is_box(out[y, x]), (y, x, out[y, x])
    assert (out[40, 70] == 0).all(), "inside the box stays as it was"
    assert (out[90, 180] == 0).all() and (out[5, 5] == 0).all(), "outside the box stays as it was"
    mask = (out == BOX_COLOR).all(-1)
    ys, xs = np.nonzero(mask)
    lw = line_width((200, 100))
    assert xs.min() >= x0 - lw and xs.max() <= x1 + lw and ys.min() >= y0 - lw and ys.max() <= y1 + lw


def test_box_is_rescaled_from_original_pixels():
    small = np.zeros((50, 100, 3), np.uint8)  # drawn at half the original 200 x 100
    out = overlay(small, None, [40, 20, 160, 80], original_size=(200, 100))
    assert is_box(out[10, 50]) and is_box(out[40, 50]) and is_box(out[25, 20]) and is_box(out[25, 80])
    assert (out[25, 50] == 0).all()
    assert scale_box([0, 0, 400, 200], (200, 100), (100, 50)) == (0, 0, 99, 49), "clipped to the image"


def test_label_tag_sits_on_the_box():
    im = np.zeros((200, 300, 3), np.uint8)
    out = overlay(im, None, [50, 80, 250, 190], "animal 0.99")
    tag = out[40:80, 50:200]
    assert (tag == BOX_COLOR).all(-1).sum() > 200, "a filled tag in the box colour just above the box"
    assert (tag == 255).all(-1).sum() > 20, "white text on it"
    no_box = overlay(im, None, None, "absent")
    assert (no_box[:30, :80] != 0).any(), "the label alone goes top-left"
    assert not (no_box == BOX_COLOR).all(-1).any()


def test_heatmap_colours_follow_the_map():
    m = np.zeros((14, 14), np.float32)
    m[:7, :7] = 1.0  # top-left hot
    h = heatmap(m, 140, 70)
    assert h.shape == (70, 140, 3)
    r, g, b = (int(v) for v in h[5, 5])
    assert r > 100 and b < 60, "1.0 → red end of the colour map"
    r, g, b = (int(v) for v in h[65, 135])
    assert b > 100 and r < 60, "0.0 → blue end"


def test_alpha_blend():
    im = np.full((60, 60, 3), 200, np.uint8)
    m = np.ones((14, 14))
    assert (overlay(im, m, alpha=0.0) == im).all()
    full = overlay(im, m, alpha=1.0)
    assert (full == heatmap(m, 60, 60)).all()
    half = overlay(im, m, alpha=0.5).astype(int)
    expect = (im.astype(int) + heatmap(m, 60, 60).astype(int)) / 2
    assert np.abs(half - expect).max() <= 1


def test_fit_and_inputs():
    big = Image.new("RGB", (1600, 800), (1, 2, 3))
    a = fit(big, 640)
    assert a.shape == (320, 640, 3)
    small = np.zeros((10, 20, 3), np.uint8)
    assert fit(small, 640).shape == (10, 20, 3)
    assert to_rgb_array(np.zeros((5, 6))).shape == (5, 6, 3)
    assert to_rgb_array(np.zeros((5, 6, 4), np.uint8)).shape == (5, 6, 3)
    assert to_rgb_array(np.ones((2, 2, 3), np.float32)).max() == 255


@pytest.mark.parametrize("gap", [0, 8])
def test_side_by_side(gap):
    out = side_by_side([np.zeros((10, 20, 3), np.uint8), np.zeros((30, 5, 3), np.uint8)], gap=gap)
    assert out.shape == (30, 25 + gap, 3)


def count(fig, hex_colour: str) -> int:
    """Pixels of a drawn matplotlib figure within 6 levels of a colour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    a = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    want = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    return int((np.abs(a - want).sum(-1) <= 6).sum())


def test_neuron_bars_colours_the_removed_ones():
    from app.drawing import KEPT_COLOR, REMOVED_COLOR, neuron_bars

    neurons = [{"neuron": n, "shapley": 0.1 - n / 200, "shapley_se": 0.002} for n in range(10)]

    none = neuron_bars(neurons, 0, "feline")
    assert count(none, REMOVED_COLOR) == 0 and count(none, KEPT_COLOR) > 1000
    three = neuron_bars(neurons, 3)
    assert count(three, REMOVED_COLOR) > 1000 and count(three, KEPT_COLOR) > 1000
    assert [t.get_text() for t in three.axes[0].get_xticklabels()][:2] == ["#0", "#1"]


def test_image_neuron_bars_sign_and_removed_colours():
    from app.drawing import NEGATIVE_COLOR, POSITIVE_COLOR, REMOVED_COLOR, image_neuron_bars

    neurons = [{"neuron": n, "signed": 0.05 - n / 100, "global_rank": 3 * n + 1} for n in range(10)]

    fig = image_neuron_bars(neurons, 0, "feline")
    assert (
        count(fig, POSITIVE_COLOR) > 500
        and count(fig, NEGATIVE_COLOR) > 500
        and count(fig, REMOVED_COLOR) == 0
    )
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][:2] == ["#0\ng1", "#1\ng4"]
    two = image_neuron_bars(neurons, 2)
    assert count(two, REMOVED_COLOR) > 500

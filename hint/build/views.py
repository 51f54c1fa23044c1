"""Augmented views of a bank image (``offline build --views N``): deterministic flips, crops and scales.

View 0 is the photo itself. View ``v > 0`` is drawn from a generator seeded by the file name and ``v``, so
every process, machine and rerun sees the same pixels: a horizontal flip for odd ``v``, and for
``v >= 2`` a crop covering 50–100 % of the area (aspect 3/4–4/3) at a random place, which the backbone's
preprocessing then rescales. Views only add training regions; calibration and reliability use view 0
(:func:`hint.build.presence.cross_validate` keeps the views of one photo in one fold).
"""

from __future__ import annotations

import hashlib
import math
import random

from PIL import Image, ImageOps

AREA = (0.5, 1.0)
ASPECT = (3 / 4, 4 / 3)


def view_rng(name: str, view: int) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{name}#{view}".encode()).digest()[:8], "big"))


def make_view(im: Image.Image, name: str, view: int) -> Image.Image:
    """View ``view`` of the image ``im`` whose file is called ``name`` (the image itself for 0)."""
    if view == 0:
        return im
    rng = view_rng(name, view)
    if view >= 2:
        w, h = im.size
        for _ in range(10):
            area = w * h * rng.uniform(*AREA)
            aspect = math.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))
            cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
                im = im.crop((x, y, x + cw, y + ch))
                break
    return ImageOps.mirror(im) if view % 2 else im

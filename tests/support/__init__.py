"""What the tests share: the repository's paths, real photos that ship with scikit-image, the default bank.

The in-process handler kit (a fake TorchServe context, calls, answer comparison) is :mod:`support.handler`."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"

# skimage photo -> ImageNet class it shows
PHOTOS = {
    "chelsea": "n02123045",  # tabby
    "coffee": "n07920052",  # espresso
    "rocket": "n04266014",  # space shuttle
    "camera": "n04485082",  # tripod (grayscale photo)
}


def photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)())


def variants(im: Image.Image, n: int) -> list[Image.Image]:
    """n deterministic crops/flips of a photo (distinct images of the same class)."""
    w, h = im.size
    out = []
    for k in range(n):
        f = 0.08 * (k % 3)
        box = (int(w * f), int(h * f / 2), int(w * (1 - f / 2)), int(h * (1 - f)))
        v = im.crop(box)
        out.append(v.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if k % 2 else v)
    return out

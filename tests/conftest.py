"""Shared fixtures: real photos that ship with scikit-image, and the ../shared data when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
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


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A flat folder of WNID-prefixed images: 4 variants of each skimage photo (16 images)."""
    root = tmp_path_factory.mktemp("tiny")
    for name, wnid in PHOTOS.items():
        for k, v in enumerate(variants(photo(name), 4)):
            v.save(root / f"{wnid}_{name}{k}.png")
    return root


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "imagenet-sample" / "labels.csv").is_file():
        pytest.skip("../shared/data is absent")
    return SHARED


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(0)

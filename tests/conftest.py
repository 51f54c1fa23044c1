"""Shared fixtures: real photos that ship with scikit-image, and the ../shared data when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import PHOTOS, SHARED, photo, variants


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

"""Fixtures of the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import wsol


@pytest.fixture(scope="module")
def tiny_boxes(tmp_path_factory) -> Path:
    """6 images (3 photos and their mirror images) stored at 227x227, with a box CSV."""
    return wsol.tiny_boxes(tmp_path_factory.mktemp("wsol-tiny"))

"""Arguments shared by the commands that rewrite an existing bank (``head``, ``presence-rule``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hint.build.config import BuildConfig


def add_bank_arguments(p: argparse.ArgumentParser) -> None:
    """--bank, --out, --data, --cache, --weights, --batch-size, --no-progress."""
    a = p.add_argument
    a(
        "--bank",
        type=Path,
        default=Path("model_store/hint-bank"),
        help="concept bank folder (default %(default)s)",
    )
    a("--out", type=Path, help="write the bank here (default: --bank, in place)")
    a("--data", type=Path, help="the bank's build images (default: the folder its manifest records)")
    a("--cache", type=Path, help="step cache (default BANK/../.hint-cache)")
    a("--weights", help="backbone weights file (a bank built from one)")
    a("--batch-size", type=int, default=BuildConfig.batch_size, help="images per forward pass")
    a("--no-progress", action="store_true")

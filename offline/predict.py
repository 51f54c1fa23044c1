"""``python -m offline predict IMAGE [IMAGE ...]``: a backbone's top-k classes per image (ImageNet's, or
the classes of ``--hierarchy FILE.json`` / ``--classes FILE`` for your own model)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="print the top-k classes of images")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (any PIL format)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="backbone name (default: %(default)s)")
    p.add_argument("--weights", default=None, help="weights file (.pth state_dict or .safetensors)")
    p.add_argument(
        "--hierarchy", default=None, help="a user hierarchy JSON naming the model's classes (docs/custom.md)"
    )
    p.add_argument("--classes", default=None, help="the model's class ids in output order, one per line")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16)
    return p


def load_images(paths: list[Path]) -> list:
    """Open and decode every image first, so a bad file fails before the model is built."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(2, "no such file", str(path))
        try:
            with Image.open(path) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ValueError(f"cannot read image {path}: {' '.join(str(e).split())}") from e
    return images


def run(args: argparse.Namespace) -> int:
    import torch

    from hint.backbones import get_backbone
    from hint.hierarchy import hierarchy_for

    if args.topk < 1:
        raise ValueError("--topk must be at least 1")
    images = load_images(args.images)
    hierarchy = hierarchy_for(args.hierarchy, None, args.classes)
    bb = get_backbone(args.backbone, weights=args.weights)
    hierarchy.check_outputs(bb.n_outputs(), f"backbone {bb.name}")
    k = min(args.topk, len(hierarchy.classes))
    print(f"# {bb.name} ({bb.weights})")
    for start in range(0, len(images), args.batch_size):
        chunk = images[start : start + args.batch_size]
        with torch.inference_mode():
            probs = bb.model(bb.preprocess(chunk)).softmax(dim=1)
        top = probs.topk(k, dim=1)
        for j, path in enumerate(args.images[start : start + len(chunk)]):
            print(path)
            for rank, (p, i) in enumerate(
                zip(top.values[j].tolist(), top.indices[j].tolist(), strict=True), 1
            ):
                print(f"  {rank}  {p:.4f}  {hierarchy.classes[i]}  {hierarchy.class_names[i]}")
    return 0

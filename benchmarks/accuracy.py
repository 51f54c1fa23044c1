"""Top-1/top-5 ImageNet accuracy of the backbones that have real weights, as a markdown table.

    python benchmarks/accuracy.py [--data DIR] [--backbones NAME ...] [--device auto|cpu|cuda]

NAME: a registry name (default: all of them) or any torchvision classification model; backbones
without real weights on this machine are listed as skipped.

Data: ``../shared/data/imagenet-val-boxes`` (``annotations.csv`` with ``file,label_index``, images in
``images/``; 1300 ILSVRC2012 validation images, 725 classes, stored squashed to 227x227). Each image
goes through ``Backbone.preprocess`` (squash to the input size, no centre crop), so the numbers are a
little below the published single-crop ones. images/s counts decoding + preprocessing + forward.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hint.backbones import Backbone, WeightsUnavailable, get_backbone, list_backbones  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-val-boxes"


class LabelledImages(Dataset):
    """(preprocessed image, label index) from an annotations CSV."""

    def __init__(self, root: Path, backbone: Backbone, limit: int | None = None):
        with open(root / "annotations.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))[:limit]
        self.files = [root / "images" / r["file"] for r in rows]
        self.labels = [int(r["label_index"]) for r in rows]
        # the preprocessing only, without the model (cheap to hand to worker processes)
        self.prep = dataclasses.replace(backbone, model=torch.nn.Identity())

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[i]) as im:
            return self.prep.preprocess(im)[0], self.labels[i]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device available")
    return torch.device(name)


@torch.inference_mode()
def evaluate(
    bb: Backbone, data: Path, device: torch.device, batch_size: int, workers: int, limit: int | None
):
    """(top-1, top-5, images, images/s) of one backbone."""
    ds = LabelledImages(data, bb, limit)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    model = bb.model.to(device)
    top1 = top5 = 0
    start = time.perf_counter()
    for x, y in tqdm(loader, desc=bb.name, unit="batch", leave=False):
        top = model(x.to(device, non_blocking=True)).topk(5, dim=1).indices.cpu()
        top1 += int((top[:, 0] == y).sum())
        top5 += int((top == y[:, None]).any(dim=1).sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    n = len(ds)
    return top1 / n, top5 / n, n, n / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=list_backbones(),
        choices=list_backbones(torchvision=True),
        metavar="NAME",
        help="registry names or any torchvision classification model (default: the registry)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    args = parser.parse_args(argv)
    if not (args.data / "annotations.csv").is_file():
        print(f"error: no annotations.csv in {args.data}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)

    rows, skipped = [], []
    for name in args.backbones:
        try:
            bb = get_backbone(name)
        except WeightsUnavailable as e:
            skipped.append(f"- {e}")
            continue
        t1, t5, n, ips = evaluate(bb, args.data, device, args.batch_size, args.workers, args.limit)
        rows.append(f"| {name} | {bb.input_size} | {n} | {100 * t1:.1f} | {100 * t5:.1f} | {ips:.1f} |")
        print(f"{name}: top-1 {100 * t1:.1f}%  top-5 {100 * t5:.1f}%  {ips:.1f} images/s", file=sys.stderr)

    print(f"\nImageNet val ({args.data.name}), device {device}, {torch.get_num_threads()} threads\n")
    print("| backbone | input | images | top-1 % | top-5 % | images/s |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    if skipped:
        print("\nSkipped (no real weights):\n" + "\n".join(skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())

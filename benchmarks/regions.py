"""Step-1 throughput (images/s): responsible regions with each attribution method.

python benchmarks/regions.py --data ../shared/data/imagenet-sample --limit 128 --methods guided gradient
"""

from __future__ import annotations

import argparse

import torch

from hint.backbones import get_backbone
from hint.build.config import BuildConfig
from hint.build.datasets import discover
from hint.build.pipeline import region_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/imagenet-sample")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--limit", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["guided"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    bb = get_backbone(args.backbone)
    samples = discover(args.data).samples[: args.limit]
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.backbone}:{bb.layer}, {len(samples)} images, batch {args.batch_size}, {dev}\n")
    print("| method | images/s | seconds | top-1 | foreground fraction |")
    print("|---|---|---|---|---|")
    for m in args.methods:
        cfg = BuildConfig(
            method=m,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            amp=args.device == "cuda",
        )
        _, st = region_table(bb, samples, cfg, progress=False)
        print(
            f"| {m} | {st['images_per_s']:.1f} | {st['seconds']:.1f} | {st['top1']:.3f} | "
            f"{st['foreground_fraction']:.3f} |"
        )


if __name__ == "__main__":
    main()

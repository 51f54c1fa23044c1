"""Probe weight decay vs the reliability gate, on the bank's own out-of-fold evidence.

    python benchmarks/probe_l2.py [--data DIR] [--l2 0.001 0.01 ...] [--out DIR] [-- extra offline-build args]

Builds one bank per ``--l2`` value (``offline build --l2 X --faithfulness-k 0 --permutations 16``: the
Shapley and faithfulness steps do not change the probes) and prints, per bank, what its manifest says
of the probes: reliable concepts, mean out-of-fold image AUROC, region F1 and image F1, and how many of
the concepts with at most 5 images are reliable. Only bank images enter (no evaluation data).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def summary(manifest: dict) -> dict:
    """The probe figures of one bank's manifest."""
    cs = manifest["concepts"]
    small = [c for c in cs if c["n_images"] <= 5]
    return {
        "concepts": len(cs),
        "reliable": sum(c["reliable"] for c in cs),
        "image_auroc": float(np.mean([c["image_auroc"] for c in cs if c["image_auroc"] is not None])),
        "region_f1": float(np.mean([c["f1"] for c in cs])),
        "image_f1": float(np.mean([c["image_f1"] for c in cs])),
        "small_reliable": f"{sum(c['reliable'] for c in small)} / {len(small)}",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    p.add_argument("--l2", type=float, nargs="+", default=[1e-3, 1e-2, 3e-2, 1e-1])
    p.add_argument("--out", type=Path, default=REPO / "cache" / "banks" / "l2")
    p.add_argument(
        "--cache", type=Path, default=REPO / "model_store" / ".hint-cache", help="step cache (step 1 shared)"
    )
    p.add_argument("extra", nargs="*", help="more offline-build arguments (after --)")
    args = p.parse_args(argv)
    rows = []
    for l2 in args.l2:
        out = args.out / f"l2-{l2:g}"
        cmd = [
            sys.executable,
            "-m",
            "offline",
            "build",
            "--data",
            args.data,
            "--out",
            str(out),
            "--cache",
            str(args.cache),
            "--l2",
            str(l2),
            "--faithfulness-k",
            "0",
            "--permutations",
            "16",
            "--no-progress",
            *args.extra,
        ]
        subprocess.run(cmd, cwd=REPO, check=True)
        rows.append((l2, summary(json.loads((out / "manifest.json").read_text()))))
    print(
        "| l2 | reliable | mean out-of-fold image AUROC | mean region F1 | mean image F1 | reliable, ≤ 5 images |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for l2, s in rows:
        print(
            f"| {l2:g} | {s['reliable']} of {s['concepts']} | {s['image_auroc']:.3f} | {s['region_f1']:.3f} | "
            f"{s['image_f1']:.3f} | {s['small_reliable']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

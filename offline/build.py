"""``python -m offline build``: regions → classifiers → Shapley → concept bank folder.

Multi-process: ``torchrun --nproc_per_node N -m offline build ...`` shards step 1 over the processes
(gloo on CPU, nccl on GPUs); rank 0 gathers the regions and runs steps 2–3.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

from hint.backbones import get_backbone
from hint.concepts import SHARES, resolve
from hint.datasets import discover, with_views
from hint.head import DEFAULT_LAYERS, DEFAULT_NEGATIVES
from hint.hierarchy import hierarchy_for
from hint.pipeline import BuildConfig, build
from hint.regions import METHODS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build a concept bank from labelled images")
    p.add_argument("--data", required=True, help="class folders (nested or not: root/animal/dog/*.jpg), a flat "
                   "nXXXXXXXX_* folder, or a CSV (file,wnid or file,label)")
    p.add_argument("--hierarchy", default="wordnet", help="the concept hierarchy: 'wordnet' (the default, over the "
                   "ImageNet-1k classes), a JSON file, or 'folders' (the nested folder tree --data); see docs/custom.md")
    p.add_argument("--classes", default=None, help="the model's class ids in output order (one per line), or "
                   "'imagenet'; replaces the hierarchy's list")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--layer", default=None, help="hooked layer (default: the backbone's)")
    p.add_argument("--weights", default=None, help="weights file for the backbone")
    p.add_argument("--random-init", action="store_true", help="random weights (tests)")
    p.add_argument(
        "--concepts", nargs="+", default=None,
        help="candidate concepts, ids or names (default: every concept with 2+ classes; the data-sufficiency "
        "rule picks those built)",
    )  # fmt: skip
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (held-out F1, thresholds)")
    p.add_argument("--min-images", type=int, default=3, help="data-sufficiency rule: images under a concept")
    p.add_argument("--min-regions", type=int, default=24, help="data-sufficiency rule: responsible regions")
    p.add_argument("--out", required=True, type=Path, help="bank folder to write")
    p.add_argument("--cache", type=Path, default=None, help="step cache (default: OUT/../.hint-cache)")
    p.add_argument("--l2", type=float, default=1e-3, help="probe weight decay on standardised features")
    p.add_argument("--method", choices=sorted(METHODS), default="guided")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--permutations", type=int, default=256, help="Shapley permutations M")
    p.add_argument("--patience", type=int, default=0, help="stop Shapley when the top-k is stable this many chunks")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--faithfulness-k", type=int, default=20, help="neurons kept in the faithfulness test (0: skip it)")
    p.add_argument("--baseline", choices=["auto", "zero", "mean"], default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use the first N images only")
    p.add_argument("--views", type=int, default=1,
                   help="augmented views per image (flips, crops, scales; hint.views): they add training regions, "
                   "calibration uses the photos")  # fmt: skip
    p.add_argument("--per-class", type=int, default=8,
                   help="step-1 reservoir: images kept per class (memory bound, hint.reservoir)")  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=2000, help="step-1 checkpoint interval (images)")
    p.add_argument("--head-layers", nargs="+", default=None, metavar="LAYER",
                   help="layers of the localisation head (maps and boxes; hint.head), 'none' for no head "
                   "(default: the backbone's, " + ", ".join(f"{k}: {' '.join(v)}" for k, v in DEFAULT_LAYERS.items())
                   + "; other backbones: none); its box threshold: python -m offline head --calibrate")  # fmt: skip
    p.add_argument("--head-negatives", nargs="+", default=list(DEFAULT_NEGATIVES), choices=list(SHARES), metavar="KIND",
                   help="negative kinds of the head's classifiers (default %(default)s)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-progress", action="store_true")


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device available")
    return name


def run(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rank = torch.distributed.get_rank() if world > 1 else 0
    h = hierarchy_for(args.hierarchy, args.data, args.classes)
    try:
        wnids = resolve(args.concepts, h) if args.concepts else None
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    found = discover(args.data, h)
    if rank == 0:
        for reason in found.skipped[:10]:
            print(f"skipped: {reason}", file=sys.stderr)
        if len(found.skipped) > 10:
            print(f"skipped: ... {len(found.skipped) - 10} more", file=sys.stderr)
    samples = with_views(found.samples[: args.limit] if args.limit else found.samples, args.views)
    if not samples:
        raise ValueError(f"no labelled images found in {args.data}")
    backbone = get_backbone(args.backbone, args.layer, args.weights, args.random_init)
    h.check_outputs(backbone.n_outputs(), f"backbone {backbone.name}")
    cfg = BuildConfig(
        method=args.method, threshold=args.threshold, permutations=args.permutations, patience=args.patience,
        top_k=args.top_k, baseline=args.baseline, batch_size=args.batch_size, workers=args.workers,
        folds=args.folds, min_images=args.min_images, min_regions=args.min_regions, l2=args.l2,
        faithfulness_k=args.faithfulness_k, per_class=args.per_class, checkpoint_every=args.checkpoint_every,
        seed=args.seed, device=device, amp=device == "cuda",
    )  # fmt: skip
    cache = args.cache or args.out.parent / ".hint-cache"
    t0 = time.perf_counter()

    def say(step: str, cached: bool) -> None:
        if rank == 0:
            print(f"{step}: {'reused from cache' if cached else 'done'}", file=sys.stderr)

    bank = build(backbone, samples, wnids, cfg, cache, h, progress=not args.no_progress, on_step=say)
    if rank != 0:
        torch.distributed.destroy_process_group()
        return 0
    bank.meta["build"]["wall_s"] = round(time.perf_counter() - t0, 2)
    bank.meta["build"]["data"] = str(args.data)
    bank.meta["build"]["skipped"] = len(found.skipped)
    bank.meta["build"]["hierarchy"] = str(args.hierarchy)
    bank.hierarchy = None if h.builtin else h  # saved as the bank's hierarchy.json
    bank.meta["build"]["views"] = args.views
    head_layers = args.head_layers if args.head_layers is not None else DEFAULT_LAYERS.get(backbone.name, [])
    if head_layers and head_layers != ["none"]:
        from hint.head_fit import fit_head

        bank.head = fit_head(bank, samples, head_layers, cache, args.head_negatives, batch_size=args.batch_size,
                             progress=not args.no_progress, backbone=backbone)  # fmt: skip
        say("localisation head", False)
        bank.meta["build"]["wall_s"] = round(time.perf_counter() - t0, 2)
    bank.save(args.out)
    if world > 1:
        torch.distributed.destroy_process_group()
    n_rel = sum(c["reliable"] for c in bank.concepts)
    print(f"wrote {args.out} (bank {bank.id}): {len(bank.concepts)} concepts built of {len(bank.meta['candidates'])} "
          f"candidates ({n_rel} reliable), {len(samples)} images, {len(found.skipped)} skipped")  # fmt: skip
    for c in bank.concepts[:40]:
        print(f"  {c['name']:<22} region F1 {c['f1']:.3f} {c['f1_ci']}  image F1 {c['image_f1']:.3f}  "
              f"reliable {c['reliable']}")
    if len(bank.concepts) > 40:
        print(f"  ... {len(bank.concepts) - 40} more in {args.out}/manifest.json")
    logging.getLogger(__name__).debug("done")
    return 0

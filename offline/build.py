"""``python -m offline build``: regions → classifiers → Shapley → concept bank folder.

Multi-process: ``torchrun --nproc_per_node N -m offline build ...`` shards step 1 over the processes
(gloo on CPU, nccl on GPUs); rank 0 gathers the regions and runs steps 2–3.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from pathlib import Path

from hint._utils.options import add_arguments, from_args
from hint.build.builder import build_bank
from hint.build.concepts import SHARES
from hint.build.config import BuildConfig
from hint.head import DEFAULT_LAYERS

#: build_bank's defaults (the flags below that are not BuildConfig fields)
DEFAULTS = {k: v.default for k, v in inspect.signature(build_bank).parameters.items()}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build a concept bank from labelled images")
    p.add_argument(
        "--data",
        required=True,
        help="class folders (nested or not: root/animal/dog/*.jpg), a flat "
        "nXXXXXXXX_* folder, or a CSV (file,wnid or file,label)",
    )
    p.add_argument(
        "--hierarchy",
        default=DEFAULTS["hierarchy"],
        help="the concept hierarchy: 'wordnet' (the default, "
        "over the ImageNet-1k classes), a JSON file, or 'folders' (the nested folder tree --data); see "
        "docs/custom.md",
    )
    p.add_argument(
        "--classes",
        default=DEFAULTS["classes"],
        help="the model's class ids in output order (one per "
        "line), or 'imagenet'; replaces the hierarchy's list",
    )
    p.add_argument("--backbone", default=DEFAULTS["backbone"])
    p.add_argument("--layer", default=DEFAULTS["layer"], help="hooked layer (default: the backbone's)")
    p.add_argument("--weights", default=DEFAULTS["weights"], help="weights file for the backbone")
    p.add_argument("--random-init", action="store_true", help="random weights (tests)")
    p.add_argument(
        "--concepts",
        nargs="+",
        default=DEFAULTS["concepts"],
        help="candidate concepts, ids or names (default: every concept with 2+ classes; the data-sufficiency "
        "rule picks those built)",
    )
    p.add_argument("--out", required=True, type=Path, help="bank folder to write")
    p.add_argument("--cache", type=Path, default=None, help="step cache (default: OUT/../.hint-cache)")
    p.add_argument("--limit", type=int, default=DEFAULTS["limit"], help="use the first N images only")
    p.add_argument(
        "--views",
        type=int,
        default=DEFAULTS["views"],
        help="augmented views per image (flips, crops, scales; hint.build.views): they add training regions, "
        "calibration uses the photos",
    )
    p.add_argument(
        "--head-layers",
        nargs="+",
        default=DEFAULTS["head_layers"],
        metavar="LAYER",
        help="layers of the localisation head (maps and boxes; hint.head), 'none' for no head "
        "(default: the backbone's, "
        + ", ".join(f"{k}: {' '.join(v)}" for k, v in DEFAULT_LAYERS.items())
        + "; other backbones: none); its box threshold: python -m offline head --calibrate",
    )
    p.add_argument(
        "--head-negatives",
        nargs="+",
        default=list(DEFAULTS["head_negatives"]),
        choices=list(SHARES),
        metavar="KIND",
        help="negative kinds of the head's classifiers (default %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true")
    # the steps' settings: one flag per BuildConfig field; amp follows --device
    add_arguments(BuildConfig, p, exclude={"amp"}, defaults={"device": "auto"})


def run(args: argparse.Namespace) -> int:
    cfg = from_args(BuildConfig, args, amp=args.device == "cuda")

    def say(step: str, cached: bool) -> None:
        print(f"{step}: {'reused from cache' if cached else 'done'}", file=sys.stderr)

    bank = build_bank(
        args.data,
        backbone=args.backbone,
        layer=args.layer,
        hierarchy=args.hierarchy,
        classes=args.classes,
        concepts=args.concepts,
        config=cfg,
        cache=args.cache or args.out.parent / ".hint-cache",
        views=args.views,
        limit=args.limit,
        weights=args.weights,
        random_init=args.random_init,
        head_layers=args.head_layers,
        head_negatives=args.head_negatives,
        progress=not args.no_progress,
        on_step=say,
    )
    if bank is None:  # a torchrun rank other than 0
        return 0
    bank.save(args.out)
    n_rel = sum(c["reliable"] for c in bank.concepts)
    print(
        f"wrote {args.out} (bank {bank.id}): {len(bank.concepts)} concepts built of {len(bank.meta['candidates'])} "
        f"candidates ({n_rel} reliable), {bank.meta['build']['n_images']} images, {bank.meta['build']['skipped']} skipped"
    )
    for c in bank.concepts[:40]:
        print(
            f"  {c['name']:<22} region F1 {c['f1']:.3f} {c['f1_ci']}  image F1 {c['image_f1']:.3f}  "
            f"reliable {c['reliable']}"
        )
    if len(bank.concepts) > 40:
        print(f"  ... {len(bank.concepts) - 40} more in {args.out}/manifest.json")
    logging.getLogger(__name__).debug("done")
    return 0

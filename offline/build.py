"""``python -m offline build``: regions → classifiers → Shapley → concept bank folder.

Multi-process: ``torchrun --nproc_per_node N -m offline build ...`` shards step 1 over the processes
(gloo on CPU, nccl on GPUs); rank 0 gathers the regions and runs steps 2–3.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hint.build.builder import build_bank
from hint.build.concepts import SHARES
from hint.build.pipeline import BuildConfig
from hint.head import DEFAULT_LAYERS, DEFAULT_NEGATIVES
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
                   help="augmented views per image (flips, crops, scales; hint.build.views): they add training regions, "
                   "calibration uses the photos")  # fmt: skip
    p.add_argument("--per-class", type=int, default=8,
                   help="step-1 reservoir: images kept per class (memory bound, hint.build.reservoir)")  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=2000, help="step-1 checkpoint interval (images)")
    p.add_argument("--exemplars", type=int, default=BuildConfig.exemplars, metavar="K",
                   help="every neuron's top-K image patches and its label, kept in step 1's pass (hint.build.exemplars; "
                   "0: none)")  # fmt: skip
    p.add_argument("--head-layers", nargs="+", default=None, metavar="LAYER",
                   help="layers of the localisation head (maps and boxes; hint.head), 'none' for no head "
                   "(default: the backbone's, " + ", ".join(f"{k}: {' '.join(v)}" for k, v in DEFAULT_LAYERS.items())
                   + "; other backbones: none); its box threshold: python -m offline head --calibrate")  # fmt: skip
    p.add_argument("--head-negatives", nargs="+", default=list(DEFAULT_NEGATIVES), choices=list(SHARES), metavar="KIND",
                   help="negative kinds of the head's classifiers (default %(default)s)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    cfg = BuildConfig(
        method=args.method, threshold=args.threshold, permutations=args.permutations, patience=args.patience,
        top_k=args.top_k, baseline=args.baseline, batch_size=args.batch_size, workers=args.workers,
        folds=args.folds, min_images=args.min_images, min_regions=args.min_regions, l2=args.l2,
        faithfulness_k=args.faithfulness_k, per_class=args.per_class, checkpoint_every=args.checkpoint_every,
        seed=args.seed, device=args.device, amp=args.device == "cuda", exemplars=args.exemplars,
    )  # fmt: skip

    def say(step: str, cached: bool) -> None:
        print(f"{step}: {'reused from cache' if cached else 'done'}", file=sys.stderr)

    bank = build_bank(
        args.data, backbone=args.backbone, layer=args.layer, hierarchy=args.hierarchy, classes=args.classes,
        concepts=args.concepts, config=cfg, cache=args.cache or args.out.parent / ".hint-cache", views=args.views,
        limit=args.limit, weights=args.weights, random_init=args.random_init, head_layers=args.head_layers,
        head_negatives=args.head_negatives, progress=not args.no_progress, on_step=say,
    )  # fmt: skip
    if bank is None:  # a torchrun rank other than 0
        return 0
    bank.save(args.out)
    n_rel = sum(c["reliable"] for c in bank.concepts)
    print(f"wrote {args.out} (bank {bank.id}): {len(bank.concepts)} concepts built of {len(bank.meta['candidates'])} "
          f"candidates ({n_rel} reliable), {bank.meta['build']['n_images']} images, {bank.meta['build']['skipped']} skipped")  # fmt: skip
    for c in bank.concepts[:40]:
        print(f"  {c['name']:<22} region F1 {c['f1']:.3f} {c['f1_ci']}  image F1 {c['image_f1']:.3f}  "
              f"reliable {c['reliable']}")
    if len(bank.concepts) > 40:
        print(f"  ... {len(bank.concepts) - 40} more in {args.out}/manifest.json")
    logging.getLogger(__name__).debug("done")
    return 0

"""``python -m offline head``: fit a bank's localisation head and calibrate its box threshold.

The head (:mod:`hint.head`) gives the service its concept maps and boxes from finer layers than the
bank's (the Shapley tables and neurons stay at the bank's layer). ``--calibrate DATA`` chooses the box
threshold on the selection half of a WSOL box set (:func:`hint.evaluation.wsol.served.calibrate`); the test half is
left for ``offline evaluate-wsol``. The bank is rewritten in place (or to ``--out``), atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hint.build.concepts import SHARES
from hint.head import DEFAULT_LAYERS, DEFAULT_NEGATIVES
from offline._bank_args import add_bank_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("head", help="fit a bank's localisation head (maps and boxes) and calibrate its boxes")
    add_bank_arguments(p)
    a = p.add_argument
    a(
        "--layers",
        nargs="+",
        metavar="LAYER",
        help="head layers of the backbone (default: the backbone's, "
        + ", ".join(f"{k}: {'+'.join(v)}" for k, v in DEFAULT_LAYERS.items())
        + ")",
    )
    a(
        "--negatives",
        nargs="+",
        default=list(DEFAULT_NEGATIVES),
        choices=list(SHARES),
        metavar="KIND",
        help="negative kinds of the head's classifiers, in equal shares (default %(default)s)",
    )
    a(
        "--calibrate",
        type=Path,
        metavar="BOXES",
        help="choose the box threshold on the selection half of this WSOL box set (folder with annotations.csv)",
    )
    a(
        "--calibrate-only",
        action="store_true",
        help="keep the bank's head, only calibrate (needs --calibrate)",
    )
    a("--split-seed", type=int, default=0, help="seed of the selection/test halves (as evaluate-wsol)")


def run(args: argparse.Namespace) -> int:
    from hint.backbones import get_backbone
    from hint.bank import ConceptBank
    from hint.build.head import build_samples, fit_head
    from hint.evaluation.wsol import metrics as wsol
    from hint.evaluation.wsol import served as wsol_served
    from hint.evaluation.wsol.run import ancestor_concept, whole_concept
    from hint.explain.explainer import SERVING, Explainer

    bank = ConceptBank.load(args.bank)
    progress = not args.no_progress
    if args.calibrate_only:
        if args.calibrate is None or bank.head is None:
            raise ValueError("--calibrate-only needs --calibrate BOXES and a bank with a head")
    else:
        layers = args.layers or DEFAULT_LAYERS.get(bank.meta["backbone"])
        if not layers:
            raise ValueError(f"no default head layers for {bank.meta['backbone']}: pass --layers")
        samples = build_samples(bank, args.bank, args.data)
        cache = args.cache or args.bank.parent / ".hint-cache"
        bank.head = fit_head(
            bank, samples, layers, cache, args.negatives, args.weights, args.batch_size, progress
        )
        print(
            f"head at {'+'.join(layers)} (grid {bank.head.grid}) against {'+'.join(args.negatives)}",
            file=sys.stderr,
        )
    if args.calibrate is not None:
        h = bank.load_hierarchy()
        anns = wsol.load_annotations(args.calibrate / "annotations.csv", args.calibrate, h)
        selection, _ = wsol.split_indices(len(anns), args.split_seed)
        bb = get_backbone(bank.meta["backbone"], bank.meta["layer"], args.weights)
        whole = whole_concept(bank, h)
        ancestors = [ancestor_concept(h.classes[a.label], bank.wnids, h) or whole for a in anns]
        ex = Explainer(bb, bank, h, **SERVING)
        cal = wsol_served.calibrate(
            ex,
            anns,
            whole,
            ancestors,
            selection,
            bb.input_size,
            batch_size=args.batch_size,
            progress=progress,
        )
        bank.head.box_threshold = cal.pop("box_threshold")
        bank.head.info["calibration"] = {**cal, "data": str(args.calibrate), "split_seed": args.split_seed}
        print(
            f"box threshold {bank.head.box_threshold} (selection box accuracy {cal['selection_box_acc']:.3f} "
            f"on {cal['images']} images)",
            file=sys.stderr,
        )
    out = bank.save(args.out or args.bank)
    print(
        f"wrote {out} (bank {bank.id}, head {'+'.join(bank.head.layers)}, box threshold {bank.head.box_threshold})"
    )
    return 0

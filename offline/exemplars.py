"""``python -m offline exemplars``: give an existing bank its neuron exemplars and labels.

Every neuron's top-k image patches of the bank's build data and its label (:mod:`hint.build.exemplars`),
written as ``exemplars.safetensors`` into the bank (in place, or to ``--out``, atomically); the bank's
other files are kept byte for byte. ``offline build`` makes them as part of the build.
"""

from __future__ import annotations

import argparse
import json
import sys

from hint.build.pipeline import BuildConfig
from offline._bank_args import add_bank_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("exemplars", help="add every neuron's top image patches and its label to a bank")
    add_bank_arguments(p)
    p.add_argument(
        "--k", type=int, default=BuildConfig.exemplars, help="patches per neuron (default %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    from hint.bank import ConceptBank, backbone_weights
    from hint.build.exemplars import bank_exemplars, label_summary
    from hint.build.head import build_samples

    if args.k < 1:
        raise ValueError(f"--k must be at least 1, not {args.k}")
    bank = ConceptBank.load(args.bank)
    samples = build_samples(bank, args.bank, args.data)
    weights = backbone_weights(bank, args.bank, args.weights, recorded=True)
    cache = args.cache or args.bank.parent / ".hint-cache"
    bank.exemplars = bank_exemplars(
        bank, samples, cache, args.k, weights, args.batch_size, not args.no_progress
    )
    out = bank.save(args.out or args.bank)
    ex = bank.exemplars
    print(
        f"wrote {out} (bank {bank.id}): {ex.k} exemplars for each of {ex.neurons} neurons from {len(ex.images)} "
        f"images, {len(ex.jpeg) / 1e6:.2f} MB of thumbnails",
        file=sys.stderr,
    )
    print("labels:", json.dumps(label_summary(ex)))
    return 0

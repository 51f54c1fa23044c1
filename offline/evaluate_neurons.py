"""``python -m offline evaluate-neurons``: remove this image's, the bank's, a library's or random neurons inside the
network and measure the drop of the predicted class's probability and of the concept's score.

Writes ``results.json``, ``neurons.md`` and ``neurons.png`` into ``--out`` (logic: :mod:`hint.evaluation.neurons`);
the last line printed says at which k the goal (image > global > random, intervals apart) holds.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate-neurons",
        help="ablate image-specific, global, library-attributed and random neurons through the network",
    )
    p.add_argument("--bank", type=Path, default=Path("model_store/hint-bank"), help="concept bank folder")
    p.add_argument("--data", type=Path, required=True, help="labelled images (ImageNet folder, flat, or CSV)")
    p.add_argument(
        "--out", type=Path, default=Path("docs/neurons"), help="results folder (default %(default)s)"
    )
    p.add_argument("--limit", type=int, default=256, help="first N images (default %(default)s)")
    p.add_argument("--k", type=int, nargs="+", default=[5, 10, 20], help="neurons removed (default 5 10 20)")
    p.add_argument("--draws", type=int, default=5, help="random draws per image (default %(default)s)")
    p.add_argument(
        "--permutations",
        type=int,
        default=8,
        help="permutations M of the probability-game Monte-Carlo arm (default %(default)s)",
    )
    p.add_argument("--ig-steps", type=int, default=None, help="Integrated Gradients steps (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=2, help="image decoding processes")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from hint.build.datasets import discover
    from hint.evaluation import neurons as neuron_eval
    from hint.explain.explainer import Explainer

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    explainer = Explainer.from_bank(args.bank)
    samples = discover(args.data, explainer.h).samples[: args.limit]
    if not samples:
        raise ValueError(f"no labelled images found in {args.data}")
    ks = tuple(sorted(set(args.k)))
    ig_steps = args.ig_steps or neuron_eval.IG_STEPS
    records = neuron_eval.collect(
        explainer,
        samples,
        ks,
        args.draws,
        args.permutations,
        args.seed,
        args.workers,
        not args.no_progress,
        ig_steps,
    )
    if not records:
        raise ValueError("no image has a reliable bank concept on its predicted class's path")
    rep = neuron_eval.report(
        records,
        explainer,
        ks,
        args.draws,
        args.permutations,
        args.seed,
        skipped=len(samples) - len(records),
        ig_steps=ig_steps,
    )
    command = (
        "python -m offline " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if len(sys.argv) > 2 else ""
    )
    for path in neuron_eval.write(rep, args.out, command or "python -m offline evaluate-neurons"):
        print(f"wrote {path}")
    print(neuron_eval.verdict(rep))
    return 0

"""``python -m offline evaluate-concepts``: image-level concept presence (served, probe, softmax) per concept.

Writes ``results.json`` and ``concepts.md`` into ``--out``; the last line printed reads
``macro-F1 served X probe Y softmax Z (N images, E concepts)``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate-concepts", help="image-level concept presence: served flag vs probe vs softmax"
    )
    p.add_argument("--bank", type=Path, default=Path("model_store/hint-bank"), help="concept bank folder")
    p.add_argument("--data", type=Path, required=True, help="labelled images (ImageNet folder, flat, or CSV)")
    p.add_argument(
        "--out", type=Path, default=Path("docs/concepts"), help="results folder (default %(default)s)"
    )
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from hint.build.datasets import discover
    from hint.evaluation import concepts as concept_eval
    from hint.explain.explainer import Explainer

    explainer = Explainer.from_bank(args.bank)
    samples = discover(args.data, explainer.h).samples[: args.limit]
    if not samples:
        raise ValueError(f"no labelled images found in {args.data}")
    arrays = concept_eval.collect(explainer, samples, args.batch_size, args.workers, not args.no_progress)
    rep = concept_eval.report(arrays, explainer)
    command = (
        "python -m offline " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if len(sys.argv) > 2 else ""
    )
    for path in concept_eval.write(rep, args.out, command or "python -m offline evaluate-concepts"):
        print(f"wrote {path}")
    print(concept_eval.summary_line(rep))
    return 0

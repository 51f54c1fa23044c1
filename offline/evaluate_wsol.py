"""``python -m offline evaluate-wsol``: WSOL metrics (wsolevaluation's protocol) of HINT concept maps vs CAM.

A thin command over :func:`hint.evaluation.wsol.run.evaluate` (maps, retrained variants, scoring, bootstrap) and
:func:`hint.evaluation.wsol.report.write_outputs` (``results.json``, ``results.md``, ``curves.png``,
``faithfulness.png``, ``overlays.png`` in ``--out``). ``--export-npy DIR`` also saves the score maps
and wsolevaluation's metadata (``DIR/<method>/<image id>.npy``, ``DIR/metadata/ILSVRC/{val,test}/``), so
that its ``evaluation.py`` runs on them unchanged.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from hint.boxes import UPSAMPLING
from hint.build.concepts import SHARES
from hint.evaluation.cam_baselines import BASELINES, DEFAULT, ONE_PASS_PER_CHANNEL
from hint.evaluation.wsol.run import MAIN, EvalConfig
from hint.regions import METHODS

NAME = "evaluate-wsol"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="WSOL metrics (wsolevaluation) of HINT maps vs CAM")
    a = p.add_argument
    a("--bank", type=Path, default=Path("model_store/hint-bank"), help="concept bank folder")
    a("--data", type=Path, required=True, help="folder of the images (or of images/)")
    a("--annotations", type=Path, help="CSV file,wnid,label_index,width,height,boxes_xyxy (default DATA/annotations.csv)")
    a("--out", type=Path, default=Path("docs/wsol"), help="results folder (default %(default)s)")
    a("--limit", type=int, help="first N images only")
    a("--split-seed", type=int, default=0, help="seed of the selection/test halves")
    a("--upsample", choices=list(UPSAMPLING), default="cubic",
      help="how every map is resized to the network input (default %(default)s, as wsolevaluation)")  # fmt: skip
    a("--export-npy", type=Path, metavar="DIR", help="save score maps (.npy) and wsolevaluation metadata")
    a("--export-methods", nargs="+", default=list(MAIN), metavar="METHOD",
      help="methods to export (default: %(default)s; 'all' for every one)")  # fmt: skip
    a("--cache", type=Path, help="step cache of the bank (default BANK/../.hint-cache)")
    a("--no-recompute-regions", action="store_true",
      help="never recompute the bank's step-1 table from its build data (then no retrained rows without a cache)")  # fmt: skip
    a("--percents", type=int, nargs="*", default=[10, 20, 40, 80], help="the (x%%) rows")
    a("--faithfulness-k", type=int, help="neurons kept (default: the bank's, or 20)")
    a("--draws", type=int, default=5, help="random neuron draws (seeds) in the faithfulness test")
    a("--step1-methods", nargs="*", default=[], choices=list(METHODS), metavar="METHOD",
      help=f"also rows with classifiers trained on regions of these step-1 methods ({', '.join(METHODS)})")  # fmt: skip
    a("--layers", nargs="+", default=[], metavar="LAYER",
      help="also rows with classifiers fit at these layers of the backbone (python -m hint.backbones layers NAME)")
    a("--fuse", nargs="+", default=[], metavar="L1+L2",
      help="also rows of fused maps: the mean of these layers' maps on the finest grid, e.g. _blocks.15+_blocks.10")
    a("--whole-negatives", nargs="+", default=[], choices=list(SHARES), metavar="KIND",
      help="also HINT-whole rows (bank layer, --layers, --fuse) with the whole classifier trained against these "
           f"negative kinds only, in equal shares ({', '.join(SHARES)})")  # fmt: skip
    a("--baselines", nargs="*", default=list(DEFAULT), choices=list(BASELINES), metavar="NAME",
      help=f"rows from pytorch-grad-cam (PyPI grad-cam) at the CAM's layer for the ground-truth class, scored "
           f"as CAM: {', '.join(BASELINES)} (default: {' '.join(DEFAULT)}, one forward and backward pass per "
           f"batch each, about 85 s per 1300 images on 2 CPU cores; {', '.join(sorted(ONE_PASS_PER_CHANNEL))}: "
           "one forward pass per channel, 1280 per image on efficientnet_lite0, 40-110 s per image, so only when "
           "named; none: --baselines alone)")  # fmt: skip
    a("--no-retrain", action="store_true", help="skip the (x%%) rows, the faithfulness test and --step1-methods")
    a("--weights", help="backbone weights file (default: the packaged ones)")
    a("--batch-size", type=int, default=32)
    a("--jobs", type=int, default=1, help="processes scoring the maps (default %(default)s)")
    a("--overlays", type=int, default=6, help="test images in overlays.png (0: none)")
    a("--overlay-photos", action="store_true",
      help="draw the photographs under the heat maps (do not commit such figures of licensed data)")  # fmt: skip
    a("--no-progress", action="store_true")
    p.set_defaults(_parser=p)
    return p


def command_line(args: argparse.Namespace) -> str:
    """The command with every option that differs from its default (``python -m offline evaluate-wsol ...``)."""
    parts = ["python", "-m", "offline", NAME]
    for action in args._parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest in ("help", "no_progress") or (value == action.default and action.dest not in ("bank", "out")):
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            parts.append(flag)
        else:
            parts += [flag, *map(str, value if isinstance(value, list) else [value])]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from hint.evaluation.wsol.report import summary, write_outputs
    from hint.evaluation.wsol.run import evaluate

    cfg = EvalConfig(
        bank=args.bank, data=args.data, annotations=args.annotations, limit=args.limit,
        split_seed=args.split_seed, upsample=args.upsample, percents=args.percents,
        faithfulness_k=args.faithfulness_k, draws=args.draws, retrain=not args.no_retrain,
        recompute_regions=not args.no_recompute_regions, step1_methods=args.step1_methods, cache=args.cache,
        layers=args.layers, fuse=args.fuse, whole_negatives=args.whole_negatives, baselines=args.baselines,
        weights=args.weights, batch_size=args.batch_size, jobs=args.jobs, export_npy=args.export_npy,
        export_methods=args.export_methods, overlays=args.overlays, progress=not args.no_progress,
        command=command_line(args),
    )  # fmt: skip
    ev = evaluate(cfg)
    written = write_outputs(ev, args.out, args.overlay_photos)
    print(summary(ev.report))
    for p in written:
        print(p)
    return 0

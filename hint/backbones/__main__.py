"""``python -m hint.backbones list | layers NAME``: the backbone names, and a model's layers with shapes.

    python -m hint.backbones list                  # registry names, then every torchvision model
    python -m hint.backbones layers resnet18       # hookable layers: name, type, output (C, H, W), >= 0
    python -m hint.backbones layers resnet18 --all # every module, with why HINT cannot hook it

``layers`` builds the model with random weights (shapes do not depend on them) unless ``--weights``.
"""

from __future__ import annotations

import argparse
import sys

from . import WeightsUnavailable, get_backbone, list_backbones
from .layers import survey


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hint.backbones", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="backbone names")
    p = sub.add_parser("layers", help="a backbone's layers and output shapes")
    p.add_argument("name")
    p.add_argument("--weights", default=None, help="weights file (default: random init)")
    p.add_argument("--all", action="store_true", help="also modules HINT cannot hook")
    args = parser.parse_args(argv)

    if args.command == "list":
        print("\n".join(list_backbones(torchvision=True)))
        return 0
    try:
        bb = get_backbone(args.name, weights=args.weights, random_init=args.weights is None)
    except (ValueError, WeightsUnavailable) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    infos = [i for i in survey(bb.model, bb.input_size) if i.name and (args.all or i.is_map)]
    width = max(len(i.name) for i in infos)
    print(f"{bb.name}: input {bb.input_size}x{bb.input_size}, default layer {bb.layer}")
    for i in infos:
        shape = "(" + ", ".join(map(str, i.shape)) + ")" if i.shape is not None else "-"
        note = "default" if i.name == bb.layer else (i.problem() or "")
        print(f"{i.name:<{width}}  {i.kind:<22} {shape:<18} {'>=0' if i.non_negative else '   '}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

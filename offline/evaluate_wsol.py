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

from hint._utils.options import add_arguments, from_args
from hint.evaluation.wsol.run import EvalConfig

NAME = "evaluate-wsol"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="WSOL metrics (wsolevaluation) of HINT maps vs CAM")
    add_arguments(EvalConfig, p, defaults={"bank": Path("model_store/hint-bank")})
    p.set_defaults(_parser=p)
    return p


def command_line(args: argparse.Namespace) -> str:
    """The command with every option that differs from its default (``python -m offline evaluate-wsol ...``)."""
    parts = ["python", "-m", "offline", NAME]
    for action in args._parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest in ("help", "progress") or (
            value == action.default and action.dest not in ("bank", "out")
        ):
            continue
        flag = action.option_strings[-1]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            parts.append(flag)
        else:
            parts += [flag, *map(str, value if isinstance(value, list) else [value])]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from hint.evaluation.wsol.report import summary, write_outputs
    from hint.evaluation.wsol.run import evaluate

    cfg = from_args(EvalConfig, args, command=command_line(args))
    ev = evaluate(cfg)
    written = write_outputs(ev, cfg.out, cfg.overlay_photos)
    print(summary(ev.report))
    for p in written:
        print(p)
    return 0

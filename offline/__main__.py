"""``python -m offline COMMAND ...``: the offline HINT tools.

Each subcommand lives in its own module ``offline/<command>.py`` (``-`` -> ``_``) exposing
``add_parser(subparsers)`` (adds the ``COMMAND`` sub-parser) and ``run(args) -> int``; modules are
found by listing this folder (``COMMANDS`` only fixes the order in ``--help``). User errors are
reported by raising ValueError, OSError or :class:`hint.backbones.WeightsUnavailable` with a readable
one-line message: they become ``error: ...`` on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

COMMANDS = ["predict", "build", "report", "evaluate-wsol", "demo"]


def discover() -> list[str]:
    """Subcommand names: the modules next to this file (not ``_private``), in ``COMMANDS`` order first."""
    found = sorted(
        p.stem.replace("_", "-") for p in Path(__file__).parent.glob("*.py") if not p.stem.startswith("_")
    )
    return [c for c in COMMANDS if c in found] + [c for c in found if c not in COMMANDS]


def _module_name(command: str) -> str:
    return f"offline.{command.replace('-', '_')}"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    """The parser with every available subcommand, and command -> module (or import error)."""
    parser = argparse.ArgumentParser(prog="python -m offline", description="HINT offline tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules: dict[str, object] = {}
    for command in discover():
        name = _module_name(command)
        try:
            module = importlib.import_module(name)
        except ImportError as e:  # present but broken: keep the others usable
            sub.add_parser(command, help=f"(unavailable: {e})", add_help=False).add_argument(
                "rest", nargs=argparse.REMAINDER
            )
            modules[command] = e
            continue
        if not (hasattr(module, "add_parser") and hasattr(module, "run")):
            continue
        module.add_parser(sub)
        modules[command] = module
    return parser, modules


def _error_text(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError) and e.filename:
        return f"no such file: {e.filename}"
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    module = modules[args.command]
    if isinstance(module, ImportError):
        print(f"error: {args.command} is unavailable: {_error_text(module)}", file=sys.stderr)
        return 2
    from hint.backbones import WeightsUnavailable

    try:
        return int(module.run(args) or 0)
    except (WeightsUnavailable, ValueError, OSError) as e:
        print(f"error: {_error_text(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

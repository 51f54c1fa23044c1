"""Command-line flags made from a dataclass's fields, so that each setting's default, help and choices are
declared once, on the field (:func:`option`); a command adds them with :func:`add_arguments` and turns
the parsed flags back into the dataclass with :func:`from_args`.

A field ``name`` becomes ``--name`` (``_`` → ``-``), typed after its annotation: ``X | None`` as ``X``, a
sequence as ``nargs`` values of its item type, a bool defaulting to False as ``--name`` and one defaulting
to True as ``--no-name``. Fields made without :func:`option` (no help) are no flags.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, Field, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


def option(
    default: Any = MISSING, help: str = "", *, choices: Iterable[Any] | None = None, **flag: Any
) -> Any:
    """A dataclass field that is also a command-line flag.

    Args:
        default: the field's default (none: a required flag).
        help: the flag's help (``%(default)s`` shows the default).
        choices: the allowed values (of each item, for a sequence).
        flag: other :meth:`argparse.ArgumentParser.add_argument` arguments (``metavar``, ``nargs``) and
            ``absent``: the value a record without the field implies (see ``BuildConfig.from_manifest``).

    Returns:
        The :func:`dataclasses.field`; a sequence default is stored as given (use a tuple).
    """
    meta = {"help": help, "choices": list(choices) if choices is not None else None, **flag}
    return field(default=default, metadata=meta)


def options(cls: type) -> list[Field]:
    """The fields of dataclass ``cls`` made with :func:`option`."""
    return [f for f in fields(cls) if "help" in f.metadata]


def flag_name(f: Field) -> str:
    """``--name``, or ``--no-name`` for a bool that defaults to True."""
    name = f.name.replace("_", "-")
    return f"--no-{name}" if f.default is True else f"--{name}"


def _kind(hint: Any) -> tuple[Any, bool]:
    """(the flag's value type, whether it takes several values) of a field annotation."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence) and origin is not str:
        return typing.get_args(hint)[0], True
    return hint, False


def add_arguments(
    cls: type,
    parser: argparse.ArgumentParser,
    exclude: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add a flag to ``parser`` for each :func:`option` field of dataclass ``cls`` not in ``exclude``.

    Args:
        cls: the dataclass.
        parser: where the flags go.
        exclude: field names left out.
        defaults: the command's own default for some fields (else the field's; none: a required flag).
    """
    defaults = defaults or {}
    hints = typing.get_type_hints(cls)
    skip = set(exclude)
    for f in options(cls):
        if f.name in skip:
            continue
        meta = {k: v for k, v in f.metadata.items() if k not in ("absent", "choices")}
        kw: dict[str, Any] = {"dest": f.name, "help": meta.pop("help"), **meta}
        default = defaults.get(f.name, f.default)
        if default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = list(default) if isinstance(default, tuple) else default
        kind, many = _kind(hints[f.name])
        if kind is bool:
            kw["action"] = "store_false" if f.default is True else "store_true"
        else:
            kw["type"] = None if kind is str else kind
            kw["choices"] = f.metadata["choices"]
            if many:
                kw.setdefault("nargs", "+")
        parser.add_argument(flag_name(f), **kw)


def from_args(cls: type[T], args: argparse.Namespace, **changes: Any) -> T:
    """The dataclass ``cls`` of parsed flags (those :func:`add_arguments` added; other fields keep their
    defaults), with ``changes`` on top."""
    given = {f.name: getattr(args, f.name) for f in options(cls) if hasattr(args, f.name)}
    return cls(**{**given, **changes})

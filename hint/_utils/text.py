"""Short, one-line texts for messages."""

from __future__ import annotations

from typing import Any


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(v: Any) -> str:
    """A value for a message: numbers and strings cut to a few dozen characters."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 200:
        return f"an integer of {v.bit_length()} bits"
    s = repr(v) if isinstance(v, (str, float)) else str(v) if isinstance(v, int) else type(v).__name__
    return s if len(s) <= 40 else s[:37] + "..."


def kind_of(v: Any) -> str:
    """What a JSON value is, for a message (``string 'abc'``, ``a list``, ``null`` ...)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"number {short(v)}"
    if isinstance(v, str):
        return f"string {short(v)}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__

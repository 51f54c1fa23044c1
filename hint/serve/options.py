"""The request options and the server's limits.

Options live in one table, :data:`OPTIONS`: a new option is one :class:`Option` row (its JSON type, its
range, its multipart text form); the handler reads it from ``request.options``.

A value that breaks an option's rule is a :class:`RequestError`: an HTTP 4xx code and one line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hint._utils.text import kind_of, one_line, short

#: image formats accepted (PIL names; MPO is the multi-picture JPEG many phones write)
FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF")


MAX_NAME = 200  # longest concept name or WNID accepted


MAX_PERMUTATIONS = 256  # probability-game permutations a request may ask for (the bank uses 256)


class RequestError(Exception):
    """A client error: HTTP ``code`` (4xx; 500 for a server bug) and a one-line ``message``."""

    TYPES = {
        400: "BadRequest",
        413: "PayloadTooLarge",
        415: "UnsupportedMediaType",
        500: "InternalServerError",
    }

    def __init__(self, code: int, message: str):
        self.code = int(code)
        self.message = one_line(message)
        super().__init__(self.message)

    def body(self) -> dict:
        """The JSON error answer (``#/$defs/error`` of docs/response.schema.json)."""
        return {"code": self.code, "type": self.TYPES.get(self.code, "Error"), "message": self.message}

    @property
    def reason(self) -> str:
        """The message as an HTTP reason phrase: printable ASCII, one line."""
        return "".join(c if 32 <= ord(c) < 127 else "?" for c in one_line(self.message, 200))


@dataclass(frozen=True)
class Limits:
    """What the server accepts; the handler builds it from its config and its bank."""

    channels: int = 0  # D, neurons of the hooked layer: range of top_k, ablate, neuron
    max_bytes: int = 20_000_000  # encoded image bytes above this -> 413
    max_pixels: int = 40_000_000  # width x height declared by the header above this -> 413
    max_decode_pixels: int = 16_000_000  # pixels actually decoded (JPEG after draft) above this -> 413
    work_size: int = 448  # decode to at least this many pixels per axis (the model squashes to 224)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # option name -> the server's own default
    options: tuple[str, ...] | None = None  # accepted option names; None: all of OPTIONS
    concept: Callable[[str], str] | None = None  # name or WNID -> bank WNID (raises RequestError)
    max_concepts: int = 1000
    formats: tuple[str, ...] = FORMATS
    max_instances: int = 16  # KServe envelopes: instances (v1) or inputs (v2) one request may carry -> 413

    def accepts(self, name: str) -> bool:
        return name in OPTIONS and (self.options is None or name in self.options)

    def default(self, name: str) -> Any:
        """Option ``name``'s default on this server: the server's (``defaults``), else the table's."""
        value = self.defaults[name] if name in self.defaults else OPTIONS[name].default
        return list(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Option:
    """One request option: its type (``kind``), range and default; JSON and multipart text forms.

    ``kind``: ``int``, ``number``, ``bool``, ``ints`` (list of ints) or ``names`` (list of strings).
    Bounds are values or functions of :class:`Limits`; ``default`` is the option's one declared default
    (a server may set its own: :attr:`Limits.defaults`). ``form`` says which request the
    option belongs to: ``explain`` (with an image) or ``neuron`` (the reverse direction, no image).
    ``resolve`` post-processes a valid value (e.g. concept names to WNIDs).
    """

    name: str
    kind: str
    default: Any = None
    lo: Any = None
    hi: Any = None
    max_items: Any = None
    nullable: bool = False  # JSON null means the default
    form: str = "explain"
    resolve: Callable[[Any, Limits], Any] | None = None
    help: str = ""


#: ``"concepts": ["all"]`` (or the form field ``concepts=all``) asks for every concept of the bank
ALL = "all"


def _concepts(names: list[str], limits: Limits) -> list[str] | str | None:
    if not names:
        raise RequestError(400, 'concepts is empty: leave it out for the relevant concepts, or send ["all"]')
    if len(names) == 1 and names[0].strip().lower() == ALL:
        return ALL
    if limits.concept is None:
        return list(dict.fromkeys(names))
    return list(dict.fromkeys(limits.concept(n) for n in names))


#: every option a request may set (JSON keys or multipart text fields)
OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        Option("concepts", "names", None, max_items=lambda lim: lim.max_concepts, nullable=True, resolve=_concepts,
               help="concepts to report, in this order (names or WNIDs); [\"all\"] for every bank concept; "
                    "absent: the predicted class's path and the present ones"),
        Option("top_k", "int", 5, lo=0, hi=lambda lim: lim.channels,
               help="neurons listed per concept"),
        Option("threshold", "number", 0.5, lo=0.0, hi=1.0,
               help="share of a concept's bank-layer map maximum that outlines its region (this image's neurons; "
                    "and its box when the bank has no localisation head)"),
        Option("return_maps", "bool", False,
               help="add each concept's map: the bank's localisation head's fused map (map_size; 14x14 for the "
                    "default bank), else the bank layer's concept map"),
        Option("box_threshold", "number", None, lo=0.0, hi=1.0, nullable=True,
               help="boxes: share of the min-max normalised localisation map that outlines a box (default: the "
                    "bank head's calibrated threshold)"),
        Option("all_boxes", "bool", False, help="a box for every listed concept, present or not"),
        Option("ablate", "ints", [], lo=0, hi=lambda lim: lim.channels - 1, max_items=lambda lim: lim.channels,
               help="neurons set to their baseline inside the network at the hooked layer (before and after returned)"),
        Option("ablate_probe_only", "bool", False,
               help="ablate in the concept probes' input only: concept maps change, the class prediction does not"),
        Option("image_neurons", "bool", True, help="this image's Shapley value of every neuron per concept"),
        Option("permutations", "int", None, lo=1, hi=MAX_PERMUTATIONS, nullable=True,
               help="this image's neurons in the probe-probability game instead (the paper's, as the bank's φ), "
                    "estimated with M seeded permutations; absent: exact values of the probe-logit game"),
        Option("seed", "int", 0, lo=0, hi=2**31 - 1, help="seed of those permutations (with permutations)"),
        Option("regions", "bool", False,
               help="per-image Shapley over the predicted class's step-1 responsible region (guided "
                    "backprop), returned as a map, instead of each concept's own region"),
        Option("neuron", "int", None, lo=0, hi=lambda lim: lim.channels - 1, form="neuron",
               help="reverse direction: this neuron's Shapley value for every concept"),
    )
}  # fmt: skip


def bank_concepts(hierarchy: Any, bank: Any) -> Callable[[str], str]:
    """``Limits.concept`` for a concept bank: a name or id -> its bank id (``Hierarchy.find`` in the
    bank's hierarchy); an alias (a concept with the same classes as a built one) answers with the built concept."""
    built = {w: w for w in bank.wnids}
    for c in bank.concepts:
        for a in c.get("aliases", []):
            built.setdefault(a, c["wnid"])
    status = {c["wnid"]: c["status"] for c in bank.meta.get("candidates", [])}

    def concept(name: str) -> str:
        try:
            wnid = hierarchy.find(name).wnid
        except KeyError:
            what = getattr(hierarchy, "what", "ImageNet class or ancestor")
            raise RequestError(400, f"unknown concept {name[:80]!r}: no {what} has that name or id") from None
        if wnid not in built:
            why = status.get(wnid, "not a candidate (fewer than two classes)")
            raise RequestError(400, f"concept {name[:80]!r} ({wnid}) is not in this bank: {why}")
        return built[wnid]

    return concept


def check_option(opt: Option, v: Any, limits: Limits) -> Any:
    """A JSON value of ``opt`` -> the validated value (RequestError otherwise)."""

    def bound(b):
        return b(limits) if callable(b) else b

    lo, hi, name = bound(opt.lo), bound(opt.hi), opt.name
    if opt.kind == "int":
        out = _int(v, name, lo, hi)
    elif opt.kind == "number":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise RequestError(400, f"{name} must be a number in [{lo:g}, {hi:g}], not {kind_of(v)}")
        if not math.isfinite(v) or not lo <= v <= hi:
            raise RequestError(400, f"{name} must be in [{lo:g}, {hi:g}], got {short(v)}")
        out = float(v)
    elif opt.kind == "bool":
        if not isinstance(v, bool):
            raise RequestError(400, f"{name} must be true or false, not {kind_of(v)}")
        out = v
    elif opt.kind in ("ints", "names"):
        what = "neuron indices" if opt.kind == "ints" else "names or WNIDs"
        if not isinstance(v, list):
            raise RequestError(400, f"{name} must be a list of {what}, not {kind_of(v)}")
        most = bound(opt.max_items)
        if most is not None and len(v) > most:
            raise RequestError(400, f"{name} lists {len(v)} entries; at most {most}")
        if opt.kind == "ints":
            out = [_int(x, name, lo, hi) for x in v]
        else:
            for x in v:
                if not isinstance(x, str) or not x.strip() or len(x) > MAX_NAME:
                    raise RequestError(
                        400, f"{name} must be non-empty strings (names or WNIDs), got {kind_of(x)}"
                    )
            out = [x.strip() for x in v]
    else:  # pragma: no cover - a mistake in OPTIONS
        raise ValueError(f"option {name}: unknown kind {opt.kind!r}")
    return opt.resolve(out, limits) if opt.resolve else out


def _int(v: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(400, f"{name} must be an integer in {lo}..{hi}, not {kind_of(v)}")
    if not lo <= v <= hi:
        raise RequestError(400, f"{name} {short(v)} out of range {lo}..{hi}")
    return v


_INT = re.compile(r"[+-]?\d{1,9}")


def from_text(opt: Option, value: Any) -> Any:
    """A multipart field -> the JSON type of its option (``concepts`` and ``ablate`` comma separated,
    booleans true/false); a field TorchServe decoded as JSON stays as it is."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, f"option {opt.name!r} is not UTF-8 text") from None
    if not isinstance(value, str):
        return value
    t = value.strip()
    if opt.kind == "names":
        return [c.strip() for c in t.split(",") if c.strip()]
    if opt.kind == "bool":
        if t.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise RequestError(400, f"{opt.name} must be true or false, got {t[:40]!r}")
        return t.lower() in ("true", "1", "yes")
    if opt.kind == "number":
        try:
            return float(t)
        except ValueError:
            raise RequestError(400, f"{opt.name} must be a number, got {t[:40]!r}") from None
    items = [p for p in re.split(r"[,\s]+", t) if p] if opt.kind == "ints" else [t]
    for p in items:
        if not _INT.fullmatch(p):
            raise RequestError(400, f"{opt.name} must be an integer, got {p[:40]!r}")
    return [int(p) for p in items] if opt.kind == "ints" else int(t)


def defaults(limits: Limits | None = None, form: str = "explain") -> dict[str, Any]:
    """Every ``form`` option's default (the table's, or ``limits``' server defaults), by name."""
    lim = limits or Limits()
    return {name: lim.default(name) for name, o in OPTIONS.items() if o.form == form}

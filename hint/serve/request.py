"""One raw TorchServe request row -> a validated request, or a :class:`RequestError` with one line.

TorchServe hands a handler one dict per request: ``{"body": <bytes | str | decoded JSON>}`` for a
raw body, or one entry per part of a multipart form (files as bytes, text fields as bytes).
:func:`parse_request` turns such a row into an :class:`ExplainRequest` (a decoded image and its
options) or a :class:`NeuronRequest` (the reverse direction); anything wrong with what the client sent
becomes ``RequestError(code, message)`` with a 4xx code and a one-line message. *Every* exception
raised while parsing (JSON nested too deep, integers past Python's digit limit, decoder errors, memory)
ends there, so one bad request can never fail the others of its batch.

Options live in one table, :data:`OPTIONS`: a new option is one :class:`Option` row (its JSON type, its
range, its multipart text form); the handler reads it from ``request.options``.

Images are decoded for the model, not for display: a JPEG is decoded at a reduced DCT scale
(``draft``), other formats at full size and then reduced (``Image.reduce``), to about ``work_size``
pixels per axis (twice the model's input); ``ExplainRequest.size`` keeps the size of the image as
displayed, the pixels boxes refer to. Truncated data is an error, also where a decoder would fill
the missing part quietly (a JPEG with an early end marker, a PNG whose compressed data stops early).

Under TorchServe's KServe envelopes (config.properties ``service_envelope``) the handler gets what the
envelope made of the request instead of rows: :func:`parse_envelope` reads the v1 ``instances`` or the
v2 ``inputs`` of one request, each item into a request as above (the JSON body's form).
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import io
import json
import logging
import math
import re
import struct
import warnings
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

logger = logging.getLogger(__name__)

#: image formats accepted (PIL names; MPO is the multi-picture JPEG many phones write)
FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF")
#: names TorchServe gives the image: the raw body, or common multipart part names
IMAGE_PARTS = ("body", "data", "file", "image")
FORM_URLENCODED = "application/x-www-form-urlencoded"
MAX_NAME = 200  # longest concept name or WNID accepted
MAX_PERMUTATIONS = 256  # probability-game permutations a request may ask for (the bank uses 256)


class RequestError(Exception):
    """A client error: HTTP ``code`` (4xx; 500 for a server bug) and a one-line ``message``."""

    TYPES = {400: "BadRequest", 413: "PayloadTooLarge", 415: "UnsupportedMediaType", 500: "InternalServerError"}

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
    default_top_k: int = 5
    default_threshold: float = 0.5
    options: tuple[str, ...] | None = None  # accepted option names; None: all of OPTIONS
    concept: Callable[[str], str] | None = None  # name or WNID -> bank WNID (raises RequestError)
    max_concepts: int = 1000
    formats: tuple[str, ...] = FORMATS
    max_instances: int = 16  # KServe envelopes: instances (v1) or inputs (v2) one request may carry -> 413

    def accepts(self, name: str) -> bool:
        return name in OPTIONS and (self.options is None or name in self.options)


@dataclass(frozen=True)
class Option:
    """One request option: its type (``kind``), range and default; JSON and multipart text forms.

    ``kind``: ``int``, ``number``, ``bool``, ``ints`` (list of ints) or ``names`` (list of strings).
    Bounds and defaults are values or functions of :class:`Limits`. ``form`` says which request the
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
        Option("top_k", "int", lambda lim: lim.default_top_k, lo=0, hi=lambda lim: lim.channels,
               help="neurons listed per concept"),
        Option("threshold", "number", lambda lim: lim.default_threshold, lo=0.0, hi=1.0,
               help="share of a concept's bank-layer map maximum that outlines its region (this image's neurons; "
                    "and its box when the bank has no localisation head)"),
        Option("return_maps", "bool", False,
               help="add each concept's map: the bank's localisation head's fused map (map_size; 14x14 for the "
                    "default bank), else the bank layer's concept map"),
        Option("box_threshold", "number", None, lo=0.0, hi=1.0, nullable=True,
               help="boxes: share of the min-max normalised localisation map that outlines a box (default: the "
                    "bank head's calibrated threshold)"),
        Option("all_boxes", "bool", False, help="a box for every listed concept, present or not"),
        Option("ablate", "ints", lambda lim: [], lo=0, hi=lambda lim: lim.channels - 1, max_items=lambda lim: lim.channels,
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


@dataclass
class ExplainRequest:
    """An image to explain: ``image`` (RGB, reduced for the model), ``size`` (width, height) of the
    image as displayed (EXIF orientation applied; boxes are in these pixels), its ``format`` and its
    validated ``options`` (every explain option, defaults filled in; also readable as attributes)."""

    image: Image.Image
    size: tuple[int, int]
    format: str
    options: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("options") or {}
        if name in options:
            return options[name]
        raise AttributeError(name)


@dataclass
class NeuronRequest:
    """The reverse direction: one neuron's Shapley value for every concept."""

    neuron: int


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


# ------------------------------------------------------------------------------------------ parsing


def parse_request(row: Any, limits: Limits, headers: Mapping | None = None) -> ExplainRequest | NeuronRequest:
    """A TorchServe row (and its request headers, when known) -> a validated request.

    Raises :class:`RequestError` and nothing else: whatever goes wrong with the client's data is a 4xx.
    """
    try:
        return _parse(row, limits, content_type(headers))
    except RequestError:
        raise
    except MemoryError:
        raise RequestError(413, "request too large to read") from None
    except RecursionError:
        raise RequestError(400, "request nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - client data must never fail the batch
        logger.warning("request rejected by an unexpected %s: %s", type(e).__name__, one_line(str(e), 200))
        raise RequestError(400, f"malformed request ({type(e).__name__}: {str(e) or 'no detail'})") from None


def content_type(headers: Mapping | None) -> str:
    """The request's Content-Type (lower case, no parameters; "" when unknown)."""
    for k, v in (headers or {}).items():
        if isinstance(k, str) and k.lower() == "content-type" and isinstance(v, str):
            return v.split(";", 1)[0].strip().lower()
    return ""


def _parse(row: Any, limits: Limits, ctype: str) -> ExplainRequest | NeuronRequest:
    row = row if isinstance(row, dict) else {} if row is None else {"body": row}
    fields = {k: v for k, v in row.items() if k in OPTIONS and k not in IMAGE_PARTS}
    payloads = {k: v for k, v in row.items() if k not in fields}
    if any(_junk_name(k) for k in payloads) or (
        ctype == FORM_URLENCODED and (not row or payloads.keys() - set(IMAGE_PARTS))
    ):
        raise RequestError(
            415,
            f"the body was sent as a form ({FORM_URLENCODED}, what curl --data-binary sends without a "
            "Content-Type): send the image with Content-Type image/jpeg (or image/png, "
            'application/octet-stream ...), as multipart form data, or as JSON {"image": base64}',
        )
    if not row:
        raise RequestError(400, "empty request: send an image (raw bytes, multipart or JSON base64)")
    if len(payloads) > 1:
        names = ", ".join(repr(str(k)[:40]) for k in payloads)
        known = ", ".join(k for k in OPTIONS if limits.accepts(k))
        raise RequestError(400, f"expected one image part, got {names}; options are {known or 'none'}")
    opts = {k: _from_text(OPTIONS[k], v) for k, v in fields.items()}
    image: bytes | None = None
    if payloads:
        ((part, value),) = payloads.items()
        doc = _document(part, value)
        image = _merge_json(doc, opts, limits) if doc is not _RAW else bytes_of(value)
    return _build(opts, image, limits)


_RAW = object()  # marker: the payload is raw (image) bytes, not a JSON document


def _document(part: str, value: Any) -> Any:
    """A payload -> its JSON document, or ``_RAW`` for image bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        first = _first(value)
        if not first:
            raise RequestError(400, "empty body: send image bytes, multipart form data or JSON")
        if first not in (b"{", b"["):
            return _RAW
        try:
            return json.loads(bytes(value) if isinstance(value, memoryview) else value)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int digit limit
            raise RequestError(400, f"bad JSON: {e}") from None
    if isinstance(value, str):
        first = _first(value)
        if not first:
            raise RequestError(400, "empty body: send image bytes, multipart form data or JSON")
        if first not in ("{", "["):
            raise RequestError(
                400,
                f"part {part!r} is text, not an image: send the image bytes with an image/* or "
                'application/octet-stream Content-Type, as a multipart file, or JSON {"image": base64}',
            )
        try:
            return json.loads(value)
        except ValueError as e:
            raise RequestError(400, f"bad JSON: {e}") from None
    return value  # JSON TorchServe decoded already (application/json)


def _merge_json(doc: Any, opts: dict, limits: Limits) -> bytes | None:
    """Merge a JSON document's options into ``opts``; the decoded image bytes (None without image)."""
    if not isinstance(doc, dict):
        raise RequestError(400, f"JSON body must be an object, not {kind_of(doc)}")
    image = None
    for k, v in doc.items():
        if k == "image":
            image = v
            continue
        if k in opts:
            raise RequestError(400, f"option {str(k)[:40]!r} given twice (JSON and form field)")
        opts[k] = v
    if "image" in doc:
        return _base64(image, limits.max_bytes)
    if not any(OPTIONS[k].form != "explain" for k in opts if k in OPTIONS):
        raise RequestError(400, 'JSON request needs "image" (base64) or "neuron" (int)')
    return None


def _build(opts: dict, image: bytes | None, limits: Limits) -> ExplainRequest | NeuronRequest:
    for k in opts:
        if not limits.accepts(k):
            known = ", ".join(["image", *(n for n in OPTIONS if limits.accepts(n))])
            raise RequestError(400, f"unknown option {str(k)[:40]!r}; known: {known}")
    other = [k for k in opts if OPTIONS[k].form != "explain"]
    if other:
        name = other[0]
        if image is not None:
            raise RequestError(400, f'"{name}" cannot be combined with an image')
        rest = [k for k in opts if k != name]
        if rest:
            raise RequestError(400, f'"{name}" takes no other option (got {", ".join(rest)})')
        return NeuronRequest(neuron=check_option(OPTIONS[name], opts[name], limits))
    if image is None:
        raise RequestError(400, "no image in the request (empty body?)")
    options = {}
    for name, opt in OPTIONS.items():
        if opt.form != "explain" or not limits.accepts(name):
            continue
        if name in opts and not (opt.nullable and opts[name] is None):
            options[name] = check_option(opt, opts[name], limits)
        else:
            default = opt.default(limits) if callable(opt.default) else opt.default
            options[name] = default
    img, size, fmt = decode_image(image, limits)
    return ExplainRequest(img, size, fmt, options)


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


def _from_text(opt: Option, value: Any) -> Any:
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


_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


def _base64(s: Any, max_bytes: int) -> bytes:
    if not isinstance(s, str):
        raise RequestError(400, f"image must be a base64 string, not {kind_of(s)}")
    s = "".join(_DATA_URL.sub("", s.strip(), count=1).split())
    if not s:
        raise RequestError(400, "image is empty")
    if len(s) > max_bytes * 4 // 3 + 8:
        raise RequestError(413, f"image is over {max_bytes} bytes")
    s += "=" * (-len(s) % 4)
    try:
        if "-" in s or "_" in s:
            return base64.b64decode(s, altchars=b"-_", validate=True)
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, f"image is not valid base64 ({e})") from None


def _junk_name(name: Any) -> bool:
    """A part name no client chose: binary bytes a form decoder split into 'fields'."""
    return not isinstance(name, str) or any(ord(c) < 32 or ord(c) == 127 or c == "\ufffd" for c in name)


# ------------------------------------------------------------------------------------------ KServe envelopes

#: TorchServe's KServe envelopes (config.properties ``service_envelope``) the handler answers under
ENVELOPES = ("kserve", "kservev2")


def parse_envelope(
    items: Any, limits: Limits, envelope: str
) -> list[ExplainRequest | NeuronRequest | RequestError] | RequestError:
    """What a KServe envelope hands the handler for ONE request -> one request (or its error) per item.

    TorchServe 0.12's envelopes (``ts/torch_handler/request_envelope/``) read the first request of the
    batch only and call the handler with

    * ``kserve`` (v1): the request's ``instances`` list as sent (``None`` without one);
    * ``kservev2``: the request's ``inputs``, each ``{"name", "shape", "datatype", "data", ...}`` where,
      for ``datatype`` ``BYTES``, ``data`` is already reduced to the first element of the client's list.

    An instance, or that element, is the JSON body's object ``{"image": "<base64>", ...options}`` (or
    ``{"neuron": n}``), that object as JSON text, or a bare base64 string (the image, default options).

    Returns a list in item order, an item's client error as its ``RequestError`` (the message names the
    item: ``instances[1]: ...``, ``input 'image': ...``); or one ``RequestError`` when the request as a
    whole is wrong (no list, empty, more than ``limits.max_instances`` items). Raises nothing.
    """
    v2 = envelope == "kservev2"
    what = "inputs" if v2 else "instances"
    if not isinstance(items, list) or not items:
        got = f"no {what!r} list" if items is None else "an empty list" if items == [] else kind_of(items)
        example = _V2_EXAMPLE if v2 else '{"image": "<base64>"}'
        return RequestError(400, f'a KServe {"v2" if v2 else "v1"} request needs "{what}": a list like '
                                 f"[{example}], got {got}")  # fmt: skip
    if len(items) > limits.max_instances:
        return RequestError(413, f"{len(items)} {what} in one request; at most {limits.max_instances}")
    out: list[ExplainRequest | NeuronRequest | RequestError] = []
    for i, item in enumerate(items):
        named = v2 and isinstance(item, dict) and isinstance(item.get("name"), str)
        where = f"input {one_line(item['name'], 40)!r}" if named else f"{what}[{i}]"
        try:
            doc = _v2_input(item) if v2 else _instance(item)
            out.append(parse_request({"body": doc}, limits, {"Content-Type": "application/json"}))
        except RequestError as e:
            out.append(RequestError(e.code, f"{where}: {e.message}"))
        except Exception as e:  # noqa: BLE001 - client data must never fail the request's other items
            out.append(RequestError(400, f"{where}: malformed ({type(e).__name__}: {str(e) or 'no detail'})"))
    return out


_V2_EXAMPLE = '{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["<base64>"]}'


def _instance(item: Any) -> dict:
    """A KServe v1 instance -> the JSON body's object."""
    return _item(item, "an instance")


def _v2_input(item: Any) -> dict:
    """A KServe v2 input as the kservev2 envelope hands it -> the JSON body's object."""
    if not isinstance(item, dict):
        raise RequestError(400, f"an input is an object (name, shape, datatype, data), not {kind_of(item)}")
    if item.get("datatype") != "BYTES":
        got = kind_of(item.get("datatype"))
        raise RequestError(400, f"datatype must be BYTES (the image as a base64 string), not {got}")
    return _item(item.get("data"), "data")


def _item(value: Any, what: str) -> dict:
    """One item: a JSON object (or its text) is the JSON body's object, any other string the base64 image."""
    if isinstance(value, str) and _first(value) == "{":
        try:
            value = json.loads(value)
        except ValueError as e:
            raise RequestError(400, f"bad JSON: {e}") from None
    if isinstance(value, str):
        return {"image": value}
    if isinstance(value, dict):
        return value
    shape = '{"image": "<base64>", ...options}'
    raise RequestError(400, f"{what} must be a base64 string or a JSON object {shape}, not {kind_of(value)}")


# ------------------------------------------------------------------------------------------ images


def decode_image(raw: bytes, limits: Limits) -> tuple[Image.Image, tuple[int, int], str]:
    """Encoded bytes -> (RGB image for the model, (width, height) as displayed, format); 4xx otherwise.

    Peak memory is bounded by ``limits.max_decode_pixels``: JPEGs are decoded at a reduced DCT scale,
    other formats at full size and refused above that many pixels.
    """
    if not raw:
        raise RequestError(400, "image is empty")
    if len(raw) > limits.max_bytes:
        raise RequestError(413, f"image is {len(raw)} bytes, over the {limits.max_bytes} byte limit")
    fmt = sniff(raw) or "image"
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated image is an error, never half an image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # e.g. corrupt EXIF: the pixels still decode
            return _decode(raw, limits)
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(413, f"{fmt} too large: over the {limits.max_pixels} pixel limit") from None
    except UnidentifiedImageError:
        if fmt != "image":
            raise RequestError(400, f"broken {fmt} file: its header cannot be read") from None
        raise RequestError(
            400, f"not a supported image (JPEG, PNG, WebP, BMP, GIF, TIFF); first bytes {bytes(raw[:16])!r}"
        ) from None
    except MemoryError:
        raise RequestError(413, f"{fmt} too large to decode") from None
    except Exception as e:  # noqa: BLE001 - any decoder error on client bytes is a client error
        raise RequestError(400, f"cannot decode {fmt}: {one_line(str(e)) or type(e).__name__}") from None


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # fmt: skip


def _formats(wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The wanted formats PIL has a plugin for (every plugin registered first: MPO, WebP ...)."""
    Image.init()
    return tuple(f for f in wanted if f in Image.OPEN)


def _decode(raw: bytes, limits: Limits) -> tuple[Image.Image, tuple[int, int], str]:
    formats = _formats(limits.formats)
    with Image.open(io.BytesIO(raw), formats=formats) as im:
        fmt = im.format or "image"
        w, h = im.size
        if w < 1 or h < 1:
            raise RequestError(400, f"{fmt} has zero size ({w}x{h})")
        if w * h > limits.max_pixels:
            raise RequestError(
                413, f"{fmt} is {w}x{h} = {w * h} pixels, over the {limits.max_pixels} pixel limit"
            )
        try:
            orientation = int(im.getexif().get(0x0112, 1))
        except Exception:  # noqa: BLE001 - a broken EXIF block: keep the pixels as stored
            orientation = 1
        im.seek(0)  # animated GIF/WebP/PNG, multi-page TIFF: the first frame
        draft = None
        if fmt in ("JPEG", "MPO") and min(w, h) >= 2 * limits.work_size:
            draft = (limits.work_size, limits.work_size)
            im.draft("RGB", draft)  # DCT scaling: 1/2, 1/4 or 1/8, still >= work_size per axis
        dw, dh = im.size
        if dw * dh > limits.max_decode_pixels:
            if draft:
                why = f"{fmt} is {w}x{h}: even decoded reduced ({dw}x{dh}) it is"
            else:
                why = f"{fmt} is {w}x{h} = {w * h} pixels,"
            raise RequestError(
                413, f"{why} over the {limits.max_decode_pixels} pixel limit for images decoded at full size "
                f"(JPEG is decoded reduced and may have up to {limits.max_pixels})",
            )  # fmt: skip
        if fmt == "PNG":
            _check_png(raw)
        im.load()
        if fmt in ("JPEG", "MPO"):
            _check_jpeg(raw, im, draft, formats)
        small = for_model(im, limits.work_size)
    if orientation in _TRANSPOSE:
        small = small.transpose(_TRANSPOSE[orientation])
        if orientation >= 5:
            w, h = h, w
    return small, (w, h), fmt


def for_model(im: Image.Image, work: int) -> Image.Image:
    """An image -> 8-bit RGB, reduced by whole factors per axis to no less than ``work`` pixels (the
    model squashes it to its input size anyway); transparent pixels composited on white."""
    from hint.backbones import to_rgb

    w, h = im.size
    fx, fy = max(1, w // work), max(1, h // work)
    if fx == fy == 1:
        return to_rgb(im)
    sixteen = im.mode.startswith("I;16")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif sixteen:
        im = im.convert("I")
    premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(im.mode)
    if premultiplied:  # average colours weighted by alpha
        straight = im.mode
        im = im.convert(premultiplied).reduce((fx, fy)).convert(straight)
    else:
        im = im.reduce((fx, fy))
    if sixteen:  # as to_rgb does for 16-bit images: 0..65535 -> 0..255
        a = np.asarray(im, dtype=np.float64) * (255.0 / 65535.0)
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
    return to_rgb(im)


_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker after entropy-coded data
#: bytes put in front of a JPEG's end marker to see whether the decoder still needs data (no 0xFF)
_PROBE = bytes((k * 73 + 41) % 255 for k in range(512))


def _jpeg_eoi(raw: bytes) -> int | None:
    """Where the first image's entropy-coded data ends before its EOI marker (fill bytes excluded),
    following the marker segments as libjpeg does; None when not found."""
    n, i = len(raw), 2
    while i + 1 < n:
        if raw[i] != 0xFF:  # garbage between segments: libjpeg skips to the next 0xFF
            j = raw.find(b"\xff", i)
            if j < 0:
                return None
            i = j
            continue
        m = raw[i + 1]
        if m == 0xFF:
            i += 1
        elif m == 0xD9:
            while i > 2 and raw[i - 1] == 0xFF:
                i -= 1
            return i
        elif 0xD0 <= m <= 0xD7 or m in (0x00, 0x01, 0xD8):
            i += 2
        else:
            if i + 4 > n:
                return None
            i += 2 + int.from_bytes(raw[i + 2 : i + 4], "big")
            if m == 0xDA:  # start of scan: entropy-coded data up to the next marker
                found = _MARKER.search(raw, i)
                if not found:
                    return None
                i = found.start()
    return None


def _check_jpeg(
    raw: bytes, decoded: Image.Image, draft: tuple[int, int] | None, formats: tuple[str, ...]
) -> None:
    """libjpeg fills the rest of a scan that ends early (an end marker right after a few bytes) with
    flat grey and only warns. Decode again with bytes put before the end marker: a complete image
    never reads them (same pixels); one that still needed data decodes them (other pixels)."""
    eoi = _jpeg_eoi(raw)
    if eoi is None:
        return  # no end marker where libjpeg would find one: the decoder itself reports truncation
    probe = raw[:eoi] + _PROBE + raw[eoi:]
    try:
        with Image.open(io.BytesIO(probe), formats=formats) as again:
            again.seek(0)
            if draft:
                again.draft("RGB", draft)
            again.load()
            same = (
                again.size == decoded.size
                and again.mode == decoded.mode
                and again.tobytes() == decoded.tobytes()
            )
    except Exception:  # noqa: BLE001 - the probe bytes broke the decoder: it was reading them
        same = False
    if not same:
        raise RequestError(400, "truncated JPEG: the image data ends before the image does")


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _check_png(raw: bytes) -> None:
    """PIL accepts a PNG whose compressed data ends (cleanly) before the last row; count the rows."""
    data = memoryview(raw)
    pos, header, inflater, have, need, palette = 8, None, zlib.decompressobj(), 0, None, False
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR" and len(chunk) >= 13:
            header = struct.unpack(">IIBBBBB", chunk[:13])
            w, h, depth, color, _, _, interlace = header
            bits = _PNG_CHANNELS.get(color, 0) * depth
            if not bits:
                return  # PIL refuses it itself
            passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
            need = 0
            for x0, y0, dx, dy in passes:
                cols, rows = -(-(w - x0) // dx) if w > x0 else 0, -(-(h - y0) // dy) if h > y0 else 0
                if cols and rows:
                    need += rows * (1 + -(-(cols * bits) // 8))
        elif kind == b"PLTE":
            palette = True
        elif kind == b"IDAT" and need is not None:
            if header[3] == 3 and not palette:
                raise RequestError(400, "broken PNG: a palette image without a palette (PLTE)")
            try:
                buf = bytes(chunk)
                while buf and have < need:
                    have += len(inflater.decompress(buf, 1 << 20))
                    buf = inflater.unconsumed_tail
            except zlib.error as e:
                raise RequestError(400, f"broken PNG data ({e})") from None
            if have >= need or inflater.eof:
                break
        elif kind == b"IEND":
            break
    if need is not None and have < need:
        raise RequestError(400, f"truncated PNG: its image data stops after {have} of {need} bytes")


_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)  # fmt: skip


def sniff(raw: bytes) -> str | None:
    """The image format the first bytes claim (JPEG, PNG, GIF, WEBP, BMP, TIFF), None otherwise."""
    head = bytes(raw[:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


_libc: list = []


def release_memory() -> None:
    """Give freed decode buffers back to the system (glibc keeps freed heap memory otherwise)."""
    try:
        if not _libc:
            _libc.append(ctypes.CDLL("libc.so.6"))
        if _libc[0] is not None:
            _libc[0].malloc_trim(0)
    except (OSError, AttributeError):
        _libc[:] = [None]


# ------------------------------------------------------------------------------------------ text


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


def bytes_of(value: bytes | bytearray | memoryview) -> bytes | bytearray:
    """Payload bytes without a copy where possible."""
    return value.tobytes() if isinstance(value, memoryview) else value


def _first(value: bytes | bytearray | memoryview | str) -> bytes | str:
    """The first non-blank character of a body (without copying it)."""
    if isinstance(value, memoryview):
        value = value.tobytes()
    blank = r"\s*" if isinstance(value, str) else rb"\s*"
    i = re.match(blank, value).end()
    return bytes(value[i : i + 1]) if not isinstance(value, str) else value[i : i + 1]

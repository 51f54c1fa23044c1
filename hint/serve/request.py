"""One raw TorchServe request row -> a validated request, or a :class:`RequestError` with one line.

TorchServe hands a handler one dict per request: ``{"body": <bytes | str | decoded JSON>}`` for a
raw body, or one entry per part of a multipart form (files as bytes, text fields as bytes).
:func:`parse_request` turns such a row into an :class:`ExplainRequest` (a decoded image and its
options) or a :class:`NeuronRequest` (the reverse direction); anything wrong with what the client sent
becomes ``RequestError(code, message)`` with a 4xx code and a one-line message. *Every* exception
raised while parsing (JSON nested too deep, integers past Python's digit limit, decoder errors, memory)
ends there, so one bad request can never fail the others of its batch.

Options and limits are :mod:`hint.serve.options`; images are decoded by :mod:`hint.serve.images`.

Under TorchServe's KServe envelopes (config.properties ``service_envelope``) the handler gets what the
envelope made of the request instead of rows: :func:`parse_envelope` reads the v1 ``instances`` or the
v2 ``inputs`` of one request, each item into a request as above (the JSON body's form).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from hint._utils.text import kind_of, one_line
from hint.serve.images import decode_image
from hint.serve.options import OPTIONS, Limits, RequestError, check_option, from_text

logger = logging.getLogger(__name__)


#: names TorchServe gives the image: the raw body, or common multipart part names
IMAGE_PARTS = ("body", "data", "file", "image")


FORM_URLENCODED = "application/x-www-form-urlencoded"


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
    opts = {k: from_text(OPTIONS[k], v) for k, v in fields.items()}
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
            options[name] = limits.default(name)
    img, size, fmt = decode_image(image, limits)
    return ExplainRequest(img, size, fmt, options)


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
        return RequestError(
            400, f'a KServe {"v2" if v2 else "v1"} request needs "{what}": a list like [{example}], got {got}'
        )
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

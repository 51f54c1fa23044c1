"""A corpus of bad requests against the handler in-process (one loaded handler for the session).

Every case must get a 4xx (some a given status) with a one-line message, the worker must go on
serving, and mixed into a batch with valid requests it must not change their answers
(``test_batch_isolation``). Cases are generated per category: non-images, truncation, corruption,
bombs, JSON of every wrong type and size, options out of range, concept/neuron/ablate abuse, base64,
content types and multipart. Building a case is cheap; only valid requests run a forward pass.
"""

from __future__ import annotations

import base64
import functools
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image
from support.handler import assert_same_answer, call, encode, jpeg, shared_handler, tabby

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], tuple[dict | object, dict | None]]  # -> (TorchServe row, request headers)
    expect: int | None = None  # a given status, or None for any 4xx


# ------------------------------------------------------------------------------------------ material


@functools.cache
def small() -> Image.Image:
    return tabby().resize((160, 120))


@functools.cache
def good(fmt: str) -> bytes:
    im = small()
    return {
        "jpeg": lambda: jpeg(im),
        "jpeg progressive": lambda: jpeg(im, progressive=True),
        "png": lambda: encode(im, "PNG"),
        "png rgba": lambda: encode(im.convert("RGBA"), "PNG"),
        "png 16-bit gray": lambda: encode(
            Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 257), "PNG"
        ),
        "gif": lambda: encode(im, "GIF"),
        "webp": lambda: encode(im, "WEBP", quality=80),
        "webp lossless": lambda: encode(im, "WEBP", lossless=True),
        "bmp": lambda: encode(im, "BMP"),
        "tiff": lambda: encode(im, "TIFF"),
        "tiff deflate": lambda: encode(im, "TIFF", compression="tiff_deflate"),
    }[fmt]()


@functools.cache
def b64() -> str:
    return base64.b64encode(good("jpeg")).decode()


def chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png(
    width: int, height: int, idat: bytes | None = None, depth: int = 8, color: int = 2, extra=b""
) -> bytes:
    """A PNG file that claims width x height pixels, with the given (or a tiny) compressed stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif(width: int, height: int, lzw: bytes = b"\x02\x02\x44\x01\x00") -> bytes:
    return (
        b"GIF89a"
        + struct.pack("<HH", width, height)
        + b"\x00\x00\x00\x2c"
        + struct.pack("<HHHH", 0, 0, width, height)
        + b"\x00"
        + lzw
        + b"\x3b"
    )


def bmp(width: int, height: int, bpp: int = 24, header: int = 40) -> bytes:
    head = struct.pack("<2sIHHI", b"BM", 54 + 16, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", header, width, height, 1, bpp, 0, 16, 2835, 2835, 0, 0)
    return head + info + b"\0" * 16


def tiff(width: int, height: int, compression: int = 1, offset: int = 8) -> bytes:
    """A little-endian TIFF header with one IFD: width, height, 8-bit RGB, one strip of 16 bytes."""
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, compression),
        (262, 3, 1, 2),
        (273, 4, 1, 200),
        (277, 3, 1, 3),
        (278, 4, 1, height),
        (279, 4, 1, 16),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    body = b"II*\x00" + struct.pack("<I", offset) + ifd
    return body + b"\0" * (216 - len(body))


def jpeg_header(width: int, height: int) -> bytes:
    """A real JPEG's tables with its frame size rewritten, cut a few bytes into the scan, then EOI."""
    raw = bytearray(jpeg(Image.new("RGB", (64, 48), (120, 30, 200))))
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    sos = raw.index(b"\xff\xda")
    return bytes(raw[: sos + 20]) + b"\xff\xd9"


@functools.cache
def bomb_jpeg() -> bytes:
    """The issue's case: a JPEG of ~700 bytes whose header says 6000x6000 (an early end marker)."""
    full = jpeg(Image.new("RGB", (6000, 6000), (120, 30, 200)))
    sos = full.index(b"\xff\xda")
    return full[: sos + 100] + b"\xff\xd9"


def truncate(fmt: str, frac: float, end: bytes = b"") -> bytes:
    data = good(fmt)
    start = data.index(b"IDAT") + 4 if fmt.startswith("png") else 64
    return data[: start + int((len(data) - start) * frac)] + end


def png_short_stream(frac: float) -> bytes:
    """A PNG whose (valid, complete) compressed stream holds only part of the rows."""
    im = np.asarray(small())
    rows = b"".join(b"\0" + r.tobytes() for r in im[: int(len(im) * frac)])
    return png(im.shape[1], im.shape[0], zlib.compress(rows))


def raw(body) -> Callable:
    return lambda: ({"body": body() if callable(body) else body}, None)


def with_headers(row, headers) -> Callable:
    return lambda: (row() if callable(row) else row, headers)


def width() -> int:
    """D, the neurons of the served layer (the bank decides it)."""
    return shared_handler()[0].limits.channels


class Lazy:
    """A value computed when the case is built (e.g. from D), with a fixed name for the test id."""

    def __init__(self, label: str, make: Callable):
        self.label, self.make = label, make

    def __str__(self) -> str:
        return self.label


def value(v):
    return v.make() if isinstance(v, Lazy) else v


def opts(**o) -> Callable:
    """A JSON request with the good image and these options, as TorchServe decoded it."""
    return lambda: ({"body": {"image": b64(), **{k: value(v) for k, v in o.items()}}}, None)


def form(**fields) -> Callable:
    """A multipart request: the good image as a file part and these text fields (bytes)."""
    return lambda: (
        {
            "data": good("jpeg"),
            **{
                k: value(v) if isinstance(value(v), bytes) else str(value(v)).encode()
                for k, v in fields.items()
            },
        },
        None,
    )


# ------------------------------------------------------------------------------------------ corpus


def corpus() -> list[Case]:
    cases: list[Case] = []

    def add(name, build, expect=None):
        cases.append(Case(name, build, expect))

    # ---- non-images, raw bodies
    for name, body in {
        "empty": b"",
        "blank": b" \n\t ",
        "text": b"hello world",
        "html": b"<!doctype html><p>hi</p>",
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "xml": b"<?xml version='1.0'?><a/>",
        "pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
        "zip": b"PK\x03\x04" + b"\0" * 60,
        "gzip": b"\x1f\x8b\x08\x00" + b"\0" * 40,
        "elf": b"\x7fELF\x02\x01\x01" + b"\0" * 60,
        "exe": b"MZ\x90\x00" + b"\0" * 60,
        "mp4": b"\0\0\0\x18ftypmp42" + b"\0" * 40,
        "heic": b"\0\0\0\x18ftypheic" + b"\0" * 40,
        "avif": b"\0\0\0\x1cftypavif" + b"\0" * 40,
        "wav": b"RIFF\x24\0\0\0WAVEfmt " + b"\0" * 40,
        "psd": b"8BPS\0\x01" + b"\0" * 60,
        "jpeg 2000": b"\0\0\0\x0cjP  \r\n\x87\n" + b"\0" * 40,
        "ppm": b"P6\n4 4\n255\n" + b"\0" * 48,
        "pcx": b"\x0a\x05\x01\x08" + b"\0" * 124,
        "tga": b"\0\0\x02" + b"\0" * 60,
        "utf-16 text": "hello".encode("utf-16"),
        "zeros": b"\0" * 5000,
        "0xff bytes": b"\xff" * 5000,
        "jpeg magic": b"\xff\xd8\xff\xe0",
        "png magic": b"\x89PNG\r\n\x1a\n",
        "gif magic": b"GIF89a",
        "webp magic": b"RIFF\0\0\0\0WEBP",
        "bmp magic": b"BM",
        "tiff magic": b"II*\x00",
        "tiff big-endian magic": b"MM\x00*",
        "riff of another kind": b"RIFF\x10\0\0\0AVI LIST" + b"\0" * 20,
    }.items():
        add(f"non-image: {name}", raw(body), 400)
    add("non-image: ico", raw(lambda: encode(small().resize((32, 32)), "ICO")), 400)
    add("non-image: 1 MB of text", raw(b"lorem ipsum " * 90_000), 400)
    rng = np.random.default_rng(7)
    for size in (1, 2, 16, 1000, 100_000):
        add(f"non-image: {size} random bytes", raw(rng.bytes(size)))
        add(f"non-image: jpeg magic + {size} random bytes", raw(b"\xff\xd8\xff\xe0" + rng.bytes(size)), 400)
        add(f"non-image: png magic + {size} random bytes", raw(b"\x89PNG\r\n\x1a\n" + rng.bytes(size)), 400)

    # ---- truncation (and truncation hidden by an end marker)
    for fmt in (
        "jpeg",
        "jpeg progressive",
        "png",
        "png rgba",
        "png 16-bit gray",
        "gif",
        "webp",
        "webp lossless",
        "bmp",
        "tiff",
        "tiff deflate",
    ):
        for frac in (0.0, 0.1, 0.5, 0.9):
            add(f"truncated {fmt} at {frac:.0%}", raw(functools.partial(truncate, fmt, frac)), 400)
    for fmt in ("jpeg", "jpeg progressive"):
        for frac in (0.05, 0.3, 0.6, 0.9, 0.99):
            add(
                f"truncated {fmt} at {frac:.0%} + end marker",
                raw(functools.partial(truncate, fmt, frac, b"\xff\xd9")),
                400,
            )
    for frac in (0.1, 0.5, 0.9):
        add(
            f"truncated gif at {frac:.0%} + trailer",
            raw(functools.partial(truncate, "gif", frac, b"\x3b")),
            400,
        )
        add(
            f"png whose compressed data holds {frac:.0%} of the rows",
            raw(functools.partial(png_short_stream, frac)),
            400,
        )
    add("the issue's 6000x6000 JPEG of ~700 bytes", raw(bomb_jpeg), 400)
    for w, h in ((3000, 2000), (12000, 3000), (640, 480)):
        add(f"jpeg header {w}x{h} with a few bytes of data", raw(functools.partial(jpeg_header, w, h)), 400)
    add("png 3000x3000 with 1 KB of rows", raw(lambda: png(3000, 3000)), 400)
    add("png without pixel data", raw(lambda: png(4, 4, idat=b"")), 400)

    # ---- corruption
    def flip(fmt: str, at: int, value: int | None = None) -> bytes:
        data = bytearray(good(fmt))
        data[at] = (data[at] ^ 0xFF) if value is None else value
        return bytes(data)

    add("png bad IHDR crc", raw(lambda: flip("png", 29)), 400)
    add("png bad IDAT crc", raw(lambda: flip("png", good("png").index(b"IDAT") + 10)), 400)
    add("png garbage zlib", raw(lambda: png(16, 16, idat=b"\x78\x9c" + b"\xde\xad\xbe\xef" * 8)), 400)
    add("png color type 5", raw(lambda: png(16, 16, color=5)), 400)
    add("png bit depth 3", raw(lambda: png(16, 16, depth=3)), 400)
    add(
        "png palette without PLTE",
        raw(lambda: png(16, 16, idat=zlib.compress(b"\0" * 17 * 16), color=3)),
        400,
    )
    add(
        "png chunk length 2^32-1",
        raw(lambda: b"\x89PNG\r\n\x1a\n" + b"\xff\xff\xff\xffIHDR" + b"\0" * 20),
        400,
    )
    add("png zero width", raw(lambda: png(0, 10)), 400)
    add("png zero height", raw(lambda: png(10, 0)), 400)
    add("jpeg zero size frame", raw(lambda: jpeg_header(0, 0)), 400)
    add("jpeg without scan", raw(lambda: good("jpeg")[: good("jpeg").index(b"\xff\xda")] + b"\xff\xd9"), 400)
    add("jpeg SOI + EOI", raw(b"\xff\xd8\xff\xd9"), 400)
    add("jpeg bad huffman table", raw(lambda: flip("jpeg", good("jpeg").index(b"\xff\xc4") + 5, 0xFF)), 400)
    add("gif lzw code size 12", raw(lambda: gif(16, 16, b"\x0c\x02\x44\x01\x00")), 400)
    add("gif zero size", raw(lambda: gif(0, 0)), 400)
    add("gif lzw data missing", raw(lambda: gif(16, 16, b"\x02\x00")), 400)
    add("bmp 7 bits per pixel", raw(lambda: bmp(16, 16, bpp=7)), 400)
    add("bmp header size 12345", raw(lambda: bmp(16, 16, header=12345)), 400)
    add("bmp zero width", raw(lambda: bmp(0, 16)), 400)
    add("tiff IFD offset past the end", raw(lambda: tiff(16, 16, offset=10_000)), 400)
    add("tiff unknown compression", raw(lambda: tiff(16, 16, compression=60000)), 400)
    add("webp garbage VP8 data", raw(b"RIFF\x24\0\0\0WEBPVP8 \x18\0\0\0" + b"\xab" * 24), 400)

    # ---- bombs: headers that claim huge images (cost nothing: refused from the header)
    for w, h in ((7000, 6000), (50_000, 50_000), (100_000, 100_000), (2**31 - 1, 1), (1, 2**31 - 1)):
        add(f"png bomb {w}x{h}", raw(functools.partial(png, w, h)), 413)
    add("png 16-bit 6000x6000 (36 MP, the issue's memory case)", raw(lambda: png(6000, 6000, depth=16)), 413)
    add("png 4100x4100 (16.8 MP, decoded at full size)", raw(lambda: png(4100, 4100)), 413)
    add("gif bomb 65535x65535", raw(lambda: gif(65535, 65535)), 413)
    add("bmp bomb 60000x60000", raw(lambda: bmp(60000, 60000)), 413)
    add("tiff bomb 100000x100000", raw(lambda: tiff(100_000, 100_000)), 413)
    add("jpeg bomb 65500x65500", raw(lambda: jpeg_header(65500, 65500)), 413)
    add(
        "webp bomb 16383x16383",
        raw(lambda: b"RIFF\x1a\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0" + b"\xfe\x3f\0\xfe\x3f\0"),
    )  # libwebp refuses the file whole
    add("body over 20 MB", raw(lambda: b"\xff\xd8" + b"\0" * 20_000_001), 413)

    # ---- JSON of every wrong type and size (as raw bytes, and as TorchServe's decoded JSON)
    deep = 100_000
    for name, text in {
        "a list": b"[1, 2, 3]",
        "a number": b"5",
        "a string": b'"just a string"',
        "null": b"null",
        "true": b"true",
        "an empty object": b"{}",
        "an empty list": b"[]",
        "options only": b'{"top_k": 3}',
        f"{deep} nested lists": b"[" * deep,
        f"{deep} nested lists, closed": b"[" * deep + b"]" * deep,
        f"{deep} nested objects": b'{"a":' * deep,
        "nested objects in an option": b'{"neuron": ' + b'{"a":' * 5000,
        "5000-digit neuron": b'{"neuron": 1' + b"0" * 5000 + b"}",
        "5000-digit top_k": b'{"image": "", "top_k": 1' + b"0" * 5000 + b"}",
        "5000-digit ablate entry": b'{"neuron": 3, "ablate": [' + b"9" * 5000 + b"]}",
        "a 5000-digit number alone": b"[" + b"7" * 5000 + b"]",
        "exponent 1e999999": b'{"neuron": 1e999999}',
        "unterminated": b'{"image": ',
        "no quotes": b"{not json}",
        "trailing comma": b'{"neuron": 3,}',
        "single quotes": b"{'neuron': 3}",
        "comment": b'{"neuron": 3 /* hi */}',
        "two objects": b'{"neuron": 3}{"neuron": 4}',
        "trailing garbage": b'{"neuron": 3} xyz',
        "not utf-8": b'{"image": "\xff\xfe"}',
        "lone surrogate": b'{"image": "\\ud800"}',
        "utf-16": '{"neuron": 3, "x": 1}'.encode("utf-16"),
        "control characters": b'{"image": "\x01\x02"}',
        "duplicate keys": b'{"neuron": 3, "neuron": -4}',
        "a 100 KB key": b'{"' + b"k" * 100_000 + b'": 1}',
        "10000 keys": ("{" + ",".join(f'"k{i}": {i}' for i in range(10_000)) + "}").encode(),
        "NaN threshold": b'{"image": "AAAA", "threshold": NaN}',
        "Infinity neuron": b'{"neuron": Infinity}',
        "5 MB string": b'{"image": "' + b"!" * 5_000_000 + b'"}',
    }.items():
        add(f"json: {name}", raw(text), None if "5 MB" in name else 400)
    for name, doc in {
        "a list": [1, 2],
        "a number": 5,
        "a float": 2.5,
        "a string": "x",
        "null": None,
        "true": True,
        "an empty object": {},
        "options only": {"top_k": 3},
    }.items():
        add(f"decoded json: {name}", raw(doc), 400)

    # ---- options out of range, of the wrong type
    bad_values = {
        "top_k": [
            -1,
            Lazy("D+1", lambda: width() + 1),
            10**6,
            2**63,
            10**4000,
            1.5,
            5.0,
            "5",
            True,
            None,
            [],
            {},
        ],
        "threshold": [
            -0.01,
            1.01,
            float("nan"),
            float("inf"),
            -float("inf"),
            "0.5",
            True,
            None,
            [0.5],
            {},
            10**4000,
        ],
        "return_maps": ["true", 1, 0, None, [], "yes", 1.0],
        "ablate": [
            -1,
            [-1],
            Lazy("[D]", lambda: [width()]),
            [None],
            ["1"],
            [1.0],
            [True],
            5,
            "1,2",
            None,
            {},
            [[1]],
            Lazy("D+1 entries", lambda: list(range(width() + 1))),
            [2**70],
        ],
        "concepts": [
            "dog",
            [],
            [""],
            ["  "],
            [5],
            [None],
            ["x" * 201],
            ["flying spaghetti monster"],
            ["n99999999"],
            ["tabby"],
            [["dog"]],
            {"a": 1},
            ["dog"] * 1001,
            True,
            7,
        ],
    }
    for key, values in bad_values.items():
        for v in values:
            add(f"option {key}={str(v)[:30]}", opts(**{key: v}), 400)
    add("option unknown 'colour'", opts(colour="red"), 400)
    add("option unknown 'topk'", opts(topk=3), 400)
    add("option unknown '' (empty name)", opts(**{"": 1}), 400)
    for v in (-1, Lazy("D", width), 10**9, "3", 3.0, True, None, [3], {"n": 3}):
        add(f"neuron={str(v)[:20]}", lambda v=v: ({"body": {"neuron": value(v)}}, None), 400)
    add("neuron with an image", raw(lambda: {"neuron": 3, "image": b64()}), 400)
    add("neuron with top_k", raw({"neuron": 3, "top_k": 2}), 400)
    add("neuron with ablate", raw({"neuron": 3, "ablate": [1]}), 400)

    # ---- multipart text fields
    for key, values in {
        "top_k": [
            b"abc",
            b"1.5",
            b"",
            b"99999999999",
            b"-1",
            Lazy("D+1", lambda: str(width() + 1).encode()),
            b"1e3",
            b"0x10",
        ],
        "threshold": [b"half", b"nan", b"2", b"-1", b"inf", b"", b"1,5"],
        "return_maps": [b"maybe", b"", b"2", b"truee"],
        "ablate": [b"1,x", b"-5", b"9999", b"1;2", b"1.5", b"99999999999"],
        "concepts": [b",,,", b"unknown-thing", b"tabby", b"dog," + b"x" * 300, b"n99999999"],
        "neuron": [b"x", b"-1", b"100000", b""],
    }.items():
        for v in values:
            add(f"multipart {key}={str(v) if isinstance(v, Lazy) else repr(v[:20])}", form(**{key: v}), 400)
        add(f"multipart {key} not utf-8", form(**{key: b"\xff\xfe\xfd"}), 400)
        add(
            f"multipart {key} as a JSON part (dict)",
            lambda key=key: ({"data": good("jpeg"), key: {"a": 1}}, None),
            400,
        )
    add("multipart neuron with an image", form(neuron=3), 400)
    add("multipart neuron with an option", lambda: ({"neuron": b"3", "top_k": b"2"}, None), 400)
    add("multipart two image parts", lambda: ({"data": good("jpeg"), "file": good("png")}, None), 400)
    add(
        "multipart three parts",
        lambda: ({"data": good("jpeg"), "file": good("png"), "photo": good("gif")}, None),
        400,
    )
    add("multipart image + unknown field", form(colour=b"red"), 400)
    add(
        "multipart option given twice",
        lambda: ({"body": {"image": b64(), "top_k": 2}, "top_k": b"3"}, None),
        400,
    )
    add("multipart empty file part", lambda: ({"data": b""}, None), 400)
    add("multipart text part, not JSON", lambda: ({"file": "a text file\nwith lines"}, None), 400)
    add("multipart text part, bad JSON", lambda: ({"file": '{"image": '}, None), 400)
    add("multipart options only, no image", lambda: ({"top_k": b"3", "threshold": b"0.4"}, None), 400)

    # ---- base64
    for name, s in {
        "garbage": "!!!not base64!!!",
        "bad length": "abc",
        "padding only": "====",
        "whitespace only": " \n ",
        "data url, no data": "data:image/jpeg;base64,",
        "unicode": "ÿØÿà" * 10,
        "mixed alphabets": "ab+/cd-_" * 4,
        "one character": "A",
        "of text": base64.b64encode(b"hello world").decode(),
        "of random bytes": base64.b64encode(np.random.default_rng(1).bytes(300)).decode(),
        "of a bomb": base64.b64encode(png(50_000, 50_000)).decode(),
    }.items():
        add(f"base64 {name}", raw({"image": s}), 413 if "bomb" in name else 400)
    add("base64 of a truncated jpeg", raw(lambda: {"image": b64()[: len(b64()) // 2]}), 400)
    add("base64 over 20 MB", raw(lambda: {"image": "A" * 27_000_000}), 413)
    for v in (123, None, True, [1], {"data": "x"}):
        add(f"base64 image={str(v)[:20]}", raw({"image": v}), 400)

    # ---- content types: binary bodies a form decoder split into fields, text bodies
    jpg_as_form = {
        "\ufffd\ufffd\ufffd\ufffd\x10JFIF\x00\x01": b"\x01\x01\x00H\x00H\x00\x00",
        "\x00C\x00\x08": b"",
    }
    add("raw jpeg sent as a form (decoded into junk fields)", with_headers(jpg_as_form, FORM), 415)
    add("raw jpeg sent as a form, no headers known", lambda: (jpg_as_form, None), 415)
    add("form with a text field", with_headers({"photo": b"abc"}, FORM), 415)
    add("form that decoded to no field", with_headers({}, FORM), 415)
    add("form with unknown text fields", with_headers({"a": b"1", "b": b"2"}, FORM), 415)
    add("text/plain body, not JSON", raw("hello, this is text"), 400)
    add("text/plain body, JSON list", raw("[1, 2, 3]"), 400)
    add("text/plain empty body", raw(""), 400)

    # ---- rows TorchServe never sends, but a handler must survive
    for name, row in {
        "None": None,
        "a string": "just a string",
        "an int": 42,
        "a list": [1, 2],
        "empty dict": {},
        "body None": {"body": None},
        "body 5": {"body": 5},
        "body True": {"body": True},
        "body bytes subclass": {"body": memoryview(b"abc")},
    }.items():
        add(f"odd row: {name}", lambda row=row: (row, None), 400)
    return cases


CORPUS = corpus()


@pytest.fixture(scope="module")
def served():
    return shared_handler()


VALID = {
    "raw jpeg": lambda: {"body": good("jpeg")},
    "json with options": lambda: {
        "body": {
            "image": b64(),
            "concepts": ["mammal", "animal"],
            "top_k": 3,
            "threshold": 0.4,
            "return_maps": True,
            "ablate": [1, 2],
        }
    },
    "multipart png": lambda: {"file": good("png"), "top_k": b"2", "concepts": b"whole,animal"},
    "neuron": lambda: {"body": {"neuron": 7}},
}


@pytest.fixture(scope="module")
def alone(served) -> dict[str, dict]:
    """Each valid request answered alone, the reference for the batch tests."""
    out = {}
    for name, row in VALID.items():
        code, doc = call(served, row())[0]
        assert code == 200, (name, doc)
        out[name] = doc
    return out


def test_corpus_size_and_names():
    names = [c.name for c in CORPUS]
    assert len(names) >= 300, len(names)
    assert len(set(names)) == len(names), "unique case names"


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_bad_input_gets_4xx_with_one_line(served, case):
    row, headers = case.build()
    (code, doc), (ok, _) = call(
        served, row, {"body": {"neuron": 7}}, headers={0: headers} if headers else None
    )
    assert 400 <= code < 500, (code, doc)
    if case.expect is not None:
        assert code == case.expect, (code, doc["message"])
    assert doc["message"] and "\n" not in doc["message"] and len(doc["message"]) <= 300
    assert "Traceback" not in doc["message"] and "internal error" not in doc["message"]
    assert ok == 200, "the next request of the batch is served"


def test_batch_isolation(served, alone):
    """Every bad case inside a batch of valid requests: each valid one gets 200 and the answer it gets
    alone (floats within 1e-4), each bad one its own 4xx."""
    valid, size = list(VALID), 8
    for k in range(0, len(CORPUS), size):
        chunk = CORPUS[k : k + size]
        rows, headers, where = [], {}, {}
        for j, case in enumerate(chunk):
            if j % 4 == 0:  # a valid request before every 4 bad ones, and one at the end
                where[len(rows)] = valid[(k // 4 + j // 4) % len(valid)]
                rows.append(VALID[where[len(rows)]]())
            row, h = case.build()
            if h:
                headers[len(rows)] = h
            rows.append(row)
        where[len(rows)] = "raw jpeg"
        rows.append(VALID["raw jpeg"]())
        res = call(served, *rows, headers=headers)
        for i, (code, doc) in enumerate(res):
            if i in where:
                assert code == 200, ([c.name for c in chunk], where[i], doc)
                assert_same_answer(doc, alone[where[i]], where=where[i])
            else:
                assert 400 <= code < 500, ([c.name for c in chunk], i, doc)


def test_the_worker_keeps_serving_images(served, alone):
    """After the whole corpus (one request each), an image request still gets its answer."""
    for case in CORPUS[::7]:
        row, headers = case.build()
        call(served, row, headers={0: headers} if headers else None)
    code, doc = call(served, VALID["json with options"]())[0]
    assert code == 200
    assert_same_answer(doc, alone["json with options"])

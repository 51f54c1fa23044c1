"""hint.serve.request without a model: the option table, parsing of every request form, every parse error a
RequestError (fuzzed), reduced decoding (sizes, EXIF, pixels close to a full decode), truncation that
decoders hide, and the decode memory bound (measured in a subprocess)."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import REPO

from hint.serve import images, options
from hint.serve import request as rq
from hint.serve.options import Limits, Option, RequestError
from hint.serve.request import ExplainRequest, NeuronRequest, parse_request

LIMITS = Limits(
    channels=112, concept=lambda name: {"dog": "n02084071", "mammal": "n01861778"}.get(name) or _unknown(name)
)


def _unknown(name: str):
    raise RequestError(400, f"unknown concept {name!r}")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(size=(451, 300)) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea()).resize(size)


# ------------------------------------------------------------------------------------------ parsing


def test_every_request_form():
    jpg = encode(photo((160, 120)), "JPEG")
    b64 = base64.b64encode(jpg).decode()
    for row in (
        {"body": jpg},
        {"body": bytearray(jpg)},
        {"data": jpg},
        {"photo": memoryview(jpg)},
        {"body": json.dumps({"image": b64}).encode()},
        {"body": {"image": "data:image/jpeg;base64," + b64}},
        {"body": json.dumps({"image": b64})},
    ):
        r = parse_request(row, LIMITS)
        assert isinstance(r, ExplainRequest) and r.size == (160, 120) and r.format == "JPEG"
        assert r.options == {
            "concepts": None,
            "top_k": 5,
            "threshold": 0.5,
            "return_maps": False,
            "ablate": [],
            "ablate_probe_only": False,
            "image_neurons": True,
            "permutations": None,
            "seed": 0,
            "regions": False,
            "box_threshold": None,
            "all_boxes": False,
        }
    r = parse_request(
        {
            "data": jpg,
            "top_k": b"3",
            "concepts": b"dog, mammal,dog",
            "threshold": b"0.25",
            "return_maps": b"yes",
            "ablate": b"4 5,6",
        },
        LIMITS,
    )
    assert (r.top_k, r.concepts, r.threshold, r.return_maps, r.ablate) == (
        3,
        ["n02084071", "n01861778"],
        0.25,
        True,
        [4, 5, 6],
    )
    assert parse_request({"body": {"neuron": 111}}, LIMITS) == NeuronRequest(111)
    assert parse_request({"neuron": b" 7 "}, LIMITS) == NeuronRequest(7)
    assert parse_request({"body": {"image": b64, "concepts": None}}, LIMITS).concepts is None


def test_adding_an_option_is_one_table_row(monkeypatch):
    """A new option (say per-image neurons) needs one Option row: JSON and multipart forms, type and
    range checks, the default, the unknown-option message all follow."""
    monkeypatch.setitem(
        options.OPTIONS, "max_neurons", Option("max_neurons", "int", 10, lo=1, hi=lambda lim: lim.channels)
    )
    jpg = encode(photo((64, 48)), "PNG")
    assert parse_request({"data": jpg}, LIMITS).max_neurons == 10
    assert parse_request({"data": jpg, "max_neurons": b"20"}, LIMITS).max_neurons == 20
    with pytest.raises(RequestError, match=r"max_neurons 0 out of range 1\.\.112"):
        parse_request({"body": {"image": base64.b64encode(jpg).decode(), "max_neurons": 0}}, LIMITS)
    bare = Limits(options=())
    with pytest.raises(RequestError, match="unknown option 'max_neurons'; known: image"):
        parse_request({"data": jpg, "max_neurons": b"20"}, bare)
    for opt in options.OPTIONS.values():
        assert opt.kind in ("int", "number", "bool", "ints", "names") and opt.form in ("explain", "neuron"), (
            opt
        )
        default = opt.default(LIMITS) if callable(opt.default) else opt.default
        if default is not None:
            assert options.check_option(opt, default, LIMITS) == default, opt.name


@pytest.mark.parametrize(
    "body, code, words",
    [
        (b'{"neuron": 1' + b"0" * 5000 + b"}", 400, "bad JSON"),  # Python's int digit limit: ValueError
        (b"[" * 100_000, 400, ""),  # RecursionError in the decoder
        (b'{"a":' * 100_000, 400, ""),
        (b'{"image": "\xff"}', 400, "bad JSON"),  # UnicodeDecodeError
        (b'{"neuron": 1e999999}', 400, "neuron must be an integer"),
    ],
    ids=["5000 digits", "nested lists", "nested objects", "not utf-8", "infinite number"],
)
def test_parse_errors_that_used_to_escape_are_request_errors(body, code, words):
    """The issue's batch killers: each is a RequestError (never ValueError / RecursionError)."""
    with pytest.raises(RequestError) as err:
        parse_request({"body": body}, LIMITS)
    assert err.value.code == code and words in err.value.message and "\n" not in err.value.message


def test_anything_unexpected_is_still_a_request_error(monkeypatch):
    jpg = encode(photo((64, 48)), "JPEG")
    monkeypatch.setattr(rq, "decode_image", lambda *a: (_ for _ in ()).throw(KeyError("boom")))
    with pytest.raises(RequestError, match="malformed request") as err:
        parse_request({"body": jpg}, LIMITS)
    assert err.value.code == 400
    monkeypatch.setattr(rq, "decode_image", lambda *a: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(RequestError) as err:
        parse_request({"body": jpg}, LIMITS)
    assert err.value.code == 413


def test_fuzzed_requests_raise_only_request_errors():
    """Random damage to valid images and JSON requests: an answer or a RequestError, nothing else."""
    rng = np.random.default_rng(0)
    small = photo((96, 64))
    seeds = [
        encode(small, "JPEG"),
        encode(small, "JPEG", progressive=True),
        encode(small, "PNG"),
        encode(small, "GIF"),
        encode(small, "WEBP"),
        encode(small, "BMP"),
        encode(small, "TIFF"),
        json.dumps(
            {
                "image": base64.b64encode(encode(small, "PNG")).decode(),
                "top_k": 3,
                "ablate": [1, 2],
                "concepts": ["dog"],
                "threshold": 0.3,
                "return_maps": True,
            }
        ).encode(),
    ]
    outcomes = {"ok": 0, "error": 0}
    for k in range(600):
        data = bytearray(seeds[k % len(seeds)])
        for _ in range(int(rng.integers(1, 6))):
            op, at = int(rng.integers(0, 4)), int(rng.integers(0, len(data)))
            if op == 0:
                data[at] = int(rng.integers(0, 256))
            elif op == 1:
                del data[at : at + int(rng.integers(1, 64))]
            elif op == 2:
                data[at:at] = rng.bytes(int(rng.integers(1, 64)))
            else:
                data = data[:at]
        try:
            parse_request({"body": bytes(data)}, LIMITS)
            outcomes["ok"] += 1
        except RequestError as e:
            assert 400 <= e.code < 500 and e.message and "\n" not in e.message
            outcomes["error"] += 1
    assert outcomes["error"] > 100 and outcomes["ok"] > 10, outcomes


def test_forms_and_content_types():
    form = {"content-type": "application/x-www-form-urlencoded; charset=UTF-8"}
    assert rq.content_type(form) == "application/x-www-form-urlencoded"
    assert rq.content_type({"Content-Type": "image/JPEG"}) == "image/jpeg" and rq.content_type(None) == ""
    for row, headers in (({"\ufffd\ufffdJFIF": b"\x01"}, None), ({}, form), ({"photo": b"abc"}, form)):
        with pytest.raises(RequestError, match="sent as a form") as err:
            parse_request(row, LIMITS, headers)
        assert err.value.code == 415
    assert parse_request({"neuron": b"3"}, LIMITS, form) == NeuronRequest(3), "a form of options is fine"
    assert images.sniff(b"RIFF\0\0\0\0WEBPVP8 ") == "WEBP" and images.sniff(b"\xff\xd8\xff\xe1") == "JPEG"
    assert images.sniff(b"hello") is None


# ------------------------------------------------------------------------------------------ decoding


def test_large_images_are_decoded_reduced_with_the_original_size():
    big = photo((4000, 3000))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    for data, size in (
        (encode(big, "JPEG", quality=90), (4000, 3000)),
        (encode(big, "JPEG", exif=exif), (3000, 4000)),
        (encode(big.resize((2000, 1500)), "PNG"), (2000, 1500)),
    ):
        im, shown, _ = images.decode_image(data, LIMITS)
        assert shown == size and im.mode == "RGB"
        assert all(448 <= s < 2 * 448 for s in im.size), im.size
        full = Image.open(io.BytesIO(data))
        full = full.transpose(Image.Transpose.ROTATE_270) if size == (3000, 4000) else full
        a = np.asarray(im.resize((224, 224), Image.Resampling.BILINEAR), dtype=float)
        b = np.asarray(full.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR), dtype=float)
        assert np.abs(a - b).mean() < 2.0, (
            "the model sees about the same pixels as from a full decode (EXIF applied)"
        )
    small = encode(photo(), "PNG")
    im, shown, _ = images.decode_image(small, LIMITS)
    assert im.size == shown == (451, 300), "small images are not reduced"


def test_truncation_that_decoders_hide_is_an_error():
    full = encode(Image.new("RGB", (6000, 6000), (120, 30, 200)), "JPEG", quality=50)
    sos = full.index(b"\xff\xda")
    bomb = full[: sos + 100] + b"\xff\xd9"
    assert len(bomb) < 800
    with pytest.raises(RequestError, match="truncated JPEG") as err:
        images.decode_image(bomb, LIMITS)
    assert err.value.code == 400
    jpg = encode(photo(), "JPEG", progressive=True)
    with pytest.raises(RequestError, match="truncated JPEG"):
        images.decode_image(jpg[: len(jpg) * 2 // 3] + b"\xff\xd9", LIMITS)
    assert images.decode_image(jpg + b"trailing bytes after the end", LIMITS)[1] == (451, 300)
    png = encode(photo(), "PNG")
    start = png.index(b"IDAT") - 4
    rows = zlib.compress(b"".join(b"\0" + bytes(451 * 3) for _ in range(100)))
    short = (
        png[:start]
        + images.struct.pack(">I", len(rows))
        + b"IDAT"
        + rows
        + images.struct.pack(">I", zlib.crc32(b"IDAT" + rows))
    )
    with pytest.raises(RequestError, match="truncated PNG: its image data stops after"):
        images.decode_image(short + png[-12:], LIMITS)


@pytest.mark.shared
def test_real_photos_are_accepted(shared):
    files = sorted((shared / "imagenet-val-boxes").rglob("*.JPEG"))[:300]
    if not files:
        pytest.skip("no JPEGs under imagenet-val-boxes")
    for f in files:
        images.decode_image(f.read_bytes(), LIMITS)


# ------------------------------------------------------------------------------------------ memory

_MEASURE = r"""
import sys
from hint.serve.images import decode_image
from hint.serve.options import Limits, RequestError
import hint.backbones  # imported before measuring (the handler has it loaded)
data = open(sys.argv[1], "rb").read()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the current size
before = status("VmRSS")
try:
    im, size, fmt = decode_image(data, Limits())
    out = f"{fmt} {size[0]}x{size[1]}"
except RequestError as e:
    out = f"{e.code} {e.message}"
print(status("VmHWM") - before, out)
"""


def _worst_cases(folder: Path) -> dict[str, Path]:
    """Images at the limits: 16 MP PNGs (RGBA 16-bit, palette with transparency), 16 MP CMYK TIFF,
    40 MP JPEG, the issue's 36 MP 16-bit PNG."""
    y, x = np.mgrid[0:4000, 0:4000]
    row = np.tile(np.array([4096, 2048, 1024, 65535], ">u2"), 4000)  # compresses to almost nothing
    files = {}

    def save(name: str, data: bytes) -> None:
        files[name] = folder / name
        files[name].write_bytes(data)

    raw = (b"\0" + row.tobytes()) * 4000
    ihdr = images.struct.pack(">IIBBBBB", 4000, 4000, 16, 6, 0, 0, 0)

    def chunk(kind: bytes, d: bytes) -> bytes:
        return images.struct.pack(">I", len(d)) + kind + d + images.struct.pack(">I", zlib.crc32(kind + d))

    sig = b"\x89PNG\r\n\x1a\n"
    save(
        "png-16mp-rgba16",
        sig + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b""),
    )
    pal = Image.new("P", (4000, 4000), 1)
    pal.putpalette([0, 0, 0, 200, 30, 40] * 128)
    save("png-16mp-palette-transparency", encode(pal, "PNG", transparency=0))
    gradient = Image.fromarray((np.stack([x, y, x + y], -1) % 256).astype(np.uint8))
    save("tiff-16mp-cmyk", encode(gradient.convert("CMYK"), "TIFF", compression="tiff_deflate"))
    save("jpeg-40mp", encode(gradient.resize((8000, 5000)), "JPEG", quality=80))
    ihdr36 = images.struct.pack(">IIBBBBB", 6000, 6000, 16, 2, 0, 0, 0)
    save(
        "png-36mp-header",
        sig + chunk(b"IHDR", ihdr36) + chunk(b"IDAT", zlib.compress(b"\0" * 70_000)) + chunk(b"IEND", b""),
    )
    return files


@pytest.mark.slow
def test_decode_memory_is_bounded(tmp_path):
    """Peak memory of one decode, each worst case in a fresh process: docs/api.md states the bound."""
    peaks = {}
    for name, path in _worst_cases(tmp_path).items():
        r = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
            check=True,
        )
        mb, outcome = r.stdout.strip().splitlines()[-1].split(" ", 1)
        peaks[name] = (round(float(mb)), outcome)
    print("decode peak MB above the process before it:", peaks)
    assert peaks["png-36mp-header"][1].startswith("413") and peaks["png-36mp-header"][0] < 10
    assert peaks["jpeg-40mp"][1] == "JPEG 8000x5000" and peaks["jpeg-40mp"][0] < 40
    for name in ("png-16mp-rgba16", "png-16mp-palette-transparency", "tiff-16mp-cmyk"):
        assert peaks[name][1].endswith("4000x4000") and peaks[name][0] < 200, (name, peaks[name])


def test_docs_option_table_states_the_declared_defaults():
    """docs/api.md's option table: every option of hint.serve.options.OPTIONS, with its one declared default."""
    text = (REPO / "docs" / "api.md").read_text()
    table = text[text.index("### Options") : text.index("### Limits")]
    cells = {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^\| `(\w+)` \|[^|]*\|[^|]*\|([^|]*)\|", table, re.M)
    }
    assert set(cells) == set(options.OPTIONS)
    for name, opt in options.OPTIONS.items():
        if opt.default is not None:
            assert cells[name] == json.dumps(opt.default), name

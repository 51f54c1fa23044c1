"""A real TorchServe with hint.mar: start on free ports (own config, model store, logs, pid and key
file), wait for READY workers through the management API with the token, post real images as raw
bytes, multipart and JSON, malformed requests (4xx, then a valid one still works), requests without
the token, concurrent requests (batched by the server), then stop it. Needs Java 17 (skipped without).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import shutil
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import pytest
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BANK = Path(os.environ.get("HINT_BANK") or REPO / "model_store" / "hint-bank")
SCHEMA = json.loads((REPO / "docs" / "response.schema.json").read_text())
MAMMAL = "n01861778"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="java not found: TorchServe 0.12 needs Java 17 (make apt-java)"),
]


def _bench_module():
    spec = importlib.util.spec_from_file_location("hint_bench_serve", REPO / "benchmarks" / "serve.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ts(tmp_path_factory):
    if not (BANK / "manifest.json").is_file():
        pytest.fail(f"no concept bank at {BANK} (commit model_store/hint-bank or set HINT_BANK)")
    bench = _bench_module()
    work = tmp_path_factory.mktemp("torchserve")
    bench.build_archives(work / "store", BANK, which=("hint",))
    server = bench.LocalTorchServe(work, work / "store", ["hint"])
    try:
        server.start(timeout=240)
    except Exception:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea())  # 451 x 300 tabby


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def post(ts, *, token: bool = True, **kw) -> requests.Response:
    headers = dict(kw.pop("headers", {}))
    if token:
        headers.update(ts.auth())
    return requests.post(f"{ts.inference_url}/predictions/hint", headers=headers, timeout=120, **kw)


def check_ok(r: requests.Response, width: int, height: int) -> dict:
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    jsonschema.validate(doc, {"$ref": "#/$defs/explanation", "$defs": SCHEMA["$defs"]})
    assert doc["image"] == {"width": width, "height": height}
    for c in doc["concepts"]:
        if c["box"] is not None:
            x0, y0, x1, y1 = c["box"]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (c["name"], c["box"])
    return doc


def test_raw_jpeg(ts, photo):
    r = post(ts, data=_bytes(photo, "JPEG", quality=90), headers={"Content-Type": "image/jpeg"})
    doc = check_ok(r, 451, 300)
    chain = {c["wnid"]: c for c in doc["chain"]}
    assert chain[MAMMAL]["score"] > 0.8 and chain[MAMMAL]["probability"] > 0.9


def test_raw_png_rgba_and_octet_stream(ts, photo):
    rgba = photo.convert("RGBA")
    r = post(ts, data=_bytes(rgba, "PNG"), headers={"Content-Type": "application/octet-stream"})
    check_ok(r, 451, 300)


def test_multipart_with_options(ts, photo):
    files = {"data": ("cat.jpg", _bytes(photo, "JPEG"), "image/jpeg")}
    r = post(ts, files=files, data={"top_k": "2", "concepts": "mammal,animal", "threshold": "0.4"})
    doc = check_ok(r, 451, 300)
    assert [c["name"] for c in doc["concepts"]] == ["mammal", "animal"]
    assert all(len(c["neurons"]) == 2 for c in doc["concepts"]) and doc["threshold"] == 0.4


def test_json_base64_with_maps(ts, photo):
    small = photo.resize((226, 150))
    b64 = base64.b64encode(_bytes(small, "WEBP")).decode()
    r = post(ts, json={"image": b64, "concepts": [MAMMAL], "return_maps": True, "ablate": [0, 1]})
    doc = check_ok(r, 226, 150)
    assert len(doc["concepts"][0]["map"]) == 14 and doc["model"]["ablated"] == [0, 1]


def test_neuron_reverse(ts):
    r = post(ts, json={"neuron": 7})
    assert r.status_code == 200, r.text
    doc = r.json()
    jsonschema.validate(doc, {"$ref": "#/$defs/neuron", "$defs": SCHEMA["$defs"]})
    assert doc["neuron"] == 7 and doc["concepts"]


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")


def test_malformed_requests_get_4xx_then_a_valid_one_works(ts, photo):
    jpg = _bytes(photo, "JPEG")
    b64 = base64.b64encode(jpg).decode()
    cases = [
        ("garbage", {"data": b"\x00garbage" * 50, "headers": {"Content-Type": "image/jpeg"}}, 400),
        ("truncated jpeg", {"data": jpg[: len(jpg) // 2], "headers": {"Content-Type": "image/jpeg"}}, 400),
        ("decompression bomb", {"data": _bomb_png(60000, 60000), "headers": {"Content-Type": "image/png"}}, 413),
        ("42 MP header", {"data": _bomb_png(7000, 6000), "headers": {"Content-Type": "image/png"}}, 413),
        ("empty body", {"data": b"", "headers": {"Content-Type": "image/jpeg"}}, 400),
        ("text", {"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 400),
        ("bad json", {"data": b'{"image": ', "headers": {"Content-Type": "application/json"}}, 400),
        ("json list", {"json": [1, 2, 3]}, 400),
        ("bad base64", {"json": {"image": "***"}}, 400),
        ("unknown option", {"json": {"image": b64, "colour": "red"}}, 400),
        ("unknown concept", {"json": {"image": b64, "concepts": ["unicorn-like thing"]}}, 400),
        ("bad top_k", {"json": {"image": b64, "top_k": "many"}}, 400),
        ("neuron out of range", {"json": {"neuron": 100000}}, 400),
        ("two files", {"files": {"data": ("a.jpg", jpg), "file": ("b.jpg", jpg)}}, 400),
    ]
    for name, kw, code in cases:
        r = post(ts, **kw)
        assert r.status_code == code, (name, r.status_code, r.text[:300])
        doc = r.json()
        jsonschema.validate(doc, {"$ref": "#/$defs/error", "$defs": SCHEMA["$defs"]})
        assert doc["code"] == code and doc["message"], name
        assert r.reason and "\n" not in r.reason
    check_ok(post(ts, data=jpg, headers={"Content-Type": "image/jpeg"}), 451, 300)
    assert "READY" in ts.workers("hint"), "the workers survived"


def test_concurrent_mixed_requests_are_answered_each(ts, photo):
    jpg = _bytes(photo.resize((200, 133)), "JPEG")

    def one(k: int) -> int:
        body = jpg if k % 3 else b"not an image at all"
        return post(ts, data=body, headers={"Content-Type": "image/jpeg"}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(16)))
    assert codes == [400 if k % 3 == 0 else 200 for k in range(16)]


def test_token_is_required(ts, photo):
    jpg = _bytes(photo, "JPEG")
    for headers in ({}, {"Authorization": "Bearer not-the-key"}, {"Authorization": ts.auth("management")["Authorization"]}):
        r = post(ts, token=False, data=jpg, headers={"Content-Type": "image/jpeg", **headers})
        assert r.status_code in (400, 401), (headers, r.status_code)
        assert "token" in r.text.lower()
    r = requests.get(f"{ts.management_url}/models/hint", timeout=10)
    assert r.status_code in (400, 401)


def test_management_api_is_read_only(ts):
    r = requests.post(
        f"{ts.management_url}/models", params={"url": "https://example.com/x.mar"}, headers=ts.auth("management"), timeout=10
    )
    assert 400 <= r.status_code < 500, r.text
    r = requests.get(f"{ts.management_url}/models/hint", headers=ts.auth("management"), timeout=10)
    assert r.status_code == 200 and r.json()[0]["modelName"] == "hint"

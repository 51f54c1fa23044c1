"""What the in-process handler tests share: a fake TorchServe context, the archive's model dir, one
loaded HintHandler per test session, calling it, comparing answers with float tolerances, encoders."""

from __future__ import annotations

import atexit
import functools
import importlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from PIL import Image

from hint.bank import bank_files
from support import REPO

BANK = Path(os.environ.get("HINT_BANK") or REPO / "model_store" / "hint-bank")
SCHEMA = json.loads((REPO / "docs" / "response.schema.json").read_text())

sys.path.insert(0, str(REPO / "handlers"))
hint_handler = importlib.import_module("hint_handler")


class FakeContext:
    """What the handler uses of ts.context.Context: properties, manifest, yaml config, request headers
    and per-request response status/content type, recorded for the assertions."""

    def __init__(self, model_dir: Path, yaml_config: dict | None = None):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 4}
        self.manifest = {"model": {"modelName": "hint", "handler": "hint_handler.py"}}
        self.model_yaml_config = yaml_config or {}
        self.metrics = None
        self.reset()

    def reset(self, headers: dict[int, dict] | None = None):
        self.status: dict[int, tuple[int, str]] = {}
        self.content_type: dict[int, str] = {}
        self.headers = headers or {}

    def get_all_request_header(self, idx: int) -> dict:
        return self.headers.get(idx, {})

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0):
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str):
        self.content_type[idx] = value


def archive_dir(tmp: Path) -> Path:
    """The model dir TorchServe unpacks hint.mar into: the bank files at the root."""
    if not (BANK / "manifest.json").is_file():
        pytest.fail(f"no concept bank at {BANK} (commit model_store/hint-bank or set HINT_BANK)")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in bank_files(BANK):
        shutil.copy(f, tmp / f.name)
    return tmp


@functools.cache
def shared_handler():
    """One HintHandler with the shipped model-config.yaml, loaded once per test session."""
    tmp = Path(tempfile.mkdtemp(prefix="hint-model-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    ctx = FakeContext(archive_dir(tmp), yaml.safe_load((REPO / "handlers" / "model-config.yaml").read_text()))
    h = hint_handler.HintHandler()
    h.initialize(ctx)
    return h, ctx


def call(served, *rows, headers: dict[int, dict] | None = None) -> list[tuple[int, dict]]:
    """handle() one batch; [(status, body dict)] in request order, checked against the schema, every
    error with a one-line message that is also the reason phrase."""
    h, ctx = served
    ctx.reset(headers)
    out = h.handle(list(rows), ctx)
    assert isinstance(out, list) and len(out) == len(rows), "one answer per request"
    res = []
    for i, body in enumerate(out):
        doc = json.loads(body)
        jsonschema.validate(doc, SCHEMA)
        code, phrase = ctx.status.get(i, (200, ""))
        assert ctx.content_type.get(i) == "application/json"
        if code != 200:
            assert doc["code"] == code and phrase, "an error status comes with a phrase"
            assert "\n" not in doc["message"] and len(doc["message"]) <= 300
            assert all(32 <= ord(c) < 127 for c in phrase) and len(phrase) <= 200
        res.append((code, doc))
    return res


def one(served, row, headers: dict | None = None) -> tuple[int, dict]:
    return call(served, row, headers={0: headers} if headers else None)[0]


def assert_same_answer(a, b, tol: float = 1e-4, where: str = "") -> None:
    """Two answers are the same up to float noise: keys, strings, ints, bools, list lengths and order
    exactly; floats within ``tol`` (relative or absolute). A batch of another size, or another thread
    count, changes the last digits of a float32 forward pass, never the structure."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for k in a:
            assert_same_answer(a[k], b[k], tol, f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), (where, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_answer(x, y, tol, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert not isinstance(a, bool) and not isinstance(b, bool), (where, a, b)
        assert a == pytest.approx(b, rel=tol, abs=tol), (where, a, b)
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg(im: Image.Image, **kw) -> bytes:
    return encode(im.convert("RGB"), "JPEG", quality=90, **kw)


@functools.cache
def tabby() -> Image.Image:
    """scikit-image's tabby cat photo, 451 x 300."""
    from skimage import data

    return Image.fromarray(data.chelsea())

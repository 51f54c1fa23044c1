"""A stand-in for TorchServe's ``POST /predictions/hint`` that answers with the REAL explainer.

The answers are computed by ``hint.explain.Explainer`` with the committed bank
``model_store/hint-bank`` and its backbone, so the app can be tested (and tried) without Java or
TorchServe. It mimics what the app relies on: token auth (``Authorization: Bearer KEY`` checked
against a ``key_file.json`` it writes), TorchServe's error bodies ``{"code", "type", "message"}``,
``GET /ping``, 404 for an unknown model.

    python tests/e2e/fake_endpoint.py --port 0 [--key-file DIR/key_file.json] [--bank model_store/hint-bank]

prints ``READY http://127.0.0.1:PORT`` on stdout once it serves (with ``--port 0`` a free port).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_explainer(bank_dir: str | Path):
    sys.path.insert(0, str(REPO))
    import torch

    from hint.backbones import get_backbone
    from hint.bank import ConceptBank
    from hint.explain import Explainer

    torch.set_num_threads(1)
    bank = ConceptBank.load(bank_dir)
    backbone = get_backbone(bank.meta["backbone"], bank.meta["layer"])
    return Explainer(backbone, bank)


def write_key_file(path: str | Path) -> str:
    key = secrets.token_urlsafe(12)
    body = {k: {"key": secrets.token_urlsafe(12), "expiration time": "never"} for k in ("management", "API")}
    body["inference"] = {"key": key, "expiration time": "never"}
    Path(path).write_text(json.dumps(body, indent=2))
    return key


class BadRequest(ValueError):
    pass


def make_handler(explainer, model: str, key: str | None):
    from PIL import Image, UnidentifiedImageError

    lock = threading.Lock()  # the explainer keeps the hooked activation on itself
    by_name = {c["name"]: c["wnid"] for c in explainer.bank.concepts}

    def concepts_arg(values) -> list[str] | None:
        if values is None:
            return None
        if not isinstance(values, list) or not values:
            raise BadRequest("concepts: a non-empty list of concept names or WNIDs")
        out = []
        for v in values:
            w = v if v in explainer.bank.wnids else by_name.get(v)
            if w is None:
                raise BadRequest(f"concepts: unknown concept {v!r}")
            out.append(w)
        return out

    def decode(raw: bytes):
        try:
            im = Image.open(io.BytesIO(raw))
            return im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise BadRequest(f"cannot decode the image: {e}") from None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet
            pass

        def _send(self, code: int, body: dict):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, kind: str, message: str):
            self._send(code, {"code": code, "type": kind, "message": message})

        def do_GET(self):
            if self.path.rstrip("/") == "/ping":
                return self._send(200, {"status": "Healthy"})
            return self._error(
                404,
                "ResourceNotFoundException",
                "Requested resource is not found, please refer to API document.",
            )

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n)
            if self.path.rstrip("/") != f"/predictions/{model}":
                return self._error(
                    404, "ModelNotFoundException", f"Model not found: {self.path.rsplit('/', 1)[-1]}"
                )
            if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
                return self._error(401, "InvalidKeyException",
                                   "Token Authorization failed. Token either incorrect, expired, or not provided correctly")  # fmt: skip
            try:
                body = self._answer(raw)
            except BadRequest as e:
                return self._error(400, "BadRequest", str(e))
            except (KeyError, ValueError) as e:
                return self._error(400, "BadRequest", str(e.args[0] if e.args else e))
            return self._send(200, body)

        def _answer(self, raw: bytes) -> dict:
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if ctype == "application/json" or raw[:1] == b"{":
                try:
                    req = json.loads(raw)
                except ValueError:
                    raise BadRequest("the body is not valid JSON") from None
                if "neuron" in req:
                    with lock:
                        return explainer.neuron(int(req["neuron"]))
                if "image" not in req:
                    raise BadRequest("JSON body needs 'image' (base64) or 'neuron'")
                try:
                    img = decode(base64.b64decode(req["image"], validate=False))
                except binascii.Error:
                    raise BadRequest("image: not base64") from None
                opts = {
                    "concepts": concepts_arg(req.get("concepts")),
                    "top_k": int(req.get("top_k", 5)),
                    "threshold": float(req.get("threshold", 0.5)),
                    "return_maps": bool(req.get("return_maps", False)),
                    "ablate": [int(a) for a in req.get("ablate") or []],
                }
            else:
                img, opts = decode(raw), {}
            with lock:
                return explainer.explain([img], **opts)[0]

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--model", default="hint")
    p.add_argument("--bank", default=str(REPO / "model_store" / "hint-bank"))
    p.add_argument(
        "--key-file", default=None, help="write a TorchServe-style key file here and require its key"
    )
    args = p.parse_args(argv)
    explainer = load_explainer(args.bank)
    key = write_key_file(args.key_file) if args.key_file else None
    server = ThreadingHTTPServer((args.host, args.port), make_handler(explainer, args.model, key))
    server.daemon_threads = True
    print(f"READY http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A stand-in for TorchServe's ``POST /predictions/hint`` that answers with the REAL explainer.

Requests are parsed by ``hint.serve.request.parse_request`` and answered by
``hint.explain.explainer.Explainer.answer`` with the committed bank ``model_store/hint-bank`` and its backbone —
the handler's own code path — so the app can be tested (and tried) without Java or TorchServe. It
mimics what the app relies on: token auth (``Authorization: Bearer KEY`` checked against a
``key_file.json`` it writes), TorchServe's error bodies ``{"code", "type", "message"}``, ``GET /ping``,
404 for an unknown model.

    python tests/e2e/fake_endpoint.py --port 0 [--key-file DIR/key_file.json] [--bank model_store/hint-bank]

prints ``READY http://127.0.0.1:PORT`` on stdout once it serves (with ``--port 0`` a free port).
"""

from __future__ import annotations

import argparse
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

    from hint.explain.explainer import Explainer

    torch.set_num_threads(1)
    return Explainer.from_bank(bank_dir, fast=True, box_grid=112)  # as handlers/model-config.yaml


def write_key_file(path: str | Path) -> str:
    key = secrets.token_urlsafe(12)
    body = {k: {"key": secrets.token_urlsafe(12), "expiration time": "never"} for k in ("management", "API")}
    body["inference"] = {"key": key, "expiration time": "never"}
    Path(path).write_text(json.dumps(body, indent=2))
    return key


def make_handler(explainer, model: str, key: str | None):
    from hint.serve import options, request

    lock = threading.Lock()  # the explainer keeps the hooked activation on itself
    limits = options.Limits(
        channels=explainer.channels,
        work_size=2 * explainer.backbone.input_size,
        concept=options.bank_concepts(explainer.h, explainer.bank),
    )

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
                return self._error(
                    401,
                    "InvalidKeyException",
                    "Token Authorization failed. Token either incorrect, expired, or not provided correctly",
                )
            try:
                req = request.parse_request(
                    {"body": raw}, limits, {"Content-Type": self.headers.get("Content-Type", "")}
                )
                with lock:
                    if isinstance(req, request.NeuronRequest):
                        body = explainer.neuron(req.neuron)
                    else:
                        body = explainer.answer([req.image], [req.size], [req.options])[0]
            except options.RequestError as e:
                return self._send(e.code, e.body())
            return self._send(200, body)

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

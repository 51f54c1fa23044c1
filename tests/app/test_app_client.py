"""app/client.py against a tiny local http.server that answers canned JSON or error codes."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from app.client import (
    HintClient,
    HintError,
    ServiceError,
    ServiceUnreachable,
    image_bytes,
    read_token_file,
)

EXPLAIN = {
    "prediction": [{"index": 285, "wnid": "n02124075", "name": "Egyptian cat", "probability": 0.8}],
    "chain": [{"wnid": "n02124075", "name": "Egyptian cat", "probability": 0.8}],
    "concepts": [{"wnid": "n00003553", "name": "whole", "score": 0.9, "present": True, "box": [1, 2, 3, 4]}],
    "image": {"width": 8, "height": 6},
    "model": {"backbone": "efficientnet_lite0"},
}
NEURON = {"neuron": 45, "concepts": [{"wnid": "n04341686", "name": "structure", "shapley": 0.03}]}


class Canned:
    """The fake server's script: what to answer next, and what it was sent."""

    def __init__(self):
        self.status, self.body, self.ctype, self.delay = 200, EXPLAIN, "application/json", 0.0
        self.requests: list[dict] = []

    def answer(self, status=200, body=None, ctype="application/json", delay=0.0):
        self.status, self.body, self.ctype, self.delay = status, body, ctype, delay


@pytest.fixture()
def server():
    canned = Canned()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _reply(self):
            time.sleep(canned.delay)
            data = canned.body if isinstance(canned.body, bytes) else json.dumps(canned.body).encode()
            self.send_response(canned.status)
            self.send_header("Content-Type", canned.ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            canned.requests.append({"path": self.path, "headers": dict(self.headers), "body": raw})
            self._reply()

        def do_GET(self):
            canned.requests.append({"path": self.path, "headers": dict(self.headers), "body": b""})
            self._reply()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    canned.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield canned
    httpd.shutdown()
    httpd.server_close()


def png(w=8, h=6) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_explain_sends_json_options_and_token(server):
    c = HintClient(server.url, token="SECRET")
    r = c.explain(
        png(), concepts=["n00003553", "animal"], top_k=7, threshold=0.4, return_maps=True, ablate=[3, 5]
    )
    assert r["concepts"][0]["name"] == "whole"
    req = server.requests[-1]
    assert req["path"] == "/predictions/hint"
    assert req["headers"]["Authorization"] == "Bearer SECRET"
    body = json.loads(req["body"])
    assert base64.b64decode(body["image"]) == png()
    assert body["concepts"] == ["n00003553", "animal"]
    assert (body["top_k"], body["threshold"], body["return_maps"], body["ablate"]) == (7, 0.4, True, [3, 5])
    c.explain(
        png(), concepts=["all"], ablate=[1], ablate_probe_only=True, permutations=8, seed=None, regions=True
    )
    body = json.loads(server.requests[-1]["body"])
    assert body["concepts"] == ["all"] and body["ablate_probe_only"] is True and body["permutations"] == 8
    assert body["regions"] is True and "seed" not in body, "None leaves an option to the server"


def test_explain_leaves_unset_options_to_the_server_and_unwraps_a_batch_of_one(server):
    server.answer(body=[EXPLAIN])
    r = HintClient(server.url).explain(png())
    assert r["prediction"][0]["name"] == "Egyptian cat"
    body = json.loads(server.requests[-1]["body"])
    assert set(body) == {"image"}
    assert "Authorization" not in server.requests[-1]["headers"]


def test_token_file_is_read_at_every_request(server, tmp_path):
    kf = tmp_path / "key_file.json"
    c = HintClient(server.url, token_file=kf)
    c.explain(png())  # no file yet: no header
    assert "Authorization" not in server.requests[-1]["headers"]
    kf.write_text(json.dumps({"management": {"key": "M"}, "inference": {"key": "K1"}, "API": {"key": "A"}}))
    c.explain(png())
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer K1"
    kf.write_text(json.dumps({"inference": {"key": "K2"}}))  # TorchServe restarted: new key
    c.explain(png())
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer K2"


def test_read_token_file(tmp_path):
    assert read_token_file(tmp_path / "absent.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text('{"management": {"key": "x"}}')
    with pytest.raises(HintError, match="inference"):
        read_token_file(bad)


def test_neuron(server):
    server.answer(body=NEURON)
    r = HintClient(server.url).neuron(45)
    assert r["concepts"][0]["name"] == "structure"
    assert json.loads(server.requests[-1]["body"]) == {"neuron": 45}


@pytest.mark.parametrize(
    ("status", "body", "expect"),
    [
        (
            400,
            {"code": 400, "type": "BadRequest", "message": "ablate: neuron 999 out of range 0..111"},
            r"request rejected \(HTTP 400\): ablate: neuron 999 out of range",
        ),
        (
            401,
            {"code": 401, "type": "InvalidKeyException", "message": "Token Authorization failed."},
            r"HTTP 401.*Token Authorization failed.*token.*--token-file",
        ),
        (
            404,
            {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: hint"},
            r"HTTP 404.*Model not found: hint.*registered.*make serve",
        ),
        (413, b"request entity too large", r"HTTP 413.*too large.*smaller image"),
        (503, b"<html>Prediction failed</html>", r"server error \(HTTP 503\): <html>Prediction failed"),
    ],
)
def test_http_errors_become_one_readable_line(server, status, body, expect):
    server.answer(
        status=status, body=body, ctype="application/json" if isinstance(body, dict) else "text/html"
    )
    with pytest.raises(ServiceError, match=expect) as e:
        HintClient(server.url).explain(png())
    assert e.value.status == status
    assert "\n" not in str(e.value)


def test_not_json_or_wrong_shape(server):
    server.answer(body=b"hello", ctype="text/plain")
    with pytest.raises(HintError, match="did not answer JSON"):
        HintClient(server.url).explain(png())
    server.answer(body={"foo": 1})
    with pytest.raises(HintError, match="without 'prediction'"):
        HintClient(server.url).explain(png())
    server.answer(body={"error": "cannot decode the image"})
    with pytest.raises(ServiceError, match="cannot decode the image"):
        HintClient(server.url).explain(png())


def dead_endpoint() -> str:
    with socket.socket() as s:  # a port just freed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_connection_refused_says_service_unreachable():
    url = dead_endpoint()
    with pytest.raises(
        ServiceUnreachable,
        match=r"service unreachable at http://127\.0\.0\.1:\d+ — start it with `make serve`",
    ):
        HintClient(url, connect_timeout=2).explain(png())
    assert HintClient(url).ping() is False


def test_timeout_says_service_unreachable(server):
    server.answer(delay=1.5)
    t0 = time.monotonic()
    with pytest.raises(ServiceUnreachable, match=r"service unreachable at .*no answer within 0\.3 s"):
        HintClient(server.url, timeout=0.3).explain(png())
    assert time.monotonic() - t0 < 1.4


def test_ping(server):
    server.answer(body={"status": "Healthy"})
    assert HintClient(server.url).ping() is True
    assert server.requests[-1]["path"] == "/ping"


def test_image_inputs(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(png())
    arr = np.zeros((6, 8, 3), np.uint8)
    for x in (png(), p, str(p), Image.new("RGB", (8, 6)), arr):
        assert Image.open(io.BytesIO(image_bytes(x))).size == (8, 6)
    with pytest.raises(HintError, match="cannot read image"):
        image_bytes(tmp_path / "missing.png")
    with pytest.raises(HintError, match="unsupported"):
        image_bytes(3.5)


def test_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HINT_ENDPOINT", "http://127.0.0.1:9999/")
    monkeypatch.setenv("HINT_TOKEN_FILE", str(tmp_path / "key_file.json"))
    monkeypatch.delenv("HINT_TOKEN", raising=False)
    c = HintClient.from_env()
    assert c.url == "http://127.0.0.1:9999/predictions/hint"
    assert c.token is None and c.token_file == tmp_path / "key_file.json"
    monkeypatch.setenv("HINT_TOKEN", "T")
    assert HintClient.from_env(endpoint="http://h:1").token == "T"
    assert HintClient.from_env(endpoint="http://h:1").endpoint == "http://h:1"


def test_command_line_configuration(monkeypatch, tmp_path):
    from app.__main__ import make_client, parse_args

    for k in ("HINT_ENDPOINT", "HINT_TOKEN", "HINT_TOKEN_FILE", "HINT_APP_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    a = parse_args([])
    assert (a.host, a.port, a.endpoint) == ("127.0.0.1", 7860, "http://127.0.0.1:8080")
    c = make_client(a)
    assert c.token is None and c.token_file == tmp_path / "key_file.json"
    monkeypatch.setenv("HINT_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HINT_TOKEN", "ENV")
    c = make_client(parse_args([]))
    assert c.endpoint == "http://127.0.0.1:9" and c.token == "ENV"
    c = make_client(parse_args(["--token-file", "k.json", "--endpoint", "http://h:1", "--port", "1234"]))
    assert c.token is None and c.token_file == tmp_path / "k.json" and c.endpoint == "http://h:1"
    assert make_client(parse_args(["--token", "T"])).token == "T"
    with pytest.raises(SystemExit):
        parse_args(["--token", "T", "--token-file", "k.json"])

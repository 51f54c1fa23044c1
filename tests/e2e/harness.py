"""Helpers shared by tests/app/test_app_api.py and tests/test_app_e2e.py: free ports, the fake endpoint
(tests/e2e/fake_endpoint.py, real explainer) and the app as subprocesses, waiting until they serve."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

E2E = Path(__file__).resolve().parent
REPO = E2E.parents[1]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_endpoint() -> str:
    """A loopback URL where nothing listens (a port just freed)."""
    return f"http://127.0.0.1:{free_port()}"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def fake_endpoint(key_file: Path | None = None, timeout: float = 120):
    """Start the fake endpoint; yields its base URL (``http://127.0.0.1:PORT``)."""
    cmd = [PYTHON, str(E2E / "fake_endpoint.py"), "--port", "0"]
    if key_file is not None:
        cmd += ["--key-file", str(key_file)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("READY ") or not line and proc.poll() is not None:
                break
        if not line.startswith("READY "):
            _stop(proc)
            raise RuntimeError(f"fake endpoint did not start: {proc.stderr.read()[-2000:]}")
        yield line.split()[1]
    finally:
        _stop(proc)


def wait_http(url: str, timeout: float = 90, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s")


@contextmanager
def app_process(endpoint: str, token_file: Path | None = None, log: Path | None = None):
    """``python -m app`` on a free port against ``endpoint``; yields the app's URL once it serves."""
    port = free_port()
    cmd = [PYTHON, "-m", "app", "--port", str(port), "--endpoint", endpoint, "--quiet"]
    if token_file is not None:
        cmd += ["--token-file", str(token_file)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost"}
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/", proc=proc)
        yield url
    finally:
        _stop(proc)
        if log:
            out.close()

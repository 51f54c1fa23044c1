"""A private TorchServe for tests and benchmarks: archives built into a temporary model store, free
loopback ports, its own config, logs, pid, key and socket folders, so it runs beside a ``make serve``.

Used by ``tests/integration`` and ``benchmarks/serve.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from hint.bank import bank_files
from support import REPO

BIN = Path(sys.executable).parent  # the venv's bin: torchserve, torch-model-archiver
DEFAULT_BANK = REPO / "model_store" / "hint-bank"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all held until all are picked)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# every TCP port a TorchServe 0.12 binds (gRPC always starts, on 7070/7071 unless told otherwise)
PORTS = ("inference", "management", "metrics", "grpc_inference", "grpc_management")


def _version() -> str:
    ns: dict = {}
    exec((REPO / "hint" / "__init__.py").read_text(), ns)
    return ns["__version__"]


def build_archives(
    store: Path, bank: Path = DEFAULT_BANK, which=("hint", "bare"), batch_size: int | None = None
) -> dict[str, Path]:
    """The same archives as ``make archive`` / ``make bare-archive``, written into ``store``;
    ``batch_size``: their ``batchSize`` instead of the config file's (``make archive BATCH_SIZE=1``)."""
    store.mkdir(parents=True, exist_ok=True)
    src = store / ".mar-src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(REPO / "hint", src / "hint", ignore=shutil.ignore_patterns("__pycache__"))
    specs = {
        "hint": ("hint_handler.py", "model-config.yaml", bank_files(bank)),
        "bare": ("bare_handler.py", "bare-config.yaml", [REPO / "handlers" / "hint_handler.py"]),
    }
    out = {}
    for name in which:
        handler, config, extra = specs[name]
        config = REPO / "handlers" / config
        if batch_size is not None:
            text, n = re.subn(r"(?m)^batchSize:\s*\d+", f"batchSize: {int(batch_size)}", config.read_text())
            assert n == 1, f"no batchSize line in {config}"
            config = store / f".{name}-config.yaml"
            config.write_text(text)
        cmd = [
            str(BIN / "torch-model-archiver"),
            "--force",
            "--model-name",
            name,
            "--version",
            _version(),
            "--handler",
            str(REPO / "handlers" / handler),
            "--config-file",
            str(config),
            "--extra-files",
            ",".join(str(p) for p in [*extra, src]),
            "--export-path",
            str(store),
        ]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        out[name] = store / f"{name}.mar"
        if batch_size is not None:
            config.unlink()
    shutil.rmtree(src, ignore_errors=True)
    return out


class Endpoints:
    """The inference and management URLs of a server on 127.0.0.1 (``ports``: TorchServe's port names)."""

    ports: dict[str, int]

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"


class LocalTorchServe(Endpoints):
    """A private TorchServe in ``workdir``: free ports (gRPC's too), own config, logs, key file, pid file
    (``tmp``: the launcher's TMPDIR) and Unix sockets (java.io.tmpdir, through TEMP: ``tmp`` as well, or
    a short folder under /tmp where that path is too long for a socket). Runs beside any other."""

    def __init__(self, workdir: Path, store: Path, models: list[str], props: dict | None = None):
        self.workdir, self.store, self.models = Path(workdir), Path(store), list(models)
        self.ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
        self.tmp = self.workdir / "tmp"
        self.sock_dir = self.tmp  # ".ts.sock.NNNNN" in it: at most 107 bytes in all
        self.logs = self.workdir / "logs"
        self.props = props or {}
        self.config = self.workdir / "config.properties"
        self.started = False

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(
            TMPDIR=str(self.tmp),
            TEMP=str(self.sock_dir),
            LOG_LOCATION=str(self.logs),
            METRICS_LOCATION=str(self.logs),
        )
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    def write_config(self) -> None:
        """config.properties as the repo's, on free ports, with this store and these models."""
        props = {}
        for line in (REPO / "config.properties").read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                props[k.strip()] = v.strip()
        props.update(
            inference_address=self.inference_url,
            management_address=self.management_url,
            metrics_address=f"http://127.0.0.1:{self.ports['metrics']}",
            grpc_inference_address="127.0.0.1",
            grpc_inference_port=str(self.ports["grpc_inference"]),
            grpc_management_address="127.0.0.1",
            grpc_management_port=str(self.ports["grpc_management"]),
            model_store=str(self.store),
            load_models=",".join(f"{m}.mar" for m in self.models),
        )
        props.update(self.props)
        self.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def start(self, timeout: float = 240.0) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        if len(str(self.sock_dir.resolve())) + 16 > 107:
            self.sock_dir = Path(tempfile.mkdtemp(prefix="hint-ts-"))
        self.write_config()
        # TorchServe's java keeps the launcher's stdout/stderr: give it a file, not a pipe to wait on
        with open(self.logs / "torchserve.out", "ab") as out:
            subprocess.run(
                [str(BIN / "torchserve"), "--start", "--ncs", "--ts-config", str(self.config)],
                cwd=self.workdir,
                env=self.env(),
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.started = True
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def keys(self) -> dict:
        """key_file.json, which TorchServe writes into its working directory."""
        return json.loads((self.workdir / "key_file.json").read_text())

    def auth(self, kind: str = "inference") -> dict:
        return {"Authorization": f"Bearer {self.keys()[kind]['key']}"}

    def workers(self, model: str) -> list[str]:
        r = requests.get(f"{self.management_url}/models/{model}", headers=self.auth("management"), timeout=5)
        r.raise_for_status()
        return [w["status"] for m in r.json() for w in m.get("workers", [])]

    def pid(self) -> int | None:
        """The frontend's pid (the launcher's pid file), None before start."""
        f = self.tmp / ".model_server.pid"
        return int(f.read_text()) if f.is_file() else None

    def wait_ready(self, timeout: float) -> None:
        t0 = time.monotonic()
        pending = list(self.models)
        pid = self.pid()
        while pending:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"no READY worker for {pending} after {timeout:.0f}s\n{self.log_tail()}")
            if pid is not None and not _alive(pid):
                raise RuntimeError(
                    f"TorchServe (pid {pid}) exited during start-up\n{self.log_tail(25, 'ts_log.log')}"
                )
            try:
                if "READY" in self.workers(pending[0]):
                    pending.pop(0)
                    continue
            except (requests.RequestException, OSError, ValueError, KeyError):
                pass
            fatal = [line for line in self.log_tail(400).splitlines() if "HINT handler cannot start" in line]
            if fatal:
                raise RuntimeError(fatal[-1])
            time.sleep(0.5)

    def log_tail(self, n: int = 25, name: str = "model_log.log") -> str:
        f = self.logs / name
        return "\n".join(f.read_text(errors="replace").splitlines()[-n:]) if f.is_file() else f"(no {name})"

    def stop(self) -> None:
        if not self.started:
            return
        pid = self.pid()
        with open(self.logs / "torchserve.out", "ab") as out:
            subprocess.run(
                [str(BIN / "torchserve"), "--stop"],
                cwd=self.workdir,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=60,
            )
        for _ in range(120):
            if pid is None or not _alive(pid):
                break
            time.sleep(0.5)
        if self.sock_dir != self.tmp:
            shutil.rmtree(self.sock_dir, ignore_errors=True)
            self.sock_dir = self.tmp
        self.started = False

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(") ")[-1].startswith("Z"))

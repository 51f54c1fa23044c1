"""Check, before starting anything, that loopback TCP ports are free; name who holds those that are not.

    python scripts/ports.py NAME=PORT ...     e.g.  inference=8080 management=8081 app=7860

Exit 0 when every port can be bound on 127.0.0.1; else exit 1 with one line on stderr naming each busy
port and the process listening on it (pid, command, working directory: found through /proc/net/tcp*
and /proc/PID/fd; "pid unknown" where this user cannot see it). Standard library only.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

DOC = 'docs/api.md, "Several servers on one host"'


def busy(port: int) -> bool:
    """Whether 127.0.0.1:port cannot be bound (a listener there or on any address; TIME_WAIT is free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def _inodes(port: int) -> list[str]:
    """Inodes of the sockets listening on this local port (/proc/net/tcp and tcp6)."""
    listen = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or int(f[1].rsplit(":", 1)[1], 16) != port:
                continue
            if f[3] == "0A":  # LISTEN
                listen.append(f[9])
    return listen


def _describe(pid: str) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        argv = [a for a in argv if a]
    except OSError:
        argv = []
    if argv and os.path.basename(argv[0]) == "java":  # java -Dx=y ... -cp CP main.Class args: the class
        args = argv[1:]
        main = next(
            (
                a
                for i, a in enumerate(args)
                if "." in a
                and "/" not in a
                and not a.startswith("-")
                and (i == 0 or args[i - 1] not in ("-cp", "-classpath"))
            ),
            "",
        )
        cmd = f"java {main}".strip()
    else:
        cmd = " ".join(" ".join([os.path.basename(argv[0]), *argv[1:]]).split()) if argv else "?"
        cmd = cmd if len(cmd) <= 60 else cmd[:57] + "..."
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = "?"
    return f"pid {pid} ({cmd}, cwd {cwd})"


def holder(port: int) -> str:
    """'pid N (command, cwd DIR)' of the process holding the port, or 'pid unknown'."""
    inodes = {f"socket:[{i}]" for i in _inodes(port)}
    if inodes:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                fds = list((proc / "fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(fd) in inodes:
                        return _describe(proc.name)
                except OSError:
                    continue
    return "pid unknown (bound but not listening, or another user's process)"


def check(ports: dict[str, int]) -> str | None:
    """None when all ports are free, else the one-line message naming each busy port's holder."""
    taken: dict[str, list[str]] = {}
    for name, port in ports.items():
        if busy(port):
            taken.setdefault(holder(port), []).append(f"{port} ({name})")
    if not taken:
        return None
    parts = "; ".join(f"{', '.join(p)} held by {who}" for who, p in taken.items())
    return f"port in use: {parts}; nothing started (stop the holder, or use other ports: {DOC})"


def main(argv: list[str]) -> int:
    ports = {}
    for arg in argv:
        name, sep, port = arg.partition("=")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            print(f"usage: ports.py NAME=PORT ... (got {arg!r})", file=sys.stderr)
            return 2
        ports[name] = int(port)
    msg = check(ports)
    if msg:
        print(msg, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The whole default bank build from an empty cache: wall time, per-step time and peak memory.

    python benchmarks/build.py [--data DIR] [--layer L] [--log FILE] [-- extra offline-build args]

Runs ``python -m offline build`` in a child process with a fresh cache folder and reports the child's
wall time and peak resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, which covers its data
loader workers), the per-step timings from the bank's manifest, and the machine. Appends one JSON line
per run to ``--log`` (default ``benchmarks/build-runs.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    p.add_argument("--layer", default=None, help="hooked layer (default: the backbone's)")
    p.add_argument("--log", type=Path, default=REPO / "benchmarks" / "build-runs.jsonl")
    p.add_argument("extra", nargs="*", help="more offline-build arguments (after --)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hint-build-") as tmp:
        out = Path(tmp) / "bank"
        cmd = [
            sys.executable,
            "-m",
            "offline",
            "build",
            "--data",
            args.data,
            "--out",
            str(out),
            "--cache",
            str(Path(tmp) / "cache"),
            "--no-progress",
            *(["--layer", args.layer] if args.layer else []),
            *args.extra,
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return proc.returncode
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        m = json.loads((out / "manifest.json").read_text())
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "command": " ".join(cmd[1:]),
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_mb),
        "steps_s": {k: round(v, 1) for k, v in m["build"]["timings_s"].items()},
        "images": m["build"]["step1"]["images"],
        "kept_images": m["build"]["step1"].get("kept_images"),
        "views": m["build"].get("views", 1),
        "per_class": m["build"].get("per_class"),
        "concepts": len(m["concepts"]),
        "reliable": sum(c.get("reliable", True) for c in m["concepts"]),
        "load_avg_at_end": os.getloadavg()[0],
    }
    with open(args.log, "a") as fh:
        fh.write(json.dumps(run) + "\n")
    print(json.dumps(run, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

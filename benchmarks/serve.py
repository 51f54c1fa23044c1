"""Serving benchmark: /predictions/hint vs /predictions/bare on a private TorchServe.

    python benchmarks/serve.py [--requests 96] [--clients 1,8] [--image photo.jpg] [--no-write]

Builds hint.mar and bare.mar into a temporary model store, starts TorchServe on free loopback ports
(own config, log dir, pid file and key file: it runs beside a ``make serve`` instance), waits for
READY workers through the management API, then measures client-side latency (p50, p99) and throughput
of both endpoints with 1 and 8 concurrent clients (rounds alternate between the endpoints, so load from
other processes hits both alike), prints a markdown table and the p50 ratio HINT / bare, and writes it
under "Serving" in docs/benchmarks.md.

The server itself is :class:`LocalTorchServe` (``tests/support/torchserve.py``), which the integration tests use too.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.torchserve import DEFAULT_BANK, LocalTorchServe, build_archives  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ benchmark


def sample_jpeg() -> bytes:
    """The tabby photo of scikit-image (451x300), as a quality-90 JPEG."""
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def handler_times(ts: LocalTorchServe, offset: int) -> tuple[dict[str, list[float]], int]:
    """HandlerTime (ms per batch, measured inside the worker) per model, logged after ``offset``."""
    f = ts.logs / "model_metrics.log"
    if not f.is_file():
        return {}, 0
    with open(f, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode("utf-8", "replace")
        end = fh.tell()
    out: dict[str, list[float]] = {}
    for ms, model in re.findall(r"HandlerTime\.(?:ms|Milliseconds):([\d.]+)\|#ModelName:([\w.-]+)", text):
        out.setdefault(model, []).append(float(ms))
    return out, end


def measure(ts: LocalTorchServe, image: bytes, n: int, clients: int, rounds: int) -> dict:
    """Latencies of n requests per endpoint at ``clients`` concurrency, in alternating rounds."""
    _, offset = handler_times(ts, 0)
    headers = {**ts.auth(), "Content-Type": "image/jpeg"}
    sessions: dict[int, requests.Session] = {}
    lat: dict[str, list[float]] = {"hint": [], "bare": []}
    wall = {"hint": 0.0, "bare": 0.0}
    size = {"hint": 0, "bare": 0}

    def one(model: str, k: int) -> float:
        s = sessions.setdefault(k % clients, requests.Session())
        t = time.perf_counter()
        r = s.post(f"{ts.inference_url}/predictions/{model}", data=image, headers=headers, timeout=120)
        dt = time.perf_counter() - t
        if r.status_code != 200:
            raise RuntimeError(f"{model}: HTTP {r.status_code} {r.text[:200]}")
        size[model] = len(r.content)
        return dt

    # short rounds, so that load from other processes hits both endpoints alike: at least two waves
    # of requests per round, an even number of rounds (each endpoint goes first as often)
    per_round = max(min(n // rounds, 4), 2 * clients)
    rounds = max(2, 2 * round(n / per_round / 2))
    with ThreadPoolExecutor(clients) as pool:
        for r in range(rounds):
            for model in ("hint", "bare") if r % 2 == 0 else ("bare", "hint"):
                t = time.perf_counter()
                lat[model] += list(pool.map(lambda k, m=model: one(m, k), range(per_round)))
                wall[model] += time.perf_counter() - t
    for s in sessions.values():
        s.close()
    time.sleep(0.5)  # let the metrics log catch up
    handler, _ = handler_times(ts, offset)
    return {
        m: {
            "n": len(lat[m]),
            "p50": 1000 * statistics.median(lat[m]),
            "p99": 1000 * _percentile(lat[m], 0.99),
            "rps": len(lat[m]) / wall[m],
            "bytes": size[m],
            "handler_p50": statistics.median(handler[m]) if handler.get(m) else float("nan"),
        }
        for m in lat
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def table(results: dict[int, dict]) -> str:
    lines = [
        "| clients | endpoint | requests | p50 ms | p99 ms | req/s | handler ms per batch (p50) | response bytes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c, res in results.items():
        for m in ("hint", "bare"):
            r = res[m]
            lines.append(
                f"| {c} | /predictions/{m} | {r['n']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['rps']:.1f} "
                f"| {r['handler_p50']:.1f} | {r['bytes']} |"
            )
    lines.append("")
    for c, res in results.items():
        lines.append(
            f"* p50 ratio HINT / bare, {c} client{'s' if c > 1 else ''}: **{res['hint']['p50'] / res['bare']['p50']:.3f}** "
            f"(target ≤ {P50_TARGET}); throughput ratio: **{res['hint']['rps'] / res['bare']['rps']:.3f}** "
            f"(target ≥ {RPS_TARGET} at 8 clients)"
        )
    return "\n".join(lines)


P50_TARGET, RPS_TARGET = 1.3, 0.8  # issue 11: with this image's neurons on, at the default options


NOTES = """\
The answer is the service's default: the relevant concepts (the predicted class's path and the present
ones, 13 on this photo), 5 neurons of the bank and **5 of this image's own per concept** (per-image
Shapley values over each concept's region, exact in the probe-logit game; see "Per-image Shapley"), no maps. Where HINT's extra time goes per image (the in-process handler,
batches of 4 such requests, 1 torch thread, cProfile and timers):

* the forward pass (~28 ms) is the same in both handlers;
* the concept maps of all 249 concepts, their pooled scores and presence, the boxes of the present
  concepts on a 112x112 grid (`fast`), the chain and the bank's neurons: ~1.5-2 ms;
* this image's neurons: the exact probe-logit values are one matrix product (CPU p50 in "Per-image
  Shapley"; `"image_neurons": false` saves it). A request with `permutations` M gets the probability
  game's Monte Carlo instead, ~4 ms at M = 8 and ~7.5 ms at M = 16 here;
* the JSON answer (~20 kB): ~0.2 ms.

The ratios move with the load other jobs put on the 2 cores (both endpoints are measured in alternating
rounds so that both see the same load). Other runs of `--requests 192` at M = 8 on 2026-11-30: on a quiet
machine (1-minute load average 0.0-1.3) p50 ratio at 1 client 1.15-1.18 and throughput ratio at 8
clients 0.81-0.88 in three runs; with another build running on the same 2 cores 1.17 and 0.84.
"""


def write_doc(text: str, path: Path) -> None:
    """Replace the "## Serving" section of docs/benchmarks.md (or append one)."""
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    start = old.find("\n## Serving")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + 1)
        new = old[: start + 1] + text + ("" if end < 0 else "\n" + old[end + 1 :])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=96, help="requests per endpoint and concurrency (96)")
    ap.add_argument(
        "--rounds", type=int, default=8, help="alternating rounds the requests are split into (8)"
    )
    ap.add_argument("--clients", default="1,8", help="concurrency levels (1,8)")
    ap.add_argument("--image", type=Path, help="a JPEG to send (default: skimage's chelsea, 451x300)")
    ap.add_argument("--bank", type=Path, default=DEFAULT_BANK)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--workdir", type=Path, help="keep the server's files (logs ...) here, not in a temp dir")
    args = ap.parse_args(argv)

    image = args.image.read_bytes() if args.image else sample_jpeg()
    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        image_desc = f"{im.format} {im.size[0]}x{im.size[1]}, {len(image)} bytes"
    levels = [int(c) for c in args.clients.split(",")]
    load = [os.getloadavg()[0], 0.0]
    with tempfile.TemporaryDirectory(prefix="hint-bench-") as tmp:
        work = Path(tmp)
        if args.workdir:
            work = args.workdir.resolve()
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
        build_archives(work / "store", args.bank)
        t0 = time.monotonic()
        with LocalTorchServe(work, work / "store", ["hint", "bare"]) as ts:
            print(f"TorchServe ready in {time.monotonic() - t0:.0f}s on {ts.inference_url}", file=sys.stderr)
            measure(ts, image, args.warmup * 2, 2, 2)  # warm-up: both workers of both models
            results = {}
            for c in levels:
                results[c] = measure(ts, image, args.requests, c, args.rounds)
                r = results[c]
                print(
                    f"{c} client(s): hint p50 {r['hint']['p50']:.1f} ms, bare p50 {r['bare']['p50']:.1f} ms, "
                    f"ratio {r['hint']['p50'] / r['bare']['p50']:.3f}",
                    file=sys.stderr,
                )
    load[1] = os.getloadavg()[0]
    cfg = (REPO / "handlers" / "model-config.yaml").read_text()
    batch = " ".join(
        line.split("#")[0].strip()
        for line in cfg.splitlines()
        if line.split(":")[0] in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")
    )
    text = "\n".join(
        [
            "## Serving",
            "",
            f"`python benchmarks/serve.py --requests {args.requests}` on {time.strftime('%Y-%m-%d')}: TorchServe 0.12, "
            f"both archives on one server, loopback, `{image_desc}` posted as raw `image/jpeg` (default options: "
            "this image's neurons on), both client levels in one run.",
            f"Machine: **2-core CPU** ({cpu_name()}, {os.cpu_count()} logical CPUs), torch "
            f"{_torch_version()}, shared with other jobs (1-minute load average {load[0]:.1f} before the run, "
            f"{load[1]:.1f} after it with the benchmark's own processes; absolute numbers are noisy, the two "
            "endpoints are measured in alternating rounds, so both see the same load).",
            f"Per model: {batch} (handlers/model-config.yaml), 1 torch thread per worker.",
            "",
            table(results),
            "",
            NOTES,
        ]
    )
    print(text)
    if not args.no_write:
        write_doc(text, args.doc)
        print(f"written to {args.doc}", file=sys.stderr)
    return 0


def _torch_version() -> str:
    try:
        import torch

        return torch.__version__
    except ImportError:  # pragma: no cover
        return "?"


if __name__ == "__main__":
    sys.exit(main())

"""End to end in a real browser: ``python -m app`` (a subprocess) against the fake endpoint (real
explainer, committed bank), driven by Playwright from Node (tests/e2e/explain.mjs) in headless
Debian Chromium. Screenshots are left in the test's tmp dir.

Needs /usr/bin/chromium, node and tests/e2e/node_modules/playwright-core: installed on the fly by
scripts/e2e-deps.sh where missing; the tests skip, with the reason, only where that cannot be done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from harness import E2E, REPO, app_process, dead_endpoint, fake_endpoint  # noqa: E402

pytestmark = pytest.mark.slow
SCRIPT = E2E / "explain.mjs"


def _missing() -> list[str]:
    out = []
    if not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()):
        out.append("chromium")
    if not shutil.which("node"):
        out.append("node")
    if not (E2E / "node_modules" / "playwright-core" / "package.json").is_file():
        out.append("playwright-core")
    return out


@pytest.fixture(scope="module")
def browser_deps() -> str:
    missing = _missing()
    if missing:
        try:
            r = subprocess.run(
                ["bash", str(REPO / "scripts" / "e2e-deps.sh")],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=900,
            )
            log = (r.stdout + r.stderr)[-600:]
        except (OSError, subprocess.TimeoutExpired) as e:
            log = str(e)
        still = _missing()
        if still:
            pytest.skip(
                f"cannot install {', '.join(still)} for the browser test (scripts/e2e-deps.sh): {log}"
            )
    return shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from skimage import data

    p = tmp_path_factory.mktemp("img") / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(p, quality=92)
    return p


def run_script(
    mode: str,
    app_url: str,
    out_dir: Path,
    chromium: str,
    image: Path | None = None,
    big: Path | None = None,
    timeout: int = 240,
) -> dict:
    env = {
        **os.environ,
        "APP_URL": app_url,
        "OUT_DIR": str(out_dir),
        "MODE": mode,
        "CHROMIUM": chromium,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    if image:
        env["IMAGE"] = str(image)
    if big:
        env["BIG_IMAGE"] = str(big)
    r = subprocess.run(
        ["node", str(SCRIPT)], cwd=E2E, env=env, capture_output=True, text=True, timeout=timeout
    )
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    findings = json.loads(lines[-1]) if lines else {}
    assert r.returncode == 0, f"{findings.get('error') or r.stderr[-2000:]} (screenshots in {out_dir})"
    return findings


def test_upload_explain_ablate_lookup(browser_deps, photo, tmp_path):
    big = tmp_path / "too-big.png"  # 12 MB of noise: over the 10 MB upload limit
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)).save(big)
    key_file = tmp_path / "key_file.json"
    with fake_endpoint(key_file) as endpoint, app_process(endpoint, key_file, tmp_path / "app.log") as url:
        f = run_script("explain", url, tmp_path, browser_deps, photo, big)
    assert "exceed" in f["tooBig"] and "10" in f["tooBig"], f["tooBig"]
    assert "cat" in f["prediction"].lower(), f["prediction"]
    assert "feline" in f["chain"] and "whole" in f["chain"]
    assert "physical entity › object" in f["chips"] and "(probe " in f["chips"], f["chips"]
    assert f["overlays"] == 4
    assert f["box"]["n"] > 50 and f["box"]["width"] == 451, f["box"]
    assert "feline" in f["focus"], "the focus is on the cat's chain"
    assert "probe score" in f["conceptTable"] and "model probability" in f["conceptTable"]
    assert f["searched"].startswith("retriever") and "canine" in f["searched"], f["searched"]
    assert f["unreliable"].lstrip("✓ ").startswith("person") and f["unreliable"].endswith("(unreliable)"), f[
        "unreliable"
    ]
    assert f["ablation"].startswith("Class ") and "→" in f["ablation"] and "points" in f["ablation"]
    assert "probe score" in f["ablationScore"] and "→" in f["ablationScore"]
    assert "rank in concept" in f["neuronTable"] and re.search(r" n\d{8} ", f["neuronTable"]), f[
        "neuronTable"
    ]
    # a neuron of the charts opened from the list: its number, label and 9 exemplars
    opened = re.match(r"#(\d+) · this image", f["opened"])
    assert opened and f["neuronNo"] == opened.group(1), (f["opened"], f["neuronNo"])
    assert (
        f"Neuron #{opened.group(1)}" in f["neuronLabel"]
        and "Label: " in f["neuronLabel"]
        and "IoU" in f["neuronLabel"]
    )
    assert f["exemplars"] == 9
    for shot in ("explain.png", "overlays.png", "neuron-grid.png"):
        assert (tmp_path / shot).stat().st_size > 10_000


def test_endpoint_down_shows_service_unreachable(browser_deps, photo, tmp_path):
    dead = dead_endpoint()
    with app_process(dead, log=tmp_path / "app.log") as url:
        f = run_script("unreachable", url, tmp_path, browser_deps, photo)
    assert f"service unreachable at {dead}" in f["status"]
    assert "make serve" in f["status"]
    assert (tmp_path / "unreachable.png").is_file()

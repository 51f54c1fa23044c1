"""app/ui.py's pure helpers: hierarchy labels and order, default concepts, markdown, frames, uploads."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.client import HintError
from app.drawing import BOX_COLOR
from app.ui import (
    SEP,
    ablation_markdown,
    concept_choices,
    concept_labels,
    concept_overlay,
    default_selection,
    display_image,
    example_images,
    neuron_frame,
    neurons_frame,
    prediction_markdown,
    upload_bytes,
    warn_markdown,
)

BANK = Path(__file__).resolve().parents[1] / "model_store" / "hint-bank" / "manifest.json"


@pytest.fixture(scope="module")
def concepts() -> list[dict]:
    """The committed bank's concepts shaped as the endpoint answers them (scores made up)."""
    out = []
    for i, c in enumerate(json.loads(BANK.read_text())["concepts"]):
        score = 0.3 + 0.7 * ((i * 37) % 26) / 25
        out.append({
            "wnid": c["wnid"], "name": c["name"], "path": c["path"], "depth": c["depth"], "score": score,
            "present": score >= 0.5, "box": [10, 10, 50, 40] if score >= 0.5 else None, "area_fraction": 0.2,
            "neurons": [{"neuron": n, "shapley": 0.1 - n / 1000, "shapley_se": 0.001, "activation": 1.0,
                         "contribution": 0.1} for n in range(20)],
            "map": np.full((14, 14), score).tolist(),
        })  # fmt: skip
    return out


def result(
    concepts, chain_names=("Egyptian cat", "feline", "carnivore", "mammal", "vertebrate", "animal", "whole")
):
    by = {c["name"]: c for c in concepts}
    chain = []
    for n in chain_names:
        lvl = {"wnid": by[n]["wnid"] if n in by else f"n-{n}", "name": n, "probability": 0.9}
        if n in by:
            lvl["score"] = by[n]["score"]
        chain.append(lvl)
    return {
        "prediction": [{"name": "Egyptian cat", "probability": 0.82, "wnid": "n02124075", "index": 285},
                       {"name": "tiger cat", "probability": 0.07, "wnid": "n02123159", "index": 282}],
        "chain": chain, "concepts": concepts, "image": {"width": 60, "height": 50},
    }  # fmt: skip


def test_labels_follow_the_hierarchy(concepts):
    labels = {c["name"]: concept_labels(concepts)[c["wnid"]] for c in concepts}
    assert labels["whole"] == "whole"
    assert labels["animal"] == "animal"
    assert labels["mammal"] == f"animal{SEP}vertebrate{SEP}mammal"
    assert labels["feline"] == SEP.join(["animal", "vertebrate", "mammal", "carnivore", "feline"])
    assert labels["car"] == SEP.join(["artifact", "vehicle", "wheeled vehicle", "car"])


def test_choices_are_depth_first(concepts):
    choices = concept_choices(concepts, with_scores=False)
    labels = [lab for lab, _ in choices]
    assert labels[0] == "whole" and len(choices) == len(concepts)
    # every concept comes right after its ancestors' block: each label's parent precedes it
    for i, lab in enumerate(labels[1:], 1):
        parent = lab.rsplit(SEP, 1)[0]
        if SEP in lab:
            assert parent in labels[:i], lab
    assert labels.index("animal" + SEP + "vertebrate") < labels.index("artifact")
    scored = concept_choices(concepts)
    assert all("(" in lab for lab, _ in scored)
    assert any("absent" in lab for lab, _ in scored)


def test_default_selection_spreads_over_the_predicted_chain(concepts):
    r = result(concepts)
    names = {c["wnid"]: c["name"] for c in concepts}
    picked = [names[w] for w in default_selection(r)]
    assert picked[0] == "whole" and picked[-1] == "feline" and len(picked) == 4
    r2 = result(concepts, chain_names=("espresso", "beverage", "entity"))
    picked2 = default_selection(r2)
    assert names[picked2[0]] == "whole" and len(picked2) == 4


def test_prediction_markdown(concepts):
    md = prediction_markdown(result(concepts))
    assert md.startswith("### Egyptian cat — 82.0 %")
    assert "tiger cat 7.0 %" in md
    assert f"Egyptian cat{SEP}**feline**" in md and "**whole**" in md
    assert "<table>" in md and "concept score" in md
    assert prediction_markdown({"prediction": []}) == "_no prediction_"


def test_frames(concepts):
    f = neurons_frame(concepts[0], removed=3)
    assert len(f) == 20 and list(f["status"][:4]) == ["removed"] * 3 + ["kept"]
    assert f["neuron"][0] == "#0"
    assert neurons_frame({}).empty
    t = neuron_frame({"concepts": [{"wnid": "n1", "name": "a", "shapley": 0.2, "rank_in_concept": 3}]})
    assert t.iloc[0].tolist() == [1, "a", "n1", 0.2, 3]


def test_ablation_markdown(concepts):
    before = {c["wnid"]: c for c in concepts}
    focus = concepts[1]
    after = {focus["wnid"]: {**focus, "score": focus["score"] - 0.25, "present": False, "area_fraction": 0.0},
             concepts[0]["wnid"]: {**concepts[0], "score": concepts[0]["score"] - 0.01}}  # fmt: skip
    md = ablation_markdown(focus, [3, 7], before, after)
    assert f"**{focus['name']}**: score {focus['score']:.3f} → **{focus['score'] - 0.25:.3f}** (-0.250" in md
    assert "#3, #7" in md and "no longer above the threshold" in md
    assert f"| {concepts[0]['name']} |" in md


def test_concept_overlay_has_the_box(concepts):
    img = np.zeros((50, 60, 3), np.uint8)
    c = next(c for c in concepts if c["box"])
    out = concept_overlay(img, c, (120, 100))  # original twice the drawn size
    assert out.shape == (50, 60, 3)
    assert (out == BOX_COLOR).all(-1).sum() > 20


def test_upload_bytes(tmp_path):
    p = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(p)
    assert upload_bytes(p) == p.read_bytes()
    small = upload_bytes(p, limit=p.stat().st_size // 2)
    im = Image.open(io.BytesIO(small))
    assert im.format == "JPEG" and im.size == (400, 300), "re-encoded, same pixels size"
    big = tmp_path / "big.png"
    with open(big, "wb") as fh:
        fh.truncate(11 * 1024 * 1024)
    with pytest.raises(HintError, match=r"11\.0 MB; the limit is 10 MB"):
        upload_bytes(big)


def _png_header(path: Path, width: int, height: int) -> Path:
    """A tiny PNG that claims width x height pixels (its pixel data is not there)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda d: (d / "notes.txt").write_text("not an image") and d / "notes.txt", r"notes\.txt is not an image the service reads"),
        (lambda d: _png_header(d / "huge.png", 30000, 30000), r"900 megapixels; the service accepts up to 40 megapixels"),
        (lambda d: _png_header(d / "big.png", 8000, 6000), r"8000×6000 = 48\.0 megapixels; the service accepts up to 16 megapixels for PNG"),
        (lambda d: _png_header(d / "mid.png", 5000, 4000), r"20\.0 megapixels; the service accepts up to 16 megapixels for PNG"),
        (lambda d: d / "gone.png", r"the uploaded file is gone"),
    ],
    ids=["text file", "30000x30000 png", "48 MP png", "20 MP png", "missing file"],
)
def test_uploads_the_service_would_refuse_get_readable_errors(tmp_path, make, words):
    from app.ui import check_upload

    path = make(tmp_path)
    with pytest.raises(HintError, match=words):
        check_upload(path)
    with pytest.raises(HintError, match=words):
        upload_bytes(path)


def test_display_image_follows_the_server_size(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (80, 40), (5, 6, 7)).save(p)
    assert display_image(str(p), 80, 40).shape == (40, 80, 3)
    assert display_image(str(p), 40, 80).shape == (80, 40, 3), "resized to what the server saw"


def test_examples_and_warning(tmp_path):
    files = example_images(tmp_path)
    assert [Path(f).name for f in files] == ["chelsea.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"]
    assert Image.open(files[0]).size == (451, 300)
    w = warn_markdown("service unreachable at http://x — start it with `make serve` <b>")
    assert "<code>make serve</code>" in w and "&lt;b&gt;" in w

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
    GLOBAL_SOURCE,
    SEP,
    ablation_markdown,
    concept_caption,
    concept_choices,
    concept_labels,
    concept_overlay,
    concept_path,
    concepts_frame,
    default_selection,
    display_image,
    example_images,
    exemplar_items,
    image_neurons_frame,
    neuron_choices,
    neuron_frame,
    neuron_label_markdown,
    neurons_frame,
    prediction_markdown,
    upload_bytes,
    warn_markdown,
)

BANK = Path(__file__).resolve().parents[2] / "model_store" / "hint-bank" / "manifest.json"


@pytest.fixture(scope="module")
def concepts() -> list[dict]:
    """The committed bank's concepts shaped as the endpoint answers them (scores made up)."""
    out = []
    for i, c in enumerate(json.loads(BANK.read_text())["concepts"]):
        score = 0.3 + 0.7 * ((i * 37) % 26) / 25
        out.append(
            {
                "wnid": c["wnid"],
                "name": c["name"],
                "path": c["path"],
                "depth": c["depth"],
                "score": score,
                "threshold": c["threshold"],
                "probe_present": score >= c["threshold"],
                "reliable": c["reliable"],
                "model_probability": 1 - score / 2,
                "present": score >= 0.5 and c["reliable"],
                "box": [10, 10, 50, 40] if score >= 0.5 and c["reliable"] else None,
                "area_fraction": 0.2,
                "neurons": [
                    {
                        "neuron": n,
                        "shapley": 0.1 - n / 1000,
                        "shapley_se": 0.001,
                        "activation": 1.0,
                        "contribution": 0.1,
                    }
                    for n in range(20)
                ],
                "region_cells": 12,
                "image_neurons": [
                    {
                        "neuron": 100 + n,
                        "shapley": 0.2 - n / 200,
                        "signed": 0.15 - n / 100,
                        "rank": n + 2,
                        "signed_rank": n + 1,
                        "global_rank": 3 * n + 1,
                        "activation": 0.5,
                    }
                    for n in range(20)
                ],
                "map": np.full((7, 7), score).tolist(),
            }
        )
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
        "prediction": [
            {"name": "Egyptian cat", "probability": 0.82, "wnid": "n02124075", "index": 285},
            {"name": "tiger cat", "probability": 0.07, "wnid": "n02123159", "index": 282},
        ],
        "chain": chain,
        "concepts": concepts,
        "image": {"width": 60, "height": 50},
    }


def test_labels_name_first_then_the_wordnet_path(concepts):
    labels = {c["name"]: concept_labels(concepts)[c["wnid"]] for c in concepts}
    assert labels["physical entity"] == "physical entity"
    assert labels["whole"] == f"whole  ·  physical entity{SEP}object"
    mammal = f"animal{SEP}chordate{SEP}vertebrate{SEP}mammal"
    assert labels["feline"].startswith("feline  ·  physical entity") and labels["feline"].endswith(
        f"{mammal}{SEP}placental{SEP}carnivore"
    )
    assert f"vehicle{SEP}wheeled vehicle" in labels["car"]
    shared = [lab for lab in concept_labels(concepts).values() if lab.startswith("vessel")]
    assert len(shared) == 2 and len(set(shared)) == 2, "a name two concepts share gets its WNID"


def test_choices_cover_every_concept_depth_first_and_mark_unreliable(concepts):
    choices = concept_choices(concepts, with_scores=False)
    assert len(choices) == len(concepts) == len({w for _, w in choices}) == 249
    paths = [concept_path(next(c for c in concepts if c["wnid"] == w)) for _, w in choices]
    assert paths == sorted(paths), "depth-first: every concept right after its ancestors' block"
    unreliable = {c["wnid"] for c in concepts if not c["reliable"]}
    assert unreliable and {w for lab, w in choices if lab.endswith("(unreliable)")} == unreliable
    scored = dict((w, lab) for lab, w in concept_choices(concepts))
    c = concepts[3]
    assert f"(probe {c['score']:.2f}, model {c['model_probability']:.2f}, " in scored[c["wnid"]]
    assert any("absent" in lab for lab in scored.values()) and any(
        "present)" in lab for lab in scored.values()
    )


def test_probe_beside_model(concepts):
    c = next(c for c in concepts if c["present"] and c["probe_present"])
    cap = concept_caption(c)
    assert (
        f"probe {c['score']:.3f} ✓ (threshold {c['threshold']:.2f}) · model {c['model_probability']:.3f} · present"
        in cap
    )
    bad = next(c for c in concepts if not c["reliable"])
    assert "absent, unreliable" in concept_caption(bad) and "no box" in concept_caption(bad)
    f = concepts_frame(concepts, [c["wnid"], bad["wnid"], "n00000000"])
    assert list(f["concept"]) == [c["name"], bad["name"]]
    row = f.iloc[0]
    assert (row["probe score"], row["model probability"], row["present"]) == (
        round(c["score"], 3),
        round(c["model_probability"], 3),
        True,
    )
    assert row["hierarchy path"].endswith(c["name"]) and not f.iloc[1]["reliable"]


def test_default_selection_spreads_over_the_predicted_chain(concepts):
    r = result(concepts)
    names = {c["wnid"]: c["name"] for c in concepts}
    picked = [names[w] for w in default_selection(r)]
    assert picked[0] == "whole" and picked[-1] == "feline" and len(picked) == 4
    r2 = result(concepts, chain_names=("espresso", "beverage", "entity"))
    picked2 = default_selection(r2)
    assert names[picked2[0]] == "physical entity" and len(picked2) == 4, (
        "the most general, then the best scores"
    )


def test_prediction_markdown(concepts):
    md = prediction_markdown(result(concepts))
    assert md.startswith("### Egyptian cat — 82.0 %")
    assert "tiger cat 7.0 %" in md
    assert f"Egyptian cat{SEP}**feline**" in md and "**whole**" in md
    assert "<table>" in md and "probe score" in md and "model P(level)" in md
    assert prediction_markdown({"prediction": []}) == "_no prediction_"


def test_frames(concepts):
    f = neurons_frame(concepts[0], removed=3)
    assert len(f) == 20 and list(f["status"][:4]) == ["removed"] * 3 + ["kept"]
    assert f["neuron"][0] == "#0"
    assert neurons_frame({}).empty and image_neurons_frame({}).empty
    g = image_neurons_frame(concepts[0], removed=2)
    assert (
        len(g) == 20 and g["neuron"][0] == "#100" and list(g["status"][:3]) == ["removed", "removed", "kept"]
    )
    assert g.iloc[1][["signed rank", "abs rank", "global rank"]].tolist() == [2, 3, 4] and g["signed"][
        1
    ] == pytest.approx(0.14)
    t = neuron_frame({"concepts": [{"wnid": "n1", "name": "a", "shapley": 0.2, "rank_in_concept": 3}]})
    assert t.iloc[0].tolist() == [1, "a", "n1", 0.2, 3]


def test_neuron_grid_label_and_chart_choices(concepts):
    import base64

    def thumb(colour) -> str:
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(buf, "JPEG", quality=95)
        return base64.b64encode(buf.getvalue()).decode()

    answer = {
        "neuron": 45,
        "concepts": [],
        "label": {
            "wnid": "n1",
            "name": "game equipment",
            "shapley": 0.0189,
            "iou": 0.0123,
            "threshold": 8.9,
            "best_iou": {"wnid": "n2", "name": "cat", "iou": 0.0714},
        },
        "exemplars": {
            "available": True,
            "k": 2,
            "format": "jpeg",
            "size": 64,
            "window_cells": 4.0,
            "patches": [
                {
                    "rank": 1,
                    "image": "a.JPEG",
                    "box": [0, 0, 9, 9],
                    "activation": 16.49,
                    "thumbnail": thumb((250, 0, 0)),
                },
                {
                    "rank": 2,
                    "image": "b.JPEG",
                    "box": [0, 0, 9, 9],
                    "activation": 14.9,
                    "thumbnail": thumb((0, 0, 250)),
                },
            ],
        },
    }
    items = exemplar_items(answer)
    assert [cap for _, cap in items] == ["1 · 16.49 · a.JPEG", "2 · 14.90 · b.JPEG"]
    assert (
        items[0][0].shape == (64, 64, 3)
        and items[0][0][..., 0].mean() > 240
        and items[1][0][..., 2].mean() > 240
    )
    md = neuron_label_markdown(answer)
    assert md.startswith("### Neuron #45") and "**Label: game equipment**" in md and "IoU 0.012" in md
    assert "**cat** (IoU 0.071)" in md and "top 2 image patches" in md and "4 × 4 cells" in md
    old = {
        "neuron": 3,
        "concepts": [],
        "label": {"wnid": "n1", "name": "x", "shapley": 0.1, "iou": None},
        "exemplars": {"available": False, "reason": "this bank has no exemplars"},
    }
    assert exemplar_items(
        old
    ) == [] and "_No exemplars: this bank has no exemplars._" in neuron_label_markdown(old)
    assert "IoU" not in neuron_label_markdown(old)
    # the charts' neurons: this image's (signed), then the bank's
    choices = neuron_choices(concepts[0])
    assert len(choices) == 40 and choices[0] == ("#100 · this image, signed +0.1500", 100)
    assert choices[20] == ("#0 · the bank, global 0.1000", 0)
    assert neuron_choices({}) == []


def test_ablation_markdown(concepts):
    focus, other = concepts[1], concepts[0]

    def short(c, d=0.0, present=None):
        return {
            "wnid": c["wnid"],
            "name": c["name"],
            "score": c["score"] + d,
            "model_probability": c["model_probability"] + d / 2,
            "present": c["present"] if present is None else present,
        }

    after = {
        "prediction": [
            {"name": "tiger cat", "probability": 0.5},
            {"name": "Egyptian cat", "probability": 0.3},
        ],
        "concepts": [short(focus, -0.25, False), short(other, -0.01)],
        "ablation": {
            "mode": "network",
            "neurons": [3, 7],
            "class": {"name": "Egyptian cat", "probability_before": 0.8, "probability_after": 0.3},
            "before": {
                "prediction": [
                    {"name": "Egyptian cat", "probability": 0.8},
                    {"name": "tiger cat", "probability": 0.1},
                ],
                "concepts": [short(focus), short(other)],
            },
        },
    }
    md = ablation_markdown(focus, [3, 7], after, GLOBAL_SOURCE)
    assert md.startswith("**Class Egyptian cat**: 80.0 % → **30.0 %** (-50.0 points)")
    assert "| 1 | Egyptian cat 80.0 % | tiger cat 50.0 % |" in md
    assert (
        f"**{focus['name']}**: probe score {focus['score']:.3f} → **{focus['score'] - 0.25:.3f}** (-0.250)"
        in md
    )
    assert "→ absent" in md and "#3, #7" in md and GLOBAL_SOURCE in md and "inside the network" in md
    assert f"| {other['name']} |" in md
    assert ablation_markdown(focus, [1], {"concepts": []}) == "_the ablated answer has no such concept_"


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
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (
            lambda d: (d / "notes.txt").write_text("not an image") and d / "notes.txt",
            r"notes\.txt is not an image the service reads",
        ),
        (
            lambda d: _png_header(d / "huge.png", 30000, 30000),
            r"900 megapixels; the service accepts up to 40 megapixels",
        ),
        (
            lambda d: _png_header(d / "big.png", 8000, 6000),
            r"8000×6000 = 48\.0 megapixels; the service accepts up to 16 megapixels for PNG",
        ),
        (
            lambda d: _png_header(d / "mid.png", 5000, 4000),
            r"20\.0 megapixels; the service accepts up to 16 megapixels for PNG",
        ),
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

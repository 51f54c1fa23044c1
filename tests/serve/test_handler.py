"""The TorchServe handler in-process (no Java): every response field, the JSON schema, boxes inside
the image, the tabby's chain, this image's neurons, ablation through the network (equal to a plain
forward hook) and in the probes only, the reverse direction, image formats, batching, a corpus of
malformed requests (each a 4xx with a message, the next valid request still served), and a bad bank.

The bank is ``model_store/hint-bank`` (committed; CI has it) or ``$HINT_BANK``.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import math
import re
import struct
import zlib

import jsonschema
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from support.handler import (
    BANK,
    REPO,
    SCHEMA,
    FakeContext,
    archive_dir,
    assert_same_answer,
    call,
    encode,
    hint_handler,
    jpeg,
    one,
    shared_handler,
)

from hint.hierarchy import Hierarchy

#: the bank's served presence rule (manifest presence.model; None: the rule before it)
RULE = json.loads((BANK / "manifest.json").read_text()).get("presence", {}).get("model")

MAMMAL, ANIMAL, DOMESTIC_CAT = "n01861778", "n00015388", "n02121808"
bare_handler = importlib.import_module("bare_handler")


@pytest.fixture(scope="module")
def served():
    return shared_handler()


@pytest.fixture(scope="module")
def tabby() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea())  # 451 x 300, a tabby cat


@pytest.fixture(scope="module")
def tabby_jpeg(tabby) -> bytes:
    return jpeg(tabby)


@pytest.fixture(scope="module")
def tabby_result(served, tabby_jpeg) -> dict:
    code, doc = one(served, {"body": bytearray(tabby_jpeg)})
    assert code == 200, doc
    return doc


def check_explanation(doc: dict, width: int, height: int, bank_concepts: list[dict], top_k: int = 5):
    """Every field of an explanation, boxes inside the image."""
    jsonschema.validate(doc, {"$ref": "#/$defs/explanation", "$defs": SCHEMA["$defs"]})
    h = Hierarchy.load()
    assert doc["image"] == {"width": width, "height": height}
    pred = doc["prediction"]
    assert len(pred) == 5
    probs = [p["probability"] for p in pred]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    for p in pred:
        assert h.classes[p["index"]] == p["wnid"] and h.class_names[p["index"]] == p["name"]
    chain = doc["chain"]
    assert chain[0]["wnid"] == pred[0]["wnid"]
    assert [c["wnid"] for c in chain] == h.path(pred[0]["wnid"])[: len(chain)]
    top = min(bank_concepts, key=lambda c: (h[c["wnid"]].depth, c["wnid"]))["wnid"]
    assert chain[-1]["wnid"] == top, "the chain stops at the bank's most general concept"
    ps = [c["probability"] for c in chain]
    assert all(a <= b + 1e-5 for a, b in zip(ps, ps[1:], strict=False)), "ancestors hold more probability"
    in_bank = {c["wnid"] for c in bank_concepts} | {a for c in bank_concepts for a in c.get("aliases", [])}
    for level in chain:
        assert ("score" in level) == (level["wnid"] in in_bank)
    # maps on the localisation head's grid (14x14 for the default bank), the head named in the answer
    head = json.loads((BANK / "manifest.json").read_text()).get("localisation")
    assert doc["map_size"] == (head["grid"] if head else [7, 7])
    assert (doc.get("localisation") or {}).get("layers") == (head["layers"] if head else None)
    by_wnid = {c["wnid"]: c for c in bank_concepts}
    top5 = {p["wnid"]: p["probability"] for p in pred}
    for c in doc["concepts"]:
        assert c["wnid"] in by_wnid and c["name"] == h[c["wnid"]].name and c["depth"] == h[c["wnid"]].depth
        assert c["path"][0] == c["name"] and c["path"][-1] == "entity"
        bc = by_wnid[c["wnid"]]
        assert c["reliable"] == bc["reliable"] and c["threshold"] == pytest.approx(bc["threshold"], abs=1e-5)
        assert c["probe_present"] == (c["score"] >= bc["threshold"])
        # the model's summed softmax: at least what the top-5 classes under the concept hold
        under = sum(p for w, p in top5.items() if h[w].index in h[c["wnid"]].leaves)
        assert c["model_probability"] >= under - 1e-4
        # the served rule (docs/concepts.md), and a box exactly when present
        if (
            RULE is not None
        ):  # the bank's fitted rule; answers' rounded inputs decide all but a hair's breadth
            p, sc = (min(max(v, 1e-6), 1 - 1e-6) for v in (c["model_probability"], c["score"]))
            z = (
                RULE["coef"][0] * math.log(p / (1 - p))
                + RULE["coef"][1] * math.log(sc / (1 - sc))
                + RULE["intercept"]
            )
            if abs(z - RULE["cut"]) > 1e-3:
                assert c["present"] == (z >= RULE["cut"]), (c["name"], c["score"], c["model_probability"], z)
        else:
            want = (
                bc["reliable"] and c["model_probability"] >= 0.5 and c["score"] >= bc["veto_threshold"] - 1e-6
            )
            assert c["present"] == want, (c["name"], c["score"], c["model_probability"], bc["veto_threshold"])
        if c["present"]:
            x0, y0, x1, y1 = c["box"]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (c["name"], c["box"], width, height)
            assert c["area_fraction"] > 0
        else:
            assert c["box"] is None and c["area_fraction"] == 0
        assert 0 <= c["area_fraction"] <= 1
        assert len(c["neurons"]) == top_k
        sh = [n["shapley"] for n in c["neurons"]]
        assert sh == sorted(sh, reverse=True)
        assert len({n["neuron"] for n in c["neurons"]}) == top_k
        check_image_neurons(c, doc, top_k)


def check_image_neurons(c: dict, doc: dict, top_k: int) -> None:
    """This image's neurons: top_k by the signed value, ranked over all D, with the other ranks."""
    if "image_shapley" not in doc:
        assert "image_neurons" not in c and "region_cells" not in c
        return
    own = c["image_neurons"]
    assert len(own) == top_k and 1 <= c["region_cells"] <= 49
    assert [n["signed_rank"] for n in own] == sorted(n["signed_rank"] for n in own)
    assert [n["signed"] for n in own] == sorted((n["signed"] for n in own), reverse=True)
    for i, n in enumerate(own):
        assert n["signed_rank"] <= i + 1, "ranked over all neurons: the i-th listed has rank at most i"
        assert abs(n["signed"]) <= n["shapley"] + 1e-6, "|mean| <= mean of |.|"
        assert 1 <= n["global_rank"] <= 320 and 1 <= n["signed_rank"] <= 320
    if own and doc["image_shapley"]["region"] == "concept_map" and "map" in c and "localisation" not in doc:
        m = np.asarray(c["map"])
        assert c["region_cells"] == int((m >= doc["threshold"] * m.max() - 1e-4).sum())


# ------------------------------------------------------------------------------------------ explain


def test_schema_is_valid():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_raw_jpeg_every_field(served, tabby_result):
    h, _ = served
    bank = h.explainer.bank
    check_explanation(tabby_result, 451, 300, bank.concepts)
    # by default: the bank's concepts on the predicted class's path and every present one, most general first
    hier = Hierarchy.load()
    path = set(hier.path(tabby_result["prediction"][0]["wnid"]))
    listed = [c["wnid"] for c in tabby_result["concepts"]]
    assert set(listed) == {
        c["wnid"] for c in bank.concepts if c["wnid"] in path or set(c["aliases"]) & path
    } | {c["wnid"] for c in tabby_result["concepts"] if c["present"]}
    assert [hier[w].depth for w in listed] == sorted(hier[w].depth for w in listed)
    assert all("map" not in c for c in tabby_result["concepts"])
    assert tabby_result["threshold"] == 0.5
    m = tabby_result["model"]
    assert m["bank_id"] == bank.id and m["bank_sha256"] == bank.sha256
    assert (m["backbone"], m["layer"]) == (bank.meta["backbone"], bank.meta["layer"])
    assert m["ablated"] == []


def test_tabby_chain_reaches_mammal_and_animal(tabby_result):
    h = Hierarchy.load()
    assert h.is_ancestor(DOMESTIC_CAT, tabby_result["prediction"][0]["wnid"]), tabby_result["prediction"][0]
    levels = {c["wnid"]: c for c in tabby_result["chain"]}
    for wnid in (MAMMAL, ANIMAL):
        assert wnid in levels
        assert levels[wnid]["probability"] > 0.9
        assert levels[wnid]["score"] > 0.8, levels[wnid]
    concepts = {c["wnid"]: c for c in tabby_result["concepts"]}
    assert concepts[MAMMAL]["present"] and concepts[MAMMAL]["box"] is not None


def test_json_base64_with_options(served, tabby_jpeg):
    b64 = base64.b64encode(tabby_jpeg).decode()
    req = {
        "image": "data:image/jpeg;base64," + b64,
        "concepts": ["mammal", ANIMAL],
        "top_k": 2,
        "threshold": 0.9,
        "return_maps": True,
    }
    code, doc = one(served, {"body": req})
    assert code == 200, doc
    bank = served[0].explainer.bank
    check_explanation(doc, 451, 300, bank.concepts, top_k=2)
    assert [c["wnid"] for c in doc["concepts"]] == [MAMMAL, ANIMAL]
    assert doc["threshold"] == 0.9
    # the score and the neurons' region come from the bank layer's 7x7 map; the returned map is the head's
    ex = served[0].explainer
    _, maps, _ = ex.forward([Image.open(io.BytesIO(tabby_jpeg)).convert("RGB")])
    for c in doc["concepts"]:
        m = np.asarray(c["map"])
        assert m.shape == tuple(doc["map_size"]) and 0 <= m.min() and m.max() <= 1
        m7 = maps[0, bank.index(c["wnid"])].numpy()
        assert abs(np.sort(m7.ravel())[-2:].mean() - c["score"]) < 1e-3  # the top 5 % (2 of 49 cells)
        assert c["region_cells"] == int((m7 >= 0.9 * m7.max() - 1e-4).sum())


def test_same_answer_raw_multipart_and_json(served, tabby_jpeg, tabby_result):
    b64 = base64.b64encode(tabby_jpeg).decode()
    rows = [
        {"data": tabby_jpeg},
        {"file": bytearray(tabby_jpeg)},
        {"image": tabby_jpeg},
        {"photo": tabby_jpeg},
        {"body": json.dumps({"image": b64}).encode()},
        {"body": bytearray(json.dumps({"image": b64}).encode())},
        {"body": {"image": b64}},
    ]
    for code, doc in call(served, *rows):
        assert code == 200
        assert_same_answer(doc, tabby_result)


def test_multipart_text_options(served, tabby_jpeg):
    code, doc = one(
        served,
        {
            "data": tabby_jpeg,
            "top_k": b"3",
            "concepts": b"mammal, bird",
            "threshold": b"0.3",
            "return_maps": b"false",
            "ablate": b"1,2",
        },
    )
    assert code == 200, doc
    assert [c["name"] for c in doc["concepts"]] == ["mammal", "bird"]
    assert len(doc["concepts"][0]["neurons"]) == 3 and doc["threshold"] == 0.3
    assert doc["model"]["ablated"] == [1, 2]


def test_ablating_top_neurons_acts_through_the_network(served, tabby_jpeg):
    b64 = base64.b64encode(tabby_jpeg).decode()
    code, base = one(
        served, {"body": {"image": b64, "concepts": ["mammal"], "top_k": 40, "return_maps": True}}
    )
    assert code == 200
    before = base["concepts"][0]
    top = [n["neuron"] for n in before["neurons"] if n["shapley"] > 0]
    assert top
    code, abl = one(
        served, {"body": {"image": b64, "concepts": ["mammal"], "ablate": top + top[:1], "return_maps": True}}
    )
    assert code == 200
    after, block = abl["concepts"][0], abl["ablation"]
    assert after["score"] < before["score"] - 0.01, (before["score"], after["score"])
    assert abl["model"]["ablated"] == sorted(set(top)) == block["neurons"] and block["mode"] == "network"
    # the class head sees the ablated layer: the predicted class loses probability
    cls = block["class"]
    assert cls["index"] == base["prediction"][0]["index"]
    assert cls["probability_before"] == pytest.approx(base["prediction"][0]["probability"], abs=1e-4)
    assert cls["probability_after"] < cls["probability_before"] - 0.01
    assert cls["change"] == pytest.approx(cls["probability_after"] - cls["probability_before"], abs=2e-6)
    after_p = {p["index"]: p["probability"] for p in abl["prediction"]}
    if cls["index"] in after_p:
        assert after_p[cls["index"]] == pytest.approx(cls["probability_after"], abs=1e-5)
    # before = the unablated answer
    assert_same_answer(block["before"]["prediction"], base["prediction"])
    b0 = block["before"]["concepts"][0]
    assert (b0["wnid"], b0["score"], b0["present"]) == (before["wnid"], before["score"], before["present"])
    assert np.allclose(b0["map"], before["map"], atol=2e-4)
    # the ablation acts at the bank's layer: its score moves; the maps move only where they are the bank
    # layer's (a localisation head's layers come before it, so its maps stay)
    assert after["score"] < before["score"] - 0.01
    head = json.loads((BANK / "manifest.json").read_text()).get("localisation")
    assert np.allclose(after["map"], before["map"], atol=1e-3) == bool(head)
    # ablated channels contribute nothing on this image any more
    assert not {n["neuron"] for n in after["image_neurons"] if n["shapley"] > 0} & set(top)
    # the old probe-only edit: maps change, the class prediction does not
    code, probe = one(
        served, {"body": {"image": b64, "concepts": ["mammal"], "ablate": top, "ablate_probe_only": True}}
    )
    assert code == 200 and probe["ablation"]["mode"] == "probe"
    assert probe["prediction"] == probe["ablation"]["before"]["prediction"]
    assert probe["ablation"]["class"]["change"] == 0
    assert probe["concepts"][0]["score"] < before["score"] - 0.01


def test_network_ablation_equals_a_plain_forward_hook(served, tabby):
    """ablate = the hooked layer's channel set to the bank's baseline by a forward hook, and the
    network continues: the logits equal those of a plain hook doing exactly that."""
    ex = served[0].explainer
    x = ex.backbone.preprocess([tabby, tabby.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    channel = int(ex.bank.top_neurons(MAMMAL, 1)[0][0])
    probs, maps, z = ex.forward_tensor(x, edits=[[channel], [channel, 7]])
    ours = ex.logits.clone()

    def plain(module, inputs, output):
        out = output.clone()
        out[0, channel] = ex.baseline[channel]
        out[1, [channel, 7]] = ex.baseline[[channel, 7]].view(-1, 1, 1)
        return out

    handle = ex.backbone.layer_module().register_forward_hook(plain)
    try:
        with torch.no_grad():
            theirs = ex.model(x).float()
    finally:
        handle.remove()
    assert torch.equal(ours, theirs)
    assert torch.equal(probs, torch.softmax(theirs, 1))
    assert torch.all(z[0, channel] == ex.baseline[channel]) and torch.all(z[1, 7] == ex.baseline[7])
    clean = ex.forward_tensor(x)[0]
    assert not torch.equal(clean, probs), "the ablation changed the prediction"
    assert (clean - ex.forward_tensor(x, edits=[None, None])[0]).abs().max() == 0


def test_image_neurons_options_and_regions(served, tabby_jpeg):
    b64 = base64.b64encode(tabby_jpeg).decode()
    req = {"image": b64, "concepts": ["mammal", "feline"], "top_k": 320, "return_maps": True}
    code, full = one(served, {"body": req})
    assert code == 200 and full["image_shapley"] == {
        "game": "logit",
        "method": "exact",
        "region": "concept_map",
    }
    ex = served[0].explainer
    for c in full["concepts"]:
        assert sorted(n["neuron"] for n in c["image_neurons"]) == list(range(320)), "every neuron ranked"
        assert sorted(n["global_rank"] for n in c["image_neurons"])[0] == 1
        # the probe-logit game's exact values: probe weight x mean (activation - baseline) over the region
        r = ex.bank.index(c["wnid"])
        for n in c["image_neurons"][:20]:
            want = float(ex.weight[r, n["neuron"]]) * (n["activation"] - float(ex.baseline[n["neuron"]]))
            assert n["signed"] == pytest.approx(want, abs=2e-4 * abs(float(ex.weight[r, n["neuron"]])) + 2e-6)
    # exact: the seed changes nothing
    code, again = one(served, {"body": {**req, "seed": 5}})
    assert again["concepts"][0]["image_neurons"] == full["concepts"][0]["image_neurons"]
    # permutations: the probability game's Monte-Carlo estimate; another seed or M, other noise
    code, mc = one(served, {"body": {**req, "permutations": 8}})
    assert mc["image_shapley"] == {
        "game": "probability",
        "method": "monte_carlo",
        "permutations": 8,
        "seed": 0,
        "region": "concept_map",
    }
    code, other = one(served, {"body": {**req, "seed": 5, "permutations": 32}})
    assert other["image_shapley"] == {
        "game": "probability",
        "method": "monte_carlo",
        "permutations": 32,
        "seed": 5,
        "region": "concept_map",
    }
    assert other["concepts"][0]["image_neurons"] != mc["concepts"][0]["image_neurons"]
    assert mc["concepts"][0]["image_neurons"] != full["concepts"][0]["image_neurons"]
    # off: the old answer, without the new fields
    code, off = one(served, {"body": {**req, "image_neurons": False}})
    assert "image_shapley" not in off and all("image_neurons" not in c for c in off["concepts"])
    # the step-1 responsible region, as a map, shared by every concept
    code, reg = one(served, {"body": {**req, "regions": True, "top_k": 3}})
    assert code == 200 and reg["image_shapley"]["region"] == "responsible"
    r = reg["responsible"]
    assert r["class"]["index"] == reg["prediction"][0]["index"] and r["method"] == "guided"
    m = np.asarray(r["map"])
    assert m.shape == (7, 7) and m.min() >= 0 and m.max() == 1 and r["cells"] == int((m > 0.5).sum())
    assert all(c["region_cells"] == r["cells"] for c in reg["concepts"])
    # multipart text forms
    code, mp = one(
        served,
        {
            "data": tabby_jpeg,
            "concepts": b"mammal",
            "permutations": b"12",
            "seed": b"3",
            "image_neurons": b"true",
            "regions": b"false",
            "ablate_probe_only": b"false",
        },
    )
    assert code == 200 and mp["image_shapley"] == {
        "game": "probability",
        "method": "monte_carlo",
        "permutations": 12,
        "seed": 3,
        "region": "concept_map",
    }


def test_neuron_reverse_lookup(served, tabby_result):
    h, _ = served
    bank = h.explainer.bank
    mammal = next(c for c in tabby_result["concepts"] if c["wnid"] == MAMMAL)
    n = mammal["neurons"][0]["neuron"]
    code, doc = one(served, {"body": {"neuron": n}})
    assert code == 200
    jsonschema.validate(doc, {"$ref": "#/$defs/neuron", "$defs": SCHEMA["$defs"]})
    assert doc["neuron"] == n and len(doc["concepts"]) == len(bank.concepts)
    assert [c["wnid"] for c in doc["concepts"]] == [w for w, _ in bank.neuron_concepts(n)]
    sh = [c["shapley"] for c in doc["concepts"]]
    assert sh == sorted(sh, reverse=True)
    entry = next(c for c in doc["concepts"] if c["wnid"] == MAMMAL)
    assert entry["rank_in_concept"] == 1 and entry["shapley"] == mammal["neurons"][0]["shapley"]
    # the multipart text form too
    code, doc2 = one(served, {"neuron": b"%d" % n})
    assert code == 200 and doc2 == doc


def test_neuron_answer_has_its_label_and_exemplars_within_200_kb(served):
    h, _ = served
    bank = h.explainer.bank
    ex = bank.exemplars
    assert ex is not None and ex.neurons == 320 and ex.k >= 9, (
        "the default bank carries exemplars for every neuron"
    )
    n = 45
    code, doc = one(served, {"body": {"neuron": n}})
    assert code == 200
    label, got = doc["label"], doc["exemplars"]
    row = int(bank.phi[:, n].argmax())
    assert label["wnid"] == bank.wnids[row] and label["shapley"] == pytest.approx(
        float(bank.phi[row, n]), abs=1e-6
    )
    assert label["shapley"] == doc["concepts"][0]["shapley"]
    assert 0 <= label["iou"] <= label["best_iou"]["iou"] <= 1
    assert got["available"] and got["k"] == len(got["patches"]) == ex.k and got["format"] == "jpeg"
    acts = [p["activation"] for p in got["patches"]]
    assert acts == sorted(acts, reverse=True) and [p["rank"] for p in got["patches"]] == list(
        range(1, ex.k + 1)
    )
    size = got["size"]
    for p in got["patches"]:
        im = Image.open(io.BytesIO(base64.b64decode(p["thumbnail"])))
        assert im.format == "JPEG" and im.size == (size, size)
        x0, y0, x1, y1 = p["box"]
        assert 0 <= x0 < x1 and 0 <= y0 < y1 and p["image"].endswith(".JPEG")
    # every neuron's answer (as the handler writes it) stays within 200 kB
    sizes = [
        len(json.dumps(h.explainer.neuron(d), separators=(",", ":"))) for d in range(bank.weight.shape[1])
    ]
    assert max(sizes) <= 200_000, max(sizes)


def test_neuron_answer_of_a_bank_without_exemplars_says_so(tmp_path):
    from hint.exemplars import FILE

    model_dir = archive_dir(tmp_path / "m")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    del manifest["files"][FILE], manifest["exemplars"]
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    (model_dir / FILE).unlink()
    h = hint_handler.HintHandler()
    h.initialize(FakeContext(model_dir, {"handler": {"torch_threads": 1}}))
    code, doc = one((h, h.context), {"body": {"neuron": 45}})
    assert (
        code == 200
        and doc["exemplars"]["available"] is False
        and "no exemplars" in doc["exemplars"]["reason"]
    )
    assert doc["label"]["iou"] is None and doc["label"]["wnid"] == doc["concepts"][0]["wnid"]


# ------------------------------------------------------------------------------------------ formats


def _formats(tabby: Image.Image) -> dict[str, tuple[bytes, tuple[int, int]]]:
    small = tabby.resize((160, 120))
    w, h = small.size
    gray16 = Image.fromarray(np.asarray(small.convert("L"), dtype=np.uint16) * 257)
    rgba = small.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(small.size))
    frames = [small.convert("P"), small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    pal = small.convert("P")
    pal.info["transparency"] = 0
    return {
        "jpeg": (jpeg(small), (w, h)),
        "png": (encode(small, "PNG"), (w, h)),
        "png gray": (encode(small.convert("L"), "PNG"), (w, h)),
        "png 16-bit": (encode(gray16, "PNG"), (w, h)),
        "png rgba": (encode(rgba, "PNG"), (w, h)),
        "png palette transparency": (encode(pal, "PNG"), (w, h)),
        "png 1-bit": (encode(small.convert("1"), "PNG"), (w, h)),
        "webp": (encode(small, "WEBP", quality=80), (w, h)),
        "bmp": (encode(small, "BMP"), (w, h)),
        "gif animated": (gif.getvalue(), (w, h)),
        "tiff": (encode(small, "TIFF"), (w, h)),
        "jpeg cmyk": (encode(small.convert("CMYK"), "JPEG"), (w, h)),
        "jpeg exif rotated": (jpeg(small, exif=exif), (h, w)),
    }


def test_image_formats_and_modes(served, tabby):
    cases = _formats(tabby)
    results = call(served, *({"body": data} for data, _ in cases.values()))
    bank = served[0].explainer.bank
    for (name, (_, (w, h))), (code, doc) in zip(cases.items(), results, strict=True):
        assert code == 200, (name, doc)
        check_explanation(doc, w, h, bank.concepts)


def test_gif_first_frame_is_explained(served, tabby):
    small = tabby.resize((160, 120))
    first, second = small.convert("P"), Image.new("P", small.size, 0)
    buf = io.BytesIO()
    first.save(buf, "GIF", save_all=True, append_images=[second], duration=100)
    (c1, anim), (c2, still) = call(served, {"body": buf.getvalue()}, {"body": encode(first, "GIF")})
    assert c1 == c2 == 200
    assert anim["prediction"][0]["wnid"] == still["prediction"][0]["wnid"]


def test_batch_is_one_forward_and_answers_each_request(served, tabby_jpeg, tabby_result, monkeypatch):
    h, _ = served
    calls = []
    forward = h.explainer.forward_tensor
    monkeypatch.setattr(
        h.explainer, "forward_tensor", lambda x, *a, **k: calls.append(len(x)) or forward(x, *a, **k)
    )
    rows = [
        {"body": tabby_jpeg},
        {"body": b"not an image"},
        {"body": {"image": base64.b64encode(tabby_jpeg).decode(), "ablate": [3]}},
        {"body": {"neuron": 3}},
        {"body": b""},
        {"data": tabby_jpeg, "top_k": b"1"},
    ]
    res = call(served, *rows)
    assert [c for c, _ in res] == [200, 400, 200, 200, 400, 200]
    assert calls == [4], "the three valid images and the ablated copy of one share one forward pass"
    for i in (0, 2, 5):
        doc = res[i][1]
        pred = doc["ablation"]["before"]["prediction"] if i == 2 else doc["prediction"]  # 2: unablated side
        assert pred[0]["wnid"] == tabby_result["prediction"][0]["wnid"]
        assert abs(pred[0]["probability"] - tabby_result["prediction"][0]["probability"]) < 1e-4
    assert res[2][1]["model"]["ablated"] == [3] and res[0][1]["model"]["ablated"] == []
    assert len(res[5][1]["concepts"][0]["neurons"]) == 1


# ------------------------------------------------------------------------------------------ malformed


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_header_only(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A tiny PNG file that claims width x height pixels (a decompression bomb when large)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = _png_chunk(b"IHDR", ihdr)
    body += _png_chunk(b"IDAT", idat if idat is not None else zlib.compress(b"\0" * 1024))
    return b"\x89PNG\r\n\x1a\n" + body + _png_chunk(b"IEND", b"")


def gif_header(width: int, height: int) -> bytes:
    return (
        b"GIF89a"
        + struct.pack("<HH", width, height)
        + b"\x00\x00\x00"
        + b"\x2c"
        + struct.pack("<HHHH", 0, 0, width, height)
        + b"\x00\x02\x02\x44\x01\x00\x3b"
    )


def bmp_header(width: int, height: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54 + 16, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 16, 2835, 2835, 0, 0)
    return header + info + b"\0" * 16


def malformed_corpus(tabby: Image.Image) -> list[tuple[str, dict, int | None]]:
    """(name, TorchServe row, expected status or None for any 4xx)."""
    rng = np.random.default_rng(7)
    small = tabby.resize((160, 120))
    good_jpeg, good_png = jpeg(small), encode(small, "PNG")
    webp, gif, bmp, tif = (encode(small, f) for f in ("WEBP", "GIF", "BMP", "TIFF"))
    b64 = base64.b64encode(good_jpeg).decode()
    bad_crc = bytearray(good_png)
    bad_crc[40] ^= 0xFF
    cases: list[tuple[str, dict, int | None]] = [
        ("empty body", {"body": b""}, 400),
        ("empty bytearray", {"body": bytearray()}, 400),
        ("blank body", {"body": b"  \n\t "}, 400),
        ("no parts at all", {}, 400),
        ("empty text", {"body": ""}, 400),
        ("text body", {"body": b"hello world"}, 400),
        ("text/plain decoded", {"body": "hello world"}, 400),
        ("html", {"body": b"<!doctype html><html><body>hi</body></html>"}, 400),
        ("svg", {"body": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'}, 400),
        ("pdf header", {"body": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"}, 400),
        ("gif magic only", {"body": b"GIF89a"}, 400),
        ("png magic only", {"body": b"\x89PNG\r\n\x1a\n"}, 400),
        ("jpeg magic only", {"body": b"\xff\xd8\xff\xe0"}, 400),
        ("ico (unsupported format)", {"body": encode(small.resize((32, 32)), "ICO")}, 400),
        ("truncated jpeg 50%", {"body": good_jpeg[: len(good_jpeg) // 2]}, 400),
        ("truncated jpeg 10%", {"body": good_jpeg[: len(good_jpeg) // 10]}, 400),
        ("truncated jpeg 300 bytes", {"body": good_jpeg[:300]}, 400),
        ("truncated png 50%", {"body": good_png[: len(good_png) // 2]}, 400),
        ("truncated png after IHDR", {"body": good_png[:33]}, 400),
        ("png bad crc", {"body": bytes(bad_crc)}, 400),
        ("truncated webp", {"body": webp[: len(webp) // 2]}, 400),
        ("truncated gif", {"body": gif[: len(gif) // 3]}, 400),
        ("truncated bmp", {"body": bmp[: len(bmp) // 2]}, 400),
        ("truncated tiff", {"body": tif[: len(tif) // 3]}, 400),
        ("png bomb 50000x50000 in a tiny file", {"body": png_header_only(50000, 50000)}, 413),
        ("png 7000x6000 (42 MP) in a tiny file", {"body": png_header_only(7000, 6000)}, 413),
        ("png 100000x100000", {"body": png_header_only(100000, 100000)}, 413),
        ("gif 65535x65535 header", {"body": gif_header(65535, 65535)}, 413),
        ("bmp 60000x60000 header", {"body": bmp_header(60000, 60000)}, None),
        ("png zero width", {"body": png_header_only(0, 10)}, 400),
        ("png zero height", {"body": png_header_only(10, 0)}, 400),
        ("png no pixel data", {"body": png_header_only(4, 4, idat=b"")}, 400),
        ("too many bytes", {"body": b"\xff\xd8" + b"\0" * 20_000_001}, 413),
        ("bad json", {"body": b'{"image": '}, 400),
        ("bad json braces", {"body": b"{not json}"}, 400),
        ("bad json array", {"body": b"[1, 2"}, 400),
        ("bad json text", {"body": '{"image": "abc",}'}, 400),
        ("json list", {"body": [1, 2]}, 400),
        ("json number", {"body": 5}, 400),
        ("json null", {"body": None}, 400),
        ("json string", {"body": b'"just a string"'}, 400),
        ("json empty object", {"body": {}}, 400),
        ("json without image", {"body": {"top_k": 3}}, 400),
        ("base64 garbage", {"body": {"image": "!!!not base64!!!"}}, 400),
        ("base64 empty", {"body": {"image": ""}}, 400),
        ("base64 of text", {"body": {"image": base64.b64encode(b"hello").decode()}}, 400),
        ("base64 of random bytes", {"body": {"image": base64.b64encode(rng.bytes(500)).decode()}}, 400),
        ("base64 truncated jpeg", {"body": {"image": b64[: len(b64) // 2]}}, 400),
        ("image is a number", {"body": {"image": 123}}, 400),
        ("image is null", {"body": {"image": None}}, 400),
        ("image is a list", {"body": {"image": [b64]}}, 400),
        ("unknown option", {"body": {"image": b64, "colour": "red"}}, 400),
        ("unknown option typo", {"body": {"image": b64, "topk": 3}}, 400),
        ("top_k float", {"body": {"image": b64, "top_k": 2.5}}, 400),
        ("top_k string", {"body": {"image": b64, "top_k": "5"}}, 400),
        ("top_k negative", {"body": {"image": b64, "top_k": -1}}, 400),
        ("top_k huge", {"body": {"image": b64, "top_k": 10**6}}, 400),
        ("top_k bool", {"body": {"image": b64, "top_k": True}}, 400),
        ("threshold string", {"body": {"image": b64, "threshold": "0.5"}}, 400),
        ("threshold above 1", {"body": {"image": b64, "threshold": 1.5}}, 400),
        ("threshold negative", {"body": {"image": b64, "threshold": -0.1}}, 400),
        ("threshold nan", {"body": b'{"image": "%s", "threshold": NaN}' % b64.encode()}, 400),
        ("threshold list", {"body": {"image": b64, "threshold": [0.5]}}, 400),
        ("return_maps string", {"body": {"image": b64, "return_maps": "yes"}}, 400),
        ("return_maps int", {"body": {"image": b64, "return_maps": 1}}, 400),
        ("ablate negative", {"body": {"image": b64, "ablate": [-1]}}, 400),
        ("ablate out of range", {"body": {"image": b64, "ablate": [100000]}}, 400),
        ("ablate string", {"body": {"image": b64, "ablate": "1,2"}}, 400),
        ("ablate floats", {"body": {"image": b64, "ablate": [1.5]}}, 400),
        ("ablate bools", {"body": {"image": b64, "ablate": [True]}}, 400),
        ("ablate int", {"body": {"image": b64, "ablate": 5}}, 400),
        ("ablate nested", {"body": {"image": b64, "ablate": [[1]]}}, 400),
        ("ablate null", {"body": {"image": b64, "ablate": None}}, 400),
        ("ablate_probe_only int", {"body": {"image": b64, "ablate_probe_only": 1}}, 400),
        ("ablate_mode unknown option", {"body": {"image": b64, "ablate_mode": "network"}}, 400),
        ("image_neurons string", {"body": {"image": b64, "image_neurons": "yes"}}, 400),
        ("permutations zero", {"body": {"image": b64, "permutations": 0}}, 400),
        ("permutations too many", {"body": {"image": b64, "permutations": 100000}}, 400),
        ("permutations float", {"body": {"image": b64, "permutations": 16.0}}, 400),
        ("seed negative", {"body": {"image": b64, "seed": -1}}, 400),
        ("seed too large", {"body": {"image": b64, "seed": 2**40}}, 400),
        ("regions string", {"body": {"image": b64, "regions": "true"}}, 400),
        ("multipart permutations text", {"data": good_jpeg, "permutations": b"many"}, 400),
        ("concepts string", {"body": {"image": b64, "concepts": "dog"}}, 400),
        ("concepts empty", {"body": {"image": b64, "concepts": []}}, 400),
        ("concepts blank name", {"body": {"image": b64, "concepts": [""]}}, 400),
        ("concepts number", {"body": {"image": b64, "concepts": [5]}}, 400),
        ("concepts null entry", {"body": {"image": b64, "concepts": [None]}}, 400),
        ("unknown concept", {"body": {"image": b64, "concepts": ["flying spaghetti monster"]}}, 400),
        ("unknown wnid", {"body": {"image": b64, "concepts": ["n99999999"]}}, 400),
        ("concept not in the bank", {"body": {"image": b64, "concepts": ["tabby"]}}, 400),
        ("neuron negative", {"body": {"neuron": -1}}, 400),
        ("neuron out of range", {"body": {"neuron": 10**9}}, 400),
        ("neuron string", {"body": {"neuron": "3"}}, 400),
        ("neuron float", {"body": {"neuron": 3.0}}, 400),
        ("neuron bool", {"body": {"neuron": True}}, 400),
        ("neuron with image", {"body": {"neuron": 3, "image": b64}}, 400),
        ("neuron with options", {"body": {"neuron": 3, "top_k": 2}}, 400),
        ("two image parts", {"data": good_jpeg, "file": good_jpeg}, 400),
        ("image part plus unknown field", {"data": good_jpeg, "colour": b"red"}, 400),
        ("multipart top_k text", {"data": good_jpeg, "top_k": b"abc"}, 400),
        ("multipart threshold text", {"data": good_jpeg, "threshold": b"half"}, 400),
        ("multipart return_maps text", {"data": good_jpeg, "return_maps": b"maybe"}, 400),
        ("multipart option not utf-8", {"data": good_jpeg, "top_k": b"\xff\xfe"}, 400),
        ("multipart ablate text", {"data": good_jpeg, "ablate": b"1,x"}, 400),
        ("multipart unknown concept", {"data": good_jpeg, "concepts": b"nothing-like-this"}, 400),
        ("option given twice", {"body": {"image": b64, "top_k": 2}, "top_k": b"3"}, 400),
    ]
    for k, size in enumerate((1, 16, 1000, 50_000)):
        cases.append((f"random bytes {size}", {"body": rng.bytes(size)}, 400))
        cases.append(
            (f"random bytes after jpeg magic {k}", {"body": b"\xff\xd8\xff\xe0" + rng.bytes(size)}, 400)
        )
    return cases


def test_malformed_corpus_gets_4xx_and_the_next_request_succeeds(served, tabby, tabby_jpeg):
    corpus = malformed_corpus(tabby)
    assert len(corpus) >= 50
    for name, row, expected in corpus:
        (code, doc), (ok, good) = call(served, row, {"body": tabby_jpeg})
        assert 400 <= code < 500, (name, code, doc)
        if expected is not None:
            assert code == expected, (name, code, doc["message"])
        assert doc["message"] and "\n" not in doc["message"] and len(doc["message"]) <= 300, name
        assert ok == 200 and good["prediction"], name
    # and all of them in one batch, with valid requests in between
    rows = [row for _, row, _ in corpus]
    mid = len(rows) // 2
    rows.insert(mid, {"body": tabby_jpeg})
    rows.append({"data": tabby_jpeg})
    codes = [c for c, _ in call(served, *rows)]
    assert codes[mid] == codes[-1] == 200 and codes.count(200) == 2
    assert all(400 <= c < 500 for i, c in enumerate(codes) if i not in (mid, len(rows) - 1))


def test_pixel_limit_is_configurable(tmp_path, tabby):
    ctx = FakeContext(archive_dir(tmp_path / "m"), {"handler": {"max_pixels": 10_000, "torch_threads": 1}})
    h = hint_handler.HintHandler()
    h.initialize(ctx)
    out = h.handle([{"body": jpeg(tabby)}, {"body": jpeg(tabby.resize((100, 90)))}], ctx)
    assert ctx.status[0][0] == 413 and "pixel limit" in json.loads(out[0])["message"]
    assert 1 not in ctx.status


def test_handle_none_and_odd_rows(served):
    h, ctx = served
    assert h.handle(None, ctx) == []
    ctx.reset()
    out = h.handle(["just a string", 42], ctx)
    assert len(out) == 2 and ctx.status[0][0] == 400 and ctx.status[1][0] == 400


# ------------------------------------------------------------------------------------------ start-up


@pytest.mark.parametrize(
    "damage, words",
    [
        ("flip a byte of bank.safetensors", "sha256 mismatch"),
        ("delete manifest.json", "not a concept bank"),
        ("delete bank.safetensors", "missing file"),
        ("truncate manifest.json", "corrupt manifest"),
        ("unknown handler option", "unknown handler option"),
    ],
)
def test_bad_bank_fails_the_start_with_one_line(tmp_path, damage, words, caplog):
    model_dir = archive_dir(tmp_path / "m")
    cfg: dict = {"handler": {"torch_threads": 1}}
    if damage.startswith("flip"):
        data = bytearray((model_dir / "bank.safetensors").read_bytes())
        data[-1] ^= 0x01
        (model_dir / "bank.safetensors").write_bytes(bytes(data))
    elif damage == "delete manifest.json":
        (model_dir / "manifest.json").unlink()
    elif damage == "delete bank.safetensors":
        (model_dir / "bank.safetensors").unlink()
    elif damage.startswith("truncate"):
        (model_dir / "manifest.json").write_text((model_dir / "manifest.json").read_text()[:100])
    else:
        cfg["handler"]["colour"] = "red"
    h = hint_handler.HintHandler()
    with pytest.raises(RuntimeError) as err:
        h.initialize(FakeContext(model_dir, cfg))
    msg = str(err.value)
    assert msg.startswith("HINT handler cannot start: ") and words in msg and "\n" not in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert any(words in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


def test_module_entry_point_initialises_once(tmp_path, tabby_jpeg, monkeypatch):
    monkeypatch.setattr(hint_handler, "_service", None)
    ctx = FakeContext(archive_dir(tmp_path / "m"), {"handler": {"torch_threads": 1}})
    assert hint_handler.handle(None, ctx) is None  # TorchServe's load call
    service = hint_handler._service
    assert service is not None and service.initialized
    out = hint_handler.handle([{"body": tabby_jpeg}], ctx)
    assert hint_handler._service is service and json.loads(out[0])["prediction"]


# ------------------------------------------------------------------------------------------ bare


def test_bare_handler(tmp_path, tabby_jpeg, tabby_result):
    cfg = yaml.safe_load((REPO / "handlers" / "bare-config.yaml").read_text())
    ctx = FakeContext(tmp_path, cfg)
    h = bare_handler.BareHandler()
    h.initialize(ctx)
    out = h.handle([{"body": tabby_jpeg}, {"body": b"junk"}, {"body": {"image": "x", "top_k": 3}}], ctx)
    doc = json.loads(out[0])
    assert 0 not in ctx.status and ctx.status[1][0] == 400 and ctx.status[2][0] == 400
    assert set(doc) == {"prediction", "image", "model"} and len(doc["prediction"]) == 5
    assert doc["prediction"][0]["wnid"] == tabby_result["prediction"][0]["wnid"]
    assert doc["image"] == {"width": 451, "height": 300}


# ------------------------------------------------------------------------------------------ docs


def test_api_docs_list_every_status_and_no_stale_bank_id():
    """docs/api.md's error table has every status the service sends (the handler's, and TorchServe's
    507 Worker died, 503, 404), and any bank id it shows is the committed bank's."""
    from hint.serve.options import RequestError

    text = (REPO / "docs" / "api.md").read_text()
    table = text[text.index("## Errors") : text.index("## curl")]
    listed = {int(code) for code in re.findall(r"^\| (\d{3}) \|", table, re.M)}
    assert set(RequestError.TYPES) | {200, 404, 503, 507} <= listed, listed
    assert "Worker died." in table
    bank_id = json.loads((BANK / "manifest.json").read_text())["bank_id"]
    assert all(found == bank_id for found in re.findall(r'"bank_id": "([0-9a-f]{12})"', text))

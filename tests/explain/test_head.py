"""The localisation head (hint.head): fused maps from hooked layers, bank files, served boxes and maps,
the served presence rule, and the evaluation's served rows equal to the handler's answers."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import REPO, photo

from hint.backbones import get_backbone
from hint.bank import BankError, ConceptBank
from hint.build import presence
from hint.explain.explainer import SERVING, Explainer
from hint.head import LocalisationHead, box_on_grid, fuse
from hint.hierarchy import Hierarchy
from hint.presence import apply_rule

LAYERS = {"_blocks.14": 192, "_blocks.9": 112}
NAMES = ["whole", "animal", "carnivore", "artifact"]


def _bank(folder: Path, rule: dict | None = None, tau: float = 0.4) -> Path:
    """A bank at _blocks.15 with random probes and a random head at _blocks.14 + _blocks.9."""
    h = Hierarchy.load()
    g = torch.Generator().manual_seed(0)
    e, d = len(NAMES), 320
    concepts = [{"wnid": h.find(n).wnid, "name": n, "path": [n], "f1": 0.5, "threshold": 0.5} for n in NAMES]
    for c in concepts:
        c["parent"] = h.group_parent(c["wnid"], [x["wnid"] for x in concepts])
    head = LocalisationHead(
        list(LAYERS),
        [torch.randn(e, k, generator=g) * 0.1 for k in LAYERS.values()],
        [torch.randn(e, generator=g) for _ in LAYERS],
        grid=[14, 14],
        box_threshold=tau,
    )
    meta = {
        "backbone": "efficientnet_lite0",
        "layer": "_blocks.15",
        "channels": d,
        **({"presence": {"model": rule}} if rule else {}),
    }
    bank = ConceptBank(
        weight=torch.randn(e, d, generator=g) * 0.1,
        bias=torch.zeros(e),
        phi=torch.rand(e, d, generator=g),
        phi_se=torch.zeros(e, d),
        baseline=torch.zeros(d),
        n_permutations=torch.full((e,), 8),
        concepts=concepts,
        meta=meta,
        head=head,
    )
    return bank.save(folder)


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory) -> Path:
    return _bank(tmp_path_factory.mktemp("head") / "bank")


@pytest.fixture(scope="module")
def explainer(bank_dir) -> Explainer:
    return Explainer.from_bank(bank_dir, fast=True)


def test_fuse_is_the_mean_on_the_finest_grid():
    a, b = torch.rand(2, 3, 7, 7), torch.rand(2, 3, 14, 14)
    want = (F.interpolate(a, size=(14, 14), mode="bilinear", align_corners=False) + b) / 2
    assert torch.allclose(fuse([a, b]), want, atol=1e-6)
    assert fuse([b]) is b


def test_head_maps_are_the_classifiers_at_the_hooked_layers(explainer):
    """One forward pass: the served map is mean(σ(αᵀz + b) at each head layer, on the 14×14 grid)."""
    im = photo("chelsea")
    keep = {}
    bb = get_backbone("efficientnet_lite0", "_blocks.15")
    mods = dict(bb.model.named_modules())
    hooks = [
        mods[n].register_forward_hook(lambda _m, _i, o, k=n: keep.__setitem__(k, o.detach())) for n in LAYERS
    ]
    with torch.no_grad():
        bb.model.eval()(bb.preprocess([im]))
    for hd in hooks:
        hd.remove()
    head = explainer.head
    per = [
        torch.sigmoid(torch.einsum("ndhw,ed->nehw", keep[n], w) + b.view(1, -1, 1, 1))
        for n, w, b in zip(LAYERS, head.weight, head.bias, strict=True)
    ]
    want = fuse(per)[0]
    out = explainer.explain([im], concepts="all", return_maps=True, image_neurons=False)[0]
    assert out["map_size"] == [14, 14]
    got = torch.tensor([c["map"] for c in out["concepts"]])
    assert torch.allclose(got, want, atol=1e-4)


def test_boxes_come_from_the_head_map_at_its_threshold(explainer):
    im = photo("chelsea")
    w, h = im.size
    out = explainer.explain([im], concepts="all", return_maps=True, image_neurons=False, all_boxes=True)[0]
    explainer.forward([im])
    maps = explainer.head.maps(explainer.feats)[0].numpy()
    for e, c in enumerate(out["concepts"]):
        assert c["box"] == box_on_grid(maps[e], w, h, 0.4, 224)[0]
    wide = explainer.explain([im], concepts="all", image_neurons=False, all_boxes=True, box_threshold=0.1)[0]
    tight = explainer.explain([im], concepts="all", image_neurons=False, all_boxes=True, box_threshold=0.9)[0]
    for a, b in zip(wide["concepts"], tight["concepts"], strict=True):
        assert a["area_fraction"] > b["area_fraction"] > 0
    plain = explainer.explain([im], concepts="all", image_neurons=False)[0]
    assert all((c["box"] is None) == (not c["present"]) for c in plain["concepts"])


def test_box_on_grid_scales_to_the_image():
    m = np.zeros((14, 14), np.float32)
    m[3:7, 2:5] = 1.0
    box, frac = box_on_grid(m, 448, 448, 0.5)
    small, _ = box_on_grid(m, 448, 448, 0.5, grid=224)
    assert box is not None and 0 < frac < 0.2
    assert all(abs(a - b) <= 2 for a, b in zip(box, small, strict=True))
    assert box_on_grid(np.zeros((14, 14), np.float32), 100, 100, 0.5) == (None, 0.0)


def test_bank_round_trip_and_tampered_or_unlisted_head(bank_dir, tmp_path):
    bank = ConceptBank.load(bank_dir)
    manifest = json.loads((bank_dir / "manifest.json").read_text())
    assert manifest["localisation"]["layers"] == list(LAYERS) and "head.safetensors" in manifest["files"]
    assert bank.head.box_threshold == 0.4 and bank.head.grid == [14, 14]
    copy = tmp_path / "copy"
    shutil.copytree(bank_dir, copy)
    (copy / "MODEL_CARD.md").write_text("card")
    again = ConceptBank.load(bank.save(copy))  # in place: the files the bank does not write stay
    assert (copy / "MODEL_CARD.md").read_text() == "card"
    for a, b in zip(again.head.weight, bank.head.weight, strict=True):
        assert torch.equal(a, b)
    bad = tmp_path / "bad"
    shutil.copytree(bank_dir, bad)
    data = bytearray((bad / "head.safetensors").read_bytes())
    data[-1] ^= 1
    (bad / "head.safetensors").write_bytes(bytes(data))
    with pytest.raises(BankError, match="sha256"):
        ConceptBank.load(bad)
    old = tmp_path / "old"
    old_bank = ConceptBank.load(bank_dir)
    old_bank.head = None
    old_bank.save(old)
    assert ConceptBank.load(old).head is None
    shutil.copy(bank_dir / "head.safetensors", old / "head.safetensors")
    with pytest.raises(BankError, match="not listed"):
        ConceptBank.load(old)


def test_a_bank_without_head_serves_its_own_layer(bank_dir, tmp_path):
    bank = ConceptBank.load(bank_dir)
    bank.head = None
    ex = Explainer.from_bank(bank.save(tmp_path / "nohead"), fast=True)
    out = ex.explain([photo("coffee")], concepts="all", return_maps=True, image_neurons=False)[0]
    assert out["map_size"] == [7, 7] and np.asarray(out["concepts"][0]["map"]).shape == (7, 7)


def test_presence_rule_fit_and_use(tmp_path):
    g = torch.Generator().manual_seed(0)
    p = torch.rand(400, 3, generator=g)
    s = torch.rand(400, 3, generator=g)
    truth = (p + 0.3 * (s - 0.5) + 0.05 * torch.randn(400, 3, generator=g)) > 0.5
    rule = presence.fit_rule(p, s, truth)
    assert rule["coef"][0] > rule["coef"][1] > 0
    got = apply_rule(rule, p, s)
    assert (got == truth).float().mean() > 0.85
    z = (
        torch.logit(p.double()) * rule["coef"][0]
        + torch.logit(s.double()) * rule["coef"][1]
        + rule["intercept"]
    )
    assert torch.equal(got, z >= rule["cut"])

    def quality(pred):
        t = truth.numpy()
        f1 = 2 * (pred & t).sum(0) / (pred.sum(0) + t.sum(0))
        return float(f1.mean()), float(((pred & ~t).sum(0) / (~t).sum(0)).max())

    # the cut keeps up with the softmax alone on the fit data, and no cut of its grid that does is better
    soft, served = quality((p >= 0.5).numpy()), quality((z >= rule["cut"]).numpy())
    assert rule["constrained"] and served[0] >= soft[0] - 1e-9 and served[1] <= max(0.1, soft[1]) + 1e-9
    assert rule["fit_quality"]["all"] == pytest.approx(served[0], abs=1e-4)
    for c in np.linspace(-6, 6, 241):
        q = quality((z >= c).numpy())
        assert not (q[0] >= soft[0] and q[1] <= max(0.1, soft[1]) and q[0] > served[0] + 1e-9)
    # a bank with a rule serves it: only the model's probability counts with b = 0, c = 0
    ex = Explainer.from_bank(_bank(tmp_path / "rule", {"coef": [1.0, 0.0], "intercept": 0.0}), fast=True)
    out = ex.explain([photo("chelsea")], concepts="all", image_neurons=False)[0]
    assert [c["present"] for c in out["concepts"]] == [c["model_probability"] >= 0.5 for c in out["concepts"]]


def test_fit_head_on_build_images(bank_dir, tiny_data, tmp_path):
    """Each head classifier scores its concept's responsible regions above the background."""
    from hint.build.concepts import concept_samples
    from hint.build.head import build_config, build_samples, fit_head
    from hint.build.pipeline import cached_regions

    bank = ConceptBank.load(bank_dir)
    samples = build_samples(bank, bank_dir, tiny_data)
    head = fit_head(bank, samples, ["_blocks.14"], tmp_path / "cache", progress=False)
    assert head.layers == ["_blocks.14"] and head.weight[0].shape == (4, 192) and head.grid == [7, 7]
    bb = get_backbone("efficientnet_lite0", "_blocks.14")
    table, _, _ = cached_regions(
        bb, samples, build_config(bank), tmp_path / "cache", False
    )  # cached: no step 1 again
    h = bank.load_hierarchy()
    for e, c in enumerate(bank.concepts[:2]):
        s = concept_samples(
            table, c["wnid"], c["parent"], h, shares={"sibling": 0, "background": 1, "other": 0}
        )
        score = torch.sigmoid(s.x @ head.weight[0][e] + head.bias[0][e])
        assert score[s.y == 1].mean() > score[s.y == 0].mean() + 0.2


def test_evaluation_serves_what_the_handler_serves(bank_dir, tmp_path):
    """The WSOL rows "(served)" and the handler answer the same boxes, maps and present flags."""
    from hint.evaluation.wsol import metrics as wsol
    from hint.evaluation.wsol import served as wsol_served

    sys.path.insert(0, str(REPO / "tests"))
    from support.handler import FakeContext, hint_handler
    from support.wsol import TINY  # noqa: F401 - the box set's classes

    data = tmp_path / "imgs"
    data.mkdir()
    rows = ["file,wnid,boxes_xyxy"]
    for name, wnid in (("chelsea", "n02123045"), ("coffee", "n07920052"), ("rocket", "n04266014")):
        photo(name).convert("RGB").resize((227, 227)).save(data / f"{name}.png")
        rows.append(f"{name}.png,{wnid},10 10 200 200")
    (data / "annotations.csv").write_text("\n".join(rows) + "\n")
    anns = wsol.load_annotations(data / "annotations.csv", data)
    ex = Explainer.from_bank(bank_dir, **SERVING)  # what the evaluation builds
    whole = ex.bank.concepts[0]["wnid"]
    ancestors = [ex.bank.concepts[1]["wnid"], whole, ex.bank.concepts[3]["wnid"]]
    got = wsol_served.served(ex, anns, whole, ancestors, batch_size=2)
    model = tmp_path / "model"
    model.mkdir()
    for f in ("manifest.json", "bank.safetensors", "head.safetensors"):
        shutil.copy(bank_dir / f, model / f)
    handler = hint_handler.HintHandler()
    ctx = FakeContext(model)
    handler.initialize(ctx)
    for i, a in enumerate(anns):
        body = {
            "image": __import__("base64").b64encode(a.path.read_bytes()).decode(),
            **{k: v for k, v in wsol_served.request_options([whole, ancestors[i]]).items() if v is not None},
        }
        body["concepts"] = list(dict.fromkeys(body["concepts"]))
        ans = json.loads(handler.handle([{"body": body}], ctx)[0])
        by = {c["wnid"]: c for c in ans["concepts"]}
        for kind, w in (("whole", whole), ("ancestor", ancestors[i])):
            assert by[w]["box"] == got[kind].boxes[i]
            assert by[w]["present"] == bool(got[kind].present[i])
            assert np.allclose(np.asarray(by[w]["map"], np.float32), got[kind].maps[i], atol=1e-6)

"""Steps 1–3 on a tiny real-image case, the bank round trip, caching and corruption errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from hint.backbones import get_backbone
from hint.bank import BankError, ConceptBank
from hint.build.concepts import resolve
from hint.build.config import BuildConfig
from hint.build.datasets import discover
from hint.build.pipeline import build
from hint.hierarchy import Hierarchy

CONCEPTS = ["whole", "animal", "artifact"]


@pytest.fixture(scope="module")
def lite():
    return get_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def built(tiny_data, lite, tmp_path_factory):
    h = Hierarchy.load()
    found = discover(tiny_data, h)
    cache = tmp_path_factory.mktemp("cache")
    steps = []
    cfg = BuildConfig(permutations=64, batch_size=8, workers=0, max_positives=500)
    bank = build(
        lite,
        found.samples,
        resolve(CONCEPTS, h),
        cfg,
        cache,
        h,
        progress=False,
        on_step=lambda s, c: steps.append((s, c)),
    )
    return bank, found, cache, cfg, steps


def test_discover_layouts(tiny_data, tmp_path):
    flat = discover(tiny_data)
    assert len(flat.samples) == 16 and not flat.skipped
    # ImageNet layout root/nXXXXXXXX/*.png
    for s in flat.samples[:4]:
        (tmp_path / "tree" / s.wnid).mkdir(parents=True, exist_ok=True)
        shutil.copy(s.path, tmp_path / "tree" / s.wnid / s.path.name)
    assert len(discover(tmp_path / "tree").samples) == 4
    # CSV with an unknown WNID and a missing file: counted and skipped
    csv = tmp_path / "list.csv"
    rows = [f"{s.path},{s.wnid}" for s in flat.samples[:3]] + ["x.png,n99999999", "missing.png,n02123045"]
    csv.write_text("file,wnid\n" + "\n".join(rows) + "\n")
    d = discover(csv)
    assert len(d.samples) == 3 and len(d.skipped) == 2
    assert any("unknown WNID" in r for r in d.skipped) and any("no such file" in r for r in d.skipped)
    with pytest.raises(ValueError, match="does not exist"):
        discover(tmp_path / "nope")


def test_build_outputs(built, lite):
    bank, found, _, _, steps = built
    assert [s for s, _ in steps] == ["regions", "classifiers", "shapley", "exemplars"]
    assert not any(c for _, c in steps)
    e, d = bank.weight.shape
    assert (e, d) == (3, 320)
    assert bank.phi.shape == bank.phi_se.shape == (3, d)
    assert (bank.phi >= 0).all() and (bank.phi.sum(1) > 0).all()
    assert (bank.phi_se < bank.phi.max(1, keepdim=True).values).all()
    names = [c["name"] for c in bank.concepts]
    assert names == CONCEPTS
    animal = bank.concepts[1]
    assert animal["path"][:2] == ["animal", "organism"] and animal["n_pos"] > 0
    # the tabby images are the only animals: the classifiers must separate their regions from the others
    # on held-out data, clearly better than a trivial classifier calling every region positive (its F1
    # is 2p / (1 + p) for a positive share p; about 0.4 for animal here, whose held-out F1 is about 0.9)
    for c in bank.concepts:
        n = c["n_pos"] + c["n_sibling"] + c["n_background"] + c.get("n_other", 0)
        trivial = 2 * (c["n_pos"] / n) / (1 + c["n_pos"] / n)
        assert c["f1"] >= max(0.75, trivial + 0.2, c.get("trivial_f1", 0) + 0.2), (
            c["name"],
            c["f1"],
            trivial,
        )
    assert bank.meta["build"]["step1"]["images"] == 16
    assert bank.meta["build"]["step1"]["top1"] >= 0.5  # real weights recognise most of these photos
    # calibration and reliability from cross-validation, every candidate listed with its status
    for c in bank.concepts:
        assert (
            0.0 <= c["veto_threshold"] <= 1.0
            and 0.0 <= c["threshold"] <= 1.0
            and isinstance(c["reliable"], bool)
        )
        assert c["f1_ci"][0] <= c["f1"] <= c["f1_ci"][1]
    assert {c["wnid"]: c["status"] for c in bank.meta["candidates"]} == dict.fromkeys(bank.wnids, "built")


def test_rebuild_is_cached_and_identical(built, lite):
    bank, found, cache, cfg, _ = built
    steps = []
    again = build(
        lite,
        found.samples,
        resolve(CONCEPTS),
        cfg,
        cache,
        progress=False,
        on_step=lambda s, c: steps.append(c),
    )
    assert steps == [True, True, True, True]
    torch.testing.assert_close(again.phi, bank.phi)
    assert torch.equal(again.exemplars.jpeg, bank.exemplars.jpeg)
    torch.testing.assert_close(again.weight, bank.weight)
    # a fresh cache recomputes and gives the same numbers (seeded)
    fresh = build(lite, found.samples, resolve(CONCEPTS), cfg, cache / "fresh", progress=False)
    torch.testing.assert_close(fresh.phi, bank.phi, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fresh.weight, bank.weight, atol=1e-4, rtol=1e-3)


def test_exemplars_are_the_top_photos_of_every_neuron(built, lite, tmp_path):
    """The build's exemplars: per neuron the 9 photos with the largest peak activation (a direct forward pass
    over all 16), each patch's box around its peak cell, the labels from the bank's φ; a step-1 cache without
    the patches gets them from a forward pass, the same ones."""
    from hint.build.datasets import load_rgb
    from hint.build.exemplars import patch_box
    from hint.build.pipeline import cached_patches

    bank, found, cache, cfg, _ = built
    ex = bank.exemplars
    assert (ex.neurons, ex.k) == (320, 9) and ex.info["grid"] == [7, 7] and ex.info["table_images"] == 16
    z = {}
    handle = lite.layer_module().register_forward_hook(lambda _m, _i, o: z.__setitem__("z", o.detach()))
    with torch.no_grad():
        lite.model(lite.preprocess([load_rgb(s.path) for s in found.samples]))
    handle.remove()
    peak, cell = z["z"].flatten(2).max(2)  # (16, 320)
    for d in (0, 45, 319):
        want = peak[:, d].argsort(descending=True, stable=True)[:9]
        assert [ex.images[i] for i in ex.image[d].tolist()] == [found.samples[i].key for i in want.tolist()]
        torch.testing.assert_close(ex.activation[d], peak[want, d], atol=1e-3, rtol=1e-3)
        for j, i in enumerate(want.tolist()):
            w, h = load_rgb(found.samples[i].path).size
            assert ex.box[d, j].tolist() == patch_box(int(cell[i, d]), [7, 7], w, h)
    assert torch.equal(ex.concept, bank.phi.argmax(0))
    assert ((ex.iou >= 0) & (ex.iou <= ex.iou_best) & (ex.iou_best <= 1)).all()
    # a step-1 cache from before the patches: a forward pass finds the same ones
    from hint.build.exemplars import patches_path

    key = next(cache.glob("regions-*.safetensors")).stem.removeprefix("regions-")
    path = patches_path(cache, key, 9)
    path.rename(tmp_path / "kept")
    again = cached_patches(lite, found.samples, cfg, cache, key, progress=False)
    assert path.exists()
    keys = [[found.samples[i].key for i in row] for row in again.index.tolist()]
    assert keys == [[ex.images[i] for i in row] for row in ex.image.tolist()]
    torch.testing.assert_close(again.value, ex.activation, atol=1e-3, rtol=1e-3)


def test_bank_round_trip_and_tables(built, tmp_path):
    bank = built[0]
    folder = bank.save(tmp_path / "bank")
    loaded = ConceptBank.load(folder)
    assert loaded.sha256 == bank.sha256 and loaded.id == bank.id
    for k, v in bank.tensors().items():
        torch.testing.assert_close(loaded.tensors()[k], v)
    assert loaded.concepts == json.loads(json.dumps(bank.concepts))
    # the build's settings, read back from the saved manifest
    assert BuildConfig.from_manifest(loaded) == built[3]
    assert BuildConfig.from_manifest(json.loads((folder / "manifest.json").read_text())) == built[3]
    w = loaded.wnids[1]
    top = loaded.top_neurons(w, 5)
    assert len(top) == 5 and top[0][1] == float(loaded.phi[1].max())
    ranked = loaded.neuron_concepts(top[0][0])
    assert {x for x, _ in ranked} == set(loaded.wnids)
    assert all(len(v) >= 2 for v in loaded.multimodal_neurons(k=20).values())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (
        manifest["backbone"] == "efficientnet_lite0" and manifest["files"]["bank.safetensors"] == bank.sha256
    )
    # saving again over the folder is atomic and leaves no temp folders
    bank.save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]


def test_bank_corruption_errors(built, tmp_path):
    folder = built[0].save(tmp_path / "bank")
    t = folder / "bank.safetensors"
    data = bytearray(t.read_bytes())
    data[-1] ^= 0xFF
    t.write_bytes(bytes(data))
    with pytest.raises(BankError, match="sha256 mismatch"):
        ConceptBank.load(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(BankError, match="corrupt manifest"):
        ConceptBank.load(folder)
    with pytest.raises(BankError, match="not a concept bank"):
        ConceptBank.load(tmp_path)
    good = built[0].save(tmp_path / "b2")
    (good / "bank.safetensors").unlink()
    with pytest.raises(BankError, match="missing file"):
        ConceptBank.load(good)


def test_bank_backbone_mismatch(built):
    with pytest.raises(BankError, match="bank built for efficientnet_lite0"):
        built[0].check_backbone("resnet50", "layer3.5", 1024)


def test_unreadable_images_are_counted_not_fatal(tiny_data, lite, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    (root / "n02123045_broken.png").write_bytes(b"not an image")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "n04266014_red.png")
    found = discover(root)
    cfg = BuildConfig(permutations=8, batch_size=8, workers=0, max_positives=200)
    bank = build(lite, found.samples, resolve(["whole", "animal"]), cfg, tmp_path / "c", progress=False)
    assert bank.meta["build"]["step1"]["images"] == 17
    assert bank.meta["build"]["n_images"] == 17


def test_random_weight_torchvision_backbone(tiny_data, tmp_path):
    bb = get_backbone("resnet50", random_init=True)
    found = discover(tiny_data)
    cfg = BuildConfig(permutations=8, batch_size=4, workers=0, max_positives=200, min_images=2)  # 2 tabbies
    bank = build(bb, found.samples[::2], resolve(["whole", "animal"]), cfg, tmp_path, progress=False)
    assert bank.weight.shape == (2, 1024)
    assert bank.meta["layer"] == "layer3.5" and bank.meta["build"]["step1"]["map_size"] == [14, 14]
    assert bank.baseline.abs().sum() == 0  # post-ReLU layer: zero baseline


def test_unknown_concept():
    with pytest.raises(KeyError, match="unknown concept"):
        resolve(["whole", "not-a-concept"])

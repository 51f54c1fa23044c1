"""Neuron exemplars: the bounded top-k buffer against brute force (one pass, merged, resumed), patch boxes,
crops, the NetDissect IoU against a direct count, and the bank round trip with and without them."""

from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from support import REPO

from hint.bank import BankError, ConceptBank
from hint.build.concepts import RegionTable
from hint.build.datasets import Sample
from hint.build.exemplars import TopPatches, neuron_labels, patch_box, thumbnails
from hint.exemplars import FILE, Exemplars
from hint.hierarchy import Hierarchy

BANK = REPO / "model_store" / "hint-bank"


def brute_force(
    z: torch.Tensor, index: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(value, index, cell) (D, k): every image's peak per channel, sorted by value then index."""
    peak, cell = z.flatten(2).max(2)  # (N, D)
    out_v, out_i, out_c = [], [], []
    for d in range(z.shape[1]):
        rows = sorted(range(len(index)), key=lambda n: (-float(peak[n, d]), int(index[n])))[:k]
        out_v.append(peak[rows, d])
        out_i.append(index[rows])
        out_c.append(cell[rows, d])
    return torch.stack(out_v), torch.stack(out_i), torch.stack(out_c)


def batches(seed: int, n: int = 70, d: int = 12, grid: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, grid, grid, generator=g)
    z[10:20, 3] = 9.0  # ties: equal peaks on ten images of one channel, its top ten
    index = torch.randperm(1000, generator=g)[:n]
    return z, index


@pytest.mark.parametrize("k", [1, 9, 100])
def test_top_patches_match_brute_force(k):
    z, index = batches(0)
    top = TopPatches(k)
    for a in range(0, len(z), 16):  # streamed in batches
        top.offer(z[a : a + 16], index[a : a + 16])
    v, i, c = brute_force(z, index, k)
    torch.testing.assert_close(top.value, v)
    assert torch.equal(top.index, i) and torch.equal(top.cell, c)
    assert top.grid == [5, 5] and top.value.shape == (12, min(k, len(z)))
    # ties go to the smaller sample index, whatever the order of arrival
    tied = sorted(index[10:20].tolist())
    if k >= 10:
        assert top.index[3, :10].tolist() == tied


def test_top_patches_merge_and_state_equal_one_pass():
    z, index = batches(1)
    one = TopPatches(9)
    one.offer(z, index)
    ranks = [TopPatches(9) for _ in range(3)]
    for r, part in enumerate(ranks):  # rank r takes samples r::3, in reverse order
        for n in reversed(range(r, len(z), 3)):
            part.offer(z[n : n + 1], index[n : n + 1])
    merged = TopPatches.from_state(ranks[0].state(), 9)
    for part in ranks[1:]:
        merged.merge(TopPatches.from_state(part.state(), 9))
    torch.testing.assert_close(merged.value, one.value)
    assert torch.equal(merged.index, one.index) and torch.equal(merged.cell, one.cell)
    empty = TopPatches.from_state(TopPatches(9).state(), 9)
    assert empty.grid is None
    merged.merge(empty)  # an empty rank changes nothing
    assert torch.equal(merged.index, one.index)
    with pytest.raises(ValueError, match="at least 1"):
        TopPatches(0)


def test_patch_box_is_the_window_around_the_cell_inside_the_photo():
    # 7x7 grid on a 700x350 photo: cells are 100x50 pixels; 4 cells = 400x200
    assert patch_box(3 * 7 + 3, [7, 7], 700, 350) == [150, 75, 550, 275]  # the centre cell, centred
    assert patch_box(0, [7, 7], 700, 350) == [0, 0, 400, 200]  # a corner: shifted inside
    assert patch_box(48, [7, 7], 700, 350) == [300, 150, 700, 350]
    assert patch_box(0, [7, 7], 700, 350, window=10) == [0, 0, 700, 350]  # wider than the photo: all of it


def test_thumbnails_are_the_photo_crops(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for n in range(3):
        a = np.kron(rng.integers(0, 255, (7, 9, 3)), np.ones((30, 30, 1))).astype(
            np.uint8
        )  # 270x210, flat blocks
        p = tmp_path / f"n0144076{n}_x.png"
        Image.fromarray(a).save(p)
        samples.append(Sample(p, "n01440764", 0))
    top = TopPatches(2)
    z = torch.zeros(3, 4, 7, 7)
    for n in range(3):
        z[n, :, n, n + 1] = 1.0 + n  # image n peaks at cell (n, n+1)
    top.offer(z, torch.arange(3))
    out = thumbnails(top, samples, size=32, quality=95, progress=False)
    assert out["images"] == [s.key for s in samples[1:]]  # the top 2 of every neuron: images 2 and 1
    assert out["image"].tolist() == [[1, 0]] * 4
    for j, n in enumerate((2, 1)):
        box = patch_box(n * 7 + n + 1, [7, 7], 270, 210)
        assert out["box"][0, j].tolist() == box
        blob = bytes(out["jpeg"][int(out["offsets"][j]) : int(out["offsets"][j + 1])].numpy())
        got = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=float)
        want = np.asarray(
            Image.open(samples[n].path).convert("RGB").crop(box).resize((32, 32), Image.Resampling.BICUBIC),
            dtype=float,
        )
        shifted = np.asarray(
            Image.open(samples[n].path)
            .convert("RGB")
            .crop([box[0] + 30, *box[1:3], box[2] + 30])
            .resize((32, 32), Image.Resampling.BICUBIC),
            dtype=float,
        )
        assert got.shape == (32, 32, 3) and np.abs(got - want).mean() < 15 < 40 < np.abs(got - shifted).mean()


def test_neuron_labels_iou_equals_a_direct_count():
    h = Hierarchy.load()
    wnids = ["n00015388", "n02121808", "n03183080"]  # animal, domestic cat, device
    cat, tench = h.classes.index("n02123045"), h.classes.index("n01440764")
    g = torch.Generator().manual_seed(0)
    images, cells, d = 40, 49, 6
    feats = torch.randn(images * cells, d, generator=g).half()
    label = torch.tensor([cat if i % 2 else tench for i in range(images)])
    image = torch.arange(images).repeat_interleave(cells)
    fg = torch.rand(images * cells, generator=g) > 0.5
    table = RegionTable(feats, image, fg, label)
    phi = torch.rand(3, d, generator=g)
    out = neuron_labels(table, phi, wnids, h, quantile=0.9, chunk=100)
    assert torch.equal(out["concept"], phi.argmax(0))
    f = feats.float()
    for n in range(d):
        thr = torch.sort(f[:, n], descending=True).values[int(np.ceil(0.1 * len(f))) - 1]
        assert float(out["threshold"][n]) == pytest.approx(float(thr))
        act = f[:, n] >= thr
        ious = []
        for w in wnids:
            reg = fg & torch.isin(label[image], torch.tensor(h[w].leaves))
            ious.append(float((act & reg).sum() / (act | reg).sum()))
        assert float(out["iou"][n]) == pytest.approx(ious[int(phi[:, n].argmax())], abs=1e-6)
        assert float(out["iou_best"][n]) == pytest.approx(max(ious), abs=1e-6)
        assert int(out["iou_concept"][n]) == int(np.argmax(ious))
    assert (
        not out["iou"].isnan().any() and out["iou_best"].min() > 0
    )  # device has no images here: IoU 0, not NaN


def fake_exemplars(bank: ConceptBank, k: int = 3) -> Exemplars:
    d = bank.weight.shape[1]
    blobs = []
    for n in range(d * k):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (n % 256, 0, 0)).save(buf, "JPEG")
        blobs.append(buf.getvalue())
    lengths = torch.tensor([len(b) for b in blobs])
    return Exemplars(
        jpeg=torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8),
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        activation=torch.linspace(3, 1, k).repeat(d, 1),
        image=torch.arange(d * k).view(d, k) % 5,
        box=torch.tensor([1, 2, 30, 40], dtype=torch.int32).repeat(d, k, 1),
        concept=bank.phi.argmax(0),
        iou=torch.full((d,), 0.25),
        iou_concept=torch.zeros(d, dtype=torch.long),
        iou_best=torch.full((d,), 0.5),
        threshold=torch.ones(d),
        images=[f"img{i}.JPEG" for i in range(5)],
        info={"size": 8, "quality": 75},
    )


def test_bank_round_trip_with_and_without_exemplars(tmp_path):
    bank = ConceptBank.load(BANK)
    want = {
        f: json.loads((BANK / "manifest.json").read_text())["files"][f]
        for f in ("bank.safetensors", "head.safetensors")
    }
    bank.exemplars = fake_exemplars(bank)
    folder = bank.save(tmp_path / "bank")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {f: manifest["files"][f] for f in want} == want, "the other tensors are written byte for byte"
    assert (
        FILE in manifest["files"] and manifest["exemplars"]["k"] == 3 and manifest["exemplars"]["size"] == 8
    )
    loaded = ConceptBank.load(folder).exemplars
    for key, v in bank.exemplars.tensors().items():
        assert torch.equal(loaded.tensors()[key], v), key
    assert loaded.images == bank.exemplars.images and loaded.info == {"size": 8, "quality": 75}
    p = loaded.patches(7)
    assert [x["rank"] for x in p] == [1, 2, 3] and p[0]["box"] == [1, 2, 30, 40]
    assert (
        base64.b64decode(p[1]["thumbnail"]) == loaded.thumbnail(7, 1)
        and loaded.thumbnail(7, 1)[:2] == b"\xff\xd8"
    )
    # without exemplars: the file goes, the bank loads, its id is the same
    bank.exemplars = None
    bank.save(folder)
    assert not (folder / FILE).exists() and "exemplars" not in json.loads(
        (folder / "manifest.json").read_text()
    )
    again = ConceptBank.load(folder)
    assert again.exemplars is None and again.id == bank.id


def test_bad_exemplars_file_is_one_line(tmp_path):
    bank = ConceptBank.load(BANK)
    bank.exemplars = fake_exemplars(bank, k=2)
    folder = bank.save(tmp_path / "bank")
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    data = bytearray((bad / FILE).read_bytes())
    data[-3] ^= 0xFF
    (bad / FILE).write_bytes(bytes(data))
    with pytest.raises(BankError, match="sha256 mismatch"):
        ConceptBank.load(bad)
    # an exemplars file the manifest does not list (no sha256 to check it by)
    loose = tmp_path / "loose"
    shutil.copytree(folder, loose)
    m = json.loads((loose / "manifest.json").read_text())
    del m["files"][FILE]
    (loose / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BankError, match="not listed in the manifest"):
        ConceptBank.load(loose)
    # listed, but for another width
    other = bank.exemplars
    other.activation = other.activation[:10]
    other.save(bad / FILE)
    from hint.bank import sha256_file

    m = json.loads((bad / "manifest.json").read_text())
    m["files"][FILE] = sha256_file(bad / FILE)
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BankError, match=r"bad exemplars.safetensors \(shapes do not fit 320 neurons\)"):
        ConceptBank.load(bad)


class _Interrupt(Exception):
    pass


def test_a_killed_step_one_resumes_its_patches(tiny_data, tmp_path, monkeypatch):
    """The patches are checkpointed with the reservoir: a resumed step 1 keeps the same ones as an
    uninterrupted one; a checkpoint without them (older code) marks them partial."""
    from hint.backbones import get_backbone
    from hint.build.datasets import ImageDataset, discover
    from hint.build.pipeline import BuildConfig, extract_regions

    lite = get_backbone("efficientnet_lite0")
    samples = discover(tiny_data).samples
    cfg = BuildConfig(batch_size=4, workers=0, checkpoint_every=4)
    whole = TopPatches(5)
    extract_regions(lite, samples, cfg, progress=False, patches=whole)
    ckpt = tmp_path / "part.safetensors"
    calls, real = {"n": 0}, ImageDataset.__getitem__

    def dying(self, i):
        calls["n"] += 1
        if calls["n"] > 10:  # dies in the third batch, after two checkpoints
            raise _Interrupt("killed")
        return real(self, i)

    monkeypatch.setattr(ImageDataset, "__getitem__", dying)
    with pytest.raises(_Interrupt):
        extract_regions(lite, samples, cfg, progress=False, checkpoint=ckpt, patches=TopPatches(5))
    monkeypatch.setattr(ImageDataset, "__getitem__", real)
    resumed = TopPatches(5)
    extract_regions(lite, samples, cfg, progress=False, checkpoint=ckpt, patches=resumed)
    assert torch.equal(resumed.index, whole.index) and not resumed.partial
    torch.testing.assert_close(resumed.value, whole.value, atol=1e-3, rtol=1e-3)
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(str(ckpt)).items() if not k.startswith("patches.")}
    save_file(
        state,
        str(ckpt),
        metadata={
            "meta": json.dumps(
                {
                    "done": 8,
                    "images": 8,
                    "unreadable": [],
                    "seconds": 1.0,
                    "correct": 0,
                    "fg": 0,
                    "positions": 0,
                }
            )
        },
    )
    old = TopPatches(5)
    extract_regions(lite, samples, cfg, progress=False, checkpoint=ckpt, patches=old)
    assert old.partial

"""Bounded step 1: per-class reservoirs (order-free, mergeable, resumable), augmented views, torchrun merge."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import REPO

from hint.backbones import get_backbone
from hint.build.config import BuildConfig
from hint.build.datasets import ImageDataset, discover, with_views
from hint.build.pipeline import extract_regions, load_meta, load_table, region_table
from hint.build.reservoir import ImageReservoir, priority
from hint.build.views import make_view


def offers(n: int = 60, classes: int = 3, views: int = 1):
    """(index, key, label, features, foreground, source, view) for n images."""
    out = []
    for i in range(n):
        photo, v = divmod(i, views)
        g = torch.Generator().manual_seed(i)
        out.append(
            (
                i,
                f"img{photo}.jpg" + (f"#{v}" if v else ""),
                photo % classes,
                torch.randn(4, 3, generator=g).half(),
                torch.rand(4, generator=g) > 0.5,
                photo * views,
                v,
            )
        )
    return out


def fill(res: ImageReservoir, items) -> ImageReservoir:
    for index, key, label, f, g, src, v in items:
        res.offer(index, key, label, f, g, src, v)
    return res


def kept(res: ImageReservoir) -> list[int]:
    return [e.index for e in res.entries()]


def test_keeps_the_k_smallest_priorities_of_each_class_whatever_the_order():
    items = offers()
    want = []
    for c in range(3):
        mine = [(priority(k, 0, v), i) for i, k, lab, *_, v in items if lab == c]
        want += [i for _, i in sorted(mine)[:5]]
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    assert kept(fill(ImageReservoir(5), items)) == kept(fill(ImageReservoir(5), shuffled)) == sorted(want)
    assert kept(fill(ImageReservoir(5, seed=1), items)) != sorted(want)  # the seed draws another sample


def test_merged_shards_keep_what_one_reservoir_keeps():
    items = offers()
    parts = [fill(ImageReservoir(4), items[r::3]) for r in range(3)]
    for p in parts[1:]:
        parts[0].merge(p)
    assert kept(parts[0]) == kept(fill(ImageReservoir(4), items))


def test_state_round_trip_and_table_layout():
    res = fill(ImageReservoir(3), offers(views=2))
    back = ImageReservoir.from_state(res.state(), 3)
    assert kept(back) == kept(res)
    a, b = res.table(), back.table()
    torch.testing.assert_close(a.features, b.features)
    assert torch.equal(a.foreground, b.foreground) and torch.equal(a.label, b.label)
    assert torch.equal(a.image, torch.arange(len(a.label)).repeat_interleave(4))
    assert a.index.tolist() == kept(res)
    # views of one photo share one photo number, numbered in order of first appearance
    assert a.photos.tolist() == sorted(a.photos.tolist()) and a.photos[0] == 0
    assert len(ImageReservoir(2).state()["meta"]) == 0


def test_photos_are_kept_before_their_views():
    res = fill(ImageReservoir(2), offers(n=30, classes=1, views=10))  # 3 photos × 10 views, keep 2
    assert [e.view for e in res.entries()] == [0, 0]


def test_views_are_deterministic_flips_and_crops(tmp_path):
    im = Image.fromarray(np.arange(64 * 48 * 3, dtype=np.uint8).reshape(48, 64, 3) % 251)
    assert make_view(im, "a.jpg", 0) is im
    assert np.array_equal(np.asarray(make_view(im, "a.jpg", 1)), np.asarray(im)[:, ::-1])
    crops = [make_view(im, "a.jpg", v) for v in range(2, 6)]
    assert all(0.5 * 64 * 48 - 64 <= c.width * c.height <= 64 * 48 for c in crops)
    assert [np.asarray(c).tobytes() for c in crops] == [
        np.asarray(make_view(im, "a.jpg", v)).tobytes() for v in range(2, 6)
    ]
    assert len({c.size for c in crops}) > 1
    path = tmp_path / "n01440764_x.png"
    im.save(path)
    samples = with_views(discover(tmp_path).samples, 3)
    assert [(s.view, s.key) for s in samples] == [
        (0, "n01440764_x.png"),
        (1, "n01440764_x.png#1"),
        (2, "n01440764_x.png#2"),
    ]
    with pytest.raises(ValueError, match="at least 1"):
        with_views(samples, 0)


@pytest.fixture(scope="module")
def lite0():
    return get_backbone("efficientnet_lite0")


def test_per_class_bound_on_real_regions(lite0, tiny_data):
    samples = discover(tiny_data).samples  # 4 classes × 4 images
    cfg = BuildConfig(per_class=2, batch_size=8, workers=0)
    table, stats = region_table(lite0, samples, cfg, progress=False)
    assert stats["images"] == 16 and stats["kept_images"] == 8
    assert torch.bincount(table.label).tolist().count(2) == 4
    assert table.index.tolist() == sorted(table.index.tolist())
    full, _ = region_table(lite0, samples, BuildConfig(per_class=8, batch_size=8, workers=0), progress=False)
    rows = full.rows_of(table.index)  # the kept images' rows, as the unbounded table has them
    torch.testing.assert_close(table.features.float(), full.features[rows].float(), atol=2e-2, rtol=1e-2)


class _Interrupt(RuntimeError):
    pass


def test_a_killed_step_one_resumes_at_its_checkpoint(lite0, tiny_data, tmp_path, monkeypatch):
    samples = discover(tiny_data).samples
    cfg = BuildConfig(per_class=3, batch_size=4, workers=0, checkpoint_every=4)
    whole, run = extract_regions(lite0, samples, cfg, progress=False)
    ckpt = tmp_path / "part.safetensors"
    calls = {"n": 0}
    real = ImageDataset.__getitem__

    def dying(self, i):
        calls["n"] += 1
        if calls["n"] > 10:  # dies in the third batch, after two checkpoints
            raise _Interrupt("killed")
        return real(self, i)

    monkeypatch.setattr(ImageDataset, "__getitem__", dying)
    with pytest.raises(_Interrupt):
        extract_regions(lite0, samples, cfg, progress=False, checkpoint=ckpt)
    monkeypatch.setattr(ImageDataset, "__getitem__", real)
    assert load_meta(ckpt)["done"] == 8
    seen = {"n": 0}

    def counting(self, i):
        seen["n"] += 1
        return real(self, i)

    monkeypatch.setattr(ImageDataset, "__getitem__", counting)
    resumed, run2 = extract_regions(lite0, samples, cfg, progress=False, checkpoint=ckpt)
    assert seen["n"] == 8  # only the images after the checkpoint
    assert kept(resumed) == kept(whole) and run2["images"] == run["images"] == 16
    torch.testing.assert_close(
        resumed.table().features.float(), whole.table().features.float(), atol=2e-2, rtol=1e-2
    )


@pytest.mark.slow
def test_torchrun_two_processes_keep_the_images_one_process_keeps(lite0, tiny_data, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "offline",
        "build",
        "--data",
        str(tiny_data),
        "--out",
        str(tmp_path / "bank"),
        "--device",
        "cpu",
        "--per-class",
        "2",
        "--concepts",
        "whole",
        "animal",
        "--min-images",
        "2",
        "--permutations",
        "8",
        "--faithfulness-k",
        "0",
        "--workers",
        "0",
        "--no-progress",
        "--batch-size",
        "8",
        "--head-layers",
        "none",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp_path / ".hint-cache").glob("regions-*.safetensors")
    dist, stats = load_table(path)
    single, _ = region_table(
        lite0, discover(tiny_data).samples, BuildConfig(per_class=2, batch_size=8, workers=0), progress=False
    )
    assert stats["world_size"] == 2 and stats["images"] == 16 and stats["kept_images"] == 8
    assert dist.index.tolist() == single.index.tolist()
    assert torch.equal(dist.label, single.label)
    torch.testing.assert_close(dist.features.float(), single.features.float(), atol=2e-2, rtol=1e-2)
    assert (dist.foreground == single.foreground).float().mean() > 0.98

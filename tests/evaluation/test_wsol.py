"""WSOL metrics (hint.evaluation.wsol.metrics) on hand-computed cases, the evaluation library (hint.evaluation.wsol.run), and
``python -m offline evaluate-wsol`` end to end.

The end-to-end tests read the ``--export-npy`` output the way wsolevaluation's loader does (its
``data_loaders``: comma-separated lines, ``int()`` of every box coordinate and size; its ``DataLoader``
stacks the maps, so they must all have one shape), recompute MaxBoxAcc and MaxBoxAccV2 from it with an
independent implementation (connected components with scikit-image instead of OpenCV contours, IoU by
counting pixels) and require the same numbers as the command's report.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage.measure import label, regionprops
from support import REPO
from support.wsol import random_bank, run_evaluate_wsol

from hint._utils import stats
from hint.boxes import upsample_map
from hint.evaluation.wsol import metrics as wsol
from hint.evaluation.wsol import run as wsol_eval
from offline.__main__ import main

SHARED_BOXES = REPO.parent / "shared" / "data" / "imagenet-val-boxes"
T = len(wsol.THRESHOLDS)


def block(h=227, w=227, boxes=((10, 20, 60, 80),), values=None) -> np.ndarray:
    """A map that is ``value`` on the pixels x0 ≤ x < x1, y0 ≤ y < y1 of each box, 0 elsewhere."""
    m = np.zeros((h, w), np.float32)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        m[y0:y1, x0:x1] = 1.0 if values is None else values[k]
    return m


def scores_of(maps: list[np.ndarray], gts: list[np.ndarray]) -> wsol.MethodScores:
    s = wsol.MethodScores.empty(len(maps))
    for i, (m, g) in enumerate(zip(maps, gts, strict=True)):
        s.add(i, m, np.asarray(g))
    return s


# ------------------------------------------------------------------------------- hand-computed cases


def test_perfect_map_scores_one():
    # a mask over pixels [10, 60) x [20, 80) gives the box x0=10 y0=20 x1=x+w=60 y1=y+h=80 (wsolevaluation)
    s = scores_of([block()], [[[10, 20, 60, 80]]])
    assert np.all(s.iou_largest == 1.0) and np.all(s.iou_all == 1.0) and s.pointing.all()
    r = wsol.localization_metrics(s, np.array([True]), np.array([0]), np.array([0]))
    assert r["gt_known_loc"] == r["top1_loc"] == r["max_box_acc"] == r["max_box_acc_v2"] == 1.0
    assert r["threshold"] == 0.0 and r["mean_iou"] == 1.0
    # the same mask against the inclusive box [10, 59] x [20, 79]: the +1 convention costs one pixel row/column
    s = scores_of([block()], [[[10, 20, 59, 79]]])
    assert s.iou_largest[0, 0] == pytest.approx(50 * 60 / (51 * 61))


def test_empty_and_flat_maps_give_the_degenerate_box():
    for m in (np.zeros((50, 40), np.float32), np.full((50, 40), 0.7, np.float32)):
        sm = wsol.score_map(m, 40, 50)
        assert sm.shape == (50, 40) and sm.max() == 0.0  # min-max of a flat map: zeros
        big, every, largest = wsol.image_ious(sm, np.array([[10, 10, 30, 30]]))
        assert (largest == 0).all() and (big == 0).all() and (every == 0).all()
        # the degenerate box [0, 0, 0, 0] is one pixel: IoU 1/100 with a 10x10 GT box at the corner
        big, _, _ = wsol.image_ious(sm, np.array([[0, 0, 9, 9]]))
        assert big == pytest.approx(np.full(T, 0.01))
    s = scores_of([np.zeros((50, 40), np.float32)], [[[10, 10, 30, 30]]])
    r = wsol.localization_metrics(s, np.array([True]), np.array([0]), np.array([0]))
    assert r["gt_known_loc"] == r["max_box_acc"] == r["max_box_acc_v2"] == 0.0
    assert r["pointing_game"] == 0.0  # argmax of a flat map is pixel (0, 0), outside the box


def test_shifted_box_known_iou():
    # predicted [10, 20, 60, 80] vs GT shifted 10 px right: IoU = 41·61 / (2·51·61 − 41·61) = 41/61
    s = scores_of([block()], [[[20, 20, 70, 80]]])
    assert s.iou_largest[0] == pytest.approx(np.full(T, 41 / 61))
    r = wsol.localization_metrics(s, np.array([False]), np.array([0]), np.array([0]))
    assert r["gt_known_loc"] == 1.0 and r["top1_loc"] == 0.0  # Top-1 Loc also needs the right class
    assert r["max_box_acc_v2_per_iou"] == {30: 1.0, 50: 1.0, 70: 0.0}
    assert r["max_box_acc_v2"] == pytest.approx(2 / 3)
    assert r["mean_iou"] == pytest.approx(41 / 61)


def iou(box, boxes: np.ndarray) -> np.ndarray:
    """Reference: IoU of one box against (K, 4) boxes, wsolevaluation's formula (+1 pixel convention)."""
    b, g = np.asarray(box, dtype=np.float64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    inter = np.clip(np.minimum(b[2], g[:, 2]) - np.maximum(b[0], g[:, 0]) + 1, 0, None) * np.clip(
        np.minimum(b[3], g[:, 3]) - np.maximum(b[1], g[:, 1]) + 1, 0, None
    )
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_b + (g[:, 2] - g[:, 0] + 1) * (g[:, 3] - g[:, 1] + 1) - inter)


def boxes_at(score_map: np.ndarray, threshold: float, all_contours: bool = False) -> list[list[int]]:
    """Reference: wsolevaluation's boxes around the contours of ``score_map >= threshold`` (the largest by
    area, or all), unclipped; ``[[0, 0, 0, 0]]`` for an empty mask."""
    mask = (np.asarray(score_map) >= threshold).astype(np.uint8)
    contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return [[0, 0, 0, 0]]
    if not all_contours:
        contours = [max(contours, key=cv2.contourArea)]
    return [[x, y, x + w, y + h] for x, y, w, h in map(cv2.boundingRect, contours)]


def test_iou_matches_localization_iou_and_degenerate_guard():
    rng = np.random.default_rng(0)
    a = np.sort(rng.integers(0, 100, (20, 2, 2)), axis=1).transpose(0, 2, 1).reshape(20, 4)[:, [0, 2, 1, 3]]
    g = np.array([[5, 5, 50, 60], [30, 0, 99, 40]])
    got = wsol.multiple_iou(a, g)
    for k in range(len(a)):
        np.testing.assert_allclose(got[k], iou(a[k], g))
    assert wsol.multiple_iou([[5, 5, 3, 3]], [[5, 5, 3, 3]])[0, 0] == 0.0  # union ≤ 0 → 0, not a division


def test_multiple_gt_boxes_largest_vs_all_contours():
    m = block(boxes=((10, 10, 90, 90), (150, 150, 200, 200)))  # a big and a small blob
    big_gt, small_gt = [10, 10, 90, 90], [150, 150, 200, 200]
    # GT-known counts a match with ANY GT box: the largest contour hits the big one
    s = scores_of([m], [[small_gt, big_gt]])
    assert np.all(s.iou_largest == 1.0)
    # only the small object annotated: the largest contour misses it, MaxBoxAccV2's all-contour boxes find it
    s = scores_of([m], [[small_gt]])
    assert np.all(s.iou_largest == 0.0) and np.all(s.iou_all == 1.0)
    r = wsol.localization_metrics(s, np.array([True]), np.array([0]), np.array([0]))
    assert r["max_box_acc"] == 0.0 and r["max_box_acc_v2"] == 1.0
    assert not s.pointing[0]  # the maximum (first pixel of the big blob) is not in the small box


def test_thresholds_quantise_like_wsolevaluation():
    # uint8(map·255) > int(τ·max): a pixel at exactly the cut is background
    m = np.zeros((20, 20), np.float32)
    m[2:8, 2:8], m[12:18, 12:18] = 1.0, 0.5  # quantised to 255 and 127
    q = wsol.quantise(m)
    assert q.max() == 255 and q[12, 12] == 127
    assert wsol.threshold_mask(q, 0.498)[12, 12] == 1  # int(0.498·255) = 126 < 127
    assert wsol.threshold_mask(q, 0.5)[12, 12] == 0  # int(0.5·255) = 127: 127 > 127 is false
    _, every, _ = wsol.image_ious(m, np.array([[12, 12, 18, 18]]), np.array([0.3, 0.6]))
    assert every[0] == 1.0 and every[1] < 0.5  # the dim blob counts at τ=0.3, not at τ=0.6


def test_contour_boxes_follow_localization_boxes_at():
    rng = np.random.default_rng(1)
    for _ in range(30):
        m = wsol.score_map(rng.random((5, 5)).astype(np.float32), 60, 45)
        q = wsol.quantise(m)
        for t in (0.2, 0.5, 0.8):
            mask = wsol.threshold_mask(q, t)
            cut = int(t * int(q.max()))
            largest, every = wsol.contour_boxes(mask)
            ref_all = np.minimum(np.array(boxes_at(q, cut + 1, all_contours=True)), [10**9, 10**9, 59, 44])
            ref_big = np.minimum(np.array(boxes_at(q, cut + 1)[0]), [10**9, 10**9, 59, 44])
            np.testing.assert_array_equal(every, ref_all)
            np.testing.assert_array_equal(largest, ref_big)


def test_ring_map_keeps_the_hole_contour():
    m = block(h=60, w=60, boxes=((10, 10, 50, 50),))
    m[20:40, 20:40] = 0  # a ring: RETR_TREE also returns the hole's border
    _, every = wsol.contour_boxes(wsol.threshold_mask(wsol.quantise(m), 0.5))
    assert sorted(map(tuple, every.tolist())) == [(10, 10, 50, 50), (19, 19, 41, 41)]


def test_threshold_is_selected_on_the_other_split():
    # 3 thresholds; selection images localise at τ index 0 only, test images at τ index 2 only
    s = wsol.MethodScores.empty(4, 3)
    s.iou_largest[:2] = [0.9, 0.1, 0.1]
    s.iou_largest[2:] = [0.1, 0.1, 0.9]
    s.iou_all[:] = s.iou_largest
    s.pointing[:] = True
    sel, test = np.array([0, 1]), np.array([2, 3])
    r = wsol.localization_metrics(s, np.ones(4, bool), sel, test, thresholds=np.array([0.1, 0.5, 0.9]))
    assert r["threshold"] == 0.1 and r["gt_known_loc"] == 0.0  # chosen on selection, never on test
    assert r["max_box_acc"] == 1.0  # MaxBoxAcc: max over thresholds by definition
    assert r["selection_box_acc"] == 1.0
    assert wsol.select_threshold(np.array([[0.6, 0.6], [0.0, 0.6]])) == 1
    assert wsol.select_threshold(np.array([[0.6, 0.6], [0.6, 0.6]])) == 0  # ties: the lowest threshold


def test_split_is_seeded_and_disjoint():
    a, b = wsol.split_indices(11, 0)
    assert len(a) == 5 and len(b) == 6 and not set(a) & set(b) and set(a) | set(b) == set(range(11))
    assert np.array_equal(wsol.split_indices(11, 0)[0], a) and not np.array_equal(
        wsol.split_indices(11, 1)[0], a
    )


def test_parse_boxes_and_truncation():
    b = wsol.parse_boxes("9.1 105.9 50.4 176.8;168.9 114.4 226.5 135.6")
    np.testing.assert_array_equal(wsol.gt_boxes_int(b), [[9, 105, 50, 176], [168, 114, 226, 135]])
    for bad in ("", "1 2 3", "5 5 1 1"):
        with pytest.raises(ValueError):
            wsol.parse_boxes(bad)


# ------------------------------------------------------------------- independent MaxBoxAccV2 from .npy


def _independent_boxes(q: np.ndarray, cut: int) -> list[tuple[int, int, int, int]]:
    """Boxes of all contours of ``q > cut`` without OpenCV: 8-connected components, plus the holes
    (4-connected background not touching the border; their border box is one pixel larger)."""
    m = q > cut
    h, w = m.shape
    out = []
    for r in regionprops(label(m, connectivity=2)):
        y0, x0, y1, x1 = r.bbox  # exclusive ends = cv2's x + w
        out.append((x0, y0, min(x1, w - 1), min(y1, h - 1)))
    for r in regionprops(label(~m, connectivity=1)):
        y0, x0, y1, x1 = r.bbox
        if y0 > 0 and x0 > 0 and y1 < h and x1 < w:
            out.append((x0 - 1, y0 - 1, min(x1 + 1, w - 1), min(y1 + 1, h - 1)))
    return out or [(0, 0, 0, 0)]


def _pixel_iou(a, b) -> float:
    """IoU of two inclusive pixel boxes by counting pixels."""
    size = max(a[2], a[3], b[2], b[3]) + 2
    ma, mb = np.zeros((size, size), bool), np.zeros((size, size), bool)
    ma[a[1] : a[3] + 1, a[0] : a[2] + 1] = True
    mb[b[1] : b[3] + 1, b[0] : b[2] + 1] = True
    union = (ma | mb).sum()
    return (ma & mb).sum() / union if union else 0.0


def read_wsolevaluation_metadata(folder: Path) -> dict:
    """The four metadata files parsed as wsolevaluation's ``data_loaders`` does (``line.strip('\\n')
    .split(',')`` and ``int()`` of every number: a fractional box coordinate raises ValueError)."""
    ids = [line.strip("\n") for line in (folder / "image_ids.txt").open()]
    labels, sizes, boxes = {}, {}, {}
    for line in (folder / "class_labels.txt").open():
        image_id, label = line.strip("\n").split(",")
        labels[image_id] = int(label)
    for line in (folder / "image_sizes.txt").open():
        image_id, ws, hs = line.strip("\n").split(",")
        sizes[image_id] = (int(ws), int(hs))
    for line in (folder / "localization.txt").open():
        image_id, x0s, y0s, x1s, y1s = line.strip("\n").split(",")
        boxes.setdefault(image_id, []).append((int(x0s), int(y0s), int(x1s), int(y1s)))
    return {"ids": ids, "labels": labels, "sizes": sizes, "boxes": boxes}


def _resize_box(box, image_size, resize_size) -> tuple[int, ...]:
    """wsolevaluation's ``resize_bbox``: scale each coordinate as a float, then ``int()``."""
    sx, sy = resize_size[0] / image_size[0], resize_size[1] / image_size[1]
    return tuple(int(v * s) for v, s in zip(box, (sx, sy, sx, sy), strict=True))


def independent_max_box_acc_v2(npy_dir: Path, metadata: Path) -> tuple[float, dict[int, float]]:
    """(MaxBoxAccV2, per IoU) from exported maps, counted as wsolevaluation's BoxEvaluator does with
    ``multi_contour_eval`` (GT boxes resized from ``image_sizes`` to the map size by ``resize_bbox``)."""
    meta = read_wsolevaluation_metadata(metadata)
    maps = [np.load(npy_dir / f"{name}.npy") for name in meta["ids"]]
    assert len({m.shape for m in maps}) == 1  # wsolevaluation's DataLoader stacks them
    hits = np.zeros((len(maps), 100, 3), bool)
    for i, (name, m) in enumerate(zip(meta["ids"], maps, strict=True)):
        assert (
            m.ndim == 2 and m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1 and not np.isnan(m).any()
        )
        h, w = m.shape
        gt = [_resize_box(b, meta["sizes"][name], (w, h)) for b in meta["boxes"][name]]
        q = (m * 255).astype(np.uint8)
        for k in range(100):
            cut = int(k / 100 * int(q.max()))
            best = max(_pixel_iou(b, g) for b in _independent_boxes(q, cut) for g in gt)
            hits[i, k] = [best >= d / 100 for d in (30, 50, 70)]
    per = {d: float(hits[:, :, j].mean(0).max()) for j, d in enumerate((30, 50, 70))}
    return float(np.mean(list(per.values()))), per


def test_exported_maps_reproduce_max_box_acc_v2_synthetic(tmp_path):
    rng = np.random.default_rng(3)
    ids, labels, boxes, maps, size = [], [], [], [], (60, 50)
    for i in range(10):
        raw = rng.random((7, 7)).astype(np.float32) ** 3
        bx = [
            sorted(rng.uniform(0, size[0], 2)) + sorted(rng.uniform(0, size[1], 2)) for _ in range(1 + i % 3)
        ]
        boxes.append(wsol.gt_boxes_int(np.array([[b[0], b[2], b[1], b[3]] for b in bx])))
        ids.append(f"img{i}.png")
        labels.append(281)
        maps.append(wsol.score_map(raw, *size))
    sel, test = wsol.split_indices(10, 0)
    s = wsol.MethodScores.empty(10)
    for i, m in enumerate(maps):
        s.add(i, m, boxes[i])
        wsol.export_scoremap(tmp_path / "npy", ids[i], m)
    wsol.write_metadata(
        tmp_path / "meta", [ids[i] for i in test], [labels[i] for i in test], size, [boxes[i] for i in test]
    )
    r = wsol.localization_metrics(s, np.ones(10, bool), sel, test)
    v2, per = independent_max_box_acc_v2(tmp_path / "npy", tmp_path / "meta")
    assert per == r["max_box_acc_v2_per_iou"] and v2 == r["max_box_acc_v2"]


def test_write_metadata_writes_integers_and_refuses_fractions(tmp_path):
    wsol.write_metadata(
        tmp_path,
        ["a.JPEG", "b.JPEG"],
        [3, 7],
        (224, 224),
        [np.array([[1, 2, 30, 40]]), np.array([[0, 0, 5, 5], [9, 9, 223, 223]])],
    )
    meta = read_wsolevaluation_metadata(tmp_path)
    assert meta["ids"] == ["a.JPEG", "b.JPEG"] and meta["labels"] == {"a.JPEG": 3, "b.JPEG": 7}
    assert meta["sizes"]["b.JPEG"] == (224, 224) and meta["boxes"]["b.JPEG"] == [
        (0, 0, 5, 5),
        (9, 9, 223, 223),
    ]
    assert (tmp_path / "localization.txt").read_text().splitlines()[0] == "a.JPEG,1,2,30,40"
    with pytest.raises(ValueError, match="integers"):
        wsol.write_metadata(tmp_path, ["a.JPEG"], [3], (224, 224), [np.array([[54.2, 2, 30, 40]])])
    with pytest.raises(ValueError, match="','"):
        wsol.write_metadata(tmp_path, ["a,b.JPEG"], [3], (224, 224), [np.array([[1, 2, 3, 4]])])


def test_resize_bbox_like_wsolevaluation():
    b = wsol.parse_boxes("9.1 105.9 50.4 176.8;0 0 226.9 226.9")
    # int(9.1·224/227) = int(8.98) = 8, int(105.9·224/227) = int(104.50) = 104, ...
    np.testing.assert_array_equal(
        wsol.resize_bbox(b, (227, 227), (224, 224)), [[8, 104, 49, 174], [0, 0, 223, 223]]
    )
    assert [tuple(r) for r in wsol.resize_bbox(b, (227, 227), (224, 224))] == [
        _resize_box(r, (227, 227), (224, 224)) for r in b
    ]
    np.testing.assert_array_equal(
        wsol.resize_bbox([[3, 4, 50, 60]], (224, 224), (224, 224)), [[3, 4, 50, 60]]
    )


def test_upsampling_modes():
    raw = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    cubic = upsample_map(raw, 224, 224, "cubic")
    np.testing.assert_array_equal(cubic, cv2.resize(raw, (224, 224), interpolation=cv2.INTER_CUBIC))
    np.testing.assert_array_equal(upsample_map(raw, 224, 224), cv2.resize(raw, (224, 224)))
    assert not np.array_equal(cubic, upsample_map(raw, 224, 224, "bilinear"))
    sm = wsol.score_map(raw, 224, 224, "cubic")
    assert (
        sm.shape == (224, 224) and sm.min() == 0.0 and sm.max() == 1.0
    )  # cubic overshoot removed by min-max
    with pytest.raises(ValueError, match="unknown upsampling"):
        upsample_map(raw, 10, 10, "lanczos")


def test_top1_loc_is_the_same_with_ground_truth_or_predicted_class_maps():
    """Top-1 Loc needs a right class, where the two maps coincide: only GT-known metrics differ."""
    rng = np.random.default_rng(0)
    n = 40
    correct = rng.random(n) < 0.6
    gt_maps = wsol.MethodScores.empty(n)
    gt_maps.iou_largest[:] = rng.random((n, 1))
    gt_maps.iou_all[:] = gt_maps.iou_largest
    pred_maps = wsol.MethodScores.empty(n)
    pred_maps.iou_largest[:] = np.where(correct[:, None], gt_maps.iou_largest, 0.0)  # wrong class: a miss
    pred_maps.iou_all[:] = pred_maps.iou_largest
    sel, test = wsol.split_indices(n, 0)
    a = wsol.localization_metrics(gt_maps, correct, sel, test)
    b = wsol.localization_metrics(pred_maps, correct, sel, test)
    assert a["top1_loc"] == b["top1_loc"] and a["gt_known_loc"] > b["gt_known_loc"]


def test_cam_weights_the_given_class():
    g = torch.Generator().manual_seed(0)
    f, fc = torch.rand(2, 5, 3, 3, generator=g), torch.randn(10, 5, generator=g)
    got = wsol_eval.cam(f, fc, torch.tensor([4, 7]))
    want = torch.stack([(fc[c].view(5, 1, 1) * f[i]).mean(0) for i, c in enumerate([4, 7])])  # wsolevaluation
    torch.testing.assert_close(got, want)


def test_ancestor_concept_prefers_the_path_then_any_ancestor():
    from hint.hierarchy import Hierarchy

    h = Hierarchy.load()
    tabby, espresso = "n02123045", "n07920052"
    w = {n: h.find(n).wnid for n in ("whole", "carnivore", "artifact", "domestic animal", "feline")}
    assert wsol_eval.ancestor_concept(tabby, [w["whole"], w["carnivore"], w["feline"]], h) == w["feline"]
    assert wsol_eval.ancestor_concept(tabby, [w["domestic animal"], w["artifact"]], h) == w["domestic animal"]
    assert wsol_eval.ancestor_concept(espresso, [w["whole"], w["carnivore"]], h) is None


def test_retraining_uses_the_bank_build_parameters(tmp_path):
    """``fit`` passes the manifest's build parameters that ``train_classifier`` takes (unknown ones are
    ignored), and trains on every image when the build cross-validated its metrics (``folds``)."""
    from hint.bank import ConceptBank
    from hint.build.classifiers import train_classifier
    from hint.build.concepts import ConceptSamples

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 6, generator=g), (torch.arange(400) % 2).float()
    x[:, 0] += 2 * y
    s = ConceptSamples("n0", "n1", x, y, torch.arange(400) // 10, 200, 0, 200)
    bank = ConceptBank.load(
        random_bank(tmp_path / "b1", {"l2": 0.05, "test_fraction": 0.3, "seed": 2, "frobnicate": 1})
    )
    want = train_classifier(x, y, s.image, test_fraction=0.3, seed=2, l2=0.05)
    got = wsol_eval.fit(bank, s)
    torch.testing.assert_close(got.weight, want.weight)
    assert got.f1 == want.f1 and got.n_test == want.n_test > 0
    bank = ConceptBank.load(random_bank(tmp_path / "b2", {"l2": 0.05, "test_fraction": 0.3, "folds": 5}))
    got = wsol_eval.fit(bank, s)
    want = train_classifier(x, y, s.image, test_fraction=0.0, l2=0.05)
    torch.testing.assert_close(got.weight, want.weight)
    assert got.n_train == want.n_train > 0.7 * len(y)


def test_wsol_module_is_metrics_only():
    tree = ast.parse((REPO / "hint" / "evaluation" / "wsol" / "metrics.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if m == "torch" or m.startswith(("hint.build", "hint.bank"))], imported


# ----------------------------------------------------------------------------------- end to end


def _check_report(rep: dict, tmp: Path) -> None:
    meta = tmp / "npy" / "metadata" / "ILSVRC"
    for m in ("HINT-whole", "HINT-ancestor", "CAM"):
        r = rep["methods"][m]
        for k in ("gt_known_loc", "top1_loc", "max_box_acc", "max_box_acc_v2", "pointing_game", "mean_iou"):
            assert 0.0 <= r[k] <= 1.0
        assert (
            r["top1_loc"] <= min(r["gt_known_loc"], r["top1_cls"]) and r["gt_known_loc"] <= r["max_box_acc"]
        )
        npy = tmp / "npy" / m
        v2, per = independent_max_box_acc_v2(npy, meta / "test")
        assert per == {int(k): v for k, v in r["max_box_acc_v2_per_iou"].items()}
        assert v2 == r["max_box_acc_v2"], m
        sm = np.load(npy / "chelsea.png.npy")
        assert sm.shape == (224, 224) and sm.dtype == np.float32 and sm.max() == 1.0 and sm.min() == 0.0
    test, val = read_wsolevaluation_metadata(meta / "test"), read_wsolevaluation_metadata(meta / "val")
    assert len(test["ids"]) == rep["data"]["test"] and len(val["ids"]) == rep["data"]["selection"]
    assert not set(test["ids"]) & set(val["ids"])
    # sizes are the maps' (224 x 224), so resize_bbox to wsolevaluation's 224 leaves the integer boxes as written
    assert set(test["sizes"].values()) == {(224, 224)}
    for name, boxes in test["boxes"].items():
        assert [_resize_box(b, test["sizes"][name], (224, 224)) for b in boxes] == boxes
    for f in ("results.md", "curves.png", "overlays.png"):
        assert (tmp / "out" / f).stat().st_size > 1000
    md = (tmp / "out" / "results.md").read_text()
    assert "| HINT-whole |" in md and rep["command"] in md


def test_evaluate_wsol_end_to_endrandom_bank(tiny_boxes, tmp_path, capsys):
    """Always runnable: a random bank (no step-1 cache, so no retraining) on the tiny box dataset."""
    bank = random_bank(tmp_path / "bank")
    rep = run_evaluate_wsol(tmp_path, bank, tiny_boxes, "--no-retrain")
    assert rep["data"]["images"] == 6 and rep["data"]["selection"] == 3 and rep["data"]["test"] == 3
    p = rep["protocol"]
    assert p["map_size"] == [14, 14] and p["cam_map_size"] == [7, 7]
    assert p["eval_size"] == [224, 224] and p["upsample"] == "cubic"
    assert list(rep["methods"]) == [
        "HINT-whole (served)",
        "HINT-ancestor (served)",
        "HINT-whole",
        "HINT-ancestor",
        "CAM",
        "CAM (predicted class)",
        "Grad-CAM (grad-cam)",
        "Grad-CAM++ (grad-cam)",
        "LayerCAM (grad-cam)",
    ]
    # a bank without a localisation head serves its own layer's maps: the served rows are its classifiers'
    for kind in ("whole", "ancestor"):
        assert rep["methods"][f"HINT-{kind} (served)"]["max_box_acc_v2"] == pytest.approx(
            rep["methods"][f"HINT-{kind}"]["max_box_acc_v2"], abs=0.02
        )
    assert rep["served"]["head"] is None and set(rep["served"]["rows"]) == {
        "HINT-whole (served)",
        "HINT-ancestor (served)",
    }
    assert not rep["retrain"]["done"]
    assert rep["methods"]["CAM"]["top1_cls"] == 0.0  # test half: chelsea (→ Egyptian cat) ×2, rocket (→ rig)
    _check_report(rep, tmp_path)
    assert (
        rep["command"].startswith("python -m offline evaluate-wsol --bank ")
        and "--no-retrain" in rep["command"]
    )
    assert "--no-progress" not in rep["command"]


def test_cam_is_made_for_the_ground_truth_class(tiny_boxes, tmp_path):
    """The exported CAM equals an independent CAM of the ground-truth class (cubic upsampling to 224,
    min-max); ``CAM (predicted class)`` differs on a misclassified image."""
    from hint.backbones import get_backbone
    from hint.build.datasets import load_rgb

    bank = random_bank(tmp_path / "bank")
    run_evaluate_wsol(
        tmp_path, bank, tiny_boxes, "--no-retrain", "--export-methods", "CAM", "CAM (predicted class)"
    )
    bb = get_backbone("efficientnet_lite0")
    feats = {}
    bb.model._head_act.register_forward_hook(lambda _m, _i, o: feats.setdefault("f", o))
    with torch.no_grad():
        logits = bb.model(bb.preprocess([load_rgb(tiny_boxes / "images" / "chelsea.png")]))
    assert int(logits.argmax()) != 281  # misclassified (Egyptian cat)
    f, w = feats["f"][0].double().numpy(), bb.model._fc.weight.detach().double().numpy()
    for cls, folder in ((281, "CAM"), (int(logits.argmax()), "CAM_predicted_class")):
        raw = np.einsum("chw,c->hw", f, w[cls]).astype(np.float32)
        up = cv2.resize(raw, (224, 224), interpolation=cv2.INTER_CUBIC)
        want = (up - up.min()) / (up.max() - up.min())
        np.testing.assert_allclose(np.load(tmp_path / "npy" / folder / "chelsea.png.npy"), want, atol=1e-4)
    gt, pred = (np.load(tmp_path / "npy" / d / "chelsea.png.npy") for d in ("CAM", "CAM_predicted_class"))
    assert np.abs(gt - pred).max() > 0.05


def _tiny_build(data: Path) -> dict:
    """Build parameters of a bank built on the tiny box set ``data`` (step 1 is then recomputed from it)."""
    return {
        "method": "guided",
        "threshold": 0.5,
        "quantile": 0.99,
        "max_positives": 4000,
        "test_fraction": 0.2,
        "l2": 1e-3,
        "seed": 0,
        "data": str(data),
        "n_images": 6,
        "unreadable": 0,
    }


def test_retrained_rows_recompute_step1_from_the_build_data(tiny_boxes, tmp_path):
    """No cached table: step 1 runs again on the bank's build data (here the tiny set), is cached, and
    the (x%), faithfulness and ``--step1-methods`` rows appear; a second run reuses the cache."""
    bank = random_bank(tmp_path / "bank", _tiny_build(tiny_boxes))
    cache = tmp_path / "cache"
    args = ("--percents", "20", "--draws", "1", "--faithfulness-k", "10", "--cache", str(cache))
    rep = run_evaluate_wsol(tmp_path, bank, tiny_boxes, *args, "--step1-methods", "gradient")
    rt = rep["retrain"]
    assert rt["done"] and rt["table"].endswith(".safetensors")
    tables = sorted(p.name for p in cache.iterdir())
    bank_id = json.loads((bank / "manifest.json").read_text())["bank_id"]
    assert tables == [f"regions-wsol-{bank_id}-gradient.safetensors", f"regions-wsol-{bank_id}.safetensors"]
    for m in (
        "HINT-whole (20%)",
        "HINT-ancestor (20%)",
        "whole · shapley top-10",
        "ancestor · random top-10 s0",
        "HINT-whole [step 1: gradient]",
        "HINT-ancestor [step 1: gradient]",
    ):
        assert m in rep["methods"], m
    assert rep["variants"]["shapley 20%"]["k"] == 22 and rep["extra_variants"]["step 1: gradient"]["done"]
    assert set(rt["concepts"]) == {"whole", "carnivore", "artifact"}  # espresso has no bank concept above it
    assert rep["ancestors"]["fallback_to_whole"] == 2
    assert (tmp_path / "out" / "faithfulness.png").is_file()
    _check_report(rep, tmp_path)
    again = run_evaluate_wsol(tmp_path, bank, tiny_boxes, *args, "--no-recompute-regions")
    assert (
        again["retrain"]["done"]
        and again["methods"]["HINT-whole (20%)"] == rep["methods"]["HINT-whole (20%)"]
    )


def test_layer_and_fused_rows(tiny_boxes, tmp_path):
    """``--layers``/``--fuse``/``--whole-negatives``: classifiers fit at another layer on that layer's step-1
    table (recomputed from the build data, cached under the layer's name), its maps at its own grid, the
    fused rows, and HINT-whole rows with ``whole`` trained against background regions only."""
    bank = random_bank(tmp_path / "bank", _tiny_build(tiny_boxes))
    cache = tmp_path / "cache"
    rep = run_evaluate_wsol(
        tmp_path,
        bank,
        tiny_boxes,
        "--no-retrain",
        "--cache",
        str(cache),
        "--layers",
        "_blocks.5._act0",
        "--fuse",
        "_blocks.10+_blocks.5._act0",
        "--whole-negatives",
        "background",
        "--export-methods",
        "all",
    )
    layers = rep["extra_variants"]["layers"]
    assert layers["_blocks.5._act0"]["done"] and layers["_blocks.5._act0"]["map_size"] == [28, 28]
    assert layers["_blocks.5._act0"]["neurons"] == 240 and layers["_blocks.10"]["classifiers"] == "the bank's"
    assert layers["_blocks.10"]["whole_shares"] == {"sibling": 0.0, "background": 1.0, "other": 0.0}
    bank_id = json.loads((bank / "manifest.json").read_text())["bank_id"]
    assert sorted(p.name for p in cache.iterdir()) == [
        f"regions-wsol-{bank_id}-at-_blocks.5._act0.safetensors",
        f"regions-wsol-{bank_id}.safetensors",
    ]
    fused, neg = "fused _blocks.10+_blocks.5._act0", "negatives: background"
    rows = [
        f"HINT-whole [{neg}]",
        "HINT-whole [layer _blocks.5._act0]",
        "HINT-ancestor [layer _blocks.5._act0]",
        f"HINT-whole [layer _blocks.5._act0, {neg}]",
        f"HINT-whole [{fused}]",
        f"HINT-ancestor [{fused}]",
        f"HINT-whole [{fused}, {neg}]",
    ]
    assert list(rep["methods"])[9:] == rows  # after the served, CAM and the default --baselines rows
    assert rep["methods"][rows[4]]["variant"] == fused
    for m in rows:
        assert np.load(tmp_path / "npy" / wsol_eval.slug(m) / "chelsea.png.npy").shape == (224, 224)
    assert rep["bootstrap"]["minus_cam_ci95"][rows[4]]
    # the background-only whole map differs from the bank's whole map
    a, b = (
        np.load(tmp_path / "npy" / wsol_eval.slug(m) / "chelsea.png.npy") for m in ("HINT-whole", rows[0])
    )
    assert np.abs(a - b).max() > 0.01


def test_concept_sets_with_other_shares_keep_only_those_negatives(tmp_path):
    from hint.bank import ConceptBank
    from hint.build.concepts import KIND, RegionTable
    from hint.hierarchy import Hierarchy

    h = Hierarchy.load()
    bank = ConceptBank.load(random_bank(tmp_path / "bank"))  # whole, animal, carnivore, artifact
    dog, bird, car = (h.find(n).leaves[0] for n in ("dog", "bird", "car"))
    g = torch.Generator().manual_seed(0)
    table = RegionTable(
        torch.randn(16, 112, generator=g).half(),
        torch.arange(4).repeat_interleave(4),
        torch.tensor([1, 1, 0, 0] * 4, dtype=torch.bool),
        torch.tensor([dog, bird, car, dog]),
    )
    w = h.find("carnivore").wnid
    default = wsol_eval.concept_sets(bank, table, [w], h)[w]
    only_bg = wsol_eval.concept_sets(bank, table, [w], h, {"sibling": 0.0, "background": 1.0, "other": 0.0})[
        w
    ]
    assert {int(k) for k in default.kind.unique()} == set(KIND.values())
    assert {int(k) for k in only_bg.kind.unique()} == {KIND["positive"], KIND["background"]}


def test_fuse_averages_maps_on_the_finest_grid():
    from hint.evaluation.wsol.run import fuse

    coarse = np.random.default_rng(0).random((2, 7, 7)).astype(np.float32)
    fine = np.random.default_rng(1).random((2, 14, 14)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(coarse)[:, None], size=(14, 14), mode="bilinear")[
        :, 0
    ]
    np.testing.assert_allclose(fuse([coarse, fine]), (up.numpy() + fine) / 2, atol=1e-6)
    np.testing.assert_allclose(fuse([np.full((1, 7, 7), 0.2), np.full((1, 28, 28), 0.6)]), 0.4, atol=1e-6)


def test_concept_maps_are_the_classifier_at_the_layer(tiny_boxes):
    from hint.backbones import get_backbone
    from hint.build.datasets import load_rgb
    from hint.evaluation.wsol.run import concept_maps

    bb = get_backbone("efficientnet_lite0", "_blocks.5._act0")
    anns = wsol.load_annotations(tiny_boxes / "annotations.csv", tiny_boxes)[:3]
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(2, 240, generator=g) * 0.1, torch.tensor([0.3, -0.2])
    maps, zero = concept_maps(
        bb, anns, weight, bias, [torch.tensor([0, 1, 1]), torch.zeros(3, dtype=torch.long)], 2
    )
    feats = {}
    bb.layer_module().register_forward_hook(lambda _m, _i, o: feats.setdefault("z", o))
    with torch.no_grad():
        bb.model(bb.preprocess([load_rgb(anns[2].path)]))
    want = torch.sigmoid(torch.einsum("chw,c->hw", feats["z"][0], weight[1]) + bias[1])
    assert maps.shape == zero.shape == (3, 28, 28)
    np.testing.assert_allclose(maps[2], want.numpy(), atol=1e-5)
    np.testing.assert_allclose(maps[0], zero[0], atol=1e-6)
    assert np.abs(maps[2] - zero[2]).max() > 1e-3


def test_evaluate_wsol_end_to_end_committed_bank(tiny_boxes, tmp_path):
    bank = REPO / "model_store" / "hint-bank"
    if not (bank / "manifest.json").is_file():
        pytest.skip(
            "model_store/hint-bank is not built (python -m offline build ... --out model_store/hint-bank)"
        )
    # the step-1 table is used when cached (model_store/.hint-cache); recomputing it takes minutes: not here
    rep = run_evaluate_wsol(
        tmp_path, bank, tiny_boxes, "--percents", "20", "--draws", "1", "--no-recompute-regions"
    )
    _check_report(rep, tmp_path)
    if rep["retrain"]["done"]:
        for m in (
            "HINT-whole (20%)",
            "HINT-ancestor (20%)",
            "whole · shapley top-20",
            "ancestor · random top-20 s0",
        ):
            assert m in rep["methods"]
        assert (tmp_path / "out" / "faithfulness.png").is_file()
        # retraining on all neurons gives the bank's classifiers back, or (x%) rows get a (100%) reference row
        if max(rep["retrain"]["reproduction_rel_max_abs_diff"].values()) > 1e-3:
            assert "HINT-whole (100%)" in rep["methods"] and 100 in rep["retrain"]["percents"]
    else:
        assert "no cached step-1 region table" in rep["retrain"]["reason"]
        assert "HINT-whole (20%)" not in rep["methods"]


def test_cli_errors(tiny_boxes, tmp_path, capsys):
    bank = random_bank(tmp_path / "bank")
    assert (
        main(["evaluate-wsol", "--bank", str(bank), "--data", str(tmp_path / "none"), "--out", str(tmp_path)])
        == 2
    )
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("file,wnid,boxes_xyxy\nchelsea.png,n02123045,1 2 3\n")
    argv = ["evaluate-wsol", "--bank", str(bank), "--data", str(tiny_boxes), "--annotations", str(bad)]
    assert main(argv) == 2
    assert "bad boxes_xyxy" in capsys.readouterr().err
    argv = ["evaluate-wsol", "--bank", str(bank), "--data", str(tiny_boxes), "--out", str(tmp_path / "o")]
    assert main([*argv, "--layers", "_blocks.99"]) == 2
    assert "has no layer _blocks.99" in capsys.readouterr().err
    assert main([*argv, "--fuse", "_blocks.10"]) == 2
    assert "two or more layers" in capsys.readouterr().err


@pytest.mark.shared
def test_shared_annotations_parse():
    csv = SHARED_BOXES / "annotations.csv"
    if not csv.is_file():
        pytest.skip("../shared/data/imagenet-val-boxes is absent")
    anns = wsol.load_annotations(csv, SHARED_BOXES)
    assert len(anns) == 1300 and len({a.wnid for a in anns}) == 725
    for a in anns:
        assert (a.width, a.height) == (227, 227)
        assert (
            (a.boxes >= 0).all() and (a.boxes[:, [0, 2]] <= 227).all() and (a.boxes[:, [1, 3]] <= 227).all()
        )
    with Image.open(anns[0].path) as im:
        assert im.size == (227, 227)


def test_bootstrap_intervals():
    w = stats.bootstrap_weights(50, draws=200, seed=0)
    assert w.shape == (200, 50) and (w.sum(1) == 50).all()
    s = wsol.MethodScores.empty(100, 3)
    s.iou_largest[:, 1] = s.iou_all[:, 1] = 1.0
    s.iou_largest[:50, 0] = 1.0  # threshold 0 localises half of the images
    test = np.arange(50, 100)
    b = wsol.bootstrap_metrics(s, np.ones(100, bool), test, 1, w)
    assert wsol.ci95(b["gt_known_loc"]) == [1.0, 1.0] and wsol.ci95(b["max_box_acc_v2"]) == [1.0, 1.0]
    s.iou_largest[50:75, 1] = 0.0  # half the test images now miss at the operating threshold
    b = wsol.bootstrap_metrics(s, np.ones(100, bool), test, 1, w)
    lo, hi = wsol.ci95(b["gt_known_loc"])
    assert lo < 0.5 < hi and hi - lo < 0.35


def test_evaluate_wsol_flags_are_the_eval_config_fields():
    """``offline evaluate-wsol``: one flag per EvalConfig option field, with its default (``--bank``: the
    default bank), help and choices; ``--no-x`` for a field that is True by default; the parsed flags give
    the config, and the recorded command names what differs from the defaults."""
    import argparse
    from dataclasses import MISSING

    from hint._utils.options import flag_name, from_args, options
    from offline.__main__ import build_parser
    from offline.evaluate_wsol import command_line

    parser, _ = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
        "evaluate-wsol"
    ]
    actions = {a.dest: a for a in sub._actions if a.dest != "help"}
    fields = options(wsol_eval.EvalConfig)
    assert [a.dest for a in actions.values()] == [f.name for f in fields]  # the fields' order is the flags'
    for f in fields:
        a = actions[f.name]
        assert a.option_strings == [flag_name(f)] and a.help == f.metadata["help"]
        want = Path("model_store/hint-bank") if f.name == "bank" else f.default
        if f.default is not MISSING or f.name == "bank":
            assert a.default == (list(want) if isinstance(want, tuple) else want), f.name
        assert a.required == (f.default is MISSING and f.name != "bank")
    args = parser.parse_args(
        ["evaluate-wsol", "--data", "d", "--no-retrain", "--percents", "10", "--jobs", "2"]
    )
    cfg = from_args(wsol_eval.EvalConfig, args, command=command_line(args))
    assert (cfg.retrain, cfg.percents, cfg.jobs, cfg.progress, cfg.data) == (False, [10], 2, True, Path("d"))
    assert cfg.command == (
        "python -m offline evaluate-wsol --bank model_store/hint-bank --data d --out docs/wsol "
        "--percents 10 --no-retrain --jobs 2"
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate-wsol", "--data", "d", "--step1-methods", "nothing"])

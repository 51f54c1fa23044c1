"""The pytorch-grad-cam baselines (hint.evaluation.cam_baselines) and their rows in ``python -m offline evaluate-wsol``.

The Grad-CAM map is checked against an independent computation with plain torch autograd; every
method's low-resolution map against the library's own ``__call__`` output (resized and min-maxed as the
library does), on a toy CNN small enough for Score-CAM.
"""

from __future__ import annotations

import dataclasses
import sys
import types

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from support.wsol import random_bank, run_evaluate_wsol

from hint.evaluation.cam_baselines import BASELINES, DEFAULT, library_cams, library_version
from hint.evaluation.wsol import metrics as wsol
from hint.evaluation.wsol import run as wsol_eval


@pytest.fixture(scope="module")
def boxes(request):
    """test_wsol's 6 images at 227×227 (chelsea, coffee, rocket and their mirror images) with a box CSV."""
    return request.getfixturevalue("tiny_boxes")


def _minmax(m: np.ndarray) -> np.ndarray:
    m = m - m.min()
    return m / (1e-7 + m.max())


def _grad_cam(bb, image: Image.Image, label: int) -> np.ndarray:
    """ReLU(Σ_c mean_xy(∂y_label/∂A_c) · A_c) at ``_head_act``, min-max normalised: plain autograd."""
    feats = {}
    hook = bb.model._head_act.register_forward_hook(lambda _m, _i, o: feats.setdefault("a", o))
    try:
        logits = bb.model(bb.preprocess([image]))
    finally:
        hook.remove()
    (g,) = torch.autograd.grad(logits[0, label], feats["a"])
    cam = torch.relu((g.mean((2, 3), keepdim=True) * feats["a"]).sum(1))[0]
    return _minmax(cam.detach().double().numpy())


def test_grad_cam_is_the_gradient_weighted_map_of_the_ground_truth_class(boxes):
    from hint.backbones import get_backbone
    from hint.build.datasets import load_rgb

    bb = get_backbone("efficientnet_lite0")
    anns = wsol.load_annotations(boxes / "annotations.csv", boxes)[:3]
    other = [dataclasses.replace(a, label=812) for a in anns]  # space shuttle instead of tabby/espresso
    got = library_cams(bb, anns + other, ["gradcam"], batch_size=4)["Grad-CAM (grad-cam)"]
    assert got.shape == (6, 7, 7) and got.dtype == np.float32
    for i, a in enumerate(anns + other):
        np.testing.assert_allclose(got[i], _grad_cam(bb, load_rgb(a.path), a.label), atol=1e-4)
    assert np.abs(got[:3] - got[3:]).max(axis=(1, 2)).min() > 0.1  # another class, another map
    # the model is left as it was: no hooks, parameters trainable and without gradients
    assert not any(m._forward_hooks for m in bb.model.modules())
    assert all(p.requires_grad and p.grad is None for p in bb.model.parameters())


class _Toy(torch.nn.Module):
    """3×32×32 → conv (stride 4) → ReLU ``act`` (6 channels, 8×8) → mean → 5 logits."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 5, stride=4, padding=2)
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(6, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def test_maps_are_the_library_output_before_its_resize(tmp_path, monkeypatch):
    """Each method's map at the layer's grid, resized bilinearly to the input and min-maxed, is the
    library's ``__call__`` output (its backward stopped at the layer: the same gradients)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    rng = np.random.default_rng(0)
    anns = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(tmp_path / f"{i}.png")
        anns.append(
            wsol.Annotation(
                f"{i}.png", tmp_path / f"{i}.png", "n0", i + 1, 40, 40, np.zeros((1, 4)), np.zeros((1, 4))
            )
        )
    model = _Toy().eval()

    def preprocess(ims):
        return (
            torch.from_numpy(np.stack([np.asarray(im.resize((32, 32))) for im in ims])).permute(0, 3, 1, 2)
            / 255
        )

    bb = types.SimpleNamespace(name="toy", model=model, preprocess=preprocess)
    monkeypatch.setitem(wsol_eval.CAM_LAYERS, "toy", ("act", "fc"))
    got = library_cams(bb, anns, list(BASELINES), batch_size=2)
    x, targets = (
        preprocess([Image.open(a.path) for a in anns]),
        [ClassifierOutputTarget(a.label) for a in anns],
    )
    for m, (row, cls) in BASELINES.items():
        assert got[row].shape == (3, 8, 8) and got[row].min() >= 0 and got[row].max() <= 1, m
        cam = getattr(pytorch_grad_cam, cls)(model, [model.act])
        cam.batch_size = 2
        want = cam(x, targets)
        cam.activations_and_grads.release()
        up = np.stack([_minmax(cv2.resize(g, (32, 32))) for g in got[row]])
        np.testing.assert_allclose(up, want, atol=1e-5, err_msg=m)
    assert len({got[BASELINES[m][0]].tobytes() for m in BASELINES}) == len(BASELINES)
    with pytest.raises(ValueError, match="unknown baseline frobcam"):
        library_cams(bb, anns, ["frobcam"])
    with pytest.raises(ValueError, match="no CAM layer known for toy2"):
        library_cams(types.SimpleNamespace(name="toy2", model=model), anns, ["gradcam"])
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # not installed
    with pytest.raises(ValueError, match=r"need grad-cam \(pip install -e '.\[eval\]'\)"):
        library_cams(bb, anns, ["gradcam"])


def test_library_rows_in_the_wsol_report(boxes, tmp_path):
    """The default --baselines rows follow the CAM rows with every field of the protocol, bootstrap
    intervals and differences to CAM; their exported score maps are the maps upsampled as CAM's are."""
    from hint.backbones import get_backbone

    bank = random_bank(tmp_path / "bank")
    rep = run_evaluate_wsol(tmp_path, bank, boxes, "--no-retrain", "--export-methods", "all")
    rows = [BASELINES[m][0] for m in DEFAULT]
    assert list(rep["methods"])[4:9] == ["CAM", "CAM (predicted class)", *rows]
    cam = rep["methods"]["CAM"]
    for m in rows:
        r = rep["methods"][m]
        assert r["variant"] == library_version() and r["map"] == "library" and set(r) == set(cam), m
        assert 0 <= r["gt_known_loc"] <= r["max_box_acc"] <= 1 and r["top1_cls"] == cam["top1_cls"]
        assert (
            set(rep["bootstrap"]["ci95"][m]) == set(rep["bootstrap"]["minus_cam_ci95"][m]) >= {"gt_known_loc"}
        )
        assert f"| {m} |" in (tmp_path / "out" / "results.md").read_text()
        assert rep["timings_s"][f"baseline {next(k for k, v in BASELINES.items() if v[0] == m)}"] > 0
    assert rep["extra_variants"]["baselines"]["layer"] == "_head_act"
    assert len({wsol_eval.slug(m) for m in rep["methods"]}) == len(rep["methods"])  # one export folder each
    bb = get_backbone("efficientnet_lite0")
    anns = wsol.load_annotations(boxes / "annotations.csv", boxes)[:1]
    low = library_cams(bb, anns, ["gradcam++"])["Grad-CAM++ (grad-cam)"][0]
    want = wsol.score_map(low, 224, 224, "cubic")
    np.testing.assert_allclose(
        np.load(tmp_path / "npy" / wsol_eval.slug(rows[1]) / "chelsea.png.npy"), want, atol=1e-5
    )
    none = run_evaluate_wsol(tmp_path, bank, boxes, "--no-retrain", "--baselines")
    assert list(none["methods"])[2:] == ["HINT-whole", "HINT-ancestor", "CAM", "CAM (predicted class)"]
    assert "--baselines" in none["command"] and "baselines" not in none["extra_variants"]

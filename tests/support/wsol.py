"""A tiny WSOL box set and a random-classifier bank, for the evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from offline.__main__ import main

#: skimage photo -> (WNID, class index, hand-made box(es) in 227x227 pixels)
TINY = {
    "chelsea": ("n02123045", 281, "10 6 215 226"),
    "coffee": ("n07920052", 967, "14 10 215 214"),
    "rocket": ("n04266014", 812, "95 20 160 200;40 120 90 226"),
}


def tiny_boxes(root: Path) -> Path:
    """6 images (3 photos and their mirror images) stored at 227x227 under ``root``, with a box CSV."""
    from skimage import data

    (root / "images").mkdir()
    rows = ["file,wnid,label_index,class_name,width,height,original_width,original_height,boxes_xyxy"]
    for name, (wnid, idx, boxes) in TINY.items():
        im = Image.fromarray(getattr(data, name)()).convert("RGB")
        ow, oh = im.size
        im = im.resize((227, 227), Image.Resampling.BILINEAR)
        flipped = ";".join(
            f"{226 - float(b.split()[2]):g} {b.split()[1]} {226 - float(b.split()[0]):g} {b.split()[3]}"
            for b in boxes.split(";")
        )
        for suffix, img, bx in (
            ("", im, boxes),
            ("_flip", im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flipped),
        ):
            img.save(root / "images" / f"{name}{suffix}.png")
            rows.append(f"{name}{suffix}.png,{wnid},{idx},{name},227,227,{ow},{oh},{bx}")
    (root / "annotations.csv").write_text("\n".join(rows) + "\n")
    return root


def run_evaluate_wsol(tmp: Path, bank: Path, data: Path, *extra: str) -> dict:
    """``offline evaluate-wsol`` on ``data`` with maps exported and 2 overlays; its results.json."""
    out = tmp / "out"
    argv = [
        "evaluate-wsol",
        "--bank",
        str(bank),
        "--data",
        str(data),
        "--out",
        str(out),
        "--export-npy",
        str(tmp / "npy"),
        "--overlays",
        "2",
        "--no-progress",
        *extra,
    ]
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


def random_bank(folder: Path, build: dict | None = None) -> Path:
    """A bank with random classifiers; ``build`` becomes its manifest's build parameters."""
    from hint.bank import ConceptBank
    from hint.hierarchy import Hierarchy

    h = Hierarchy.load()
    names = ["whole", "animal", "carnivore", "artifact"]
    g = torch.Generator().manual_seed(0)
    e, d = len(names), 112
    concepts = [
        {"wnid": h.find(n).wnid, "name": n, "path": [h[a].name for a in h.path(h.find(n).wnid)], "f1": 0.5}
        for n in names
    ]
    for c in concepts:
        c["parent"] = h.group_parent(c["wnid"], [x["wnid"] for x in concepts])
    meta = {
        "backbone": "efficientnet_lite0",
        "layer": "_blocks.10",
        "channels": d,
        **({"build": build} if build else {}),
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
    )
    return bank.save(folder)

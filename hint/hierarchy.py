"""The WordNet concept hierarchy above the 1000 ImageNet-1k classes (a DAG rooted at ``entity``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

ROOT = "n00001740"


@dataclass(frozen=True)
class Concept:
    """One WordNet synset: a leaf class (``index`` set) or one of its ancestors."""

    wnid: str
    name: str
    lemmas: tuple[str, ...]
    gloss: str
    parents: tuple[str, ...]
    children: tuple[str, ...]
    depth: int
    index: int | None
    leaves: tuple[int, ...]

    @property
    def is_class(self) -> bool:
        return self.index is not None


class Hierarchy:
    """Concept lookup and navigation over the committed WordNet/ImageNet graph."""

    def __init__(self, data: dict):
        self.root = data["root"]
        self.classes: list[str] = data["classes"]
        self.class_names: list[str] = data["class_names"]
        self._synsets = {
            w: Concept(
                wnid=w,
                name=s["name"],
                lemmas=tuple(s["lemmas"]),
                gloss=s["gloss"],
                parents=tuple(s["parents"]),
                children=tuple(s["children"]),
                depth=s["depth"],
                index=s["index"],
                leaves=tuple(s["leaves"]),
            )
            for w, s in data["synsets"].items()
        }
        self._above: dict[str, frozenset[str]] = {}  # ancestors, memoised by is_ancestor
        self._by_name: dict[str, list[str]] = {}
        for c in self._synsets.values():
            for n in {c.name, *c.lemmas}:
                self._by_name.setdefault(n.lower(), []).append(c.wnid)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Hierarchy:
        """Load a hierarchy file; the bundled one when ``path`` is None (cached)."""
        if path is None:
            return _default()
        return cls(json.loads(Path(path).read_text()))

    def __len__(self) -> int:
        return len(self._synsets)

    def __contains__(self, wnid: str) -> bool:
        return wnid in self._synsets

    def __getitem__(self, wnid: str) -> Concept:
        try:
            return self._synsets[wnid]
        except KeyError:
            raise KeyError(f"unknown concept {wnid!r}: not an ImageNet class or ancestor") from None

    def __iter__(self):
        return iter(self._synsets.values())

    def find(self, query: str) -> Concept:
        """A concept by WNID (``n02084071``), name or lemma (``dog``); prefers the one with more leaves."""
        q = query.strip()
        if q in self._synsets:
            return self._synsets[q]
        hits = self._by_name.get(q.lower().replace("_", " "))
        if not hits:
            raise KeyError(f"unknown concept {query!r}: no ImageNet class or ancestor has that WNID or name")
        return max((self._synsets[w] for w in hits), key=lambda c: (len(c.leaves), -c.depth))

    def class_concept(self, index: int) -> Concept:
        """The leaf concept of class ``index`` (torchvision's sorted-WNID order)."""
        return self._synsets[self.classes[index]]

    def ancestors(self, wnid: str) -> list[str]:
        """All ancestors of ``wnid`` (every parent path), nearest first, ``entity`` last."""
        seen: dict[str, int] = {}
        frontier = list(self[wnid].parents)
        dist = 1
        while frontier:
            nxt = []
            for w in frontier:
                if w not in seen:
                    seen[w] = dist
                    nxt.extend(self._synsets[w].parents)
            frontier, dist = nxt, dist + 1
        return sorted(seen, key=lambda w: (seen[w], -self._synsets[w].depth, w))

    def path(self, wnid: str) -> list[str]:
        """The most specific chain from ``wnid`` up to ``entity`` (``wnid`` first).

        At each step it follows the deepest parent (tabby → domestic cat → cat → feline …, not
        → domestic animal), so the chain passes through the taxonomic levels.
        """
        chain = [wnid]
        while chain[-1] != self.root:
            c = self._synsets[chain[-1]]
            chain.append(max(c.parents, key=lambda p: (self._synsets[p].depth, p)))
        return chain

    def is_ancestor(self, ancestor: str, wnid: str) -> bool:
        if wnid not in self._above:
            self._above[wnid] = frozenset(self.ancestors(wnid))
        return ancestor == wnid or ancestor in self._above[wnid]

    def leaves(self, wnid: str) -> list[int]:
        """Class indices of the ImageNet classes under ``wnid`` (itself included when a class)."""
        return list(self[wnid].leaves)

    def lowest_common_ancestor(self, wnids: list[str]) -> str:
        """The deepest concept whose leaves include every concept's leaves."""
        need = set().union(*(self[w].leaves for w in wnids))
        best = self.root
        for c in self._synsets.values():
            if need <= set(c.leaves) and c.depth > self[best].depth:
                best = c.wnid
        return best

    def group_parent(self, wnid: str, wnids: list[str]) -> str:
        """The deepest other concept of ``wnids`` above ``wnid`` (``entity`` when none is)."""
        above = [a for a in wnids if a != wnid and self.is_ancestor(a, wnid)]
        return max(above, key=lambda a: self[a].depth) if above else self.root

    def sibling_groups(self, wnids: list[str]) -> list[list[str]]:
        """Group concepts whose nearest selected ancestor is the same (the paper's sibling groups).

        A concept's group parent is the deepest other concept of ``wnids`` above it (``entity`` when
        none is). Returns the groups, each sorted, in the order of their parents' depth.
        """
        chosen = list(dict.fromkeys(wnids))
        groups: dict[str, list[str]] = {}
        for w in chosen:
            groups.setdefault(self.group_parent(w, chosen), []).append(w)
        order = sorted(groups, key=lambda p: (self[p].depth, p))
        return [sorted(groups[p]) for p in order]


@lru_cache(maxsize=1)
def _default() -> Hierarchy:
    text = resources.files("hint.data").joinpath("imagenet_hierarchy.json").read_text()
    return Hierarchy(json.loads(text))

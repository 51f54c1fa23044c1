"""Concept hierarchies: the WordNet DAG above the 1000 ImageNet-1k classes (the default, rooted at
``entity``), or your own, from a JSON file (:meth:`Hierarchy.from_user`) or a nested folder tree
(:meth:`Hierarchy.from_folders`); docs/custom.md describes both formats.

A hierarchy is a DAG of concepts with one root. Its *classes* are the model's outputs, in output
order (``Concept.index``); every concept knows the classes under it (``Concept.leaves``). Concept ids
are WNIDs in the default hierarchy and any strings in yours (``Concept.wnid`` holds either).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from hint._utils.io import atomic_write_text

ROOT = "n00001740"
#: the user format (:meth:`Hierarchy.from_user`, written by :meth:`Hierarchy.to_json`)
FORMAT = "hint-hierarchy/1"
#: ``"classes": "imagenet"`` (or no ``classes``): the 1000 ImageNet-1k WNIDs in torchvision's sorted order
IMAGENET = "imagenet"
#: the root's id when a user hierarchy names none
DEFAULT_ROOT = "root"
IMAGE_EXTS = {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
_SPEC_KEYS = ("format", "root", "classes", "concepts")
_ENTRY_KEYS = ("name", "parents", "aliases", "description")


@dataclass(frozen=True)
class Concept:
    """One concept: a class (``index`` set, a WordNet leaf synset by default) or one of its ancestors."""

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
    """Concept lookup and navigation over a hierarchy (default: the committed WordNet/ImageNet graph).

    ``data`` is the compiled form (``root``, ``classes``, ``class_names``, ``synsets`` with every
    node's parents, children, depth, index and leaves), as in ``hint/data/imagenet_hierarchy.json``;
    :meth:`from_user` and :meth:`from_folders` compile a user hierarchy into it.
    """

    def __init__(self, data: dict, builtin: bool = False):
        self.root = data["root"]
        self.classes: list[str] = data["classes"]
        self.class_names: list[str] = data["class_names"]
        self.builtin = builtin  # the bundled WordNet/ImageNet hierarchy
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

    @property
    def what(self) -> str:
        """What a concept of this hierarchy is, for messages."""
        return "ImageNet class or ancestor" if self.builtin else "class or concept of the hierarchy"

    @classmethod
    def load(cls, path: str | Path | None = None) -> Hierarchy:
        """Load a hierarchy file, compiled (``synsets``) or the user format (:meth:`from_user`); the
        bundled WordNet one when ``path`` is None (cached)."""
        if path is None:
            return _default()
        data = _read_json(path)
        if isinstance(data, dict) and "synsets" in data:
            return cls(data)
        return cls.from_user(data, where=str(path))

    @classmethod
    def from_user(cls, spec: dict | str | Path, where: str = "") -> Hierarchy:
        """A user hierarchy from its JSON (a dict, or a file to read)::

            {"root": "things",                     # optional; default "root", made when not in concepts
             "classes": ["n02085620", ...],        # class ids in the model's output order, or "imagenet"
                                                   # (the default: the 1000 ImageNet-1k WNIDs)
             "concepts": {"pets": {"name": "Pets", "parents": ["things"]},
                          "dogs": {"name": "Dogs", "parents": ["pets"], "aliases": ["dog"]},
                          "n02085620": {"parents": ["dogs"]}, ...}}

        ``concepts`` maps an id to its entry (``name``, ``parents``, ``aliases``, ``description``, all
        optional); classes may have entries too. A concept without parents, and a class without an
        entry, hangs off the root. A name defaults to the WordNet name when the id is an ImageNet WNID,
        else to the id. Children, depths (longest distance from the root), class indices and leaves are
        computed. Anything wrong (unknown keys or parents, duplicate ids, a cycle, a concept with no
        class under it) raises ValueError with one line naming it.
        """
        if isinstance(spec, str | os.PathLike):
            where, spec = where or str(spec), _read_json(spec)
        at = f"{where}: " if where else ""
        if not isinstance(spec, dict):
            raise ValueError(
                f"{at}a hierarchy is a JSON object with 'classes' and 'concepts', not {type(spec).__name__}"
            )
        if unknown := sorted(set(spec) - set(_SPEC_KEYS)):
            raise ValueError(f"{at}unknown key(s) {unknown}; a hierarchy has {list(_SPEC_KEYS)}")
        if spec.get("format", FORMAT) != FORMAT:
            raise ValueError(f"{at}unknown format {spec['format']!r}, expected {FORMAT}")
        root = spec.get("root", DEFAULT_ROOT)
        if not isinstance(root, str) or not root.strip():
            raise ValueError(f"{at}'root' must be a non-empty string")
        classes = _class_list(spec.get("classes", IMAGENET), at)
        concepts = spec.get("concepts", {})
        if not isinstance(concepts, dict):
            raise ValueError(f"{at}'concepts' must be an object: id -> {{name, parents}}")
        nodes: dict[str, dict] = {}
        for cid, entry in concepts.items():
            nodes[cid] = _entry(cid, entry, at)
        for cid in [root, *classes]:
            if cid not in nodes:
                nodes[cid] = _entry(cid, {}, at)
        return _compile(root, nodes, classes, at)

    @classmethod
    def from_folders(cls, folder: str | Path, classes: list[str] | str | None = None) -> Hierarchy:
        """A hierarchy from a nested folder tree such as ``root/animal/dog/*.jpg``: every folder
        holding images is a class, every folder its parent folder's child; ids and names are the
        folder names (unique across the tree), the root is ``folder`` itself. Class order: the sorted
        class folder names (torchvision's ImageFolder convention), or ``classes`` (a list of ids or
        ``"imagenet"``) when the model's outputs are another list: every class folder must then be one
        of them, and the others hang off the root. Hidden folders are ignored."""
        top = Path(folder)
        if not top.is_dir():
            raise ValueError(f"{top}: not a folder")
        at = f"{top}: "
        parent: dict[str, str] = {}
        seen: dict[str, Path] = {}
        found: list[str] = []
        for d, subdirs, files in os.walk(top):
            subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
            here = Path(d)
            if here == top:
                continue
            name = here.name
            if name in seen:
                raise ValueError(
                    f"{at}folder name {name!r} appears twice ({seen[name]} and {here}); names are ids, "
                    "so they must be unique"
                )
            seen[name] = here
            parent[name] = here.parent.name if here.parent != top else top.name
            if any(Path(f).suffix.lower() in IMAGE_EXTS for f in files):
                found.append(name)
        if not found:
            raise ValueError(f"{at}no folder below it holds images (expected root/concept/.../class/*.jpg)")
        keep = _with_ancestors(found, parent)
        if top.name in keep:
            raise ValueError(f"{at}a folder below it has the root's name {top.name!r}")
        order = sorted(found) if classes is None else _class_list(classes, at)
        if classes is not None and (extra := sorted(set(found) - set(order))):
            raise ValueError(
                f"{at}class folder(s) {extra[:5]} are not in the class list ({len(order)} classes)"
            )
        nodes = {top.name: _entry(top.name, {}, at)}
        for name in sorted(keep):
            nodes[name] = _entry(name, {"parents": [parent[name]]}, at)
        for cid in order:
            nodes.setdefault(cid, _entry(cid, {}, at))
        return _compile(top.name, nodes, order, at)

    def to_json(self) -> dict:
        """The user format (:meth:`from_user` reads it back to the same hierarchy): root, classes in
        output order, and every concept (root first, then by depth) with name, parents, aliases and
        description."""
        concepts = {}
        for c in sorted(self._synsets.values(), key=lambda c: (c.depth, c.wnid)):
            entry: dict = {"name": c.name, "parents": list(c.parents)}
            if aliases := [a for a in c.lemmas if a != c.name]:
                entry["aliases"] = aliases
            if c.gloss:
                entry["description"] = c.gloss
            concepts[c.wnid] = entry
        return {"format": FORMAT, "root": self.root, "classes": list(self.classes), "concepts": concepts}

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` atomically (a temporary file renamed into place); returns the path."""
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n")

    def check_outputs(self, n_outputs: int, model: str = "the model") -> None:
        """ValueError unless ``model`` has one output per class of this hierarchy."""
        if n_outputs != len(self.classes):
            raise ValueError(
                f"{model} has {n_outputs} outputs but the hierarchy has {len(self.classes)} classes; "
                "list one class id per output, in output order"
            )

    def __len__(self) -> int:
        return len(self._synsets)

    def __contains__(self, wnid: str) -> bool:
        return wnid in self._synsets

    def __getitem__(self, wnid: str) -> Concept:
        try:
            return self._synsets[wnid]
        except KeyError:
            raise KeyError(f"unknown concept {wnid!r}: not an {self.what}") from None

    def __iter__(self) -> Iterator[Concept]:
        return iter(self._synsets.values())

    def find(self, query: str) -> Concept:
        """A concept by id (``n02084071``), name or lemma (``dog``, any case); prefers the one with more leaves."""
        q = query.strip()
        if q in self._synsets:
            return self._synsets[q]
        hits = self._by_name.get(q.lower().replace("_", " ")) or self._by_name.get(q.lower())
        if not hits:
            raise KeyError(
                f"unknown concept {query!r}: no {self.what} has that {'WNID' if self.builtin else 'id'} or name"
            )
        return max((self._synsets[w] for w in hits), key=lambda c: (len(c.leaves), -c.depth))

    def class_concept(self, index: int) -> Concept:
        """The concept of class ``index`` (the model's output order; torchvision's sorted WNIDs by default)."""
        return self._synsets[self.classes[index]]

    def ancestors(self, wnid: str) -> list[str]:
        """All ancestors of ``wnid`` (every parent path), nearest first, the root last."""
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
        """The most specific chain from ``wnid`` up to the root (``wnid`` first).

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
        """Class indices of the classes under ``wnid`` (itself included when a class)."""
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
        """The deepest other concept of ``wnids`` above ``wnid`` (the root when none is)."""
        above = [a for a in wnids if a != wnid and self.is_ancestor(a, wnid)]
        return max(above, key=lambda a: self[a].depth) if above else self.root

    def sibling_groups(self, wnids: list[str]) -> list[list[str]]:
        """Group concepts whose nearest selected ancestor is the same (the paper's sibling groups).

        A concept's group parent is the deepest other concept of ``wnids`` above it (the root when
        none is). Returns the groups, each sorted, in the order of their parents' depth.
        """
        chosen = list(dict.fromkeys(wnids))
        groups: dict[str, list[str]] = {}
        for w in chosen:
            groups.setdefault(self.group_parent(w, chosen), []).append(w)
        order = sorted(groups, key=lambda p: (self[p].depth, p))
        return [sorted(groups[p]) for p in order]


def hierarchy_for(
    spec: str | Path | None, data: str | Path | None = None, classes: str | Path | list[str] | None = None
) -> Hierarchy:
    """The hierarchy a build asks for: ``spec`` None or ``"wordnet"`` (the bundled default), a JSON
    file (:meth:`Hierarchy.load`), or ``"folders"`` (the nested folder tree ``data``,
    :meth:`Hierarchy.from_folders`). ``classes``: the model's class ids in output order, as a list,
    ``"imagenet"``, or a text file with one id per line; it replaces the JSON's ``classes``."""
    order = (
        read_classes(classes)
        if isinstance(classes, str | os.PathLike) and str(classes) != IMAGENET
        else classes
    )
    if spec is None or str(spec) == "wordnet":
        if classes is not None:
            raise ValueError(
                "--classes needs --hierarchy (a JSON file or 'folders'): the WordNet default has its own"
            )
        return Hierarchy.load()
    if str(spec) == "folders":
        if data is None or not Path(data).is_dir():
            raise ValueError(f"--hierarchy folders needs --data to be a nested folder tree, not {data}")
        return Hierarchy.from_folders(data, order)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"hierarchy {spec}: no such file (give a JSON file, 'folders' or 'wordnet')")
    if order is None:
        return Hierarchy.load(path)
    d = _read_json(path)
    if not isinstance(d, dict) or "synsets" in d:
        raise ValueError(f"{path}: --classes works with the user format (docs/custom.md)")
    return Hierarchy.from_user({**d, "classes": order}, where=str(path))


def read_classes(path: str | Path) -> list[str]:
    """Class ids from a text file, one per line in the model's output order (blank lines and ``#``
    comments skipped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"class list {path}: cannot read it ({e})") from None
    ids = [ln.split("#", 1)[0].strip() for ln in lines]
    return [i for i in ids if i]


def _read_json(path: str | Path):
    """A JSON file; duplicate keys in an object are an error (not silently the last one)."""

    def no_dups(pairs):
        keys = [k for k, _ in pairs]
        if dup := next((k for k in keys if keys.count(k) > 1), None):
            raise ValueError(f"{path}: id {dup!r} appears twice in one object")
        return dict(pairs)

    try:
        return json.loads(Path(path).read_text(), object_pairs_hook=no_dups)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _class_list(classes, at: str) -> list[str]:
    if classes == IMAGENET:
        return list(_default().classes)
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) and c.strip() for c in classes)
    ):
        raise ValueError(
            f"{at}'classes' must be a non-empty list of class ids (model output order) or \"imagenet\""
        )
    seen: set[str] = set()
    for c in classes:
        if c in seen:
            raise ValueError(f"{at}class {c!r} is listed twice in 'classes'")
        seen.add(c)
    return list(classes)


def _entry(cid, entry, at: str) -> dict:
    """One concept entry, checked: name, parents, lemmas (name + aliases), gloss."""
    if not isinstance(cid, str) or not cid.strip():
        raise ValueError(f"{at}concept ids must be non-empty strings, not {cid!r}")
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        raise ValueError(
            f'{at}concept {cid!r}: its entry must be an object like {{"name": ..., "parents": [...]}}'
        )
    if unknown := sorted(set(entry) - set(_ENTRY_KEYS)):
        raise ValueError(f"{at}concept {cid!r}: unknown key(s) {unknown}; an entry has {list(_ENTRY_KEYS)}")
    wn = _default()._synsets.get(cid) if _looks_like_wnid(cid) else None
    name = entry.get("name", wn.name if wn else cid)
    parents = entry.get("parents", [])
    aliases = entry.get("aliases", list(wn.lemmas) if wn and "name" not in entry else [])
    gloss = entry.get("description", wn.gloss if wn and "name" not in entry else "")
    for key, v in (("name", name), ("description", gloss)):
        if not isinstance(v, str):
            raise ValueError(f"{at}concept {cid!r}: {key} must be a string")
    for key, v in (("parents", parents), ("aliases", aliases)):
        if not isinstance(v, list) or not all(isinstance(p, str) for p in v):
            raise ValueError(f"{at}concept {cid!r}: {key} must be a list of strings")
    if not name.strip():
        raise ValueError(f"{at}concept {cid!r}: empty name")
    return {
        "name": name,
        "parents": list(dict.fromkeys(parents)),
        "lemmas": list(dict.fromkeys([name, *aliases])),
        "gloss": gloss,
    }


def _looks_like_wnid(cid: str) -> bool:
    return len(cid) == 9 and cid[0] == "n" and cid[1:].isdigit()


def _with_ancestors(names: list[str], parent: dict[str, str]) -> set[str]:
    keep: set[str] = set()
    for n in names:
        while n in parent and n not in keep:
            keep.add(n)
            n = parent[n]
    return keep


def _compile(root: str, nodes: dict[str, dict], classes: list[str], at: str) -> Hierarchy:
    """Checked nodes (``_entry``) -> a Hierarchy: parents, children, depth, index and leaves."""
    if nodes[root]["parents"]:
        raise ValueError(f"{at}the root {root!r} cannot have parents")
    if root in classes:
        raise ValueError(f"{at}the root {root!r} cannot be a class")
    for cid, n in nodes.items():
        if cid != root and not n["parents"]:
            n["parents"] = [root]
        for p in n["parents"]:
            if p not in nodes:
                raise ValueError(f"{at}concept {cid!r}: unknown parent {p!r}")
    children: dict[str, list[str]] = {cid: [] for cid in nodes}
    for cid, n in nodes.items():
        for p in n["parents"]:
            children[p].append(cid)
    waiting = {cid: len(n["parents"]) for cid, n in nodes.items()}
    depth, order, queue = {root: 0}, [], [root]
    while queue:  # Kahn's topological order from the root; a node's depth: its longest distance from it
        cid = queue.pop()
        order.append(cid)
        for c in children[cid]:
            depth[c] = max(depth.get(c, 0), depth[cid] + 1)
            waiting[c] -= 1
            if waiting[c] == 0:
                queue.append(c)
    if len(order) < len(nodes):
        raise ValueError(f"{at}cycle of parents: {_cycle(nodes, set(order))}")
    index = {c: i for i, c in enumerate(classes)}
    leaves: dict[str, set[int]] = {}
    for cid in reversed(order):
        leaves[cid] = {index[cid]} if cid in index else set()
        for c in children[cid]:
            leaves[cid] |= leaves[c]
        if not leaves[cid]:
            raise ValueError(f"{at}concept {cid!r} has no class under it (no child, and not in 'classes')")
    wn = _default()
    names = [wn.class_names[wn[c].index] if _inherits(c, nodes[c], wn) else nodes[c]["name"] for c in classes]
    synsets = {
        cid: {
            "name": n["name"],
            "lemmas": n["lemmas"],
            "gloss": n["gloss"],
            "parents": n["parents"],
            "children": sorted(children[cid]),
            "depth": depth[cid],
            "index": index.get(cid),
            "leaves": sorted(leaves[cid]),
        }
        for cid, n in nodes.items()
    }
    return Hierarchy({"root": root, "classes": list(classes), "class_names": names, "synsets": synsets})


def _inherits(cid: str, node: dict, wn: Hierarchy) -> bool:
    """A class keeps ImageNet's class name (``tabby, tabby cat``) when it is an ImageNet class named as in WordNet."""
    return cid in wn._synsets and wn[cid].is_class and node["name"] == wn[cid].name


def _cycle(nodes: dict[str, dict], done: set[str]) -> str:
    """One cycle among the nodes not reached from the root, as ``a → b → a`` (each the next one's child)."""
    cid = next(c for c in nodes if c not in done)
    trail: list[str] = []
    while cid not in trail:
        trail.append(cid)
        cid = next(p for p in nodes[cid]["parents"] if p not in done)
    return " → ".join([*trail[trail.index(cid) :], cid])


@lru_cache(maxsize=1)
def _default() -> Hierarchy:
    text = resources.files("hint.data").joinpath("imagenet_hierarchy.json").read_text()
    return Hierarchy(json.loads(text), builtin=True)

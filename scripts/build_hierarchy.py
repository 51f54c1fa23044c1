"""Generate ``hint/data/imagenet_hierarchy.json`` from WordNet 3.0.

Run once (the output is committed; the runtime needs no WordNet)::

    apt-get install wordnet-base
    python scripts/build_hierarchy.py --labels ../shared/data/imagenet-sample/labels.csv

The 1000 ImageNet-1k WNIDs and their display names come from ``--labels`` (a CSV with
``wnid`` and ``class_name`` columns); the graph comes from WordNet's noun hypernym pointers
(``@`` and ``@i``), followed up to ``entity`` (n00001740).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import deque
from pathlib import Path

ROOT = "n00001740"
OUT = Path(__file__).resolve().parents[1] / "hint" / "data" / "imagenet_hierarchy.json"


def read_wordnet(path: Path) -> dict[str, tuple[list[str], list[str], str]]:
    """Offset-keyed nouns: (lemmas, hypernym WNIDs, gloss)."""
    nouns: dict[str, tuple[list[str], list[str], str]] = {}
    with open(path, encoding="latin-1") as fh:
        for line in fh:
            if line.startswith("  "):
                continue
            body, _, gloss = line.partition(" | ")
            tok = body.split()
            offset, n_words = tok[0], int(tok[3], 16)
            words = [tok[4 + 2 * i].replace("_", " ") for i in range(n_words)]
            pos = 4 + 2 * n_words
            n_ptr = int(tok[pos])
            hypers = []
            for i in range(n_ptr):
                sym, target, tpos = tok[pos + 1 + 4 * i : pos + 4 + 4 * i]
                if sym in ("@", "@i") and tpos == "n":
                    hypers.append("n" + target)
            nouns["n" + offset] = (words, hypers, gloss.strip())
    return nouns


def build(labels: Path, wordnet: Path) -> dict:
    with open(labels, newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = sorted({r["wnid"]: r["class_name"] for r in rows}.items())
    if len(classes) != 1000:
        sys.exit(f"expected 1000 WNIDs in {labels}, found {len(classes)}")
    nouns = read_wordnet(wordnet)
    missing = [w for w, _ in classes if w not in nouns]
    if missing:
        sys.exit(f"{len(missing)} WNIDs not in WordNet, e.g. {missing[:3]}")

    # Collect every ancestor of every class.
    keep: set[str] = set()
    todo = deque(w for w, _ in classes)
    while todo:
        w = todo.popleft()
        if w in keep:
            continue
        keep.add(w)
        todo.extend(nouns[w][1])

    index = {w: i for i, (w, _) in enumerate(classes)}
    names = dict(classes)
    children: dict[str, list[str]] = {w: [] for w in keep}
    for w in keep:
        for p in nouns[w][1]:
            children[p].append(w)

    depth: dict[str, int] = {}

    def depth_of(w: str) -> int:  # longest distance from entity: parents are always shallower
        if w not in depth:
            depth[w] = 1 + max(depth_of(p) for p in nouns[w][1]) if w != ROOT else 0
        return depth[w]

    leaves: dict[str, set[int]] = {}

    def leaf_set(w: str) -> set[int]:
        if w not in leaves:
            s = {index[w]} if w in index else set()
            for c in children[w]:
                s |= leaf_set(c)
            leaves[w] = s
        return leaves[w]

    sys.setrecursionlimit(10000)
    synsets = {}
    for w in sorted(keep):
        words, hypers, gloss = nouns[w]
        synsets[w] = {
            "name": names.get(w, words[0]).split(",")[0].strip(),
            "lemmas": words,
            "gloss": gloss,
            "parents": sorted(hypers),
            "children": sorted(children[w]),
            "depth": depth_of(w),
            "index": index.get(w),
            "leaves": sorted(leaf_set(w)),
        }
    return {
        "source": "WordNet 3.0 (Debian wordnet-base), ImageNet-1k WNIDs in sorted order",
        "root": ROOT,
        "classes": [w for w, _ in classes],
        "class_names": [n for _, n in classes],
        "synsets": synsets,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", type=Path, default=Path("../shared/data/imagenet-sample/labels.csv"))
    ap.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet/data.noun"))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    for p in (args.labels, args.wordnet):
        if not p.exists():
            sys.exit(f"error: {p} not found (wordnet-base installed? labels CSV path right?)")
    data = build(args.labels, args.wordnet)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True))
    tmp.replace(args.out)
    print(f"wrote {args.out}: {len(data['synsets'])} synsets, {len(data['classes'])} classes")


if __name__ == "__main__":
    main()

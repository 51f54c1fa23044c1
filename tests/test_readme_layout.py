"""The README's layout table names every module of the library, and every name in it exists."""

from __future__ import annotations

import re

from support import REPO

HINT = REPO / "hint"
ROWS = ("hint", "hint/build", "hint/explain", "hint/serve", "hint/evaluation")


def _rows() -> dict[str, set[str]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Layout") : text.index("### From Python")]
    out = {}
    for line in section.splitlines():
        if m := re.match(r"\| `(hint/[^`]*)`[^|]*\| (.*) \|$", line):
            out[m.group(1).rstrip("/")] = set(re.findall(r"`([A-Za-z_]+/?)`", m.group(2)))
    return out


def _expected(folder: str) -> set[str]:
    """A row's modules: its package's modules and subpackages, and the modules of those subpackages
    (backbones/ aside: one module per model family, listed by ``python -m hint.backbones``)."""
    pkg = REPO / folder
    names = {p.stem for p in pkg.glob("*.py") if not p.stem.startswith("__")}
    for sub in pkg.iterdir():
        if (sub / "__init__.py").is_file() and f"{folder}/{sub.name}" not in ROWS:
            names.add(sub.name + "/")
            if sub.name != "backbones":
                names |= {p.stem for p in sub.glob("*.py") if not p.stem.startswith("__")}
    return names


def test_layout_table_matches_the_tree():
    rows = _rows()
    assert set(rows) == set(ROWS)
    for folder in ROWS:
        missing = _expected(folder) - rows[folder]
        assert not missing, f"README layout: the {folder} row does not name {sorted(missing)}"
        source = "\n".join(p.read_text() for p in (REPO / folder).rglob("*.py"))
        for name in rows[folder] - _expected(folder):  # a class or function the row names
            assert re.search(rf"^(class|def) {name}\b", source, re.M), (
                f"README layout: {folder} has no {name}"
            )

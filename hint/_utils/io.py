"""Writing result files: each text file atomically (a temporary name renamed into place)."""

from __future__ import annotations

from pathlib import Path


def write_texts(out: str | Path, files: dict[str, str]) -> list[Path]:
    """Write ``{name: text}`` into the folder ``out`` (created), each file atomically; their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
        paths.append(out / name)
    return paths

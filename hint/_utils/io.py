"""Files: sha256 of a file, and atomic writes (a temporary name beside the target, renamed into place)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to: renamed onto ``path`` when the block ends, removed
    when it raises, so ``path`` is never seen half written.

    Args:
        path: the file to write (its folder must exist).

    Yields:
        ``.NAME.tmpPID`` in the same folder.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_texts(out: str | os.PathLike, files: dict[str, str]) -> list[Path]:
    """Write ``{name: text}`` into the folder ``out`` (created), each file atomically; their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [atomic_write_text(out / name, text) for name, text in files.items()]


def save_figure(fig, path: str | os.PathLike, dpi: int = 110, rect: tuple[float, ...] | None = None) -> Path:
    """Lay out a matplotlib figure (``tight_layout``, within ``rect`` if given), write it atomically in the
    format of the path's suffix, and close it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout(**({} if rect is None else {"rect": rect}))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or None)
    plt.close(fig)
    return path

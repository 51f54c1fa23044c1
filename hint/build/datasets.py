"""Labelled image inputs for the offline pipeline: class folders (nested or not), WNID-prefixed files, or a CSV."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from hint.backbones import to_rgb
from hint.build.views import make_view
from hint.hierarchy import IMAGE_EXTS, Hierarchy

_WNID = re.compile(r"^(n\d{8})")


@dataclass(frozen=True)
class Sample:
    path: Path
    wnid: str  # class id (a WNID in the default hierarchy)
    label: int  # class index (the model's output order; ImageNet's sorted WNIDs by default)
    view: int = 0  # augmented view (hint.build.views); 0 is the photo itself

    @property
    def key(self) -> str:
        """The sample's name in caches and reservoirs: the file name, with ``#v`` for a view v > 0."""
        return self.path.name if self.view == 0 else f"{self.path.name}#{self.view}"


def with_views(samples: list[Sample], views: int) -> list[Sample]:
    """Each sample followed by its views 1..views-1 (``views`` = 1: the samples unchanged)."""
    if views < 1:
        raise ValueError(f"views must be at least 1, not {views}")
    return [Sample(s.path, s.wnid, s.label, v) for s in samples for v in range(views)]


@dataclass
class Discovery:
    samples: list[Sample] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one readable reason each


def discover(source: str | Path, hierarchy: Hierarchy | None = None) -> Discovery:
    """Find labelled images: class folders ``root/CLASS/*``, at any depth (``root/animal/dog/*.jpg``:
    the folder holding an image names its class), a flat folder of ``nXXXXXXXX_*`` (or ``CLASS_*``)
    files, or a CSV with ``file`` and ``wnid`` (or ``label``) columns (files relative to the CSV, or to
    an ``images/`` folder beside it). Labels are class ids of ``hierarchy`` (default: ImageNet WNIDs).

    Unknown classes and missing files are skipped with a reason; a bad ``source`` raises ValueError.
    """
    h = hierarchy or Hierarchy.load()
    index = {w: i for i, w in enumerate(h.classes)}
    src = Path(source)
    out = Discovery()
    if not src.exists():
        raise ValueError(f"data source {src} does not exist")
    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise ValueError(f"data source {src} is neither a folder nor a .csv file")
        entries = _from_csv(src, out)
    else:
        csvs = [src / n for n in ("labels.csv", "annotations.csv") if (src / n).is_file()]
        entries = _from_csv(csvs[0], out) if csvs else _from_folder(src, index)
    unknown = "not an ImageNet-1k class" if h.builtin else f"not one of the hierarchy's {len(index)} classes"
    for path, wnid in entries:
        if wnid not in index:
            out.skipped.append(
                f"{path}: unknown {'WNID' if _WNID.match(wnid) else 'class'} {wnid!r} ({unknown})"
            )
        elif not path.is_file():
            out.skipped.append(f"{path}: no such file")
        else:
            out.samples.append(Sample(path, wnid, index[wnid]))
    return out


def _from_folder(root: Path, classes: dict[str, int]) -> list[tuple[Path, str]]:
    """(image, class id): the image's folder when it is a class id, else a WNID at the start of the
    folder's or the file's name, else the file name's part before ``_`` when it is a class id."""
    entries = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in IMAGE_EXTS:
            continue
        folder = p.parent.name if p.parent != root else None
        if folder in classes:
            entries.append((p, folder))
            continue
        m = _WNID.match(folder) if folder else None
        m = m or _WNID.match(p.name)
        if m:
            entries.append((p, m.group(1)))
        elif (prefix := p.stem.split("_", 1)[0]) in classes:
            entries.append((p, prefix))
    return entries


def _from_csv(path: Path, out: Discovery) -> list[tuple[Path, str]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or ())
        if "file" not in cols or not cols & {"wnid", "label"}:
            raise ValueError(f"{path}: a CSV needs 'file' and 'wnid' (or 'label') columns")
        rows = list(reader)
    col = "wnid" if "wnid" in cols else "label"
    base = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    entries = []
    for i, r in enumerate(rows, start=2):
        if not r.get("file") or not r.get(col):
            out.skipped.append(f"{path}:{i}: empty file or {col}")
            continue
        f = Path(r["file"])
        entries.append((f if f.is_absolute() else base / f, r[col].strip()))
    return entries


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB (EXIF rotation applied); raises ValueError with a readable reason."""
    from PIL import ImageOps

    try:
        with Image.open(path) as im:
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path}: unreadable image ({e})") from None


class ImageDataset(Dataset):
    """Samples → (image tensor, label, index, ok). Unreadable images give ok=False and a zero tensor."""

    def __init__(self, samples: list[Sample], preprocess: Callable[[Image.Image], torch.Tensor], size: int):
        self.samples, self.preprocess, self.size = samples, preprocess, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        try:
            x = self.preprocess(make_view(load_rgb(s.path), s.path.name, s.view))
            if x.ndim == 4:
                x = x[0]
            ok = True
        except ValueError:
            x, ok = torch.zeros(3, self.size, self.size), False
        return x, s.label, i, ok

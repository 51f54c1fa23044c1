"""``build_bank``: labelled images in, a complete concept bank out (steps 1–3, the presence rule and the
localisation head), the one function behind ``python -m offline build``.

Under ``torchrun`` every process calls it: step 1 is sharded over the processes (gloo on CPU, nccl on
GPUs), rank 0 gathers the regions, runs the rest and gets the bank; the other ranks get ``None``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from hint.backbones import get_backbone
from hint.bank import ConceptBank
from hint.build.concepts import resolve
from hint.build.config import BuildConfig
from hint.build.datasets import discover, with_views
from hint.build.pipeline import build
from hint.head import DEFAULT_LAYERS, DEFAULT_NEGATIVES
from hint.hierarchy import Hierarchy, hierarchy_for

__all__ = ["build_bank", "pick_device"]

#: shown per run: the first few reasons an image was skipped
SHOW_SKIPPED = 10


def pick_device(name: str) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is there, else ``"cpu"``; ``"cuda"`` without one raises ValueError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device available")
    return name


def _init_distributed(device: str) -> tuple[int, int]:
    """(rank, world size); starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return (torch.distributed.get_rank() if world > 1 else 0), world


def build_bank(
    data: str | Path,
    *,
    backbone: str = "efficientnet_lite0",
    layer: str | None = None,
    hierarchy: Hierarchy | str | Path | None = "wordnet",
    classes: str | Path | list[str] | None = None,
    concepts: Sequence[str] | None = None,
    config: BuildConfig | None = None,
    cache: str | Path | None = None,
    views: int = 1,
    limit: int | None = None,
    weights: str | Path | None = None,
    random_init: bool = False,
    head_layers: Sequence[str] | None = None,
    head_negatives: Sequence[str] = DEFAULT_NEGATIVES,
    progress: bool = True,
    on_step: Callable[[str, bool], None] | None = None,
) -> ConceptBank | None:
    """Build a concept bank from labelled images.

    Args:
        data: class folders, a flat ``nXXXXXXXX_*`` folder or a CSV (``file,wnid`` or ``file,label``).
        backbone: a name of :func:`hint.backbones.list_backbones`.
        layer: the hooked layer (default: the backbone's).
        hierarchy: a :class:`~hint.hierarchy.Hierarchy`, ``"wordnet"`` (the bundled default), a JSON file or
            ``"folders"`` (the nested folder tree ``data``); see docs/custom.md.
        classes: the model's class ids in output order (list, ``"imagenet"`` or a text file), for a
            hierarchy given as a file or ``"folders"``.
        concepts: candidate concepts, ids or names (default: every concept with two or more classes); the
            data-sufficiency rule picks those built.
        config: the steps' settings (default ``BuildConfig()``); its ``device`` ``"auto"`` picks CUDA (with AMP)
            when there is a GPU.
        cache: the step cache folder (default ``.hint-cache`` in the working folder).
        views: augmented views per image (:mod:`hint.build.views`).
        limit: use the first ``limit`` images only.
        weights: a weights file for the backbone; ``random_init``: random weights (tests).
        head_layers: layers of the localisation head (default: the backbone's, :data:`hint.head.DEFAULT_LAYERS`;
            ``[]`` or ``["none"]``: no head).
        head_negatives: negative kinds of the head's classifiers.
        progress: progress bars; ``on_step(step, cached)`` is called as each step ends.

    Returns:
        The bank, with its hierarchy (saved as ``hierarchy.json`` unless it is the bundled one), build data
        and head, ready for ``bank.save(folder)``; ``None`` on torchrun ranks other than 0.

    Raises:
        ValueError: no labelled images, an unknown concept, a hierarchy that does not fit the backbone.
    """
    cfg = config or BuildConfig()
    device = pick_device(cfg.device)
    if cfg.device == "auto":
        cfg = replace(cfg, device=device, amp=device == "cuda")
    rank, world = _init_distributed(device)
    h = hierarchy if isinstance(hierarchy, Hierarchy) else hierarchy_for(hierarchy, data, classes)
    try:
        wnids = resolve(list(concepts), h) if concepts else None
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    found = discover(data, h)
    if rank == 0:
        for reason in found.skipped[:SHOW_SKIPPED]:
            print(f"skipped: {reason}", file=sys.stderr)
        if len(found.skipped) > SHOW_SKIPPED:
            print(f"skipped: ... {len(found.skipped) - SHOW_SKIPPED} more", file=sys.stderr)
    samples = with_views(found.samples[:limit] if limit else found.samples, views)
    if not samples:
        raise ValueError(f"no labelled images found in {data}")
    bb = get_backbone(backbone, layer, weights, random_init)
    h.check_outputs(bb.n_outputs(), f"backbone {bb.name}")
    cache = Path(cache) if cache is not None else Path(".hint-cache")
    t0 = time.perf_counter()
    bank = build(bb, samples, wnids, cfg, cache, h, progress=progress, on_step=on_step if rank == 0 else None)
    if rank != 0:
        torch.distributed.destroy_process_group()
        return None
    built = bank.meta["build"]
    built["wall_s"] = round(time.perf_counter() - t0, 2)
    built["data"] = str(data)
    built["skipped"] = len(found.skipped)
    built["hierarchy"] = "a Hierarchy object" if isinstance(hierarchy, Hierarchy) else str(hierarchy)
    bank.hierarchy = None if h.builtin else h  # saved as the bank's hierarchy.json
    built["views"] = views
    layers = list(head_layers) if head_layers is not None else DEFAULT_LAYERS.get(bb.name, [])
    if layers and layers != ["none"]:
        from hint.build.head import fit_head

        bank.head = fit_head(
            bank,
            samples,
            layers,
            cache,
            list(head_negatives),
            batch_size=cfg.batch_size,
            progress=progress,
            backbone=bb,
        )
        if on_step:
            on_step("localisation head", False)
        built["wall_s"] = round(time.perf_counter() - t0, 2)
    if world > 1:
        torch.distributed.destroy_process_group()
    return bank

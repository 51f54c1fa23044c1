"""Fit a bank's localisation head (:mod:`hint.head`) on the bank's build data.

For each head layer: step 1 at that layer (the bank's method, thresholds, seed and per-class bound; cached
like the build's own step 1), then one classifier per bank concept on that layer's regions, with the
bank's samples rule (group parent, positives cap, seed) and weight decay, against the ``negatives``
kinds only (:data:`hint.head.DEFAULT_NEGATIVES`: background b*), in equal shares.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from hint.backbones import Backbone, get_backbone
from hint.bank import ConceptBank
from hint.build.classifiers import fit_logistic
from hint.build.concepts import SHARES, concept_samples
from hint.build.config import BuildConfig
from hint.build.datasets import Sample
from hint.build.pipeline import cached_regions, torch_threads
from hint.head import DEFAULT_NEGATIVES, LocalisationHead


def negative_shares(negatives: Sequence[str]) -> dict[str, float]:
    """Equal shares over ``negatives`` (:data:`hint.build.concepts.SHARES` kinds), 0 for the other kinds."""
    if unknown := sorted(set(negatives) - set(SHARES)):
        raise ValueError(f"unknown negative kind(s) {unknown}; choose from {', '.join(SHARES)}")
    if not negatives:
        raise ValueError("the head needs at least one negative kind")
    return {k: 1 / len(set(negatives)) if k in negatives else 0.0 for k in SHARES}


def build_config(bank: ConceptBank, batch_size: int = BuildConfig.batch_size) -> BuildConfig:
    """The bank's settings (:meth:`BuildConfig.from_manifest`) to rerun its steps here: on the CPU, without
    AMP, ``batch_size`` images per forward pass, and cross-validated with the default folds when the bank
    was built before the cross-validation."""
    cfg = BuildConfig.from_manifest(bank, batch_size=batch_size, device="cpu", amp=False)
    return cfg if cfg.folds else replace(cfg, folds=BuildConfig.folds)


def fit_head(
    bank: ConceptBank,
    samples: list[Sample],
    layers: Sequence[str],
    cache_dir: Path,
    negatives: Sequence[str] = DEFAULT_NEGATIVES,
    weights: str | None = None,
    batch_size: int = 32,
    progress: bool = True,
    backbone: Backbone | None = None,
) -> LocalisationHead:
    """The head of ``bank`` at ``layers`` of its backbone, fit on ``samples`` (the bank's build data).

    Args:
        bank: the concept bank (its backbone, concepts, group parents and build settings).
        samples: the build images (:func:`hint.build.datasets.discover`).
        layers: module names of the backbone (each output N×D×h×w).
        cache_dir: the step cache (each layer's step-1 table is cached there).
        negatives: negative kinds of every head classifier.
        weights: the backbone's weights file, for a bank built from one.
        backbone: the bank's backbone, already loaded (default: loaded from the bank's manifest and ``weights``).
    Returns:
        the head (box threshold 0.5 until calibrated: ``offline head --calibrate``).
    """
    if not layers:
        raise ValueError("the head needs at least one layer")
    shares = negative_shares(negatives)
    cfg = build_config(bank, batch_size)
    h = bank.load_hierarchy()
    weight, bias, grids, info = [], [], [], {"layers_fit": {}}
    backbone = backbone or get_backbone(bank.meta["backbone"], bank.meta["layer"], weights)
    modules = dict(backbone.model.named_modules())
    if unknown := [x for x in layers if x not in modules]:
        raise ValueError(
            f"{backbone.name} has no layer {', '.join(unknown)} (python -m hint.backbones layers {backbone.name})"
        )
    for layer in layers:
        t = time.perf_counter()
        bb = replace(backbone, layer=layer)
        table, stats, _ = cached_regions(bb, samples, cfg, Path(cache_dir), progress, distributed=False)
        grids.append(stats.get("map_size") or [int(table.image.bincount().max() ** 0.5)] * 2)
        ws, bs = [], []
        with torch_threads(1):
            for c in tqdm(bank.concepts, desc=f"head classifiers at {layer}", disable=not progress):
                s = concept_samples(
                    table,
                    c["wnid"],
                    c.get("parent") or h.group_parent(c["wnid"], bank.wnids),
                    h,
                    cfg.max_positives,
                    cfg.seed,
                    shares,
                )
                w, b = fit_logistic(s.x, s.y, s.weight, l2=cfg.l2)
                ws.append(w)
                bs.append(float(b))
        weight.append(torch.stack(ws))
        bias.append(torch.tensor(bs))
        info["layers_fit"][layer] = {
            "neurons": table.dim,
            "map_size": grids[-1],
            "seconds": round(time.perf_counter() - t, 1),
            "foreground_fraction": round(float(table.foreground.float().mean()), 4),
        }
    grid = [max(g[0] for g in grids), max(g[1] for g in grids)]
    return LocalisationHead(list(layers), weight, bias, list(negatives), grid, 0.5, info)


def build_samples(bank: ConceptBank, bank_dir: str | Path, data: str | Path | None = None) -> list[Sample]:
    """The bank's build images: ``data``, else the folder its manifest records (as given, or relative to
    the project above ``bank_dir``), limited as the build was (``--limit``); ValueError when not found."""
    from hint.build.datasets import discover, with_views

    p = bank.meta.get("build", {})
    recorded = p.get("data")
    candidates = (
        [Path(data)]
        if data
        else [Path(str(recorded)), Path(bank_dir).resolve().parent.parent / str(recorded)]
    )
    root = next((c for c in candidates if (data or recorded) and c.exists()), None)
    if root is None:
        raise ValueError(f"the bank's build data {str(data or recorded)!r} is not here; pass --data")
    samples = discover(root, bank.load_hierarchy()).samples
    total = (p.get("n_images") or 0) + (p.get("unreadable") or 0)
    views = int(p.get("views") or 1)
    samples = samples[: total // views] if total else samples
    return with_views(samples, views)

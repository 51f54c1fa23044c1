"""The three HINT steps end to end: regions → concept classifiers → Shapley tables → ConceptBank.

Each step's output is cached under ``cache_dir`` by a content hash of its inputs and parameters, so a
rerun after a kill skips the finished steps. Step 1 can be sharded over ``torchrun`` processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import __version__, presence
from .backbones import Backbone
from .bank import ConceptBank
from .classifiers import ClassifierFit, fit_logistic
from .concepts import (
    DEFAULT_CONCEPTS,
    KIND,
    SHARES,
    ConceptSamples,
    RegionTable,
    concept_samples,
    select_concepts,
)
from .datasets import ImageDataset, Sample
from .faithfulness import top_k_f1
from .hierarchy import Hierarchy
from .regions import METHODS, responsible_regions
from .shapley import NeuronShapley

log = logging.getLogger("hint.pipeline")

#: Bumped when a step's algorithm changes, so that cached outputs of older code are not reused.
STEP_REVISION = {"regions": 2, "classifiers": 4, "shapley": 3}


@dataclass
class BuildConfig:
    method: str = "guided"
    threshold: float = 0.5
    quantile: float = 0.99
    batch_size: int = 32
    max_positives: int = 2000
    test_fraction: float = 0.2  # the faithfulness test's held-out images
    folds: int = 5  # cross-validation folds (by image): held-out region F1, image thresholds, reliability
    min_images: int = 3  # data-sufficiency rule (hint.concepts.select_concepts)
    min_regions: int = 24
    l2: float = 1e-3
    baseline: str = "auto"  # auto: zero after a ReLU, else the channel mean; or "zero" / "mean"
    permutations: int = 256
    shapley_regions: int = 512
    top_k: int = 20
    patience: int = 0  # >0: stop Shapley early once the top-k set is stable this many chunks
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    workers: int = 2
    faithfulness_k: int = 20  # 0 turns the top-k retraining test off
    faithfulness_draws: int = 5

    def params(self, *names: str) -> dict:
        d = asdict(self)
        return {k: d[k] for k in names}


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, meta: dict | None = None) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"meta": json.dumps(meta or {})})
    tmp.replace(path)


def _load_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata().get("meta", "{}"))


def samples_key(samples: list[Sample]) -> str:
    """Content key of an image list: file names, labels and sizes (not where the folder lies)."""
    return _key([(s.key, s.label, s.path.stat().st_size) for s in samples])


def extract_regions(
    backbone: Backbone,
    samples: list[Sample],
    cfg: BuildConfig,
    progress: bool = True,
) -> tuple[RegionTable, dict]:
    """Step 1 on ``samples``: features at every position, responsible-region flags, per-image stats."""
    device = torch.device(cfg.device)
    model = backbone.model.to(device).eval()
    method_cls = METHODS[cfg.method]
    ds = ImageDataset(samples, backbone.preprocess, backbone.input_size)
    loader = DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers, shuffle=False)
    feats, fgs, imgs, labels, bad, correct = [], [], [], [], [], 0
    t0 = time.perf_counter()
    with method_cls(model, backbone.layer_module()) as attr:
        for x, y, idx, ok in tqdm(loader, desc="step 1: regions", unit="batch", disable=not progress):
            bad += [samples[i].path.name for i in idx[~ok].tolist()]
            if not ok.any():
                continue
            x, y, idx = x[ok].to(device), y[ok].to(device), idx[ok]
            with torch.autocast(device.type, enabled=cfg.amp and device.type == "cuda"):
                z, a = attr.attribute(x, y)
            correct += int((attr.logits.argmax(1) == y).sum())
            _, mask = responsible_regions(a, cfg.threshold, cfg.quantile)
            n, c, h, w = z.shape
            feats.append(z.permute(0, 2, 3, 1).reshape(-1, c).half().cpu())
            fgs.append(mask.reshape(-1).cpu())
            imgs.append(idx.repeat_interleave(h * w))
            labels.append(torch.stack([idx, y.cpu()], 1))
    elapsed = time.perf_counter() - t0
    if not feats:
        raise ValueError("no readable images")
    lab = torch.cat(labels)
    label = torch.full((len(samples),), -1, dtype=torch.long)
    label[lab[:, 0]] = lab[:, 1]
    table = RegionTable(torch.cat(feats), torch.cat(imgs), torch.cat(fgs), label)
    n_ok = len(samples) - len(bad)
    stats = {
        "images": n_ok,
        "unreadable": bad,
        "seconds": elapsed,
        "images_per_s": n_ok / elapsed,
        "top1": correct / max(n_ok, 1),
        "foreground_fraction": float(table.foreground.float().mean()),
        "map_size": [h, w],
    }
    return table, stats


def save_table(table: RegionTable, path: Path, stats: dict) -> None:
    _atomic_save(
        {"features": table.features, "image": table.image, "foreground": table.foreground, "label": table.label},
        path,
        stats,
    )


def load_table(path: Path) -> tuple[RegionTable, dict]:
    t = load_file(str(path))
    return RegionTable(t["features"], t["image"], t["foreground"], t["label"]), _load_meta(path)


def merge_tables(parts: list[RegionTable], n_images: int) -> RegionTable:
    """Join shards whose ``image`` indices refer to one global sample list."""
    label = torch.full((n_images,), -1, dtype=torch.long)
    for p in parts:
        label = torch.where(p.label >= 0, p.label, label)
    image = torch.cat([p.image for p in parts])
    order = torch.argsort(image, stable=True)  # the order one process would have produced
    return RegionTable(
        torch.cat([p.features for p in parts])[order],
        image[order],
        torch.cat([p.foreground for p in parts])[order],
        label,
    )


def baseline_for(table: RegionTable, backbone: Backbone, mode: str) -> torch.Tensor:
    """Value given to removed neurons: 0 for post-ReLU layers, else the mean activation ("auto")."""
    if mode == "zero" or (mode == "auto" and backbone.post_relu):
        return torch.zeros(table.dim)
    if mode in ("mean", "auto"):
        return table.features.float().mean(0)
    raise ValueError(f"unknown baseline {mode!r}: use auto, zero or mean")


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch threads. Step 2 is many small tensor operations, where a second
    thread only adds synchronisation: one thread is 10× faster when other processes share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_concepts(
    table: RegionTable,
    wnids: list[str],
    hierarchy: Hierarchy,
    cfg: BuildConfig,
    progress: bool = True,
) -> tuple[list[ClassifierFit], list[ConceptSamples], dict]:
    """Step 2: one probe per concept (against its siblings, background and other regions, see
    :func:`hint.concepts.concept_samples`), trained on every image; its held-out region precision /
    recall / F1, image threshold and reliability come from ``cfg.folds``-fold cross-validation by image
    (:mod:`hint.presence`). Returns the fits, the samples, and ``{"scores", "fold", "metrics"}``."""
    parents = [hierarchy.group_parent(w, wnids) for w in wnids]

    def fit(s: ConceptSamples) -> tuple[torch.Tensor, float]:
        return fit_logistic(s.x.to(cfg.device), s.y.to(cfg.device), s.weight.to(cfg.device), l2=cfg.l2)

    with torch_threads(1):
        cv = presence.cross_validate(table, wnids, parents, hierarchy, fit, cfg.folds, cfg.seed, progress)
        fits, sets, metrics = [], [], []
        for e, w in enumerate(tqdm(wnids, desc="step 2: classifiers", disable=not progress)):
            s = concept_samples(table, w, parents[e], hierarchy, cfg.max_positives, cfg.seed)
            if s.n_pos == 0:
                raise ValueError(f"concept {w} ({hierarchy[w].name}) has no images in the data")
            weight, bias = fit(s)
            counts = cv["counts"][e]
            tp, fp, fn = counts.tp.sum(), counts.fp.sum(), counts.fn.sum()
            m = {
                "precision": round(float(tp / max(tp + fp, 1)), 4),
                "recall": round(float(tp / max(tp + fn, 1)), 4),
                **presence.region_quality(counts, cfg.seed),
            }
            fits.append(ClassifierFit(weight, bias, m["precision"], m["recall"], m["f1"], len(s.y), int(counts.n.sum())))
            sets.append(s)
            metrics.append(m)
        return fits, sets, {"scores": cv["scores"], "fold": cv["fold"], "metrics": metrics}


def shapley_tables(
    fits: list[ClassifierFit],
    sets: list[ConceptSamples],
    baseline: torch.Tensor,
    cfg: BuildConfig,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 3: φ (E, D), standard errors (E, D) and permutations used (E,) over each concept's regions
    r_E ∪ r_b* (its responsible regions and its background sample, as the paper's formula sums them;
    at most ``cfg.shapley_regions``, drawn in proportion)."""
    phi, se, used = [], [], []
    gen = torch.Generator().manual_seed(cfg.seed)
    for fit, s in tqdm(list(zip(fits, sets, strict=True)), desc="step 3: Shapley", disable=not progress):
        regions = shapley_regions(s, cfg.shapley_regions, gen)
        res = NeuronShapley(fit.weight, fit.bias, baseline).attribute(
            regions.to(cfg.device), n_permutations=cfg.permutations, seed=cfg.seed,
            top_k=cfg.top_k if cfg.patience else None, patience=cfg.patience,
        )  # fmt: skip
        phi.append(res.values.cpu())
        se.append(res.stderr.cpu())
        used.append(res.n_permutations)
    return torch.stack(phi), torch.stack(se), torch.tensor(used)


def shapley_regions(s: ConceptSamples, limit: int, gen: torch.Generator) -> torch.Tensor:
    """r_E ∪ r_b*: the concept's positive and background regions, at most ``limit`` of them."""
    keep = (s.kind == KIND["positive"]) | (s.kind == KIND["background"])
    regions = s.x[keep]
    if len(regions) > limit:
        regions = regions[torch.randperm(len(regions), generator=gen)[:limit].sort().values]
    return regions


def cached_regions(
    backbone: Backbone,
    samples: list[Sample],
    cfg: BuildConfig,
    cache_dir: Path,
    progress: bool = True,
    on_step: Callable[[str, bool], None] | None = None,
) -> tuple[RegionTable | None, dict, str]:
    """Step 1, read from ``cache_dir`` when an identical run finished before: (table, stats, cache key).
    Under torchrun the ranks shard the images; ranks > 0 get ``(None, {}, key)``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    k1 = _key(
        "regions", STEP_REVISION["regions"], backbone.name, backbone.layer, backbone.weights_sha256, samples_key(samples),
        cfg.params("method", "threshold", "quantile"),
    )  # fmt: skip
    p1 = cache_dir / f"regions-{k1}.safetensors"
    rank, world = _dist()
    if p1.exists():
        table, stats = load_table(p1)
        _note(on_step, "regions", True)
        return table, stats, k1
    if world > 1:
        table, stats = _sharded_regions(backbone, samples, cfg, cache_dir, k1, rank, world, progress)
        if rank != 0:
            return None, {}, k1
    else:
        table, stats = extract_regions(backbone, samples, cfg, progress)
    save_table(table, p1, stats)
    _note(on_step, "regions", False)
    return table, stats, k1


def build(
    backbone: Backbone,
    samples: list[Sample],
    wnids: list[str] | None,
    cfg: BuildConfig,
    cache_dir: Path,
    hierarchy: Hierarchy | None = None,
    progress: bool = True,
    on_step: Callable[[str, bool], None] | None = None,
) -> ConceptBank:
    """Run (or resume) the three steps and return the bank (not yet saved).

    ``wnids`` are the candidate concepts (None: every concept of the hierarchy with two or more
    classes); the data-sufficiency rule (:func:`hint.concepts.select_concepts`) picks those built.
    """
    h = hierarchy or Hierarchy.load()
    timings: dict[str, float] = {}
    reused: list[str] = []
    outer = on_step

    def on_step(step: str, cached: bool) -> None:
        if cached:
            reused.append(step)
        if outer:
            outer(step, cached)

    t = time.perf_counter()
    table, stats, k1 = cached_regions(backbone, samples, cfg, cache_dir, progress, on_step)
    if table is None:
        return None  # type: ignore[return-value]  # a torchrun rank > 0: rank 0 goes on
    timings["regions"] = time.perf_counter() - t

    fg_per_image = torch.zeros(len(table.label), dtype=torch.long).index_add_(0, table.image, table.foreground.long())
    built, status = select_concepts(
        h, table.label, fg_per_image, DEFAULT_CONCEPTS, cfg.min_images, cfg.min_regions, wnids
    )  # fmt: skip
    if not built:
        raise ValueError(
            f"no concept has {cfg.min_images} images and {cfg.min_regions} responsible regions in the data "
            f"({len(status)} candidates)"
        )
    baseline = baseline_for(table, backbone, cfg.baseline)
    k2 = _key(
        k1, STEP_REVISION["classifiers"], built, SHARES,
        cfg.params("max_positives", "folds", "l2", "seed"),
    )  # fmt: skip
    p2 = cache_dir / f"classifiers-{k2}.safetensors"
    t = time.perf_counter()
    fits, sets, cv = _cached_fits(p2, table, built, h, cfg, progress, on_step)
    image_metrics = presence.image_metrics(cv["scores"], table.label, built, h, cfg.seed)
    timings["classifiers"] = time.perf_counter() - t

    k3 = _key(k2, STEP_REVISION["shapley"], cfg.params("baseline", "permutations", "shapley_regions", "top_k", "patience", "seed"))
    p3 = cache_dir / f"shapley-{k3}.safetensors"
    t = time.perf_counter()
    if p3.exists():
        tt = load_file(str(p3))
        phi, se, used = tt["phi"], tt["phi_se"], tt["n_permutations"]
        _note(on_step, "shapley", True)
    else:
        phi, se, used = shapley_tables(fits, sets, baseline, cfg, progress)
        _atomic_save({"phi": phi, "phi_se": se, "n_permutations": used}, p3)
        _note(on_step, "shapley", False)
    timings["shapley"] = time.perf_counter() - t

    weight = torch.stack([f.weight for f in fits])
    faith = None
    paper = [e for e, w in enumerate(built) if w in {h.find(n).wnid for n in DEFAULT_CONCEPTS}]
    if cfg.faithfulness_k and paper:
        t = time.perf_counter()
        faith = {
            "k": cfg.faithfulness_k, "draws": cfg.faithfulness_draws, "concepts": [built[e] for e in paper],
            **top_k_f1([sets[e] for e in paper], phi[paper], weight[paper], cfg.faithfulness_k,
                       cfg.faithfulness_draws, cfg.seed, l2=cfg.l2, test_fraction=cfg.test_fraction,
                       device=cfg.device),
        }  # fmt: skip
        timings["faithfulness"] = time.perf_counter() - t

    aliases: dict[str, list[str]] = {}
    for w, st in status.items():
        if st.startswith("alias of "):
            aliases.setdefault(st.removeprefix("alias of "), []).append(w)
    concepts = []
    for w, fit, s, m, im in zip(built, fits, sets, cv["metrics"], image_metrics, strict=True):
        c = h[w]
        concepts.append({
            "wnid": w, "name": c.name, "path": [h[a].name for a in h.path(w)], "parent": s.parent,
            "depth": c.depth, "n_leaves": len(c.leaves), "n_pos": s.n_pos, "n_sibling": s.n_sibling,
            "n_background": s.n_background, "n_other": s.n_other, "n_train": fit.n_train, "n_test": fit.n_test,
            **m, **im, "aliases": aliases.get(w, []),
        })  # fmt: skip
    meta = {
        "backbone": backbone.name,
        "layer": backbone.layer,
        "channels": table.dim,
        "input_size": backbone.input_size,
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "weights": backbone.weights,
        "weights_sha256": backbone.weights_sha256,
        "post_relu": backbone.post_relu,
        "presence": {"pool_fraction": presence.POOL_FRACTION, "folds": cfg.folds, "veto_recall": presence.VETO_RECALL,
                     "rule": PRESENCE_RULE},
        "sample_shares": SHARES,
        "candidates": [
            {"wnid": w, "name": h[w].name, "n_classes": len(h[w].leaves), "status": st} for w, st in status.items()
        ],
        "build": {**asdict(cfg), "n_images": stats.get("images"), "unreadable": len(stats.get("unreadable", [])),
                  "step1": {k: v for k, v in stats.items() if k != "unreadable"}, "timings_s": timings,
                  "reused_from_cache": reused,
                  "library_version": __version__},
    }  # fmt: skip
    if faith:
        meta["faithfulness"] = faith
    return ConceptBank(
        weight=weight,
        bias=torch.tensor([f.bias for f in fits]),
        phi=phi,
        phi_se=se,
        baseline=baseline,
        n_permutations=used,
        concepts=concepts,
        meta=meta,
    )


#: How the service decides ``present`` (docs/api.md, docs/concepts.md); stored in the manifest.
PRESENCE_RULE = (
    "reliable, and the model's summed softmax over the concept's classes >= 0.5, and the probe's image "
    "score >= its veto_threshold"
)


def _cached_fits(p2, table, wnids, h, cfg, progress, on_step):
    if p2.exists():
        tt = load_file(str(p2))
        metrics = _load_meta(p2)["metrics"]
        sets = [_samples_for(table, w, h, wnids, cfg) for w in wnids]  # cheap and deterministic
        fits = [
            ClassifierFit(tt["weight"][i], float(tt["bias"][i]), m["precision"], m["recall"], m["f1"], len(s.y), 0)
            for i, (m, s) in enumerate(zip(metrics, sets, strict=True))
        ]
        _note(on_step, "classifiers", True)
        return fits, sets, {"scores": tt["scores"], "fold": tt["fold"], "metrics": metrics}
    fits, sets, cv = fit_concepts(table, wnids, h, cfg, progress)
    _atomic_save(
        {"weight": torch.stack([f.weight for f in fits]), "bias": torch.tensor([f.bias for f in fits]),
         "scores": cv["scores"], "fold": cv["fold"]},
        p2,
        {"metrics": cv["metrics"]},
    )  # fmt: skip
    _note(on_step, "classifiers", False)
    return fits, sets, cv


def _samples_for(table, w, h, wnids, cfg) -> ConceptSamples:
    return concept_samples(table, w, h.group_parent(w, wnids), h, cfg.max_positives, cfg.seed)


def _note(cb, step: str, cached: bool) -> None:
    log.info("%s: %s", step, "cached" if cached else "done")
    if cb:
        cb(step, cached)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _sharded_regions(backbone, samples, cfg, cache_dir, key, rank, world, progress):
    """Each rank extracts samples[rank::world] into a shard file; rank 0 merges them after a barrier."""
    mine = list(range(rank, len(samples), world))
    shard = cache_dir / f"regions-{key}-shard{rank}of{world}.safetensors"
    if not shard.exists():
        part, stats = extract_regions(backbone, [samples[i] for i in mine], cfg, progress and rank == 0)
        remap = torch.tensor(mine)
        part = RegionTable(part.features, remap[part.image], part.foreground, _scatter(part.label, remap, len(samples)))
        save_table(part, shard, stats)
    torch.distributed.barrier()
    if rank != 0:
        return None, {}
    parts, stats = [], []
    for r in range(world):
        t, s = load_table(cache_dir / f"regions-{key}-shard{r}of{world}.safetensors")
        parts.append(t)
        stats.append(s)
    table = merge_tables(parts, len(samples))
    secs = max(s["seconds"] for s in stats)
    n = sum(s["images"] for s in stats)
    merged = {
        "images": n,
        "unreadable": sum((s["unreadable"] for s in stats), []),
        "seconds": secs,
        "images_per_s": n / secs,
        "top1": sum(s["top1"] * s["images"] for s in stats) / max(n, 1),
        "foreground_fraction": float(table.foreground.float().mean()),
        "map_size": stats[0]["map_size"],
        "world_size": world,
    }
    return table, merged


def _scatter(label: torch.Tensor, remap: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.full((n,), -1, dtype=torch.long)
    out[remap] = label
    return out

"""The three HINT steps end to end: regions → concept classifiers → Shapley tables → ConceptBank.

Each step's output is cached under ``cache_dir`` by a content hash of its inputs and parameters, so a
rerun after a kill skips the finished steps. Step 1 can be sharded over ``torchrun`` processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from hint import __version__
from hint._utils.io import atomic_path
from hint.backbones import Backbone
from hint.bank import ConceptBank
from hint.build import presence
from hint.build.classifiers import ClassifierFit, fit_logistic
from hint.build.concepts import (
    DEFAULT_CONCEPTS,
    KIND,
    SHARES,
    ConceptSamples,
    RegionTable,
    concept_samples,
    paper_concepts,
    select_concepts,
)
from hint.build.config import BuildConfig
from hint.build.datasets import ImageDataset, Sample
from hint.build.exemplars import (
    QUALITY,
    QUANTILE,
    SIZE,
    WINDOW,
    TopPatches,
    forward_patches,
    make_exemplars,
    patches_path,
)
from hint.build.faithfulness import top_k_f1
from hint.build.reservoir import ImageReservoir
from hint.exemplars import Exemplars
from hint.hierarchy import Hierarchy
from hint.presence import POOL_FRACTION
from hint.regions import METHODS, responsible_regions
from hint.shapley import NeuronShapley

log = logging.getLogger("hint.build.pipeline")

#: Bumped when a step's algorithm changes, so that cached outputs of older code are not reused.
STEP_REVISION = {"regions": 2, "classifiers": 4, "shapley": 3, "exemplars": 1}


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, meta: dict | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            str(tmp),
            metadata={"meta": json.dumps(meta or {})},
        )


def load_meta(path: Path) -> dict:
    """The JSON metadata a step file was saved with (``{}`` when it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("meta", "{}"))


def samples_key(samples: list[Sample]) -> str:
    """Content key of an image list: file names, labels and sizes (not where the folder lies)."""
    return _key([(s.key, s.label, s.path.stat().st_size) for s in samples])


def extract_regions(
    backbone: Backbone,
    samples: list[Sample],
    cfg: BuildConfig,
    progress: bool = True,
    todo: list[int] | None = None,
    checkpoint: Path | None = None,
    patches: TopPatches | None = None,
) -> tuple[ImageReservoir, dict]:
    """Step 1, streamed: features at every position and responsible-region flags of ``samples[i]`` for
    ``i`` in ``todo`` (default: all), offered to a per-class :class:`~hint.build.reservoir.ImageReservoir`
    (``cfg.per_class`` images per class), so memory does not grow with the number of images; the photos'
    activations also to ``patches`` (:class:`hint.build.exemplars.TopPatches`) when given. With
    ``checkpoint``, the reservoir (and patches) and running statistics are saved every
    ``cfg.checkpoint_every`` images and a rerun resumes after the last save. Returns the reservoir and the
    running statistics."""
    todo = list(range(len(samples))) if todo is None else todo
    run = {"done": 0, "images": 0, "unreadable": [], "seconds": 0.0, "correct": 0, "fg": 0, "positions": 0}
    res = ImageReservoir(cfg.per_class, cfg.seed)
    if checkpoint is not None and checkpoint.exists():
        t = load_file(str(checkpoint))
        run = load_meta(checkpoint)
        res = ImageReservoir.from_state(t, cfg.per_class, cfg.seed)
        if patches is not None and "patches.value" in t:
            patches.merge(TopPatches.from_state(t, patches.k))
        elif patches is not None:  # a checkpoint without them: the images before it were not offered
            patches.partial = True
        log.info("step 1: resuming after %d of %d images", run["done"], len(todo))
    first = {}
    source = [first.setdefault(s.path, i) for i, s in enumerate(samples)]
    device = torch.device(cfg.device)
    model = backbone.model.to(device).eval()
    rest = todo[run["done"] :]
    ds = ImageDataset([samples[i] for i in rest], backbone.preprocess, backbone.input_size)
    loader = DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers, shuffle=False)
    since_save, t0 = 0, time.perf_counter() - run["seconds"]
    with METHODS[cfg.method](model, backbone.layer_module()) as attr:
        bar = tqdm(loader, desc="step 1: regions", unit="batch", disable=not progress)
        for x, y, idx, ok in bar:
            run["unreadable"] += [samples[rest[i]].path.name for i in idx[~ok].tolist()]
            run["done"] += len(idx)
            since_save += len(idx)
            if ok.any():
                x, y, idx = x[ok].to(device), y[ok].to(device), idx[ok]
                with torch.autocast(device.type, enabled=cfg.amp and device.type == "cuda"):
                    z, a = attr.attribute(x, y)
                _, mask = responsible_regions(a, cfg.threshold, cfg.quantile)
                run["correct"] += int((attr.logits.argmax(1) == y).sum())
                run["fg"] += int(mask.sum())
                run["positions"] += mask.numel()
                run["images"] += len(idx)
                run["map_size"] = list(z.shape[2:])
                if patches is not None:
                    photo = torch.tensor([samples[rest[i]].view == 0 for i in idx.tolist()])
                    patches.offer(z[photo.to(z.device)], torch.tensor([rest[i] for i in idx[photo].tolist()]))
                feats = z.permute(0, 2, 3, 1).reshape(len(idx), -1, z.shape[1]).half().cpu()
                masks = mask.reshape(len(idx), -1).cpu()
                for j, i in enumerate(idx.tolist()):
                    g = rest[i]
                    res.offer(
                        g,
                        samples[g].key,
                        samples[g].label,
                        feats[j].clone(),
                        masks[j].clone(),
                        source[g],
                        samples[g].view,
                    )
            if checkpoint is not None and since_save >= cfg.checkpoint_every:
                run["seconds"] = time.perf_counter() - t0
                _atomic_save(_step1_state(res, patches), checkpoint, run)
                since_save = 0
    run["seconds"] = time.perf_counter() - t0
    return res, run


def _step1_state(res: ImageReservoir, patches: TopPatches | None) -> dict[str, torch.Tensor]:
    """A step-1 checkpoint's tensors: the reservoir's, and the patches' when kept."""
    return {**res.state(), **(patches.state() if patches is not None else {})}


def region_stats(run: dict, kept: int, world: int = 1) -> dict:
    """The manifest's step-1 statistics from :func:`extract_regions`' running counts."""
    n = run["images"]
    return {
        "images": n,
        "unreadable": run["unreadable"],
        "seconds": run["seconds"],
        "images_per_s": n / max(run["seconds"], 1e-9),
        "top1": run["correct"] / max(n, 1),
        "foreground_fraction": run["fg"] / max(run["positions"], 1),
        "map_size": run.get("map_size"),
        "kept_images": kept,
        **({"world_size": world} if world > 1 else {}),
    }


def region_table(
    backbone: Backbone, samples: list[Sample], cfg: BuildConfig, progress: bool = True
) -> tuple[RegionTable, dict]:
    """Step 1 in memory: the reservoir's table and the statistics (no checkpoint)."""
    res, run = extract_regions(backbone, samples, cfg, progress)
    if not len(res):
        raise ValueError("no readable images")
    return res.table(), region_stats(run, len(res))


def save_table(table: RegionTable, path: Path, stats: dict) -> None:
    t = {
        "features": table.features,
        "image": table.image,
        "foreground": table.foreground,
        "label": table.label,
    }
    for k in ("index", "source", "view"):
        if getattr(table, k) is not None:
            t[k] = getattr(table, k)
    _atomic_save(t, path, stats)


def load_table(path: Path) -> tuple[RegionTable, dict]:
    """A step-1 table file and its statistics; ValueError when the file is not a region table."""
    t = load_file(str(path))
    missing = {"features", "image", "foreground", "label"} - set(t)
    if missing:
        raise ValueError(f"{path}: not a region table (no {', '.join(sorted(missing))})")
    return RegionTable(
        t["features"], t["image"], t["foreground"], t["label"], t.get("index"), t.get("source"), t.get("view")
    ), load_meta(path)


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
    keep: set[int] | frozenset[int] = frozenset(),
) -> tuple[list[ClassifierFit], list[ConceptSamples], list[torch.Tensor], dict]:
    """Step 2: one probe per concept (against its siblings, background and other regions, see
    :func:`hint.build.concepts.concept_samples`), trained on every image; its held-out region precision /
    recall / F1, image threshold and reliability come from ``cfg.folds``-fold cross-validation by image
    (:mod:`hint.presence`). Returns the fits, the samples (their counts only, except the concepts in
    ``keep``), each concept's Shapley regions (:func:`shapley_regions`), and ``{"scores", "fold",
    "metrics"}``."""
    parents = [hierarchy.group_parent(w, wnids) for w in wnids]
    fit = _probe_fit(cfg)
    with torch_threads(1):
        cv = presence.cross_validate(table, wnids, parents, hierarchy, fit, cfg.folds, cfg.seed, progress)
        fits, sets, metrics, regions = [], [], [], []
        gen = torch.Generator().manual_seed(cfg.seed)
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
            fits.append(
                ClassifierFit(
                    weight, bias, m["precision"], m["recall"], m["f1"], len(s.y), int(counts.n.sum())
                )
            )
            r, s = _keep_for_step3(s, e in keep, cfg, gen)
            regions.append(r)
            sets.append(s)
            metrics.append(m)
        return fits, sets, regions, {"scores": cv["scores"], "fold": cv["fold"], "metrics": metrics}


def _probe_fit(cfg: BuildConfig) -> Callable[[ConceptSamples], tuple[torch.Tensor, float]]:
    """Step 2's probe fit: weighted L2 logistic regression with the build's weight decay, on its device."""

    def fit(s: ConceptSamples) -> tuple[torch.Tensor, float]:
        return fit_logistic(s.x.to(cfg.device), s.y.to(cfg.device), s.weight.to(cfg.device), l2=cfg.l2)

    return fit


def out_of_fold_scores(
    table: RegionTable, wnids: list[str], hierarchy: Hierarchy, cfg: BuildConfig, progress: bool = True
) -> torch.Tensor:
    """(I, E) out-of-fold image scores of the probes, as step 2's cross-validation computes them."""
    parents = [hierarchy.group_parent(w, wnids) for w in wnids]
    with torch_threads(1):
        return presence.cross_validate(
            table, wnids, parents, hierarchy, _probe_fit(cfg), cfg.folds, cfg.seed, progress
        )["scores"]


def _keep_for_step3(
    s: ConceptSamples, rows: bool, cfg: BuildConfig, gen: torch.Generator
) -> tuple[torch.Tensor, ConceptSamples]:
    """What later steps keep of a concept's samples: its Shapley regions (drawn with ``gen``, concept
    after concept, so the fitting and the cached path draw the same) and the samples, with their rows
    only when ``rows`` (the faithfulness test needs them), else their counts alone (memory)."""
    kept = (
        s
        if rows
        else replace(s, x=s.x[:0], y=s.y[:0], image=s.image[:0], weight=s.weight[:0], kind=s.kind[:0])
    )
    return shapley_regions(s, cfg.shapley_regions, gen), kept


def shapley_tables(
    fits: list[ClassifierFit],
    regions: list[torch.Tensor],
    baseline: torch.Tensor,
    cfg: BuildConfig,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 3: φ (E, D), standard errors (E, D) and permutations used (E,) over each concept's regions
    r_E ∪ r_b* (its responsible regions and its background sample, as the paper's formula sums them;
    at most ``cfg.shapley_regions``, drawn in proportion)."""
    phi, se, used = [], [], []
    for fit, r in tqdm(list(zip(fits, regions, strict=True)), desc="step 3: Shapley", disable=not progress):
        res = NeuronShapley(fit.weight, fit.bias, baseline).attribute(
            r.to(cfg.device),
            n_permutations=cfg.permutations,
            seed=cfg.seed,
            top_k=cfg.top_k if cfg.patience else None,
            patience=cfg.patience,
        )
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
    distributed: bool = True,
    patches: int = 0,
) -> tuple[RegionTable | None, dict, str]:
    """Step 1, read from ``cache_dir`` when an identical run finished before: (table, stats, cache key).
    ``distributed=False``: this process alone, even under torchrun. ``patches`` > 0: the pass also keeps
    every neuron's top ``patches`` image patches, cached beside the table (:func:`cached_patches` reads them).

    Each process streams its images into its own reservoir with a checkpoint file beside the cache
    (a killed build resumes there). Under torchrun rank r takes ``samples[r::world]``; after a barrier
    rank 0 merges the ranks' reservoirs (the same images as one process keeps) and ranks > 0 get
    ``(None, {}, key)``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    k1 = _key(
        "regions",
        STEP_REVISION["regions"],
        backbone.name,
        backbone.layer,
        backbone.weights_sha256,
        samples_key(samples),
        cfg.params("method", "threshold", "quantile", "per_class", "seed"),
    )
    p1 = cache_dir / f"regions-{k1}.safetensors"
    if p1.exists():
        table, stats = load_table(p1)
        _note(on_step, "regions", True)
        return table, stats, k1
    rank, world = _dist() if distributed else (0, 1)
    part = [cache_dir / f"regions-{k1}-part{r}of{world}.safetensors" for r in range(world)]
    top = TopPatches(patches) if patches else None
    res, run = extract_regions(
        backbone,
        samples,
        cfg,
        progress and rank == 0,
        list(range(rank, len(samples), world)),
        part[rank],
        top,
    )
    if world > 1:
        if rank != 0:  # hand the reservoir (and patches) to rank 0
            _atomic_save(_step1_state(res, top), part[rank], run)
        torch.distributed.barrier()
        if rank != 0:
            return None, {}, k1
        runs = [run]
        for p in part[1:]:
            t = load_file(str(p))
            res.merge(ImageReservoir.from_state(t, cfg.per_class, cfg.seed))
            if top is not None and "patches.value" in t:
                top.merge(TopPatches.from_state(t, top.k))
            runs.append(load_meta(p))
        run = _combine_runs(runs)
    if not len(res):
        raise ValueError("no readable images")
    table, stats = res.table(), region_stats(run, len(res), world)
    if top is not None and not top.partial:  # else cached_patches makes them with a forward pass
        _atomic_save(top.state(), patches_path(cache_dir, k1, top.k))
    save_table(table, p1, stats)
    for p in part:
        p.unlink(missing_ok=True)
    _note(on_step, "regions", False)
    return table, stats, k1


def cached_patches(
    backbone: Backbone,
    samples: list[Sample],
    cfg: BuildConfig,
    cache_dir: Path,
    key: str,
    progress: bool = True,
) -> TopPatches:
    """Every neuron's top ``cfg.exemplars`` patches: the ones step 1 (cache key ``key``) kept, else (a step 1
    cached without them) from a forward pass over the photos, then cached."""
    path = patches_path(cache_dir, key, cfg.exemplars)
    if path.exists():
        return TopPatches.from_state(load_file(str(path)), cfg.exemplars)
    model = backbone.model.to(cfg.device).eval()
    top = forward_patches(
        model,
        backbone.layer_module(),
        samples,
        cfg.exemplars,
        backbone.preprocess,
        backbone.input_size,
        cfg.batch_size,
        cfg.workers,
        cfg.device,
        progress,
    )
    _atomic_save(top.state(), path)
    return top


def cached_exemplars(
    backbone: Backbone,
    samples: list[Sample],
    table: RegionTable,
    regions_key: str,
    phi: torch.Tensor,
    phi_key: str,
    wnids: list[str],
    hierarchy: Hierarchy,
    cfg: BuildConfig,
    cache_dir: Path,
    progress: bool = True,
    on_step: Callable[[str, bool], None] | None = None,
) -> Exemplars:
    """The neurons' exemplars and labels (:func:`hint.build.exemplars.make_exemplars`) from step 1's table and
    patches (``regions_key``: its cache key) and the Shapley table ``phi`` (E, D) (``phi_key``: what it is
    from), read from ``cache_dir`` when made before."""
    key = _key(
        regions_key, phi_key, STEP_REVISION["exemplars"], cfg.exemplars, SIZE, QUALITY, WINDOW, QUANTILE
    )
    path = cache_dir / f"exemplars-{key}.safetensors"
    if path.exists():
        m = load_meta(path)
        _note(on_step, "exemplars", True)
        return Exemplars(**load_file(str(path)), images=m["images"], info=m["info"])
    top = cached_patches(backbone, samples, cfg, cache_dir, regions_key, progress)
    ex = make_exemplars(top, samples, table, phi, wnids, hierarchy, progress=progress)
    _atomic_save(ex.tensors(), path, {"images": ex.images, "info": ex.info})
    _note(on_step, "exemplars", False)
    return ex


def _combine_runs(runs: list[dict]) -> dict:
    """One set of step-1 running counts from the ranks' (time: the slowest rank's)."""
    out = {k: sum(r[k] for r in runs) for k in ("done", "images", "correct", "fg", "positions")}
    out["unreadable"] = sum((r["unreadable"] for r in runs), [])
    out["seconds"] = max(r["seconds"] for r in runs)
    out["map_size"] = next((r["map_size"] for r in runs if r.get("map_size")), None)
    return out


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
    classes); the data-sufficiency rule (:func:`hint.build.concepts.select_concepts`) picks those built.
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
    table, stats, k1 = cached_regions(
        backbone, samples, cfg, cache_dir, progress, on_step, patches=cfg.exemplars
    )
    if table is None:
        return None  # type: ignore[return-value]  # a torchrun rank > 0: rank 0 goes on
    timings["regions"] = time.perf_counter() - t

    fg_per_image = torch.zeros(len(table.label), dtype=torch.long).index_add_(
        0, table.image, table.foreground.long()
    )
    photo_label = torch.where(table.originals, table.label, -1)  # the rule counts photos, not their views
    built, status = select_concepts(
        h, photo_label, fg_per_image, DEFAULT_CONCEPTS, cfg.min_images, cfg.min_regions, wnids
    )
    if not built:
        raise ValueError(
            f"no concept has {cfg.min_images} images and {cfg.min_regions} responsible regions in the data "
            f"({len(status)} candidates)"
        )
    baseline = baseline_for(table, backbone, cfg.baseline)
    structure = [(h[w].leaves, h[h.group_parent(w, built)].leaves) for w in built]  # what the samples follow
    k2 = _key(
        k1,
        STEP_REVISION["classifiers"],
        built,
        structure,
        SHARES,
        cfg.params("max_positives", "folds", "l2", "seed"),
    )
    p2 = cache_dir / f"classifiers-{k2}.safetensors"
    t = time.perf_counter()
    paper = faithfulness_concepts(built, h) if cfg.faithfulness_k else []
    fits, sets, regions, cv = _cached_fits(p2, table, built, h, cfg, set(paper), progress, on_step)
    image_metrics = presence.image_metrics(cv["scores"], photo_label, built, h, cfg.seed)
    timings["classifiers"] = time.perf_counter() - t
    t = time.perf_counter()
    rule = presence_rule(backbone, samples, table, cv["scores"], built, h, cfg.batch_size, progress)
    timings["presence_rule"] = time.perf_counter() - t

    k3 = _key(
        k2,
        STEP_REVISION["shapley"],
        cfg.params("baseline", "permutations", "shapley_regions", "top_k", "patience", "seed"),
    )
    p3 = cache_dir / f"shapley-{k3}.safetensors"
    t = time.perf_counter()
    if p3.exists():
        tt = load_file(str(p3))
        phi, se, used = tt["phi"], tt["phi_se"], tt["n_permutations"]
        _note(on_step, "shapley", True)
    else:
        phi, se, used = shapley_tables(fits, regions, baseline, cfg, progress)
        _atomic_save({"phi": phi, "phi_se": se, "n_permutations": used}, p3)
        _note(on_step, "shapley", False)
    timings["shapley"] = time.perf_counter() - t
    exemplars = None
    if cfg.exemplars:
        t = time.perf_counter()
        exemplars = cached_exemplars(
            backbone, samples, table, k1, phi, k3, built, h, cfg, cache_dir, progress, on_step
        )
        timings["exemplars"] = time.perf_counter() - t

    weight = torch.stack([f.weight for f in fits])
    faith = None
    del regions
    if paper:
        t = time.perf_counter()
        faith = {
            "k": cfg.faithfulness_k,
            "draws": cfg.faithfulness_draws,
            "concepts": [built[e] for e in paper],
            **top_k_f1(
                [sets[e] for e in paper],
                phi[paper],
                weight[paper],
                cfg.faithfulness_k,
                cfg.faithfulness_draws,
                cfg.seed,
                l2=cfg.l2,
                test_fraction=cfg.test_fraction,
                device=cfg.device,
            ),
        }
        timings["faithfulness"] = time.perf_counter() - t

    aliases: dict[str, list[str]] = {}
    for w, st in status.items():
        if st.startswith("alias of "):
            aliases.setdefault(st.removeprefix("alias of "), []).append(w)
    concepts = []
    for w, fit, s, m, im in zip(built, fits, sets, cv["metrics"], image_metrics, strict=True):
        c = h[w]
        concepts.append(
            {
                "wnid": w,
                "name": c.name,
                "path": [h[a].name for a in h.path(w)],
                "parent": s.parent,
                "depth": c.depth,
                "n_leaves": len(c.leaves),
                "n_pos": s.n_pos,
                "n_sibling": s.n_sibling,
                "n_background": s.n_background,
                "n_other": s.n_other,
                "n_train": fit.n_train,
                "n_test": fit.n_test,
                **m,
                **im,
                "aliases": aliases.get(w, []),
            }
        )
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
        "presence": {
            "pool_fraction": POOL_FRACTION,
            "folds": cfg.folds,
            "veto_recall": presence.VETO_RECALL,
            "rule": PRESENCE_RULE,
            "model": rule,
        },
        "sample_shares": SHARES,
        "candidates": [
            {"wnid": w, "name": h[w].name, "n_classes": len(h[w].leaves), "status": st}
            for w, st in status.items()
        ],
        "build": {
            **asdict(cfg),
            "n_images": stats.get("images"),
            "unreadable": len(stats.get("unreadable", [])),
            "step1": {k: v for k, v in stats.items() if k != "unreadable"},
            "timings_s": timings,
            "reused_from_cache": reused,
            "library_version": __version__,
        },
    }
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
        exemplars=exemplars,
    )


def faithfulness_concepts(built: list[str], h: Hierarchy, n: int = len(DEFAULT_CONCEPTS)) -> list[int]:
    """Indices of the concepts the top-k faithfulness test retrains: the paper's levels in the WordNet
    hierarchy, the ``n`` most general built concepts in a user's."""
    if h.builtin:
        paper = set(paper_concepts(h))
        return [e for e, w in enumerate(built) if w in paper]
    return list(range(min(n, len(built))))


#: How the service decides ``present`` (docs/api.md, docs/concepts.md); stored in the manifest.
PRESENCE_RULE = (
    "a * logit(model_probability) + b * logit(score) + c >= cut: the model's summed softmax over the concept's "
    "classes and the probe's image score, one logistic model for all concepts fit on the bank's build photos "
    "(out-of-fold probe scores), the cut with the best macro-F1 there among those at least as good as the "
    "softmax alone (all concepts, the paper's levels, false-positive rates); presence.model holds a, b, c, cut"
)


def _cached_fits(p2, table, wnids, h, cfg, keep, progress, on_step):
    if p2.exists():
        tt = load_file(str(p2))
        metrics = load_meta(p2)["metrics"]
        fits, sets, regions, gen = [], [], [], torch.Generator().manual_seed(cfg.seed)
        for e, (w, m) in enumerate(
            zip(wnids, metrics, strict=True)
        ):  # cheap, deterministic: fit_concepts' draws
            s = concept_samples(table, w, h.group_parent(w, wnids), h, cfg.max_positives, cfg.seed)
            fits.append(
                ClassifierFit(
                    tt["weight"][e], float(tt["bias"][e]), m["precision"], m["recall"], m["f1"], len(s.y), 0
                )
            )
            r, s = _keep_for_step3(s, e in keep, cfg, gen)
            regions.append(r)
            sets.append(s)
        _note(on_step, "classifiers", True)
        return fits, sets, regions, {"scores": tt["scores"], "fold": tt["fold"], "metrics": metrics}
    fits, sets, regions, cv = fit_concepts(table, wnids, h, cfg, progress, keep)
    _atomic_save(
        {
            "weight": torch.stack([f.weight for f in fits]),
            "bias": torch.tensor([f.bias for f in fits]),
            "scores": cv["scores"],
            "fold": cv["fold"],
        },
        p2,
        {"metrics": cv["metrics"]},
    )
    _note(on_step, "classifiers", False)
    return fits, sets, regions, cv


def _note(cb, step: str, cached: bool) -> None:
    log.info("%s: %s", step, "cached" if cached else "done")
    if cb:
        cb(step, cached)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def model_probabilities(
    backbone: Backbone,
    samples: list[Sample],
    table: RegionTable,
    wnids: list[str],
    hierarchy: Hierarchy,
    batch_size: int = 32,
    progress: bool = True,
) -> torch.Tensor:
    """(I, E) the model's softmax summed over each concept's classes, for the images of ``table``
    (``samples[table.index]``; NaN where an image does not read)."""
    idx = table.index.tolist() if table.index is not None else list(range(len(table.label)))
    leaves = torch.zeros(len(wnids), len(hierarchy.classes))
    for e, w in enumerate(wnids):
        leaves[e, list(hierarchy[w].leaves)] = 1.0
    loader = DataLoader(
        ImageDataset([samples[i] for i in idx], backbone.preprocess, backbone.input_size),
        batch_size=batch_size,
    )
    out = torch.full((len(idx), len(wnids)), float("nan"))
    model = backbone.model.eval()
    with torch.no_grad():
        for x, _, i, ok in tqdm(loader, desc="model probabilities", unit="batch", disable=not progress):
            if ok.any():
                out[i[ok]] = torch.softmax(model(x[ok]).float(), 1) @ leaves.T
    return out


def presence_rule(
    backbone: Backbone,
    samples: list[Sample],
    table: RegionTable,
    scores: torch.Tensor,
    wnids: list[str],
    hierarchy: Hierarchy,
    batch_size: int = 32,
    progress: bool = True,
) -> dict:
    """The served presence rule (:func:`hint.build.presence.fit_rule`) from the out-of-fold probe ``scores``
    (I, E) of the table's photos and the model's summed softmax on them."""
    probs = model_probabilities(backbone, samples, table, wnids, hierarchy, batch_size, progress)
    photos = table.originals & (table.label >= 0)
    truth = torch.stack([torch.isin(table.label, torch.tensor(hierarchy[w].leaves)) for w in wnids], 1)
    paper = set(paper_concepts(hierarchy))
    groups = {"paper_levels": torch.tensor([w in paper for w in wnids])} if paper else None
    rule = presence.fit_rule(probs[photos], scores[photos], truth[photos], groups)
    return {**rule, "fit_on": "the bank's build photos: out-of-fold probe scores, the model's summed softmax"}

"""WSOL evaluation of HINT concept maps against CAM: forward pass, maps, retrained variants, scoring.

:func:`evaluate` runs it all for one :class:`EvalConfig` and returns an :class:`Evaluation` (the
report dict and what the figures need); :mod:`hint.evaluation.wsol.report` writes tables and figures, and
:mod:`hint.evaluation.wsol.metrics` holds the metrics. The protocol is wsolevaluation's (Choe et al., CVPR 2020):

* images are squashed to the network input S × S (224) and the GT boxes resized to it with ``int()``
  (:func:`hint.evaluation.wsol.metrics.resize_bbox`); every low-resolution map, CAM or HINT, is upsampled the same way to
  S × S (``cubic`` as wsolevaluation's inference, or ``bilinear``) and min-max normalised;
* class-conditional maps (CAM, HINT-ancestor) are made for the **ground-truth** class; Top-1 Loc
  additionally needs a right top-1 class, where the predicted class is the ground-truth one.

Maps (rows of the report), all from one forward pass per batch:

* ``HINT-whole``: the ``whole`` concept classifier σ(αᵀz + b) at every position of the bank's layer (the
  bank's most general concept when it has no ``whole``);
* ``HINT-ancestor``: the classifier of the deepest bank concept above the ground-truth class;
* ``CAM``: final conv features weighted by the ground-truth class's FC row (no ReLU);
* ``CAM (predicted class)``: the same for the predicted class (reference);
* ``Grad-CAM (grad-cam)`` etc.: the library baselines of ``baselines`` (:mod:`hint.evaluation.cam_baselines`, at the
  CAM's layer, ground-truth class), each one more pass over the images;
* ``HINT-whole (x%)`` / ``HINT-ancestor (x%)``: classifiers retrained on the top x% neurons by Shapley
  value, on the bank's own concept samples (rebuilt from its step-1 region table);
* ``whole · shapley top-k`` etc.: the faithfulness test (top-k neurons by Shapley value, |α|, random);
* ``HINT-whole [name]``: any further classifier set, e.g. ``[step 1: gradient]`` (classifiers trained on
  regions found by another step-1 method). New variants plug in as a :data:`VariantBuilder`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hint import head
from hint._utils.options import option
from hint._utils.stats import bootstrap_weights
from hint.bank import ConceptBank
from hint.boxes import UPSAMPLING
from hint.build.classifiers import train_classifier
from hint.build.concepts import SHARES, ConceptSamples, RegionTable, concept_samples, paper_concepts
from hint.build.config import BuildConfig
from hint.build.faithfulness import select_neurons
from hint.build.head import build_config
from hint.build.pipeline import load_meta, load_table, save_table
from hint.build.pipeline import region_table as pipeline_region_table
from hint.evaluation.cam_baselines import BASELINES, ONE_PASS_PER_CHANNEL
from hint.evaluation.cam_baselines import DEFAULT as DEFAULT_BASELINES
from hint.evaluation.wsol import metrics as wsol
from hint.evaluation.wsol.served import SERVED, box_hits, level_hits, served
from hint.hierarchy import Hierarchy
from hint.probes import probe_map
from hint.regions import METHODS

CAM_LAYERS = {  # backbone -> (module whose output are the final conv features, the FC classifier)
    "efficientnet_lite0": ("_head_act", "_fc"),
    "resnet50": ("layer4", "fc"),
    "inception_v3": ("Mixed_7c", "fc"),
}
MAIN = (*SERVED.values(), "HINT-whole", "HINT-ancestor", "CAM")
CAM_PRED = "CAM (predicted class)"


@dataclass
class EvalConfig:
    """Everything one evaluation run depends on: the options of ``python -m offline evaluate-wsol``, made
    from these fields (:func:`hint._utils.options.add_arguments`; the order is the flags')."""

    bank: Path = option(help="concept bank folder")
    data: Path = option(help="folder of the images (or of images/)")
    annotations: Path | None = option(
        None, "CSV file,wnid,label_index,width,height,boxes_xyxy (default DATA/annotations.csv)"
    )
    out: Path = option(Path("docs/wsol"), "results folder (default %(default)s)")
    limit: int | None = option(None, "first N images only")
    split_seed: int = option(0, "seed of the selection/test halves")
    upsample: str = option(
        "cubic",
        "how every map is resized to the network input (default %(default)s, as wsolevaluation)",
        choices=UPSAMPLING,
    )
    export_npy: Path | None = option(
        None, "save score maps (.npy) and wsolevaluation metadata", metavar="DIR"
    )
    export_methods: Sequence[str] = option(
        MAIN, "methods to export (default: %(default)s; 'all' for every one)", metavar="METHOD"
    )
    cache: Path | None = option(None, "step cache of the bank (default BANK/../.hint-cache)")
    recompute_regions: bool = option(
        True,
        "never recompute the bank's step-1 table from its build data (then no "
        "retrained rows without a cache)",
    )
    percents: Sequence[int] = option((10, 20, 40, 80), "the (x%%) rows", nargs="*")
    faithfulness_k: int | None = option(
        None, f"neurons kept (default: the bank's, or {BuildConfig.faithfulness_k})"
    )
    draws: int = option(5, "random neuron draws (seeds) in the faithfulness test")
    step1_methods: Sequence[str] = option(
        (),
        f"also rows with classifiers trained on regions of these step-1 methods ({', '.join(METHODS)})",
        choices=METHODS,
        nargs="*",
        metavar="METHOD",
    )
    layers: Sequence[str] = option(
        (),
        "also rows with classifiers fit at these layers of the backbone "
        "(python -m hint.backbones layers NAME)",
        metavar="LAYER",
    )
    fuse: Sequence[str] = option(
        (),
        "also rows of fused maps: the mean of these layers' maps on the finest "
        "grid, e.g. _blocks.15+_blocks.10",
        metavar="L1+L2",
    )
    whole_negatives: Sequence[str] = option(
        (),
        "also HINT-whole rows (bank layer, --layers, --fuse) with the "
        "whole classifier trained against these negative kinds only, in equal "
        f"shares ({', '.join(SHARES)})",
        choices=SHARES,
        metavar="KIND",
    )
    baselines: Sequence[str] = option(
        DEFAULT_BASELINES,
        f"rows from pytorch-grad-cam (PyPI grad-cam) at the CAM's layer for the ground-truth class, scored as CAM: "
        f"{', '.join(BASELINES)} (default: {' '.join(DEFAULT_BASELINES)}, one forward and backward pass per batch "
        f"each, about 85 s per 1300 images on 2 CPU cores; {', '.join(sorted(ONE_PASS_PER_CHANNEL))}: one forward "
        "pass per channel, 1280 per image on efficientnet_lite0, 40-110 s per image, so only when named; none: "
        "--baselines alone)",
        choices=BASELINES,
        nargs="*",
        metavar="NAME",
    )
    retrain: bool = option(True, "skip the (x%%) rows, the faithfulness test and --step1-methods")
    weights: str | None = option(None, "backbone weights file (default: the packaged ones)")
    batch_size: int = option(32, "images per forward pass")
    jobs: int = option(1, "processes scoring the maps (default %(default)s)")
    overlays: int = option(6, "test images in overlays.png (0: none)")
    overlay_photos: bool = option(
        False, "draw the photographs under the heat maps (do not commit such figures of licensed data)"
    )
    progress: bool = option(True, "no progress bars")
    served: bool = (
        True  # the rows "HINT-whole (served)" / "HINT-ancestor (served)": the service's maps and boxes
    )
    command: str = ""  # the command line, recorded in the report

    @property
    def cache_dir(self) -> Path:
        return self.cache or self.bank.parent / ".hint-cache"


@dataclass
class ClassifierSet:
    """Concept classifiers for every bank concept (rows not retrained stay 0)."""

    name: str
    rule: str  # neuron choice: "bank", "shapley", "weight", "random", "all"
    k: int  # neurons used
    weight: torch.Tensor  # (E, D)
    bias: torch.Tensor  # (E,)
    f1: dict[str, float]
    role: str = "extra"  # "bank", "percent" (the (x%) rows), "faithfulness", "extra" (rows "HINT-… [name]")


@dataclass
class Forward:
    """One forward pass over the images."""

    z: torch.Tensor  # (N, D, h, w) float16, the bank's layer
    cam_gt: np.ndarray | None  # (N, h', w') CAM of the ground-truth class
    cam_pred: np.ndarray | None  # (N, h', w') CAM of the predicted class
    pred: np.ndarray  # (N,) top-1 class
    size: list[tuple[int, int]]  # stored image sizes (W, H)


@dataclass
class Context:
    """What a :data:`VariantBuilder` gets: the bank, the concepts whose maps are drawn and the cache."""

    cfg: EvalConfig
    bank: ConceptBank
    hierarchy: Hierarchy
    used: list[str]  # concept WNIDs with maps (whole + the ancestors)
    backbone: object


#: A function adding classifier sets: each set ``s`` gives the rows ``HINT-whole [s.name]`` and
#: ``HINT-ancestor [s.name]``; the dict's second value is recorded in the report.
VariantBuilder = Callable[[Context], tuple[list[ClassifierSet], dict]]


@dataclass
class Evaluation:
    report: dict
    annotations: list[wsol.Annotation]
    gt_boxes: list[np.ndarray]  # int boxes in the S × S evaluation space
    pred: np.ndarray
    kept: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]]  # overlay images: method -> (map, boxes per τ)
    hierarchy: Hierarchy = field(repr=False)


# ----------------------------------------------------------------------------------------- evaluate


def evaluate(cfg: EvalConfig, builders: Sequence[VariantBuilder] = ()) -> Evaluation:
    """Run the whole evaluation; ValueError/OSError for bad inputs (one readable line)."""
    from hint.backbones import get_backbone

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    if cfg.limit is not None and cfg.limit < 2:
        raise ValueError("--limit must be at least 2 (one selection and one test image)")
    bank = ConceptBank.load(cfg.bank)
    h = Hierarchy.load()
    ann_path = cfg.annotations or cfg.data / "annotations.csv"
    if not ann_path.is_file():
        raise FileNotFoundError(2, "no such file", str(ann_path))
    anns = wsol.load_annotations(ann_path, cfg.data, h)[: cfg.limit]
    if len(anns) < 2:
        raise ValueError(f"{ann_path}: needs at least 2 annotated images")
    n = len(anns)
    selection, test = wsol.split_indices(n, cfg.split_seed)
    labels = np.array([a.label for a in anns])

    bb = get_backbone(bank.meta["backbone"], bank.meta["layer"], cfg.weights)
    check_layers(bb, cfg.layers, cfg.fuse)
    s = bb.input_size
    t = time.perf_counter()
    fwd = forward_all(bb, anns, cfg.batch_size, cfg.progress)
    timings["forward"] = time.perf_counter() - t
    bank.check_backbone(bb.name, bb.layer, fwd.z.shape[1])
    for a, size in zip(anns, fwd.size, strict=True):
        if a.width and a.height and (a.width, a.height) != tuple(size):
            raise ValueError(
                f"{a.path}: image is {size[0]}x{size[1]}, the CSV says {a.width}x{a.height} "
                "(boxes must be in the stored image's pixels)"
            )
    gt_boxes = [wsol.resize_bbox(a.boxes_float, size, (s, s)) for a, size in zip(anns, fwd.size, strict=True)]
    correct = fwd.pred == labels

    whole = whole_concept(bank, h)
    found = [ancestor_concept(h.classes[c], bank.wnids, h) for c in labels]
    ancestors = [a or whole for a in found]
    used = sorted({whole, *ancestors})
    sets = {"bank": bank_set(bank)}
    retrain_info: dict = {"done": False, "reason": "disabled (--no-retrain)"}
    ctx = Context(cfg, bank, h, used, bb)
    k_faith = (
        cfg.faithfulness_k or BuildConfig.from_manifest(bank).faithfulness_k or BuildConfig.faithfulness_k
    )
    extra: dict[str, dict] = {}
    if cfg.retrain:
        t = time.perf_counter()
        new, retrain_info = retrained_sets(ctx, cfg.percents, k_faith, cfg.draws)
        sets.update({c.name: c for c in new})
        for build in [*([step1_builder(cfg.step1_methods)] if cfg.step1_methods else []), *builders]:
            more, info = build(ctx)
            sets.update({c.name: c for c in more})
            extra.update(info)
        timings["retrain"] = time.perf_counter() - t
    methods = method_table(
        sets,
        cfg.percents,
        k_faith if retrain_info.get("done") else None,
        cfg.draws,
        has_cam=fwd.cam_gt is not None,
    )
    raw = raw_maps(fwd, bank, sets, methods, whole, ancestors)
    served_info: dict = {}
    if cfg.served:
        t = time.perf_counter()
        from hint.explain import SERVING, Explainer

        ex = Explainer(bb, bank, h, **SERVING)  # as the TorchServe handler builds it
        paper = set(paper_concepts(h)) & set(bank.wnids)
        levels = [[w for w in h.path(h.classes[a.label]) if w in paper] for a in anns]
        got = served(ex, anns, whole, ancestors, cfg.batch_size, cfg.progress, levels=levels)
        methods = {**{name: ("served", kind) for kind, name in SERVED.items()}, **methods}
        raw.update({name: got[kind].maps for kind, name in SERVED.items()})
        served_info = {
            name: {"hits": box_hits(got[kind].boxes, anns), "present": got[kind].present}
            for kind, name in SERVED.items()
        }
        served_info["levels"] = level_hits(got["ancestor"], anns)
        served_info["box_threshold"] = ex.box_threshold({})
        served_info["head"] = None if bank.head is None else bank.head.manifest()
        timings["served"] = time.perf_counter() - t
    if cfg.baselines and fwd.cam_gt is None:
        _warn(f"no library baselines: no CAM layer known for {bb.name} (CAM_LAYERS)")
    elif cfg.baselines:  # rows right after the CAM rows
        from hint.evaluation.cam_baselines import library_cams, library_version

        lib = {}
        for b in cfg.baselines:
            t = time.perf_counter()
            lib.update(library_cams(bb, anns, [b], cfg.batch_size, cfg.progress))
            timings[f"baseline {b}"] = time.perf_counter() - t
        items, at = list(methods.items()), list(methods).index(CAM_PRED) + 1
        methods = dict(items[:at] + [(m, (library_version(), "library")) for m in lib] + items[at:])
        raw.update(lib)
        extra["baselines"] = {
            "library": library_version(),
            "layer": CAM_LAYERS[bb.name][0],
            "target": "ground-truth class",
        }
    if cfg.layers or cfg.fuse or cfg.whole_negatives:
        t = time.perf_counter()
        more, extra["layers"] = layer_rows(ctx, anns, whole, ancestors, raw, fwd.z)
        methods.update({m: (v, kind) for m, (v, kind, _) in more.items()})
        raw.update({m: r for m, (_, _, r) in more.items()})
        timings["layers"] = time.perf_counter() - t
    export = _export_set(cfg, methods)

    t = time.perf_counter()
    keep = (
        set(test[np.linspace(0, len(test) - 1, cfg.overlays).astype(int)].tolist()) if cfg.overlays else set()
    )
    jobs = [(i, {m: raw[m][i] for m in methods}, gt_boxes[i], anns[i].image_id, i in keep) for i in range(n)]
    export_to = (cfg.export_npy, {m: slug(m) for m in export}) if cfg.export_npy else None
    scores, kept = score_all(jobs, list(methods), (s, s), cfg.upsample, export_to, cfg.jobs, cfg.progress)
    timings["scoring"] = time.perf_counter() - t
    if cfg.export_npy:
        for split, idx in (("val", selection), ("test", test)):  # wsolevaluation: val = train-fullsup
            wsol.write_metadata(
                cfg.export_npy / "metadata" / "ILSVRC" / split,
                [anns[i].image_id for i in idx],
                labels[idx].tolist(),
                (s, s),
                [gt_boxes[i] for i in idx],
            )

    results = {m: wsol.localization_metrics(scores[m], correct, selection, test) for m in methods}
    timings["total"] = time.perf_counter() - t_start
    report = {
        "command": cfg.command,
        "bank": {
            "path": str(cfg.bank),
            "id": bank.id,
            "sha256": bank.sha256,
            "backbone": bb.name,
            "layer": bb.layer,
            "concepts": len(bank.concepts),
            "whole": h[whole].name,
        },
        "data": {
            "annotations": str(ann_path),
            "images": n,
            "selection": int(len(selection)),
            "test": int(len(test)),
            "split_seed": cfg.split_seed,
            "gt_boxes": int(sum(len(b) for b in gt_boxes)),
        },
        "protocol": {
            "thresholds": "np.arange(0, 1, 0.01)",
            "iou_loc": wsol.IOU_LOC,
            "max_box_acc_v2_iou": list(wsol.IOU_THRESHOLDS),
            "eval_size": [s, s],
            "upsample": cfg.upsample,
            "map_size": list(raw["HINT-whole"].shape[1:]),
            "cam_map_size": list(raw["CAM"].shape[1:]) if "CAM" in raw else None,
            "class_conditional_maps": "ground-truth class (CAM, HINT-ancestor)",
            "score_map": f"{cfg.upsample} resize to {s}x{s} (the network input), then per-image min-max",
            "gt_boxes": f"wsolevaluation resize_bbox to {s}x{s}: int(coordinate * {s} / stored size)",
        },
        "ancestors": {
            "fallback_to_whole": int(sum(a is None for a in found)),
            "counts": {
                h[w].name: int(c) for w, c in zip(*np.unique(ancestors, return_counts=True), strict=True)
            },
        },
        "retrain": retrain_info,
        "extra_variants": extra,
        "variants": {
            v.name: {"rule": v.rule, "k": v.k, "mean_f1_used": _mean_f1(v, used)} for v in sets.values()
        },
        "methods": {m: {"variant": methods[m][0], "map": methods[m][1], **results[m]} for m in methods},
        "bootstrap": bootstrap_report(scores, results, correct, test, cfg.split_seed),
        "served": served_report(served_info, scores, results, test, cfg.split_seed) if served_info else None,
        "curves_test": {
            m: {
                "box_acc_largest_50": wsol.box_accuracy(scores[m].iou_largest[test]).round(5).tolist(),
                **{
                    f"box_acc_all_{d}": wsol.box_accuracy(scores[m].iou_all[test], d / 100).round(5).tolist()
                    for d in wsol.IOU_THRESHOLDS
                },
            }
            for m in methods
        },
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    return Evaluation(report, anns, gt_boxes, fwd.pred, kept, h)


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


@contextmanager
def _single_thread() -> Iterator[None]:
    """Small L-BFGS problems: torch threads only add overhead (and one thread keeps fits reproducible)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------ forward


@contextmanager
def _hooks(model: torch.nn.Module, names: dict[str, str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks keeping each module's output: ``names`` maps a key to a module name."""
    mods = dict(model.named_modules())
    keep: dict[str, torch.Tensor] = {}
    handles = [
        mods[m].register_forward_hook(lambda _m, _i, o, k=k: keep.__setitem__(k, o.detach()))
        for k, m in names.items()
    ]
    try:
        yield keep
    finally:
        for hd in handles:
            hd.remove()


def _batches(bb, anns: list[wsol.Annotation], batch_size: int, progress: bool, desc: str):
    """(annotations, image sizes, logits) per batch of images, evaluation mode, no gradients."""
    from hint.build.datasets import load_rgb

    model = bb.model.eval()
    for s in tqdm(range(0, len(anns), batch_size), desc=desc, unit="batch", disable=not progress):
        batch = anns[s : s + batch_size]
        ims = [load_rgb(a.path) for a in batch]
        with torch.no_grad():
            logits = model(bb.preprocess(ims))
        yield batch, [im.size for im in ims], logits


def forward_all(bb, anns: list[wsol.Annotation], batch_size: int = 32, progress: bool = False) -> Forward:
    """The bank layer's activations, the CAMs of the ground-truth and the predicted class, the top-1
    class and the image sizes: one forward pass per batch (forward hooks)."""
    cam_spec = CAM_LAYERS.get(bb.name)
    names = {"z": bb.layer, **({"f": cam_spec[0]} if cam_spec else {})}
    fc = dict(bb.model.named_modules())[cam_spec[1]].weight.detach().float() if cam_spec else None
    zs, gts, preds_cam, preds, sizes = [], [], [], [], []
    with _hooks(bb.model, names) as keep:
        for batch, size, logits in _batches(bb, anns, batch_size, progress, "forward"):
            pred = logits.argmax(1)
            sizes += size
            preds.append(pred)
            zs.append(keep["z"].half())
            if cam_spec:
                gts.append(cam(keep["f"], fc, torch.tensor([a.label for a in batch])))
                preds_cam.append(cam(keep["f"], fc, pred))
    return Forward(
        torch.cat(zs),
        torch.cat(gts).numpy() if gts else None,
        torch.cat(preds_cam).numpy() if preds_cam else None,
        torch.cat(preds).numpy(),
        sizes,
    )


def cam(features: torch.Tensor, fc_weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """wsolevaluation's CAM: mean over channels of ``fc_weight[class, c] · f_c`` (no ReLU), (N, h, w)."""
    return torch.einsum("nchw,nc->nhw", features.float(), fc_weight[classes]) / features.shape[1]


def whole_concept(bank: ConceptBank, h: Hierarchy) -> str:
    """The bank's ``whole`` concept, or its most general one (smallest depth) when it has none."""
    w = h.find("whole").wnid
    return w if w in bank.wnids else min(bank.wnids, key=lambda x: (h[x].depth, x))


def ancestor_concept(wnid: str, bank_wnids: list[str], h: Hierarchy) -> str | None:
    """The deepest bank concept above (or at) a class: first the one on ``h.path`` (the most specific
    chain), else the deepest among all its ancestors; None when no bank concept is above it."""
    have = set(bank_wnids)
    on_path = next((w for w in h.path(wnid) if w in have), None)
    if on_path is not None:
        return on_path
    above = [a for a in h.ancestors(wnid) if a in have]
    return max(above, key=lambda a: (h[a].depth, a)) if above else None


# ------------------------------------------------------------------------- region tables (step 1)


def build_params(bank: ConceptBank) -> dict:
    """What the bank's manifest records of its build (its settings: :meth:`BuildConfig.from_manifest`)."""
    return dict(bank.meta.get("build", {}))


def own_table_name(bank: ConceptBank, method: str | None = None, layer: str | None = None) -> str:
    """File name of a step-1 table this module computed for a bank (``method``: another step-1 method;
    ``layer``: another layer of the bank's backbone)."""
    return (
        f"regions-wsol-{bank.id}{'-' + method if method else ''}{'-at-' + layer if layer else ''}.safetensors"
    )


def find_region_table(
    bank: ConceptBank, cache_dir: Path, method: str | None = None, layer: str | None = None
) -> Path | None:
    """The cached step-1 region table of a bank, or None.

    The build's table is the one whose metadata (its step-1 statistics: image count, seconds, top-1)
    equals the manifest's ``build.step1``, whatever its cache key; else this module's own
    ``regions-wsol-<bank id>.safetensors``. With ``method`` (another step-1 method) or ``layer`` (another
    layer): only the latter.
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return None
    want = build_params(bank).get("step1", {})
    keys = ("images", "seconds", "top1")
    if method is None and layer is None and want:
        for p in sorted(cache_dir.glob("regions-*.safetensors")):
            if "-part" in p.name or p.name.startswith("regions-wsol-"):
                continue
            try:
                meta = load_meta(p)
            except Exception:  # unreadable or foreign file: not the bank's
                continue
            if all(k in want and meta.get(k) == want[k] for k in keys):
                return p
    own = cache_dir / own_table_name(bank, method, layer)
    return own if own.is_file() else None


def region_table(ctx: Context, method: str | None = None, backbone=None) -> tuple[RegionTable | None, str]:
    """(the bank's step-1 table, or one made with another step-1 ``method`` or at another layer,
    ``backbone``; where it is) or (None, why not). Recomputed from the bank's build data and cached
    when allowed."""
    cfg, bank = ctx.cfg, ctx.bank
    layer = None if backbone is None or backbone.layer == bank.meta["layer"] else backbone.layer
    path = find_region_table(bank, cfg.cache_dir, method, layer)
    if path is not None:
        try:
            return load_table(path)[0], str(path)
        except (ValueError, OSError) as e:
            return None, str(e)
    params = build_params(bank)
    data = params.get("data")
    where = f"no cached step-1 region table of bank {bank.id} in {cfg.cache_dir}"
    if not cfg.recompute_regions:
        return None, f"{where} (recomputing is off: --no-recompute-regions)"
    root = next(
        (p for p in (Path(str(data)), cfg.bank.parent.parent / str(data)) if data and p.exists()), None
    )
    if root is None:
        return None, f"{where}, and the build data {data!r} is not here; pass --cache"
    from hint.build.datasets import discover

    samples = discover(root, ctx.hierarchy).samples
    total = (params.get("n_images") or 0) + (params.get("unreadable") or 0)
    samples = samples[:total] if total else samples  # built with --limit
    use = method or BuildConfig.from_manifest(bank).method
    at = f" at {layer}" if layer else ""
    _warn(
        f"step 1 ({use}{at}) on {len(samples)} images of {root} for the retrained variants (cached afterwards)"
    )
    step1 = replace(build_config(bank, cfg.batch_size), method=use)
    table, stats = pipeline_region_table(backbone or ctx.backbone, samples, step1, cfg.progress)
    out = cfg.cache_dir / own_table_name(bank, method, layer)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_table(table, out, {**stats, "method": use, "layer": layer or bank.meta["layer"]})
    return table, str(out)


# ----------------------------------------------------------------------------------------- retraining


def concept_sets(
    bank: ConceptBank,
    table: RegionTable,
    wnids: list[str],
    h: Hierarchy,
    shares: dict[str, float] | None = None,
) -> dict[str, ConceptSamples]:
    """Each concept's training samples, rebuilt as the bank build does: the manifest's group parent and
    build's positives cap and seed (``shares``: other negative shares)."""
    b = BuildConfig.from_manifest(bank)
    out = {}
    for w in wnids:
        parent = bank.concepts[bank.index(w)].get("parent") or h.group_parent(w, bank.wnids)
        out[w] = concept_samples(table, w, parent, h, b.max_positives, b.seed, shares)
    return out


def fit(bank: ConceptBank, s: ConceptSamples, neurons: torch.Tensor | None = None):
    """:func:`hint.build.classifiers.train_classifier` with the bank's training parameters (and the samples'
    loss weights when both have them), on CPU; held-out F1 is NaN when the build trained on every image."""
    b = BuildConfig.from_manifest(bank)
    # a build with cross-validated metrics (folds) fits each probe on every image
    return train_classifier(
        s.x,
        s.y,
        s.image,
        neurons=neurons,
        test_fraction=0.0 if b.folds else b.test_fraction,
        seed=b.seed,
        l2=b.l2,
        sample_weight=getattr(s, "weight", None),
    )


def bank_set(bank: ConceptBank) -> ClassifierSet:
    return ClassifierSet(
        "bank",
        "bank",
        bank.weight.shape[1],
        bank.weight.clone(),
        bank.bias.clone(),
        {c["wnid"]: c.get("f1", float("nan")) for c in bank.concepts},
        "bank",
    )


def retrain(
    name: str,
    rule: str,
    k: int,
    bank: ConceptBank,
    sets: dict[str, ConceptSamples],
    seed: int = 0,
    role: str = "extra",
) -> ClassifierSet:
    """Classifiers of the concepts in ``sets`` retrained on k neurons chosen by ``rule``
    (:func:`hint.build.faithfulness.select_neurons`; ``all``: every neuron); other rows are 0."""
    weight, bias, f1 = torch.zeros_like(bank.weight), torch.zeros_like(bank.bias), {}
    for w, s in sets.items():
        e = bank.index(w)
        gen = torch.Generator().manual_seed(1_000_003 * seed + e)
        neurons = None if rule == "all" else select_neurons(rule, k, bank.phi[e], bank.weight[e], gen)
        with _single_thread():
            r = fit(bank, s, neurons)
        weight[e], bias[e], f1[w] = r.weight, r.bias, r.f1
    return ClassifierSet(name, rule, k, weight, bias, f1, role)


def reproduction_check(bank: ConceptBank, sets: dict[str, ConceptSamples], n: int = 3) -> dict[str, float]:
    """Relative max |Δα| between the bank's classifiers and ones retrained on all neurons from the
    rebuilt samples (0 when samples and training are the bank's), for the first ``n`` concepts."""
    out = {}
    for w in list(sets)[:n]:
        e = bank.index(w)
        with _single_thread():
            diff = (fit(bank, sets[w]).weight - bank.weight[e]).abs().max()
        out[bank.concepts[e]["name"]] = float(diff / bank.weight[e].abs().max().clamp_min(1e-12))
    return out


def retrained_sets(
    ctx: Context, percents: Sequence[int], k_faith: int, draws: int
) -> tuple[list[ClassifierSet], dict]:
    """The (x%) and faithfulness classifier sets on the bank's own samples, and what was done (or why not)."""
    table, where = region_table(ctx)
    if table is None:
        _warn(f"(x%) rows and faithfulness skipped: {where}")
        return [], {"done": False, "reason": where}
    bank = ctx.bank
    sets = concept_sets(bank, table, ctx.used, ctx.hierarchy)
    check = reproduction_check(bank, sets)
    d = bank.weight.shape[1]
    if max(check.values()) > 1e-3:  # then the (x%) rows are compared with a (100%) row of the same samples
        _warn(
            f"classifiers retrained on all neurons differ from the bank's (relative max |Δα| "
            f"{max(check.values()):.2g}): another table or other sampling/training code; adding (100%) rows"
        )
        percents = [*percents, 100] if 100 not in percents else list(percents)
    jobs = [
        (f"shapley {x}%", "all" if x == 100 else "shapley", max(1, round(x / 100 * d)), 0, "percent")
        for x in percents
    ]
    jobs += [
        (f"shapley top-{k_faith}", "shapley", k_faith, 0, "faithfulness"),
        (f"|α| top-{k_faith}", "weight", k_faith, 0, "faithfulness"),
    ]
    jobs += [(f"random top-{k_faith} s{s}", "random", k_faith, s, "faithfulness") for s in range(draws)]
    out = [
        retrain(name, rule, k, bank, sets, seed, role)
        for name, rule, k, seed, role in tqdm(
            jobs, desc="retraining classifiers", disable=not ctx.cfg.progress
        )
    ]
    info = {
        "done": True,
        "table": where,
        "concepts": [bank.concepts[bank.index(w)]["name"] for w in ctx.used],
        "reproduction_rel_max_abs_diff": check,
        "k_faith": k_faith,
        "draws": draws,
        "percents": list(percents),
        "faithfulness": True,
        "neurons": d,
    }
    return out, info


def step1_builder(methods: Sequence[str]) -> VariantBuilder:
    """A :data:`VariantBuilder`: classifiers on all neurons, trained on the bank's concept samples drawn
    from regions of another step-1 method (``[step 1: gradient]`` etc.)."""

    def build(ctx: Context) -> tuple[list[ClassifierSet], dict]:
        out, info = [], {}
        for m in methods:
            table, where = region_table(ctx, None if m == BuildConfig.from_manifest(ctx.bank).method else m)
            if table is None:
                info[f"step 1: {m}"] = {"done": False, "reason": where}
                continue
            sets = concept_sets(ctx.bank, table, ctx.used, ctx.hierarchy)
            out.append(retrain(f"step 1: {m}", "all", ctx.bank.weight.shape[1], ctx.bank, sets))
            info[f"step 1: {m}"] = {
                "done": True,
                "table": where,
                "foreground_fraction": round(float(table.foreground.float().mean()), 4),
            }
        return out, info

    return build


# --------------------------------------------------------------------------- other layers, fused maps


def check_layers(bb, layers: Sequence[str], groups: Sequence[str]) -> None:
    """ValueError (one line) for a layer the backbone lacks or a fused group of fewer than two layers."""
    names = set(dict(bb.model.named_modules()))
    for g in groups:
        if len(set(g.split("+"))) < 2:
            raise ValueError(f"--fuse {g}: give two or more layers joined by '+', e.g. _blocks.15+_blocks.10")
    unknown = [
        x for x in dict.fromkeys([*layers, *(x for g in groups for x in g.split("+"))]) if x not in names
    ]
    if unknown:
        raise ValueError(
            f"{bb.name} has no layer {', '.join(unknown)} (python -m hint.backbones layers {bb.name})"
        )


def fuse(maps: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of (N, h_i, w_i) maps, each resized (bilinear) to the finest grid among them
    (:func:`hint.head.fuse`, the service's fusion, on numpy maps)."""
    return head.fuse([torch.from_numpy(np.asarray(m, np.float32)) for m in maps]).numpy()


def concept_maps(
    bb,
    anns: list[wsol.Annotation],
    weight: torch.Tensor,
    bias: torch.Tensor,
    rows: Sequence[torch.Tensor],
    batch_size: int = 32,
    progress: bool = False,
) -> list[np.ndarray]:
    """One forward pass: for each ``r`` of ``rows``, (N, h, w) maps σ(αᵀz + b) at ``bb``'s layer, image n
    with classifier ``r[n]``."""
    out: list[list[torch.Tensor]] = [[] for _ in rows]
    with _hooks(bb.model, {"z": bb.layer}) as keep:
        for i, (batch, _, _) in enumerate(_batches(bb, anns, batch_size, progress, f"maps at {bb.layer}")):
            z = keep["z"].float()
            for o, r in zip(out, rows, strict=True):
                r = r[i * batch_size : i * batch_size + len(batch)]
                o.append(probe_map(z, weight[r], bias[r]))
    return [torch.cat(o).numpy() for o in out]


def negatives_tag(kinds: Sequence[str]) -> str:
    return "negatives: " + "+".join(kinds)


def _fit_all(bank: ConceptBank, sets: dict[str, ConceptSamples], desc: str, progress: bool):
    """(weight (E, D), bias (E,)) of the concepts in ``sets``, in their order, fit with the bank's settings."""
    fits = []
    for w in tqdm(list(sets), desc=desc, disable=not progress):
        with _single_thread():
            fits.append(fit(bank, sets[w]))
    return torch.stack([f.weight for f in fits]), torch.tensor([float(f.bias) for f in fits])


def layer_rows(
    ctx: Context,
    anns: list[wsol.Annotation],
    whole: str,
    ancestors: list[str],
    raw: dict[str, np.ndarray],
    z: torch.Tensor,
) -> tuple[dict[str, tuple[str, str, np.ndarray]], dict]:
    """Rows ``HINT-whole [layer L]`` and ``HINT-ancestor [layer L]`` for each layer of ``ctx.cfg.layers``,
    ``[fused L1+L2…]`` for each group of ``ctx.cfg.fuse`` (the mean of the group's maps on its finest grid,
    :func:`fuse`) and, with ``ctx.cfg.whole_negatives``, the same ``HINT-whole`` rows (and one on the bank's
    layer) with the ``whole`` classifier trained against those negative kinds only, in equal shares.

    At another layer than the bank's, the concepts in use are fit with the bank's samples and settings on
    that layer's step-1 table (the bank's step-1 method on its build data, cached), then one forward pass
    draws their maps; the bank's own layer is the bank's classifiers (``z``: its activations). Returns
    method → (variant, map kind, maps) and what was done per layer."""
    from hint.backbones import get_backbone

    cfg, bank = ctx.cfg, ctx.bank
    neg = list(cfg.whole_negatives)
    shares = {k: 1 / len(neg) if k in neg else 0.0 for k in SHARES} if neg else None
    used = [whole, *sorted(set(ctx.used) - {whole})]
    rows = torch.tensor([used.index(a) for a in ancestors])
    maps: dict[str, dict[str, np.ndarray]] = {}
    info: dict[str, dict] = {}
    groups = [g.split("+") for g in cfg.fuse]
    own = bank.meta["layer"]
    for layer in dict.fromkeys([*cfg.layers, *(x for g in groups for x in g), *([own] if neg else [])]):
        bb = None if layer == own else get_backbone(bank.meta["backbone"], layer, cfg.weights)
        if bb is None:
            maps[layer] = {"whole": raw["HINT-whole"], "ancestor": raw["HINT-ancestor"]}
            info[layer] = {
                "done": True,
                "classifiers": "the bank's",
                "map_size": list(raw["HINT-whole"].shape[1:]),
            }
            if not neg:
                continue
        table, where = region_table(ctx, None, bb)
        if table is None:
            info.setdefault(layer, {}).update({"done": bb is None, "reason": where})
            _warn(f"rows at layer {layer} skipped: {where}")
            continue
        keys, weight, bias = [], torch.zeros(0, table.dim), torch.zeros(0)
        if bb is not None:  # every concept in use, fit at this layer
            keys = ["whole", "ancestor"]
            weight, bias = _fit_all(
                bank, concept_sets(bank, table, used, ctx.hierarchy), f"classifiers at {layer}", cfg.progress
            )
        if neg:  # and `whole` against the chosen negatives only
            w, b = _fit_all(
                bank, concept_sets(bank, table, [whole], ctx.hierarchy, shares), negatives_tag(neg), False
            )
            keys.append("whole_neg")
            weight, bias = torch.cat([weight, w]), torch.cat([bias, b])
        if bb is None:
            maps[layer]["whole_neg"] = probe_map(z.float(), weight[0], bias[0]).numpy()
        else:
            rowsets = {"whole": 0, "ancestor": rows, "whole_neg": len(weight) - 1}
            rowsets = [
                torch.full((len(anns),), r) if isinstance(r, int) else r for r in map(rowsets.get, keys)
            ]
            maps[layer] = dict(
                zip(
                    keys,
                    concept_maps(bb, anns, weight, bias, rowsets, cfg.batch_size, cfg.progress),
                    strict=True,
                )
            )
            info[layer] = {
                "done": True,
                "table": where,
                "neurons": table.dim,
                "map_size": list(maps[layer]["whole"].shape[1:]),
                "foreground_fraction": round(float(table.foreground.float().mean()), 4),
            }
        if neg:
            info[layer]["whole_shares"] = shares
    out: dict[str, tuple[str, str, np.ndarray]] = {}
    kinds = [
        ("whole", "whole", ""),
        ("ancestor", "ancestor", ""),
        ("whole_neg", "whole", f", {negatives_tag(neg)}"),
    ]
    if "whole_neg" in maps.get(own, {}):
        out[f"HINT-whole [{negatives_tag(neg)}]"] = (negatives_tag(neg), "whole", maps[own]["whole_neg"])
    for name, layers in [
        *((f"layer {x}", [x]) for x in dict.fromkeys(cfg.layers) if x != own),
        *(("fused " + "+".join(g), g) for g in groups),
    ]:
        for key, kind, tag in kinds:
            if all(key in maps.get(x, {}) for x in layers):
                out[f"HINT-{kind} [{name}{tag}]"] = (name + tag, kind, fuse([maps[x][key] for x in layers]))
    return out, info


# ------------------------------------------------------------------------------------- maps, scoring


def method_table(
    sets: dict[str, ClassifierSet],
    percents: Sequence[int],
    k_faith: int | None,
    draws: int,
    has_cam: bool = True,
) -> dict[str, tuple[str, str]]:
    """Method name → (classifier set, map kind ``whole``/``ancestor``/``cam``/``cam_pred``), report order."""
    m = {"HINT-whole": ("bank", "whole"), "HINT-ancestor": ("bank", "ancestor")}
    if has_cam:
        m |= {"CAM": ("bank", "cam"), CAM_PRED: ("bank", "cam_pred")}
    for x in [*percents, 100]:
        if f"shapley {x}%" in sets and f"HINT-whole ({x}%)" not in m:
            m[f"HINT-whole ({x}%)"] = (f"shapley {x}%", "whole")
            m[f"HINT-ancestor ({x}%)"] = (f"shapley {x}%", "ancestor")
    for name in [n for n, c in sets.items() if c.role == "extra"]:
        m[f"HINT-whole [{name}]"] = (name, "whole")
        m[f"HINT-ancestor [{name}]"] = (name, "ancestor")
    if k_faith:
        for kind in ("whole", "ancestor"):
            for v in (
                f"shapley top-{k_faith}",
                f"|α| top-{k_faith}",
                *(f"random top-{k_faith} s{s}" for s in range(draws)),
            ):
                if v in sets:
                    m[f"{kind} · {v}"] = (v, kind)
    return m


def raw_maps(
    fwd: Forward,
    bank: ConceptBank,
    sets: dict[str, ClassifierSet],
    methods: dict[str, tuple[str, str]],
    whole: str,
    ancestors: list[str],
) -> dict[str, np.ndarray]:
    """Method → (N, h, w) low-resolution maps: concept maps σ(αᵀz + b), or the CAM."""
    z = fwd.z.float()
    iw = bank.index(whole)
    ia = torch.tensor([bank.index(a) for a in ancestors])
    out = {}
    for m, (v, kind) in methods.items():
        if kind in ("cam", "cam_pred"):
            out[m] = fwd.cam_gt if kind == "cam" else fwd.cam_pred
            continue
        c = sets[v]
        i = iw if kind == "whole" else ia
        out[m] = probe_map(z, c.weight[i], c.bias[i]).numpy()
    return out


def _score_chunk(chunk: list, size: tuple[int, int], upsample: str, export_to) -> list:
    """(index, {method: (IoU largest (T,), IoU all (T,), pointing hit)}, {method: (map, boxes)} for overlays)."""
    out = []
    for i, raws, boxes, image_id, keep in chunk:
        res, kept = {}, {}
        for m, r in raws.items():
            sm = wsol.score_map(r, size[0], size[1], upsample)
            big, every, largest = wsol.image_ious(sm, boxes)
            res[m] = (big, every, wsol.pointing_hit(sm, boxes))
            if export_to and m in export_to[1]:
                wsol.export_scoremap(export_to[0] / export_to[1][m], image_id, sm)
            if keep and m in MAIN:
                kept[m] = (sm, largest)
        out.append((i, res, kept))
    return out


def score_all(
    jobs: list,
    methods: list[str],
    size: tuple[int, int],
    upsample: str,
    export_to=None,
    workers: int = 1,
    progress: bool = False,
) -> tuple[dict[str, wsol.MethodScores], dict]:
    """Score the maps of every image (in ``workers`` processes when > 1): MethodScores per method."""
    scores = {m: wsol.MethodScores.empty(len(jobs)) for m in methods}
    kept: dict[int, dict] = {}
    chunks = [jobs[s : s + 8] for s in range(0, len(jobs), 8)]
    bar = tqdm(total=len(jobs), desc="scoring maps", unit="img", disable=not progress)

    def collect(part):
        for i, res, k in part:
            for m, (big, every, hit) in res.items():
                scores[m].iou_largest[i], scores[m].iou_all[i], scores[m].pointing[i] = big, every, hit
            if k:
                kept[i] = k
        bar.update(len(part))

    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            args = [[size] * len(chunks), [upsample] * len(chunks), [export_to] * len(chunks)]
            for part in pool.map(_score_chunk, chunks, *args):
                collect(part)
    else:
        for c in chunks:
            collect(_score_chunk(c, size, upsample, export_to))
    bar.close()
    return scores, kept


def _export_set(cfg: EvalConfig, methods: dict) -> set[str]:
    if not cfg.export_npy:
        return set()
    if list(cfg.export_methods) == ["all"]:
        return set(methods)
    if tuple(cfg.export_methods) == MAIN:
        return set(MAIN) & set(methods)
    unknown = [m for m in cfg.export_methods if m not in methods]
    if unknown:
        raise ValueError(f"--export-methods: unknown {', '.join(unknown)}; choose from {', '.join(methods)}")
    return set(cfg.export_methods)


def slug(method: str) -> str:
    """A folder name for a method (``HINT-whole (20%)`` → ``HINT-whole_20pct``)."""
    keep = "".join(
        c if c.isalnum() or c in "-_" else "_"
        for c in method.replace("%", "pct").replace("|α|", "abs_alpha").replace("++", "pp")
    )
    return "_".join(filter(None, keep.split("_")))


def _mean_f1(v: ClassifierSet, used: list[str]) -> float | None:
    vals = [v.f1[w] for w in used if w in v.f1 and v.f1[w] == v.f1[w]]
    return round(float(np.mean(vals)), 4) if vals else None


# ------------------------------------------------------------------------------------------ bootstrap


def bootstrap_report(
    scores: dict[str, wsol.MethodScores],
    results: dict,
    correct: np.ndarray,
    test: np.ndarray,
    seed: int,
    draws: int = 1000,
) -> dict:
    """95% bootstrap intervals over the test images of each row's metrics, the paired differences
    row − CAM (same resamples), and the faithfulness differences (Shapley − |α|, Shapley − random)."""
    weights = bootstrap_weights(len(test), draws, seed)
    th = np.round(wsol.THRESHOLDS, 4)
    samples = {
        m: wsol.bootstrap_metrics(
            scores[m], correct, test, int(np.argmin(np.abs(th - results[m]["threshold"]))), weights
        )
        for m in results
    }
    main = [m for m in samples if "·" not in m]
    out: dict = {"draws": draws, "ci95": {m: {k: wsol.ci95(samples[m][k]) for k in samples[m]} for m in main}}
    if "CAM" in samples:
        out["minus_cam_ci95"] = {
            m: {k: wsol.ci95(v - samples["CAM"][k]) for k, v in samples[m].items()}
            for m in main
            if m != "CAM"
        }
    faith = {}
    for kind in ("whole", "ancestor"):
        shap = [m for m in samples if m.startswith(f"{kind} · shapley top-")]
        alpha = [m for m in samples if m.startswith(f"{kind} · |α| top-")]
        rand = [m for m in samples if m.startswith(f"{kind} · random top-")]
        if not (shap and alpha and rand):
            continue
        s, a = samples[shap[0]], samples[alpha[0]]
        r = {k: np.mean([samples[m][k] for m in rand], 0) for k in s}
        faith[f"HINT-{kind}"] = {
            "shapley_minus_alpha": {k: wsol.ci95(s[k] - a[k]) for k in s},
            "shapley_minus_random": {k: wsol.ci95(s[k] - r[k]) for k in s},
        }
    if faith:
        out["faithfulness_ci95"] = faith
    return out


def served_report(
    info: dict,
    scores: dict[str, wsol.MethodScores],
    results: dict,
    test: np.ndarray,
    seed: int,
    draws: int = 1000,
) -> dict:
    """The served boxes on the test half: box accuracy (IoU >= 0.5 with a GT box, as the service drew
    them), its 95% bootstrap interval and the paired difference to CAM's GT-known Loc (same resamples),
    the share of images where the concept is marked present, the box threshold and the head."""
    weights = bootstrap_weights(len(test), draws, seed)
    th = np.round(wsol.THRESHOLDS, 4)
    cam = None
    if "CAM" in scores:
        k = int(np.argmin(np.abs(th - results["CAM"]["threshold"])))
        cam = scores["CAM"].iou_largest[test][:, k] >= wsol.IOU_LOC
    out: dict = {"box_threshold": info["box_threshold"], "head": info["head"], "rows": {}}
    for name in SERVED.values():
        hits = info[name]["hits"][test].astype(np.float64)
        boot = weights @ hits / len(test)
        row = {
            "box_acc": round(float(hits.mean()), 4),
            "box_acc_ci95": wsol.ci95(boot),
            "present": round(float(info[name]["present"][test].mean()), 4),
        }
        if cam is not None:
            row["minus_cam_gt_known_ci95"] = wsol.ci95(boot - weights @ cam.astype(np.float64) / len(test))
        out["rows"][name] = row
    # every paper level on the ground-truth class's path: per image the share of its levels whose box hits
    lv = [info["levels"][i] for i in test]
    has = np.array([len(x) > 0 for x in lv])
    share = np.array([x.mean() if len(x) else 0.0 for x in lv])
    boot = (weights * has) @ share / np.maximum(weights @ has, 1)
    row = {
        "box_acc": round(float(share[has].mean()), 4) if has.any() else None,
        "box_acc_ci95": wsol.ci95(boot),
        "images": int(has.sum()),
        "pairs": int(sum(len(x) for x in lv)),
    }
    if cam is not None:
        row["minus_cam_gt_known_ci95"] = wsol.ci95(
            boot - (weights * has) @ cam / np.maximum(weights @ has, 1)
        )
    out["paper_levels"] = row
    return out

"""``python -m offline evaluate-wsol``: WSOL metrics of HINT concept maps and a CAM baseline.

One forward pass per batch (hooks on the bank's layer and on the CAM features) gives, per image:

* **HINT-whole**: the ``whole`` concept classifier's map σ(αᵀz + b) (14×14 for efficientnet_lite0);
* **HINT-ancestor**: the map of the predicted class's deepest ancestor in the bank, on
  ``Hierarchy.path`` of the predicted WNID (``whole`` when the path meets no bank concept);
* **CAM**: final conv features weighted by the predicted class's FC row (efficientnet_lite0:
  ``_head_act`` 7×7×1280 and ``_fc``);
* **(x%)**: the whole/ancestor maps of classifiers retrained on the top x% neurons by Shapley value,
  on the bank's own concept samples (rebuilt from the cached step-1 region table);
* the faithfulness comparison: classifiers on the top-k neurons by Shapley value vs |α| vs random.

Maps are upsampled bilinearly to the stored image (the boxes' pixel space), min-max normalised and
scored with :mod:`hint.wsol` (GT-known Loc, Top-1 Loc, MaxBoxAcc, MaxBoxAccV2, pointing game, IoU);
the operating threshold is chosen on a seeded half of the images and metrics are reported on the
other half. Writes ``results.json``, ``results.md``, ``curves.png``, ``faithfulness.png`` and
``overlays.png`` into ``--out``; ``--export-npy DIR`` saves the score maps in wsolevaluation's layout
(``DIR/<method>/<image id>.npy``, plus ``DIR/metadata/{selection,test}/``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hint import wsol

CAM_LAYERS = {  # backbone -> (module whose output are the final conv features, the FC classifier)
    "efficientnet_lite0": ("_head_act", "_fc"),
    "resnet50": ("layer4", "fc"),
    "inception_v3": ("Mixed_7c", "fc"),
}
MAIN = ("HINT-whole", "HINT-ancestor", "CAM")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate-wsol", help="WSOL metrics (wsolevaluation) of HINT maps vs CAM")
    p.add_argument("--bank", type=Path, default=Path("model_store/hint-bank"), help="concept bank folder")
    p.add_argument("--data", type=Path, required=True, help="folder of the images (or of images/)")
    p.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="CSV file,wnid,label_index,width,height,boxes_xyxy (default DATA/annotations.csv)",
    )
    p.add_argument("--out", type=Path, default=Path("docs/wsol"), help="results folder (default %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the selection/test halves")
    p.add_argument("--export-npy", type=Path, default=None, metavar="DIR", help="save score maps as .npy")
    p.add_argument(
        "--export-methods",
        nargs="+",
        default=list(MAIN),
        metavar="METHOD",
        help="methods to export (default: %(default)s; 'all' for every one)",
    )
    p.add_argument(
        "--cache", type=Path, default=None, help="step cache of the bank (default BANK/../.hint-cache)"
    )
    p.add_argument(
        "--recompute-regions",
        action="store_true",
        help="recompute the bank's step-1 table from its build data when it is not cached",
    )
    p.add_argument("--percents", type=int, nargs="*", default=[10, 20, 40, 80], help="the (x%%) rows")
    p.add_argument(
        "--faithfulness-k", type=int, default=None, help="neurons kept (default: the bank's, or 20)"
    )
    p.add_argument(
        "--draws", type=int, default=5, help="random neuron draws (seeds) in the faithfulness test"
    )
    p.add_argument("--no-retrain", action="store_true", help="skip the (x%%) rows and the faithfulness test")
    p.add_argument("--weights", default=None, help="backbone weights file (default: the packaged ones)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--jobs", type=int, default=1, help="processes scoring the maps (default %(default)s)")
    p.add_argument("--overlays", type=int, default=6, help="test images in overlays.png (0: none)")
    p.add_argument(
        "--overlay-photos",
        action="store_true",
        help="draw the photographs under the heat maps (do not commit such figures of licensed data)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from hint.backbones import get_backbone
    from hint.bank import ConceptBank
    from hint.hierarchy import Hierarchy

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    progress = not args.no_progress
    if args.limit is not None and args.limit < 2:
        raise ValueError("--limit must be at least 2 (one selection and one test image)")
    bank = ConceptBank.load(args.bank)
    h = Hierarchy.load()
    ann_path = args.annotations or args.data / "annotations.csv"
    if not ann_path.is_file():
        raise FileNotFoundError(2, "no such file", str(ann_path))
    anns = wsol.load_annotations(ann_path, args.data, h)
    if args.limit:
        anns = anns[: args.limit]
    if len(anns) < 2:
        raise ValueError(f"{ann_path}: needs at least 2 annotated images")
    n = len(anns)
    selection, test = wsol.split_indices(n, args.split_seed)

    bb = get_backbone(bank.meta["backbone"], bank.meta["layer"], args.weights)
    whole = _whole_concept(bank, h)

    t = time.perf_counter()
    fwd = forward_all(bb, anns, args.batch_size, progress)
    timings["forward"] = time.perf_counter() - t
    bank.check_backbone(bb.name, bb.layer, fwd["z"].shape[1])
    for a, size in zip(anns, fwd["size"], strict=True):
        if a.width and a.height and (a.width, a.height) != tuple(size):
            raise ValueError(f"{a.path}: image is {size[0]}x{size[1]}, the CSV says {a.width}x{a.height} "
                             "(boxes must be in the stored image's pixels)")  # fmt: skip
    correct = fwd["pred"] == np.array([a.label for a in anns])

    ancestors, fallback = [], 0
    for p in fwd["pred"]:
        a = wsol.deepest_bank_concept(h.classes[p], bank.wnids, h)
        fallback += a is None
        ancestors.append(a or whole)

    variants = {"bank": wsol.bank_variant(bank)}
    retrain_info: dict = {"done": False}
    if not args.no_retrain:
        t = time.perf_counter()
        variants, retrain_info = retrained_variants(
            bank, args, sorted({whole, *ancestors}), variants, progress
        )
        timings["retrain"] = time.perf_counter() - t

    methods = method_table(variants, args, retrain_info.get("k_faith"))
    raw = raw_maps(fwd, bank, variants, methods, whole, ancestors)
    export = _export_set(args, methods)

    t = time.perf_counter()
    overlay_idx = (
        set(test[np.linspace(0, len(test) - 1, args.overlays).astype(int)].tolist())
        if args.overlays
        else set()
    )
    jobs = [
        (
            i,
            {m: raw[m][i] for m in methods},
            fwd["size"][i],
            anns[i].boxes,
            anns[i].image_id,
            i in overlay_idx,
        )
        for i in range(n)
    ]
    export_to = (args.export_npy, {m: _slug(m) for m in export}) if args.export_npy else None
    scores, kept = score_all(jobs, list(methods), n, export_to, args.jobs, progress)
    timings["scoring"] = time.perf_counter() - t
    if args.export_npy:
        wsol.write_metadata(args.export_npy / "metadata" / "selection", anns, selection)
        wsol.write_metadata(args.export_npy / "metadata" / "test", anns, test)

    results = {m: wsol.localization_metrics(scores[m], correct, selection, test) for m in methods}
    uncertainty = bootstrap_report(scores, results, correct, test, args.split_seed)
    timings["total"] = time.perf_counter() - t_start
    report = {
        "command": command_line(args),
        "bank": {"path": str(args.bank), "id": bank.id, "sha256": bank.sha256, "backbone": bb.name,
                 "layer": bb.layer, "concepts": len(bank.concepts), "whole": h[whole].name},
        "data": {"annotations": str(ann_path), "images": n, "selection": int(len(selection)),
                 "test": int(len(test)), "split_seed": args.split_seed,
                 "gt_boxes": int(sum(len(a.boxes) for a in anns))},
        "protocol": {"thresholds": "np.arange(0, 1, 0.01)", "iou_loc": wsol.IOU_LOC,
                     "max_box_acc_v2_iou": list(wsol.IOU_THRESHOLDS), "map_size": list(raw["HINT-whole"].shape[1:]),
                     "cam_map_size": list(raw["CAM"].shape[1:]) if "CAM" in raw else None,
                     "score_map": "bilinear resize to the stored image, then per-image min-max"},
        "ancestors": {"fallback_to_whole": int(fallback),
                      "counts": {h[w].name: int(c) for w, c in zip(*np.unique(ancestors, return_counts=True),
                                                                    strict=True)}},
        "retrain": retrain_info,
        "variants": {v.name: {"rule": v.rule, "k": v.k,
                              "mean_f1_used": _mean_f1(v, sorted({whole, *ancestors}))} for v in variants.values()},
        "methods": {m: {"variant": methods[m][0], "map": methods[m][1], **results[m]} for m in methods},
        "bootstrap": uncertainty,
        "curves_test": {m: {"box_acc_largest_50": wsol.box_accuracy(scores[m].iou_largest[test]).round(5).tolist(),
                            **{f"box_acc_all_{d}": wsol.box_accuracy(scores[m].iou_all[test], d / 100).round(5).tolist()
                               for d in wsol.IOU_THRESHOLDS}} for m in methods},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }  # fmt: skip
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    written = [wsol.save_json(out / "results.json", report), write_markdown(report, out / "results.md")]
    written.append(plot_curves(report, out / "curves.png"))
    if retrain_info.get("faithfulness"):
        written.append(plot_faithfulness(report, out / "faithfulness.png"))
    if kept:
        written.append(plot_overlays(kept, anns, fwd, results, h, out / "overlays.png", args.overlay_photos))
    print(_summary(report))
    for p in written:
        print(p)
    return 0


# ----------------------------------------------------------------------------------------- forward


@torch.no_grad()
def forward_all(bb, anns: list[wsol.Annotation], batch_size: int, progress: bool) -> dict:
    """z at the bank layer (N, D, h, w) float16, the CAM of the predicted class (N, h', w') or None,
    predicted class (N,), top-1 probability (N,) and image sizes [(W, H)], one forward per batch."""
    from hint.datasets import load_rgb

    model = bb.model.eval()
    mods = dict(model.named_modules())
    keep: dict[str, torch.Tensor] = {}
    handles = [bb.layer_module().register_forward_hook(lambda _m, _i, o: keep.__setitem__("z", o.detach()))]
    cam_spec = CAM_LAYERS.get(bb.name)
    if cam_spec:
        handles.append(
            mods[cam_spec[0]].register_forward_hook(lambda _m, _i, o: keep.__setitem__("f", o.detach()))
        )
        fc = mods[cam_spec[1]].weight.detach()
    zs, cams, preds, probs, sizes = [], [], [], [], []
    try:
        for s in tqdm(range(0, len(anns), batch_size), desc="forward", unit="batch", disable=not progress):
            ims = [load_rgb(a.path) for a in anns[s : s + batch_size]]
            sizes += [im.size for im in ims]
            p = model(bb.preprocess(ims)).float().softmax(1)
            top = p.max(1)
            preds.append(top.indices)
            probs.append(top.values)
            zs.append(keep["z"].half())
            if cam_spec:
                # wsolevaluation's CAM: Σ_c w[class, c] · f_c (no ReLU; min-max normalised later)
                cams.append(torch.einsum("nchw,nc->nhw", keep["f"].float(), fc[top.indices].float()))
    finally:
        for hd in handles:
            hd.remove()
    return {
        "z": torch.cat(zs),
        "cam": torch.cat(cams).numpy() if cams else None,
        "pred": torch.cat(preds).numpy(),
        "prob": torch.cat(probs).numpy(),
        "size": sizes,
    }


def _score_chunk(chunk: list, export_to) -> list:
    """Score one chunk of images: (index, {method: (IoU largest (T,), IoU all (T,), pointing hit)},
    {method: (score map, largest boxes)} for overlay images)."""
    out = []
    for i, raws, (width, height), boxes, image_id, keep in chunk:
        res, kept = {}, {}
        for m, r in raws.items():
            sm = wsol.score_map(r, width, height)
            big, every, largest = wsol.image_ious(sm, boxes)
            res[m] = (big, every, wsol.pointing_hit(sm, boxes))
            if export_to and m in export_to[1]:
                wsol.export_scoremap(export_to[0] / export_to[1][m], image_id, sm)
            if keep and m in MAIN:
                kept[m] = (sm, largest)
        out.append((i, res, kept))
    return out


def score_all(jobs: list, methods: list[str], n: int, export_to, workers: int, progress: bool):
    """Score maps of every image (in ``workers`` processes when > 1) into MethodScores per method."""
    scores = {m: wsol.MethodScores.empty(n) for m in methods}
    kept: dict[int, dict] = {}
    size = 8
    chunks = [jobs[s : s + size] for s in range(0, len(jobs), size)]
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
            for part in pool.map(_score_chunk, chunks, [export_to] * len(chunks)):
                collect(part)
    else:
        for c in chunks:
            collect(_score_chunk(c, export_to))
    bar.close()
    return scores, kept


def _whole_concept(bank, h) -> str:
    w = h.find("whole").wnid
    if w in bank.wnids:
        return w
    return min(bank.wnids, key=lambda x: (h[x].depth, x))  # the bank's most general concept


# -------------------------------------------------------------------------------------- retraining


def retrained_variants(bank, args, used: list[str], variants: dict, progress: bool) -> tuple[dict, dict]:
    """The (x%) and faithfulness classifier sets, retrained on the bank's own samples for the concepts
    ``used``; ``info`` says what was done (or why not)."""
    cache = args.cache or args.bank.parent / ".hint-cache"
    path = wsol.find_region_table(bank, cache)
    if path is None and args.recompute_regions:
        path = _recompute_regions(bank, cache, progress)
    if path is None:
        why = (f"no cached step-1 region table of bank {bank.id} in {cache} (build data "
               f"{bank.meta.get('build', {}).get('data')!r}); pass --cache, or --recompute-regions")  # fmt: skip
        print(f"warning: (x%) rows and faithfulness skipped: {why}", file=sys.stderr)
        return variants, {"done": False, "reason": why}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small L-BFGS problems: threads only add overhead
    try:
        return _retrain(bank, args, used, variants, path, progress)
    finally:
        torch.set_num_threads(threads)


def _retrain(bank, args, used: list[str], variants: dict, path: Path, progress: bool) -> tuple[dict, dict]:
    from hint.classifiers import train_classifier

    d = bank.weight.shape[1]
    k_faith = args.faithfulness_k or int(bank.meta.get("faithfulness", {}).get("k", 20))
    table = wsol.load_region_table(path)
    sets = wsol.concept_sets(bank, table, used)
    cfg = wsol.build_config(bank)
    # the samples and training code must be the bank's: retraining on all neurons gives its classifiers back
    check = {}
    for w in used[:3]:
        s = sets[w]
        fit = train_classifier(s.x, s.y, s.image, test_fraction=cfg.test_fraction, seed=cfg.seed, l2=cfg.l2)
        e = bank.index(w)
        check[bank.concepts[e]["name"]] = float(
            (fit.weight - bank.weight[e]).abs().max() / bank.weight[e].abs().max().clamp_min(1e-12)
        )
    if max(check.values()) > 1e-3:
        print(f"warning: classifiers retrained on all neurons differ from the bank's (relative max |Δα| "
              f"{max(check.values()):.2g}): the bank was built from another table or with other training code",
              file=sys.stderr)  # fmt: skip
    jobs = [(f"shapley {x}%", "shapley", max(1, round(x / 100 * d)), 0) for x in args.percents]
    jobs += [(f"shapley top-{k_faith}", "shapley", k_faith, 0), (f"|α| top-{k_faith}", "weight", k_faith, 0)]
    jobs += [(f"random top-{k_faith} s{s}", "random", k_faith, s) for s in range(args.draws)]
    out = dict(variants)
    for name, rule, k, seed in tqdm(jobs, desc="retraining classifiers", disable=not progress):
        out[name] = wsol.retrain_variant(name, bank, sets, rule, k, seed)
    info = {"done": True, "table": str(path), "concepts": [bank.concepts[bank.index(w)]["name"] for w in used],
            "reproduction_rel_max_abs_diff": check, "k_faith": k_faith, "draws": args.draws,
            "percents": list(args.percents), "faithfulness": True, "neurons": d}  # fmt: skip
    return out, info


def _recompute_regions(bank, cache: Path, progress: bool) -> Path | None:
    """Step 1 again on the bank's build data (same parameters), saved as ``regions-wsol-<bank id>``."""
    from hint.backbones import get_backbone
    from hint.datasets import discover
    from hint.pipeline import extract_regions, save_table

    b = bank.meta.get("build", {})
    data = b.get("data")
    if not data or not Path(data).exists():
        return None
    samples = discover(data).samples
    n = b.get("n_images", 0) + b.get("unreadable", 0)
    if n and len(samples) > n:
        samples = samples[:n]  # built with --limit
    cfg = wsol.build_config(bank)
    cfg.device = "cpu"
    bb = get_backbone(bank.meta["backbone"], bank.meta["layer"])
    table, stats = extract_regions(bb, samples, cfg, progress)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / wsol.recomputed_table_name(bank)
    save_table(table, path, stats)
    return path


def method_table(variants: dict, args, k_faith: int | None) -> dict[str, tuple[str, str]]:
    """Method name → (variant name, map kind ``whole``/``ancestor``/``cam``), in report order."""
    m = {"HINT-whole": ("bank", "whole"), "HINT-ancestor": ("bank", "ancestor"), "CAM": ("bank", "cam")}
    for x in args.percents:
        if f"shapley {x}%" in variants:
            m[f"HINT-whole ({x}%)"] = (f"shapley {x}%", "whole")
            m[f"HINT-ancestor ({x}%)"] = (f"shapley {x}%", "ancestor")
    if k_faith:
        for kind in ("whole", "ancestor"):
            for v in (f"shapley top-{k_faith}", f"|α| top-{k_faith}",
                      *(f"random top-{k_faith} s{s}" for s in range(args.draws))):  # fmt: skip
                m[f"{kind} · {v}"] = (v, kind)
    return m


def raw_maps(fwd: dict, bank, variants: dict, methods: dict, whole: str, ancestors: list[str]) -> dict:
    """Method → (N, h, w) low-resolution maps (concept maps σ(αᵀz + b); the CAM)."""
    z = fwd["z"].float()
    iw = bank.index(whole)
    ia = torch.tensor([bank.index(a) for a in ancestors])
    out = {}
    for m, (v, kind) in methods.items():
        if kind == "cam":
            if fwd["cam"] is None:
                continue
            out[m] = fwd["cam"]
            continue
        var = variants[v]
        if kind == "whole":
            logit = torch.einsum("ndhw,d->nhw", z, var.weight[iw]) + var.bias[iw]
        else:
            logit = torch.einsum("ndhw,nd->nhw", z, var.weight[ia]) + var.bias[ia].view(-1, 1, 1)
        out[m] = torch.sigmoid(logit).numpy()
    for m in [m for m in methods if m not in out]:
        print(f"warning: {m} skipped: no CAM layers known for this backbone", file=sys.stderr)
        del methods[m]
    return out


def _export_set(args, methods: dict) -> set[str]:
    if not args.export_npy:
        return set()
    if args.export_methods == ["all"]:
        return set(methods)
    if args.export_methods == list(MAIN):
        return set(MAIN) & set(methods)
    unknown = [m for m in args.export_methods if m not in methods]
    if unknown:
        raise ValueError(f"--export-methods: unknown {', '.join(unknown)}; choose from {', '.join(methods)}")
    return set(args.export_methods)


def _slug(method: str) -> str:
    keep = "".join(
        c if c.isalnum() or c in "-_" else "_" for c in method.replace("%", "pct").replace("|α|", "abs_alpha")
    )
    return "_".join(filter(None, keep.split("_")))


def _mean_f1(v, used: list[str]) -> float | None:
    vals = [v.f1[w] for w in used if w in v.f1 and v.f1[w] == v.f1[w]]
    return round(float(np.mean(vals)), 4) if vals else None


def command_line(args) -> str:
    """The command, with the options that differ from the defaults."""
    parts = ["python", "-m", "offline", "evaluate-wsol", "--bank", str(args.bank), "--data", str(args.data)]
    if args.annotations:
        parts += ["--annotations", str(args.annotations)]
    parts += ["--out", str(args.out)]
    for flag, value, default in [("--limit", args.limit, None), ("--split-seed", args.split_seed, 0),
                                 ("--export-npy", args.export_npy, None), ("--cache", args.cache, None),
                                 ("--faithfulness-k", args.faithfulness_k, None), ("--draws", args.draws, 5),
                                 ("--weights", args.weights, None), ("--batch-size", args.batch_size, 32),
                                 ("--jobs", args.jobs, 1),
                                 ("--overlays", args.overlays, 6)]:  # fmt: skip
        if value != default:
            parts += [flag, str(value)]
    if args.export_npy and args.export_methods != list(MAIN):
        parts += ["--export-methods", *args.export_methods]
    if args.percents != [10, 20, 40, 80]:
        parts += ["--percents", *map(str, args.percents)]
    for flag in ("recompute_regions", "no_retrain", "overlay_photos", "no_progress"):
        if getattr(args, flag):
            parts.append("--" + flag.replace("_", "-"))
    return shlex.join(parts)


def bootstrap_report(scores: dict, results: dict, correct, test, seed: int, draws: int = 1000) -> dict:
    """95% bootstrap intervals over the test images of each main method's metrics, and of the paired
    differences HINT − CAM (same resamples)."""
    weights = wsol.bootstrap_weights(len(test), draws, seed)
    th = np.round(wsol.THRESHOLDS, 4)
    samples = {
        m: wsol.bootstrap_metrics(scores[m], correct, test, int(np.argmin(np.abs(th - results[m]["threshold"]))),
                                  weights)
        for m in results
    }  # fmt: skip
    main = [m for m in samples if "·" not in m]
    out = {"draws": draws, "ci95": {m: {k: wsol.ci95(samples[m][k]) for k in samples[m]} for m in main}}
    if "CAM" in samples:
        out["minus_cam_ci95"] = {
            m: {k: wsol.ci95(v - samples["CAM"][k]) for k, v in samples[m].items()}
            for m in main
            if m != "CAM"
        }
    # faithfulness: Shapley top-k minus |α| top-k and minus random top-k (mean over the draws), paired
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


# ---------------------------------------------------------------------------------------- reporting


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(lo_hi: list[float]) -> str:
    return f"[{100 * lo_hi[0]:.1f}, {100 * lo_hi[1]:.1f}]"


def _md(text: str) -> str:
    """Text for a markdown table cell (``|`` escaped)."""
    return text.replace("|", "\\|")


def write_markdown(report: dict, path: Path) -> Path:
    ms = report["methods"]
    d = report["data"]
    lines = [
        f"Bank `{report['bank']['id']}` ({report['bank']['backbone']}:{report['bank']['layer']}, "
        f"{report['bank']['concepts']} concepts); {d['images']} images ({d['gt_boxes']} GT boxes), threshold "
        f"chosen on {d['selection']}, metrics on the other {d['test']} (split seed {d['split_seed']}). "
        "All numbers in %.",
        "",
        "| Method | GT-known Loc | Top-1 Loc | MaxBoxAcc | MaxBoxAccV2 (IoU 30/50/70) | threshold | "
        "pointing game | mean IoU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    main = [m for m in ms if "·" not in m]
    for m in main:
        r = ms[m]
        per = "/".join(
            _pct(r["max_box_acc_v2_per_iou"][k]) for k in sorted(r["max_box_acc_v2_per_iou"], key=int)
        )
        lines.append(f"| {m} | {_pct(r['gt_known_loc'])} | {_pct(r['top1_loc'])} | {_pct(r['max_box_acc'])} | "
                     f"{_pct(r['max_box_acc_v2'])} ({per}) | {r['threshold']:.2f} | {_pct(r['pointing_game'])} | "
                     f"{_pct(r['mean_iou'])} |")  # fmt: skip
    top1 = ms["HINT-whole"]["top1_cls"]
    lines += ["", f"Top-1 classification accuracy on the test half: {_pct(top1)}."]
    bs = report.get("bootstrap")
    if bs:
        lines += ["", f"95% bootstrap intervals ({bs['draws']} resamples of the test images; the differences to "
                  "CAM are paired, same resamples):", "",
                  "| Method | GT-known Loc | MaxBoxAcc | MaxBoxAccV2 | GT-known Loc − CAM | MaxBoxAccV2 − CAM |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for m, ci in bs["ci95"].items():
            d = bs.get("minus_cam_ci95", {}).get(m)
            diff = [_ci(d["gt_known_loc"]), _ci(d["max_box_acc_v2"])] if d else ["–", "–"]
            lines.append(f"| {m} | {_ci(ci['gt_known_loc'])} | {_ci(ci['max_box_acc'])} | "
                         f"{_ci(ci['max_box_acc_v2'])} | " + " | ".join(diff) + " |")  # fmt: skip
    rt = report["retrain"]
    if rt.get("done"):
        lines += ["", "Classifiers per variant (mean held-out F1 over the concepts used here):", "",
                  "| Variant | rule | neurons | mean F1 |", "|---|---|---|---|"]  # fmt: skip
        for name, v in report["variants"].items():
            f1 = "–" if v["mean_f1_used"] is None else f"{v['mean_f1_used']:.3f}"
            lines.append(f"| {_md(name)} | {v['rule']} | {v['k']} | {f1} |")
        lines += ["", faithfulness_table(report)]
    else:
        lines += [
            "",
            f"(x%) rows and faithfulness not computed: {rt.get('reason', 'disabled (--no-retrain)')}",
        ]
    a = report["ancestors"]
    lines += ["", "HINT-ancestor used: " + ", ".join(f"{k} ×{v}" for k, v in sorted(a["counts"].items(),
                                                                                  key=lambda kv: -kv[1]))
              + f" ({a['fallback_to_whole']} predictions had no bank concept on their path: whole map used).",
              "", f"Command: `{report['command']}`", ""]  # fmt: skip
    path.write_text("\n".join(lines))
    return path


def faithfulness_rows(report: dict) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """kind → selection rule → metric → (mean, std over random draws; 0 otherwise)."""
    ms = report["methods"]
    k = report["retrain"]["k_faith"]
    metrics = ("pointing_game", "mean_iou", "gt_known_loc", "max_box_acc_v2")
    out: dict = {}
    for kind, base in (("whole", "HINT-whole"), ("ancestor", "HINT-ancestor")):
        rows = {"all neurons": {m: (ms[base][m], 0.0) for m in metrics}}
        for label, v in ((f"Shapley top-{k}", f"shapley top-{k}"), (f"|α| top-{k}", f"|α| top-{k}")):
            rows[label] = {m: (ms[f"{kind} · {v}"][m], 0.0) for m in metrics}
        rand = [ms[n] for n in ms if n.startswith(f"{kind} · random top-{k} ")]
        if rand:
            rows[f"random top-{k}"] = {m: (float(np.mean([r[m] for r in rand])), float(np.std([r[m] for r in rand])))
                                      for m in metrics}  # fmt: skip
        out[kind] = rows
    return out


def faithfulness_table(report: dict) -> str:
    draws = report["retrain"]["draws"]
    k = report["retrain"]["k_faith"]
    lines = [
        f"Faithfulness (test half; random: mean ± std over {draws} draws):",
        "",
        "| Map | neurons | pointing game | mean IoU | GT-known Loc | MaxBoxAccV2 |",
        "|---|---|---|---|---|---|",
    ]
    for kind, rows in faithfulness_rows(report).items():
        for label, r in rows.items():
            cells = [f"{_pct(m)} ± {_pct(s)}" if s else _pct(m) for m, s in r.values()]
            lines.append(f"| HINT-{kind} | {_md(label)} | " + " | ".join(cells) + " |")
    fc = report.get("bootstrap", {}).get("faithfulness_ci95")
    if fc:
        metrics = ("pointing_game", "mean_iou", "gt_known_loc", "max_box_acc_v2")
        lines += [
            "",
            f"Paired differences, 95% bootstrap intervals over the test images (Shapley top-{k} minus "
            f"\\|α\\| top-{k}, and minus random top-{k} averaged over the draws):",
            "",
            "| Map | difference | pointing game | mean IoU | GT-known Loc | MaxBoxAccV2 |",
            "|---|---|---|---|---|---|",
        ]
        for kind, d in fc.items():
            for key, label in (
                ("shapley_minus_alpha", "Shapley − \\|α\\|"),
                ("shapley_minus_random", "Shapley − random"),
            ):
                lines.append(f"| {kind} | {label} | " + " | ".join(_ci(d[key][m]) for m in metrics) + " |")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(report: dict, path: Path) -> Path:
    plt = _plt()
    th = np.arange(0, 1, 0.01)
    curves, ms = report["curves_test"], report["methods"]
    main = [m for m in ms if "·" not in m]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    colors = {"HINT-whole": "tab:blue", "HINT-ancestor": "tab:orange", "CAM": "tab:green"}
    for m in main:
        base = (
            "HINT-whole" if m.startswith("HINT-whole") else "HINT-ancestor" if m.startswith("HINT-anc") else m
        )
        is_main = m in MAIN
        axes[0].plot(th, curves[m]["box_acc_largest_50"], color=colors.get(base, "gray"),
                     lw=2 if is_main else 1, ls="-" if is_main else ":", alpha=1 if is_main else 0.7,
                     label=f"{m} (τ*={ms[m]['threshold']:.2f})")  # fmt: skip
        if is_main:
            axes[0].axvline(ms[m]["threshold"], color=colors[m], ls="--", lw=0.8)
    axes[0].set(xlabel="score-map threshold τ", ylabel="box accuracy (IoU ≥ 0.5, largest contour)",
                title="BoxAcc vs threshold (test half); τ* chosen on the selection half")  # fmt: skip
    axes[0].legend(fontsize=7, ncol=2)
    for m in [m for m in MAIN if m in curves]:
        for d, ls in zip(wsol.IOU_THRESHOLDS, ("-", "--", ":"), strict=True):
            axes[1].plot(
                th, curves[m][f"box_acc_all_{d}"], color=colors[m], ls=ls, label=f"{m} IoU≥{d / 100:.1f}"
            )
    axes[1].set(xlabel="score-map threshold τ", ylabel="box accuracy (best box over all contours)",
                title="MaxBoxAccV2 components (test half)")  # fmt: skip
    axes[1].legend(fontsize=7, ncol=3)
    for ax in axes:
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_faithfulness(report: dict, path: Path) -> Path:
    plt = _plt()
    rows = faithfulness_rows(report)
    metrics = [
        ("pointing_game", "pointing game"),
        ("mean_iou", "mean IoU"),
        ("max_box_acc_v2", "MaxBoxAccV2"),
    ]
    fig, axes = plt.subplots(1, len(rows), figsize=(6 * len(rows), 4), squeeze=False)
    colors = ["0.6", "tab:red", "tab:blue", "tab:olive"]
    for ax, (kind, r) in zip(axes[0], rows.items(), strict=True):
        labels = list(r)
        width = 0.8 / len(labels)
        for j, (label, c) in enumerate(zip(labels, colors, strict=False)):
            vals = [100 * r[label][m][0] for m, _ in metrics]
            err = [100 * r[label][m][1] for m, _ in metrics]
            ax.bar(np.arange(len(metrics)) + (j - (len(labels) - 1) / 2) * width, vals, width, yerr=err,
                   capsize=3, color=c, label=label)  # fmt: skip
        ax.set_xticks(range(len(metrics)), [t for _, t in metrics])
        ax.set_ylabel("% (test half)")
        ax.set_title(f"HINT-{kind}: classifiers on the top-{report['retrain']['k_faith']} neurons")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_overlays(kept: dict, anns, fwd, results: dict, h, path: Path, photos: bool) -> Path:
    """Rows: test images; columns: HINT-whole, HINT-ancestor, CAM. Heat map, GT boxes (green) and the
    largest-contour box at each method's operating threshold (red)."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    from hint.datasets import load_rgb

    idx = sorted(kept)
    cols = [m for m in MAIN if m in kept[idx[0]]]
    fig, axes = plt.subplots(len(idx), len(cols), figsize=(3.1 * len(cols), 3.1 * len(idx)), squeeze=False)
    th = np.arange(0, 1, 0.01)
    for r, i in enumerate(idx):
        a = anns[i]
        photo = np.asarray(load_rgb(a.path)) if photos else None
        pred = int(fwd["pred"][i])
        for c, m in enumerate(cols):
            ax = axes[r, c]
            sm, largest = kept[i][m]
            k = int(np.argmin(np.abs(th - results[m]["threshold"])))
            if photo is not None:
                ax.imshow(photo)
                ax.imshow(sm, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            else:
                ax.imshow(sm, cmap="jet", vmin=0, vmax=1)
            for b in a.boxes:  # inclusive pixel boxes, drawn on the pixel edges
                ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0] + 1, b[3] - b[1] + 1, fill=False,
                                       ec="lime", lw=2))  # fmt: skip
            b = largest[k]
            ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0] + 1, b[3] - b[1] + 1, fill=False, ec="red",
                                   lw=2))  # fmt: skip
            iou = float(wsol.multiple_iou(b, a.boxes).max())
            ax.set_title(f"{m}  IoU {iou:.2f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ok = "✓" if pred == a.label else "✗"
                ax.set_ylabel(
                    f"{h.class_names[a.label][:22]}\npred {ok} {h.class_names[pred][:18]}", fontsize=7
                )
    fig.suptitle(
        "GT boxes green, predicted box (largest contour at the operating threshold τ*) red", fontsize=9
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _summary(report: dict) -> str:
    lines = [f"{'method':<26} GT-known  Top-1  MaxBoxAcc  MaxBoxAccV2  τ*"]
    for m, r in report["methods"].items():
        if "·" in m:
            continue
        lines.append(f"{m:<26} {_pct(r['gt_known_loc']):>8} {_pct(r['top1_loc']):>6} {_pct(r['max_box_acc']):>10} "
                     f"{_pct(r['max_box_acc_v2']):>12}  {r['threshold']:.2f}")  # fmt: skip
    return "\n".join(lines)

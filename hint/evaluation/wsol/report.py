"""Tables and figures of a WSOL evaluation (:func:`hint.evaluation.wsol.run.evaluate`): ``results.json``,
``results.md``, ``curves.png``, ``faithfulness.png`` and ``overlays.png``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hint._utils.io import atomic_write_text, save_figure
from hint.evaluation.wsol import metrics as wsol
from hint.evaluation.wsol.run import MAIN, Evaluation


def write_outputs(ev: Evaluation, out: Path, photos: bool = False) -> list[Path]:
    """Write every output of an evaluation into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    report = ev.report
    written = [
        save_json(out / "results.json", report),
        write_markdown(report, out / "results.md"),
        plot_curves(report, out / "curves.png"),
    ]
    if report["retrain"].get("faithfulness"):
        written.append(plot_faithfulness(report, out / "faithfulness.png"))
    if ev.kept:
        written.append(plot_overlays(ev, out / "overlays.png", photos))
    return written


def save_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(obj, indent=1))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(lo_hi: list[float]) -> str:
    return f"[{100 * lo_hi[0]:.1f}, {100 * lo_hi[1]:.1f}]"


def _md(text: str) -> str:
    """Text for a markdown table cell (``|`` escaped)."""
    return text.replace("|", "\\|")


def write_markdown(report: dict, path: Path) -> Path:
    """``results.md``: the tables, the protocol in one paragraph and the command."""
    ms = report["methods"]
    d, p = report["data"], report["protocol"]
    size = "×".join(map(str, p["eval_size"]))
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Bank `{report['bank']['id']}` ({report['bank']['backbone']}:{report['bank']['layer']}, "
        f"{report['bank']['concepts']} concepts); {d['images']} images ({d['gt_boxes']} GT boxes), threshold "
        f"chosen on {d['selection']}, metrics on the other {d['test']} (split seed {d['split_seed']}). "
        f"Protocol: maps upsampled ({p['upsample']}) to {size}, the network input, GT boxes resized to it "
        f"with int(); CAM and HINT-ancestor for the ground-truth class. All numbers in %.",
        "",
        "| Method | GT-known Loc | Top-1 Loc | MaxBoxAcc | MaxBoxAccV2 (IoU 30/50/70) | threshold | "
        "selection half at threshold | pointing game | mean IoU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    main = [m for m in ms if "·" not in m]
    for m in main:
        r = ms[m]
        per = "/".join(
            _pct(r["max_box_acc_v2_per_iou"][k]) for k in sorted(r["max_box_acc_v2_per_iou"], key=int)
        )
        lines.append(
            f"| {m} | {_pct(r['gt_known_loc'])} | {_pct(r['top1_loc'])} | {_pct(r['max_box_acc'])} | "
            f"{_pct(r['max_box_acc_v2'])} ({per}) | {r['threshold']:.2f} | {_pct(r['selection_box_acc'])} | "
            f"{_pct(r['pointing_game'])} | "
            f"{_pct(r['mean_iou'])} |"
        )
    top1 = ms["HINT-whole"]["top1_cls"]
    lines += ["", f"Top-1 classification accuracy on the test half: {_pct(top1)}."]
    sv = report.get("served")
    if sv:
        head = sv["head"]
        where = (
            (
                f"the bank's localisation head ({' + '.join(head['layers'])}, fused on {head['grid'][0]}×{head['grid'][1]}, "
                f"classifiers against {' + '.join(head['negatives'])}), box threshold {sv['box_threshold']:g} on the "
                "min-max normalised map"
            )
            if head
            else "the bank's own layer (no localisation head), boxes at the request threshold"
        )
        lines += [
            "",
            f"What the service answers (`Explainer.answer` as the TorchServe handler runs it): maps from {where}. "
            "Box accuracy of the boxes it returns (IoU ≥ 0.5 with a GT box, in the stored image's pixels; test half, "
            "95% bootstrap intervals; the difference to CAM's GT-known Loc is paired):",
            "",
            "| Row | served box accuracy | interval | − CAM GT-known Loc | marked present |",
            "|---|---|---|---|---|",
        ]
        for m, r in sv["rows"].items():
            d = r.get("minus_cam_gt_known_ci95")
            lines.append(
                f"| {m} | {_pct(r['box_acc'])} | {_ci(r['box_acc_ci95'])} | {_ci(d) if d else '–'} | "
                f"{_pct(r['present'])} |"
            )
        lv = sv.get("paper_levels")
        if lv and lv["box_acc"] is not None:
            d = lv.get("minus_cam_gt_known_ci95")
            lines.append(
                f"| HINT-ancestor (served), every paper level on the path ({lv['pairs']} boxes of {lv['images']} "
                f"images, per-image share) | {_pct(lv['box_acc'])} | {_ci(lv['box_acc_ci95'])} | "
                f"{_ci(d) if d else '–'} | – |"
            )
    lib = report.get("extra_variants", {}).get("baselines")
    if lib:
        lines += [
            "",
            f'Rows "(grad-cam)": {lib["library"]} (pytorch-grad-cam) at {lib["layer"]}, for the {lib["target"]}; '
            "maps at the layer's grid (ReLU, min-max), then upsampled and thresholded as CAM.",
        ]
    bs = report.get("bootstrap")
    if bs:
        lines += [
            "",
            f"95% bootstrap intervals ({bs['draws']} resamples of the test images; the differences to "
            "CAM are paired, same resamples):",
            "",
            "| Method | GT-known Loc | MaxBoxAcc | MaxBoxAccV2 | GT-known Loc − CAM | MaxBoxAccV2 − CAM |",
            "|---|---|---|---|---|---|",
        ]
        for m, ci in bs["ci95"].items():
            d = bs.get("minus_cam_ci95", {}).get(m)
            diff = [_ci(d["gt_known_loc"]), _ci(d["max_box_acc_v2"])] if d else ["–", "–"]
            lines.append(
                f"| {m} | {_ci(ci['gt_known_loc'])} | {_ci(ci['max_box_acc'])} | "
                f"{_ci(ci['max_box_acc_v2'])} | " + " | ".join(diff) + " |"
            )
    rt = report["retrain"]
    if rt.get("done"):
        lines += [
            "",
            "Classifiers per variant (mean held-out F1 over the concepts used here):",
            "",
            "| Variant | rule | neurons | mean F1 |",
            "|---|---|---|---|",
        ]
        for name, v in report["variants"].items():
            f1 = "–" if v["mean_f1_used"] is None else f"{v['mean_f1_used']:.3f}"
            lines.append(f"| {_md(name)} | {v['rule']} | {v['k']} | {f1} |")
        check = ", ".join(f"{k} {v:.2g}" for k, v in rt["reproduction_rel_max_abs_diff"].items())
        lines += [
            "",
            f"Retrained on all neurons from the rebuilt samples, relative max |Δα| to the bank's "
            f"classifiers: {check} (0: the bank's samples and training are reproduced; otherwise the "
            "(100%) rows are the reference for the (x%) rows).",
            "",
            faithfulness_table(report),
        ]
    else:
        lines += [
            "",
            f"(x%) rows and faithfulness not computed: {rt.get('reason', 'disabled (--no-retrain)')}",
        ]
    a = report["ancestors"]
    counts = sorted(a["counts"].items(), key=lambda kv: -kv[1])
    more = f", and {len(counts) - 25} more concepts" if len(counts) > 25 else ""
    lines += [
        "",
        "HINT-ancestor used: "
        + ", ".join(f"{k} ×{v}" for k, v in counts[:25])
        + more
        + f" ({a['fallback_to_whole']} of these images have no bank concept above their ground-truth class: "
        "whole map).",
        "",
    ]
    return atomic_write_text(path, "\n".join(lines))


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
            rows[f"random top-{k}"] = {
                m: (float(np.mean([r[m] for r in rand])), float(np.std([r[m] for r in rand])))
                for m in metrics
            }
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
    colors = {
        "HINT-whole (served)": "tab:red",
        "HINT-ancestor (served)": "tab:purple",
        "HINT-whole": "tab:blue",
        "HINT-ancestor": "tab:orange",
        "CAM (pr": "tab:olive",
        "CAM": "tab:green",
    }
    for m in main:
        base = next((b for b in colors if m.startswith(b)), m)
        is_main = m in MAIN
        axes[0].plot(
            th,
            curves[m]["box_acc_largest_50"],
            color=colors.get(base, "gray"),
            lw=2 if is_main else 1,
            ls="-" if is_main else ":",
            alpha=1 if is_main else 0.7,
            label=f"{m} (τ*={ms[m]['threshold']:.2f})",
        )
        if is_main:
            axes[0].axvline(ms[m]["threshold"], color=colors.get(base, "gray"), ls="--", lw=0.8)
    axes[0].set(
        xlabel="score-map threshold τ",
        ylabel="box accuracy (IoU ≥ 0.5, largest contour)",
        title="BoxAcc vs threshold (test half); τ* chosen on the selection half",
    )
    axes[0].legend(fontsize=6, ncol=2, loc="lower left")
    for m in [m for m in MAIN if m in curves]:
        for d, ls in zip(wsol.IOU_THRESHOLDS, ("-", "--", ":"), strict=True):
            axes[1].plot(
                th, curves[m][f"box_acc_all_{d}"], color=colors[m], ls=ls, label=f"{m} IoU≥{d / 100:.1f}"
            )
    axes[1].set(
        xlabel="score-map threshold τ",
        ylabel="box accuracy (best box over all contours)",
        title="MaxBoxAccV2 components (test half)",
    )
    axes[1].legend(fontsize=7, ncol=3)
    for ax in axes:
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


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
            ax.bar(
                np.arange(len(metrics)) + (j - (len(labels) - 1) / 2) * width,
                vals,
                width,
                yerr=err,
                capsize=3,
                color=c,
                label=label,
            )
        ax.set_xticks(range(len(metrics)), [t for _, t in metrics])
        ax.set_ylabel("% (test half)")
        ax.set_title(f"HINT-{kind}: classifiers on the top-{report['retrain']['k_faith']} neurons")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_overlays(ev: Evaluation, path: Path, photos: bool = False) -> Path:
    """Rows: test images; columns: HINT-whole, HINT-ancestor, CAM. Heat map, GT boxes (green) and the
    largest-contour box at each method's operating threshold (red), in the evaluated S × S space."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    from hint.build.datasets import load_rgb

    idx = sorted(ev.kept)
    results, h = ev.report["methods"], ev.hierarchy
    cols = [m for m in MAIN if m in ev.kept[idx[0]]]
    fig, axes = plt.subplots(len(idx), len(cols), figsize=(3.1 * len(cols), 3.1 * len(idx)), squeeze=False)
    th = np.round(wsol.THRESHOLDS, 4)
    for r, i in enumerate(idx):
        a, gt = ev.annotations[i], ev.gt_boxes[i]
        pred = int(ev.pred[i])
        for c, m in enumerate(cols):
            ax = axes[r, c]
            sm, largest = ev.kept[i][m]
            k = int(np.argmin(np.abs(th - results[m]["threshold"])))
            if photos:
                ax.imshow(np.asarray(load_rgb(a.path).resize(sm.shape[::-1])))
                ax.imshow(sm, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            else:
                ax.imshow(sm, cmap="jet", vmin=0, vmax=1)
            for b, color in [*((g, "lime") for g in gt), (largest[k], "red")]:  # inclusive pixel boxes
                ax.add_patch(
                    Rectangle(
                        (b[0] - 0.5, b[1] - 0.5), b[2] - b[0] + 1, b[3] - b[1] + 1, fill=False, ec=color, lw=2
                    )
                )
            ax.set_title(f"{m}  IoU {float(wsol.multiple_iou(largest[k], gt).max()):.2f}", fontsize=8)
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
    return save_figure(fig, path, dpi=90, rect=(0, 0, 1, 0.98))


def summary(report: dict) -> str:
    """The main rows as a plain-text table (printed by the command)."""
    rows = {m: r for m, r in report["methods"].items() if "·" not in m}
    w = max(map(len, rows)) + 1
    lines = [f"{'method':<{w}} GT-known  Top-1  MaxBoxAcc  MaxBoxAccV2  τ*"]
    for m, r in rows.items():
        lines.append(
            f"{m:<{w}} {_pct(r['gt_known_loc']):>8} {_pct(r['top1_loc']):>6} {_pct(r['max_box_acc']):>10} "
            f"{_pct(r['max_box_acc_v2']):>12}  {r['threshold']:.2f}"
        )
    return "\n".join(lines)

"""``python -m offline report BANK``: figures and tables of a concept bank.

Writes into ``--out`` (default ``BANK/../<bank name>-report``):
``top_neurons.png`` (bars of the largest Shapley values per concept), ``association.png`` (a
Sankey-like concept ↔ neuron figure, as in the paper), ``f1.md`` (classifier precision/recall/F1),
``faithfulness.md`` and ``faithfulness.png`` (top-k neurons by Shapley vs |α| vs random) when the
bank has them, and ``neurons.md`` (collaborative and multimodal neurons).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import PathPatch  # noqa: E402
from matplotlib.path import Path as MPath  # noqa: E402

from hint._utils.io import atomic_write_text, save_figure  # noqa: E402
from hint.bank import ConceptBank  # noqa: E402

#: The association figure's default concepts (those in the bank), as the paper's figure: two branches.
FIGURE_CONCEPTS = (
    "whole",
    "animal",
    "vertebrate",
    "mammal",
    "bird",
    "carnivore",
    "dog",
    "artifact",
    "vehicle",
    "car",
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="plots and tables of a concept bank")
    p.add_argument("bank", type=Path)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--concepts", nargs="+", default=None, help="concept names for the association figure")


def run(args: argparse.Namespace) -> int:
    bank = ConceptBank.load(args.bank)
    out = args.out or args.bank.parent / f"{args.bank.name}-report"
    out.mkdir(parents=True, exist_ok=True)
    written = [
        plot_top_neurons(bank, out / "top_neurons.png", args.top_k),
        plot_association(bank, out / "association.png", args.concepts, k=5),
        write_f1(bank, out / "f1.md"),
        write_neurons(bank, out / "neurons.md", args.top_k),
    ]
    if "faithfulness" in bank.meta:
        written += [
            write_faithfulness(bank, out / "faithfulness.md"),
            plot_faithfulness(bank, out / "faithfulness.png"),
        ]
    for p in written:
        print(p)
    return 0


def paper_concepts(bank: ConceptBank) -> list[dict]:
    """The bank's concepts among the paper's 26 levels (all concepts when it has none of them)."""
    from hint.build.concepts import DEFAULT_CONCEPTS

    names = set(DEFAULT_CONCEPTS)
    return [c for c in bank.concepts if c["name"] in names] or bank.concepts


def plot_top_neurons(bank: ConceptBank, path: Path, k: int) -> Path:
    """Bars of the top-k φ of the paper's levels (every concept when the bank has none of them)."""
    concepts = paper_concepts(bank)
    n = len(concepts)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False)
    for ax, c in zip(axes.flat, concepts, strict=False):
        top = bank.top_neurons(c["wnid"], k)
        se = [float(bank.phi_se[bank.index(c["wnid"]), i]) for i, _ in top]
        ax.bar(range(len(top)), [v for _, v in top], yerr=se, color="tab:blue", capsize=2)
        ax.set_xticks(range(len(top)), [str(i) for i, _ in top], rotation=90, fontsize=7)
        ax.set_title(f"{c['name']} (F1 {c['f1']:.2f})", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.suptitle(
        f"Top-{k} neurons by Shapley value — {bank.meta['backbone']}:{bank.meta['layer']}", fontsize=11
    )
    fig.supxlabel("neuron (channel)", fontsize=9)
    fig.supylabel("φ(d, e)", fontsize=9)
    return save_figure(fig, path)


def plot_association(bank: ConceptBank, path: Path, names: list[str] | None, k: int = 5) -> Path:
    """Concepts (left, ordered by depth) linked to their top-k neurons (right); band width ∝ φ."""
    names = names or FIGURE_CONCEPTS
    concepts = [c for c in bank.concepts if c["name"] in names or c["wnid"] in names]
    if len(concepts) < 2:
        concepts = bank.concepts
    concepts = sorted(concepts, key=lambda c: (c["depth"], c["name"]))[:16]
    links = [(c, n, v) for c in concepts for n, v in bank.top_neurons(c["wnid"], k)]
    neurons = sorted({n for _, n, _ in links}, key=lambda n: -sum(v for _, m, v in links if m == n))
    y_c = {c["wnid"]: i for i, c in enumerate(concepts)}
    y_n = {n: i * (len(concepts) - 1) / max(len(neurons) - 1, 1) for i, n in enumerate(neurons)}
    vmax = max(v for *_, v in links)
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(9, max(4, 0.45 * len(concepts) + 1)))
    for c, n, v in links:
        y0, y1 = y_c[c["wnid"]], y_n[n]
        verts = [(0, y0), (0.5, y0), (0.5, y1), (1, y1)]
        ax.add_patch(
            PathPatch(
                MPath(verts, [MPath.MOVETO, MPath.CURVE4, MPath.CURVE4, MPath.CURVE4]),
                fc="none",
                ec=cmap(y_c[c["wnid"]] % 20),
                lw=0.5 + 7 * v / vmax,
                alpha=0.6,
            )
        )
    for c in concepts:
        ax.text(-0.02, y_c[c["wnid"]], f"{c['name']}", ha="right", va="center", fontsize=9)
    multi = bank.multimodal_neurons(k)
    for n in neurons:
        tag = " *" if n in multi else ""
        ax.text(1.02, y_n[n], f"#{n}{tag}", ha="left", va="center", fontsize=8)
    ax.set_xlim(-0.35, 1.2)
    ax.set_ylim(len(concepts) - 0.5, -0.5)
    ax.axis("off")
    ax.set_title(f"Concept ↔ neuron association (top-{k} by Shapley; * multimodal)", fontsize=11)
    return save_figure(fig, path)


def write_f1(bank: ConceptBank, path: Path) -> Path:
    """Every built concept's held-out quality (cross-validated by image), then every candidate's status."""
    lines = [
        "Held-out region F1 (out-of-fold, 95 % bootstrap interval over images) against the trivial "
        "always-positive F1 on the same regions; *reliable* when the interval of the difference lies above 0. "
        "Image F1 / AUROC: the pooled image score on out-of-fold images, F1 at the calibrated threshold.",
        "",
        "| concept | path | images | positive regions | region P / R | region F1 [95 % CI] | trivial F1 | reliable "
        "| image threshold | image F1 | image AUROC |",
        "|---|---|---:|---:|---|---|---:|---|---:|---:|---:|",
    ]
    for c in bank.concepts:
        ci = c.get("f1_ci") or [c["f1"], c["f1"]]
        auc = c.get("image_auroc")
        lines.append(
            f"| {c['name']} | {' › '.join(reversed(c['path'][:4]))} | {c.get('n_images', '–')} | {c['n_pos']} | "
            f"{c['precision']:.3f} / {c['recall']:.3f} | {c['f1']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
            f"{c.get('trivial_f1', float('nan')):.3f} | {'yes' if c.get('reliable', True) else 'no'} | "
            f"{c.get('threshold', 0.5):.3f} | {c.get('image_f1', float('nan')):.3f} | "
            f"{'–' if auc is None else f'{auc:.3f}'} |"
        )
    f1 = np.array([c["f1"] for c in bank.concepts])
    n_rel = sum(bool(c.get("reliable", True)) for c in bank.concepts)
    lines.append(
        f"\nMean region F1 over {len(f1)} concepts: **{np.nanmean(f1):.3f}**; reliable: **{n_rel}**."
    )
    cands = bank.meta.get("candidates", [])
    if cands:
        lines += [
            "",
            f"## Candidates ({len(cands)}: every concept with two or more ImageNet classes)",
            "",
            "| concept | WNID | classes | status |",
            "|---|---|---:|---|",
        ]
        lines += [f"| {c['name']} | {c['wnid']} | {c['n_classes']} | {c['status']} |" for c in cands]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def write_neurons(bank: ConceptBank, path: Path, k: int) -> Path:
    lines = [f"## Collaborative neurons (top-{k} by Shapley)", "", "| concept | neurons (φ) |", "|---|---|"]
    for c in bank.concepts:
        top = ", ".join(f"{n} ({v:.4f})" for n, v in bank.top_neurons(c["wnid"], k))
        lines.append(f"| {c['name']} | {top} |")
    names = {c["wnid"]: c["name"] for c in bank.concepts}
    lines += [
        "",
        f"## Multimodal neurons (in the top-{k} of ≥ 2 concepts)",
        "",
        "| neuron | concepts |",
        "|---|---|",
    ]
    for n, ws in sorted(bank.multimodal_neurons(k).items(), key=lambda kv: -len(kv[1])):
        lines.append(f"| {n} | {', '.join(names[w] for w in ws)} |")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def write_faithfulness(bank: ConceptBank, path: Path) -> Path:
    f = bank.meta["faithfulness"]
    k = f["k"]
    lines = [
        f"Held-out F1 of each concept classifier retrained on {k} neurons chosen by Shapley value, by |α|, "
        f"or at random (mean ± std over {f['draws']} seeded draws); `all` uses every neuron.",
        "",
        f"| concept | all | top-{k} Shapley | top-{k} abs(α) | random {k} |",
        "|---|---|---|---|---|",
    ]
    for i, c in enumerate(_faith_concepts(bank)):
        lines.append(
            f"| {c['name']} | {f['all'][i]:.3f} | {f['shapley'][i]:.3f} | {f['weight'][i]:.3f} | "
            f"{f['random'][i]:.3f} ± {f['random_std'][i]:.3f} |"
        )
    mean = {r: float(np.nanmean(f[r])) for r in ("all", "shapley", "weight", "random")}
    lines.append(
        f"| **mean** | **{mean['all']:.3f}** | **{mean['shapley']:.3f}** | **{mean['weight']:.3f}** | "
        f"**{mean['random']:.3f}** |"
    )
    return atomic_write_text(path, "\n".join(lines) + "\n")


def plot_faithfulness(bank: ConceptBank, path: Path) -> Path:
    f = bank.meta["faithfulness"]
    names = [c["name"] for c in _faith_concepts(bank)]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 3.6))
    for j, (rule, label) in enumerate([("shapley", "Shapley"), ("weight", "|α|"), ("random", "random")]):
        err = f["random_std"] if rule == "random" else None
        ax.bar(x + (j - 1) * 0.27, f[rule], 0.27, yerr=err, label=f"top-{f['k']} {label}", capsize=2)
    ax.plot(x, f["all"], "k_", markersize=12, label="all neurons")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("held-out F1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, 1.15))
    return save_figure(fig, path)


def _faith_concepts(bank: ConceptBank) -> list[dict]:
    """The concepts the faithfulness test ran on (the manifest names them; older banks: all)."""
    wnids = bank.meta["faithfulness"].get("concepts")
    return bank.concepts if wnids is None else [bank.concepts[bank.index(w)] for w in wnids]

"""Image-level concept presence measured on labelled images (``python -m offline evaluate-concepts``).

Truth: a concept is present in an image when the image's class is the concept or lies under it in the
hierarchy. Three answers are scored per concept: the service's ``present`` flag, the layer probe alone
at its calibrated threshold (what HINT says about the hidden layer), and the model's own summed
softmax over the concept's classes >= 0.5. Macro means are taken over the concepts with at least one
positive image, for the paper's 26 levels and for every built concept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from hint._utils.io import write_texts
from hint._utils.stats import auroc, prf
from hint.build.concepts import paper_concepts
from hint.build.datasets import ImageDataset, Sample
from hint.explain.explainer import Explainer

ANSWERS = ("served", "probe", "softmax")


def collect(
    explainer: Explainer, samples: list[Sample], batch_size: int = 32, workers: int = 2, progress: bool = True
) -> dict[str, np.ndarray]:
    """Presence arrays (N, E) of every readable sample, and its ``label`` (N,)."""
    bb = explainer.backbone
    loader = DataLoader(
        ImageDataset(samples, bb.preprocess, bb.input_size), batch_size=batch_size, num_workers=workers
    )
    parts: dict[str, list] = {}
    for x, y, _, ok in tqdm(loader, desc="concept presence", unit="batch", disable=not progress):
        if not ok.any():
            continue
        arrays = explainer.presence_arrays(x[ok])
        arrays["label"] = y[ok]
        for k, v in arrays.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


def report(arrays: dict[str, np.ndarray], explainer: Explainer) -> dict:
    """Per-concept precision, recall, F1, FPR and AUROC of the three answers, and their macro means."""
    bank, h = explainer.bank, explainer.h
    paper = set(paper_concepts(h))
    label = arrays["label"]
    rows = []
    for e, c in enumerate(bank.concepts):
        truth = np.isin(label, h[c["wnid"]].leaves)
        answers = {
            "served": arrays["present"][:, e],
            "probe": arrays["probe_present"][:, e],
            "softmax": arrays["model_probability"][:, e] >= 0.5,
        }
        ranking = {
            "served": arrays["model_probability"][:, e],
            "probe": arrays["score"][:, e],
            "softmax": arrays["model_probability"][:, e],
        }
        row = {
            "wnid": c["wnid"],
            "name": c["name"],
            "paper_level": c["wnid"] in paper,
            "reliable": bool(c.get("reliable", True)),
            "positives": int(truth.sum()),
        }
        for a, pred in answers.items():
            row[a] = {k: round(v, 4) for k, v in prf(pred.astype(bool), truth).items()}
            auc = auroc(ranking[a].astype(np.float64), truth)
            row[a]["auroc"] = None if auc is None else round(auc, 4)
            row[a]["predicted"] = int(pred.sum())
        rows.append(row)

    def macro(selected: list[dict]) -> dict:
        scored = [r for r in selected if r["positives"] > 0]
        out = {"concepts": len(scored)}
        for a in ANSWERS:
            out[a] = {
                k: round(float(np.mean([r[a][k] for r in scored])), 4) if scored else None
                for k in ("precision", "recall", "f1", "fpr")
            }
        return out

    reliable = [r for r in rows if r["reliable"]]
    return {
        "images": int(len(label)),
        "bank_id": bank.id,
        "backbone": bank.meta.get("backbone"),
        "layer": bank.meta.get("layer"),
        "macro": {
            "paper_levels": macro([r for r in rows if r["paper_level"]]),
            "all_built": macro(rows),
            "reliable": macro(reliable),
        },
        "reliable_fpr_max": round(max((r["served"]["fpr"] for r in reliable), default=0.0), 4),
        "concepts": rows,
    }


def summary_line(rep: dict) -> str:
    """``macro-F1 served X probe Y softmax Z (N images, E concepts)`` over every built concept."""
    m = rep["macro"]["all_built"]
    return (
        f"macro-F1 served {m['served']['f1']:.3f} probe {m['probe']['f1']:.3f} softmax "
        f"{m['softmax']['f1']:.3f} ({rep['images']} images, {m['concepts']} concepts)"
    )


def markdown(rep: dict, command: str) -> str:
    """The docs table: macro means, then every concept."""
    lines = [
        "# Concept presence on held-out images",
        "",
        f"Bank `{rep['bank_id']}` ({rep['backbone']} `{rep['layer']}`), {rep['images']} images. Command:",
        "",
        f"```bash\n{command}\n```",
        "",
        "Truth: the image's class is the concept or lies under it. *served*: the service's `present`; *probe*: "
        "the layer probe's image score >= its calibrated threshold; *softmax*: the model's summed softmax over "
        "the concept's classes >= 0.5. Macro means over concepts with at least one positive image.",
        "",
        "| concepts | n | served P / R / F1 / FPR | probe P / R / F1 / FPR | softmax P / R / F1 / FPR |",
        "|---|---:|---|---|---|",
    ]
    for name, key in (
        ("paper's 26 levels", "paper_levels"),
        ("all built", "all_built"),
        ("reliable", "reliable"),
    ):
        m = rep["macro"][key]
        cells = [
            " / ".join(
                f"{m[a][k]:.3f}" if m[a][k] is not None else "–" for k in ("precision", "recall", "f1", "fpr")
            )
            for a in ANSWERS
        ]
        lines.append(f"| {name} | {m['concepts']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Largest served false-positive rate of a reliable concept: {rep['reliable_fpr_max']:.3f}.",
        "",
        "| concept | reliable | positives | served F1 | served FPR | probe F1 | probe AUROC | softmax F1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rep["concepts"], key=lambda r: (not r["paper_level"], -r["positives"], r["name"])):
        auc = r["probe"]["auroc"]
        lines.append(
            f"| {r['name']}{' *' if r['paper_level'] else ''} | {'yes' if r['reliable'] else 'no'} | {r['positives']} "
            f"| {r['served']['f1']:.3f} | {r['served']['fpr']:.3f} | {r['probe']['f1']:.3f} "
            f"| {'–' if auc is None else f'{auc:.3f}'} | {r['softmax']['f1']:.3f} |"
        )
    lines += ["", "\\* one of the paper's 26 levels.", "", summary_line(rep), ""]
    return "\n".join(lines)


def write(rep: dict, out: str | Path, command: str) -> list[Path]:
    """``results.json`` and ``concepts.md`` in ``out`` (atomic writes)."""
    return write_texts(
        out, {"results.json": json.dumps(rep, indent=1), "concepts.md": markdown(rep, command)}
    )

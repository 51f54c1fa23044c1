"""Do this image's neurons matter more than the bank's? (``python -m offline evaluate-neurons``)

For each image: the model's predicted class c, and the deepest concept on c's WordNet path that is
in the bank and reliable (*e*). Three ways to pick k neurons of the hooked layer, then each set is
removed inside the network (:class:`hint.explain.neurons.ChannelEdit`: channels set to the bank's baseline at
the hooked layer, the forward pass continues) and two drops are measured against the unablated image:

* the model's probability of c, and
* *e*'s probe image score (:func:`hint.presence.pool` of its concept map).

Arms: ``image`` — the top-k of this image's signed Shapley values for *e* on *e*'s region (the cells
of its map >= 0.5 × its maximum; :func:`hint.explain.neurons.image_shapley`, as the service computes and lists
them in ``image_neurons``);
``image_abs`` — the same values in the paper's absolute form; ``global`` — the bank's top-k φ for *e*;
``random`` — k neurons drawn uniformly (several seeded draws per image, averaged per image).
Means over images with 95 % intervals (normal approximation over images), and paired differences
(image − global, global − random) with their intervals.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from hint._utils.io import write_texts
from hint.build.datasets import ImageDataset, Sample
from hint.explain.explainer import Explainer
from hint.explain.neurons import image_shapley
from hint.presence import pool

KS = (5, 10, 20)
ARMS = ("image", "image_abs", "global", "random")
LABELS = {"image": "this image's (signed φ)", "image_abs": "this image's (absolute φ, paper's form)",
          "global": "bank's global φ", "random": "random"}  # fmt: skip
METRICS = {"probability": "drop of the model's probability for its predicted class",
           "score": "drop of the concept's probe image score"}  # fmt: skip


def deepest_reliable(explainer: Explainer, cls: int) -> int | None:
    """Bank row of the deepest reliable concept on class ``cls``'s WordNet path (aliases resolve)."""
    for w in explainer.h.path(explainer.h.classes[cls])[1:]:
        r = explainer._row.get(w)
        if r is not None and explainer._reliable[r]:
            return r
    return None


@torch.no_grad()
def evaluate_image(explainer: Explainer, x: torch.Tensor, ks=KS, draws: int = 5, permutations: int = 8,
                   seed: int = 0, image_seed: int = 0) -> dict | None:  # fmt: skip
    """One preprocessed image x (1, 3, H, W): the drops of every arm at every k, or None when its
    predicted class has no reliable bank concept on its path."""
    ex = explainer
    probs, maps, z = ex.forward_tensor(x)
    cls = int(probs[0].argmax())
    r = deepest_reliable(ex, cls)
    if r is None:
        return None
    m = maps[0, r].flatten()
    mask = (m >= 0.5 * m.max()).unsqueeze(0)
    signed, absolute = image_shapley(z[0], mask, ex.weight[r : r + 1], ex.bias[r : r + 1], ex.baseline,
                                     permutations, seed)  # fmt: skip
    kmax, d = max(ks), ex.channels
    order = {
        "image": signed[0].argsort(descending=True, stable=True)[:kmax].tolist(),
        "image_abs": absolute[0].argsort(descending=True, stable=True)[:kmax].tolist(),
        "global": ex.bank.phi[r].argsort(descending=True, stable=True)[:kmax].tolist(),
    }
    gen = torch.Generator().manual_seed(seed * 1_000_003 + image_seed)
    randoms = [torch.randperm(d, generator=gen)[:kmax].tolist() for _ in range(draws)]
    edits, keys = [], []
    for k in ks:
        for arm, neurons in order.items():
            edits.append(neurons[:k])
            keys.append((arm, k, None))
        for j, neurons in enumerate(randoms):
            edits.append(neurons[:k])
            keys.append(("random", k, j))
    p_after, maps_after, _ = ex.forward_tensor(x.expand(len(edits), -1, -1, -1), edits=edits)
    p0, s0 = float(probs[0, cls]), float(pool(maps[0, r]))
    dp = (p0 - p_after[:, cls]).tolist()
    ds = (s0 - pool(maps_after[:, r])).tolist()
    drops: dict = {m: {arm: {} for arm in ARMS} for m in METRICS}
    for (arm, k, _draw), a, b in zip(keys, dp, ds, strict=True):
        for metric, v in (("probability", a), ("score", b)):
            drops[metric][arm].setdefault(str(k), []).append(v)
    for metric in drops:
        for arm in ARMS:
            drops[metric][arm] = {k: round(float(np.mean(v)), 6) for k, v in drops[metric][arm].items()}
    return {
        "class": cls, "class_name": ex.h.class_names[cls], "concept": ex.bank.wnids[r],
        "concept_name": ex.bank.concepts[r]["name"], "probability": round(p0, 6), "score": round(s0, 6),
        "region_cells": int(mask.sum()), "top": {a: order[a][:kmax] for a in order}, "drops": drops,
    }  # fmt: skip


def collect(explainer: Explainer, samples: list[Sample], ks=KS, draws: int = 5, permutations: int = 8,
            seed: int = 0, workers: int = 2, progress: bool = True) -> list[dict]:  # fmt: skip
    """Per-image records (``file`` and ``label`` added) of every readable sample with a concept."""
    bb = explainer.backbone
    loader = DataLoader(ImageDataset(samples, bb.preprocess, bb.input_size), batch_size=1, num_workers=workers)
    out = []
    for x, y, i, ok in tqdm(loader, desc="evaluate-neurons", unit="image", disable=not progress):
        if not ok.all():
            continue
        idx = int(i[0])
        rec = evaluate_image(explainer, x, ks, draws, permutations, seed, idx)
        if rec is not None:
            out.append({"file": samples[idx].path.name, "label": int(y[0]), **rec})
    return out


def interval(values: list[float]) -> dict:
    """Mean and 95 % interval (mean ± 1.96 standard errors over images)."""
    a = np.asarray(values, dtype=np.float64)
    mean = float(a.mean()) if len(a) else float("nan")
    half = 1.96 * float(a.std(ddof=1)) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return {"mean": round(mean, 6), "ci": [round(mean - half, 6), round(mean + half, 6)]}


def report(records: list[dict], explainer: Explainer, ks=KS, draws: int = 5, permutations: int = 8,
           seed: int = 0, skipped: int = 0) -> dict:  # fmt: skip
    """Means with intervals per metric, arm and k; paired differences; whether the goal holds."""
    summary: dict = {}
    for metric in METRICS:
        summary[metric] = {}
        for k in map(str, ks):
            col = {arm: [r["drops"][metric][arm][k] for r in records] for arm in ARMS}
            row = {arm: interval(v) for arm, v in col.items()}
            row["image_minus_global"] = interval(list(np.subtract(col["image"], col["global"])))
            row["global_minus_random"] = interval(list(np.subtract(col["global"], col["random"])))
            ci = {arm: row[arm]["ci"] for arm in ARMS}
            row["goal"] = bool(ci["image"][0] > ci["global"][1] and ci["global"][0] > ci["random"][1])
            summary[metric][k] = row
    return {
        "bank_id": explainer.bank.id, "backbone": explainer.bank.meta.get("backbone"),
        "layer": explainer.bank.meta.get("layer"), "images": len(records), "skipped_no_concept": skipped,
        "ks": list(ks), "random_draws": draws, "permutations": permutations, "seed": seed,
        "summary": summary, "records": records,
    }  # fmt: skip


def _cell(s: dict) -> str:
    return f"{s['mean']:.4f} [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}]"


def markdown(rep: dict, command: str, plot: str | None = "neurons.png") -> str:
    """The docs page: the table of mean drops with 95 % intervals, the paired differences, the goal."""
    lines = [
        "# Which neurons matter: this image's, the bank's, or any", "",
        f"Bank `{rep['bank_id']}` ({rep['backbone']} `{rep['layer']}`), {rep['images']} images "
        f"({rep['skipped_no_concept']} skipped: no reliable bank concept on the predicted class's path), "
        f"per-image Shapley with M = {rep['permutations']} permutations (seed {rep['seed']}), "
        f"{rep['random_draws']} random draws per image. Command:", "",
        f"```bash\n{command}\n```", "",
        "Per image: c = the model's predicted class, e = the deepest reliable bank concept on c's WordNet path; "
        "k neurons are removed *inside the network* (set to the bank's baseline at the hooked layer, the forward "
        "pass continues). Arms: " + "; ".join(f"*{a}* = {LABELS[a]}" for a in ARMS) + ". "
        "Values: mean drop over images, [95 % interval] (± 1.96 standard errors).", "",
    ]  # fmt: skip
    for metric, title in METRICS.items():
        lines += [f"## {title[0].upper() + title[1:]}", "",
                  "| k | " + " | ".join(LABELS[a] for a in ARMS) + " | image − global | global − random | goal |",
                  "|---:|" + "---|" * (len(ARMS) + 3)]  # fmt: skip
        for k, row in rep["summary"][metric].items():
            cells = [_cell(row[a]) for a in ARMS] + [_cell(row["image_minus_global"]), _cell(row["global_minus_random"])]
            lines.append(f"| {k} | " + " | ".join(cells) + f" | {'yes' if row['goal'] else 'no'} |")
        lines.append("")
    lines += [
        "*goal*: image > global > random with intervals that do not overlap. The paired columns are the "
        "per-image differences (their intervals are narrower than the arms' because images differ a lot).", "",
        "How to read it: this image's neurons are chosen on the image they are then removed from (as the service "
        "answers, M permutations over e's region), the bank's on the bank's images. The probe-score drop is close to "
        "what the image ranking measures (e's probe on that region), so its lead there is expected; the class "
        "probability never enters the Shapley game, so its drop is the independent check that these neurons carry "
        "what the model itself uses. The signed ranking removes the neurons that push e up; the paper's absolute "
        "form also picks neurons that push it down, whose removal raises the score.", "",
    ]
    if plot:
        lines += [f"![mean drops with 95 % intervals]({plot})", ""]
    lines.append(verdict(rep))
    lines.append("")
    return "\n".join(lines)


def verdict(rep: dict) -> str:
    """One line per metric: at which k the goal holds."""
    parts = []
    for metric in METRICS:
        held = [k for k, row in rep["summary"][metric].items() if row["goal"]]
        parts.append(f"{metric}: goal met at k = {', '.join(held) if held else 'none'}")
    return f"evaluate-neurons ({rep['images']} images): " + "; ".join(parts)


def plot(rep: dict, path: str | Path) -> None:
    """Mean drops with 95 % intervals against k, one panel per metric."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), dpi=110, layout="constrained")
    ks = [int(k) for k in rep["ks"]]
    for i, (metric, title) in enumerate(METRICS.items()):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, arm in enumerate(ARMS):
            rows = [rep["summary"][metric][str(k)][arm] for k in ks]
            mean = np.array([r["mean"] for r in rows])
            lo, hi = mean - np.array([r["ci"][0] for r in rows]), np.array([r["ci"][1] for r in rows]) - mean
            ax.errorbar(np.array(ks) + (j - 1.5) * 0.3, mean, yerr=[lo, hi], marker="o", capsize=3, label=LABELS[arm])
        ax.set_xticks(ks)
        ax.set_xlabel("k neurons removed")
        ax.set_ylabel("mean drop")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8, frameon=False)
    fig.savefig(path)


def write(rep: dict, out: str | Path, command: str) -> list[Path]:
    """``results.json``, ``neurons.md`` and ``neurons.png`` in ``out`` (atomic text writes)."""
    paths = write_texts(out, {"results.json": json.dumps(rep, indent=1), "neurons.md": markdown(rep, command)})
    out = Path(out)
    plot(rep, out / "neurons.png")
    paths.append(out / "neurons.png")
    return paths

"""Which neurons matter for this image? (``python -m offline evaluate-neurons``)

For each image: the model's predicted class c, and the deepest concept on c's WordNet path that is
in the bank and reliable (*e*), with its region R (cells of e's map >= 0.5 × its maximum). Each arm
picks k neurons of the hooked layer, then each set is removed inside the network
(:class:`hint.explain.neurons.ChannelEdit`: channels set to the bank's baseline at the hooked layer, the
forward pass continues) and two drops are measured against the unablated image:

* the model's probability of c, and
* *e*'s probe image score (:func:`hint.presence.pool` of its concept map).

Arms: ``image`` — the served values, the top-k of this image's exact signed Shapley values of e's probe
logit over R (:func:`hint.explain.neurons.image_logit_shapley`, as the service lists them in
``image_neurons``); ``image_abs`` — their absolute form; ``image_mc`` — the probability game's
Monte-Carlo estimate (:func:`hint.explain.neurons.image_shapley`, M permutations: a request's
``permutations``); ``global`` — the bank's top-k φ for *e*; ``random`` — k neurons drawn uniformly
(several seeded draws per image, averaged per image); and the library baselines of
:mod:`hint.evaluation.neuron_baselines` (Captum gradient × activation and Integrated Gradients,
zennit-crp relevance; concept or class target), each timed per image.
Means over images with 95 % intervals (normal approximation over images), and paired differences
(image − global, global − random, and the served arm minus every other arm) with their intervals.
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
from hint.evaluation.neuron_baselines import (
    IG_STEPS,
    METHODS,
    TARGETS,
    ProbeOutput,
    channel_attributions,
    clock,
    since,
)
from hint.explain.explainer import Explainer
from hint.explain.neurons import image_logit_shapley, image_shapley
from hint.presence import pool

KS = (5, 10, 20)
#: the served arm and its comparison arms (the library baselines: ``<method>_<target>``, :mod:`.neuron_baselines`)
BASELINES = tuple(f"{m}_{t}" for m in METHODS for t in TARGETS)
ARMS = ("image", "image_abs", "image_mc", "global", "random", *BASELINES)
LABELS = {"image": "served: this image's exact logit-game Shapley (signed)",
          "image_abs": "this image's exact logit-game Shapley (absolute)",
          "image_mc": "this image's probability-game Shapley, Monte Carlo (signed; a request with `permutations`)",
          "global": "bank's global φ", "random": "random",
          **{f"{m}_{t}": f"{label}, {t} target" for m, label in METHODS.items() for t in TARGETS}}  # fmt: skip
METRICS = {"probability": "drop of the model's probability for its predicted class",
           "score": "drop of the concept's probe image score"}  # fmt: skip
#: the target: the served arm at least as good as every other arm on this metric at this k (paired intervals)
TARGET = ("score", "10")


def deepest_reliable(explainer: Explainer, cls: int) -> int | None:
    """Bank row of the deepest reliable concept on class ``cls``'s WordNet path (aliases resolve)."""
    for w in explainer.h.path(explainer.h.classes[cls])[1:]:
        r = explainer._row.get(w)
        if r is not None and explainer._reliable[r]:
            return r
    return None


@torch.no_grad()
def evaluate_image(
    explainer: Explainer,
    x: torch.Tensor,
    ks=KS,
    draws: int = 5,
    permutations: int = 8,
    seed: int = 0,
    image_seed: int = 0,
    ig_steps: int = IG_STEPS,
) -> dict | None:
    """One preprocessed image x (1, 3, H, W): the drops of every arm at every k and each method's
    wall time (seconds), or None when its predicted class has no reliable bank concept on its path."""
    ex = explainer
    probs, maps, z = ex.forward_tensor(x)
    cls = int(probs[0].argmax())
    r = deepest_reliable(ex, cls)
    if r is None:
        return None
    m = maps[0, r].flatten()
    mask = (m >= 0.5 * m.max()).unsqueeze(0)
    seconds = {}
    start = clock()
    signed, absolute = image_logit_shapley(z[0], mask, ex.weight[r : r + 1], ex.baseline)
    seconds["image"] = since(start)
    start = clock()
    mc, _ = image_shapley(
        z[0], mask, ex.weight[r : r + 1], ex.bias[r : r + 1], ex.baseline, permutations, seed
    )
    seconds["image_mc"] = since(start)
    probe = ProbeOutput(
        ex.model,
        ex.backbone.layer_module(),
        ex.weight[r],
        float(ex.bias[r]),
        mask.view(maps.shape[-2:]),
        probs.shape[1],
    )
    values, took = channel_attributions(probe, x, cls, ig_steps)
    seconds.update(took)
    kmax, d = max(ks), ex.channels
    scores = {
        "image": signed[0],
        "image_abs": absolute[0],
        "image_mc": mc[0],
        "global": ex.bank.phi[r],
        **values,
    }
    order = {
        arm: scores[arm].argsort(descending=True, stable=True)[:kmax].tolist()
        for arm in ARMS
        if arm != "random"
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
    p_after, maps_after, _ = ex.forward_tensor(x, edits=edits)  # the layers before the edit run once
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
        "class": cls,
        "class_name": ex.h.class_names[cls],
        "concept": ex.bank.wnids[r],
        "concept_name": ex.bank.concepts[r]["name"],
        "probability": round(p0, 6),
        "score": round(s0, 6),
        "region_cells": int(mask.sum()),
        "top": {a: order[a][:kmax] for a in order},
        "drops": drops,
        "seconds": {a: round(t[0], 6) for a, t in seconds.items()},
        "cpu_seconds": {a: round(t[1], 6) for a, t in seconds.items()},
    }


def collect(
    explainer: Explainer,
    samples: list[Sample],
    ks=KS,
    draws: int = 5,
    permutations: int = 8,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    ig_steps: int = IG_STEPS,
) -> list[dict]:
    """Per-image records (``file`` and ``label`` added) of every readable sample with a concept."""
    bb = explainer.backbone
    loader = DataLoader(
        ImageDataset(samples, bb.preprocess, bb.input_size), batch_size=1, num_workers=workers
    )
    out = []
    for x, y, i, ok in tqdm(loader, desc="evaluate-neurons", unit="image", disable=not progress):
        if not ok.all():
            continue
        idx = int(i[0])
        rec = evaluate_image(explainer, x, ks, draws, permutations, seed, idx, ig_steps)
        if rec is not None:
            out.append({"file": samples[idx].path.name, "label": int(y[0]), **rec})
    return out


def interval(values: list[float]) -> dict:
    """Mean and 95 % interval (mean ± 1.96 standard errors over images)."""
    a = np.asarray(values, dtype=np.float64)
    mean = float(a.mean()) if len(a) else float("nan")
    half = 1.96 * float(a.std(ddof=1)) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return {"mean": round(mean, 6), "ci": [round(mean - half, 6), round(mean + half, 6)]}


def report(
    records: list[dict],
    explainer: Explainer,
    ks=KS,
    draws: int = 5,
    permutations: int = 8,
    seed: int = 0,
    skipped: int = 0,
    ig_steps: int = IG_STEPS,
) -> dict:
    """Means with intervals per metric, arm and k; paired differences (image − global, global − random,
    and the served arm minus every other arm); whether the goals hold; each method's time per image."""
    summary: dict = {}
    for metric in METRICS:
        summary[metric] = {}
        for k in map(str, ks):
            col = {arm: [r["drops"][metric][arm][k] for r in records] for arm in ARMS}
            row = {arm: interval(v) for arm, v in col.items()}
            row["image_minus_global"] = interval(list(np.subtract(col["image"], col["global"])))
            row["global_minus_random"] = interval(list(np.subtract(col["global"], col["random"])))
            row["served_minus"] = {
                a: interval(list(np.subtract(col["image"], col[a]))) for a in ARMS if a != "image"
            }
            ci = {arm: row[arm]["ci"] for arm in ARMS}
            row["goal"] = bool(ci["image"][0] > ci["global"][1] and ci["global"][0] > ci["random"][1])
            # at least as good as every other arm: no paired interval lies wholly below 0
            row["served_best"] = bool(all(v["ci"][1] >= 0 for v in row["served_minus"].values()))
            summary[metric][k] = row
    timed = [a for a in ("image", "image_mc", *BASELINES) if records and a in records[0].get("seconds", {})]

    def ms(key: str) -> dict:
        return {
            a: {
                "median": round(1000 * float(np.median([r[key][a] for r in records])), 3),
                "mean": round(1000 * float(np.mean([r[key][a] for r in records])), 3),
            }
            for a in timed
        }

    return {
        "bank_id": explainer.bank.id,
        "backbone": explainer.bank.meta.get("backbone"),
        "layer": explainer.bank.meta.get("layer"),
        "images": len(records),
        "skipped_no_concept": skipped,
        "ks": list(ks),
        "random_draws": draws,
        "permutations": permutations,
        "seed": seed,
        "ig_steps": ig_steps,
        "threads": torch.get_num_threads(),
        "milliseconds": {"cpu": ms("cpu_seconds"), "wall": ms("seconds")},
        "summary": summary,
        "records": records,
    }


def _cell(s: dict) -> str:
    return f"{s['mean']:.4f} [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}]"


def markdown(rep: dict, command: str, plot: str | None = "neurons.png") -> str:
    """The docs page: per metric the mean drops with 95 % intervals (arms × k), the served arm's paired
    differences against every other arm, the goals, and each method's time per image."""
    ks = [str(k) for k in rep["ks"]]
    lines = [
        "# Which neurons matter: this image's, the bank's, a library's, or any",
        "",
        f"Bank `{rep['bank_id']}` ({rep['backbone']} `{rep['layer']}`), {rep['images']} images "
        f"({rep['skipped_no_concept']} skipped: no reliable bank concept on the predicted class's path), "
        f"{rep['random_draws']} random draws per image, the probability-game Monte Carlo with "
        f"M = {rep['permutations']} permutations (seed {rep['seed']}), Integrated Gradients with "
        f"{rep['ig_steps']} steps. Command:",
        "",
        f"```bash\n{command}\n```",
        "",
        "Per image: c = the model's predicted class, e = the deepest reliable bank concept on c's WordNet path, "
        "R = e's region (cells of e's bank-layer map ≥ 0.5 × its maximum); k neurons are removed *inside the "
        "network* (set to the bank's baseline at the hooked layer, the forward pass continues). Arms: "
        + "; ".join(f"*{a}* = {LABELS[a]}" for a in ARMS)
        + ". "
        "Library arms (`hint.evaluation.neuron_baselines`): a neuron's value is the method's attribution at the bank "
        "layer summed over all positions; *concept target* = e's probe logit summed over R, Σ_{r∈R} (αᵀz(r) + b) "
        "(its gradient is zero outside R), *class target* = the logit of c. Integrated Gradients integrates from the "
        "bank-layer activations of an all-zero input (the mean grey image after normalisation). zennit-crp runs on "
        "EfficientNet-Lite0 as loaded: relevance starts at 1 on the target, `EpsilonPlusFlat` puts the flat rule on the "
        "stem, z⁺ on every other convolution (the probe's 1×1 included), ε on the classifier, passes ReLU6 and "
        "normalises the average pooling; the BatchNorms are already folded into the convolutions (no canonizer "
        "needed), and the blocks' residual additions and TensorFlow padding are functional, so they pass plain "
        "gradients. Values: mean drop over images, [95 % interval] (± 1.96 standard errors).",
        "",
    ]
    for metric, title in METRICS.items():
        summ = rep["summary"][metric]
        lines += [
            f"## {title[0].upper() + title[1:]}",
            "",
            "| arm | " + " | ".join(f"k = {k}" for k in ks) + " |",
            "|---|" + "---|" * len(ks),
        ]
        lines += [f"| {LABELS[a]} | " + " | ".join(_cell(summ[k][a]) for k in ks) + " |" for a in ARMS]
        lines += [
            "",
            "Served minus each arm (paired, per image):",
            "",
            "| served − | " + " | ".join(f"k = {k}" for k in ks) + " |",
            "|---|" + "---|" * len(ks),
        ]
        lines += [
            f"| {LABELS[a]} | " + " | ".join(_cell(summ[k]["served_minus"][a]) for k in ks) + " |"
            for a in ARMS
            if a != "image"
        ]
        lines += [
            "",
            "| k | image − global | global − random | goal | served ≥ every arm |",
            "|---:|---|---|---|---|",
        ]
        for k in ks:
            row = summ[k]
            lines.append(
                f"| {k} | {_cell(row['image_minus_global'])} | {_cell(row['global_minus_random'])} | "
                f"{'yes' if row['goal'] else 'no'} | {'yes' if row['served_best'] else 'no'} |"
            )
        lines.append("")
    lines += [
        "*goal*: image > global > random with intervals that do not overlap. *served ≥ every arm*: no paired "
        "interval (served − arm) lies wholly below 0. The paired intervals are narrower than the arms' because "
        "images differ a lot.",
        "",
        f"## Time per image ({rep['threads']} torch thread{'s' if rep['threads'] != 1 else ''}, this shared 2-core CPU)",
        "",
        "CPU = the process's CPU time during the call (with one thread: the work itself); wall = elapsed, "
        "which also counts waiting for a core while other jobs ran.",
        "",
        "| arm | CPU median ms | CPU mean ms | wall median ms | wall mean ms |",
        "|---|---:|---:|---:|---:|",
    ]
    cpu, wall = rep["milliseconds"]["cpu"], rep["milliseconds"]["wall"]
    lines += [
        f"| {LABELS[a]} | {cpu[a]['median']:.3f} | {cpu[a]['mean']:.3f} | {wall[a]['median']:.3f} | "
        f"{wall[a]['mean']:.3f} |"
        for a in cpu
    ]
    lines += [
        "",
        "The served and Monte-Carlo arms reuse the forward pass the service makes anyway (their time is the "
        "values alone, for one concept); each library call makes its own forward and backward passes (Integrated "
        "Gradients: one per step).",
        "",
        "How to read it: the served values are the exact Shapley values of e's probe *logit* over R, "
        "α_d · mean_{r∈R} (z_d(r) − β_d): removing neuron d lowers that logit by exactly this much, so the "
        "served top-k are the k neurons whose removal lowers e's region logit most. Captum's gradient × activation "
        "on the concept target is α_d · Σ_R z_d(r), the same without the baseline; Integrated Gradients is exact "
        "for this linear target too, but from the grey image's activations instead of the bank's baseline. The "
        "probe image score pools σ of the logit over the map's top cells, so the exact logit ranking is not "
        "guaranteed to be the best for it; on these images no other arm removes more of it. The class probability "
        "never enters the served game, so its drop is the independent check; the class-target arms aim at it "
        "directly and remove more of it, and less of the concept's score.",
        "",
    ]
    if plot:
        lines += [f"![mean drops with 95 % intervals]({plot})", ""]
    lines.append(verdict(rep))
    lines.append("")
    return "\n".join(lines)


def verdict(rep: dict, target: tuple[str, str] = TARGET) -> str:
    """One line: per metric, at which k the goal holds; whether the served arm is at least as good as
    every other arm on the ``target`` (metric, k)."""
    parts = []
    for metric in METRICS:
        held = [k for k, row in rep["summary"][metric].items() if row["goal"]]
        parts.append(f"{metric}: goal met at k = {', '.join(held) if held else 'none'}")
    metric, k = target
    row = rep["summary"].get(metric, {}).get(k)
    if row is not None:
        parts.append(f"served ≥ every arm on {metric} at k = {k}: {'yes' if row['served_best'] else 'no'}")
    return f"evaluate-neurons ({rep['images']} images): " + "; ".join(parts)


def plot(rep: dict, path: str | Path) -> None:
    """Mean drops with 95 % intervals against k, one panel per metric."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    palette = colormaps["tab20"]
    fig = Figure(figsize=(12, 5), dpi=110, layout="constrained")
    ks = [int(k) for k in rep["ks"]]
    for i, (metric, title) in enumerate(METRICS.items()):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, arm in enumerate(ARMS):
            rows = [rep["summary"][metric][str(k)][arm] for k in ks]
            mean = np.array([r["mean"] for r in rows])
            lo, hi = mean - np.array([r["ci"][0] for r in rows]), np.array([r["ci"][1] for r in rows]) - mean
            ax.errorbar(
                np.array(ks) + (j - (len(ARMS) - 1) / 2) * 0.2,
                mean,
                yerr=[lo, hi],
                marker="o",
                ms=3,
                capsize=2,
                label=LABELS[arm],
                ls="-" if j < 5 else "--",
                color=palette(j),
            )
        ax.set_xticks(ks)
        ax.set_xlabel("k neurons removed")
        ax.set_ylabel("mean drop")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=6, frameon=False)
    fig.savefig(path)


def write(rep: dict, out: str | Path, command: str) -> list[Path]:
    """``results.json``, ``neurons.md`` and ``neurons.png`` in ``out`` (atomic text writes)."""
    paths = write_texts(
        out, {"results.json": json.dumps(rep, indent=1), "neurons.md": markdown(rep, command)}
    )
    out = Path(out)
    plot(rep, out / "neurons.png")
    paths.append(out / "neurons.png")
    return paths

"""Calibrating concept presence at build time: cross-validated thresholds, reliability, the presence rule.

A concept probe L_e(r) = σ(αᵀr + b) scores every position r of the hooked layer (the concept map).
Its **image score** is the mean of the map's ``k`` largest values (``k`` = :data:`POOL_FRACTION` of the
positions, at least 1): a concept present anywhere in the image lifts it, one noisy position does not.

Thresholds are calibrated on **held-out bank images**: the bank's images are split into ``folds``
(seeded, by image); each fold's images are scored by probes trained on the other folds, so every image
gets an out-of-fold score, and the per-concept threshold is the one with the best out-of-fold F1.
The evaluation set never enters here.

A concept is **reliable** when its out-of-fold image scores rank the images that show it above those
that do not better than a trivial (constant) score does, with 95 % confidence: the lower end of the
bootstrap interval (over images) of its image-level AUROC is above 0.5. The region-level F1 with its
interval and the trivial "always positive" F1 are reported beside it (:func:`reliability`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hint._utils.stats import (
    BOOTSTRAP,
    auroc,
    auroc_interval,
    best_threshold,
    bootstrap_weights,
    ci95,
    f1_counts,
)
from hint.presence import image_scores, rule_features
from hint.probes import probe_scores


def fold_of(n_images: int, folds: int, seed: int = 0) -> torch.Tensor:
    """A seeded fold number (0..folds-1) for each image, folds of equal size."""
    order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))
    out = torch.empty(n_images, dtype=torch.long)
    out[order] = torch.arange(n_images) % folds
    return out


@dataclass
class RegionCounts:
    """Held-out region outcomes of one concept, per image (for a bootstrap over images)."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    pos: np.ndarray  # positive regions (tp + fn)
    n: np.ndarray  # all held-out regions of the image

    def f1(self, w: np.ndarray | None = None) -> np.ndarray | float:
        """Region F1; with ``w`` (B, I) bootstrap weights, one F1 per draw."""
        if w is None:
            return float(f1_counts(self.tp.sum(), self.fp.sum(), self.fn.sum()))
        return f1_counts(w @ self.tp, w @ self.fp, w @ self.fn)

    def trivial_f1(self, w: np.ndarray | None = None) -> np.ndarray | float:
        """F1 of calling every held-out region positive."""
        pos, n = (self.pos.sum(), self.n.sum()) if w is None else (w @ self.pos, w @ self.n)
        return 2 * pos / np.maximum(pos + n, 1e-12)


def region_counts(pred: torch.Tensor, y: torch.Tensor, image: torch.Tensor) -> RegionCounts:
    """Per-image counts from held-out region predictions (bool), labels and image indices."""
    ids, inv = torch.unique(image, return_inverse=True)
    t, p = y > 0.5, pred.bool()

    def per(mask: torch.Tensor) -> np.ndarray:
        return torch.zeros(len(ids)).index_add_(0, inv, mask.float()).numpy()

    return RegionCounts(per(p & t), per(p & ~t), per(~p & t), per(t), per(torch.ones_like(t)))


def merge_counts(parts: list[RegionCounts]) -> RegionCounts:
    return RegionCounts(
        *(np.concatenate([getattr(c, f) for c in parts]) for f in ("tp", "fp", "fn", "pos", "n"))
    )


def region_quality(counts: RegionCounts, seed: int = 0, draws: int = BOOTSTRAP) -> dict:
    """Out-of-fold region F1 with its 95 % bootstrap interval (over images), the trivial always-positive
    F1 on the same regions, and ``beats_trivial``: the interval of F1 − trivial F1 lies above 0."""
    n = len(counts.tp)
    f1, trivial = counts.f1(), counts.trivial_f1()
    if n < 2 or counts.pos.sum() == 0:
        return {"f1": f1, "f1_ci": [f1, f1], "trivial_f1": float(trivial), "beats_trivial": False}
    w = bootstrap_weights(n, draws, seed)
    boot, boot_triv = counts.f1(w), counts.trivial_f1(w)
    lo_diff = float(np.quantile(boot - boot_triv, 0.025))
    return {
        "f1": round(f1, 4),
        "f1_ci": ci95(boot),
        "trivial_f1": round(float(trivial), 4),
        "beats_trivial": bool(lo_diff > 0 and not math.isnan(lo_diff)),
    }


#: recall of the out-of-fold positive images that the served rule's probe threshold keeps
VETO_RECALL = 0.98


def recall_threshold(scores: np.ndarray, truth: np.ndarray, recall: float = VETO_RECALL) -> float:
    """The largest threshold whose ``scores >= threshold`` keeps at least ``recall`` of the positives
    (0.0 when there are none)."""
    pos = np.sort(scores[truth])
    if len(pos) == 0:
        return 0.0
    k = int(np.floor((1 - recall) * len(pos) + 1e-9))  # positives allowed below the threshold
    return float(pos[k])


def image_quality(scores: np.ndarray, truth: np.ndarray, seed: int = 0) -> dict:
    """Calibration and reliability from out-of-fold image scores: the F1-best ``threshold`` (the probe's
    own answer), ``veto_threshold`` (keeps :data:`VETO_RECALL` of the positives; the served rule's),
    image F1, AUROC with its 95 % interval, and ``reliable`` (the interval lies above 0.5)."""
    thr, f1 = best_threshold(scores, truth)
    auc = auroc(scores, truth)
    ci = auroc_interval(scores, truth, seed)
    return {
        "threshold": round(thr, 5),
        "veto_threshold": round(recall_threshold(scores, truth), 5),
        "image_f1": round(f1, 4),
        "image_auroc": None if auc is None else round(auc, 4),
        "image_auroc_ci": ci,
        "reliable": bool(ci is not None and ci[0] > 0.5),
    }


def cross_validate(
    table,
    wnids: list[str],
    parents: list[str],
    hierarchy,
    fit,
    folds: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Out-of-fold evidence for every concept: region counts (for :func:`reliability`) and image scores.

    ``table`` is the step-1 :class:`~hint.build.concepts.RegionTable` (rows of an image contiguous),
    ``fit(samples) -> (weight (D,), bias)`` trains one probe on :class:`~hint.build.concepts.ConceptSamples`.
    Returns ``{"fold": (I,), "scores": (I, E) out-of-fold image scores (NaN for unreadable images),
    "counts": [RegionCounts per concept]}``.
    """
    from tqdm import tqdm

    from hint.build.concepts import concept_samples

    n_img = len(table.label)
    photos = table.photos  # the views of one photo share its fold
    fold = fold_of(int(photos.max()) + 1, folds, seed)[photos]
    positions = int(torch.bincount(table.image).max())
    ids = table.image[::positions]
    scores = torch.full((n_img, len(wnids)), float("nan"))
    parts: list[list[RegionCounts]] = [[] for _ in wnids]
    bar = tqdm(total=folds * len(wnids), desc="step 2: cross-validation", disable=not progress)
    for f in range(folds):
        train, held = fold != f, fold == f
        weight = torch.zeros(len(wnids), table.dim)
        bias = torch.zeros(len(wnids))
        for e, (w, p) in enumerate(zip(wnids, parents, strict=True)):
            s = concept_samples(table, w, p, hierarchy, seed=seed, images=train)
            if s.n_pos and len(s.y) > s.n_pos:
                weight[e], bias[e] = fit(s)
            else:  # no positives (or negatives) in these folds: the probe says "absent"
                bias[e] = -20.0
            t = concept_samples(table, w, p, hierarchy, seed=seed, images=held)
            pred = probe_scores(t.x, weight[e], bias[e]) > 0.5
            parts[e].append(region_counts(pred, t.y, t.image))
            bar.update()
        rows = torch.isin(table.image, torch.nonzero(held).flatten())
        held_ids = ids[held[ids]]
        scores[held_ids] = image_scores(table.features[rows], positions, weight, bias)
    bar.close()
    return {"fold": fold, "scores": scores, "counts": [merge_counts(p) for p in parts]}


def image_metrics(
    scores: torch.Tensor, labels: torch.Tensor, wnids: list[str], hierarchy, seed: int = 0
) -> list[dict]:
    """:func:`image_quality` of every concept from out-of-fold image ``scores`` (I, E) and the images'
    class ``labels`` (I,; -1 unreadable), plus ``n_images`` (images under the concept)."""
    lab = labels.numpy()
    readable = lab >= 0
    out = []
    for e, w in enumerate(wnids):
        truth = np.isin(lab, hierarchy[w].leaves)[readable]
        oof = scores[readable, e].numpy().astype(np.float64)
        out.append({**image_quality(oof, truth, seed), "n_images": int(truth.sum())})
    return out


#: the largest false-positive rate the served rule may have for any concept on the bank's photos (among
#: the concepts with at least :data:`MIN_NEGATIVES` negative photos: with fewer, one photo is a third)
MAX_FPR = 0.10


MIN_NEGATIVES = 20


def fit_rule(
    model_probability: torch.Tensor,
    score: torch.Tensor,
    truth: torch.Tensor,
    groups: dict[str, torch.Tensor] | None = None,
    l2: float = 1e-4,
) -> dict:
    """The served ``present`` rule, fit on the bank's images (``model_probability``, out-of-fold probe
    ``score`` and ``truth``, each (I, E); rows with a NaN score, e.g. unreadable images, left out).

    One logistic model over all concepts, z = a·logit p + b·logit s + c, and a cut: present = z >= cut.
    The cut is the one with the best macro-F1 over the concepts with a positive image among the cuts that,
    on these images, keep up with the model's own summed softmax (p >= 0.5) — macro-F1 at least the
    softmax's over all concepts and over each of ``groups`` (name → bool (E,) concept mask), and the
    false-positive rate of every concept with :data:`MIN_NEGATIVES` negative photos at most
    max(:data:`MAX_FPR`, the softmax's); 0 (the logistic model's own 0.5) when no cut does."""
    from hint.build.classifiers import fit_logistic

    ok = ~torch.isnan(score).any(1)
    x = rule_features(model_probability[ok], score[ok]).float()
    y = truth[ok].bool().numpy()
    w, b = fit_logistic(x.reshape(-1, 2), torch.from_numpy(y).reshape(-1).float(), torch.ones(y.size), l2=l2)
    z = (x.double() @ w.double() + float(b)).numpy()
    masks = {
        "all": np.ones(y.shape[1], bool),
        **{k: v.numpy().astype(bool) for k, v in (groups or {}).items()},
    }
    soft = _rule_quality(model_probability[ok].numpy() >= 0.5, y, masks)
    best: tuple[float, dict] | None = None
    for cut in np.linspace(-6, 6, 241):
        q = _rule_quality(z >= cut, y, masks)
        fits = all(q[k] >= soft[k] - 1e-12 for k in masks) and q["fpr_max"] <= max(MAX_FPR, soft["fpr_max"])
        if fits and (best is None or q["all"] > best[1]["all"] + 1e-12):
            best = (float(cut), q)
    cut, q = best if best is not None else (0.0, _rule_quality(z >= 0, y, masks))
    return {
        "kind": "logistic",
        "coef": [round(float(v), 6) for v in w],
        "intercept": round(float(b), 6),
        "cut": round(cut, 6),
        "fit_quality": {k: round(v, 4) for k, v in q.items()},
        "softmax_quality": {k: round(v, 4) for k, v in soft.items()},
        "constrained": best is not None,
        "features": ["logit(model_probability)", "logit(score)"],
        "images": int(ok.sum()),
        "positives": int(y.sum()),
    }


def _rule_quality(pred: np.ndarray, truth: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Macro-F1 of boolean (I, E) answers over each mask's concepts with a positive image, and the largest
    false-positive rate of any concept."""
    tp = (pred & truth).sum(0)
    f1 = f1_counts(tp, pred.sum(0) - tp, truth.sum(0) - tp)
    has = truth.any(0)
    out = {k: float(f1[m & has].mean()) if (m & has).any() else 0.0 for k, m in masks.items()}
    neg = (~truth).sum(0)
    fpr = (pred & ~truth).sum(0) / np.maximum(neg, 1)
    out["fpr_max"] = float(fpr[neg >= MIN_NEGATIVES].max()) if (neg >= MIN_NEGATIVES).any() else 0.0
    return out

"""Statistics every layer shares: precision/recall/F1, F1-best thresholds, AUROC and bootstrap intervals
over images."""

from __future__ import annotations

import numpy as np

#: bootstrap draws of the reliability interval
BOOTSTRAP = 1000


def f1_curve(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, F1 at each) for predicting ``truth`` by ``scores >= threshold``, over every score."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order].astype(np.float64)
    tp = np.cumsum(t)
    k = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True]  # ties share one threshold
    tp, k, s = tp[last], k[last], s[last]
    return s, f1_counts(tp, k - tp, t.sum() - tp)


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) with the best F1; a threshold between two scores (the midpoint), 1.0 when no
    image is positive."""
    if truth.sum() == 0:
        return 1.0, 0.0
    thr, f1 = f1_curve(scores, truth)
    i = int(np.argmax(f1))
    below = scores[scores < thr[i]]
    cut = (thr[i] + below.max()) / 2 if len(below) else thr[i]
    return float(cut), float(f1[i])


def f1_counts(tp, fp, fn):
    """F1 = 2tp / (2tp + fp + fn) from counts, in their dtype; 0 where ``tp`` is 0.

    Args:
        tp, fp, fn: true positives, false positives, false negatives: scalars or arrays of one shape
            (e.g. (B,) counts under B bootstrap weightings).

    Returns:
        F1 of the same shape (a 0-d array for scalars).
    """
    return np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-12), 0.0)


def prf(pred, truth) -> dict[str, float]:
    """Precision, recall, F1 (2pr / (p + r)) and false-positive rate of boolean predictions.

    Args:
        pred, truth: bool arrays of one shape (numpy or torch).

    Returns:
        ``{"precision", "recall", "f1", "fpr"}`` floats, each 0.0 where its denominator is 0.
    """
    tp = float((pred & truth).sum())
    fp = float((pred & ~truth).sum())
    fn = float((~pred & truth).sum())
    tn = float((~pred & ~truth).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r) if p + r else 0.0,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
    }


def auroc(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes."""
    if not truth.any() or truth.all():
        return None
    order = np.argsort(scores, kind="mergesort")
    return float(_weighted_auroc(scores[order], truth[order], np.ones((1, len(scores))))[0])


def _weighted_auroc(s: np.ndarray, t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC (Mann-Whitney, a negative tied with a positive counts half) of scores ``s`` sorted ascending
    with their truth ``t``, under each row of weights ``w`` (B, n) given in that sorted order; NaN for a
    row that weighs no positive or no negative."""
    starts = np.r_[0, np.nonzero(s[1:] != s[:-1])[0] + 1]  # groups of equal scores
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(s)]))
    wn, wp = w * ~t, w * t
    neg_in_group = np.add.reduceat(wn, starts, axis=1)
    neg_below = np.cumsum(neg_in_group, axis=1) - neg_in_group  # strictly lower groups
    num = (wp * (neg_below[:, group] + 0.5 * neg_in_group[:, group])).sum(1)
    den = wp.sum(1) * wn.sum(1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_weights(n: int, draws: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """(draws, n) float64 multiplicities of n items (images) in each of ``draws`` seeded bootstrap resamples."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=draws).astype(np.float64)


def ci95(samples: np.ndarray, digits: int = 4) -> list[float]:
    """[2.5 %, 97.5 %] quantiles (linear interpolation) of bootstrap ``samples`` (B,), rounded to ``digits``."""
    lo, hi = np.quantile(samples, [0.025, 0.975])
    return [round(float(lo), digits), round(float(hi), digits)]


def auroc_interval(
    scores: np.ndarray, truth: np.ndarray, seed: int = 0, draws: int = BOOTSTRAP
) -> list[float] | None:
    """95 % bootstrap interval (over images) of the AUROC; None without both classes."""
    if not truth.any() or truth.all():
        return None
    order = np.argsort(scores, kind="mergesort")
    vals = _weighted_auroc(scores[order], truth[order], bootstrap_weights(len(scores), draws, seed))
    return ci95(vals[~np.isnan(vals)])

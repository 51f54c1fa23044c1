"""Step 2 of HINT: concept classifiers L_e(r) = σ(αᵀr + b) on per-position feature vectors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hint._utils.stats import prf
from hint.probes import probe_scores


@dataclass
class ClassifierFit:
    weight: torch.Tensor  # (D,) α in the raw feature space (zeros outside the neurons used)
    bias: float
    precision: float
    recall: float
    f1: float
    n_train: int
    n_test: int


def split_by_image(image: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int) -> torch.Tensor:
    """Boolean test mask: a seeded ``test_fraction`` of the images, all their regions together,
    stratified so that images with concept regions and images without are both held out."""
    gen = torch.Generator().manual_seed(seed)
    pos_ids = image[y > 0.5].unique()
    neg_ids = image[~torch.isin(image, pos_ids)].unique()
    test_ids = []
    for ids in (pos_ids, neg_ids):
        n_test = max(1, round(len(ids) * test_fraction)) if len(ids) > 1 else 0
        test_ids.append(ids[torch.randperm(len(ids), generator=gen)[:n_test]])
    return torch.isin(image, torch.cat(test_ids))


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor, l2: float = 1e-3, max_iter: int = 100
) -> tuple[torch.Tensor, float]:
    """Weighted L2 logistic regression on standardised inputs: minimises
    Σ w_i BCE(σ(xα + b), y_i) / Σ w_i + l2 |α_std|² by L-BFGS (strong Wolfe line search; the problem is
    convex, so the optimum does not depend on the solver). Returns (α, b) for the raw inputs."""
    x = x.float()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mu) / sd
    y = y.float()
    sw = (sample_weight.float() / sample_weight.sum()).to(x.device)
    w = torch.zeros(x.shape[1], device=x.device, requires_grad=True)
    b = torch.zeros((), device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure():
        opt.zero_grad()
        z = xs @ w + b
        loss = (sw * (torch.nn.functional.softplus(z) - y * z)).sum() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (w / sd).cpu(), float((b - (w * mu / sd).sum()).cpu())


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    image: torch.Tensor,
    neurons: torch.Tensor | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    l2: float = 1e-3,
    max_iter: int = 50,
    device: str | torch.device = "cpu",
    sample_weight: torch.Tensor | None = None,
    test: torch.Tensor | None = None,
) -> ClassifierFit:
    """L2 logistic regression (:func:`fit_logistic`), held-out region precision / recall / F1 at 0.5.

    ``sample_weight`` (n,) weighs the loss (the sample shares of :func:`hint.build.concepts.concept_samples`);
    without it positives and negatives weigh the same in total. ``test`` (n,) bool marks the held-out
    regions (default: a seeded ``test_fraction`` of the images, :func:`split_by_image`); ``test_fraction``
    0 trains on everything. ``neurons`` restricts the classifier to those input dimensions (the
    faithfulness test and the "(x%)" variants); the returned weight is still (D,), zero elsewhere.
    """
    d = x.shape[1]
    cols = torch.arange(d) if neurons is None else torch.as_tensor(neurons).long()
    if test is None:
        test = (
            split_by_image(image, y, test_fraction, seed)
            if test_fraction > 0
            else torch.zeros(len(y), dtype=torch.bool)
        )
    train = ~test
    yt = y[train]
    if yt.numel() == 0 or yt.min() == yt.max():
        raise ValueError("training data needs both positive and negative regions")
    if sample_weight is None:
        pos = yt > 0.5
        sw = torch.where(pos, 1.0 / pos.sum(), 1.0 / (~pos).sum())
    else:
        sw = sample_weight[train]
    w_raw, b_raw = fit_logistic(
        x[train][:, cols].to(device), yt.to(device), sw.to(device), l2=l2, max_iter=max_iter
    )
    weight = torch.zeros(d)
    weight[cols] = w_raw
    if test.any():
        pred = probe_scores(x[test], weight, b_raw) > 0.5
        q = prf(pred, y[test] > 0.5)
        p, r, f1 = q["precision"], q["recall"], q["f1"]
    else:
        p = r = f1 = float("nan")
    return ClassifierFit(weight, b_raw, p, r, f1, int(train.sum()), int(test.sum()))

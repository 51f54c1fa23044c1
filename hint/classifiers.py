"""Step 2 of HINT: concept classifiers L_e(r) = σ(αᵀr + b) on per-position feature vectors."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


def scores(weight: torch.Tensor, bias: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """σ(xα + b) for x (..., D)."""
    return torch.sigmoid(x.float() @ weight.float() + bias)


def prf(pred: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    tp = float((pred & (y > 0.5)).sum())
    p = tp / max(float(pred.sum()), 1.0)
    r = tp / max(float((y > 0.5).sum()), 1.0)
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    image: torch.Tensor,
    neurons: torch.Tensor | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    l2: float = 1e-3,
    max_iter: int = 200,
    device: str | torch.device = "cpu",
) -> ClassifierFit:
    """Class-balanced L2 logistic regression (L-BFGS on standardised inputs), held-out metrics.

    ``neurons`` restricts the classifier to those input dimensions (the faithfulness test and the
    "(x%)" variants); the returned weight is still (D,), zero elsewhere.
    """
    d = x.shape[1]
    cols = torch.arange(d) if neurons is None else torch.as_tensor(neurons).long()
    test = split_by_image(image, y, test_fraction, seed)
    xt, yt = x[~test][:, cols].to(device).float(), y[~test].to(device).float()
    if yt.numel() == 0 or yt.min() == yt.max():
        raise ValueError("training data needs both positive and negative regions")
    mu, sd = xt.mean(0), xt.std(0).clamp_min(1e-6)
    xs = (xt - mu) / sd
    n_pos = yt.sum()
    pos_weight = (len(yt) - n_pos) / n_pos
    torch.manual_seed(seed)
    w = torch.zeros(len(cols), device=device, requires_grad=True)
    b = torch.zeros((), device=device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def closure():
        opt.zero_grad()
        loss = loss_fn(xs @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        w_raw = (w / sd).cpu()
        b_raw = float((b - (w * mu / sd).sum()).cpu())
    weight = torch.zeros(d)
    weight[cols] = w_raw
    if test.any():
        pred = scores(weight, b_raw, x[test]) > 0.5
        p, r, f1 = prf(pred, y[test])
    else:
        p = r = f1 = float("nan")
    return ClassifierFit(weight, b_raw, p, r, f1, int((~test).sum()), int(test.sum()))

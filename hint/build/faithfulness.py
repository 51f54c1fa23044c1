"""The paper's faithfulness test: retrain each concept classifier on its top-k neurons chosen by
Shapley value, by |α| (classifier weight magnitude), or at random, and compare held-out F1."""

from __future__ import annotations

import torch

from hint.build.classifiers import ClassifierFit, train_classifier
from hint.build.concepts import ConceptSamples


def select_neurons(
    rule: str, k: int, phi: torch.Tensor, weight: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Indices of k neurons for one concept: ``shapley`` (largest φ), ``weight`` (largest |α|), ``random``."""
    d = phi.numel()
    k = min(k, d)
    if rule == "shapley":
        return phi.topk(k).indices
    if rule == "weight":
        return weight.abs().topk(k).indices
    if rule == "random":
        return torch.randperm(d, generator=gen)[:k]
    raise ValueError(f"unknown selection rule {rule!r}")


def top_k_f1(
    sets: list[ConceptSamples],
    phi: torch.Tensor,
    weight: torch.Tensor,
    k: int = 20,
    draws: int = 5,
    seed: int = 0,
    **train_kw,
) -> dict[str, list[float]]:
    """Per concept held-out F1 of classifiers on k neurons: ``{"shapley": [...], "weight": [...],
    "random": [...] (mean over draws), "random_std": [...], "all": [...]}``."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list[float]] = {"shapley": [], "weight": [], "random": [], "random_std": [], "all": []}
    for e, s in enumerate(sets):

        def fit(neurons: torch.Tensor | None, s: ConceptSamples = s) -> ClassifierFit:
            return train_classifier(
                s.x, s.y, s.image, neurons=neurons, seed=seed, sample_weight=s.weight, **train_kw
            )

        out["all"].append(fit(None).f1)
        for rule in ("shapley", "weight"):
            out[rule].append(fit(select_neurons(rule, k, phi[e], weight[e], gen)).f1)
        rand = torch.tensor(
            [fit(select_neurons("random", k, phi[e], weight[e], gen)).f1 for _ in range(draws)]
        )
        out["random"].append(float(rand.mean()))
        out["random_std"].append(float(rand.std()) if draws > 1 else 0.0)
    return out

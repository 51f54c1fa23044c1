"""Image-level concept presence as served: pooled probe scores and the presence rule.

A concept probe L_e(r) = σ(αᵀr + b) scores every position r of the hooked layer (the concept map).
Its **image score** is the mean of the map's ``k`` largest values (``k`` = :data:`POOL_FRACTION` of the
positions, at least 1): a concept present anywhere in the image lifts it, one noisy position does not.
``present`` is the bank's rule (:func:`apply_rule`, fit at build time by :func:`hint.build.presence.fit_rule`)
on the model's summed softmax and that score.
"""

from __future__ import annotations

import torch

from hint.probes import probe_scores

#: share of a map's positions averaged into the image score (top 5 %: 10 of 14×14, 2 of 7×7)
POOL_FRACTION = 0.05


def pool_size(positions: int) -> int:
    """How many of a map's ``positions`` the image score averages."""
    return max(1, round(POOL_FRACTION * positions))


def pool(maps: torch.Tensor) -> torch.Tensor:
    """Image scores (..., E) from concept maps (..., E, h, w): mean of the top :func:`pool_size` values."""
    flat = maps.flatten(-2)
    return flat.topk(pool_size(flat.shape[-1]), dim=-1).values.mean(-1)


def image_scores(
    features: torch.Tensor, positions: int, weight: torch.Tensor, bias: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """Pooled scores (I, E) of images whose ``positions`` feature rows lie one after another in
    ``features`` (P, D), for probes ``weight`` (E, D), ``bias`` (E,)."""
    n = features.shape[0] // positions
    out = torch.empty(n, weight.shape[0])
    for i in range(0, n, chunk):
        x = features[i * positions : min(n, i + chunk) * positions]
        maps = probe_scores(x, weight, bias.float()).view(-1, positions, weight.shape[0]).transpose(1, 2)
        out[i : i + chunk] = maps.topk(pool_size(positions), dim=-1).values.mean(-1)
    return out


def rule_features(model_probability: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """(..., 2) inputs of the served rule: logit of the model's summed softmax and of the probe's score."""
    p = model_probability.double().clamp(1e-6, 1 - 1e-6)
    s = score.double().clamp(1e-6, 1 - 1e-6)
    return torch.stack([torch.logit(p), torch.logit(s)], -1)


def apply_rule(rule: dict, model_probability: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Bool (..., E): the fitted rule (:func:`fit_rule`) on the model's summed softmax and the probe's score."""
    coef = torch.tensor(rule["coef"], dtype=torch.float64)
    return rule_features(model_probability, score) @ coef + float(rule["intercept"]) >= float(
        rule.get("cut", 0.0)
    )

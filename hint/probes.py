"""Concept probes L_e(r) = σ(αᵀr + b): the scores of feature vectors and the maps over a layer's positions.

Every place that evaluates a probe calls one of these, so the bank, the head, the build's held-out tests
and the evaluations compute the same numbers with the same operations.
"""

from __future__ import annotations

import torch


def probe_scores(x: torch.Tensor, weight: torch.Tensor, bias: float | torch.Tensor) -> torch.Tensor:
    """σ(xαᵀ + b) of feature rows x (..., D) (taken as float32).

    Args:
        x: (..., D) feature vectors.
        weight: one probe's α (D,), or E probes' (E, D).
        bias: b: a float or () tensor for one probe, (E,) for E probes.

    Returns:
        (...) scores for one probe, (..., E) for E probes.
    """
    w = weight.float()
    return torch.sigmoid(x.float() @ (w.T if w.dim() == 2 else w) + bias)


def probe_maps(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Concept maps σ(αᵀz + b) of E probes at every position of activations z.

    Args:
        z: (N, D, h, w) float activations.
        weight: (E, D) probes' α (moved to z's device).
        bias: (E,) probes' b.

    Returns:
        (N, E, h, w) maps.
    """
    return torch.sigmoid(
        torch.einsum("ndhw,ed->nehw", z, weight.to(z.device)) + bias.to(z.device).view(1, -1, 1, 1)
    )


def probe_map(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One map σ(αᵀz + b) per image: the same probe for every image, or a probe of its own for each.

    Args:
        z: (N, D, h, w) float activations.
        weight: (D,) one probe for all images, or (N, D) one per image.
        bias: () or (N,) likewise.

    Returns:
        (N, h, w) maps.
    """
    if weight.dim() == 1:
        return torch.sigmoid(torch.einsum("ndhw,d->nhw", z, weight) + bias)
    return torch.sigmoid(torch.einsum("ndhw,nd->nhw", z, weight) + bias.view(-1, 1, 1))

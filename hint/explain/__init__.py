"""Explaining one image with a bank: predictions, concept presence down the hierarchy, maps and boxes,
this image's neurons, ablation through the network, the reverse query (neuron → concepts)."""

from hint.explain.explainer import SERVING, Explainer

__all__ = ["SERVING", "Explainer"]

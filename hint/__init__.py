"""HINT: Hierarchical Neuron Concept Explainer (Wang, Lee & Qi, CVPR 2022)."""

__version__ = "0.1.0"

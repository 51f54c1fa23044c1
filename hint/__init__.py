"""HINT: Hierarchical Neuron Concept Explainer (Wang, Lee & Qi, CVPR 2022).

The public API::

    from hint import BuildConfig, ConceptBank, Explainer, Hierarchy, build_bank

Packages by role: the top level is the core (:mod:`hint.hierarchy`, :mod:`hint.bank`, :mod:`hint.backbones`,
:mod:`hint.probes` and the request-time steps :mod:`hint.regions`, :mod:`hint.shapley`, :mod:`hint.head`,
:mod:`hint.boxes`, :mod:`hint.presence`); :mod:`hint.build` makes banks, :mod:`hint.explain` answers
questions about one image, :mod:`hint.serve` is the wire side of the TorchServe handler and
:mod:`hint.evaluation` measures all of it. Names are imported on first use, so ``import hint`` (and
serving) loads no build or evaluation code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["BuildConfig", "ConceptBank", "Explainer", "Hierarchy", "build_bank", "__version__"]

_HOMES = {
    "BuildConfig": "hint.build.config",
    "ConceptBank": "hint.bank",
    "Explainer": "hint.explain.explainer",
    "Hierarchy": "hint.hierarchy",
    "build_bank": "hint.build.builder",
}

if TYPE_CHECKING:
    from hint.bank import ConceptBank
    from hint.build.builder import build_bank
    from hint.build.config import BuildConfig
    from hint.explain.explainer import Explainer
    from hint.hierarchy import Hierarchy


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'hint' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

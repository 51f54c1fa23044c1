"""Making a concept bank: responsible regions (step 1, :mod:`hint.regions`), concept classifiers (step 2),
neuron Shapley values (step 3, :mod:`hint.shapley`), calibration, the presence rule and the localisation
head. :func:`build_bank` runs it all."""

from hint.build.builder import build_bank
from hint.build.config import BuildConfig

__all__ = ["BuildConfig", "build_bank"]

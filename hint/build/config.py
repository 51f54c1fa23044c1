"""The settings of a bank build, declared once: :class:`BuildConfig`.

Each field carries its default, its help text and (where it has them) its choices
(:func:`hint._utils.options.option`); ``python -m offline build`` makes its flags from them (:func:`hint._utils.options.add_arguments`) and code
that rereads a bank's settings gets them from its manifest with :meth:`BuildConfig.from_manifest`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from hint._utils.options import option
from hint.regions import METHODS


@dataclass
class BuildConfig:
    """The steps' settings of one build (:func:`hint.build.builder.build_bank`), recorded in the bank's
    manifest under ``build``."""

    method: str = option(
        "guided", "step 1: the responsible-region method (hint.regions)", choices=sorted(METHODS)
    )
    threshold: float = option(0.5, "step 1: the attribution threshold of a responsible region (hint.regions)")
    quantile: float = option(
        0.99, "step 1: the attribution quantile the threshold is relative to (hint.regions)"
    )
    batch_size: int = option(32, "images per forward pass")
    max_positives: int = option(2000, "step 2: positive regions per concept at most (hint.build.concepts)")
    test_fraction: float = option(0.2, "the faithfulness test's held-out images")
    folds: int = option(
        5, "cross-validation folds (held-out F1, thresholds)", absent=0
    )  # banks before the cross-validation held out test_fraction of the images
    min_images: int = option(3, "data-sufficiency rule: images under a concept")
    min_regions: int = option(24, "data-sufficiency rule: responsible regions")
    l2: float = option(1e-3, "probe weight decay on standardised features")
    baseline: str = option(
        "auto",
        "value of removed neurons in step 3: zero, the channel mean, or auto (zero "
        "after a ReLU, else the mean)",
        choices=["auto", "zero", "mean"],
    )
    permutations: int = option(256, "Shapley permutations M")
    shapley_regions: int = option(512, "step 3: regions per concept at most (r_E ∪ r_b*)")
    top_k: int = option(20, "step 3: the top-k neurons whose stability --patience watches")
    patience: int = option(0, "stop Shapley when the top-k is stable this many chunks")
    seed: int = option(0, "seed of every draw")
    device: str = option(
        "cpu", "where the steps run (auto: CUDA when there is a GPU)", choices=["auto", "cpu", "cuda"]
    )
    amp: bool = option(False, "step 1 in mixed precision (on CUDA)")
    workers: int = option(2, "image-loading processes")
    per_class: int = option(
        8, "step-1 reservoir: images kept per class (memory bound, hint.build.reservoir)", absent=1_000_000
    )  # banks before the step-1 reservoirs kept every image
    checkpoint_every: int = option(2000, "step-1 checkpoint interval (images)")
    faithfulness_k: int = option(20, "neurons kept in the faithfulness test (0: skip it)")
    faithfulness_draws: int = option(5, "random neuron draws in the faithfulness test")
    exemplars: int = option(
        9,
        "every neuron's top-K image patches and its label, kept in step 1's pass "
        "(hint.build.exemplars; 0: none)",
        metavar="K",
        absent=0,
    )  # banks before exemplars had none

    def params(self, *names: str) -> dict:
        """``{name: value}`` of the named fields."""
        d = asdict(self)
        return {k: d[k] for k in names}

    @classmethod
    def from_manifest(cls, source: Any, **changes: Any) -> BuildConfig:
        """The settings a bank was built with.

        Args:
            source: a :class:`~hint.bank.ConceptBank`, or a manifest (dict with ``build``).
            changes: fields to set instead (e.g. this run's ``batch_size`` or ``device``).

        Returns:
            The config; a field the manifest lacks takes its default, or the value that banks built before
            it existed imply (its metadata ``absent``, e.g. ``per_class``).
        """
        meta = getattr(source, "meta", source)
        built = meta.get("build") or {}
        kept = {}
        for f in fields(cls):
            if f.name in built:
                kept[f.name] = built[f.name]
            elif "absent" in f.metadata:
                kept[f.name] = f.metadata["absent"]
        return replace(cls(**kept), **changes)

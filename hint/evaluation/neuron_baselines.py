"""Per-image channel attributions at the bank layer from maintained libraries (the baselines of
``python -m offline evaluate-neurons``).

Each method gives one value per neuron (channel) of the bank layer for one image and one target:

* ``concept``: concept e's probe logit summed over e's region R (the clean image's cells of e's map
  >= 0.5 × its maximum), Σ_{r∈R} (αᵀz(r) + b), a 1×1 convolution on the bank layer's output;
* ``class``: the model's logit of its predicted class.

Methods (the libraries' own classes on :class:`ProbeOutput`, which appends the concept target to the
model's 1000 logits): Captum's ``LayerGradientXActivation`` and ``LayerIntegratedGradients`` (input
baseline: an all-zero input, the mean grey image after the backbone's normalisation; ``n_steps``
Gauss-Legendre steps), and zennit-crp's ``CondAttribution`` with zennit's ``EpsilonPlusFlat`` composite
(relevance initialised to 1 at the target, recorded at the bank layer). A channel's value is its
attribution summed over all positions of the map (for the concept target the gradient is zero outside R,
so this is the sum over R).
"""

from __future__ import annotations

import time

import torch
from torch import nn

#: method name -> label in the docs
METHODS = {
    "gxa": "Captum LayerGradientXActivation",
    "ig": "Captum LayerIntegratedGradients",
    "crp": "zennit-crp CondAttribution (EpsilonPlusFlat)",
}
TARGETS = ("concept", "class")
IG_STEPS = 16  # Integrated Gradients steps (Gauss-Legendre), the docs' run


def clock() -> tuple[float, float]:
    """(wall, process CPU) seconds now; :func:`since` gives the time spent from such a start."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    """(wall, process CPU) seconds since ``start`` (:func:`clock`). With one torch thread the CPU time is
    the work itself, whatever else the machine runs; wall time also counts waiting for a core."""
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


class ProbeOutput(nn.Module):
    """The backbone's logits (N, C) with one more column: concept e's probe logit summed over region R.

    Args:
        model: the backbone's network.
        layer: its bank-layer module (the probe reads its output, as it is after other forward hooks,
            so Captum's interpolating hook is seen).
        weight: e's probe weights α (D,); bias: b (scalar).
        mask: R as a bool (h, w) map of the bank layer.
        classes: C, the model's logits (the concept target is column C).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module,
        weight: torch.Tensor,
        bias: float,
        mask: torch.Tensor,
        classes: int,
    ):
        super().__init__()
        self.model, self._layer, self.concept_index = model, layer, int(classes)
        self.probe = nn.Conv2d(weight.numel(), 1, 1)
        with torch.no_grad():
            self.probe.weight.copy_(weight.detach().float().view(1, -1, 1, 1))
            self.probe.bias.fill_(float(bias))
        self.probe.requires_grad_(False)
        self.register_buffer("mask", mask.detach().float().view(1, 1, *mask.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C + 1): the model's logits, then Σ_{r∈R} (αᵀz(r) + b)."""
        seen: dict[str, torch.Tensor] = {}
        handle = self._layer.register_forward_hook(lambda _m, _i, o: seen.__setitem__("z", o))
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        concept = (self.probe(seen["z"]) * self.mask).sum((1, 2, 3))
        return torch.cat([logits, concept[:, None]], 1)


def layer_name(wrapper: ProbeOutput) -> str:
    """The bank layer's module name inside ``wrapper`` (zennit-crp records layers by name)."""
    return next(n for n, m in wrapper.named_modules() if m is wrapper._layer)


def channel_attributions(
    wrapper: ProbeOutput, x: torch.Tensor, cls: int, ig_steps: int = IG_STEPS
) -> tuple[dict, dict]:
    """Every method × target on one image.

    Args:
        wrapper: :class:`ProbeOutput` for the image's concept and region.
        x: the preprocessed image (1, 3, H, W).
        cls: the predicted class (the ``class`` target).
        ig_steps: Integrated Gradients steps.

    Returns:
        (values {"<method>_<target>": (D,) tensor}, seconds {"<method>_<target>": (wall, process CPU)
        seconds of that call}).
    """
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients
    from crp.attribution import CondAttribution
    from zennit.composites import EpsilonPlusFlat

    layer = wrapper._layer
    targets = {"concept": wrapper.concept_index, "class": int(cls)}
    gxa, ig = LayerGradientXActivation(wrapper, layer), LayerIntegratedGradients(wrapper, layer)
    crp, name = CondAttribution(wrapper, no_param_grad=True), layer_name(wrapper)
    values, seconds = {}, {}
    for target, t in targets.items():
        for method in METHODS:
            start = clock()
            with torch.enable_grad():
                if method == "gxa":
                    a = gxa.attribute(x, target=t)
                elif method == "ig":
                    a = ig.attribute(
                        x,
                        baselines=torch.zeros_like(x),
                        target=t,
                        n_steps=ig_steps,
                        internal_batch_size=ig_steps,
                    )
                else:
                    res = crp(
                        x.detach().clone().requires_grad_(True),
                        [{"y": [t]}],
                        EpsilonPlusFlat(),
                        record_layer=[name],
                        init_rel=torch.ones_like,
                    )
                    a = res.relevances[name]
            seconds[f"{method}_{target}"] = since(start)
            values[f"{method}_{target}"] = a.detach()[0].float().sum((1, 2))
    return values, seconds

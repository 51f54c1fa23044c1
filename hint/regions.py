"""Step 1 of HINT: responsible regions of a concept in a hidden layer's feature map.

Each attribution method (Captum style: one class per method, one verb ``attribute``) returns the
layer's activations z (N, C, H, W) and an attribution of the ground-truth logit to z of the same
shape. The saliency of a position is the L2 norm of its attribution over channels; normalised by
the image's minimum and 99th percentile, positions above a threshold (0.5) are the responsible
regions, the rest background.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


class _GuidedClamp(torch.autograd.Function):
    """clamp(x, lo, hi) whose backward passes only positive gradients where the input was in range."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        keep = x > ctx.lo
        if ctx.hi is not None:
            keep &= x < ctx.hi
        return grad.clamp_min(0) * keep, None, None


class GuidedReLUs(TorchFunctionMode):
    """Within this mode every ReLU/ReLU6 (module or functional) backpropagates guided gradients."""

    _relu = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._relu:
            return _GuidedClamp.apply(args[0], 0.0, None)
        if func in (F.relu6, F.hardtanh):
            lo = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
            hi = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
            if func is F.relu6:
                lo, hi = 0.0, 6.0
            if lo == 0.0:
                return _GuidedClamp.apply(args[0], lo, hi)
        return func(*args, **kwargs)


class LayerAttribution:
    """Base: capture a layer's output z with one persistent hook and differentiate logits w.r.t. z."""

    needs_guided = False

    def __init__(self, model: nn.Module, layer: nn.Module):
        self.model = model
        self.layer = layer
        self._replace: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._z: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None  # of the last forward pass
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self._z = output.detach()
        if self._replace is not None:
            return self._replace(self._z)
        return None

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def _mode(self) -> Iterator[None]:
        with GuidedReLUs() if self.needs_guided else contextlib.nullcontext():
            yield

    def _grad(
        self, x: torch.Tensor, target: torch.Tensor, scale: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, d logit_target / d z) for one forward pass with z replaced by ``scale``·z."""
        leaf: dict[str, torch.Tensor] = {}

        def replace(z: torch.Tensor) -> torch.Tensor:
            leaf["z"] = (z.float() * scale).requires_grad_(True)
            return leaf["z"].to(z.dtype)

        self._replace = replace
        try:
            with torch.enable_grad(), self._mode():
                logits = self.model(x)
                if scale == 1.0:
                    self.logits = logits.detach()
                picked = logits.float().gather(1, target.view(-1, 1)).sum()
                (grad,) = torch.autograd.grad(picked, leaf["z"])
        finally:
            self._replace = None
        return self._z.float(), grad

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, z) without gradients."""
        with torch.no_grad():
            self.logits = self.model(x)
        return self.logits, self._z

    def attribute(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class VanillaGradient(LayerAttribution):
    """Plain gradient of the target logit w.r.t. the layer."""

    def attribute(self, x, target):
        return self._grad(x, target)


class GuidedBackprop(VanillaGradient):
    """Guided backpropagation (Springenberg et al.): ReLUs above the layer pass positive gradients only."""

    needs_guided = True


class GradientXInput(LayerAttribution):
    """Gradient times the layer's activation."""

    def attribute(self, x, target):
        z, g = self._grad(x, target)
        return z, g * z


class SmoothGrad(LayerAttribution):
    """Mean layer gradient over noisy copies of the input image (Smilkov et al.)."""

    def __init__(self, model, layer, n_samples: int = 8, stdev: float = 0.15, seed: int = 0):
        super().__init__(model, layer)
        self.n_samples, self.stdev, self.seed = n_samples, stdev, seed

    def attribute(self, x, target):
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        _, z = self.forward(x)
        total = torch.zeros_like(z, dtype=torch.float32)
        sigma = self.stdev * (x.amax(dim=(1, 2, 3), keepdim=True) - x.amin(dim=(1, 2, 3), keepdim=True))
        for _ in range(self.n_samples):
            noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * sigma
            total += self._grad(x + noise, target)[1]
        self.forward(x)  # logits of the clean image
        return z.float(), total / self.n_samples


class IntegratedGradients(LayerAttribution):
    """Layer integrated gradients from a zero layer baseline (Sundararajan et al.), Riemann midpoints."""

    def __init__(self, model, layer, steps: int = 16):
        super().__init__(model, layer)
        self.steps = steps

    def attribute(self, x, target):
        total = None
        for k in range(self.steps):
            z, g = self._grad(x, target, scale=(k + 0.5) / self.steps)
            total = g if total is None else total + g
        self.forward(x)
        return z, z * total / self.steps


METHODS: dict[str, type[LayerAttribution]] = {
    "guided": GuidedBackprop,
    "gradient": VanillaGradient,
    "smoothgrad": SmoothGrad,
    "integrated": IntegratedGradients,
    "gradxinput": GradientXInput,
}


def saliency(attribution: torch.Tensor) -> torch.Tensor:
    """L2 norm over channels: (N, C, H, W) → (N, H, W)."""
    return attribution.float().norm(dim=1)


def normalise(sal: torch.Tensor, quantile: float = 0.99) -> torch.Tensor:
    """Per map: (s − min) / (q-th quantile − min), clipped to [0, 1]."""
    flat = sal.flatten(1)
    lo = flat.amin(1, keepdim=True)
    hi = flat.quantile(quantile, dim=1, keepdim=True)
    out = ((flat - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    return out.view_as(sal)


def responsible_regions(
    attribution: torch.Tensor, threshold: float = 0.5, quantile: float = 0.99
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised saliency (N, H, W), boolean region mask (N, H, W)); background = ~mask."""
    sal = normalise(saliency(attribution), quantile)
    return sal, sal > threshold

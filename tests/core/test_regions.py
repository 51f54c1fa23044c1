"""Step 1: attribution methods, guided backprop, saliency normalisation, persistent hooks."""

import pytest
import torch
from torch import nn

from hint.regions import METHODS, GuidedBackprop, VanillaGradient, normalise, responsible_regions, saliency


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.layer = nn.Conv2d(4, 6, 3, padding=1)
        self.tail = nn.Sequential(
            nn.ReLU6(), nn.Conv2d(6, 5, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)
        )

    def forward(self, x):
        return self.tail(self.layer(self.head(x)))


def test_vanilla_gradient_matches_autograd():
    m = Tiny().eval()
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([0, 2])
    z = m.layer(m.head(x)).detach().requires_grad_(True)
    m.tail(z).gather(1, t[:, None]).sum().backward()
    with VanillaGradient(m, m.layer) as a:
        z2, g = a.attribute(x, t)
    torch.testing.assert_close(z2, z.detach())
    torch.testing.assert_close(g, z.grad)


def test_guided_backprop_passes_positive_gradients_only():
    m = Tiny().eval()
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([1, 1])
    with GuidedBackprop(m, m.layer) as a:
        _, g = a.attribute(x, t)
    with VanillaGradient(m, m.layer) as a:
        _, v = a.attribute(x, t)
    assert not torch.allclose(g, v)
    # the last op before z in guided mode is a guided ReLU6: gradient where z was outside (0, 6) is 0
    z = m.layer(m.head(x))
    outside = (z <= 0) | (z >= 6)
    assert (g[outside] == 0).all()
    assert (g >= 0).all()  # ReLU6 directly after the layer clamps negative gradients


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_shapes_and_no_hook_pileup(name):
    m = Tiny().eval()
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([0, 1, 2])
    with METHODS[name](m, m.layer) as a:
        for _ in range(3):
            z, attr = a.attribute(x, t)
        assert len(m.layer._forward_hooks) == 1
        assert a.logits.shape == (3, 3)
    assert len(m.layer._forward_hooks) == 0
    assert z.shape == attr.shape == (3, 6, 8, 8)
    assert torch.isfinite(attr).all()


def test_saliency_normalise_threshold():
    attr = torch.zeros(1, 2, 10, 10)
    attr[0, 0, :5, :5] = 3.0
    attr[0, 1, :5, :5] = 4.0  # L2 norm 5 on the top-left quarter
    attr[0, 0, 9, 9] = 1.0
    sal = saliency(attr)
    assert sal[0, 0, 0] == 5.0
    norm = normalise(sal)
    assert norm.min() == 0 and norm.max() == 1
    _, mask = responsible_regions(attr, threshold=0.5)
    assert mask[0, :5, :5].all() and mask.sum() == 25
    _, mask = responsible_regions(attr, threshold=0.1)
    assert mask.sum() == 26  # 1/5 = 0.2 passes 0.1

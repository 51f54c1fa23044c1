"""The HINT Shapley estimator against exact values, the efficiency axiom and Captum."""

import pytest
import torch

from hint.shapley import NeuronShapley


def _game(d=5, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g) * 1.5
    b = float(torch.randn(1, generator=g))
    regions = torch.rand(n, d, generator=g) * 2
    return NeuronShapley(w, b), regions, w, b


def test_efficiency_per_region():
    est, regions, w, b = _game()
    res = est.attribute(regions, n_permutations=8)
    full = torch.sigmoid(regions @ w + b)
    empty = torch.sigmoid(torch.tensor(b))
    torch.testing.assert_close(res.signed.sum(1), full - empty, atol=1e-5, rtol=1e-5)


def test_estimate_matches_exact_within_stderr():
    est, regions, _, _ = _game(d=6, n=60, seed=1)
    exact = est.exact(regions)
    assert exact.n_permutations == 720
    res = est.attribute(regions, n_permutations=400, seed=3)
    err = (res.values - exact.values).abs()
    assert (err <= 4 * res.stderr + 1e-6).all(), (err, res.stderr)
    assert (res.stderr > 0).all()
    # more permutations, smaller error bars
    assert (est.attribute(regions, n_permutations=1600, seed=3).stderr < res.stderr).all()


def test_seeded_and_baseline():
    est, regions, w, b = _game()
    a = est.attribute(regions, n_permutations=32, seed=7).values
    torch.testing.assert_close(a, est.attribute(regions, n_permutations=32, seed=7).values)
    # a neuron always at its baseline contributes nothing
    base = regions.mean(0)
    regions2 = regions.clone()
    regions2[:, 2] = base[2]
    res = NeuronShapley(w, b, baseline=base).attribute(regions2, n_permutations=16)
    assert res.values[2].item() == pytest.approx(0.0, abs=1e-7)


def test_zero_weight_neuron_is_null_and_ranking():
    w = torch.tensor([3.0, 0.0, 0.5, -2.0])
    regions = torch.ones(10, 4)
    res = NeuronShapley(w, -1.0).attribute(regions, n_permutations=64)
    assert res.values[1] == 0
    assert res.values.argsort(descending=True)[:2].tolist() == [0, 3]


def test_early_stop_by_topk_stability():
    est, regions, _, _ = _game(d=8)
    res = est.attribute(regions, n_permutations=4096, chunk=8, top_k=3, patience=4, min_permutations=32)
    assert 32 <= res.n_permutations < 4096


def test_bad_shapes():
    est, regions, _, _ = _game()
    with pytest.raises(ValueError, match="regions must be"):
        est.attribute(regions[:, :3])
    with pytest.raises(ValueError, match="no regions"):
        est.attribute(regions[:0])


def test_matches_captum_shapley_value_sampling():
    captum = pytest.importorskip("captum.attr")
    est, regions, w, b = _game(d=6, n=30, seed=2)

    def forward(x):
        return torch.sigmoid(x @ w + b)

    svs = captum.ShapleyValueSampling(forward)
    attr = svs.attribute(regions, baselines=torch.zeros(1, 6), n_samples=300)
    captum_phi = attr.abs().mean(0)
    exact = est.exact(regions).values
    ours = est.attribute(regions, n_permutations=300, seed=0)
    torch.testing.assert_close(captum_phi.float(), exact, atol=0.01, rtol=0.05)
    assert (ours.values - captum_phi).abs().max() < 0.01

"""Per-image Shapley values (hint.explain.neurons): the served probe-logit game's closed form against
coalition enumeration and permutation sampling, the probability game's estimator on several concepts at
once, the efficiency axiom per position, exact enumeration on a small D, ranks, and the ablation hook's edit."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from hint.explain.neurons import ChannelEdit, RowsShapley, image_logit_shapley, image_shapley, rank_of, ranks
from hint.shapley import NeuronShapley

BANK = Path(__file__).resolve().parents[2] / "model_store" / "hint-bank"


def _probes(e=3, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(e, d, generator=g) * 1.5, torch.randn(e, generator=g), torch.rand(d, generator=g)


def test_rows_of_one_concept_equal_neuron_shapley():
    """Same game, same permutation draws, same arithmetic: the bank's NeuronShapley, row for row."""
    w, b, base = _probes(e=3, d=40)
    regions = torch.rand(30, 40, generator=torch.Generator().manual_seed(1)) * 2
    owner = torch.tensor([0] * 10 + [1] * 12 + [2] * 8)
    for m in (1, 16, 100):  # 100: two chunks of permutation draws
        ours = RowsShapley(w, b, base, owner).signed_values(regions, m, seed=3)
        for e in range(3):
            bank = NeuronShapley(w[e], b[e], base).attribute(regions[owner == e], m, seed=3)
            torch.testing.assert_close(ours[owner == e], bank.signed, atol=1e-7, rtol=0)
            torch.testing.assert_close(ours[owner == e].abs().mean(0), bank.values, atol=1e-7, rtol=0)
    torch.testing.assert_close(
        RowsShapley(w, b, base, owner).attribute(regions, 16, seed=3).signed,
        RowsShapley(w, b, base, owner).signed_values(regions, 16, seed=3),
        atol=1e-7,
        rtol=0,
    )


def test_efficiency_per_position_whatever_m():
    w, b, base = _probes(e=2, d=50, seed=2)
    regions = torch.rand(20, 50, generator=torch.Generator().manual_seed(3)) * 2
    owner = torch.tensor([0] * 7 + [1] * 13)
    full = torch.sigmoid((regions * w[owner]).sum(1) + b[owner])
    empty = torch.sigmoid((base * w[owner]).sum(1) + b[owner])
    for m in (1, 3, 64):
        signed = RowsShapley(w, b, base, owner).signed_values(regions, m, seed=m)
        torch.testing.assert_close(signed.sum(1), full - empty, atol=2e-6, rtol=0)


def test_image_shapley_matches_exact_enumeration():
    """D = 6: all 720 permutations (NeuronShapley.exact) vs the sampled estimate, per concept."""
    w, b, base = _probes(e=2, d=6, seed=4)
    z = torch.rand(6, 3, 3, generator=torch.Generator().manual_seed(5)) * 2
    masks = torch.zeros(2, 9, dtype=torch.bool)
    masks[0, [0, 1, 4]] = True
    masks[1, 2:] = True
    m = 2000
    signed, absolute = image_shapley(z, masks, w, b, base, n_permutations=m, seed=0)
    cells = z.reshape(6, 9).T
    every = torch.tensor(list(itertools.permutations(range(6))))
    for e in range(2):
        est = NeuronShapley(w[e], b[e], base)
        exact = est.exact(cells[masks[e]])
        assert exact.n_permutations == 720
        # Monte-Carlo standard error of a per-cell mean over m permutations, from the exact marginals
        se = (est._marginals(*est._terms(cells[masks[e]]), every).std(0) / m**0.5).mean(0)
        assert ((signed[e] - exact.signed.mean(0)).abs() <= 4 * se + 1e-6).all(), (
            signed[e],
            exact.signed.mean(0),
            se,
        )
        assert ((absolute[e] - exact.values).abs() <= 4 * se + 1e-6).all(), (absolute[e], exact.values, se)
        assert (se < 0.01).all()
    # and the exact values obey efficiency per region
    exact = NeuronShapley(w[1], b[1], base).exact(cells[masks[1]])
    gain = torch.sigmoid(cells[masks[1]] @ w[1] + b[1]) - torch.sigmoid(base @ w[1] + b[1])
    torch.testing.assert_close(exact.signed.sum(1), gain, atol=1e-6, rtol=0)


def test_image_shapley_on_the_bank_sums_to_the_probe_gain():
    """On the committed bank and a real photo: per concept, the signed values add up to the mean over
    its region of L(all) - L(none), and a neuron at its baseline everywhere gets nothing."""
    from PIL import Image
    from skimage import data

    from hint.explain.explainer import Explainer

    ex = Explainer.from_bank(BANK)
    probs, maps, z = ex.forward([Image.fromarray(data.chelsea())])
    rows = [ex.bank.index(ex.h.find(n).wnid) for n in ("mammal", "feline", "animal")]
    m = maps[0, rows].flatten(1)
    masks = m >= 0.5 * m.max(1, keepdim=True).values
    zz = z[0].clone()
    zz[7] = ex.baseline[7]
    signed, absolute = image_shapley(zz, masks, ex.weight[rows], ex.bias[rows], ex.baseline, 16, seed=0)
    cells = zz.reshape(zz.shape[0], -1).T
    for k, r in enumerate(rows):
        full = torch.sigmoid(cells[masks[k]] @ ex.weight[r] + ex.bias[r])
        none = torch.sigmoid(ex.baseline @ ex.weight[r] + ex.bias[r])
        assert float(signed[k].sum()) == pytest.approx(float((full - none).mean()), abs=1e-5)
        assert signed[k, 7] == 0 and absolute[k, 7] == 0
        assert (absolute[k] >= signed[k].abs() - 1e-7).all()
    with pytest.raises(ValueError, match="at least one region cell"):
        image_shapley(zz, torch.zeros(1, 49, dtype=torch.bool), ex.weight[:1], ex.bias[:1], ex.baseline)


def _logit_game(z, mask, w, b, base):
    """v(S) = mean over the region of the probe logit with the neurons outside S at the baseline: the
    served game, played coalition by coalition (no use of its additivity)."""
    cells = z.reshape(z.shape[0], -1).T[mask]  # (N, D)

    def v(coalition) -> float:
        keep = torch.zeros(z.shape[0], dtype=torch.bool)
        keep[list(coalition)] = True
        return float((torch.where(keep, cells, base) @ w + b).mean())

    return v


def test_logit_game_closed_form_is_its_shapley_value():
    """The closed form α_d · mean_R (z_d − β_d) against (1) the Shapley formula over every coalition of
    D = 6 neurons and (2) the permutation estimate of the same game with many permutations (the
    bank's sampling scheme: marginal contributions along random orders); efficiency; bias irrelevant."""
    from math import factorial

    w, b, base = _probes(e=2, d=6, seed=6)
    z = torch.rand(6, 3, 3, generator=torch.Generator().manual_seed(7)) * 2
    masks = torch.zeros(2, 9, dtype=torch.bool)
    masks[0, [0, 4, 8]] = True
    masks[1, 1:] = True
    signed, absolute = image_logit_shapley(z, masks, w, base)
    for e in range(2):
        v, d = _logit_game(z, masks[e], w[e], b[e], base), 6
        exact = torch.zeros(d)
        for n in range(d):
            others = [j for j in range(d) if j != n]
            for size in range(d):
                weight = factorial(size) * factorial(d - size - 1) / factorial(d)
                for s in itertools.combinations(others, size):
                    exact[n] += weight * (v((*s, n)) - v(s))
        torch.testing.assert_close(signed[e], exact, atol=1e-5, rtol=0)
        gen, sampled, m = torch.Generator().manual_seed(e), torch.zeros(d), 300
        for _ in range(m):
            order, before = torch.randperm(d, generator=gen).tolist(), []
            for n in order:
                sampled[n] += v((*before, n)) - v(before)
                before.append(n)
        torch.testing.assert_close(signed[e], sampled / m, atol=1e-5, rtol=0)
        assert float(signed[e].sum()) == pytest.approx(v(range(d)) - v(()), abs=1e-5)
        cells = z.reshape(6, 9).T[masks[e]]
        torch.testing.assert_close(absolute[e], (w[e] * (cells - base)).abs().mean(0), atol=1e-6, rtol=0)
    assert (signed[0] - signed[1]).abs().max() > 1e-3, "each concept on its own region and probe"


def test_logit_game_is_the_probability_game_near_zero():
    """A probe scaled towards 0 makes σ linear (σ(x) ≈ 1/2 + x/4): the probability game's Shapley values
    (image_shapley, 2000 permutations) then approach the logit game's divided by 4."""
    w, b, base = _probes(e=2, d=40, seed=8)
    z = torch.rand(40, 4, 4, generator=torch.Generator().manual_seed(9)) * 2
    masks = torch.rand(2, 16, generator=torch.Generator().manual_seed(10)) > 0.4
    eps = 1e-3
    logit, _ = image_logit_shapley(z, masks, w * eps, base)
    prob, _ = image_shapley(z, masks, w * eps, b * eps, base, n_permutations=2000, seed=0)
    torch.testing.assert_close(prob, logit / 4, atol=1e-4 * float(logit.abs().max()), rtol=0)
    with pytest.raises(ValueError, match="at least one region cell"):
        image_logit_shapley(z, torch.zeros(1, 16, dtype=torch.bool), w[:1], base)


def test_logit_game_on_the_bank_sums_to_the_region_logit_gain():
    """On the committed bank and a real photo: per concept the signed values add up to the mean over
    its region of logit(all) − logit(none); a neuron at its baseline everywhere gets nothing; the top
    neurons by signed value are those whose removal lowers the region's logit most."""
    from PIL import Image
    from skimage import data

    from hint.explain.explainer import Explainer

    ex = Explainer.from_bank(BANK)
    _, maps, z = ex.forward([Image.fromarray(data.chelsea())])
    rows = [ex.bank.index(ex.h.find(n).wnid) for n in ("mammal", "feline", "animal")]
    m = maps[0, rows].flatten(1)
    masks = m >= 0.5 * m.max(1, keepdim=True).values
    zz = z[0].clone()
    zz[7] = ex.baseline[7]
    signed, absolute = image_logit_shapley(zz, masks, ex.weight[rows], ex.baseline)
    cells = zz.reshape(zz.shape[0], -1).T
    for k, r in enumerate(rows):
        full = cells[masks[k]] @ ex.weight[r] + ex.bias[r]
        none = ex.baseline @ ex.weight[r] + ex.bias[r]
        assert float(signed[k].sum()) == pytest.approx(float((full - none).mean()), abs=1e-4)
        assert signed[k, 7] == 0 and absolute[k, 7] == 0
        top = signed[k].topk(10).indices
        _, probe_off, _ = ex.forward([Image.fromarray(data.chelsea())], ablate=top.tolist())
        gone = (
            torch.logit(maps[0, r].flatten()[masks[k]].double())
            - torch.logit(probe_off[0, r].flatten()[masks[k]].double())
        ).mean()
        assert float(gone) == pytest.approx(float(signed[k, top].sum()), rel=1e-3)


def test_ranks_share_ties_and_start_at_one():
    v = torch.tensor([[3.0, 1.0, 3.0, 2.0], [0.0, -1.0, 5.0, 0.5]])
    assert ranks(v).tolist() == [[1, 4, 1, 3], [3, 4, 1, 2]]
    x = torch.randn(5, 320, generator=torch.Generator().manual_seed(0))
    r = ranks(x)
    assert torch.equal(r.sort(1).values, torch.arange(1, 321).expand(5, -1))
    assert torch.equal(r.argsort(1), x.argsort(1, descending=True))
    idx = torch.tensor([[0, 5, 319]] * 5)
    assert torch.equal(rank_of(x, idx), r.gather(1, idx))
    assert rank_of(v, torch.tensor([[2, 1], [0, 3]])).tolist() == [[1, 4], [3, 2]]


def test_channel_edit_is_a_plain_baseline_edit():
    out = torch.randn(3, 5, 2, 2)
    base = torch.arange(5.0)
    edited = ChannelEdit(base, [[1, 3], None, [4]])(out)
    want = out.clone()
    want[0, 1], want[0, 3], want[2, 4] = 1.0, 3.0, 4.0
    assert torch.equal(edited, want) and not torch.equal(out, want), "the input is not edited in place"
    one = torch.randn(1, 5, 2, 2)
    torch.testing.assert_close(
        ChannelEdit(base, [[1, 3], None, [4]])(one),
        ChannelEdit(base, [[1, 3], None, [4]])(one.expand(3, -1, -1, -1)),
        atol=0,
        rtol=0,
    )
    for perm in itertools.permutations([0, 2]):
        assert torch.equal(
            ChannelEdit(base, [list(perm), None, None])(out)[0, [0, 2]],
            base[[0, 2]].view(2, 1, 1).expand(2, 2, 2),
        )

"""Bank v2 rules: sample shares, r_E ∪ r_b* for Shapley, the calibration split, the reliability gate,
the data-sufficiency rule, and the served presence rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hint import presence as served
from hint._utils import stats
from hint.build import presence
from hint.build.concepts import KIND, SHARES, RegionTable, concept_samples, select_concepts
from hint.build.pipeline import shapley_regions
from hint.hierarchy import Hierarchy
from hint.shapley import NeuronShapley


@pytest.fixture(scope="module")
def h() -> Hierarchy:
    return Hierarchy.load()


def _table(
    h: Hierarchy,
    classes: list[str],
    per_image: int = 16,
    images_per_class: int = 3,
    d: int = 6,
    seed: int = 0,
):
    """A synthetic step-1 table: each image has ``per_image`` positions, the first half responsible."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([h[w].index for w in classes for _ in range(images_per_class)])
    n = len(labels)
    feats = torch.randn(n * per_image, d, generator=g).half()
    image = torch.arange(n).repeat_interleave(per_image)
    fg = (torch.arange(n * per_image) % per_image) < per_image // 2
    return RegionTable(feats, image, fg, labels)


DOGS = ["n02085620", "n02085782", "n02086240"]  # chihuahua, Japanese spaniel, Maltese
CATS = ["n02123045", "n02123159"]  # tabby, tiger cat
BIRDS = ["n01530575", "n01531178"]  # brambling, goldfinch


def test_sample_shares_are_the_documented_weights(h):
    table = _table(h, DOGS + CATS + BIRDS)
    dog, carnivore = h.find("dog").wnid, h.find("carnivore").wnid
    s = concept_samples(table, dog, carnivore, h)
    kinds = {k: s.kind == v for k, v in KIND.items()}
    assert s.n_pos == int(kinds["positive"].sum()) == 9 * 8  # 9 dog images x 8 responsible positions
    # siblings: cat images' responsible regions (6 images x 8), background: non-responsible of carnivores,
    # others: birds' responsible regions; each drawn up to n_pos
    assert s.n_sibling == 6 * 8 and s.n_other == 6 * 8 and s.n_background == s.n_pos
    assert torch.isclose(s.weight[kinds["positive"]].sum(), torch.tensor(1.0))
    for k in ("sibling", "background", "other"):
        assert torch.isclose(s.weight[kinds[k]].sum(), torch.tensor(SHARES[k]), atol=1e-6), k
    assert (s.y[kinds["positive"]] == 1).all() and (s.y[~kinds["positive"]] == 0).all()
    # background comes from images under the group parent only (dogs and cats), never from birds
    bird_images = set(range(15, 21))
    assert not set(s.image[kinds["background"]].tolist()) & bird_images
    assert set(s.image[kinds["other"]].tolist()) <= bird_images


def test_missing_share_goes_to_the_others(h):
    table = _table(h, DOGS + CATS)  # no image outside carnivore: no "other" regions
    s = concept_samples(table, h.find("dog").wnid, h.find("carnivore").wnid, h)
    assert s.n_other == 0
    live = SHARES["sibling"] + SHARES["background"]
    for k in ("sibling", "background"):
        want = SHARES[k] * (1 + SHARES["other"] / live)
        assert torch.isclose(s.weight[s.kind == KIND[k]].sum(), torch.tensor(want), atol=1e-6)
    assert torch.isclose(s.weight[s.y == 0].sum(), torch.tensor(1.0), atol=1e-6)


def test_shapley_regions_are_positives_and_background(h):
    table = _table(h, DOGS + CATS + BIRDS)
    s = concept_samples(table, h.find("dog").wnid, h.find("carnivore").wnid, h)
    r = shapley_regions(s, 10_000, torch.Generator().manual_seed(0))
    want = s.x[(s.kind == KIND["positive"]) | (s.kind == KIND["background"])]
    assert r.shape == want.shape and torch.equal(r, want)
    # φ is the mean over r_E ∪ r_b* of |signed Shapley value| (normalised by |r_E ∪ r_b*|)
    sh = NeuronShapley(torch.randn(table.dim), 0.1)
    res = sh.attribute(r, n_permutations=32, seed=0)
    assert torch.allclose(res.values, res.signed.abs().sum(0) / len(r), atol=1e-6)
    assert len(shapley_regions(s, 7, torch.Generator().manual_seed(0))) == 7


def test_folds_split_images_evenly_and_deterministically():
    f = presence.fold_of(103, 5, seed=3)
    counts = torch.bincount(f, minlength=5)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 103
    assert torch.equal(f, presence.fold_of(103, 5, seed=3))
    assert not torch.equal(f, presence.fold_of(103, 5, seed=4))


def test_calibration_uses_only_out_of_fold_scores(h):
    """Each image's calibration score comes from a probe that never saw that image."""
    table = _table(h, DOGS + CATS + BIRDS, images_per_class=4)
    dog, carnivore = h.find("dog").wnid, h.find("carnivore").wnid
    seen: list[set[int]] = []

    def fit(s):
        seen.append(set(s.image.tolist()))
        return torch.zeros(table.dim), 0.0

    cv = presence.cross_validate(table, [dog], [carnivore], h, fit, folds=4, seed=0, progress=False)
    fold = cv["fold"]
    assert len(seen) == 4
    for f, images in enumerate(seen):
        held = set(torch.nonzero(fold == f).flatten().tolist())
        assert images and not images & held  # trained without the fold it scores
    assert not torch.isnan(cv["scores"]).any()


def test_best_threshold_and_f1():
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    truth = np.array([True, True, False, True, False, False])
    thr, f1 = stats.best_threshold(scores, truth)
    pred = scores >= thr
    assert f1 == pytest.approx(stats.prf(pred, truth)["f1"])
    # top 2: P 1, R 2/3 -> 0.8; top 4: P 3/4, R 1 -> 6/7, the best; the cut lies between 0.3 and 0.2
    assert f1 == pytest.approx(6 / 7) and thr == pytest.approx(0.25)
    assert stats.best_threshold(scores, np.zeros(6, bool)) == (1.0, 0.0)


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 40).astype(float)
    t = rng.random(40) > 0.5
    pairs = [(a > b) + 0.5 * (a == b) for a in s[t] for b in s[~t]]
    assert stats.auroc(s, t) == pytest.approx(np.mean(pairs))


def test_region_quality_needs_to_beat_always_positive():
    n = 40
    good = presence.RegionCounts(
        tp=np.full(n, 8.0), fp=np.full(n, 1.0), fn=np.full(n, 1.0), pos=np.full(n, 9.0), n=np.full(n, 30.0)
    )
    r = presence.region_quality(good)
    assert r["beats_trivial"] and r["f1"] > r["trivial_f1"] and r["f1_ci"][0] <= r["f1"] <= r["f1_ci"][1]
    # predicting everything positive is exactly the trivial classifier: never reliable
    trivial = presence.RegionCounts(
        tp=np.full(n, 9.0), fp=np.full(n, 21.0), fn=np.zeros(n), pos=np.full(n, 9.0), n=np.full(n, 30.0)
    )
    assert not presence.region_quality(trivial)["beats_trivial"]
    # a good F1 on only two images cannot be told apart from luck
    few = presence.RegionCounts(
        tp=np.array([8.0, 0.0]),
        fp=np.array([0.0, 3.0]),
        fn=np.array([1.0, 9.0]),
        pos=np.array([9.0, 9.0]),
        n=np.array([12.0, 12.0]),
    )
    assert not presence.region_quality(few)["beats_trivial"]


def test_reliability_gate_is_an_auroc_interval_above_chance():
    rng = np.random.default_rng(1)
    truth = np.zeros(400, bool)
    truth[:20] = True
    informative = np.where(truth, rng.normal(2.0, 1.0, 400), rng.normal(0.0, 1.0, 400))
    q = presence.image_quality(informative, truth)
    assert q["reliable"] and q["image_auroc_ci"][0] > 0.5 and q["image_auroc"] > 0.85
    noise = rng.normal(0.0, 1.0, 400)  # scores unrelated to the truth: never reliable
    assert not presence.image_quality(noise, truth)["reliable"]
    few = np.zeros(400, bool)
    few[:2] = True  # two positives ranked first of 400: AUROC 1 in every draw (chance: 1 in 79800)
    q2 = presence.image_quality(np.where(few, 1.0, rng.random(400) * 0.99), few)
    assert q2["image_auroc"] == pytest.approx(1.0) and q2["image_auroc_ci"][1] == pytest.approx(1.0)
    assert presence.image_quality(noise, np.zeros(400, bool))["reliable"] is False


def test_auroc_interval_brackets_the_estimate():
    rng = np.random.default_rng(2)
    t = rng.random(300) > 0.8
    s = np.round(np.where(t, rng.normal(1, 1, 300), rng.normal(0, 1, 300)), 1)  # ties on purpose
    lo, hi = stats.auroc_interval(s, t)
    assert lo < stats.auroc(s, t) < hi and hi - lo < 0.25


def test_veto_threshold_keeps_the_documented_recall():
    scores = np.linspace(0, 1, 101)
    truth = np.zeros(101, bool)
    truth[60:] = True  # 41 positives
    thr = presence.recall_threshold(scores, truth, 0.95)
    kept = (scores[truth] >= thr).mean()
    assert kept >= 0.95 and (scores[truth] >= thr + 1e-9).mean() < 0.95 or thr == scores[truth].min()


def test_data_sufficiency_rule_and_aliases(h):
    labels = torch.tensor([h[w].index for w in DOGS + CATS + BIRDS])
    fg = torch.full((len(labels),), 10)
    cands = [h.find(n).wnid for n in ("dog", "passerine", "oscine", "feline", "carnivore")]
    built, status = select_concepts(
        h, labels, fg, prefer=["oscine"], min_images=3, min_regions=24, candidates=cands
    )
    dog, passerine, oscine, feline, carn = cands
    assert built == [dog, carn] and status[dog] == "built" and status[carn] == "built"
    assert status[feline] == "too few images: 2"
    # passerine and oscine have the same ImageNet classes: the preferred one is judged, the other is its alias
    assert status[oscine] == "too few images: 2" and status[passerine] == f"alias of {oscine}"
    built, status = select_concepts(
        h, labels, torch.full((len(labels),), 5), min_images=3, min_regions=24, candidates=[dog]
    )
    assert status[dog] == "too few regions: 15" and not built


def test_pool_is_top_fraction_mean():
    maps = torch.zeros(2, 3, 14, 14)
    maps[0, 1, 0, :10] = 1.0  # exactly the top 10 cells (5 % of 196)
    maps[1, 2, 5, 5] = 1.0  # one hot cell
    out = served.pool(maps)
    assert out.shape == (2, 3)
    assert out[0, 1] == pytest.approx(1.0) and out[1, 2] == pytest.approx(0.1)
    assert served.pool_size(49) == 2 and served.pool_size(4) == 1

"""Facts of WordNet 3.0 and ImageNet-1k that the committed hierarchy must hold."""

import pytest

from hint.hierarchy import ROOT, Hierarchy

DOG, CAT, TABBY = "n02084071", "n02121620", "n02123045"


@pytest.fixture(scope="module")
def h() -> Hierarchy:
    return Hierarchy.load()


def test_size_and_class_order(h):
    assert len(h.classes) == 1000
    assert h.classes == sorted(h.classes)
    assert 1800 <= len(h) <= 1900
    assert h.classes[0] == "n01440764" and h.class_names[0].startswith("tench")
    assert h.class_concept(281).wnid == TABBY


def test_dog_covers_118_classes(h):
    dog = h[DOG]
    assert len(dog.leaves) == 118
    assert len(dog.parents) == 2  # canine and domestic animal: a DAG
    assert h.find("dog").wnid == DOG


def test_every_leaf_reaches_entity(h):
    for i in range(1000):
        w = h.classes[i]
        assert h[w].index == i
        assert h[w].leaves == (i,)
        assert ROOT in h.ancestors(w)
        assert h.path(w)[-1] == ROOT
    assert h[ROOT].depth == 0 and len(h[ROOT].leaves) == 1000


def test_tabby_ancestors(h):
    names = {h[w].name for w in h.ancestors(TABBY)}
    for n in ("cat", "feline", "carnivore", "mammal", "vertebrate", "animal", "entity"):
        assert n in names, n
    path = [h[w].name for w in h.path(TABBY)]
    assert path[:8] == [
        "tabby",
        "domestic cat",
        "cat",
        "feline",
        "carnivore",
        "placental",
        "mammal",
        "vertebrate",
    ]
    assert path[-1] == "entity"


def test_children_parents_consistent(h):
    for c in h:
        for p in c.parents:
            assert c.wnid in h[p].children
            assert set(c.leaves) <= set(h[p].leaves)
            assert h[p].depth < c.depth


def test_find_errors(h):
    with pytest.raises(KeyError, match="unknown concept"):
        h.find("no such thing")
    with pytest.raises(KeyError):
        h["n99999999"]


def test_sibling_groups(h):
    animal, mammal, bird = h.find("animal").wnid, h.find("mammal").wnid, h.find("bird").wnid
    groups = h.sibling_groups([animal, mammal, bird, DOG, CAT])
    assert groups[0] == [animal]
    assert sorted([mammal, bird]) in groups
    assert sorted([CAT, DOG]) in groups or [DOG] in groups


def test_lowest_common_ancestor(h):
    assert h[h.lowest_common_ancestor([TABBY, h.classes[151]])].name == "carnivore"

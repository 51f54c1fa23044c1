"""Your own labels and hierarchy (docs/custom.md): the JSON and folder-tree loaders, bad specs as one
readable ValueError, discovery against a user hierarchy's classes, a bank carrying its hierarchy.json
(sha256 checked), and the end-to-end path: build a bank from a user hierarchy over ImageNet classes
(pets → dogs / cats), ``make archive`` it, serve it (the handler on the unpacked archive; a real
TorchServe in the slow test), and read the user's concept names and paths in the answers.

Images are scikit-image photos: ``chelsea`` (a tabby) for the cat classes; scikit-image has no dog
photo, so two other photos stand in for the dog classes — the bank's concepts come from the labels,
and these tests check the plumbing, not how well a probe recognises dogs.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from support import REPO, photo, variants
from support import torchserve as bench

from hint.bank import HIERARCHY, BankError, ConceptBank
from hint.build.datasets import discover
from hint.hierarchy import FORMAT, Hierarchy, hierarchy_for
from offline.__main__ import main

TABBY, EGYPTIAN, CHIHUAHUA, GOLDEN = "n02123045", "n02124075", "n02085620", "n02099601"
#: the user hierarchy of the end-to-end test: pets → dogs / cats over four ImageNet classes
PETS = {
    "root": "all",
    "concepts": {
        "pets": {"name": "pets", "description": "animals kept at home"},
        "dogs": {"name": "dogs", "parents": ["pets"], "aliases": ["dog"]},
        "cats": {"name": "cats", "parents": ["pets"], "aliases": ["cat"]},
        CHIHUAHUA: {"parents": ["dogs"]},
        GOLDEN: {"parents": ["dogs"]},
        TABBY: {"parents": ["cats"]},
        EGYPTIAN: {"parents": ["cats"]},
    },
}
#: class -> scikit-image photo (the dog classes' photos are stand-ins, see the module docstring)
PHOTOS = {TABBY: "chelsea", EGYPTIAN: "chelsea", CHIHUAHUA: "astronaut", GOLDEN: "coffee"}
BUILD = ["--permutations", "16", "--faithfulness-k", "0", "--min-images", "2", "--min-regions", "4", "--folds", "2",
         "--workers", "0", "--batch-size", "8", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def pets() -> Hierarchy:
    return Hierarchy.from_user(PETS)


@pytest.fixture(scope="module")
def pets_data(tmp_path_factory) -> Path:
    """Class folders named by WNID, 4 crops/flips of a photo each (16 images)."""
    root = tmp_path_factory.mktemp("pets-data")
    for wnid, name in PHOTOS.items():
        (root / wnid).mkdir()
        for k, v in enumerate(variants(photo(name), 4)):
            v.save(root / wnid / f"{name}{k}.png")
    return root


def tree(root: Path, paths: list[str]) -> Path:
    """Tiny PNGs at the given relative paths."""
    from PIL import Image

    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (120, 80, 40)).save(root / p)
    return root


# ------------------------------------------------------------------------------------------- loaders


def test_json_hierarchy_computes_children_depths_leaves_and_names(pets):
    assert pets.root == "all" and not pets.builtin
    assert len(pets.classes) == 1000 and pets.classes == Hierarchy.load().classes, (
        "no classes: ImageNet's 1000"
    )
    assert pets["pets"].children == ("cats", "dogs") and pets["pets"].parents == ("all",)
    assert [pets[c].depth for c in ("all", "pets", "cats", TABBY)] == [0, 1, 2, 3]
    assert pets["cats"].leaves == (281, 285) and pets["pets"].leaves == (151, 207, 281, 285)
    assert pets[TABBY].name == "tabby" and pets.class_names[281] == "tabby, tabby cat", (
        "WordNet names for WNIDs"
    )
    assert [pets[w].name for w in pets.path(TABBY)] == ["tabby", "cats", "pets", "all"]
    assert pets.find("Dog").wnid == "dogs" and pets.find("tabby cat").wnid == TABBY
    assert pets["n01440764"].parents == ("all",), "a class under no concept hangs off the root"
    assert pets["pets"].gloss == "animals kept at home"
    with pytest.raises(KeyError, match="no class or concept of the hierarchy"):
        pets.find("animal")


def test_explicit_classes_and_a_synthesised_root():
    h = Hierarchy.from_user(
        {
            "classes": ["b", "a", "c"],
            "concepts": {"x": {"name": "X"}, "a": {"parents": ["x"]}, "b": {"parents": ["x"]}},
        }
    )
    assert h.root == "root" and h["root"].children == ("c", "x")
    assert h.class_names == ["b", "a", "c"] and h["b"].index == 0 and h["x"].leaves == (0, 1)
    assert h.find("x").name == "X" and h.lowest_common_ancestor(["a", "b"]) == "x"


def test_to_json_round_trips_and_save_is_loadable(pets, tmp_path):
    doc = pets.to_json()
    assert doc["format"] == FORMAT and list(doc["concepts"])[0] == "all"
    assert Hierarchy.from_user(doc).to_json() == doc
    path = pets.save(tmp_path / "h.json")
    assert Hierarchy.load(path).to_json() == doc and not list(tmp_path.glob(".*tmp*"))
    # the default WordNet DAG survives the user format: same parents, depths and leaves for every concept
    wn = Hierarchy.load()
    again = Hierarchy.from_user(wn.to_json())
    assert again.root == wn.root and again.classes == wn.classes and again.class_names == wn.class_names
    assert all(again[c.wnid] == c for c in wn)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"concepts": {"a": {"parents": ["nope"]}}}, "concept 'a': unknown parent 'nope'"),
        (
            {"concepts": {"a": {"parents": ["b"]}, "b": {"parents": ["a"]}, TABBY: {"parents": ["a"]}}},
            "cycle of parents: a → b → a",
        ),
        ({"classes": ["x", "y", "x"]}, "class 'x' is listed twice"),
        ({"concepts": {"empty": {"name": "Empty"}}}, "concept 'empty' has no class under it"),
        ({"concept": {}}, "unknown key(s) ['concept']"),
        ({"concepts": {"a": {"label": "A"}}}, "concept 'a': unknown key(s) ['label']"),
        ({"concepts": {"a": {"parents": "pets"}}}, "concept 'a': parents must be a list of strings"),
        (
            {"root": "top", "concepts": {"top": {"parents": ["x"]}, "x": {}}},
            "the root 'top' cannot have parents",
        ),
        ({"classes": "all of them"}, "'classes' must be a non-empty list"),
        ({"classes": ["a", "root"]}, "the root 'root' cannot be a class"),
        ([1, 2], "a hierarchy is a JSON object"),
    ],
)
def test_bad_specs_are_one_line_value_errors(spec, message):
    with pytest.raises(ValueError) as e:
        Hierarchy.from_user(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_files_name_the_file(tmp_path):
    dup = tmp_path / "dup.json"
    dup.write_text('{"concepts": {"a": {}, "a": {"name": "again"}}}')
    with pytest.raises(ValueError, match=r"dup\.json: id 'a' appears twice"):
        Hierarchy.load(dup)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        Hierarchy.load(bad)
    (tmp_path / "orphan.json").write_text('{"concepts": {"a": {"parents": ["b"]}}}')
    with pytest.raises(ValueError, match=r"orphan\.json: concept 'a': unknown parent 'b'"):
        Hierarchy.load(tmp_path / "orphan.json")


def test_folder_tree_hierarchy(tmp_path):
    root = tree(
        tmp_path / "zoo",
        [
            "animal/dog/d1.png",
            "animal/dog/d2.jpg",
            "animal/cat/c1.png",
            "vehicle/car/k1.png",
            ".hidden/x/skip.png",
        ],
    )
    h = Hierarchy.from_folders(root)
    assert h.classes == ["car", "cat", "dog"], "sorted class folders (ImageFolder's order)"
    assert h.root == "zoo" and h["animal"].children == ("cat", "dog") and h["animal"].leaves == (1, 2)
    assert [h[w].name for w in h.path("dog")] == ["dog", "animal", "zoo"] and "x" not in h
    # the same tree over a given class list: the other classes hang off the root
    wn = tree(tmp_path / "pets", [f"cats/{TABBY}/a.png", f"cats/{EGYPTIAN}/b.png", f"dogs/{CHIHUAHUA}/c.png"])
    h = Hierarchy.from_folders(wn, "imagenet")
    assert len(h.classes) == 1000 and h["cats"].leaves == (281, 285) and h[TABBY].name == "tabby"
    assert h["n01440764"].parents == ("pets",)
    with pytest.raises(ValueError, match="not in the class list"):
        Hierarchy.from_folders(root, "imagenet")
    tree(root, ["vehicle/dog/d3.png"])
    with pytest.raises(ValueError, match="folder name 'dog' appears twice"):
        Hierarchy.from_folders(root)
    with pytest.raises(ValueError, match="no folder below it holds images"):
        Hierarchy.from_folders(tmp_path / "pets" / "dogs" / CHIHUAHUA)


def test_hierarchy_for_build_options(tmp_path, pets_data):
    assert hierarchy_for(None).builtin and hierarchy_for("wordnet").builtin
    spec = tmp_path / "pets.json"
    spec.write_text(json.dumps(PETS))
    (tmp_path / "classes.txt").write_text(f"# output order\n{TABBY}\n{EGYPTIAN}\n\n{CHIHUAHUA}\n{GOLDEN}\n")
    h = hierarchy_for(spec, classes=tmp_path / "classes.txt")
    assert h.classes == [TABBY, EGYPTIAN, CHIHUAHUA, GOLDEN] and h["pets"].leaves == (0, 1, 2, 3)
    assert hierarchy_for("folders", pets_data).classes == sorted(PHOTOS)
    for args, message in [
        (("wordnet", None, "imagenet"), "--classes needs --hierarchy"),
        (("folders", spec), "needs --data to be a nested folder tree"),
        ((tmp_path / "none.json",), "no such file"),
    ]:
        with pytest.raises(ValueError, match=message):
            hierarchy_for(*args)


# ----------------------------------------------------------------------------------------- discovery


def test_discover_against_a_user_hierarchy(tmp_path):
    root = tree(
        tmp_path / "zoo",
        [
            "animal/dog/d1.png",
            "animal/dog/d2.png",
            "animal/cat/c1.png",
            "vehicle/car/k1.png",
            "vehicle/bus/b1.png",
        ],
    )
    h = Hierarchy.from_folders(tmp_path / "zoo")
    found = discover(root, h)
    assert [(s.path.name, s.wnid, s.label) for s in found.samples] == [
        ("c1.png", "cat", 2),
        ("d1.png", "dog", 3),
        ("d2.png", "dog", 3),
        ("b1.png", "bus", 0),
        ("k1.png", "car", 1),
    ]
    # a CSV with a label column; an unknown class is skipped with its reason
    small = Hierarchy.from_user({"classes": ["car", "dog"], "concepts": {}})
    (tmp_path / "labels.csv").write_text(
        "file,label\nzoo/animal/dog/d1.png,dog\nzoo/vehicle/bus/b1.png,bus\n"
    )
    found = discover(tmp_path / "labels.csv", small)
    assert [(s.wnid, s.label) for s in found.samples] == [("dog", 1)]
    assert found.skipped == [
        f"{tmp_path}/zoo/vehicle/bus/b1.png: unknown class 'bus' (not one of the hierarchy's 2 classes)"
    ]
    # flat files prefixed by a class id
    flat = tree(tmp_path / "flat", ["dog_1.png", "car_2.png", "cow_3.png"])
    assert sorted(s.wnid for s in discover(flat, small).samples) == ["car", "dog"]


def test_discover_imagenet_default_unchanged(tmp_path, pets, pets_data):
    flat = tree(tmp_path / "flat", [f"{TABBY}_a.png", "n99999999_b.png", "other.png"])
    found = discover(flat)
    assert [(s.wnid, s.label) for s in found.samples] == [(TABBY, 281)]
    assert found.skipped == [f"{flat}/n99999999_b.png: unknown WNID 'n99999999' (not an ImageNet-1k class)"]
    # WNID class folders under a user hierarchy over ImageNet classes: the same labels
    assert [s.label for s in discover(pets_data, pets).samples] == [
        s.label for s in discover(pets_data).samples
    ]


# ------------------------------------------------------------------------------------------------ bank


def _bank(hierarchy: Hierarchy | None, wnids: list[str]) -> ConceptBank:
    g = torch.Generator().manual_seed(0)
    e, d = len(wnids), 6
    return ConceptBank(
        weight=torch.randn(e, d, generator=g),
        bias=torch.zeros(e),
        phi=torch.rand(e, d, generator=g),
        phi_se=torch.zeros(e, d),
        baseline=torch.zeros(d),
        n_permutations=torch.full((e,), 4),
        concepts=[{"wnid": w, "name": w} for w in wnids],
        meta={"backbone": "x", "layer": "y"},
        hierarchy=hierarchy,
    )


def test_bank_carries_its_hierarchy(pets, tmp_path):
    folder = _bank(pets, ["pets", "cats", "dogs"]).save(tmp_path / "bank")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert HIERARCHY in manifest["files"] and manifest["hierarchy"]["root"] == "all"
    loaded = ConceptBank.load(folder)
    assert loaded.hierarchy.to_json() == pets.to_json() and loaded.load_hierarchy() is loaded.hierarchy
    assert "hierarchy" not in loaded.meta
    # an edited hierarchy.json fails the sha256 check; one the manifest does not list is refused
    doc = json.loads((folder / HIERARCHY).read_text())
    doc["concepts"]["cats"]["name"] = "kittens"
    (folder / HIERARCHY).write_text(json.dumps(doc))
    with pytest.raises(BankError, match="sha256 mismatch"):
        ConceptBank.load(folder)
    old = _bank(None, ["n02121620"]).save(tmp_path / "old")
    assert HIERARCHY not in json.loads((old / "manifest.json").read_text())["files"]
    assert ConceptBank.load(old).load_hierarchy().builtin, "no hierarchy.json: the WordNet default"
    shutil.copy(folder / HIERARCHY, old / HIERARCHY)
    with pytest.raises(BankError, match="not listed in the manifest"):
        ConceptBank.load(old)
    with pytest.raises(BankError, match=r"concept\(s\) \['pets'\] are not in the bank's hierarchy"):
        ConceptBank.load(_bank(None, ["pets"]).save(tmp_path / "wrong"))


def test_build_checks_the_class_count(tmp_path, pets_data, capsys):
    spec = tmp_path / "pets.json"
    spec.write_text(json.dumps(PETS))
    (tmp_path / "classes.txt").write_text("\n".join(PHOTOS) + "\n")
    argv = [
        "build",
        "--data",
        str(pets_data),
        "--hierarchy",
        str(spec),
        "--classes",
        str(tmp_path / "classes.txt"),
        "--out",
        str(tmp_path / "bank"),
        *BUILD,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "error: backbone efficientnet_lite0 has 1000 outputs but the hierarchy has 4 classes; list one "
        "class id per output, in output order"
    )


# ---------------------------------------------------------------------------------- build → serve


@pytest.fixture(scope="module")
def archive(pets_data, tmp_path_factory) -> Path:
    """``python -m offline build --hierarchy pets.json`` then ``make archive BANK=...``: the .mar."""
    tmp = tmp_path_factory.mktemp("pets-bank")
    (tmp / "pets.json").write_text(json.dumps(PETS))
    out = tmp / "bank"
    assert (
        main(
            [
                "build",
                "--data",
                str(pets_data),
                "--hierarchy",
                str(tmp / "pets.json"),
                "--out",
                str(out),
                *BUILD,
            ]
        )
        == 0
    )
    make = [
        "make",
        "-C",
        str(REPO),
        "archive",
        f"BANK={out}",
        f"STORE={tmp / 'store'}",
        f"MAR_SRC={tmp / 'src'}",
    ]
    r = subprocess.run(make, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return tmp / "store" / "hint.mar"


@pytest.fixture(scope="module")
def served(archive, tmp_path_factory):
    """The handler, started on the unpacked archive as TorchServe would (tests/support/handler.py)."""
    import yaml
    from support.handler import FakeContext, hint_handler

    model_dir = tmp_path_factory.mktemp("model-dir")
    with zipfile.ZipFile(archive) as z:
        z.extractall(model_dir)
    ctx = FakeContext(model_dir, yaml.safe_load((REPO / "handlers" / "model-config.yaml").read_text()))
    h = hint_handler.HintHandler()
    h.initialize(ctx)
    return h, ctx


def test_bank_built_from_the_user_hierarchy(archive):
    with zipfile.ZipFile(archive) as z:
        assert {"manifest.json", "bank.safetensors", HIERARCHY} <= set(z.namelist())
        manifest = json.loads(z.read("manifest.json"))
    assert [(c["wnid"], c["name"], c["path"]) for c in manifest["concepts"]] == [
        ("pets", "pets", ["pets", "all"]),
        ("cats", "cats", ["cats", "pets", "all"]),
        ("dogs", "dogs", ["dogs", "pets", "all"]),
    ]
    assert manifest["build"]["hierarchy"].endswith("pets.json") and manifest["build"]["n_images"] == 16


def test_an_edited_hierarchy_is_not_served_from_the_step_cache(archive, pets_data, tmp_path):
    """Same images and concept ids, another structure (Egyptian cat and golden retriever swapped): new
    classifiers, not the first bank's from the cache."""
    edited = json.loads(json.dumps(PETS))
    edited["concepts"][EGYPTIAN]["parents"], edited["concepts"][GOLDEN]["parents"] = ["dogs"], ["cats"]
    spec = tmp_path / "edited.json"
    spec.write_text(json.dumps(edited))
    first = ConceptBank.load(archive.parent.parent / "bank")
    out = archive.parent.parent / "edited-bank"  # beside the first bank: the same default cache folder
    assert main(["build", "--data", str(pets_data), "--hierarchy", str(spec), "--out", str(out), *BUILD]) == 0
    again = ConceptBank.load(out)
    assert again.wnids == first.wnids == ["pets", "cats", "dogs"]
    assert again.hierarchy["cats"].leaves == (207, 281) and first.hierarchy["cats"].leaves == (281, 285)
    assert "classifiers" not in again.meta["build"]["reused_from_cache"]
    assert "regions" in again.meta["build"]["reused_from_cache"]  # step 1 does not depend on the hierarchy
    assert not torch.allclose(again.weight[1], first.weight[1], atol=1e-3), "the cats probe is trained anew"


def test_served_answer_names_the_user_concepts(served):
    from support.handler import jpeg, one, tabby

    from app.ui import UNRELIABLE, concept_choices

    b64 = base64.b64encode(jpeg(tabby())).decode()
    code, doc = one(served, {"body": {"image": b64, "concepts": ["all"]}})
    assert code == 200
    assert [c["name"] for c in doc["concepts"]] == ["pets", "cats", "dogs"]
    top = doc["prediction"][0]
    assert top["wnid"] in (TABBY, EGYPTIAN), "the pretrained backbone sees a cat"
    assert [lvl["name"] for lvl in doc["chain"]][1:] == ["cats", "pets"]
    # a concept's model probability: the softmax summed over its classes, as the chain's level
    chain = {lvl["wnid"]: lvl for lvl in doc["chain"]}
    for c in doc["concepts"][:2]:
        assert c["model_probability"] == pytest.approx(chain[c["wnid"]]["probability"], abs=1e-4)
    assert chain["pets"]["probability"] >= chain["cats"]["probability"] - 1e-6
    # the app's picker, from the answer alone: user names with their user paths
    labels = [
        label.removesuffix(UNRELIABLE) for label, _ in concept_choices(doc["concepts"], with_scores=False)
    ]
    assert labels == ["pets", "cats  ·  pets", "dogs  ·  pets"]
    # concepts by the user's names and aliases; a WordNet name is not one of them
    code, doc = one(served, {"body": {"image": b64, "concepts": ["Dog", "cats"]}})
    assert code == 200 and [c["wnid"] for c in doc["concepts"]] == ["dogs", "cats"]
    code, doc = one(served, {"body": {"image": b64, "concepts": ["animal"]}})
    assert code == 400 and "unknown concept 'animal': no class or concept of the hierarchy" in doc["message"]
    code, doc = one(served, {"body": {"neuron": 3}})
    assert code == 200 and sorted(c["name"] for c in doc["concepts"]) == ["cats", "dogs", "pets"]


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("java") is None, reason="java not found: TorchServe 0.12 needs Java 17 (make apt-java)"
)
def test_torchserve_serves_the_user_bank(archive, tmp_path):
    """The archive in a real TorchServe; the app's client reads the user concepts over HTTP."""
    from support.handler import jpeg, tabby

    from app.client import HintClient
    from app.ui import UNRELIABLE, concept_choices

    with bench.LocalTorchServe(tmp_path, archive.parent, ["hint"]) as ts:
        client = HintClient(ts.inference_url, token_file=tmp_path / "key_file.json", timeout=120)
        doc = client.explain(jpeg(tabby()), concepts=["all"])
        assert [c["name"] for c in doc["concepts"]] == ["pets", "cats", "dogs"]
        assert [lvl["name"] for lvl in doc["chain"]][1:] == ["cats", "pets"]
        labels = [
            label.removesuffix(UNRELIABLE) for label, _ in concept_choices(doc["concepts"], with_scores=False)
        ]
        assert labels == ["pets", "cats  ·  pets", "dogs  ·  pets"]


def test_predict_names_classes_from_a_user_class_list(tmp_path, capsys):
    """`offline predict --hierarchy FILE --classes FILE`: output i is named by the user's class list;
    a list whose length is not the model's number of outputs is one readable error."""
    photo("chelsea").save(tmp_path / "cat.png")
    names = [f"class{i:04d}" for i in range(1000)]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    spec = tmp_path / "flat.json"
    spec.write_text(json.dumps({"root": "all", "concepts": {"all": {"name": "all"}}}))
    assert main(["predict", str(tmp_path / "cat.png"), "--topk", "1"]) == 0
    wnid = capsys.readouterr().out.splitlines()[2].split()[2]
    argv = ["predict", str(tmp_path / "cat.png"), "--topk", "1", "--hierarchy", str(spec)]
    assert main([*argv, "--classes", str(tmp_path / "classes.txt")]) == 0
    rank, _, cls, *_ = capsys.readouterr().out.splitlines()[2].split()
    assert cls == names[Hierarchy.load().classes.index(wnid)]  # the same output, the user's name for it
    (tmp_path / "short.txt").write_text("\n".join(names[:10]))
    assert main([*argv, "--classes", str(tmp_path / "short.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "10" in err


@pytest.mark.slow
def test_build_bank_from_python_with_a_user_hierarchy(pets, pets_data, tmp_path):
    """The public API: build_bank returns a complete bank (its hierarchy included), which saves, reloads
    and explains; the README's notebook example in small."""
    from hint import BuildConfig, ConceptBank, Explainer, build_bank

    cfg = BuildConfig(
        permutations=16, faithfulness_k=0, min_images=2, min_regions=4, folds=2, workers=0, batch_size=8
    )
    bank = build_bank(
        pets_data, hierarchy=pets, config=cfg, cache=tmp_path / "cache", head_layers=[], progress=False
    )
    assert bank.wnids == ["pets", "cats", "dogs"] and bank.hierarchy is pets
    assert bank.meta["build"]["data"] == str(pets_data) and bank.meta["build"]["n_images"] == 16
    folder = bank.save(tmp_path / "bank")
    assert (folder / HIERARCHY).is_file()
    again = ConceptBank.load(folder)
    assert again.hierarchy.to_json() == pets.to_json() and again.wnids == bank.wnids
    assert torch.equal(again.weight, bank.weight) and torch.equal(again.phi, bank.phi)
    assert again.top_neurons(again.hierarchy.find("dog").wnid, 5) == bank.top_neurons("dogs", 5)
    doc = Explainer.from_bank(folder).explain([photo("chelsea")], concepts="all")[0]
    assert [c["name"] for c in doc["concepts"]] == ["pets", "cats", "dogs"]
    assert all(len(c["neurons"]) == 5 for c in doc["concepts"])

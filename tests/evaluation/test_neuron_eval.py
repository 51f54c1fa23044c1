"""evaluate-neurons (hint.evaluation.neurons): the concept it picks, one image's drops, the report's
statistics, and the docs table reproduced by its command (first images, per-image records)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from support import REPO

from hint.evaluation import neurons as neuron_eval
from hint.explain.explainer import Explainer
from offline.__main__ import main

BANK = REPO / "model_store" / "hint-bank"
DOCS = REPO / "docs" / "neurons"
DATA = REPO.parent / "shared" / "data" / "imagenet-val-boxes"


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer.from_bank(BANK)


def test_deepest_reliable_concept_of_the_predicted_class(explainer):
    h = explainer.h
    row = neuron_eval.deepest_reliable(explainer, h.classes.index(h.find("Egyptian cat").wnid))
    assert explainer.bank.concepts[row]["name"] == "domestic cat" and explainer._reliable[row]
    # an unreliable concept is passed over for the next one up the path
    person = explainer.bank.index(h.find("person").wnid)
    assert not explainer._reliable[person]


def test_one_image_all_arms(explainer):
    from support import photo

    x = explainer.backbone.preprocess([photo("chelsea")])
    rec = neuron_eval.evaluate_image(explainer, x, ks=(5, 20), draws=2, permutations=16)
    assert rec["concept_name"] == "domestic cat" and rec["class_name"] == "Egyptian cat"
    assert rec["region_cells"] >= 1 and len(rec["top"]["image"]) == 20
    for metric in neuron_eval.METRICS:
        for arm in neuron_eval.ARMS:
            assert set(rec["drops"][metric][arm]) == {"5", "20"}
    # removing this image's top 20 hurts the class more than removing 20 random neurons
    d = rec["drops"]["probability"]
    assert d["image"]["20"] > d["random"]["20"]
    # the drop is what a network ablation of those neurons gives
    probs, _, _ = explainer.forward_tensor(x)
    after, _, _ = explainer.forward_tensor(x, edits=[rec["top"]["global"][:5]])
    assert d["global"]["5"] == pytest.approx(float(probs[0, rec["class"]] - after[0, rec["class"]]), abs=1e-5)


def test_report_intervals_and_goal(explainer):
    recs = []
    for i in range(10):
        drops = {m: {"image": {"5": 0.5 + 0.01 * i}, "image_abs": {"5": 0.4}, "global": {"5": 0.3 + 0.01 * i},
                     "random": {"5": 0.01 * i}} for m in neuron_eval.METRICS}  # fmt: skip
        recs.append({"drops": drops})
    rep = neuron_eval.report(recs, explainer, ks=(5,), draws=1)
    row = rep["summary"]["probability"]["5"]
    assert row["image"]["mean"] == pytest.approx(0.545) and row["image"]["ci"][0] < 0.545 < row["image"]["ci"][1]
    assert row["image_minus_global"]["mean"] == pytest.approx(0.2) and row["image_minus_global"]["ci"][0] == pytest.approx(0.2)
    assert row["goal"]
    assert "goal met at k = 5" in neuron_eval.verdict(rep)


@pytest.mark.skipif(not (DATA.is_dir() and (DOCS / "results.json").is_file()), reason="needs ../shared/data and docs/neurons")
def test_docs_table_is_reproduced_by_its_command(tmp_path, capsys):
    """The committed table follows from the committed per-image records, and the command given on the
    page reproduces those records (here its first 3 images)."""
    doc = json.loads((DOCS / "results.json").read_text())
    page = (DOCS / "neurons.md").read_text()
    command = re.search(r"```bash\n(python -m offline evaluate-neurons [^\n]+)\n```", page).group(1)
    assert "--limit 256" in command and doc["images"] >= 200
    assert neuron_eval.markdown(doc, command) == page, "the page is the rendering of results.json"
    args = command.split()[3:]
    args[args.index("--out") + 1] = str(tmp_path)
    args[args.index("--limit") + 1] = "3"
    torch.manual_seed(0)
    assert main([*args, "--workers", "0"]) == 0
    ours = json.loads((tmp_path / "results.json").read_text())
    assert capsys.readouterr().out.strip().splitlines()[-1] == neuron_eval.verdict(ours)
    for a, b in zip(ours["records"], doc["records"][:3], strict=False):
        assert (a["file"], a["class"], a["concept"], a["region_cells"]) == (b["file"], b["class"], b["concept"], b["region_cells"])
        assert a["top"]["global"] == b["top"]["global"]
        assert len(set(a["top"]["image"][:10]) & set(b["top"]["image"][:10])) >= 9, "same neurons, up to float ties"
        for metric in neuron_eval.METRICS:
            for arm in neuron_eval.ARMS:
                for k, v in a["drops"][metric][arm].items():
                    assert v == pytest.approx(b["drops"][metric][arm][k], abs=2e-3), (a["file"], metric, arm, k)

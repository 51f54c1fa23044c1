"""evaluate-concepts: the three answers scored per concept, macro means, the CLI's last line; the
goldfinch check of issue 10."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support import REPO

from hint.evaluation import concepts as concept_eval
from hint.explain.explainer import Explainer
from hint.hierarchy import Hierarchy
from offline.__main__ import main

BANK = REPO / "model_store" / "hint-bank"


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer.from_bank(BANK)


def test_report_scores_each_answer_against_the_hierarchy(explainer):
    h: Hierarchy = explainer.h
    bank = explainer.bank
    e_bird, e_dog = bank.index(h.find("bird").wnid), bank.index(h.find("dog").wnid)
    goldfinch, pug = h.find("goldfinch").index, h.find("pug").index
    n, e = 4, len(bank.concepts)
    arrays = {
        "label": np.array([goldfinch, goldfinch, pug, pug]),
        "present": np.zeros((n, e), bool),
        "probe_present": np.zeros((n, e), bool),
        "model_probability": np.zeros((n, e)),
        "score": np.zeros((n, e)),
    }
    arrays["present"][[0, 1], e_bird] = True  # served: both birds right, one dog missed
    arrays["present"][2, e_dog] = True
    arrays["probe_present"][[0, 2, 3], e_bird] = True  # probe: one bird hit, two false alarms on dogs
    arrays["model_probability"][:, e_bird] = [0.9, 0.8, 0.1, 0.2]
    arrays["score"][:, e_bird] = [0.9, 0.1, 0.8, 0.7]
    rep = concept_eval.report(arrays, explainer)
    rows = {r["name"]: r for r in rep["concepts"]}
    bird, dog = rows["bird"], rows["dog"]
    assert bird["positives"] == 2 and dog["positives"] == 2
    assert bird["served"]["f1"] == 1.0 and bird["served"]["fpr"] == 0.0
    assert dog["served"]["precision"] == 1.0 and dog["served"]["recall"] == 0.5
    assert bird["probe"]["precision"] == pytest.approx(1 / 3, abs=1e-4) and bird["probe"]["fpr"] == 1.0
    assert bird["softmax"]["f1"] == 1.0 and bird["softmax"]["auroc"] == 1.0
    assert bird["probe"]["auroc"] == pytest.approx(0.5, abs=1e-4)  # 0.9 > 0.8, 0.7 but 0.1 below both
    # macro means skip concepts without a positive image
    scored = [r for r in rep["concepts"] if r["positives"]]
    assert rep["macro"]["all_built"]["concepts"] == len(scored)
    assert rep["macro"]["all_built"]["served"]["f1"] == pytest.approx(
        np.mean([r["served"]["f1"] for r in scored]), abs=1e-4
    )
    line = concept_eval.summary_line(rep)
    assert line.startswith("macro-F1 served ") and line.endswith(f"({n} images, {len(scored)} concepts)")


@pytest.mark.slow
def test_evaluate_concepts_cli(shared, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = [
        "evaluate-concepts",
        "--bank",
        str(BANK),
        "--data",
        str(shared / "imagenet-val-boxes"),
        "--out",
        str(out),
        "--limit",
        "64",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    rep = json.loads((out / "results.json").read_text())
    assert last == concept_eval.summary_line(rep) and rep["images"] == 64
    assert "| paper's 26 levels |" in (out / "concepts.md").read_text()
    # the served column is the bank's rule (presence.model) on the model's probability and the probe's score
    # of the same images, whatever the probe's reliability
    from hint.build.datasets import load_rgb
    from hint.evaluation.wsol.metrics import load_annotations
    from hint.presence import apply_rule

    ex = Explainer.from_bank(BANK)
    anns = load_annotations(shared / "imagenet-val-boxes" / "annotations.csv", shared / "imagenet-val-boxes")[
        :16
    ]
    arrays = ex.presence_arrays(ex.backbone.preprocess([load_rgb(a.path) for a in anns]))
    rule = ex.bank.meta["presence"]["model"]
    assert torch.equal(arrays["present"], apply_rule(rule, arrays["model_probability"], arrays["score"]))
    served_counts = {r["name"]: r["served"]["predicted"] for r in rep["concepts"]}
    assert sum(served_counts.values()) > 0


def test_goldfinch_marks_no_ungulate_person_or_car(explainer, shared):
    from PIL import Image

    h = explainer.h
    im = Image.open(shared / "imagenet-val-boxes" / "images" / "ILSVRC2012_val_00047029.JPEG").convert("RGB")
    assert h.find("goldfinch").wnid == "n01531178"
    names = ["ungulate", "person", "car", "bird", "animal"]
    doc = explainer.explain([im], concepts=[h.find(n).wnid for n in names])[0]
    present = {c["name"]: c["present"] for c in doc["concepts"]}
    assert not present["ungulate"] and not present["person"] and not present["car"]
    assert present["bird"] and present["animal"]


def test_presence_arrays_follow_the_served_rule(explainer):
    from support import photo

    x = explainer.backbone.preprocess([photo("chelsea"), photo("coffee")])
    a = explainer.presence_arrays(x)
    veto = torch.tensor([c["veto_threshold"] for c in explainer.bank.concepts])
    rel = torch.tensor([c["reliable"] for c in explainer.bank.concepts])
    want = rel & (a["model_probability"] >= 0.5) & (a["score"] >= veto)
    assert torch.equal(a["present"], want)
    feline = explainer.bank.index(explainer.h.find("feline").wnid)
    assert a["present"][0, feline] and not a["present"][1, feline]

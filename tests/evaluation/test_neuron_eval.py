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
    rec = neuron_eval.evaluate_image(explainer, x, ks=(5, 20), draws=2, permutations=16, ig_steps=8)
    assert rec["concept_name"] == "domestic cat" and rec["class_name"] == "Egyptian cat"
    assert rec["region_cells"] >= 1 and len(rec["top"]["image"]) == 20
    for metric in neuron_eval.METRICS:
        for arm in neuron_eval.ARMS:
            assert set(rec["drops"][metric][arm]) == {"5", "20"}
    assert set(rec["seconds"]) == set(rec["cpu_seconds"]) == {"image", "image_mc", *neuron_eval.BASELINES}
    assert all(t >= 0 for t in rec["seconds"].values())
    # the served arm is the probe-logit game's closed form; on the concept target, Captum's gradient x
    # activation is the same without the baseline, and Integrated Gradients (linear target) the same from
    # the grey image's activations
    _, maps, z = explainer.forward_tensor(x)
    r = explainer.bank.index(rec["concept"])
    region = maps[0, r] >= 0.5 * maps[0, r].max()
    assert int(region.sum()) == rec["region_cells"]
    w, base = explainer.weight[r], explainer.baseline.view(-1, 1, 1)
    served = w * ((z[0] - base) * region).sum((1, 2))
    assert rec["top"]["image"][:5] == served.topk(5).indices.tolist()
    assert set(rec["top"]["gxa_concept"][:5]) == set(
        (w * (z[0] * region).sum((1, 2))).topk(5).indices.tolist()
    )
    _, _, z0 = explainer.forward_tensor(torch.zeros_like(x))
    assert set(rec["top"]["ig_concept"][:5]) == set(
        (w * ((z[0] - z0[0]) * region).sum((1, 2))).topk(5).indices.tolist()
    )
    # on the score, the served neurons beat the global and random ones
    assert rec["drops"]["score"]["image"]["20"] > max(
        rec["drops"]["score"]["global"]["20"], rec["drops"]["score"]["random"]["20"]
    )
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
        drops = {
            m: {
                "image": {"5": 0.5 + 0.01 * i},
                "image_abs": {"5": 0.4},
                "global": {"5": 0.3 + 0.01 * i},
                "random": {"5": 0.01 * i},
            }
            for m in neuron_eval.METRICS
        }
        for m in neuron_eval.METRICS:
            for arm in neuron_eval.ARMS[5:] + ("image_mc",):
                drops[m][arm] = {
                    "5": 0.5
                    + 0.01 * i
                    - (0.1 if arm != "gxa_concept" or m == "probability" else (-1) ** i * 0.01)
                }
        timed = {"image": 1e-4, "image_mc": 1e-3, **{a: 0.01 * (1 + i) for a in neuron_eval.BASELINES}}
        recs.append({"drops": drops, "seconds": timed, "cpu_seconds": timed})
    rep = neuron_eval.report(recs, explainer, ks=(5,), draws=1)
    row = rep["summary"]["probability"]["5"]
    assert (
        row["image"]["mean"] == pytest.approx(0.545) and row["image"]["ci"][0] < 0.545 < row["image"]["ci"][1]
    )
    assert row["image_minus_global"]["mean"] == pytest.approx(0.2) and row["image_minus_global"]["ci"][
        0
    ] == pytest.approx(0.2)
    assert row["served_minus"]["ig_class"]["mean"] == pytest.approx(0.1) and row["served_best"]
    assert row["goal"]
    # on the score, gradient x activation ties the served arm on average (paired interval around 0): still "at least as good"
    score = rep["summary"]["score"]["5"]
    assert score["served_minus"]["gxa_concept"]["ci"][0] < 0 < score["served_minus"]["gxa_concept"]["ci"][1]
    assert score["served_best"]
    assert rep["milliseconds"]["cpu"]["gxa_class"] == {
        "median": pytest.approx(55.0),
        "mean": pytest.approx(55.0),
    }
    assert "goal met at k = 5" in neuron_eval.verdict(rep)
    # an arm that beats the served one on the target metric and k: the verdict says so
    for r in recs:
        r["drops"]["score"]["crp_concept"]["5"] = r["drops"]["score"]["image"]["5"] + 0.05
    rep = neuron_eval.report(recs, explainer, ks=(5,), draws=1)
    assert not rep["summary"]["score"]["5"]["served_best"]
    assert "served ≥ every arm" not in neuron_eval.verdict(rep), "k = 5 is not the target's k"
    assert "served ≥ every arm on score at k = 5: no" in neuron_eval.verdict(
        {**rep, "summary": rep["summary"]}, target=("score", "5")
    )


@pytest.mark.skipif(
    not (DATA.is_dir() and (DOCS / "results.json").is_file()), reason="needs ../shared/data and docs/neurons"
)
def test_docs_table_is_reproduced_by_its_command(tmp_path, capsys):
    """The committed table follows from the committed per-image records, and the command given on the
    page reproduces those records (here its first 3 images)."""
    doc = json.loads((DOCS / "results.json").read_text())
    page = (DOCS / "neurons.md").read_text()
    command = re.search(r"```bash\n(python -m offline evaluate-neurons [^\n]+)\n```", page).group(1)
    assert "--limit 256" in command and doc["images"] >= 200
    assert set(doc["summary"]["score"]["10"]) >= {*neuron_eval.ARMS, "served_minus", "served_best"}
    assert neuron_eval.markdown(doc, command) == page, "the page is the rendering of results.json"
    args = command.split()[3:]
    args[args.index("--out") + 1] = str(tmp_path)
    args[args.index("--limit") + 1] = "3"
    torch.manual_seed(0)
    assert main([*args, "--workers", "0"]) == 0
    ours = json.loads((tmp_path / "results.json").read_text())
    assert capsys.readouterr().out.strip().splitlines()[-1] == neuron_eval.verdict(ours)
    for a, b in zip(ours["records"], doc["records"][:3], strict=False):
        assert (a["file"], a["class"], a["concept"], a["region_cells"]) == (
            b["file"],
            b["class"],
            b["concept"],
            b["region_cells"],
        )
        assert a["top"]["global"] == b["top"]["global"]
        for arm in a["top"]:
            assert len(set(a["top"][arm][:10]) & set(b["top"][arm][:10])) >= 9, (
                "same neurons, up to float ties",
                arm,
            )
        for metric in neuron_eval.METRICS:
            for arm in neuron_eval.ARMS:
                for k, v in a["drops"][metric][arm].items():
                    if arm != "random" and set(a["top"][arm][: int(k)]) != set(b["top"][arm][: int(k)]):
                        continue  # a float tie at the k-th place: another neuron removed
                    assert v == pytest.approx(b["drops"][metric][arm][k], abs=2e-3), (
                        a["file"],
                        metric,
                        arm,
                        k,
                    )

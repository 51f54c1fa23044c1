"""Write a bank's MODEL_CARD.md from its manifest and its report (``python -m offline report``).

Every statement is read from the manifest (what the build measured) or the report's tables:

    python scripts/model_card.py model_store/hint-bank docs/bank-report
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def card(bank: Path, report: Path) -> str:
    m = json.loads((bank / "manifest.json").read_text())
    b, s1 = m["build"], m["build"]["step1"]
    t = b["timings_s"]
    rel = Path("../..") / report
    concepts = m["concepts"]
    cands = m.get("candidates", [])
    n_rel = sum(c.get("reliable", True) for c in concepts)
    statuses: dict[str, int] = {}
    for c in cands:
        key = c["status"].split(":")[0].split(" of ")[0]
        statuses[key] = statuses.get(key, 0) + 1
    shares = m.get("sample_shares", {})
    pres = m.get("presence", {})
    return f"""# Model card — HINT concept bank `{m["bank_id"]}`

| | |
|---|---|
| backbone | `{m["backbone"]}` (weights: {m["weights"]}, sha256 `{(m["weights_sha256"] or "")[:16]}…`) |
| hidden layer | `{m["layer"]}` — {m["channels"]} channels (the neurons), {s1["map_size"][0]}×{s1["map_size"][1]} map at {m["input_size"]}×{m["input_size"]} input; post-ReLU: {m["post_relu"]}; a removed neuron takes {"0" if m["post_relu"] else "its channel mean"} (`baseline: {b["baseline"]}`) |
| preprocessing | squash to {m["input_size"]}×{m["input_size"]} (aspect not kept), RGB, mean {m["mean"][0]:.4f}, std {m["std"][0]:.4f} |
| data | `{b["data"]}`: {b["n_images"]} images; {b["unreadable"]} unreadable, {b["skipped"]} skipped. The images are not shipped, only numbers derived from them |
| concepts | {len(concepts)} built of {len(cands)} candidates (concepts with two or more classes); statuses: {", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))}; rule: at least {b["min_images"]} images and {b["min_regions"]} responsible regions under the concept, one concept per set of classes (the others are its aliases) |
| step 1 | {b["method"]} backprop of the ground-truth logit to the layer, channel L2 norm, min/99th-percentile normalisation, threshold {b["threshold"]}; {s1["foreground_fraction"] * 100:.1f}% of positions are responsible regions; backbone top-1 on these images {s1["top1"] * 100:.1f}% |
| step 2 | L2 logistic regression per concept on at most {b["max_positives"]} positive regions; negatives weighted by share: {", ".join(f"{k} {v}" for k, v in shares.items())} (of the positives' weight 1); {b["folds"]}-fold cross-validation by image gives the held-out region F1, the image thresholds and the reliability gate |
| presence | image score = mean of the top {pres.get("pool_fraction", 0) * 100:.0f}% of the concept map; served rule: {pres.get("rule", "–")}{_rule(pres.get("model"))} |
| maps and boxes | {_head(m.get("localisation"))} |
| reliable | {n_rel} of {len(concepts)} concepts (the 95% bootstrap interval of the out-of-fold image AUROC lies above 0.5) |
| step 3 | M = {b["permutations"]} permutations over at most {b["shapley_regions"]} regions r_E ∪ r_b* per concept, seed {b["seed"]}, standard errors in `phi_se` |
| built | library {m["library_version"]}, device `{b["device"]}`; this run: wall {b.get("wall_s", float("nan")):.0f} s, step 1 {t["regions"]:.0f} s, step 2 {t["classifiers"]:.0f} s, Shapley {t["shapley"]:.0f} s, faithfulness {t.get("faithfulness", 0):.0f} s{f" (reused from the step cache: {', '.join(b['reused_from_cache'])})" if b.get("reused_from_cache") else ""}; step 1 ran at {s1["images_per_s"]:.1f} images/s when computed. A whole build from an empty cache: docs/benchmarks.md |

Command (each step is cached by content hash under `model_store/.hint-cache/`; the same seed on the
same machine gives the same tables — `tests/build/test_pipeline.py` checks a rebuild on the test data, to
float tolerance; another machine's BLAS may change the last digits):

```bash
.venv/bin/python -m offline build --data ../shared/data/imagenet-sample --layer {m["layer"]} --out {bank}
.venv/bin/python -m offline head --bank {bank} --calibrate-only --calibrate ../shared/data/imagenet-val-boxes
.venv/bin/python -m offline report {bank} --out {report}
.venv/bin/python scripts/model_card.py {bank} {report}
```

## Concept quality (held-out bank images, cross-validated)

{(report / "f1.md").read_text()}
## Faithfulness (the paper's 20-neuron test, on the paper's levels)

{(report / "faithfulness.md").read_text() if (report / "faithfulness.md").exists() else "Not run for this bank."}
Figures: [top neurons]({rel}/top_neurons.png), [concept ↔ neuron association]({rel}/association.png),
[faithfulness]({rel}/faithfulness.png), [collaborative and multimodal neurons]({rel}/neurons.md).
"""


def _rule(model: dict | None) -> str:
    if not model:
        return ""
    a, b = model["coef"]
    q, soft = model["fit_quality"], model["softmax_quality"]
    why = (
        ""
        if model.get("constrained")
        else (
            f"; no cut met all three on the build photos, so the cut is the logistic model's own 0.5, where the largest "
            f"false-positive rate there is {q['fpr_max']:.2f} against the softmax's {soft['fpr_max']:.2f}"
        )
    )
    return (
        f" (a = {a:.3f}, b = {b:.3f}, c = {model['intercept']:.3f}, cut {model['cut']:g}; on the "
        f"{model['images']} build photos macro-F1 {q['all']:.3f} vs the softmax alone's {soft['all']:.3f}{why})"
    )


def _head(loc: dict | None) -> str:
    if not loc:
        return "the bank layer's concept maps (no localisation head)"
    return (
        f"localisation head `{loc['file']}`: per concept one classifier at each of {', '.join(f'`{x}`' for x in loc['layers'])} "
        f"against {' + '.join(loc['negatives'])}, maps fused ({loc['fuse']}) on {loc['grid'][0]}×{loc['grid'][1]}; "
        f"boxes at {loc['box_threshold']:g} of the min-max normalised map, upsampled {loc['upsample']} "
        f"({loc.get('calibration', {}).get('rule', 'not calibrated')})"
    )


if __name__ == "__main__":
    bank, report = Path(sys.argv[1]), Path(sys.argv[2])
    tmp = bank / ".MODEL_CARD.md.tmp"
    tmp.write_text(card(bank, report))
    tmp.replace(bank / "MODEL_CARD.md")
    print(bank / "MODEL_CARD.md")

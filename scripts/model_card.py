"""Write a bank's MODEL_CARD.md from its manifest and its report (``python -m offline report``).

    python scripts/model_card.py model_store/hint-bank docs/bank-report
"""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path


def card(bank: Path, report: Path) -> str:
    m = json.loads((bank / "manifest.json").read_text())
    b, s1 = m["build"], m["build"]["step1"]
    t = b["timings_s"]
    rel = Path("../..") / report
    return f"""# Model card — default HINT concept bank `{m['bank_id']}`

| | |
|---|---|
| backbone | `{m['backbone']}` (ImageNet-1k weights: {m['weights']}, sha256 `{(m['weights_sha256'] or '')[:16]}…`) |
| hidden layer | `{m['layer']}` — {m['channels']} channels, {s1['map_size'][0]}×{s1['map_size'][1]} map at {m['input_size']}×{m['input_size']} input; post-ReLU: {m['post_relu']}, removed neurons take {'0' if m['post_relu'] else 'the channel mean'} (`baseline: {b['baseline']}`) |
| preprocessing | squash to {m['input_size']}×{m['input_size']} (aspect not kept), RGB, mean {m['mean'][0]:.4f}, std {m['std'][0]:.4f} |
| data | `{b['data']}`: {b['n_images']} ImageNet-1k images, one per class (train-like, not validation); {b['unreadable']} unreadable, {b['skipped']} skipped. The images are not shipped, only numbers derived from them |
| concepts | {len(m['concepts'])}: the paper's levels from `whole` down to `dog` and `car` (`hint.concepts.DEFAULT_CONCEPTS`), in sibling groups of the WordNet hierarchy |
| step 1 | {b['method']} backprop of the ground-truth logit to the layer, channel L2 norm, min/99th-percentile normalisation, threshold {b['threshold']}; {s1['foreground_fraction'] * 100:.1f}% of positions are responsible regions; backbone top-1 on these images {s1['top1'] * 100:.1f}% |
| step 2 | class-balanced L2 logistic regression (L-BFGS), at most {b['max_positives']} positive regions per concept, negatives = sibling regions + as many background positions; {int(b['test_fraction'] * 100)}% of the images held out (stratified) |
| step 3 | M = {b['permutations']} permutations over at most {b['shapley_regions']} regions per concept, seed {b['seed']}, standard errors in `phi_se` |
| built | library {m['library_version']}, {date.today().isoformat()}, device `{b['device']}` (2-core CPU) |
| timings | step 1 {s1['seconds']:.0f} s ({s1['images_per_s']:.1f} images/s, while other jobs shared the CPU), classifiers {t['classifiers']:.0f} s, Shapley {t['shapley']:.0f} s, faithfulness {t.get('faithfulness', 0):.0f} s (see docs/benchmarks.md for throughput on an idle machine) |

Command (same seed → same tables, checked bit for bit from an empty cache; each step is cached by content hash
under `model_store/.hint-cache/`):

```bash
.venv/bin/python -m offline build --data ../shared/data/imagenet-sample --out model_store/hint-bank
.venv/bin/python -m offline report model_store/hint-bank --out docs/bank-report
.venv/bin/python scripts/model_card.py model_store/hint-bank docs/bank-report
```

## Classifier quality (held-out images)

{(report / 'f1.md').read_text()}
Concepts with few images in a one-image-per-class sample (`person`: 3 classes, `plant`: 2) get weak
classifiers; treat their scores with care.

## Faithfulness (the paper's 20-neuron test)

{(report / 'faithfulness.md').read_text()}
Figures: [top neurons]({rel}/top_neurons.png), [concept ↔ neuron association]({rel}/association.png),
[faithfulness]({rel}/faithfulness.png), [collaborative and multimodal neurons]({rel}/neurons.md).
"""


if __name__ == "__main__":
    bank, report = Path(sys.argv[1]), Path(sys.argv[2])
    (bank / "MODEL_CARD.md").write_text(card(bank, report))
    print(bank / "MODEL_CARD.md")

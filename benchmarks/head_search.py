"""Choose the localisation head's layers on the WSOL dev set's selection half only.

Fits the head's classifiers (every bank concept, against the chosen negatives) at each candidate layer
once (``hint.build.head.fit_head``, cached per layer), then serves every candidate layer group through
``Explainer.answer`` on the **selection half** (``hint.evaluation.wsol.metrics.split_indices``) and scores the served
``whole`` and ancestor maps with wsolevaluation's thresholds (``hint.evaluation.wsol.served.calibrate``: the best
pooled GT-known box accuracy over one shared threshold, as the head serves it). The test half is never
read. Writes ``--out`` (JSON and a markdown table)::

    .venv/bin/python benchmarks/head_search.py --bank model_store/hint-bank \\
        --data ../shared/data/imagenet-sample --boxes ../shared/data/imagenet-val-boxes \\
        --layers _blocks.15 _blocks.14 _blocks.12 _blocks.10 _blocks.9 \\
        --groups _blocks.14+_blocks.9 _blocks.14+_blocks.10 ... --out docs/head-search
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hint import wsol, wsol_served  # noqa: E402
from hint.backbones import get_backbone  # noqa: E402
from hint.bank import ConceptBank  # noqa: E402
from hint.build.head import build_samples, fit_head  # noqa: E402
from hint.evaluation.wsol.run import ancestor_concept, whole_concept  # noqa: E402
from hint.explain.explainer import SERVING, Explainer  # noqa: E402
from hint.head import DEFAULT_NEGATIVES, LocalisationHead  # noqa: E402


def layer_head(
    bank: ConceptBank, bank_dir: Path, layer: str, negatives: list[str], cache: Path, data, progress
):
    """The head of one layer, fit once and kept in ``cache``."""
    f = cache / f"head-{bank.id}-{layer}-{'+'.join(negatives)}.safetensors"
    if f.is_file():
        t = load_file(str(f))
        return LocalisationHead([layer], [t["weight"]], [t["bias"]], negatives, t["grid"].tolist())
    head = fit_head(bank, build_samples(bank, bank_dir, data), [layer], cache, negatives, progress=progress)
    save_file({"weight": head.weight[0], "bias": head.bias[0], "grid": torch.tensor(head.grid)}, str(f))
    return head


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bank", type=Path, default=REPO / "model_store" / "hint-bank")
    p.add_argument("--data", type=Path, help="the bank's build images (default: its manifest's)")
    p.add_argument(
        "--boxes",
        type=Path,
        required=True,
        help="WSOL box set (annotations.csv); only its selection half is read",
    )
    p.add_argument("--layers", nargs="+", required=True)
    p.add_argument("--groups", nargs="+", required=True, help="layer groups joined by '+'")
    p.add_argument("--negatives", nargs="+", default=list(DEFAULT_NEGATIVES))
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=None, help="default BANK/../.hint-cache")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    progress = not args.no_progress
    cache = args.cache or args.bank.parent / ".hint-cache"
    cache.mkdir(parents=True, exist_ok=True)
    bank = ConceptBank.load(args.bank)
    h = bank.load_hierarchy()
    t0 = time.perf_counter()
    heads = {
        x: layer_head(bank, args.bank, x, args.negatives, cache, args.data, progress) for x in args.layers
    }
    fit_s = time.perf_counter() - t0
    anns = wsol.load_annotations(args.boxes / "annotations.csv", args.boxes, h)
    selection, _ = wsol.split_indices(len(anns), args.split_seed)
    whole = whole_concept(bank, h)
    ancestors = [ancestor_concept(h.classes[a.label], bank.wnids, h) or whole for a in anns]
    bb = get_backbone(bank.meta["backbone"], bank.meta["layer"])
    rows = []
    for g in args.groups:
        layers = g.split("+")
        parts = [heads[x] for x in layers]
        grid = [max(x.grid[0] for x in parts), max(x.grid[1] for x in parts)]
        bank.head = LocalisationHead(
            layers, [x.weight[0] for x in parts], [x.bias[0] for x in parts], args.negatives, grid
        )
        ex = Explainer(bb, bank, h, **SERVING)
        t = time.perf_counter()
        pooled = wsol_served.calibrate(
            ex, anns, whole, ancestors, selection, bb.input_size, progress=progress
        )
        res = pooled.pop("alone")
        rows.append(
            {
                "group": g,
                "grid": grid,
                "pooled": pooled,
                "whole": res["whole"],
                "ancestor": res["ancestor"],
                "seconds": round(time.perf_counter() - t, 1),
            }
        )
        print(
            f"{g}: pooled {pooled['selection_box_acc']:.3f} at {pooled['box_threshold']}, whole "
            f"{res['whole']['selection_box_acc']:.3f}, ancestor {res['ancestor']['selection_box_acc']:.3f}",
            flush=True,
        )
    best = max(rows, key=lambda r: r["pooled"]["selection_box_acc"])
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": " ".join(["python", "benchmarks/head_search.py", *(argv or sys.argv[1:])]),
        "bank": bank.id,
        "negatives": args.negatives,
        "selection_images": int(len(selection)),
        "split_seed": args.split_seed,
        "fit_seconds": round(fit_s, 1),
        "rows": rows,
        "chosen": best["group"],
    }
    (args.out / "results.json").write_text(json.dumps(doc, indent=1))
    lines = [
        f"Command: `{doc['command']}`",
        "",
        f"Bank `{bank.id}`; head classifiers against {' + '.join(args.negatives)}; served maps on the "
        f"{len(selection)} images of the WSOL dev set's selection half (split seed {args.split_seed}) only. "
        "Box accuracy (IoU ≥ 0.5, largest contour) at the best wsolevaluation threshold, in %:",
        "",
        "| layers | grid | whole + ancestor (one threshold) | threshold | whole | ancestor |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['group']} | {r['grid'][0]}×{r['grid'][1]} | {100 * r['pooled']['selection_box_acc']:.1f} | "
            f"{r['pooled']['box_threshold']:.2f} | {100 * r['whole']['selection_box_acc']:.1f} | "
            f"{100 * r['ancestor']['selection_box_acc']:.1f} |"
        )
    lines += [
        "",
        f"Chosen (best on the selection half, whole and ancestor together): **{best['group']}**.",
        "",
    ]
    (args.out / "results.md").write_text("\n".join(lines))
    print(f"chosen {best['group']}; {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

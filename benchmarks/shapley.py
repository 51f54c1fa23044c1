"""Shapley estimator speed and agreement: HINT's vectorised estimator vs Captum's ShapleyValueSampling.

Same classifier, same regions, same number of permutations. Uses a real concept classifier of a
bank and real regions from the build cache when present, synthetic ones otherwise::

    python benchmarks/shapley.py --bank model_store/hint-bank --concept dog --regions 256 --perms 16 64 256
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import torch

from hint.bank import ConceptBank
from hint.concepts import concept_samples
from hint.hierarchy import Hierarchy
from hint.pipeline import load_table
from hint.shapley import NeuronShapley


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def load_case(bank_dir: Path, concept: str, n: int, seed: int):
    h = Hierarchy.load()
    bank = ConceptBank.load(bank_dir)
    w = h.find(concept).wnid
    e = bank.index(w)
    caches = sorted(glob.glob(str(bank_dir.parent / ".hint-cache" / "regions-*.safetensors")))
    caches = [c for c in caches if "shard" not in c]
    if not caches:
        return None
    table, _ = load_table(Path(caches[0]))
    s = concept_samples(table, w, h.group_parent(w, bank.wnids), h, 4000, seed)
    regions = s.x[s.y > 0.5]
    regions = regions[torch.randperm(len(regions), generator=torch.Generator().manual_seed(seed))[:n]]
    return bank.weight[e], float(bank.bias[e]), bank.baseline, regions, f"{bank_dir.name}:{concept}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", type=Path, default=Path("model_store/hint-bank"))
    ap.add_argument("--concept", default="dog")
    ap.add_argument("--regions", type=int, default=256)
    ap.add_argument("--perms", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from captum.attr import ShapleyValueSampling

    case = load_case(args.bank, args.concept, args.regions, args.seed) if args.bank.exists() else None
    if case is None:
        g = torch.Generator().manual_seed(args.seed)
        d = 112
        case = (torch.randn(d, generator=g) * 0.3, -1.0, torch.zeros(d), torch.rand(args.regions, d, generator=g),
                "synthetic")  # fmt: skip
    w, b, base, regions, name = case
    est = NeuronShapley(w, b, base)

    def forward(x):
        return torch.sigmoid(x @ w + b)

    svs = ShapleyValueSampling(forward)
    print(f"case {name}: N={len(regions)} regions, D={len(w)} neurons, torch threads {torch.get_num_threads()}\n")
    print("| permutations M | HINT estimator (s) | Captum ShapleyValueSampling (s) | speed-up | Spearman ρ (HINT vs Captum) | Spearman ρ (HINT M vs HINT 4096) |")
    print("|---|---|---|---|---|---|")
    ref = est.attribute(regions, n_permutations=4096, seed=args.seed + 1).values
    for m in args.perms:
        t = time.perf_counter()
        ours = est.attribute(regions, n_permutations=m, seed=args.seed).values
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        attr = svs.attribute(regions, baselines=base[None], n_samples=m, perturbations_per_eval=1)
        t_cap = time.perf_counter() - t
        theirs = attr.abs().mean(0).float()
        print(f"| {m} | {t_ours:.3f} | {t_cap:.2f} | {t_cap / t_ours:.0f}× | {spearman(ours, theirs):.4f} | "
              f"{spearman(ours, ref):.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()

"""Shapley estimator speed and agreement: HINT's vectorised estimator vs Captum's ShapleyValueSampling.

Same classifier, same regions, same number of permutations M. Captum runs at its default
``perturbations_per_eval=1`` and at every value of ``--ppe`` (up to D, one model call per
permutation); the table shows the default and the fastest. Every timing is the median of ``--repeats``
runs (at least 5); every run is appended to ``--log`` (docs/benchmarks-shapley.log), the file the
figures in docs/benchmarks.md come from. Uses a real concept classifier of a bank and real regions from
the build cache when present, synthetic ones otherwise::

    python benchmarks/shapley.py --bank model_store/hint-bank --concept dog --regions 256 --perms 16 64 256
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from hint.bank import ConceptBank
from hint.build.concepts import concept_samples
from hint.build.pipeline import load_table
from hint.hierarchy import Hierarchy
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


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    """(median seconds, every run's seconds, the last result) of ``repeats`` calls of ``fn``."""
    runs, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), runs, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", type=Path, default=Path("model_store/hint-bank"))
    ap.add_argument("--concept", default="dog")
    ap.add_argument("--regions", type=int, default=256)
    ap.add_argument("--perms", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--repeats", type=int, default=5, help="timings are the median of this many runs (>= 5)")
    ap.add_argument(
        "--ppe", type=int, nargs="+", default=[4, 16, 0], help="Captum perturbations_per_eval (0: D)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--log", type=Path, default=Path("docs/benchmarks-shapley.log"), help="append every run here"
    )
    args = ap.parse_args()
    if args.repeats < 5:
        ap.error("--repeats must be at least 5")
    from captum.attr import ShapleyValueSampling

    case = load_case(args.bank, args.concept, args.regions, args.seed) if args.bank.exists() else None
    if case is None:
        g = torch.Generator().manual_seed(args.seed)
        d = 112
        case = (
            torch.randn(d, generator=g) * 0.3,
            -1.0,
            torch.zeros(d),
            torch.rand(args.regions, d, generator=g),
            "synthetic",
        )
    w, b, base, regions, name = case
    est = NeuronShapley(w, b, base)
    d = len(w)

    def forward(x):
        return torch.sigmoid(x @ w + b)

    svs = ShapleyValueSampling(forward)
    head = (
        f"{datetime.datetime.now().isoformat(timespec='seconds')} case {name}: N={len(regions)} regions, "
        f"D={d} neurons, {args.repeats} runs per timing, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
        f"{platform.processor() or platform.machine()}"
    )
    log = [head]
    print(head + "\n")
    print(
        "| M | HINT (s) | Captum, perturbations_per_eval=1 (s) | Captum, fastest (s) | speed-up vs Captum "
        "(default / fastest) | Spearman ρ HINT vs Captum | Spearman ρ HINT M vs HINT 4096 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    ref = est.attribute(regions, n_permutations=4096, seed=args.seed + 1).values
    for m in args.perms:
        t_ours, r_ours, res = timed(
            lambda m=m: est.attribute(regions, n_permutations=m, seed=args.seed), args.repeats
        )
        ours = res.values
        captum = {}  # perturbations_per_eval -> (median, runs, attributions)
        for ppe in dict.fromkeys([1, *(k or d for k in args.ppe)]):
            captum[ppe] = timed(
                lambda m=m, ppe=ppe: svs.attribute(
                    regions, baselines=base[None], n_samples=m, perturbations_per_eval=ppe
                ),
                args.repeats,
            )
        fastest = min(captum, key=lambda k: captum[k][0])
        t_one, t_fast = captum[1][0], captum[fastest][0]
        theirs = captum[1][2].abs().mean(0).float()
        row = (
            f"| {m} | {t_ours:.3f} | {t_one:.2f} | {t_fast:.2f} (ppe={fastest}) | {t_one / t_ours:.0f}× / "
            f"{t_fast / t_ours:.0f}× | {spearman(ours, theirs):.4f} | {spearman(ours, ref):.4f} |"
        )
        print(row, flush=True)
        log.append(f"  M={m} hint: " + " ".join(f"{x:.4f}" for x in r_ours) + " s")
        for ppe, (med, runs, _) in captum.items():
            log.append(
                f"  M={m} captum perturbations_per_eval={ppe}: "
                + " ".join(f"{x:.4f}" for x in runs)
                + f" s (median {med:.4f})"
            )
        log.append("  " + row)
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        with open(args.log, "a") as fh:
            fh.write("\n".join(log) + "\n\n")
        print(f"\nruns appended to {args.log}")


if __name__ == "__main__":
    main()

"""Shapley values of neurons (channels) for linear concept classifiers, as in HINT.

For a concept classifier L_e(r) = σ(αᵀr + b) and a coalition S of neurons, neurons outside S are
set to a baseline value β (0 after a ReLU; the channel mean otherwise):

    L_e^S(r) = σ(b + Σ_{j∈S} α_j r_j + Σ_{j∉S} α_j β_j).

The paper's estimator over M random permutations (S_i = the neurons before d in permutation i)
and the N regions r of the concept is

    φ(d, e) = Σ_r |Σ_{i=1..M} (L_e^{S_i∪d}(r) − L_e^{S_i}(r))| / (M·N).

One permutation gives the marginal contributions of *all* D neurons from a single cumulative sum
of the per-neuron logit terms, so it costs O(N·D), not O(N·D²).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch


@dataclass
class ShapleyResult:
    """Shapley values φ (D,), their standard errors (D,), and the number of permutations used."""

    values: torch.Tensor
    stderr: torch.Tensor
    n_permutations: int
    signed: torch.Tensor  # per-region signed Shapley values (N, D), averaged over permutations


class NeuronShapley:
    """Permutation-sampling Shapley values of the input neurons of a logistic classifier."""

    def __init__(
        self, weight: torch.Tensor, bias: float | torch.Tensor, baseline: torch.Tensor | None = None
    ):
        self.weight = weight.detach().float().reshape(-1)
        self.bias = float(bias)
        d = self.weight.numel()
        self.baseline = torch.zeros(d) if baseline is None else baseline.detach().float().reshape(-1)
        if self.baseline.numel() != d:
            raise ValueError(f"baseline has {self.baseline.numel()} values for {d} neurons")

    def _terms(self, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, base = self.weight.to(regions.device), self.baseline.to(regions.device)
        terms = (regions.float() - base) * w  # (N, D): what each neuron adds to the logit
        empty = self.bias + (w * base).sum()  # logit of the empty coalition
        return terms, empty.expand(regions.shape[0])

    def _ordered_marginals(
        self, terms: torch.Tensor, empty: torch.Tensor, perms: torch.Tensor
    ) -> torch.Tensor:
        """Marginal contributions (N, P, D) in *permutation order*: entry k of permutation p is neuron
        perms[p, k]'s contribution when added after perms[p, :k] (one cumulative sum per permutation)."""
        n, (p, d) = terms.shape[0], perms.shape
        cum = terms.index_select(1, perms.reshape(-1)).view(n, p, d).cumsum_(-1).add_(empty[:, None, None])
        prob = cum.sigmoid_()  # probabilities of the growing coalitions
        delta = torch.empty_like(prob)
        torch.sub(prob[..., 1:], prob[..., :-1], out=delta[..., 1:])
        torch.sub(prob[..., 0], torch.sigmoid(empty)[:, None], out=delta[..., 0])
        return delta

    def _marginals(self, terms: torch.Tensor, empty: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
        """Marginal contributions (P, N, D) in neuron order."""
        delta = self._ordered_marginals(terms, empty, perms)
        out = torch.empty_like(delta).scatter_(-1, perms[None].expand_as(delta), delta)
        return out.permute(1, 0, 2)

    @torch.no_grad()
    def attribute(
        self,
        regions: torch.Tensor,
        n_permutations: int = 256,
        seed: int = 0,
        chunk: int = 64,
        top_k: int | None = None,
        patience: int = 0,
        min_permutations: int = 32,
    ) -> ShapleyResult:
        """Estimate φ for ``regions`` (N, D).

        Stops after ``n_permutations``, or earlier when ``top_k`` and ``patience`` are set and the
        top-k neuron set stayed the same for ``patience`` consecutive chunks (after ``min_permutations``).
        """
        if regions.ndim != 2 or regions.shape[1] != self.weight.numel():
            raise ValueError(f"regions must be (N, {self.weight.numel()}), got {tuple(regions.shape)}")
        n, d = regions.shape
        if n == 0:
            raise ValueError("no regions to attribute")
        terms, empty = self._terms(regions)
        gen = torch.Generator().manual_seed(seed)
        s1 = torch.zeros(n, d, device=regions.device)
        g1 = torch.zeros(d, dtype=torch.float64, device=regions.device)
        g2 = torch.zeros_like(g1)
        done, stable, last = 0, 0, None
        while done < n_permutations:
            p = min(chunk, n_permutations - done)
            perms = torch.rand(p, d, generator=gen).argsort(1).to(regions.device)  # p random permutations
            delta = self._ordered_marginals(terms, empty, perms)  # (N, P, D), permutation order
            s1.scatter_add_(1, perms.reshape(1, -1).expand(n, -1), delta.reshape(n, -1))
            # each permutation's linearised estimate of φ: mean_r sign(φ_r) Δ(r), back in neuron order
            sign = s1.sign().index_select(1, perms.reshape(-1)).view(n, p, d)
            g_ordered = (delta * sign).mean(0)
            g = torch.empty_like(g_ordered).scatter_(1, perms, g_ordered).double()
            g1 += g.sum(0)
            g2 += (g * g).sum(0)
            done += p
            if top_k and patience:
                top = set(s1.abs().sum(0).topk(min(top_k, d)).indices.tolist())
                stable = stable + 1 if top == last else 0
                last = top
                if done >= min_permutations and stable >= patience:
                    break
        return _summarise(s1, g1, g2, done)

    @torch.no_grad()
    def exact(self, regions: torch.Tensor) -> ShapleyResult:
        """φ from all D! permutations (for small D, in tests)."""
        d = regions.shape[1]
        if d > 8:
            raise ValueError("exact Shapley values need D <= 8")
        perms = torch.tensor(list(itertools.permutations(range(d))), device=regions.device)
        terms, empty = self._terms(regions)
        delta = self._marginals(terms, empty, perms).double()
        s1 = delta.sum(0)
        g = (delta * s1.sign()).mean(1)
        res = _summarise(s1, g.sum(0), (g * g).sum(0), len(perms))
        res.stderr.zero_()  # every permutation enumerated: no sampling error
        return res


def _summarise(s1: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, m: int) -> ShapleyResult:
    """φ = mean_r |mean_i Δ_i(r)|; its standard error from the per-permutation linearised estimates
    g_i = mean_r sign(φ_r) Δ_i(r), which keeps the correlation between regions (same permutations)."""
    mean = s1.double() / m  # signed Shapley value of each neuron on each region
    values = mean.abs().mean(0)
    var = (g2 / m - (g1 / m) ** 2).clamp_min(0) * (m / max(m - 1, 1))
    return ShapleyResult(values.float(), (var / m).sqrt().float(), m, mean.float())

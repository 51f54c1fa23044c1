"""Per-image neuron contributions and ablation through the network.

**Image-specific Shapley values.** For concept *e* and one image, the region is a set of cells of the
hooked layer's map (by default the cells of *e*'s concept map at or above ``threshold`` × its maximum,
the region its box outlines; or the step-1 responsible region of the predicted class, see
:func:`responsible_region`).

*Served: the probe-logit game* (:func:`image_logit_shapley`). v(S) = mean over the region of e's probe
logit b + Σ_{j∈S} α_j r_j + Σ_{j∉S} α_j β_j. It is additive in the neurons, so its Shapley values are
exact and closed-form: α_d · mean_r (r_d − β_d) (signed), one matrix product for all concepts.

*On request (``permutations``): the probability game*, the paper's. Every cell r is a game of the D
neurons, exactly as in the bank's step 3:
L_e^S(r) = σ(b + Σ_{j∈S} α_j r_j + Σ_{j∉S} α_j β_j) with β the bank's baseline, and the estimator is
the bank's own (:class:`hint.shapley.NeuronShapley`: M seeded permutations, marginal contributions from
one cumulative sum per permutation). Per neuron d this gives

* the signed value  φ_s(d, e) = mean_r mean_i Δ_i(d, r)   (its mean push on the concept probability),
* the paper's form  φ(d, e)   = mean_r |mean_i Δ_i(d, r)| (what the bank's tables hold, per image).

Per cell the signed values add up to L_e(r) − L_e^∅(r) (efficiency) whatever M is.
:func:`image_shapley` plays all of an image's concepts in one pass (:class:`RowsShapley`: each region
row with its own concept's probe, the same permutations for all).

**Ablation.** :class:`ChannelEdit` is the forward hook's edit: listed channels of the hooked layer's
output set to the bank's baseline, per batch item, and the forward pass continues from there.
"""

from __future__ import annotations

import functools

import torch

from hint.shapley import NeuronShapley


class RowsShapley(NeuronShapley):
    """:class:`NeuronShapley` over region rows of several concepts: row i is played with the probe of
    concept ``owner[i]`` (``weight`` (E, D), ``bias`` (E,)). The estimator code and the permutation
    draws are NeuronShapley's: for the rows of one concept, :meth:`signed_values` equals
    ``NeuronShapley(weight[e], bias[e], baseline).attribute(rows, M, seed).signed``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, baseline: torch.Tensor, owner: torch.Tensor):
        super().__init__(weight[0], 0.0, baseline)
        self.weights = weight.detach().float()
        self.biases = bias.detach().float().reshape(-1)
        self.owner = owner.long()

    def _terms(self, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev = regions.device
        w, base, owner = self.weights.to(dev), self.baseline.to(dev), self.owner.to(dev)
        terms = (regions.float() - base) * w.index_select(0, owner)  # (N, D): what each neuron adds
        empty = (self.biases.to(dev) + (w * base).sum(1)).index_select(
            0, owner
        )  # logit of the empty coalition
        return terms, empty

    @torch.no_grad()
    def signed_values(
        self, regions: torch.Tensor, n_permutations: int = 8, seed: int = 0, chunk: int = 64, cols: int = 512
    ) -> torch.Tensor:
        """Signed Shapley values (N, D) of every row over ``n_permutations`` permutations: what
        :meth:`attribute` returns as ``signed`` (same permutation draws, same arithmetic: one cumulative
        sum per permutation, σ, successive differences, summed in permutation order), without its
        standard-error bookkeeping and laid out neurons × rows, so that a permutation gathers and
        scatters whole rows (~1.4× faster on CPU), ``cols`` rows at a time. Returned as a (N, D) view."""
        if (
            regions.ndim != 2
            or regions.shape[1] != self.weight.numel()
            or regions.shape[0] != self.owner.numel()
        ):
            raise ValueError(
                f"regions must be ({self.owner.numel()}, {self.weight.numel()}), got {tuple(regions.shape)}"
            )
        n, d = regions.shape
        terms, empty = self._terms(regions)
        order = permutations(n_permutations, d, seed, chunk).to(regions.device)
        s1 = torch.empty(d, n, device=regions.device)
        perms = order.unbind(0)
        for c0 in range(0, n, cols):
            t = terms[c0 : c0 + cols].T.contiguous()  # (D, m)
            e = empty[c0 : c0 + cols]
            e0 = torch.sigmoid(e)
            prob, delta, acc = torch.empty_like(t), torch.empty_like(t), torch.zeros_like(t)
            later, earlier, first, d_later, d_first = prob[1:], prob[:-1], prob[0], delta[1:], delta[0]
            for perm in perms:
                torch.index_select(t, 0, perm, out=prob)
                prob.cumsum_(0).add_(e).sigmoid_()  # probabilities of the growing coalitions
                torch.sub(later, earlier, out=d_later)
                torch.sub(first, e0, out=d_first)
                acc.index_add_(0, perm, delta)  # marginal contributions, back in neuron order
            s1[:, c0 : c0 + cols] = acc
        return s1.div_(max(len(order), 1)).T


@functools.lru_cache(maxsize=16)
def permutations(n: int, d: int, seed: int = 0, chunk: int = 64) -> torch.Tensor:
    """The ``n`` permutations (n, d) that ``NeuronShapley.attribute(..., n, seed, chunk)`` draws (memoised:
    a request with the same M and seed reuses them; read only)."""
    gen = torch.Generator().manual_seed(seed)
    parts = [torch.rand(min(chunk, n - i), d, generator=gen).argsort(1) for i in range(0, n, chunk)]
    return torch.cat(parts) if parts else torch.empty(0, d, dtype=torch.long)


def image_shapley(
    z: torch.Tensor,
    masks: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    baseline: torch.Tensor,
    n_permutations: int = 8,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(signed (K, D), absolute (K, D)) Shapley values of the D neurons for K concepts on one image.

    ``z`` (D, h, w): the image's activations; ``masks`` (K, h·w) bool: each concept's region cells
    (none empty); ``weight`` (K, D), ``bias`` (K,): the concepts' probes. Signed = mean over the
    region of the per-cell signed values; absolute = mean of their magnitudes (the paper's form).
    """
    d = z.shape[0]
    cells = z.reshape(d, -1).T.float()  # (h·w, D)
    masks = masks.to(cells.device)
    counts = masks.sum(1)
    if (counts == 0).any():
        raise ValueError("every concept needs at least one region cell")
    owner, cell = masks.nonzero(as_tuple=True)
    est = RowsShapley(weight, bias, baseline, owner)
    per_cell = est.signed_values(cells.index_select(0, cell), n_permutations, seed).T  # (D, N), contiguous
    mean = torch.zeros(
        owner.numel(), masks.shape[0], device=cells.device
    )  # (N, K): each row's share of its concept
    mean[torch.arange(owner.numel(), device=cells.device), owner] = 1.0 / counts.float()[owner]
    return (per_cell @ mean).T, (per_cell.abs() @ mean).T


def image_logit_shapley(
    z: torch.Tensor, masks: torch.Tensor, weight: torch.Tensor, baseline: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(signed (K, D), absolute (K, D)) exact Shapley values of the D neurons for K concepts on one
    image, in the probe-logit game.

    The game of concept e is v(S) = mean_{r∈R} (b + Σ_{j∈S} α_j z_j(r) + Σ_{j∉S} α_j β_j) over e's
    region R (β: the bank's baseline). It is additive in the neurons, so every permutation gives neuron
    d the same marginal contribution and its Shapley value is exact and closed-form: per cell
    α_d (z_d(r) − β_d). Signed = its mean over R; absolute = the mean of its magnitude. The signed
    values add up to v(all) − v(∅) (efficiency); the bias cancels.

    Args:
        z: the image's activations (D, h, w).
        masks: each concept's region cells, bool (K, h·w), none empty.
        weight: the concepts' probe weights α (K, D).
        baseline: the bank's baseline β (D,).

    Returns:
        (signed, absolute), each (K, D).
    """
    d = z.shape[0]
    dev = z.reshape(d, -1).float() - baseline.float().to(z.device).view(-1, 1)  # (D, h·w)
    masks = masks.to(dev.device)
    counts = masks.sum(1, keepdim=True)
    if (counts == 0).any():
        raise ValueError("every concept needs at least one region cell")
    share = masks.float() / counts.float()  # (K, h·w): each cell's share of its concept's mean
    w = weight.float().to(dev.device)
    return w * (share @ dev.T), w.abs() * (share @ dev.abs().T)


def rank_of(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Ranks (K, k) of the entries ``index`` (K, k) within their rows of ``values`` (K, D), as
    :func:`ranks` gives them, without ranking the whole rows."""
    picked = values.gather(1, index)
    return (values.unsqueeze(1) > picked.unsqueeze(2)).sum(2) + 1


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Rank of every entry within its row, 1 = largest; ties share the better rank
    (1 + how many entries of the row are strictly larger)."""
    asc = values.sort(dim=-1).values.contiguous()
    return values.shape[-1] - torch.searchsorted(asc, values.contiguous(), right=True) + 1


class ChannelEdit:
    """A forward hook's edit of the hooked layer's output: for batch item i, the channels ``edits[i]``
    set to ``baseline``; the network then continues from the edited map. ``None`` entries stay as they
    are. Equivalent to a plain hook ``out = out.clone(); out[i, c] = baseline[c]; return out``. An output
    of batch size 1 with several edits is first repeated once per edit (the network before the layer
    runs once for them all)."""

    def __init__(self, baseline: torch.Tensor, edits: list[list[int] | None]):
        self.baseline, self.edits = baseline, edits

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.shape[0] == 1 and len(self.edits) > 1:
            output = output.expand(len(self.edits), *output.shape[1:])
        out = output.clone()
        for i, channels in enumerate(self.edits):
            if channels:
                idx = torch.as_tensor(channels, dtype=torch.long, device=out.device)
                out[i, idx] = self.baseline.to(out.device, out.dtype)[idx].view(-1, 1, 1)
        return out


def responsible_region(
    backbone, x: torch.Tensor, target: int, threshold: float = 0.5, quantile: float = 0.99
):
    """Step 1 at request time: (normalised guided-backprop saliency (h, w), region mask (h, w)) of
    class ``target`` for one preprocessed image ``x`` (1, 3, H, W), as the bank's build computes it
    (:mod:`hint.regions`: channel L2 norm, min / 99th-percentile normalisation, > ``threshold``).
    An empty region (a flat saliency map) is the whole map."""
    from hint.regions import GuidedBackprop, responsible_regions

    with torch.inference_mode(False):
        x = x.detach().clone()
        with GuidedBackprop(backbone.model, backbone.layer_module()) as gb:
            _, attr = gb.attribute(x, torch.tensor([int(target)], device=x.device))
        sal, mask = responsible_regions(attr.detach(), threshold, quantile)
    sal, mask = sal[0].detach().clone(), mask[0].detach().clone()
    if not mask.any():
        mask = torch.ones_like(mask)
    return sal, mask

"""One codebook split into text-specific, shared and graph-specific regions (MedTok eq. 3-5).

Global ids: text region ``[0, n_text)``, shared ``[n_text, n_text + n_shared)``, graph
``[n_text + n_shared, size)``. The ranges never overlap, so a token id alone says which region it
came from (the authors' code lets graph ids collide with text ids; this layout cannot).

Each embedding takes its K nearest vectors in its region; the quantised vector is their
softmax(-distance / tau)-weighted sum, passed to the encoder with the straight-through estimator.
Embeddings and codebook vectors are L2-normalised before the distance (as in ViT-VQGAN): with raw
vectors the encoder outran the codebook and most codes went unused.
With ``mode="pursuit"`` the K tokens are picked by matching pursuit instead: each pick is the
region vector most correlated with what the previous picks leave unexplained, its weight the
projection coefficient (signed; the weights no longer sum to 1), and the quantised vector the sum
of the K weighted picks. The softmax-weighted mix of the K nearest lost much of the continuous
text embedding's ICD-9 -> ICD-10-CM retrieval; pursuit with the same K and codebook kept nearly
all of it (the measurement: docs/medtok_quality_ablations.md, "Quantisation").
Dead codes are handled by (1) initialising each region with k-means on real embeddings and
(2) restarting rarely used codes on recent embeddings of their region during training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

REGIONS = ("text", "shared", "graph")


def region_sizes(size: int, text_frac: float, shared_frac: float) -> tuple[int, int, int]:
    n_text = int(round(size * text_frac))
    n_shared = int(round(size * shared_frac))
    n_graph = size - n_text - n_shared
    if min(n_text, n_shared, n_graph) < 1:
        raise ValueError(f"codebook of {size} leaves an empty region (fractions {text_frac}, {shared_frac})")
    return n_text, n_shared, n_graph


@dataclass
class QuantOut:
    quantized: torch.Tensor   # [B, d] straight-through output
    soft: torch.Tensor        # [B, d] weighted codebook vectors (gradient to the codebook)
    ids: torch.Tensor         # [B, K] global codebook ids
    weights: torch.Tensor     # [B, K]
    log_probs: torch.Tensor   # [B, region size] log softmax(-dist/tau) over the whole region
    vq_loss: torch.Tensor     # scalar: codebook + beta * commitment


def kmeans(x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Plain Lloyd k-means (random-sample init); empty clusters are re-seeded from random points."""
    n = x.shape[0]
    idx = torch.randint(n, (k,), generator=generator) if n < k else torch.randperm(n, generator=generator)[:k]
    centers = x[idx].clone()
    if n < k:  # fewer points than codes: jitter duplicates apart
        centers += 0.01 * x.std() * torch.randn(centers.shape, generator=generator)
    for _ in range(iters):
        assign = torch.cdist(x, centers).argmin(1)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        centers = torch.where(empty[:, None], centers, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            refill = torch.randint(n, (int(empty.sum()),), generator=generator)
            centers[empty] = x[refill] + 0.01 * x.std() * torch.randn(len(refill), x.shape[1], generator=generator)
    return centers


def matching_pursuit(x: torch.Tensor, book: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K greedy picks from ``book`` (unit rows) explaining ``x``: (ids [B, K], signed coefficients
    [B, K], their weighted sum [B, d]). Picks are discrete; the coefficients and the sum are
    differentiable in ``x`` and in the codebook."""
    residual = x
    ids, coefs = [], []
    for _ in range(k):
        with torch.no_grad():
            pick = (residual @ book.t()).abs().argmax(-1)
        atom = book[pick]
        coef = (residual * atom).sum(-1)
        residual = residual - coef.unsqueeze(-1) * atom
        ids.append(pick)
        coefs.append(coef)
    return torch.stack(ids, 1), torch.stack(coefs, 1), x - residual


class RegionedCodebook(nn.Module):
    def __init__(self, size: int, dim: int, text_frac: float = 0.3, shared_frac: float = 0.4,
                 top_k: int = 5, tau: float = 0.1, beta: float = 0.25, mode: str = "softmax"):
        super().__init__()
        if mode not in ("softmax", "pursuit"):
            raise ValueError(f"quantizer mode must be softmax or pursuit, got {mode!r}")
        self.size, self.dim, self.top_k, self.tau, self.beta, self.mode = size, dim, top_k, tau, beta, mode
        n_text, n_shared, n_graph = region_sizes(size, text_frac, shared_frac)
        self.offsets = {"text": 0, "shared": n_text, "graph": n_text + n_shared}
        self.counts = {"text": n_text, "shared": n_shared, "graph": n_graph}
        if top_k > min(self.counts.values()):
            raise ValueError(f"top_k={top_k} exceeds the smallest codebook region ({min(self.counts.values())})")
        self.embedding = nn.Parameter(torch.randn(size, dim) / dim ** 0.5)
        # Weighted picks of each code since the last dead-code check; persisted for resume.
        self.register_buffer("usage", torch.zeros(size))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def region_range(self, region: str) -> tuple[int, int]:
        start = self.offsets[region]
        return start, start + self.counts[region]

    def region_of(self, ids: torch.Tensor) -> torch.Tensor:
        """0 text, 1 shared, 2 graph for each global id."""
        return (ids >= self.offsets["shared"]).long() + (ids >= self.offsets["graph"]).long()

    def forward(self, x: torch.Tensor, region: str) -> QuantOut:
        lo, hi = self.region_range(region)
        book = F.normalize(self.embedding[lo:hi], dim=-1)
        x = F.normalize(x, dim=-1)
        dist = (2 - 2 * x @ book.t()).clamp(min=0)  # squared distance of unit vectors
        log_probs = F.log_softmax(-dist / self.tau, dim=-1)
        if self.mode == "pursuit":
            top_i, weights, soft = matching_pursuit(x, book, self.top_k)
        else:
            top_d, top_i = dist.topk(self.top_k, dim=-1, largest=False)
            weights = F.softmax(-top_d / self.tau, dim=-1)
            soft = (weights.unsqueeze(-1) * book[top_i]).sum(1)
        # eq. 5: move the codebook towards the (frozen) encoder output, and commit the encoder.
        vq_loss = F.mse_loss(soft, x.detach()) + self.beta * F.mse_loss(x, soft.detach())
        quantized = x + (soft - x).detach()
        if self.training:
            self._update_usage(top_i + lo, weights)
        return QuantOut(quantized, soft, top_i + lo, weights, log_probs, vq_loss)

    @torch.no_grad()
    def _update_usage(self, ids: torch.Tensor, weights: torch.Tensor) -> None:
        self.usage.index_add_(0, ids.reshape(-1), weights.reshape(-1).detach().abs())

    @torch.no_grad()
    def init_from_data(self, samples: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> None:
        """k-means each region on embeddings that will be quantised into it."""
        for region, x in samples.items():
            lo, hi = self.region_range(region)
            self.embedding.data[lo:hi] = kmeans(F.normalize(x.detach().float(), dim=-1), hi - lo, generator=generator)
        self.usage.zero_()
        self.initialized.fill_(True)

    @torch.no_grad()
    def restart_dead(self, samples: dict[str, torch.Tensor], rel_threshold: float,
                     generator: torch.Generator | None = None) -> int:
        """Move codes used less than ``rel_threshold`` x their region's mean usage since the last
        check onto recent embeddings, then start counting afresh."""
        restarted = 0
        for region, x in samples.items():
            lo, hi = self.region_range(region)
            usage = self.usage[lo:hi]
            threshold = rel_threshold * usage.mean()
            dead = (usage < threshold).nonzero().squeeze(1)
            if dead.numel() == 0 or x.shape[0] == 0:
                continue
            pick = torch.randint(x.shape[0], (dead.numel(),), generator=generator)
            noise = 0.05 * torch.randn(dead.numel(), self.dim, generator=generator) / self.dim ** 0.5
            self.embedding.data[lo + dead] = F.normalize(x[pick].detach().float(), dim=-1) + noise
            restarted += dead.numel()
        self.usage.zero_()
        return restarted

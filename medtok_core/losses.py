"""MedTok training objective: VQ (eq. 5) + token packing (Sec. 3.2).

Shared information: the two cross-modality embeddings should land on the same shared tokens
(symmetric KL between their distance distributions over the shared region - the term the
authors' code leaves out), be mutually identifiable in the batch (InfoNCE) and close (alignment).
Specific information: each specific token should still identify its own code under
augmentation (InfoNCE against an augmented view) and carry what the shared token does not
(orthogonality to the shared token of the same modality).

The contrastive, alignment and orthogonality terms act on the encoder outputs before quantisation.
On the quantised (straight-through) vectors their value is a mix of a few codebook vectors, and a
first run collapsed both cross embeddings onto one code (InfoNCE at log(batch)); the VQ term
ties the quantised vectors to these outputs, and the KL acts on the codebook distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medtok_core.model import EMBEDDING_NAMES, MedTokOutput


@dataclass
class LossWeights:
    vq: float = 1.0  # weight of the quantisation loss
    kl: float = 1.0  # weight of text/graph shared-token KL
    shared_nce: float = 1.0  # weight of text-graph InfoNCE (shared)
    align: float = 1.0  # weight of text-graph cosine alignment
    specific_nce: float = 0.5  # weight of augmented-view InfoNCE (specific)
    ortho: float = 0.1  # weight of shared/specific orthogonality
    temperature: float = 0.1  # InfoNCE temperature


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` should match row i of ``b`` among all rows of the batch."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def symmetric_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    kl_pq = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")  # KL(p || q)
    kl_qp = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")  # KL(q || p)
    return 0.5 * (kl_pq + kl_qp)


def orthogonality(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a, b, dim=-1).pow(2).mean()


def medtok_losses(out: MedTokOutput, aug: dict[str, torch.Tensor] | None, w: LossWeights) -> dict[str, torch.Tensor]:
    """Every loss component (unweighted) plus ``total`` (weighted sum)."""
    q = out.pre
    parts = {
        "vq": sum(out.quant[n].vq_loss for n in EMBEDDING_NAMES),
        "kl": symmetric_kl(out.quant["text_cross"].log_probs, out.quant["graph_cross"].log_probs),
        "shared_nce": info_nce(q["text_cross"], q["graph_cross"], w.temperature),
        "align": (1 - F.cosine_similarity(q["text_cross"], q["graph_cross"], dim=-1)).mean(),
        "ortho": orthogonality(q["text_specific"], q["text_cross"])
        + orthogonality(q["graph_specific"], q["graph_cross"]),
    }
    if aug is not None:
        parts["specific_nce"] = (info_nce(q["text_specific"], aug["text_specific"], w.temperature)
                                 + info_nce(q["graph_specific"], aug["graph_specific"], w.temperature))
    parts["total"] = sum(getattr(w, k) * v for k, v in parts.items())
    return parts

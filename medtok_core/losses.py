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

from dataclasses import dataclass, field

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
    # Keep the text-specific embedding's geometry that of the frozen description vectors
    # (batch cosine-similarity matrices matched, MSE): MedTok should not lose what its text knows.
    text_distill: float = 0.0
    # 0: match the similarity matrices (MSE); > 0: match each row's softmax over the batch at this
    # temperature (KL), which weighs a code's nearest neighbours, what retrieval ranks, most.
    distill_temperature: float = 0.0
    # The same distillation on the whole exported embedding (the four parts as the part gates
    # weigh them): with per-code part weights learnt by the link loss alone, retrieval of a code's
    # textual equivalents (ICD-9 -> ICD-10-CM) fell below the text-only model's.
    fused_distill: float = 0.0
    # Code systems left out of fused_distill. An ATC drug's description is its bare name, and a
    # name says little about what a drug does (the raw description vector ranks a drug's held-out
    # interaction partners at chance): holding the whole embedding to name neighbours there only
    # dilutes the graph parts. The text-specific part keeps them (text_distill).
    fused_distill_exclude_systems: list[str] = field(default_factory=list)
    # True: those systems are left out of text_distill too, so not even their text-specific part is
    # held to name neighbours.
    text_distill_excludes_them: bool = False
    # Link prediction over code pairs joined in the training graph (TrainConfig.link_relations):
    # InfoNCE between the two codes' fused embeddings, in-batch negatives.
    link: float = 0.0
    # Share of the distillation and link terms computed on the quantised embedding (the exported
    # weighted codebook sums, differentiable in the encoder and the codebook) rather than on the
    # encoder output: what users get is the quantised vector, and the continuous one alone left a
    # large quantisation gap on retrieval.
    quantized_share: float = 0.0


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


def similarity_distill(x: torch.Tensor, ref: torch.Tensor, temperature: float = 0.0) -> torch.Tensor:
    """Batch cosine similarities of ``x`` made those of the reference vectors: MSE of the matrices,
    or with ``temperature`` > 0 the KL between their rows' softmaxes (the diagonal left out)."""
    sx = F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).t()
    sr = (F.normalize(ref.float(), dim=-1) @ F.normalize(ref.float(), dim=-1).t()).detach()
    if temperature <= 0:
        return (sx - sr).pow(2).mean()
    eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
    log_q = F.log_softmax((sx / temperature).masked_fill(eye, -1e4), dim=-1)
    log_p = F.log_softmax((sr / temperature).masked_fill(eye, -1e4), dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


def mix(share: float, loss_fn, continuous: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """(1 - share) * loss on the encoder output + share * loss on the quantised vector."""
    if share <= 0:
        return loss_fn(continuous)
    if share >= 1:
        return loss_fn(quantized)
    return (1 - share) * loss_fn(continuous) + share * loss_fn(quantized)


def medtok_losses(out: MedTokOutput, aug: dict[str, torch.Tensor] | None, w: LossWeights,
                  text_ref: torch.Tensor | None = None,
                  fused_rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every loss component (unweighted) plus ``total`` (weighted sum).

    ``text_ref`` [B, Dt]: the frozen description vectors, for the ``text_distill`` term;
    ``fused_rows`` [B] bool: the rows that take part in ``fused_distill`` (None: all), and in
    ``text_distill`` too with ``w.text_distill_excludes_them``."""
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
    def distill_to(ref: torch.Tensor):
        return lambda x: similarity_distill(x, ref, w.distill_temperature)

    if w.text_distill > 0 and text_ref is not None:
        ref, specific, soft = text_ref, q["text_specific"], out.quant["text_specific"].soft
        if w.text_distill_excludes_them and fused_rows is not None:
            ref, specific, soft = ref[fused_rows], specific[fused_rows], soft[fused_rows]
        if len(ref) >= 2:  # a similarity matrix needs two codes
            parts["text_distill"] = mix(w.quantized_share, distill_to(ref), specific, soft)
    if w.fused_distill > 0 and text_ref is not None:
        rows = slice(None) if fused_rows is None else fused_rows
        if len(text_ref[rows]) >= 2:  # a similarity matrix needs two codes
            parts["fused_distill"] = mix(w.quantized_share, distill_to(text_ref[rows]),
                                         out.continuous()[rows], out.embedding()[rows])
    parts["total"] = sum(getattr(w, k) * v for k, v in parts.items() if k != "total")
    return parts

"""Description-text embeddings: a token with a description (metadata/codes.parquet) gets MLP(frozen
sentence-encoder embedding of it), so an unseen code with a description still has a meaningful
input; tokens without one get a learned row. The encoder is the project's (medtok_core.text_encoder,
MiniLM by default), run once when the model is built."""

from __future__ import annotations

import torch

from ehr.code_embeddings.base import CodeEmbedding, register


@register
class TextDescriptions(CodeEmbedding):
    name = "text"
    summary = "frozen sentence embeddings of code descriptions through an MLP projector; others learned"

    def __init__(self, vocab, hidden, opts, encoded: torch.Tensor | None = None):
        super().__init__(vocab, hidden, opts)
        described = [t for t in vocab.tokens if vocab.descriptions.get(t)]
        if encoded is None:
            from medtok_core.text_encoder import encode_texts

            encoded = encode_texts([vocab.descriptions[t] for t in described], opts.text_encoder)
        table = torch.zeros(len(vocab), encoded.shape[1])
        mask = torch.zeros(len(vocab), dtype=torch.bool)
        for t, e in zip(described, encoded, strict=True):
            table[vocab.index[t]], mask[vocab.index[t]] = e.float(), True
        self.register_buffer("text", table)
        self.register_buffer("has_text", mask)
        self.add_projector_with_fallback(table.shape[1])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.projected_or_learned(ids, self.text, self.has_text)

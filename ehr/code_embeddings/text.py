"""Description-text embeddings: a token with a description (metadata/codes.parquet) gets MLP(frozen
sentence-encoder embedding of it), so an unseen code with a description still has a meaningful
input; tokens without one get a learned row. The encoder is the project's (medtok_core.text_encoder,
MiniLM by default), run once when the model is built."""

from __future__ import annotations

import torch
from torch import nn

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
        self.projector = nn.Sequential(nn.Linear(table.shape[1], opts.projector_hidden), nn.GELU(),
                                       nn.Linear(opts.projector_hidden, hidden))
        self.table = nn.Embedding(len(vocab), hidden)
        self.register_buffer("rows", self.learned_ids(), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        learned = self.table(self.rows[ids])
        return torch.where(self.has_text[ids].unsqueeze(-1), self.projector(self.text[ids]), learned)

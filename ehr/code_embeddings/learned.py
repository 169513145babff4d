"""The baseline: a learned table, one row per token (tokens rare in training share [UNK])."""

from __future__ import annotations

import torch
from torch import nn

from ehr.code_embeddings.base import CodeEmbedding, register


@register
class Learned(CodeEmbedding):
    name = "learned"
    summary = "learned embedding table (baseline); codes unseen in training share [UNK]"

    def __init__(self, vocab, hidden, opts):
        super().__init__(vocab, hidden, opts)
        self.table = nn.Embedding(len(vocab), hidden)
        self.register_buffer("rows", self.learned_ids(), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(self.rows[ids])

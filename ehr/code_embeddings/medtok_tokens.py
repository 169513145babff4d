"""MedTok's discrete tokens as the vocabulary (the paper's "extend the vocabulary" route): a code
MedTok covers is the weighted sum of learned embeddings of its 4*K codebook tokens (weights from the
artifact); codes sharing tokens share parameters, so a code rare in training borrows from the codes
it shares tokens with. Other tokens get a learned row."""

from __future__ import annotations

import torch
from torch import nn

from ehr.code_embeddings.base import CodeEmbedding, load_medtok, medtok_rows, register


@register
class MedTokTokens(CodeEmbedding):
    name = "medtok_tokens"
    summary = "MedTok codebook tokens as vocabulary: weighted sum of learned token embeddings"
    needs_medtok = True

    def __init__(self, vocab, hidden, opts):
        super().__init__(vocab, hidden, opts)
        tok = load_medtok(opts, self.name)
        rows, code_ids, self.routes = medtok_rows(tok, vocab)
        width = tok.ids.shape[1] * tok.ids.shape[2]
        ids = torch.zeros(len(vocab), width, dtype=torch.long)
        weights = torch.zeros(len(vocab), width)
        if rows:
            ids[rows] = tok.ids[code_ids].reshape(len(rows), -1).long()
            # each of the 4 groups' K weights sums to 1: divide by 4 so a code's weights sum to 1
            weights[rows] = tok.weights[code_ids].reshape(len(rows), -1) / tok.ids.shape[1]
        mask = torch.zeros(len(vocab), dtype=torch.bool)
        mask[rows] = True
        self.register_buffer("token_ids", ids)
        self.register_buffer("token_weights", weights)
        self.register_buffer("has_medtok", mask)
        self.codebook = nn.Embedding(tok.codebook_size, hidden)
        self.table = nn.Embedding(len(vocab), hidden)
        self.register_buffer("rows", self.learned_ids(), persistent=False)
        self.register_buffer("bins", self.bin_rows(), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        learned = self.table(self.rows[ids])
        summed = (self.codebook(self.token_ids[ids]) * self.token_weights[ids].unsqueeze(-1)).sum(-2)
        out = torch.where(self.has_medtok[ids].unsqueeze(-1), summed, learned)
        return self.with_bins(ids, out, self.has_medtok, learned)

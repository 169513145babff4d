"""``medtok-attn``: question-aware pooling of the linked codes into a fixed number of tokens.

As in Graph Neural Prompting (Tian et al., AAAI 2024): the codes' MedTok embeddings go through a
2-layer projector; ``model.prefix_tokens`` queries, each a learned vector plus a projection of
the question (the mean of its prompt token embeddings), attend over them. The question decides
which of the stem's and options' codes make up the prefix. A question without codes gets no
prefix.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qa.prefix_methods.base import ItemPrefix, PrefixMethod, register


class QuestionAwarePooling(nn.Module):
    def __init__(self, in_dim: int, hidden_size: int, n_queries: int):
        super().__init__()
        if n_queries < 1:
            raise ValueError("prefix_tokens must be at least 1")
        self.codes = nn.Sequential(nn.Linear(in_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
        self.question = nn.Linear(hidden_size, hidden_size)
        self.queries = nn.Parameter(torch.randn(n_queries, hidden_size) * 0.02)

    def forward(self, emb, mask, question) -> tuple[torch.Tensor, torch.Tensor]:
        keys = self.codes(emb)  # [B, N, H]
        queries = self.queries[None] + self.question(question)[:, None]  # [B, Q, H]
        scores = queries @ keys.transpose(1, 2) / math.sqrt(keys.shape[-1])  # [B, Q, N]
        has_codes = mask.any(dim=1)
        # Rows without codes: attend uniformly over padding (finite) and mask the result out.
        scores = scores.masked_fill(~(mask | ~has_codes[:, None])[:, None, :], float("-inf"))
        pooled = torch.softmax(scores, dim=-1) @ keys
        return pooled, has_codes[:, None].expand(-1, pooled.shape[1])


@register
class MedTokAttention(PrefixMethod):
    name = "medtok-attn"
    summary = "question-aware attention pooling of stem and option codes into a few tokens"
    color = "#d55e00"
    order = 60
    code_fields = "stem+options"

    def item_prefix(self, item) -> ItemPrefix:
        codes = self.codes.known_codes(item, self.code_fields)
        return ItemPrefix(codes, self.codes.embed(codes))

    def build_module(self, in_dim: int, hidden_size: int) -> nn.Module:
        return QuestionAwarePooling(in_dim, hidden_size, self.options.prefix_tokens)

    def prefix_embeddings(self, module, emb, mask, tags, token_embeds, token_mask):
        # Runs even when no question of the batch has codes (every parameter takes part in each
        # step, as DDP/DeepSpeed expect); the pooled tokens are then masked out.
        weight = next(module.parameters())
        m = token_mask.to(weight.dtype)[..., None]
        question = (token_embeds.to(weight.dtype) * m).sum(1) / m.sum(1).clamp(min=1)
        pooled, pooled_mask = module(emb.to(weight.dtype), mask, question)
        return pooled.to(token_embeds.dtype), pooled_mask

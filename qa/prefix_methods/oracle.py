"""``oracle``: the channel check. One learned prefix token that names the correct option.

Not a result and never in "every registered method": it reads the answer. It asks whether
anything can pass through the prefix at all with a given training budget. A projector that
only has to map "token k" to "answer letter k" should reach ~100 %; if the pipeline cannot
reach 95 % with it, a null result of the real methods says nothing about MedTok (the channel
is broken: too few steps, a learning rate too low, or the prefix never reaching the model).
Option rotations relabel the answer, so the token follows the answer in every scored order.
"""

from __future__ import annotations

import torch
from torch import nn

from commons.errors import UserError
from disease_linking.questions import LETTERS
from qa.prefix_methods.base import ItemPrefix, PrefixMethod, register


class AnswerToken(nn.Module):
    """One learned embedding per answer letter."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.letters = nn.Embedding(len(LETTERS), hidden_size)
        nn.init.normal_(self.letters.weight, std=0.02)  # the LM's own initialisation scale

    def forward(self, tags: torch.Tensor) -> torch.Tensor:
        return self.letters(tags)


@register
class Oracle(PrefixMethod):
    name = "oracle"
    summary = "diagnostic: a learned token naming the correct option (channel check; reads the answer)"
    color = "#999999"
    order = 200
    needs_artifact = False
    diagnostic = True

    @property
    def embedding_dim(self) -> int:
        return 1  # a placeholder column: the token's content is its tag, not an embedding

    def item_prefix(self, item) -> ItemPrefix:
        if item.answer is None:
            raise UserError(f"{item.id}: prefix_mode oracle needs the answer (it is a check of the pipeline, "
                            "not a way to answer questions)")
        return ItemPrefix([f"oracle:{item.answer}"], torch.zeros(1, 1), tags=[LETTERS.index(item.answer)])

    def build_module(self, in_dim: int, hidden_size: int) -> nn.Module:
        return AnswerToken(hidden_size)

    def prefix_embeddings(self, module, emb, mask, tags, token_embeds, token_mask):
        return module(tags).to(token_embeds.dtype), mask

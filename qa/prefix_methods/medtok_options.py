"""``medtok-options``: the stem's and each option's codes as prefix tokens tagged with where they
came from.

MedDDx asks about the relation between the stem's entity and each option's entity (which drug
treats X, which gene goes with Y). A pooled stem token throws that structure away; here every
code token carries a learned tag embedding (stem, A, B, ...) added to its projected MedTok
embedding, so the model can tell which option a code belongs to. Tags follow options when their
order is shuffled (mention fields are relabelled with the options).
"""

from __future__ import annotations

import torch
from torch import nn

from disease_linking.questions import LETTERS
from qa.prefix_methods.base import STEM_TAG, ItemPrefix, PrefixMethod, register


class TaggedProjector(nn.Module):
    """Projector (linear or MLP) plus one learned embedding per tag (stem, A..E)."""

    def __init__(self, projector: nn.Module, hidden_size: int):
        super().__init__()
        self.projector = projector
        self.tags = nn.Embedding(1 + len(LETTERS), hidden_size)
        nn.init.normal_(self.tags.weight, std=0.02)

    def forward(self, emb: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        return self.projector(emb) + self.tags(tags)


@register
class MedTokOptions(PrefixMethod):
    name = "medtok-options"
    summary = "stem and option codes as MedTok tokens tagged with their option letter"
    color = "#009e73"
    order = 50

    def item_prefix(self, item) -> ItemPrefix:
        codes: list[str] = []
        tags: list[int] = []
        fields = [("stem", STEM_TAG)] + [(f"option:{x}", LETTERS.index(x) + 1) for x in item.options]
        for name, tag in fields:  # each field capped on its own: options must not crowd out the stem
            field_codes = self.codes.known_codes(item, fields=[name])
            codes += field_codes
            tags += [tag] * len(field_codes)
        return ItemPrefix(codes, self.codes.embed(codes), tags=tags)

    def build_module(self, in_dim: int, hidden_size: int) -> nn.Module:
        return TaggedProjector(super().build_module(in_dim, hidden_size), hidden_size)

    def prefix_embeddings(self, module, emb, mask, tags, token_embeds, token_mask):
        weight = next(module.parameters())
        return module(emb.to(weight.dtype), tags).to(token_embeds.dtype), mask

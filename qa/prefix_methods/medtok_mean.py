"""``medtok-mean``: one prefix token, the mean of the linked codes' MedTok embeddings (the paper)."""

from __future__ import annotations

from qa.prefix_methods.base import ItemPrefix, PrefixMethod, register


@register
class MedTokMean(PrefixMethod):
    name = "medtok-mean"
    summary = "one token: the mean MedTok embedding of the linked codes (the paper)"
    color = "#56b4e9"
    order = 30

    def item_prefix(self, item) -> ItemPrefix:
        codes = self.codes.known_codes(item, self.code_fields)
        emb = self.codes.embed(codes)
        return ItemPrefix(codes, emb.mean(dim=0, keepdim=True) if len(codes) else emb)

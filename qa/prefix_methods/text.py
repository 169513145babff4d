"""``text``: the linked codes' descriptions written into the prompt (the natural strong baseline)."""

from __future__ import annotations

from qa.prefix_methods.base import ItemPrefix, PrefixMethod, register


@register
class TextPrefix(PrefixMethod):
    name = "text"
    summary = "linked code descriptions written into the prompt"
    color = "#e69f00"
    order = 20
    trainable = False

    def item_prefix(self, item) -> ItemPrefix:
        codes = self.codes.known_codes(item, self.code_fields)
        return ItemPrefix(codes, None, self.codes.describe(codes))

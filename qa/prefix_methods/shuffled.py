"""``shuffled``: control with as many random artifact codes as the question has linked codes.

Deterministic in (seed, question id): the same token budget as ``medtok``, no information.
"""

from __future__ import annotations

from qa.prefix_methods.base import ItemPrefix, PrefixMethod, register


@register
class ShuffledCodes(PrefixMethod):
    name = "shuffled"
    summary = "control: random codes, as many as the question has linked"
    color = "#cc79a7"
    order = 90

    def item_prefix(self, item) -> ItemPrefix:
        n = len(self.codes.known_codes(item, self.code_fields))
        codes = self.codes.random_codes(item, n)
        return ItemPrefix(codes, self.codes.embed(codes))

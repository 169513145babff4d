"""``none``: no prefix; the LoRA-only baseline every other method is compared against."""

from __future__ import annotations

from qa.prefix_methods.base import ItemPrefix, PrefixMethod, register


@register
class NoPrefix(PrefixMethod):
    name = "none"
    summary = "no prefix (LoRA-only baseline)"
    color = "#5f6b7a"
    order = 10
    needs_artifact = False
    trainable = False

    def item_prefix(self, item) -> ItemPrefix:
        return ItemPrefix()

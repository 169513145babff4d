"""``medtok``: one prefix token per linked code (capped at ``max_codes``, deterministic order)."""

from __future__ import annotations

from qa.prefix_methods.base import PrefixMethod, register


@register
class MedTokPerCode(PrefixMethod):
    name = "medtok"
    summary = "one projected MedTok token per linked code"
    color = "#0072b2"
    order = 40

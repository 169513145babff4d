"""``linked``: the linked JSONL, the project's interchange format (id, question, options, answer, tier, mentions)."""

from __future__ import annotations

from disease_linking.layouts.base import Layout, register
from disease_linking.questions import TIERS, parse_linked


@register
class Linked(Layout):
    name = "linked"
    summary = "linked JSONL (the interchange format written by `medtok-qa link`)"
    keys = ("question", "options")
    tiers = TIERS  # carried over from the linked source (MedDDx)
    default_tier = "Intermediate"

    def parse(self, raw, item_id):
        return parse_linked(raw, item_id)

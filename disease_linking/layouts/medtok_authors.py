"""``medtok_authors``: the MedTok authors' QA layout, ``{"input": [question_with_options, answer], "medical_codes": [...]}``."""

from __future__ import annotations

from disease_linking.layouts.base import Layout, register
from disease_linking.questions import TIERS, parse_authors


@register
class MedTokAuthors(Layout):
    name = "medtok_authors"
    summary = "the MedTok authors' QA layout: input [question with options, answer], medical_codes"
    keys = ("input",)
    tiers = TIERS  # an optional tier field
    default_tier = "Intermediate"

    def parse(self, raw, item_id):
        return parse_authors(raw, item_id)

"""``meddx``: ``{"query": "stem\\nA: ...\\nB: ...", "answer": "D", "sim_level_std": 0.013}`` (tier from the std)."""

from __future__ import annotations

from disease_linking.layouts.base import Layout, register
from disease_linking.questions import TIERS, parse_meddx


@register
class MedDDx(Layout):
    name = "meddx"
    summary = "MedDDx: query (stem + option lines), answer letter, sim_level_std"
    keys = ("query",)
    tiers = TIERS  # from sim_level_std
    default_tier = "Intermediate"  # the tier the MedTok paper fine-tunes and reports
    data_file = "meddx/MedDDx.json"
    auto_default = True

    def parse(self, raw, item_id):
        return parse_meddx(raw, item_id)

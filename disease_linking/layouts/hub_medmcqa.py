"""``medmcqa``: MedMCQA (``openlifescienceai/medmcqa`` on the hub, or a local JSONL export of it).

Rows have ``question``, options ``opa``..``opd``, the correct option ``cop`` (0-3; -1 where the
split hides it, as in its test split) and ``subject_name``. MedMCQA has no difficulty tiers.
"""

from __future__ import annotations

from disease_linking.layouts.base import HubLayout, register
from disease_linking.questions import MCQFormatError

_OPTION_FIELDS = ("opa", "opb", "opc", "opd")


@register
class MedMCQA(HubLayout):
    name = "medmcqa"
    summary = "MedMCQA rows (question, opa..opd, cop 0-3, subject_name); the hub dataset needs --allow_network"
    keys = ("question", *_OPTION_FIELDS, "cop")
    hub_id = "openlifescienceai/medmcqa"
    # No difficulty tiers (tiers = ()): fine-tuning trains on every question.

    def to_record(self, row, item_id):
        options = {letter: "" if row[f] is None else str(row[f]) for letter, f in zip("ABCD", _OPTION_FIELDS, strict=True)}
        return {"id": item_id, "question": row["question"], "options": options,
                "answer": _answer(row["cop"], item_id), "subject": str(row.get("subject_name") or "")}


def _answer(cop, item_id: str) -> str | None:
    """The letter of ``cop`` (an int in the hub's rows, maybe text in an export); None where hidden (-1)."""
    text = "" if cop is None else str(cop).strip()
    if text in {"", "-1"}:
        return None
    if text not in {"0", "1", "2", "3"}:
        raise MCQFormatError(f"{item_id}: cop {cop!r} is not an option index 0-3 (or -1 when hidden)")
    return "ABCD"[int(text)]

"""Collapse rate of a MedTok artifact on a question set: how often it cannot tell options apart.

Of the questions with at least two coded options, the share where two options map onto the same
artifact code. Codes are resolved as the prefix methods resolve them (:class:`qa.prefix.CodeSource`:
each option's linked codes, a code the artifact lacks replaced by its nearest known ancestor), so
two different linked codes under one ICD-10 category collapse onto that category. A collapsed
question is one where the tokens alone cannot separate (some of) its options, whatever the model.

Part of that is the linker's doing (two options linked to the very same code, e.g. "benign
neoplasm of hard palate" and "... of soft palate" both to D10.3); ``n_collapsed_linked`` counts
those, so ``n_collapsed - n_collapsed_linked`` is what the artifact's own mapping adds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

from disease_linking.questions import MCQItem
from qa.data import linked_codes
from qa.prefix import CodeSource


def collapses(option_codes: Mapping[str, Sequence[str]]) -> bool | None:
    """Whether two coded options share an artifact code; None with fewer than two coded options
    (nothing to compare)."""
    coded = [set(codes) for codes in option_codes.values() if codes]
    if len(coded) < 2:
        return None
    return any(a & b for a, b in combinations(coded, 2))


def linked_option_codes(item: MCQItem, codes: CodeSource) -> dict[str, list[str]]:
    """Letter -> the option's linked codes as the linker wrote them (before the artifact's mapping)."""
    return {x: linked_codes(item, fields=[f"option:{x}"], codes_per_mention=codes.codes_per_mention,
                            max_codes=codes.max_codes, min_confidence=codes.min_confidence)
            for x in item.options}


def collapse_rate(items: Sequence[MCQItem], codes: CodeSource) -> dict:
    """{"n": questions, "n_two_coded": with >= 2 coded options, "n_collapsed", "rate" (None when no
    question has two coded options), "n_collapsed_linked": collapsed already in the linked codes}."""
    compared = [it for it in items if collapses(codes.option_codes(it)) is not None]
    collapsed = [it for it in compared if collapses(codes.option_codes(it))]
    by_linker = [it for it in collapsed if collapses(linked_option_codes(it, codes))]
    return {"n": len(items), "n_two_coded": len(compared), "n_collapsed": len(collapsed),
            "rate": (len(collapsed) / len(compared)) if compared else None, "n_collapsed_linked": len(by_linker)}


def collapse_by_tier(groups: Mapping[str, Sequence[MCQItem]], codes: CodeSource) -> dict[str, dict]:
    return {tier: collapse_rate(items, codes) for tier, items in groups.items()}


def artifact_collapse(groups: Mapping[str, Sequence[MCQItem]], artifact: str, codes_per_mention: int = 1) -> dict:
    """The collapse rate of the artifact at ``artifact`` per tier group, with what it was computed on."""
    from medtok_core.tokenizer import MedTokTokenizer

    tok = MedTokTokenizer.from_pretrained(artifact)
    source = CodeSource(tok, "stem", codes_per_mention)  # capped per option as the prefix methods do
    return {"artifact": str(tok.path or artifact), "codes_per_mention": codes_per_mention,
            "tiers": collapse_by_tier(groups, source)}

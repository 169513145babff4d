"""Collapse rate of a MedTok artifact on a question set: how often it cannot tell options apart.

Of the questions with at least two coded options, the share where two options map onto the same
artifact code. Codes are resolved as the prefix methods resolve them (:class:`qa.prefix.CodeSource`:
each option's linked codes, a code the artifact lacks replaced by its nearest known ancestor), so
two different linked codes under one ICD-10 category collapse onto that category. A collapsed
question is one where the tokens alone cannot separate (some of) its options, whatever the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

from disease_linking.questions import MCQItem
from qa.prefix import CodeSource


def collapses(option_codes: Mapping[str, Sequence[str]]) -> bool | None:
    """Whether two coded options share an artifact code; None with fewer than two coded options
    (nothing to compare)."""
    coded = [set(codes) for codes in option_codes.values() if codes]
    if len(coded) < 2:
        return None
    return any(a & b for a, b in combinations(coded, 2))


def collapse_rate(items: Sequence[MCQItem], codes: CodeSource) -> dict:
    """{"n": questions, "n_two_coded": with >= 2 coded options, "n_collapsed", "rate"} (rate None
    when no question has two coded options)."""
    verdicts = [collapses(codes.option_codes(it)) for it in items]
    compared = [v for v in verdicts if v is not None]
    return {"n": len(items), "n_two_coded": len(compared), "n_collapsed": sum(compared),
            "rate": (sum(compared) / len(compared)) if compared else None}


def collapse_by_tier(groups: Mapping[str, Sequence[MCQItem]], codes: CodeSource) -> dict[str, dict]:
    return {tier: collapse_rate(items, codes) for tier, items in groups.items()}


def artifact_collapse(groups: Mapping[str, Sequence[MCQItem]], artifact: str, codes_per_mention: int = 1) -> dict:
    """The collapse rate of the artifact at ``artifact`` per tier group, with what it was computed on."""
    from medtok_core.tokenizer import MedTokTokenizer

    tok = MedTokTokenizer.from_pretrained(artifact)
    source = CodeSource(tok, "stem", codes_per_mention)  # capped per option as the prefix methods do
    return {"artifact": str(tok.path or artifact), "codes_per_mention": codes_per_mention,
            "tiers": collapse_by_tier(groups, source)}

"""Coverage summary of a linked dataset, per tier and overall."""

from __future__ import annotations

from collections import Counter

from disease_linking.questions import TIERS, MCQItem

KINDS = ("disease", "drug", "phenotype")


def _linked(item: MCQItem, stem_only: bool, kind: str | None = None) -> bool:
    return any(m.codes and (not stem_only or m.field == "stem") and (kind is None or m.kind == kind)
               for m in item.mentions)


def summarize_group(items: list[MCQItem]) -> dict:
    """Coverage, mentions per question, codes per system and the disease/drug/phenotype split."""
    n = len(items)
    if n == 0:
        return {"questions": 0}
    share = lambda pred: round(sum(map(pred, items)) / n, 4)  # noqa: E731
    mentions = [m for it in items for m in it.mentions if m.codes]
    systems = Counter(c.system for m in mentions for c in m.codes)
    distinct = {s: len({c.code for m in mentions for c in m.codes if c.system == s}) for s in systems}
    kinds = Counter(m.kind or "unknown" for m in mentions)
    return {
        "questions": n,
        "coverage_stem": share(lambda it: _linked(it, True)),
        "coverage_stem_options": share(lambda it: _linked(it, False)),
        "mentions_per_question": round(len(mentions) / n, 3),
        "stem_mentions_per_question": round(sum(m.field == "stem" for m in mentions) / n, 3),
        "codes_per_system": dict(sorted(systems.items())),
        "distinct_codes_per_system": dict(sorted(distinct.items())),
        # Share of questions that a kind alone would cover (stem only / stem + options) ...
        "coverage_by_kind_stem": {k: share(lambda it, k=k: _linked(it, True, k)) for k in KINDS},
        "coverage_by_kind_stem_options": {k: share(lambda it, k=k: _linked(it, False, k)) for k in KINDS},
        # ... and the share of linked mentions of each kind.
        "mention_share_by_kind": {k: round(v / max(1, len(mentions)), 4) for k, v in sorted(kinds.items())},
    }


def summarize(items: list[MCQItem]) -> dict:
    """``{"all": {...}, "Basic": {...}, "Intermediate": {...}, "Expert": {...}}`` (tiers present only)."""
    out = {"all": summarize_group(items)}
    for tier in TIERS:
        group = [it for it in items if it.tier == tier]
        if group:
            out[tier] = summarize_group(group)
    untiered = [it for it in items if it.tier not in TIERS]
    if untiered and len(untiered) != len(items):
        out["no_tier"] = summarize_group(untiered)
    return out


def format_summary(summary: dict) -> str:
    lines = [f"{'group':<13}{'n':>6}{'stem':>8}{'stem+opt':>10}{'ment/q':>8}  by kind (stem+opt: disease/drug/phenotype)"]
    for name, s in summary.items():
        if name == "run" or not isinstance(s, dict) or not s.get("questions"):
            continue
        k = s["coverage_by_kind_stem_options"]
        lines.append(f"{name:<13}{s['questions']:>6}{s['coverage_stem']:>8.1%}{s['coverage_stem_options']:>10.1%}"
                     f"{s['mentions_per_question']:>8.2f}  {k['disease']:.1%} / {k['drug']:.1%} / {k['phenotype']:.1%}")
    return "\n".join(lines)

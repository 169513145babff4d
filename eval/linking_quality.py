"""Quality and speed of disease_linking against the hand-annotated gold sample.

    python -m eval.linking_quality [--gold eval/gold_linking.jsonl] [--thresholds 0.75,0.8,0.85]
                                   [--output linking_quality.json] [--full true]

Gold (``eval/gold_linking.jsonl``): the first record gives the annotation rules and the list of
questions annotated exhaustively; every other record is one mention (id, field, start, end, kind,
codes = acceptable codes, preferred first).

Metrics on the annotated questions (one-to-one greedy matching of predicted and gold mentions in
the same field whose spans overlap):

- mention precision / recall / F1 (overlap), and the share of matched pairs with identical spans;
- code precision: predicted mentions whose top-ranked code is acceptable / all predicted mentions
  (an unmatched prediction counts as wrong);
- code recall: gold mentions that a prediction matches with any acceptable code among its ranked
  codes / all gold mentions; also recall@1 (top code acceptable);
- the same per kind (disease / drug / phenotype), and for each fallback threshold in ``thresholds``.

With ``--full`` it also links all of MedDDx and reports coverage per tier and throughput.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from disease_linking.linker import LinkConfig, Linker
from disease_linking.questions import MCQItem, Mention, load_mcq
from disease_linking.summary import format_summary, summarize
from medtok_core.config import parse_config
from medtok_core.datadir import data_file
from medtok_core.errors import MedTokError, cli_entry
from medtok_core.io import write_json

GOLD = Path(__file__).with_name("gold_linking.jsonl")


@dataclass
class QualityConfig:
    """Precision/recall of mention linking on the gold sample, coverage and throughput on MedDDx."""

    gold: str = str(GOLD)  # hand-annotated gold JSONL
    input: str | None = None  # MedDDx file (default: data dir)
    data_dir: str | None = None  # data directory (default: $MEDTOK_DATA_DIR or ../shared/data)
    # Fallback thresholds to compare (the linker's own threshold is used for --full).
    thresholds: list[float] = field(default_factory=lambda: [0.7, 0.75, 0.8, 0.85, 0.9, 1.01])
    full: bool = True  # also link all of MedDDx (coverage, speed)
    output: str | None = None  # write the results as JSON here
    linking: LinkConfig = field(default_factory=LinkConfig)


def load_gold(path: str | Path) -> tuple[list[str], list[dict]]:
    lines = [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    if not lines or "questions" not in lines[0]:
        raise MedTokError(f"{path}: first record must hold the annotation rules and 'questions'")
    return lines[0]["questions"], lines[1:]


def _overlap(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


def match(pred: list[tuple[str, Mention]], gold: list[dict]) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs (pred index, gold index): same question and field, overlapping spans,
    largest overlap first."""
    cands = []
    for i, (qid, m) in enumerate(pred):
        for j, g in enumerate(gold):
            if g["id"] == qid and g["field"] == m.field and _overlap(m.start, m.end, g["start"], g["end"]):
                cands.append((-(min(m.end, g["end"]) - max(m.start, g["start"])), i, j))
    used_p, used_g, pairs = set(), set(), []
    for _, i, j in sorted(cands):
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            pairs.append((i, j))
    return pairs


def _ratio(a: int, b: int) -> float:
    return round(a / b, 4) if b else 0.0


def score(items: list[MCQItem], gold: list[dict], kind: str | None = None) -> dict:
    """Metrics over all mentions, or for one gold kind (predictions matched to a gold mention of that
    kind, plus unmatched predictions whose own kind is that kind)."""
    pred = [(it.id, m) for it in items for m in it.mentions if m.codes]
    pairs = match(pred, gold)
    if kind is not None:
        matched_pred = {i for i, _ in pairs}
        pairs = [(i, j) for i, j in pairs if gold[j]["kind"] == kind]
        n_pred = len(pairs) + sum(1 for i, (_, m) in enumerate(pred) if i not in matched_pred and m.kind == kind)
        n_gold = sum(g["kind"] == kind for g in gold)
    else:
        n_pred, n_gold = len(pred), len(gold)
    top1 = sum(f"{pred[i][1].codes[0].system}:{pred[i][1].codes[0].code}" in gold[j]["codes"] for i, j in pairs)
    anyk = sum(any(f"{c.system}:{c.code}" in gold[j]["codes"] for c in pred[i][1].codes) for i, j in pairs)
    exact = sum(pred[i][1].start == gold[j]["start"] and pred[i][1].end == gold[j]["end"] for i, j in pairs)
    p, r = _ratio(len(pairs), n_pred), _ratio(len(pairs), n_gold)
    return {"gold": n_gold, "predicted": n_pred, "matched": len(pairs),
            "mention_precision": p, "mention_recall": r,
            "mention_f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "exact_span_share": _ratio(exact, len(pairs)),
            "code_precision": _ratio(top1, n_pred), "code_recall": _ratio(anyk, n_gold),
            "code_recall_at_1": _ratio(top1, n_gold)}


def evaluate(linker: Linker, items: list[MCQItem], gold: list[dict]) -> dict:
    linked = linker.link_items(items)
    return {"all": score(linked, gold), **{k: score(linked, gold, k) for k in ("disease", "drug", "phenotype")}}


def _row(name: str, s: dict) -> str:
    return (f"{name:<22}{s['gold']:>5}{s['predicted']:>6}{s['mention_precision']:>8.1%}{s['mention_recall']:>8.1%}"
            f"{s['code_precision']:>8.1%}{s['code_recall']:>8.1%}{s['code_recall_at_1']:>8.1%}")


def run(cfg: QualityConfig) -> dict:
    questions, gold = load_gold(cfg.gold)
    input_path = Path(cfg.input) if cfg.input else data_file("meddx/MedDDx.json", cfg.data_dir)
    all_items, _ = load_mcq(input_path)
    by_id = {it.id: it for it in all_items}
    missing = [q for q in questions if q not in by_id]
    if missing:
        raise MedTokError(f"gold question {missing[0]} is not in {input_path}; pass the MedDDx file it was annotated on")
    sample = [by_id[q] for q in questions]
    t0 = time.perf_counter()
    linker = Linker.from_cache(cfg.linking, cfg.data_dir)
    result: dict = {"load_s": round(time.perf_counter() - t0, 2), "gold_questions": len(sample),
                    "gold_mentions": len(gold)}
    print(f"{'setting':<22}{'gold':>5}{'pred':>6}{'men P':>8}{'men R':>8}{'code P':>8}{'code R':>8}{'R@1':>8}")
    sweeps = {}
    for th in cfg.thresholds:
        linker.cfg = dataclasses.replace(cfg.linking, fallback_threshold=th)
        sweeps[str(th)] = evaluate(linker, sample, gold)
        print(_row(f"fallback >= {th}", sweeps[str(th)]["all"]))
    linker.cfg = cfg.linking
    result["by_threshold"] = sweeps
    result["configured"] = evaluate(linker, sample, gold)
    for k, s in result["configured"].items():
        print(_row(f"[{cfg.linking.fallback_threshold}] {k}", s))
    if cfg.full:
        t0 = time.perf_counter()
        linked = linker.link_items(all_items)
        secs = time.perf_counter() - t0
        result["coverage"] = summarize(linked)
        result["throughput"] = {"questions": len(all_items), "seconds": round(secs, 2),
                                "questions_per_s": round(len(all_items) / secs, 1)}
        print(format_summary(result["coverage"]))
        print(f"throughput: {len(all_items)} questions in {secs:.1f} s ({len(all_items) / secs:.0f}/s), "
              f"load {result['load_s']} s")
    if cfg.output:
        write_json(cfg.output, result)
    return result


@cli_entry
def main(argv: list[str] | None = None) -> None:
    run(parse_config(QualityConfig, argv, prog="python -m eval.linking_quality"))


if __name__ == "__main__":
    main()

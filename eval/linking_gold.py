"""The linking gold standards: seeded sampling, the hand-annotation source format, and checks.

Two splits live in the repo:

- ``v1``: ``eval/gold_linking.jsonl``, 113 mentions in 23 questions (the first sample; kept as is so
  that its figures stay comparable);
- ``v2``: ``eval/gold/linking_v2.jsonl``, built from the hand-written ``eval/gold/linking_v2.ann``
  over a seeded sample stratified by tier (rules: ``eval/gold/RULES.md``); its header also records
  which questions form the *tune* half (thresholds, calibration) and which the *report* half.

    python -m recipes.linking_gold sample   # print the seeded sample (question ids per tier)
    python -m recipes.linking_gold build    # .ann -> .jsonl with offsets, after checking every code

The ``.ann`` format (one block per question, in sample order)::

    # medddx-00287
    stem | Parkinson disease | disease | ICD10CM:G20.C ICD10CM:G20
    A | aspirin | drug | ATC:B01AC06 ATC:N02BA01

``field | text | kind | codes``: field is ``stem`` or an option letter; text is copied verbatim
from the field (``text#2`` = its second occurrence); kind is disease, phenotype or drug (a trailing
``?`` marks a debatable code); codes are the acceptable codes, preferred first.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from commons.errors import UserError

HERE = Path(__file__).resolve().parent
GOLD_V1 = HERE / "gold_linking.jsonl"
GOLD_V2 = HERE / "gold" / "linking_v2.jsonl"
ANN_V2 = HERE / "gold" / "linking_v2.ann"
TIERS = ("Basic", "Intermediate", "Expert")
KINDS = ("disease", "drug", "phenotype")

# The sample of v2: per tier, the first PER_TIER questions of a permutation of that tier's ids
# (sorted, then shuffled by random.Random(f"{SEED}-{tier}")), leaving out the v1 questions.
SEED = 13
PER_TIER = 40


class GoldFormatError(UserError):
    """An annotation line or gold record is malformed or names a code the vocabulary lacks."""


def sample_questions(items, exclude: set[str], seed: int = SEED, per_tier: int = PER_TIER) -> dict[str, list[str]]:
    """Seeded sample of question ids per tier (see :data:`SEED`)."""
    out = {}
    for tier in TIERS:
        ids = sorted(it.id for it in items if it.tier == tier and it.id not in exclude)
        random.Random(f"{seed}-{tier}").shuffle(ids)
        out[tier] = ids[:per_tier]
    return out


def split_halves(sample: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """(tune, report) question ids: each tier's sample, in its seeded order, dealt alternately
    (1st, 3rd, ... to tune; 2nd, 4th, ... to report). Both halves get the same share of every
    tier, and extending the sample never moves a question from one half to the other."""
    tune, report = [], []
    for tier in TIERS:
        ids = sample.get(tier, [])
        tune += ids[0::2]
        report += ids[1::2]
    return sorted(tune), sorted(report)


@dataclass
class AnnLine:
    qid: str
    field: str
    text: str
    occurrence: int
    kind: str
    uncertain: bool
    codes: list[str]


_HEADER = re.compile(r"^#\s*(medddx-\d{5})\b")


def parse_ann(text: str) -> tuple[list[str], list[AnnLine]]:
    """Questions (in order) and annotation lines of a ``.ann`` file."""
    questions: list[str] = []
    lines: list[AnnLine] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("//"):
            continue
        m = _HEADER.match(line)
        if m:
            questions.append(m.group(1))
            continue
        if line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 4 or not questions:
            raise GoldFormatError(f"line {n}: expected 'field | text | kind | codes' under a '# id' header: {raw!r}")
        field, text_, kind, codes = parts
        occurrence = 1
        if re.search(r"#\d+$", text_):
            text_, occ = text_.rsplit("#", 1)
            occurrence = int(occ)
        uncertain = kind.endswith("?")
        kind = kind.rstrip("?")
        if kind not in KINDS:
            raise GoldFormatError(f"line {n}: kind {kind!r} is not one of {', '.join(KINDS)}")
        field = "stem" if field == "stem" else f"option:{field}"
        lines.append(AnnLine(questions[-1], field, text_, occurrence, kind, uncertain, codes.split()))
    return questions, lines


def _offset(field_text: str, text: str, occurrence: int) -> int:
    start = -1
    for _ in range(occurrence):
        start = field_text.find(text, start + 1)
        if start < 0:
            return -1
    return start


def check_codes(refs: list[str], vocab) -> list[str]:
    """The refs (``SYSTEM:CODE``) the vocabulary does not hold, or holds only as chapters/blocks."""
    bad = []
    for ref in refs:
        system, _, code = ref.partition(":")
        i = vocab.id_of(system, code)
        if i is None or "-" in code:
            bad.append(ref)
    return bad


def build_records(questions: list[str], lines: list[AnnLine], by_id: dict, vocab) -> list[dict]:
    """Gold mention records with character offsets; every span and code is checked."""
    records = []
    for a in lines:
        item = by_id.get(a.qid)
        if item is None:
            raise GoldFormatError(f"{a.qid} is not a MedDDx question")
        try:
            field_text = item.field_text(a.field)
        except KeyError:
            raise GoldFormatError(f"{a.qid}: no field {a.field}") from None
        start = _offset(field_text, a.text, a.occurrence)
        if start < 0:
            raise GoldFormatError(f"{a.qid} {a.field}: {a.text!r} (occurrence {a.occurrence}) not in {field_text!r}")
        bad = check_codes(a.codes, vocab)
        if bad or not a.codes:
            raise GoldFormatError(f"{a.qid} {a.field} {a.text!r}: unknown code(s) {bad or '(none given)'}")
        rec = {"id": a.qid, "tier": item.tier, "field": a.field, "text": a.text, "start": start,
               "end": start + len(a.text), "kind": a.kind, "codes": a.codes}
        if a.uncertain:
            rec["uncertain"] = True
        records.append(rec)
    return records


def load_gold(path: str | Path) -> tuple[dict, list[dict]]:
    """(header, mention records) of a gold JSONL (first record: rules and ``questions``)."""
    if not Path(path).is_file():
        raise GoldFormatError(f"gold file {path} does not exist; pass the hand-annotated gold JSONL (default "
                              f"{GOLD_V1.name} / {GOLD_V2.name} under eval/)")
    try:
        lines = [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    except (ValueError, UnicodeDecodeError) as err:
        raise GoldFormatError(f"gold file {path} is not UTF-8 JSON lines ({err})") from None
    if not lines or "questions" not in lines[0]:
        raise GoldFormatError(f"{path}: first record must hold the annotation rules and 'questions'")
    return lines[0], lines[1:]


def _meddx(data_dir=None):
    from commons.datadir import data_file
    from disease_linking.questions import load_mcq

    items, _ = load_mcq(data_file("meddx/MedDDx.json", data_dir), skip_invalid=True)  # 2 unscoreable left out
    return items


def build(ann: Path = ANN_V2, out: Path = GOLD_V2, data_dir=None) -> dict:
    """Write ``out`` from ``ann``: the header (sample procedure, tune/report halves) + records."""
    from commons.io import atomic_path
    from medtok_core.vocab import VocabConfig, load_or_build_vocab

    items = _meddx(data_dir)
    by_id = {it.id: it for it in items}
    v1, _ = load_gold(GOLD_V1)
    sample = sample_questions(items, set(v1["questions"]))
    questions, lines = parse_ann(ann.read_text(encoding="utf-8"))
    expected = [q for tier in TIERS for q in sample[tier]]
    done = set(questions)
    if len(done) != len(questions) or not done <= set(expected):
        raise GoldFormatError(f"{ann}: questions must be distinct members of the seeded sample")
    tune, report = split_halves(sample)
    records = build_records(questions, lines, by_id, load_or_build_vocab(VocabConfig()))
    header = {"_annotation_rules": "eval/gold/RULES.md",
              "sample": {"seed": SEED, "per_tier": PER_TIER, "procedure": "per tier: sorted ids of MedDDx questions not in eval/gold_linking.jsonl, "
                                      "random.Random(f'{seed}-{tier}').shuffle, first per_tier; halves: "
                                      "eval.linking_gold.split_halves"},
              "questions": sorted(done),
              "tune": [q for q in tune if q in done], "report": [q for q in report if q in done]}
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in [header, *records]:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return {"questions": len(done), "mentions": len(records)}

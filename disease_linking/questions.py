"""Multiple-choice questions: parsing both input layouts, tiers, and the linked-dataset JSONL.

Layouts accepted (options A-E; an "E: n/a" option is dropped):
- MedDDx: ``{"query": "stem\\nA: ...\\nB: ...", "answer": "D", "sim_level_std": 0.013}``
- the MedTok authors' QA layout: ``{"input": [question_with_options, answer], "medical_codes": [...]}``

Linked dataset (docs/interfaces.md), one JSON object per line:
``id, question, options {A..E}, answer, tier, mentions [{text, start, end, field, codes [{system, code, score[, why, confidence]}]}][, subject]``.
Other layouts (and hub datasets such as MedMCQA) are plug-ins in ``disease_linking/layouts/``
that map their records onto these fields; every record is checked here, by one validator.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from commons.errors import UserError
from commons.io import atomic_path

LETTERS = "ABCDE"
TIERS = ("Basic", "Intermediate", "Expert")
_OPTION_LINE = re.compile(r"^\s*([A-E])\s*[:.)]\s*(.*\S)?\s*$")
_NA = {"n/a", "na", "none", ""}


class MCQFormatError(UserError):
    """A question item is malformed."""


# Deepest nesting of brackets a question record may have (a linked record needs 5: record, mentions,
# mention, codes, code; a .json file adds one). Checked by counting before parsing, so a line of
# 100k nested arrays is an error, not a RecursionError inside the JSON parser.
MAX_NESTING = 16
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def check_nesting(text: str, where: str) -> None:
    depth = deepest = 0
    for m in _BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_NESTING:
                raise MCQFormatError(f"{where}: nested deeper than {MAX_NESTING} levels of brackets; a question "
                                     "record is an object of strings, options, mentions and codes")


def check_encodable(value: Any, where: str) -> None:
    """Every string of a record must be encodable as UTF-8 (a lone surrogate such as \\ud800 is not:
    the tokenizer and every file written later would fail on it)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as err:
                raise MCQFormatError(f"{where}: text holds a character that cannot be encoded "
                                     f"({v[err.start]!a} at position {err.start}, e.g. a lone surrogate); "
                                     "fix the text") from None
        elif isinstance(v, dict):
            stack += [*v.keys(), *v.values()]
        elif isinstance(v, list):
            stack += v


def _normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


class _Unreadable:
    """A line of a JSONL file that is not a record (invalid or too deeply nested JSON): an error,
    or a skipped question under ``skip_invalid``."""

    def __init__(self, reason: str):
        self.reason = reason


def tier_of(sim_level_std: float | None) -> str | None:
    """KGARevion's rule: std > 0.04 Basic, < 0.02 Expert, else Intermediate."""
    if sim_level_std is None:
        return None
    if sim_level_std > 0.04:
        return "Basic"
    if sim_level_std < 0.02:
        return "Expert"
    return "Intermediate"


@dataclass
class CodeRef:
    system: str
    code: str
    score: float = 1.0
    # Why the linker chose this code: the lexicon entry (term and concepts), the abbreviation, the
    # embedding fallback with its similarity, or the rule that added it. "" when unknown.
    why: str = ""
    # Calibrated probability that the code is right (disease_linking.calibration); None = not calibrated.
    confidence: float | None = None


@dataclass
class Mention:
    text: str
    start: int
    end: int
    field: str  # "stem" or "option:A" ...
    codes: list[CodeRef] = field(default_factory=list)
    kind: str = ""  # what the mention names: "disease", "drug", "phenotype" ("" when unknown)


@dataclass
class MCQItem:
    id: str
    question: str  # the stem, without options
    options: dict[str, str]  # letter -> text, in letter order
    answer: str | None  # letter, or None when unknown (interactive use)
    tier: str | None = None
    sim_level_std: float | None = None
    mentions: list[Mention] = field(default_factory=list)
    medical_codes: list[str] = field(default_factory=list)  # as given by the authors' layout
    subject: str = ""  # the source's subject (MedMCQA's subject_name); "" when it has none

    def field_text(self, name: str) -> str:
        """Text of a field: ``"stem"`` or ``"option:X"``."""
        if name == "stem":
            return self.question
        return self.options[name.split(":", 1)[1]]

    def with_options_text(self) -> str:
        return self.question + "\n" + "\n".join(f"{k}: {v}" for k, v in self.options.items())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("medical_codes", "subject"):  # optional fields appear only when set (format unchanged)
            if not d[key]:
                d.pop(key)
        for m in d["mentions"]:
            for c in m["codes"]:  # the optional code fields appear only when set (format unchanged otherwise)
                if not c["why"]:
                    c.pop("why")
                if c["confidence"] is None:
                    c.pop("confidence")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MCQItem:
        mentions = [Mention(**{**m, "codes": [CodeRef(**c) for c in m.get("codes", [])]})
                    for m in d.get("mentions", [])]
        return cls(id=str(d["id"]), question=d["question"], options=dict(d["options"]),
                   answer=d.get("answer"), tier=d.get("tier"), sim_level_std=d.get("sim_level_std"),
                   mentions=mentions, medical_codes=list(d.get("medical_codes", [])), subject=d.get("subject", ""))


def split_question(text: str, item_id: str = "question") -> tuple[str, dict[str, str]]:
    """Split "stem\\nA: ...\\nB: ..." into the stem and the options (trailing option lines)."""
    check_encodable(text, item_id)
    lines = text.strip().split("\n")
    options: dict[str, str] = {}
    first_option = len(lines)
    for i in range(len(lines) - 1, -1, -1):
        m = _OPTION_LINE.match(lines[i])
        if not m or m.group(1) in options:
            break
        options[m.group(1)] = (m.group(2) or "").strip()
        first_option = i
    before = _OPTION_LINE.match(lines[first_option - 1]) if first_option > 0 else None
    if before and before.group(1) in options:  # "A: flu / A: cold / B: mumps": not a stem line
        raise MCQFormatError(f"{item_id}: option letter {before.group(1)} appears twice ({before.group(0).strip()!r} "
                             f"and '{before.group(1)}: {options[before.group(1)]}'); give each option its own letter")
    options = {k: options[k] for k in sorted(options)}
    if "E" in options and options["E"].lower() in _NA:
        del options["E"]
    stem = "\n".join(lines[:first_option]).strip()
    if not stem:
        raise MCQFormatError(f"{item_id}: the question has no stem before its options")
    if len(options) < 2:
        raise MCQFormatError(
            f"{item_id}: found {len(options)} option(s); write at least two as lines 'A: ...', 'B: ...'")
    _check_options(options, item_id)
    return stem, options


def _parse_answer(raw: Any, options: dict[str, str], item_id: str) -> str:
    text = str(raw).strip()
    m = re.match(r"^\(?([A-E])\)?(?:[:.)\s]|$)", text)
    if not m:
        raise MCQFormatError(f"{item_id}: answer {raw!r} is not an option letter A-E")
    if m.group(1) not in options:
        raise MCQFormatError(f"{item_id}: answer {m.group(1)} is not among its options {', '.join(options)}")
    return m.group(1)


def parse_item(raw: Any, index: int, prefix: str = "q") -> MCQItem:
    """Parse one item of any file layout, recognised by its keys; ``index`` names it in errors and
    default ids."""
    item_id = item_id_of(raw, index, prefix)
    if "query" in raw:
        return parse_meddx(raw, item_id)
    if "input" in raw:
        return parse_authors(raw, item_id)
    if "question" in raw and "options" in raw:  # our own linked layout
        return parse_linked(raw, item_id)
    raise MCQFormatError(
        f"{item_id}: unknown layout (keys {', '.join(sorted(raw)) or 'none'}); expected 'query' "
        "(MedDDx), 'input' (authors' QA layout) or 'question'+'options' (linked JSONL)")


def item_id_of(raw: Any, index: int, prefix: str = "q") -> str:
    """The item's own ``id``, else ``<prefix>-<index>``; a record that is not an object is an error."""
    if not isinstance(raw, dict):
        raise MCQFormatError(f"item {index}: expected a JSON object, got {type(raw).__name__}")
    return str(raw.get("id", f"{prefix}-{index:05d}"))


def parse_meddx(raw: dict, item_id: str) -> MCQItem:
    """MedDDx: ``{"query": "stem\\nA: ...", "answer": "D", "sim_level_std": 0.013}``."""
    stem, options = split_question(str(raw["query"]), item_id)
    std = raw.get("sim_level_std")
    try:
        std = None if std is None else float(std)
    except (TypeError, ValueError):
        raise MCQFormatError(f"{item_id}: sim_level_std {std!r} is not a number") from None
    answer = _parse_answer(raw.get("answer", ""), options, item_id)
    return MCQItem(item_id, stem, options, answer, tier_of(std), std)


def parse_authors(raw: dict, item_id: str) -> MCQItem:
    """The MedTok authors' layout: ``{"input": [question_with_options, answer], "medical_codes": [...]}``."""
    inp = raw["input"]
    if not (isinstance(inp, list) and len(inp) == 2):
        raise MCQFormatError(f"{item_id}: 'input' must be [question_with_options, answer]")
    stem, options = split_question(str(inp[0]), item_id)
    answer = _parse_answer(inp[1], options, item_id)
    codes = raw.get("medical_codes") or []
    if not isinstance(codes, list):
        raise MCQFormatError(f"{item_id}: 'medical_codes' must be a list")
    tier = raw.get("tier")
    return MCQItem(item_id, stem, options, answer, tier if tier in TIERS else None,
                   medical_codes=[str(c) for c in codes])


def parse_linked(raw: dict, item_id: str) -> MCQItem:
    """A linked-JSONL record (the interchange format; other layouts may map their rows to it)."""
    if "question" not in raw or "options" not in raw:
        raise MCQFormatError(f"{item_id}: a linked record needs 'question' and 'options'")
    return _linked_item(raw, item_id)


def _linked_item(raw: dict, item_id: str) -> MCQItem:
    """A linked-JSONL record, every field type-checked (a bad one is an MCQFormatError, never a crash)."""
    question, options = raw["question"], raw["options"]
    if not isinstance(question, str) or not question.strip():
        raise MCQFormatError(f"{item_id}: 'question' must be a non-empty string")
    if not isinstance(options, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in options.items()):
        raise MCQFormatError(f"{item_id}: 'options' must be an object of letter: text, e.g. {{\"A\": \"...\"}}")
    _check_options(options, item_id)
    answer = raw.get("answer")
    if answer is not None:
        answer = _parse_answer(answer, options, item_id)
    tier = raw.get("tier")
    if tier is not None and tier not in TIERS:
        raise MCQFormatError(f"{item_id}: tier {tier!r} is not one of {', '.join(TIERS)} (or null)")
    std = raw.get("sim_level_std")
    if std is not None and (isinstance(std, bool) or not isinstance(std, (int, float))):
        raise MCQFormatError(f"{item_id}: sim_level_std {std!r} is not a number")
    mentions = raw.get("mentions", [])
    if not isinstance(mentions, list):
        raise MCQFormatError(f"{item_id}: 'mentions' must be a list")
    codes = raw.get("medical_codes", [])
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        raise MCQFormatError(f"{item_id}: 'medical_codes' must be a list of strings")
    subject = raw.get("subject", "")
    if not isinstance(subject, str):
        raise MCQFormatError(f"{item_id}: 'subject' must be a string")
    item = MCQItem(item_id, question, dict(options), answer, tier, std, medical_codes=list(codes), subject=subject)
    item.mentions = [_mention(m, item, f"{item_id} mention {i}") for i, m in enumerate(mentions)]
    return item


_MENTION_KEYS = {"text", "start", "end", "field", "codes", "kind"}
_CODE_KEYS = {"system", "code", "score", "why", "confidence"}


def _mention(raw: Any, item: MCQItem, where: str) -> Mention:
    if not isinstance(raw, dict):
        raise MCQFormatError(f"{where}: expected an object")
    unknown = sorted(set(raw) - _MENTION_KEYS)
    if unknown:
        raise MCQFormatError(f"{where}: unknown key {unknown[0]!r}; mentions have {', '.join(sorted(_MENTION_KEYS))}")
    fld = raw.get("field")
    if fld != "stem" and not (isinstance(fld, str) and fld.startswith("option:") and fld[7:] in item.options):
        raise MCQFormatError(f"{where}: field {fld!r} must be 'stem' or 'option:X' for one of its options "
                             f"{', '.join(item.options)}")
    start, end, text = raw.get("start"), raw.get("end"), raw.get("text")
    if not isinstance(text, str) or not all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end)):
        raise MCQFormatError(f"{where}: needs text (string), start and end (integers)")
    if not 0 <= start <= end <= len(item.field_text(fld)):
        raise MCQFormatError(f"{where}: span {start}-{end} lies outside its field ({len(item.field_text(fld))} characters)")
    codes = raw.get("codes", [])
    if not isinstance(codes, list):
        raise MCQFormatError(f"{where}: 'codes' must be a list")
    return Mention(text, start, end, fld, [_code_ref(c, where) for c in codes], str(raw.get("kind", "")))


def _code_ref(raw: Any, where: str) -> CodeRef:
    if not isinstance(raw, dict) or not isinstance(raw.get("system"), str) or not isinstance(raw.get("code"), str):
        raise MCQFormatError(f"{where}: each code must be an object with string 'system' and 'code'")
    score = raw.get("score", 1.0)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise MCQFormatError(f"{where}: code score {score!r} is not a finite number")
    unknown = sorted(set(raw) - _CODE_KEYS)
    if unknown:
        raise MCQFormatError(f"{where}: unknown code key {unknown[0]!r}; codes have {', '.join(sorted(_CODE_KEYS))}")
    why, conf = raw.get("why", ""), raw.get("confidence")
    if not isinstance(why, str):
        raise MCQFormatError(f"{where}: code 'why' must be a string")
    if conf is not None and (isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0 <= conf <= 1):
        raise MCQFormatError(f"{where}: code confidence {conf!r} is not a number in [0, 1]")
    return CodeRef(raw["system"], raw["code"], float(score), why, None if conf is None else float(conf))


def _check_options(options: dict[str, str], item_id: str) -> None:
    if not 2 <= len(options) <= len(LETTERS):
        raise MCQFormatError(f"{item_id}: needs 2 to {len(LETTERS)} options, got {len(options)}")
    if "".join(options) != LETTERS[: len(options)]:
        raise MCQFormatError(f"{item_id}: options must be consecutive letters from A, got {', '.join(options)}")
    for k, v in options.items():
        if not v.strip():
            raise MCQFormatError(f"{item_id}: option {k} is empty")
    seen: dict[str, str] = {}
    for k, v in options.items():
        if _normalised(v) in seen:  # "flu" and "Flu ": no answer could tell them apart
            raise MCQFormatError(f"{item_id}: options {seen[_normalised(v)]} and {k} have the same text ({v.strip()!r}, "
                                 "ignoring case and spaces); every option must differ")
        seen[_normalised(v)] = k


def _read_records(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise MCQFormatError(f"{path} is not UTF-8 text (byte {err.start}); convert it, e.g. "
                             f"`iconv -f latin1 -t utf-8`") from None
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    check_nesting(line, f"line {n}")
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    records.append(_Unreadable(f"line {n}: not valid JSON ({err.msg})"))
                except MCQFormatError as err:
                    records.append(_Unreadable(str(err)))
        return records
    check_nesting(text, str(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise MCQFormatError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if isinstance(data, dict):  # {"id": item, ...}
        return [{"id": k, **v} if isinstance(v, dict) else v for k, v in data.items()]
    if not isinstance(data, list):
        raise MCQFormatError(f"{path}: expected a JSON list of questions")
    return data


def load_mcq(path: str | Path, skip_invalid: bool = False, parse: Parser | None = None
             ) -> tuple[list[MCQItem], list[str]]:
    """Load and validate questions from .json/.jsonl in any supported layout.

    Returns (items, skipped) where ``skipped`` holds one reason per item left out. Without
    ``skip_invalid`` the first invalid item is an error. Checked per item: options are 2-5
    consecutive letters from A, the answer is one of them, types and mention spans are right;
    across items: ids are unique and either every item has a tier or none has. ``parse`` reads
    one record (default: :func:`parse_item`, which recognises the layout by its keys).
    """
    path = Path(path)
    if path.is_dir():
        raise MCQFormatError(f"question file {path} is a directory; pass a .json or .jsonl file")
    if not path.is_file():
        raise MCQFormatError(f"question file {path} does not exist")
    prefix = re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-") or "q"
    return validate_records(_read_records(path), str(path), prefix, skip_invalid, parse)


Parser = Callable[[dict, str], MCQItem]  # (record, item id) -> item, raising MCQFormatError


def validate_records(records: Iterable[Any], source: str, prefix: str = "q", skip_invalid: bool = False,
                     parse: Parser | None = None) -> tuple[list[MCQItem], list[str]]:
    """The one validator of every question source (files, hub datasets): see :func:`load_mcq`.
    ``source`` names the input in errors."""
    items: list[MCQItem] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for i, raw in enumerate(records):
        try:
            if isinstance(raw, _Unreadable):
                raise MCQFormatError(raw.reason)
            check_encodable(raw, item_id_of(raw, i, prefix) if isinstance(raw, dict) else f"item {i}")
            item = parse_item(raw, i, prefix) if parse is None else parse(raw, item_id_of(raw, i, prefix))
            if item.id in seen:
                raise MCQFormatError(f"{item.id}: duplicate question id (item {i}); ids must be unique")
        except MCQFormatError as err:
            if not skip_invalid:
                raise MCQFormatError(f"{source}: {err}") from None
            skipped.append(str(err))
            continue
        seen.add(item.id)
        items.append(item)
    untiered = [it for it in items if it.tier is None]
    if untiered and len(untiered) < len(items):
        reason = (f"{untiered[0].id}: no tier while {len(items) - len(untiered)} other questions have one; "
                  "give every question a tier (or none)")
        if not skip_invalid:
            raise MCQFormatError(f"{source}: {reason} ({len(untiered)} untiered)")
        skipped += [f"{it.id}: no tier while others have one" for it in untiered]
        items = [it for it in items if it.tier is not None]
    return items, skipped


def require_answers(items: list[MCQItem], source: Any, skip_invalid: bool) -> list[MCQItem]:
    """What is scored needs its answer: a question without one (null, missing, a hub split that
    hides them) is an error, or left out under ``skip_invalid`` (with a note). Linking, ``ask`` and
    training (where such a question has no label and adds nothing to the loss) take them."""
    missing = [it for it in items if it.answer is None]
    if not missing:
        return items
    reason = f"{missing[0].id}: answer is missing (null); give the letter of the right option"
    if not skip_invalid:
        raise MCQFormatError(f"{source}: {reason}" + (f" ({len(missing)} questions lack one)" if len(missing) > 1 else ""))
    print(f"note: {source}: skipped {len(missing)} question(s) without an answer", file=sys.stderr)
    return [it for it in items if it.answer is not None]


def skip_summary(skipped: list[str]) -> str:
    """"skipped 3 invalid questions: 2 x answer ... not among its options; 1 x duplicate question id"."""
    from collections import Counter

    kinds = Counter(re.sub(r"^[^:]*: ", "", s).split(";")[0] for s in skipped)
    top = "; ".join(f"{n} x {k}" for k, n in kinds.most_common(5))
    return f"skipped {len(skipped)} invalid question(s): {top}" if skipped else "no question skipped"


def write_jsonl(path: str | Path, items: Iterable[MCQItem]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> Iterator[MCQItem]:
    items, _ = load_mcq(Path(path))
    yield from items


def to_authors_layout(item: MCQItem) -> dict[str, Any]:
    """The MedTok authors' QA layout: {"input": [question_with_options, answer], "medical_codes": [...]}."""
    codes: list[str] = []
    for m in item.mentions:
        for c in m.codes:
            key = f"{c.system}:{c.code}"
            if key not in codes:
                codes.append(key)
    return {"input": [item.with_options_text(), item.answer], "medical_codes": codes or item.medical_codes}


# ---- Arrow rows (datasets.Dataset columns) ---------------------------------------------------------
def question_features():
    """The ``datasets.Features`` of a question Dataset: the linked-JSONL fields, options as a list
    (letters A, B, ... by position, as the validator guarantees). Declared, not inferred, so every
    row (optional code fields included) and an empty dataset have one schema."""
    from datasets import Features, List, Value

    code = {"system": Value("string"), "code": Value("string"), "score": Value("float64"),
            "why": Value("string"), "confidence": Value("float64")}
    mention = {"text": Value("string"), "start": Value("int64"), "end": Value("int64"),
               "field": Value("string"), "kind": Value("string"), "codes": List(code)}
    return Features({"id": Value("string"), "question": Value("string"), "options": List(Value("string")),
                     "answer": Value("string"), "tier": Value("string"), "sim_level_std": Value("float64"),
                     "medical_codes": List(Value("string")), "mentions": List(mention), "subject": Value("string")})


def to_row(item: MCQItem) -> dict[str, Any]:
    """The item as one row of :func:`question_features`."""
    return {"id": item.id, "question": item.question, "options": list(item.options.values()),
            "answer": item.answer, "tier": item.tier, "sim_level_std": item.sim_level_std,
            "medical_codes": list(item.medical_codes),
            "mentions": [asdict(m) for m in item.mentions],
            "subject": item.subject}


def from_row(row: dict[str, Any]) -> MCQItem:
    """The item of a row written by :func:`to_row` (rows of a validated Dataset: no checks again)."""
    mentions = [Mention(m["text"], m["start"], m["end"], m["field"], [CodeRef(**c) for c in m["codes"]],
                        m["kind"]) for m in row["mentions"]]
    options = dict(zip(LETTERS[:len(row["options"])], row["options"], strict=True))
    return MCQItem(row["id"], row["question"], options, row["answer"], row["tier"], row["sim_level_std"],
                   mentions, list(row["medical_codes"]), row["subject"])


def items_dataset(items: Iterable[MCQItem]):
    """The items as an Arrow-backed ``datasets.Dataset`` with the question columns (in order)."""
    from datasets import Dataset

    features = question_features()
    rows = [to_row(it) for it in items]
    return Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)


def dataset_items(dataset) -> list[MCQItem]:
    """The items of a question Dataset, in row order."""
    return [from_row(row) for row in dataset]

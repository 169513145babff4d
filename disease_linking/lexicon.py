"""The linking lexicon: normalized term -> (kinds, concepts, ranked codes).

A lexicon is built once from *term rows* (term, kind, concept, source, codes) and saved as one
parquet file. Loading it is a dict build over ~10^5 keys (about a second), which is why matching
does not use spaCy's PhraseMatcher: adding 3*10^5 pattern Docs to a PhraseMatcher took ~37 s on
this machine at every start, and PhraseMatcher has no serialized form other than pickle.

Term rows come from :mod:`disease_linking.sources`; this module only knows how to turn rows into
keys (same tokenizer + :func:`normalize.norm_word` as the matcher), suppress generic terms, merge
rows sharing a key, and save/load the result.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from commons.errors import DataFileError
from commons.io import atomic_path
from disease_linking.normalize import is_acronym, norm_word, term_key
from disease_linking.questions import CodeRef

# Order used to rank codes of equal score and to name a term's main kind.
KIND_ORDER = ("disease", "phenotype", "drug")
SYSTEM_ORDER = ("ICD10CM", "ATC", "ICD9CM", "ICD10PCS", "ICD9PCS")
TERM_COLUMNS = ["term", "kind", "concept", "source", "codes"]
TABLE_COLUMNS = ["key", "cs", "term", "kinds", "concepts", "codes", "scores"]

# Words that never make a mention on their own: English function words and clinical words too
# vague to pick a code. A term made only of these (e.g. "acute", "severe disease", "pain", "disorder")
# is dropped. Chosen by counting which single-word lexicon hits fired most often on MedDDx and
# reading them (see eval/gold_linking.jsonl notes): all of these were wrong or uninformative.
# "pain" was among them until issue 13: the v2 gold rules make a bare symptom a mention ("alleviate
# pain" -> R52 "Pain, unspecified"), and the residual-code rule below keeps it off G89.
GENERIC_WORDS = frozenset(norm_word(w) for w in """
a an the of in on at to for with without and or not no by from as is are be was were been has have
had this that these those it its their there which what who whom whose how why when where can could
may might will would should do does did into onto over under than then so such other others some any
all each both more most less least very also only same one two three first second via per due
acute chronic severe mild moderate serious primary secondary unspecified specified other NOS type
disease diseases disorder disorders syndrome syndromes condition conditions illness problem problems
abnormality abnormalities abnormal anomaly finding findings sign signs symptom symptoms complication
injury lesion lesions mass growth process activity activities function functions change changes
effect effects reaction reactions state status level levels increased decreased high low normal
sodium potassium body system tissue cell cells gene genes protein proteins factor factors receptor receptors
drug drugs medication medications medicine agent agents therapy treatment product products
patient patients person people family history age onset early late adult adults child children
individual infant newborn left right bilateral unilateral upper lower part site region
associated related linked involving involvement affecting affected caused causing induced
group class form forms kind variant variants stage grade phase degree mg ml dose tablet
exposure contact use poisoning case cases other unknown various multiple single general
""".split())

# Suffixes/phrases whose removal gives a natural variant of a code description or ontology name.
_UNSPEC = re.compile(r",?\s*(unspecified|not elsewhere classified|NEC|NOS|not otherwise specified)\b",
                     re.IGNORECASE)
_PAREN = re.compile(r"\s*[\(\[][^\)\]]*[\)\]]")
# A residual code ("Pain, not elsewhere classified", G89) and the unspecified one ("Pain,
# unspecified", R52) give the same bare variant "Pain". The gold rules code a bare mention with
# the unspecified code, so variants cut from a residual description score this much less. Only
# descriptions (1.0): the result must stay above 0.95, where scores mean "the vocabulary itself"
# (below it, codes come from the KG and take the word-overlap bonus). An inclusion term "X NEC"
# already scores 0.95, below the "X, unspecified" description.
_RESIDUAL = re.compile(r"\b(not elsewhere classified|NEC)\b")
RESIDUAL_PENALTY = 0.01


@dataclass(frozen=True)
class Match:
    """One lexicon hit in a token sequence: tokens [start, end) and the lexicon row."""

    start: int
    end: int
    row: int


def term_variants(term: str) -> list[str]:
    """The term and natural rewrites: without "unspecified"/"NOS", without parentheticals, and the
    comma inversion "Deafness, autosomal recessive" -> "autosomal recessive deafness"."""
    out = [term]
    base = _PAREN.sub("", _UNSPEC.sub("", term)).strip(" ,;")
    if base and base != term:
        out.append(base)
    # ICD-10-CM puts nonessential modifiers in parentheses: "Venous insufficiency (chronic)
    # (peripheral)" is also written "chronic venous insufficiency".
    for modifier in _PAREN.findall(term):
        word = modifier.strip(" ()[]")
        if word.isalpha() and base:
            out.append(f"{word} {base}")
    head, sep, tail = base.partition(", ")
    if sep and "," not in tail and 1 <= len(tail.split()) <= 4:
        out.append(f"{tail} {head}")
    return out


def _informative(key: str, cs: bool) -> bool:
    """Keep a key only if it can name something: an acronym, or a non-generic word of >= 4 chars."""
    if cs:
        return True
    words = key.split()
    if not words or all(w in GENERIC_WORDS or w.isdigit() for w in words):
        return False
    if len(words) == 1 and len(words[0]) < 4:
        return False
    return True


_WORD = re.compile(r"[A-Za-z0-9]+")
# Weight of the word overlap between a term and a code's description, added to codes reached
# through the KG (score < 0.95): it orders the several codes one concept cross-references, so that
# "stiff-person syndrome" ranks G25.82 "Stiff-man syndrome" above G25.8 "Other specified
# extrapyramidal ... disorders". Below 0.1, so a direct description match (1.0) stays first.
OVERLAP_BONUS = 0.09


def word_set(text: str) -> frozenset[str]:
    return frozenset(w for w in (norm_word(x) for x in _WORD.findall(text)) if w not in GENERIC_WORDS)


# Crude stemming for word overlap: words agree on their first letters ("esophageal" and
# "esophagus", "thyroid" and "thyroiditis" agree on 7); shorter prefixes merge unrelated words
# ("defective" and "defects" would agree on 6).
STEM_LEN = 7


def stem_set(text: str) -> frozenset[str]:
    """Content words of ``text`` (see :func:`word_set`) cut to :data:`STEM_LEN` letters."""
    return frozenset(w[:STEM_LEN] for w in word_set(text))


def _overlap(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def _merge_codes(code_lists: Iterable[list], term_words: frozenset[str] = frozenset(),
                 code_words: dict[str, frozenset[str]] | None = None) -> tuple[list[str], list[float]]:
    """Union of (system, code, score) lists, max score per code (plus the word-overlap bonus for
    KG-derived codes), ranked by score then system order."""
    best: dict[tuple[str, str], float] = {}
    for codes in code_lists:
        for system, code, score in codes:
            k = (system, code)
            score = float(score)
            if code_words is not None and score < 0.95:
                score += OVERLAP_BONUS * _overlap(term_words, code_words.get(f"{system}:{code}", frozenset()))
            best[k] = max(best.get(k, 0.0), score)
    rank = {s: i for i, s in enumerate(SYSTEM_ORDER)}
    items = sorted(best.items(), key=lambda kv: (-kv[1], rank.get(kv[0][0], len(rank)), kv[0][1]))
    return [f"{s}:{c}" for (s, c), _ in items], [round(v, 4) for _, v in items]


class Lexicon:
    """Keys -> rows with kinds, concepts and ranked codes. ``ci`` keys are normalized lower-case
    token sequences; ``cs`` keys are acronyms matched exactly as written."""

    def __init__(self, table: pd.DataFrame):
        missing = [c for c in TABLE_COLUMNS if c not in table.columns]
        if missing:
            raise DataFileError(f"lexicon table lacks column(s) {', '.join(missing)}; rebuild the lexicon")
        self.table = table.reset_index(drop=True)
        keys = self.table["key"].tolist()
        cs = self.table["cs"].tolist()
        self.ci_index = {k: i for i, (k, c) in enumerate(zip(keys, cs, strict=True)) if not c}
        self.cs_index = {k: i for i, (k, c) in enumerate(zip(keys, cs, strict=True)) if c}
        # Longest key (in tokens) per first token bounds the work at each start position.
        self.max_len: dict[str, int] = {}
        for k in self.ci_index:
            parts = k.split(" ")
            if self.max_len.get(parts[0], 0) < len(parts):
                self.max_len[parts[0]] = len(parts)
        self._kinds = self.table["kinds"].tolist()
        self._codes = self.table["codes"].tolist()
        self._scores = self.table["scores"].tolist()
        self._terms = self.table["term"].tolist()
        self._concepts = self.table["concepts"].tolist()

    def __len__(self) -> int:
        return len(self.table)

    def kind(self, row: int) -> str:
        return self._kinds[row].split("|", 1)[0]

    def term(self, row: int) -> str:
        return self._terms[row]

    def concepts(self, row: int) -> list[str]:
        return self._concepts[row].split("|") if self._concepts[row] else []

    def why(self, row: int) -> str:
        """Provenance of a row's codes: the matched term and (up to 3 of) the concepts behind it."""
        concepts = self.concepts(row)
        more = f" +{len(concepts) - 3}" if len(concepts) > 3 else ""
        return f"lexicon '{self._terms[row]}' [{', '.join(concepts[:3])}{more}]"

    def codes(self, row: int, limit: int | None = None) -> list[CodeRef]:
        refs = self._codes[row].split("|") if self._codes[row] else []
        scores = [float(s) for s in self._scores[row].split("|")] if refs else []
        why = self.why(row) if refs else ""
        out = [CodeRef(r.split(":", 1)[0], r.split(":", 1)[1], s, why=why) for r, s in zip(refs, scores, strict=True)]
        return out[:limit] if limit else out

    def find(self, words: list[str], raw: list[str]) -> list[Match]:
        """All lexicon hits in a normalized token view (``words``; boundaries never match) and the raw
        token texts (``raw``, for case-sensitive acronyms). Indices are positions in the view."""
        hits = []
        n = len(words)
        for i, w in enumerate(words):
            row = self.cs_index.get(raw[i])
            if row is not None:
                hits.append(Match(i, i + 1, row))
            longest = self.max_len.get(w, 0)
            key = w
            for j in range(i + 1, min(n, i + longest) + 1):
                if j > i + 1:
                    key = key + " " + words[j - 1]
                row = self.ci_index.get(key)
                if row is not None:
                    hits.append(Match(i, j, row))
        return hits

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            self.table.to_parquet(tmp, index=False)

    @classmethod
    def load(cls, path: str | Path) -> Lexicon:
        path = Path(path)
        if not path.is_file():
            raise DataFileError(f"lexicon file {path} does not exist; build it with medtok-qa link")
        return cls(pd.read_parquet(path))

    @classmethod
    def from_terms(cls, terms: pd.DataFrame, tokenizer, exclude_acronyms: Iterable[str] = (),
                   code_texts: dict[str, str] | None = None) -> Lexicon:
        """Build from term rows (columns :data:`TERM_COLUMNS`; ``codes`` a list of (system, code, score)).

        ``tokenizer``: the spaCy tokenizer the matcher uses. ``exclude_acronyms``: case-sensitive
        forms never to match (gene symbols such as "CAT" that are also disease acronyms).
        ``code_texts``: "SYSTEM:CODE" -> description, for ranking a concept's codes by word overlap.
        """
        code_words = {k: word_set(v) for k, v in code_texts.items()} if code_texts else None
        missing = [c for c in TERM_COLUMNS if c not in terms.columns]
        if missing:
            raise ValueError(f"term rows lack column(s) {missing}")
        excluded = set(exclude_acronyms)
        rows = []
        for rec in terms.itertuples(index=False):
            term = str(rec.term).strip()
            residual = bool(_RESIDUAL.search(term))
            for variant in term_variants(term):
                codes = rec.codes
                if residual and variant != term:
                    codes = [(sy, c, round(float(sc) - RESIDUAL_PENALTY, 4) if float(sc) >= 1.0 else sc)
                             for sy, c, sc in codes]
                rows.append((variant, rec.kind, rec.concept, codes))
        texts = [r[0] for r in rows]
        merged: dict[tuple[str, bool], dict] = {}
        for (text, kind, concept, codes), doc in zip(rows, tokenizer.pipe(texts, batch_size=2000), strict=True):
            toks = [t.text for t in doc]
            if len(toks) == 1 and is_acronym(toks[0]):
                key, cs = toks[0], True
                if key in excluded:
                    continue
            else:
                key, cs = term_key(toks, [t.is_punct for t in doc]), False
            if not _informative(key, cs):
                continue
            slot = merged.setdefault((key, cs), {"term": text, "kinds": set(), "concepts": [], "codes": []})
            slot["kinds"].add(kind)
            if concept and concept not in slot["concepts"]:
                slot["concepts"].append(concept)
            slot["codes"].append(list(codes))
        order = {k: i for i, k in enumerate(KIND_ORDER)}
        out = []
        for (key, cs), slot in sorted(merged.items()):
            codes, scores = _merge_codes(slot["codes"], word_set(slot["term"]), code_words)
            kinds = sorted(slot["kinds"], key=lambda k: order.get(k, len(order)))
            out.append((key, cs, slot["term"], "|".join(kinds), "|".join(slot["concepts"][:20]),
                        "|".join(codes), "|".join(map(str, scores))))
        return cls(pd.DataFrame(out, columns=TABLE_COLUMNS))

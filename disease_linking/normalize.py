"""Token normalization shared by the lexicon build and the matcher.

Lexicon terms and question text are tokenized by the same spaCy tokenizer and every token is mapped
by :func:`norm_word`, so matching is an exact lookup of normalized token sequences. The rules are
deliberately crude but symmetric (applied to both sides), so a "wrong" stem never prevents a match;
it only merges spellings that should be merged:

- case and accents are dropped ("Sjögren" = "sjogren");
- British spellings ("tumour", "oedema", "anaemia") meet American ones;
- plural "-s"/"-ies" is stripped ("seizures" = "seizure", "allergies" = "allergy");
- roman numerals become digits ("type II" = "type 2");
- a lay word becomes the word ICD-10-CM uses for it (:data:`SYNONYMS`: "postpartum bleeding" =
  "postpartum hemorrhage");
- hyphens, slashes, quotes and possessive "'s" are skipped ("stiff-person" = "stiff person",
  "Alzheimer's disease" = "Alzheimer disease"), while other punctuation (commas, brackets,
  full stops) is a boundary that no match may cross.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

# Tokens dropped from the normalized view: joining punctuation and the possessive clitic.
SKIP_TOKENS = frozenset({"-", "–", "—", "/", "'s", "’s", "'", "’", '"', "“", "”", "‘"})
# A token that no lexicon key contains, so a match can never span across it.
BOUNDARY = "\x00"
_ROMAN = {"i": "1", "ii": "2", "iii": "3", "iv": "4", "v": "5", "vi": "6", "vii": "7", "viii": "8",
          "ix": "9", "x": "10"}
_KEEP_S = ("ss", "us", "is", "ys", "as")
# Lay words -> the word ICD-10-CM descriptions use (after the other rules). Only exact synonyms:
# "bleeding" is hemorrhage in every ICD-10-CM title ("Postpartum hemorrhage", "Gastrointestinal
# hemorrhage"), while e.g. "kidney"/"renal" also name the organ, which is not a mention.
SYNONYMS = {"bleeding": "hemorrhage"}


def strip_accents(text: str) -> str:
    if text.isascii():
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def norm_word(word: str) -> str:
    """Normalized form of one token (see module docstring)."""
    w = strip_accents(word).lower()
    if w in _ROMAN:
        return _ROMAN[w]
    if len(w) > 4:
        w = w.replace("ae", "e").replace("oe", "e")
        if w.endswith("our"):
            w = w[:-3] + "or"
        if w.endswith("ies"):
            w = w[:-3] + "y"
        elif w.endswith("s") and not w.endswith(_KEEP_S):
            w = w[:-1]
    return SYNONYMS.get(w, w)


def token_view(texts: Iterable[str], is_punct: Iterable[bool]) -> list[tuple[int, str]]:
    """Normalized view of a token sequence: (token index, normalized form) for kept tokens.

    Skipped tokens are absent; boundary punctuation appears as :data:`BOUNDARY`.
    """
    view = []
    for i, (text, punct) in enumerate(zip(texts, is_punct, strict=True)):
        if text in SKIP_TOKENS or text.isspace():
            continue
        view.append((i, BOUNDARY if punct else norm_word(text)))
    return view


def term_key(texts: list[str], is_punct: list[bool]) -> str:
    """Lookup key of a lexicon term: its normalized tokens, punctuation dropped, space-joined."""
    return " ".join(w for _, w in token_view(texts, is_punct) if w != BOUNDARY)


def is_acronym(text: str) -> bool:
    """A short upper-case token such as "COPD", "ALS", "HIV-1" is matched case-sensitively only,
    so that e.g. the acronym "ALL" never matches the word "all"."""
    core = text.replace("-", "")
    return (2 <= len(core) <= 7 and core.isalnum() and sum(c.isupper() for c in core) >= 2
            and not any(c.islower() for c in core[1:]) and not core.isdigit())

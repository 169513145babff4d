"""The spaCy pipeline: tokenizer (blank English or an installed scispaCy model), scispaCy's
AbbreviationDetector, and a lexicon matcher component that puts longest non-overlapping hits in
``doc.spans["lexicon"]`` (label = kind, kb_id = lexicon row)."""

from __future__ import annotations

import warnings

import spacy
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.util import filter_spans

from commons.errors import ConfigError
from disease_linking.lexicon import Lexicon
from disease_linking.normalize import BOUNDARY, token_view

MATCHER_PIPE = "medtok_lexicon_matcher"
SPAN_KEY = "lexicon"


class LexiconMatcher:
    """spaCy component: exact lookup of normalized token sequences in a :class:`Lexicon`."""

    def __init__(self) -> None:
        self.lexicon: Lexicon | None = None

    def __call__(self, doc: Doc) -> Doc:
        if self.lexicon is None:
            raise RuntimeError(f"{MATCHER_PIPE} has no lexicon; call set_lexicon() first")
        view = token_view([t.text for t in doc], [t.is_punct for t in doc])
        words = [w for _, w in view]
        raw = [doc[i].text if w != BOUNDARY else BOUNDARY for i, w in view]
        spans = []
        for hit in self.lexicon.find(words, raw):
            start, end = view[hit.start][0], view[hit.end - 1][0] + 1
            spans.append(Span(doc, start, end, label=self.lexicon.kind(hit.row), kb_id=str(hit.row)))
        # filter_spans keeps the longest span of each overlapping group (earliest on ties).
        doc.spans[SPAN_KEY] = filter_spans(spans)
        return doc


@Language.factory(MATCHER_PIPE)
def _make_matcher(nlp: Language, name: str) -> LexiconMatcher:
    return LexiconMatcher()


def tokenizer_id(spacy_model: str) -> str:
    """Identifies the tokenizer in lexicon cache keys (keys depend on how terms are tokenized)."""
    return f"blank-en-{spacy.__version__}" if not spacy_model else f"{spacy_model}"


def make_nlp(spacy_model: str = "") -> Language:
    """Blank English (default) or an installed spaCy/scispaCy model with only its tokenizer and
    parser kept, plus the abbreviation detector and the (empty) lexicon matcher."""
    if spacy_model:
        try:
            nlp = spacy.load(spacy_model, exclude=["ner", "lemmatizer", "attribute_ruler"])
        except OSError:
            raise ConfigError(f"spaCy model {spacy_model!r} is not installed; install it or pass "
                              "--linking.spacy_model '' for the blank English pipeline") from None
    else:
        nlp = spacy.blank("en")
    import scispacy.abbreviation  # noqa: F401  registers the "abbreviation_detector" factory

    # scispaCy's detector runs a Matcher it leaves empty by design; spaCy warns (W036) on every doc.
    warnings.filterwarnings("ignore", message=r"\[W036\]")

    nlp.add_pipe("abbreviation_detector")
    nlp.add_pipe(MATCHER_PIPE)
    return nlp


def set_lexicon(nlp: Language, lexicon: Lexicon) -> None:
    nlp.get_pipe(MATCHER_PIPE).lexicon = lexicon

"""Mentions -> ranked codes for multiple-choice questions.

    linker = Linker.from_cache(LinkConfig())          # builds the lexicon once, then loads it
    item = linker.link_item(item)                      # fills item.mentions
    items = linker.link_items(items)                   # batched through nlp.pipe

For every field (the stem and each option) the pipeline finds lexicon hits; abbreviations defined
in the text ("chronic obstructive pulmonary disease (COPD)") give every later "COPD" of the same
question, options included, the long form's codes. Phrases that look like a disease mention but hit
nothing (a disease-like head word, an abbreviation's long form, or a whole option when the question
asks for a disease or phenotype) fall back to embedding similarity against ICD-10-CM descriptions,
and so do known lexicon concepts without codes, with their own threshold. Hits that are not
mentions (molecule names, parts of chemical names, drug classes) are dropped and codes re-ranked
by the rules of :mod:`disease_linking.rules`; every code says why it was chosen (``CodeRef.why``)
and carries a calibrated ``confidence`` (:mod:`disease_linking.calibration`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

from spacy.language import Language
from spacy.tokens import Doc

from disease_linking.calibration import DEFAULT_PATH, Calibrator, drop_low_confidence
from disease_linking.code_index import CodeIndex
from disease_linking.lexicon import GENERIC_WORDS, Lexicon
from disease_linking.normalize import norm_word, term_key
from disease_linking.pipeline import SPAN_KEY, make_nlp, set_lexicon
from disease_linking.questions import CodeRef, MCQItem, Mention
from disease_linking.rules import (
    UNSUPPORTED,
    agree_parenthetical,
    dedupe,
    inside_chemical_name,
    inverted_forms,
    is_binding_partner,
    is_class_only_drug,
    names_molecule,
    negated_by_prefix,
    one_word_adjective,
    rank_codes,
    unsupported_xref,
)


@dataclass
class LinkConfig:
    """Options of the linker (the ``linking`` section of the CLI config)."""

    # Installed spaCy/scispaCy model name or path; "" = blank English tokenizer.
    spacy_model: str = ""
    # Most codes kept per mention (ranked best first).
    max_codes: int = 5
    # Code systems to keep (empty = all).
    systems: list[str] | None = None
    # Embedding-similarity fallback for disease-like phrases with no lexicon hit.
    embedding_fallback: bool = True
    # Minimum cosine similarity for a fallback code of a phrase that may name a disease (a head-word
    # phrase, an abbreviation's long form, a whole option). Both thresholds are chosen on the tune
    # half of eval/gold/linking_v2.jsonl by python -m recipes.linking_quality; in the last run the
    # phrase fallback added no right code there, so it is off (> 1) by default.
    fallback_threshold: float = 1.01
    # The same for a known lexicon concept without codes ("Cognitive decline"): the mention is
    # certain, only its code is not, so a lower similarity does (0.8 chosen on the tune half).
    known_fallback_threshold: float = 0.8
    # Codes kept per fallback mention.
    fallback_top_k: int = 1
    # Keep mentions whose lexicon entry has no code (e.g. a phenotype without a code mapping).
    keep_unlinked: bool = False
    # Texts per nlp.pipe batch.
    batch_size: int = 256
    # Text encoder folder for the fallback ("" = default all-MiniLM-L6-v2).
    text_encoder: str = ""
    # Calibration of code confidences (JSON): "default" = the one shipped with the package, "" = none.
    calibration: str = "default"
    # Drop codes whose calibrated confidence is below this (0 = keep every code).
    min_confidence: float = 0.0


# What a question asks for: the first of these words in the stem usually names the answer type
# ("Which medications act upon genes ..." -> drug; "What condition is associated with the TBX4 gene"
# -> disease). Options are embedded as disease mentions only for disease/phenotype questions.
_TARGET_WORDS = [
    ("disease", r"diseases?|conditions?|disorders?|illness(?:es)?|syndromes?|diagnos[ie]s|cancers?|tumou?rs?"),
    ("drug", r"drugs?|medications?|medicines?|compounds?|treatments?|therap(?:y|ies)|agents?|substances?|"
             r"pharmaceuticals?|antibiotics?"),
    ("phenotype", r"phenotypes?|symptoms?|signs?|manifestations?|side effects?|effects?|features?"),
    ("gene", r"genes?|proteins?"),
    ("other", r"anatomical|anatomy|tissues?|pathways?|biological process(?:es)?|molecular functions?|"
              r"cellular components?|exposures?|organs?|structures?|cell types?"),
]
_TARGET_RE = re.compile("|".join(f"(?P<{name}>\\b(?:{pat})\\b)" for name, pat in _TARGET_WORDS), re.I)

# Head words (normalized) and suffixes that make an unmatched phrase worth the embedding fallback.
_HEADS = frozenset(norm_word(w) for w in (
    "syndrome disease disorder deficiency cancer carcinoma tumor tumour neoplasm infection dystrophy "
    "anemia atrophy palsy fever failure insufficiency defect malformation dysplasia aplasia "
    "dysgenesis ataxia epilepsy encephalopathy myopathy neuropathy cardiomyopathy retinopathy "
    "leukemia lymphoma sarcoma melanoma cyst hernia stenosis agenesis").split())
_HEAD_SUFFIXES = ("itis", "oma", "pathy", "emia", "osis", "plasia", "trophy", "algia", "penia", "uria",
                  "ectasia", "iasis", "phobia", "megaly")
_PHRASE_STOP = frozenset("""a an the of in on at to for with without and or not no by from as is are be
which what who that this these those it its their has have had can could may might will would should
do does did i my me you your we our they them linked associated related involving affecting caused
characterized known called identify find list name also both either any some identifying having causing
affecting involving including treating managing developing presenting showing""".split())


# Modifiers that leave a head phrase vague ("same diseases", "hereditary disorders", "differential
# diagnosis"): a fallback candidate needs a word outside these and the generic words.
_VAGUE = frozenset(norm_word(w) for w in """same main common mutual parent particular similar mild milder
deadly rare hereditary inherited familial genetic congenital differential diagnosis diagnose possible
potential specific certain distinct different related underlying major minor known new""".split())


def _informative_phrase(text: str) -> bool:
    words = [norm_word(w) for w in re.findall(r"[A-Za-z0-9]+", text)]
    return any(w not in GENERIC_WORDS and w not in _VAGUE and w not in _HEADS for w in words)


def target_type(stem: str) -> str:
    """The answer type a question stem asks for: disease, drug, phenotype, gene, other or unknown."""
    m = _TARGET_RE.search(stem)
    return m.lastgroup if m else "unknown"


def _is_head(token_text: str) -> bool:
    w = norm_word(token_text)
    return w in _HEADS or (len(w) > 6 and w.endswith(_HEAD_SUFFIXES))


def _head_phrases(doc: Doc, covered: set[int]) -> list[tuple[int, int]]:
    """Token ranges ending in a disease-like head word, extended left over content words, whose
    head no lexicon hit covers (a noun-chunk stand-in that needs no parser)."""
    out = []
    for tok in doc:
        if tok.i in covered or not tok.is_alpha or not _is_head(tok.text):
            continue
        start = tok.i
        while start > 0:
            prev = doc[start - 1]
            if prev.is_punct and prev.text != "-":
                break
            if prev.text != "-" and (prev.lower_ in _PHRASE_STOP or not (prev.is_alpha or prev.like_num
                                                                          or "-" in prev.text)):
                break
            start -= 1
        if doc[start].text == "-":
            start += 1
        if tok.i + 1 - start >= 1:
            out.append((start, tok.i + 1))
    return out


@dataclass
class _Pending:
    """A fallback candidate waiting for the batched embedding search."""

    item: int
    mention: Mention
    text: str
    known: bool = False  # a lexicon concept without codes (the mention is sure, only its code is not)


def _load_calibrator(spec: str) -> Calibrator | None:
    """The calibration named by LinkConfig.calibration; a missing default file means none yet."""
    if not spec:
        return None
    if spec == "default":
        return Calibrator.load() if DEFAULT_PATH.is_file() else None
    return Calibrator.load(spec)


class Linker:
    """Extract mentions with the spaCy pipeline and link them to codes (see module docstring)."""

    def __init__(self, nlp: Language, lexicon: Lexicon, cfg: LinkConfig | None = None,
                 code_index: CodeIndex | None = None, code_texts: dict[str, str] | None = None):
        self.nlp = nlp
        self.lexicon = lexicon
        self.cfg = cfg or LinkConfig()
        self.code_index = code_index
        # "SYSTEM:CODE" -> description, to check KG cross-references (None = no check).
        self.code_texts = code_texts
        self._checked: dict[int, list[CodeRef]] = {}
        self.calibrator = _load_calibrator(self.cfg.calibration)
        set_lexicon(nlp, lexicon)

    @classmethod
    def from_lexicon(cls, lexicon: Lexicon, cfg: LinkConfig | None = None,
                     code_index: CodeIndex | None = None, code_texts: dict[str, str] | None = None) -> Linker:
        cfg = cfg or LinkConfig()
        return cls(make_nlp(cfg.spacy_model), lexicon, cfg, code_index, code_texts)

    @classmethod
    def from_cache(cls, cfg: LinkConfig | None = None, data_dir: str | Path | None = None,
                   progress: bool = False) -> Linker:
        """Load the cached lexicon (building it on first use from the vocabulary and the KG)."""
        from disease_linking.build import load_or_build_resources

        cfg = cfg or LinkConfig()
        nlp = make_nlp(cfg.spacy_model)
        lexicon, code_index, code_texts = load_or_build_resources(nlp, cfg, data_dir, progress=progress)
        return cls(nlp, lexicon, cfg, code_index, code_texts)

    # ------------------------------------------------------------------ public API
    def link_item(self, item: MCQItem) -> MCQItem:
        return self.link_items([item])[0]

    def link_items(self, items: list[MCQItem], progress: bool = False) -> list[MCQItem]:
        """Copies of ``items`` with ``mentions`` filled (stem first, then options in letter order)."""
        fields = [(i, name, item.field_text(name)) for i, item in enumerate(items)
                  for name in ["stem", *(f"option:{k}" for k in item.options)]]
        docs = self.nlp.pipe((text for _, _, text in fields), batch_size=self.cfg.batch_size)
        if progress:
            from tqdm.auto import tqdm

            docs = tqdm(docs, total=len(fields), desc="linking fields", unit="field")
        out = [copy.copy(item) for item in items]
        for item in out:
            item.mentions = []
        pending: list[_Pending] = []
        abbrevs: dict[str, tuple[int, str]] = {}  # short form -> (lexicon row, kind), per question
        targets = [target_type(item.question) for item in items]
        for (i, name, _), doc in zip(fields, docs, strict=True):
            if name == "stem":
                abbrevs = {}
            mentions, cands, known = self._link_doc(doc, name, abbrevs, targets[i])
            out[i].mentions.extend(mentions)
            pending.extend(_Pending(i, m, m.text) for m in cands)
            pending.extend(_Pending(i, m, m.text, known=True) for m in known)
        self._resolve_fallback(out, pending)
        for item in out:
            item.mentions = dedupe(item.mentions)
        if self.calibrator is not None:
            self.calibrator.apply(out)
            drop_low_confidence(out, self.cfg.min_confidence)
        for item in out:
            order = {"stem": -1, **{f"option:{k}": n for n, k in enumerate(item.options)}}
            item.mentions.sort(key=lambda m: (order[m.field], m.start, m.end))
        return out

    # ------------------------------------------------------------------ internals
    def _codes(self, row: int) -> list[CodeRef]:
        codes = self.lexicon.codes(row)
        if self.cfg.systems:
            codes = [c for c in codes if c.system in self.cfg.systems]
        return rank_codes(codes)[: self.cfg.max_codes]

    def _lookup(self, text: str) -> int | None:
        """Lexicon row whose key is exactly ``text`` (normalized like the matcher), if any."""
        doc = self.nlp.tokenizer(text)
        return self.lexicon.ci_index.get(term_key([t.text for t in doc], [t.is_punct for t in doc]))

    def _inverted_option(self, doc: Doc, field: str, spans: list) -> Mention | None:
        """The whole option as one mention when its inverted form "modifier X" is a lexicon term
        with codes and no single hit already spans the option (see rules.inverted_forms)."""
        if field == "stem" or any(s.start == 0 and s.end == len(doc) for s in spans):
            return None
        for form in inverted_forms(doc.text):
            row = self._lookup(form)
            codes = self._codes(row) if row is not None else []
            if codes:
                why = f"option inverted to '{form}'; "
                codes = [CodeRef(c.system, c.code, c.score, why=why + c.why) for c in codes]
                return Mention(doc.text, 0, len(doc.text), field, codes, kind=self.lexicon.kind(row))
        return None

    def _not_a_mention(self, span, tokens: list[str]) -> bool:
        """Hits that name a molecule, part of a chemical name, a drug class or a binding partner, or
        that a "non-" prefix negates (see rules)."""
        if names_molecule(tokens, span.end) or negated_by_prefix(tokens, span.start):
            return True
        if span.label_ != "drug":
            return False
        return (inside_chemical_name(tokens, span.start, span.end) or is_binding_partner(tokens, span.start)
                or is_class_only_drug(self._codes(int(span.kb_id_))))

    def _mention(self, doc: Doc, start: int, end: int, field: str, row: int, why: str = "") -> Mention:
        span = doc[start:end]
        codes = self._checked_codes(row)
        if why:
            codes = [CodeRef(c.system, c.code, c.score, why=why + c.why) for c in codes]
        return Mention(span.text, span.start_char, span.end_char, field, codes, kind=self.lexicon.kind(row))

    def _checked_codes(self, row: int) -> list[CodeRef]:
        """The row's codes, cross-references checked against the matched term (not an abbreviation
        of it) and flagged by rules.unsupported_xref; cached per row."""
        codes = self._checked.get(row)
        if codes is None:
            codes = self._checked[row] = self._flag_xrefs(self.lexicon.term(row), self._codes(row))
        return codes

    def _flag_xrefs(self, text: str, codes: list[CodeRef]) -> list[CodeRef]:
        """Codes whose cross-reference the mention's words do not support say so in ``why`` (see
        rules.unsupported_xref); the rest unchanged."""
        if self.code_texts is None:
            return codes
        return [CodeRef(c.system, c.code, c.score, why=f"{UNSUPPORTED} '{desc}'; {c.why}")
                if unsupported_xref(text, c, desc := self.code_texts.get(f"{c.system}:{c.code}")) else c
                for c in codes]

    def _link_doc(self, doc: Doc, field: str, abbrevs: dict[str, tuple[int, str]],
                  target: str) -> tuple[list[Mention], list[Mention], list[Mention]]:
        """Mentions with codes, fallback candidates (phrases that may name something), and known
        lexicon concepts without codes (for the fallback too, with their own threshold)."""
        if field != "stem" and target in ("gene", "other"):
            return [], [], []  # options name genes, anatomy or pathways ("Glycogen storage disease type II (GAA)")
        inverted = self._inverted_option(doc, field, list(doc.spans[SPAN_KEY]))
        if inverted is not None:
            return [inverted], [], []
        tokens = [t.text for t in doc]
        spans, dropped = [], set()
        for s in doc.spans[SPAN_KEY]:
            if self._not_a_mention(s, tokens):
                dropped.update(range(s.start, s.end))  # and no fallback candidate may use these tokens
            else:
                spans.append(s)
        # Hits whose entry has no code (e.g. a phenotype without a mapping) leave their tokens open
        # to the fallback.
        linked = [s for s in spans if self._checked_codes(int(s.kb_id_))]
        covered = {t for s in linked for t in range(s.start, s.end)} | dropped
        fallback: list[Mention] = []
        # Abbreviations defined here: the short form takes the long form's best hit.
        for short in doc._.abbreviations:
            long = short._.long_form
            inside = [s for s in spans if s.start >= long.start and s.end <= long.end]
            if inside:
                best = max(inside, key=lambda s: (len(s), -s.start))
                if len(best) >= max(1, len(long) - 1):  # the hit names (nearly) the whole long form
                    abbrevs[short.text] = (int(best.kb_id_), best.label_)
            elif field == "stem" and long.text not in {m.text for m in fallback}:
                fallback.append(Mention(long.text, long.start_char, long.end_char, field, [],
                                        kind="disease"))
        mentions, rows = [], []
        for s in spans:
            if s.text in abbrevs and len(s) == 1:
                continue  # the definition in this question wins over the generic acronym entry
            mentions.append(self._mention(doc, s.start, s.end, field, int(s.kb_id_)))
            rows.append(int(s.kb_id_))
        single = {s.start for s in spans if len(s) == 1}
        for tok in doc:
            if tok.text not in abbrevs or (tok.i in covered and tok.i not in single):
                continue  # not a defined short form, or inside a longer lexicon hit
            mentions.append(self._mention(doc, tok.i, tok.i + 1, field, abbrevs[tok.text][0],
                                          why=f"abbreviation '{tok.text}' defined in the question; "))
            rows.append(abbrevs[tok.text][0])
            covered.add(tok.i)
        # A code both "X" and "(Y)" point to is supported by that agreement.
        agree_parenthetical([m for m in mentions if m.codes], doc.text, {
            id(m): self._flag_xrefs(self.lexicon.term(row), self._codes(row)) for m, row in zip(mentions, rows, strict=True)})
        if not self.cfg.keep_unlinked:
            mentions = [m for m in mentions if m.codes]
        known: list[Mention] = []
        if self.cfg.embedding_fallback and self.code_index is not None:
            # A known disease/phenotype name without a code (many HPO terms): find its code by meaning.
            known = [Mention(s.text, s.start_char, s.end_char, field, [], kind=s.label_)
                     for s in spans if s.label_ in ("disease", "phenotype") and not self._checked_codes(int(s.kb_id_))
                     and _informative_phrase(s.text) and not one_word_adjective(s.text)]
            fallback += self._fallback_candidates(doc, field, covered, target, bool(linked))
        return mentions, fallback, known

    def _fallback_candidates(self, doc: Doc, field: str, covered: set[int], target: str,
                             has_hits: bool) -> list[Mention]:
        if field != "stem":
            # Options of a disease/phenotype question name one entity each: embed the whole option.
            if target in ("disease", "phenotype") and not has_hits and _informative_phrase(doc.text):
                return [Mention(doc.text, 0, len(doc.text), field, [], kind=target)]
            return []
        out = []
        for start, end in _head_phrases(doc, covered):
            span = doc[start:end]
            if not _informative_phrase(span.text):
                continue  # "syndrome", "hereditary disorders", "differential diagnosis" name nothing
            out.append(Mention(span.text, span.start_char, span.end_char, field, [], kind="disease"))
        return out

    def _resolve_fallback(self, items: list[MCQItem], pending: list[_Pending]) -> None:
        def threshold(p: _Pending) -> float:
            return self.cfg.known_fallback_threshold if p.known else self.cfg.fallback_threshold

        pending = [p for p in pending if threshold(p) <= 1.0]  # a threshold above 1 turns that fallback off
        if not pending or self.code_index is None:
            return
        low = min(self.cfg.fallback_threshold, self.cfg.known_fallback_threshold)
        results = self.code_index.search([p.text for p in pending], self.cfg.fallback_top_k, low)
        for p, codes in zip(pending, results, strict=True):
            codes = [c for c in codes if c.score >= threshold(p)]
            if codes:
                p.mention.codes = codes
                items[p.item].mentions.append(p.mention)

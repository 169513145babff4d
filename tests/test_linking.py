"""disease_linking: extraction, abbreviations, overlaps, options, layouts, errors, determinism.

Unit tests use a tiny hand-made lexicon (built in well under a second); the one integration test
runs that lexicon over the real MedDDx file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import spacy

from disease_linking.lexicon import Lexicon, term_variants
from disease_linking.linker import LinkConfig, Linker, target_type
from disease_linking.questions import CodeRef, MCQFormatError, MCQItem, Mention, load_mcq, to_authors_layout
from disease_linking.summary import summarize
from recipes.link import main as link_main

TERMS = [
    ("Chronic obstructive pulmonary disease, unspecified", "disease", "ICD10CM:J44.9", [("ICD10CM", "J44.9", 1.0)]),
    ("Pulmonary disease", "disease", "MONDO:1", [("ICD10CM", "J98.4", 0.9)]),
    ("Type 2 diabetes mellitus", "disease", "ICD10CM:E11", [("ICD10CM", "E11", 1.0)]),
    ("Diabetes mellitus", "disease", "MONDO:2", [("ICD10CM", "E11.9", 0.9), ("ICD9CM", "250.00", 0.8)]),
    ("Stiff-man syndrome", "disease", "ICD10CM:G25.82", [("ICD10CM", "G25.82", 1.0)]),
    ("Alzheimer disease", "disease", "MONDO:3", [("ICD10CM", "G30.9", 0.9)]),
    ("acetylsalicylic acid", "drug", "ATC:B01AC06", [("ATC", "B01AC06", 1.0)]),
    ("Aspirin", "drug", "DB00945", [("ATC", "B01AC06", 0.9), ("ATC", "N02BA01", 0.9)]),
    ("Seizure", "phenotype", "HP:0001250", [("ICD10CM", "R56.9", 0.8)]),
    ("ALL", "disease", "MONDO:4", [("ICD10CM", "C91.00", 0.85)]),
    ("CAT", "disease", "MONDO:5", [("ICD10CM", "E80.3", 0.85)]),
    ("Lupus", "disease", "MONDO:6", []),
    # Generic words: must never become mentions on their own.
    ("Acute", "disease", "X:1", [("ICD10CM", "X1", 1.0)]),
    ("Disease", "disease", "X:2", [("ICD10CM", "X2", 1.0)]),
    ("Pain", "phenotype", "X:3", [("ICD10CM", "G89", 1.0)]),
    ("Severe disease", "disease", "X:4", [("ICD10CM", "X4", 1.0)]),
]


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    rows = pd.DataFrame([(t, k, c, "test", codes) for t, k, c, codes in TERMS],
                        columns=["term", "kind", "concept", "source", "codes"])
    return Lexicon.from_terms(rows, spacy.blank("en").tokenizer, exclude_acronyms={"CAT"})


@pytest.fixture(scope="module")
def linker(lexicon) -> Linker:
    return Linker.from_lexicon(lexicon, LinkConfig(embedding_fallback=False))


def _item(stem: str, options: dict[str, str], answer: str = "A") -> MCQItem:
    return MCQItem("t-1", stem, options, answer, "Basic", 0.05)


def _codes(mention) -> list[str]:
    return [f"{c.system}:{c.code}" for c in mention.codes]


def test_abbreviation_defined_in_stem_links_later_uses_and_options(linker):
    item = _item("A smoker with chronic obstructive pulmonary disease (COPD) asks which drug helps COPD.",
                 {"A": "COPD exacerbation", "B": "Aspirin"})
    out = linker.link_item(item)
    copd = [m for m in out.mentions if m.text == "COPD"]
    assert [m.field for m in copd] == ["stem", "stem", "option:A"]
    assert all(_codes(m)[0] == "ICD10CM:J44.9" for m in copd)
    long = [m for m in out.mentions if m.text.startswith("chronic")]
    assert long and _codes(long[0]) == ["ICD10CM:J44.9"]


def test_longest_match_wins_over_nested_and_overlapping(linker):
    out = linker.link_item(_item("Is type 2 diabetes mellitus a pulmonary disease?", {"A": "yes", "B": "no"}))
    assert [(m.text, _codes(m)[0]) for m in out.mentions] == [
        ("type 2 diabetes mellitus", "ICD10CM:E11"), ("pulmonary disease", "ICD10CM:J98.4")]


def test_spans_are_offsets_into_their_field(linker):
    item = _item("Which drug?", {"A": "low-dose aspirin", "B": "Seizures after Alzheimer's disease"})
    out = linker.link_item(item)
    assert {m.field for m in out.mentions} == {"option:A", "option:B"}
    for m in out.mentions:
        assert out.field_text(m.field)[m.start:m.end] == m.text
    texts = [m.text for m in out.mentions]
    assert texts == ["aspirin", "Seizures", "Alzheimer's disease"]  # plural and possessive normalized
    assert [m.kind for m in out.mentions] == ["drug", "phenotype", "disease"]


def test_hyphen_variants_and_ranked_codes(linker):
    out = linker.link_item(_item("Stiff man syndrome and diabetes mellitus", {"A": "x", "B": "y"}))
    assert _codes(out.mentions[0]) == ["ICD10CM:G25.82"]
    assert _codes(out.mentions[1]) == ["ICD10CM:E11.9", "ICD9CM:250.00"]  # ICD-10-CM ranked first
    assert out.mentions[1].codes[0].score >= out.mentions[1].codes[1].score


def test_generic_words_and_acronym_case(linker, lexicon):
    out = linker.link_item(_item("Acute pain in all patients with severe disease.", {"A": "CAT", "B": "ALL"}))
    # "all" != "ALL"; CAT is a gene; "pain" is a symptom (R52 in the gold rules), "acute" names nothing.
    assert [(m.text, m.field) for m in out.mentions] == [("pain", "stem"), ("ALL", "option:B")]
    assert "acute" not in lexicon.ci_index and "pain" in lexicon.ci_index
    assert "severe disease" not in lexicon.ci_index


def test_unlinked_entries_dropped_unless_asked(lexicon):
    item = _item("Lupus and seizure", {"A": "a", "B": "b"})
    default = Linker.from_lexicon(lexicon, LinkConfig(embedding_fallback=False)).link_item(item)
    keep = Linker.from_lexicon(lexicon, LinkConfig(embedding_fallback=False, keep_unlinked=True)).link_item(item)
    assert [m.text for m in default.mentions] == ["seizure"]
    assert [m.text for m in keep.mentions] == ["Lupus", "seizure"]


def test_term_variants():
    assert "autosomal recessive Deafness" in term_variants("Deafness, autosomal recessive")
    assert "Epilepsy" in term_variants("Epilepsy, unspecified")
    assert "chronic Venous insufficiency" in term_variants("Venous insufficiency (chronic) (peripheral)")


def test_kg_codes_ranked_by_word_overlap_with_description():
    rows = pd.DataFrame([("stiff-person syndrome", "disease", "MONDO:7", "test",
                          [("ICD10CM", "G25.8", 0.9), ("ICD10CM", "G25.82", 0.9)])],
                        columns=["term", "kind", "concept", "source", "codes"])
    texts = {"ICD10CM:G25.8": "Other specified extrapyramidal and movement disorders",
             "ICD10CM:G25.82": "Stiff-man syndrome"}
    lex = Lexicon.from_terms(rows, spacy.blank("en").tokenizer, code_texts=texts)
    codes = lex.codes(lex.ci_index["stiff person syndrome"])
    assert [c.code for c in codes] == ["G25.82", "G25.8"] and codes[0].score < 1.0


def test_target_type():
    assert target_type("Which medications act upon genes or proteins?") == "drug"
    assert target_type("What condition is associated with the TBX4 gene?") == "disease"
    assert target_type("Identify genes or proteins that interact with CD4.") == "gene"
    assert target_type("Which anatomical structures lack expression?") == "other"


def test_drug_synonyms_inherit_atc_codes_of_substance_names():
    from disease_linking.sources import drug_ner_terms

    class NoGraph:  # a KG that knows no drug: codes can only come from ATC substance names
        def node_id(self, key):
            return None

    table = pd.DataFrame({"system": ["ATC", "ATC"], "code": ["P01AX05", "P01AX"],
                          "description": ["mepacrine", "Other agents against amoebiasis"]})
    rows = drug_ner_terms(NoGraph(), None, table)
    quinacrine = rows[rows.term.str.lower() == "quinacrine"]
    assert not quinacrine.empty and quinacrine.iloc[0].codes == [("ATC", "P01AX05", 0.85)]
    assert quinacrine.iloc[0].concept.startswith("DB")


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


MEDDDX = [{"query": "Which drug treats type 2 diabetes mellitus?\nA: Aspirin\nB: Metformin\nC: x\nD: y\nE: n/a\n",
           "answer": "B", "sim_level_std": 0.01}]


def test_both_input_layouts_link_identically(tmp_path, linker):
    meddx, _ = load_mcq(_write(tmp_path / "m.json", MEDDDX))
    authors, _ = load_mcq(_write(tmp_path / "a.json", [{"input": [
        "Which drug treats type 2 diabetes mellitus?\nA: Aspirin\nB: Metformin\nC: x\nD: y", "B"],
        "medical_codes": []}]))
    a, b = linker.link_items(meddx)[0], linker.link_items(authors)[0]
    assert a.options == b.options and list(a.options) == ["A", "B", "C", "D"]
    assert [m.__dict__ for m in a.mentions] == [m.__dict__ for m in b.mentions]
    exported = to_authors_layout(a)
    assert exported["input"][1] == "B"
    assert exported["medical_codes"][:1] == ["ICD10CM:E11"] and "ATC:B01AC06" in exported["medical_codes"]


def test_bad_input_is_one_line_error_naming_the_item(tmp_path, capsys):
    bad = _write(tmp_path / "bad.json", MEDDDX + [{"query": "No options here", "answer": "A"}])
    with pytest.raises(MCQFormatError, match="bad-00001"):
        load_mcq(bad)
    items, skipped = load_mcq(bad, skip_invalid=True)
    assert (len(items), len(skipped)) == (1, 1)
    with pytest.raises(SystemExit) as exc:
        link_main(["--input", str(bad), "--output", str(tmp_path / "o.jsonl")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad-00001: found 0 option" in err and "\n" not in err


def test_deterministic_and_summary(linker):
    items = [_item("type 2 diabetes mellitus and aspirin", {"A": "Seizure", "B": "b"}),
             MCQItem("t-2", "Which gene?", {"A": "CD4", "B": "CD8"}, "A", "Expert", 0.01)]
    first = [json.dumps(it.to_json()) for it in linker.link_items(items)]
    second = [json.dumps(it.to_json()) for it in linker.link_items(items)]
    assert first == second
    s = summarize(linker.link_items(items))
    assert s["all"]["coverage_stem"] == 0.5 and s["Basic"]["coverage_stem_options"] == 1.0
    assert s["Expert"]["coverage_stem_options"] == 0.0
    assert s["Basic"]["coverage_by_kind_stem_options"] == {"disease": 1.0, "drug": 1.0, "phenotype": 1.0}


def test_cli_writes_linked_authors_and_summary(tmp_path, linker, monkeypatch):
    from disease_linking.linker import Linker

    monkeypatch.setattr(Linker, "from_cache", classmethod(lambda cls, *a, **k: linker))
    src = _write(tmp_path / "m.json", MEDDDX)
    out = tmp_path / "out" / "linked.jsonl"
    link_main(["--input", str(src), "--output", str(out), "--authors_output", str(tmp_path / "qa.json"),
               "--progress", "false"])
    (item,), _ = load_mcq(out)
    assert [m.text for m in item.mentions] == ["type 2 diabetes mellitus", "Aspirin"]
    assert json.loads((tmp_path / "qa.json").read_text())[0]["medical_codes"][0] == "ICD10CM:E11"
    summary = json.loads((tmp_path / "out" / "linked.summary.json").read_text())
    assert summary["Expert"]["coverage_stem"] == 1.0 and summary["run"]["questions"] == 1
    # A named layout reads the same file the same way as auto.
    link_main(["--input", str(src), "--layout", "meddx", "--output", str(tmp_path / "named.jsonl"),
               "--progress", "false"])
    (named,), _ = load_mcq(tmp_path / "named.jsonl")
    assert [(m.text, m.codes[0].code) for m in named.mentions] == [(m.text, m.codes[0].code) for m in item.mentions]


MEDDDX_FILE = Path(os.environ.get("MEDTOK_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "meddx" / "MedDDx.json"


@pytest.mark.integration
@pytest.mark.skipif(not MEDDDX_FILE.is_file(), reason="MedDDx.json not in the data directory")
def test_real_meddx_parses_and_links_fast(linker):
    items, skipped = load_mcq(MEDDDX_FILE, skip_invalid=True)
    # two MedDDx questions repeat the right answer's text in another option: unscoreable, skipped
    assert len(items) == 1767 and len(skipped) == 2
    assert all(any(qid in s for s in skipped) for qid in ("medddx-00809", "medddx-01482"))
    out = linker.link_items(items)
    assert sum(bool(it.mentions) for it in out) >= 20  # the tiny lexicon still finds diabetes, aspirin, ...
    for it in out:
        for m in it.mentions:
            assert it.field_text(m.field)[m.start:m.end] == m.text


# --------------------------------------------------------------------------- rules (disease_linking/rules.py)
RULE_TERMS = [
    ("dopamine", "drug", "ATC:C01CA04", [("ATC", "C01CA04", 1.0)]),
    ("glycine", "drug", "ATC:B05CX03", [("ATC", "B05CX03", 1.0)]),
    ("Glycogen storage disease", "disease", "MONDO:8", [("ICD10CM", "E74.00", 0.9)]),
    ("Zinc", "drug", "DB01593", [("ATC", "A12CB01", 0.9)]),
    ("Nicotinamide", "drug", "ATC:A11HA01", [("ATC", "A11HA01", 1.0)]),
    ("Enzymes", "drug", "ATC:A16AB", [("ATC", "A16AB", 0.99), ("ATC", "B01AD", 0.99)]),
    ("multiple endocrine neoplasia", "disease", "MONDO:9",
     [("ICD10CM", "E31.21", 0.9), ("ICD10CM", "E31.22", 0.9), ("ICD10CM", "E31.23", 0.9)]),
    ("deficiency anemia", "disease", "MONDO:10", [("ICD9CM", "281.9", 0.94), ("ICD10CM", "D53.9", 0.88)]),
    ("idiopathic generalized epilepsy", "disease", "ICD10CM:G40.309", [("ICD10CM", "G40.309", 0.95)]),
    ("epilepsy", "disease", "ICD10CM:G40.909", [("ICD10CM", "G40.909", 1.0)]),
    ("nabothian cyst", "disease", "MONDO:11", []),
    ("Alzheimer", "disease", "ICD10CM:G30", [("ICD10CM", "G30", 1.0)]),
    ("cognitive impairment", "phenotype", "HP:1", [("ICD10CM", "R41.89", 0.8)]),
    ("albumin", "drug", "ATC:B05AA01", [("ATC", "B05AA01", 1.0)]),
    ("cerebrovascular accident", "disease", "MONDO:12", [("ICD10CM", "I67.9", 0.895), ("ICD10CM", "I63.9", 0.85)]),
    ("Stroke", "disease", "ICD10CM:I63.9", [("ICD10CM", "I63.9", 0.95), ("ICD10CM", "I67.9", 0.85)]),
    ("Postpartum hemorrhage", "disease", "ICD10CM:O72.1", [("ICD10CM", "O72.1", 0.95)]),
]


@pytest.fixture(scope="module")
def rule_linker() -> Linker:
    rows = pd.DataFrame([(t, k, c, "test", codes) for t, k, c, codes in RULE_TERMS],
                        columns=["term", "kind", "concept", "source", "codes"])
    return Linker.from_lexicon(Lexicon.from_terms(rows, spacy.blank("en").tokenizer),
                               LinkConfig(embedding_fallback=False))


def _texts(item) -> list[str]:
    return [m.text for m in item.mentions]


def test_rule_molecule_and_pathway_names_are_not_mentions(rule_linker):
    out = rule_linker.link_item(_item(
        "Which drugs act on the dopamine D1 receptor, glycine C-acetyltransferase and the Glycogen storage "
        "diseases pathway, unlike dopamine or glycine?", {"A": "a", "B": "b"}))
    assert _texts(out) == ["dopamine", "glycine"]  # only the last two, which name the substances


def test_rule_parts_of_chemical_names_and_drug_classes_are_not_drug_mentions(rule_linker):
    out = rule_linker.link_item(_item("Which drug?", {"A": "Zinc cation", "B": "Nicotinamide adenine dinucleotide",
                                                        "C": "Enzymes", "D": "Zinc"}))
    assert [(m.field, m.text) for m in out.mentions] == [("option:D", "Zinc")]


def test_rule_ranking_icd9_last_and_parent_of_tied_siblings_first(rule_linker):
    out = rule_linker.link_item(_item("multiple endocrine neoplasia or deficiency anemia?", {"A": "a", "B": "b"}))
    men, anemia = out.mentions
    assert _codes(men)[0] == "ICD10CM:E31.2" and "tied" in men.codes[0].why
    assert _codes(men)[1:] == ["ICD10CM:E31.21", "ICD10CM:E31.22", "ICD10CM:E31.23"]
    assert _codes(anemia) == ["ICD10CM:D53.9", "ICD9CM:281.9"]


def test_rule_inverted_option_is_looked_up_as_one_term(rule_linker):
    out = rule_linker.link_item(_item("Which disease?", {"A": "epilepsy, idiopathic generalized", "B": "epilepsy"}))
    a, b = out.mentions
    assert (a.text, _codes(a)) == ("epilepsy, idiopathic generalized", ["ICD10CM:G40.309"])
    assert "inverted" in a.codes[0].why and _codes(b) == ["ICD10CM:G40.909"]


def test_rule_options_of_gene_and_pathway_questions_are_not_linked(rule_linker):
    gene_q = rule_linker.link_item(_item("Which gene or protein interacts with X?", {"A": "dopamine", "B": "Zinc"}))
    drug_q = rule_linker.link_item(_item("Which pharmacological substances bind genes of X?",
                                         {"A": "dopamine", "B": "Zinc"}))
    assert gene_q.mentions == [] and _texts(drug_q) == ["dopamine", "Zinc"]


def test_rule_non_prefix_negates_a_mention(rule_linker):
    out = rule_linker.link_item(_item("Drugs for non-Alzheimer's cognitive impairment or Alzheimer?",
                                      {"A": "a", "B": "b"}))
    assert _texts(out) == ["cognitive impairment", "Alzheimer"]  # the negated one is gone, not the other


def test_rule_binding_partner_is_a_protein_not_a_drug(rule_linker):
    out = rule_linker.link_item(_item("Which drugs bind to albumin, and which bind to the albumin given "
                                      "as albumin infusions?", {"A": "a", "B": "b"}))
    assert [m.start for m in out.mentions] == [68]  # only the infused albumin


def test_rule_parenthetical_synonyms_share_their_best_code(rule_linker):
    out = rule_linker.link_item(_item("Subtypes of cerebrovascular accident (stroke)? Or a cerebrovascular accident?",
                                      {"A": "a", "B": "b"}))
    cva, stroke, alone = out.mentions
    assert _codes(cva)[0] == "ICD10CM:I63.9" and "parenthetical synonym 'stroke'" in cva.codes[0].why
    assert _codes(stroke)[0] == "ICD10CM:I63.9"
    assert _codes(alone)[0] == "ICD10CM:I67.9"  # without its synonym, the entry's own ranking
    # I63.9 "Cerebral infarction" shares no word with "cerebrovascular accident" (an unsupported
    # cross-reference), but the parenthetical synonym's agreement supports it: first, unflagged.
    texts = {"ICD10CM:I63.9": "Cerebral infarction, unspecified", "ICD10CM:I67.9": "Cerebrovascular disease, unspecified"}
    checked = Linker.from_lexicon(rule_linker.lexicon, LinkConfig(embedding_fallback=False), code_texts=texts)
    cva, stroke = checked.link_item(_item("Subtypes of cerebrovascular accident (stroke)?", {"A": "a", "B": "b"})).mentions
    assert _codes(cva)[0] == _codes(stroke)[0] == "ICD10CM:I63.9" and "shares no word" not in cva.codes[0].why


def test_rule_lay_synonym_meets_the_icd_word(rule_linker):
    out = rule_linker.link_item(_item("Which drugs reduce postpartum bleeding?", {"A": "a", "B": "b"}))
    assert [(m.text, _codes(m)) for m in out.mentions] == [("postpartum bleeding", ["ICD10CM:O72.1"])]


def test_rule_unsupported_cross_references_are_flagged():
    from disease_linking.calibration import FEATURES, code_features

    texts = {"ICD10CM:E13": "Other specified diabetes mellitus", "ICD10CM:K22.4": "Dyskinesia of esophagus",
             "ICD10CM:G12.21": "Amyotrophic lateral sclerosis"}
    rows = pd.DataFrame([
        ("insulin-resistance syndrome", "disease", "MONDO:1", "test", [("ICD10CM", "E13", 0.9)]),  # a name
        ("esophageal motility disorder", "disease", "MONDO:3", "test", [("ICD10CM", "K22.4", 0.85)]),
        ("Amyotrophic lateral sclerosis", "disease", "ICD10CM:G12.21", "test", [("ICD10CM", "G12.21", 1.0)]),
        ("Lou Gehrig disease", "disease", "MONDO:4", "test", [("ICD10CM", "G12.21", 0.85)]),  # a synonym
        ("ALS", "disease", "MONDO:4", "test", [("ICD10CM", "G12.21", 0.85)]),
    ], columns=["term", "kind", "concept", "source", "codes"])
    lex = Lexicon.from_terms(rows, spacy.blank("en").tokenizer)
    linker = Linker.from_lexicon(lex, LinkConfig(embedding_fallback=False), code_texts=texts)
    out = linker.link_item(_item("Which disease?", {"A": "insulin-resistance syndrome", "B": "esophageal motility "
                                 "disorder", "C": "Lou Gehrig disease", "D": "amyotrophic lateral sclerosis (ALS)"}))
    flags = {m.text: tuple(code_features(m, m.codes[0])[FEATURES.index(f)] for f in ("unsupported_xref",
                                                                                     "unsupported_synonym"))
             for m in out.mentions}
    assert flags == {"insulin-resistance syndrome": (1.0, 0.0),  # E13 names no insulin resistance
                     "esophageal motility disorder": (0.0, 0.0),  # "esophageal" ~ "esophagus" (7-letter stems)
                     "Lou Gehrig disease": (1.0, 1.0),  # right, but only a synonym's cross-reference says so
                     "amyotrophic lateral sclerosis": (0.0, 0.0), "ALS": (0.0, 0.0)}  # the description itself
    assert "shares no word with its code 'Other specified diabetes mellitus'" in out.mentions[0].codes[0].why
    plain = Linker.from_lexicon(lex, LinkConfig(embedding_fallback=False)).link_item(out)
    assert not any("shares no word" in c.why for m in plain.mentions for c in m.codes)  # no descriptions, no check


def test_rule_same_span_is_one_mention(lexicon):
    class OneHit:  # a fallback index that finds a code for every text
        def search(self, texts, top_k, threshold):
            return [[CodeRef("ICD10CM", "N88.8", 0.95, why="embedding fallback")] for _ in texts]

    rows = pd.DataFrame([("nabothian cyst", "disease", "MONDO:11", "test", [])],
                        columns=["term", "kind", "concept", "source", "codes"])
    lex = Lexicon.from_terms(rows, spacy.blank("en").tokenizer)
    linker = Linker.from_lexicon(lex, LinkConfig(), code_index=OneHit())
    # The uncoded lexicon hit and the whole-option fallback both propose the option: one mention.
    out = linker.link_item(_item("Which condition of the cervix?", {"A": "nabothian cyst", "B": "disease"}))
    assert [(m.field, m.text, _codes(m)) for m in out.mentions] == [("option:A", "nabothian cyst", ["ICD10CM:N88.8"])]


def test_codes_say_why_they_were_chosen(linker):
    item = _item("A smoker with chronic obstructive pulmonary disease (COPD) asks about COPD.", {"A": "x", "B": "y"})
    out = linker.link_item(item)
    whys = [m.codes[0].why for m in out.mentions]
    assert whys[0] == "lexicon 'Chronic obstructive pulmonary disease' [ICD10CM:J44.9]"
    assert whys[-1].startswith("abbreviation 'COPD' defined in the question; lexicon")
    saved = MCQItem.from_json(json.loads(json.dumps(out.to_json())))
    assert saved.mentions[0].codes[0].why == whys[0]


# --------------------------------------------------------------------------- calibration
def test_calibration_fit_orders_and_roundtrips(tmp_path):
    import numpy as np

    from disease_linking.calibration import FEATURES, Calibrator, fit, reliability

    rng = np.random.default_rng(0)
    x = np.zeros((400, len(FEATURES)))
    x[:, 0] = 1.0
    x[:, 1] = rng.uniform(0.7, 1.0, 400)  # score
    y = (rng.uniform(size=400) < (x[:, 1] - 0.6) * 2.5).astype(float)  # right more often at high score
    cal = Calibrator(fit(x, y).tolist(), {"fit_on": "synthetic"})
    low = Mention("x", 0, 1, "stem", [CodeRef("ICD10CM", "A00", 0.72)], kind="disease")
    high = Mention("x", 0, 1, "stem", [CodeRef("ICD10CM", "A00", 0.98)], kind="disease")
    assert cal.prob(low, low.codes[0]) < 0.5 < cal.prob(high, high.codes[0])
    cal.save(tmp_path / "c.json")
    again = Calibrator.load(tmp_path / "c.json")
    assert again.prob(high, high.codes[0]) == pytest.approx(cal.prob(high, high.codes[0]))
    table = reliability([0.05, 0.15, 0.95, 0.97], [False, False, True, False], bins=10)
    assert [(r["n"], r["accuracy"]) for r in table] == [(1, 0.0), (1, 0.0), (2, 0.5)]


def test_confidence_on_codes_and_dropping_low_ones(lexicon):
    from disease_linking.calibration import FEATURES, Calibrator

    class OnlyDrugs(Calibrator):  # confident for drugs, not for anything else
        def __init__(self):
            super().__init__([0.0] * len(FEATURES))

        def prob(self, m, c):
            return 0.9 if m.kind == "drug" else 0.2

    linker = Linker.from_lexicon(lexicon, LinkConfig(embedding_fallback=False, calibration=""))
    linker.calibrator = OnlyDrugs()
    item = _item("type 2 diabetes mellitus and aspirin", {"A": "Seizure", "B": "b"})
    out = linker.link_item(item)
    assert [(m.text, m.codes[0].confidence) for m in out.mentions] == [
        ("type 2 diabetes mellitus", 0.2), ("aspirin", 0.9), ("Seizure", 0.2)]
    linker.cfg = LinkConfig(embedding_fallback=False, calibration="", min_confidence=0.5)
    assert [m.text for m in linker.link_item(item).mentions] == ["aspirin"]


def test_qa_side_drops_low_confidence_codes():
    from qa.data import linked_codes

    item = _item("q", {"A": "a", "B": "b"})
    item.mentions = [Mention("x", 0, 1, "stem", [CodeRef("ICD10CM", "E11", 1.0, confidence=0.4)]),
                     Mention("y", 2, 3, "stem", [CodeRef("ATC", "B01AC06", 1.0, confidence=0.95)]),
                     Mention("z", 4, 5, "stem", [CodeRef("ICD10CM", "R56.9", 1.0)])]  # uncalibrated: kept
    assert linked_codes(item) == ["ICD10CM:E11", "ATC:B01AC06", "ICD10CM:R56.9"]
    assert linked_codes(item, min_confidence=0.5) == ["ATC:B01AC06", "ICD10CM:R56.9"]


def test_rule_uncoded_concepts_bridged_by_synonym_and_possessive_eponyms():
    from disease_linking.sources import BRIDGE_SCORE, bridge_uncoded_concepts, eponym_terms

    rows = pd.DataFrame([
        ("Intracerebral hemorrhage, unspecified", "disease", "ICD10CM:I61.9", "ICD10CM", [("ICD10CM", "I61.9", 1.0)]),
        ("Unresponsiveness", "phenotype", "ICD10CM:R40.4", "ICD10CM", [("ICD10CM", "R40.4", 1.0)]),
        ("Cerebral hemorrhage", "phenotype", "HP:1", "phenotype", []),
        ("Intracerebral hemorrhage", "phenotype", "HP:1", "phenotype-synonym", []),
        ("Unresponsiveness", "phenotype", "HP:2", "phenotype-synonym", []),
        ("Unresponsive", "phenotype", "HP:2", "phenotype", []),
        ("Parkinson's disease", "disease", "MONDO:5", "disease", [("ICD10CM", "G20", 0.9)]),
        ("Blood disease", "disease", "MONDO:6", "disease", [("ICD10CM", "D75.9", 0.9)]),
    ], columns=["term", "kind", "concept", "source", "codes"])
    out = bridge_uncoded_concepts(eponym_terms(rows))
    by_term = dict(zip(out.term, out.codes, strict=True))
    # Every name of the uncoded concept gets the code its synonym names, below direct sources.
    assert by_term["Cerebral hemorrhage"] == [("ICD10CM", "I61.9", BRIDGE_SCORE)]
    assert by_term["Unresponsive"] == []  # a one-word adjective names nothing in a question
    assert by_term["Parkinson"] == [("ICD10CM", "G20", 0.9)] and "Blood" not in by_term


# --------------------------------------------------------------------------- gold standard v2
def test_ann_format_and_seeded_halves():
    from eval.linking_gold import GoldFormatError, parse_ann, split_halves

    qs, lines = parse_ann("# medddx-00001\nstem | fever#2 | phenotype? | ICD10CM:R50.9\nB | aspirin | drug | ATC:B01AC06"
                          "\n# medddx-00002\n")
    assert qs == ["medddx-00001", "medddx-00002"]
    a, b = lines
    assert (a.field, a.text, a.occurrence, a.kind, a.uncertain) == ("stem", "fever", 2, "phenotype", True)
    assert (b.field, b.codes) == ("option:B", ["ATC:B01AC06"])
    with pytest.raises(GoldFormatError, match="kind 'gene'"):
        parse_ann("# medddx-00001\nstem | CD4 | gene | X:1")
    sample = {"Basic": ["b1", "b2", "b3"], "Intermediate": ["i1", "i2"], "Expert": ["e1", "e2"]}
    tune, report = split_halves(sample)
    assert tune == ["b1", "b3", "e1", "i1"] and report == ["b2", "e2", "i2"]
    longer = {**sample, "Basic": ["b1", "b2", "b3", "b4"]}  # extending a sample moves nobody
    assert set(tune) <= set(split_halves(longer)[0]) and set(report) <= set(split_halves(longer)[1])


def test_scorer_accepts_ancestors_down_to_category_and_atc_level_4():
    from recipes.linking_quality import acceptable

    ok = acceptable(["ICD10CM:G40.909", "ATC:A01AB03"])
    assert {"ICD10CM:G40.90", "ICD10CM:G40.9", "ICD10CM:G40", "ATC:A01AB"} <= ok
    assert not {"ICD10CM:G4", "ATC:A01A", "ICD10CM:G40.1"} & ok


@pytest.mark.integration
@pytest.mark.skipif(not MEDDDX_FILE.is_file(), reason="MedDDx.json not in the data directory")
def test_gold_v2_spans_and_codes_are_real():
    from eval.linking_gold import GOLD_V2, load_gold
    from medtok_core.vocab import VocabConfig, load_or_build_vocab

    header, records = load_gold(GOLD_V2)
    items = {it.id: it for it in load_mcq(MEDDDX_FILE, skip_invalid=True)[0]}
    vocab = load_or_build_vocab(VocabConfig())
    assert len(header["questions"]) >= 90 and len(records) >= 300
    assert set(header["tune"]).isdisjoint(header["report"])
    for r in records:
        assert items[r["id"]].field_text(r["field"])[r["start"]:r["end"]] == r["text"]
        assert all(vocab.lookup(c) is not None for c in r["codes"]), r


def test_rule_known_uncoded_concepts_have_their_own_fallback_threshold():
    class Sim085:  # every text's nearest code description has cosine 0.85
        def search(self, texts, top_k, threshold):
            return [[CodeRef("ICD10CM", "N88.8", 0.85)] if 0.85 >= threshold else [] for _ in texts]

    rows = pd.DataFrame([("nabothian cyst", "disease", "MONDO:11", "test", [])],
                        columns=["term", "kind", "concept", "source", "codes"])
    lex = Lexicon.from_terms(rows, spacy.blank("en").tokenizer)
    item = _item("Is a nabothian cyst a glandular neuropathy?", {"A": "a", "B": "b"})
    both = Linker.from_lexicon(lex, LinkConfig(fallback_threshold=0.9, known_fallback_threshold=0.8),
                               code_index=Sim085()).link_item(item)
    assert _texts(both) == ["nabothian cyst"]  # the known concept passes 0.8, the phrase needs 0.9
    strict = Linker.from_lexicon(lex, LinkConfig(fallback_threshold=0.9, known_fallback_threshold=0.9),
                                 code_index=Sim085()).link_item(item)
    assert strict.mentions == []
    loose = Linker.from_lexicon(lex, LinkConfig(fallback_threshold=0.8, known_fallback_threshold=0.8),
                                code_index=Sim085()).link_item(item)
    assert _texts(loose) == ["nabothian cyst", "glandular neuropathy"]


def test_rule_one_word_adjectives_get_no_code_by_meaning():
    class Sim085:
        def search(self, texts, top_k, threshold):
            return [[CodeRef("ICD10CM", "E88.40", 0.85)] for _ in texts]

    rows = pd.DataFrame([("Mitochondrial", "phenotype", "HP:1", "test", []),
                         ("Mitochondrial myopathy", "disease", "MONDO:1", "test", [])],
                        columns=["term", "kind", "concept", "source", "codes"])
    lex = Lexicon.from_terms(rows, spacy.blank("en").tokenizer)
    linker = Linker.from_lexicon(lex, LinkConfig(known_fallback_threshold=0.8), code_index=Sim085())
    out = linker.link_item(_item("Which mitochondrial genes cause mitochondrial myopathy?", {"A": "a", "B": "b"}))
    assert _texts(out) == ["mitochondrial myopathy"]


def test_rule_bare_symptom_takes_the_unspecified_code_not_the_residual_one():
    rows = pd.DataFrame([("Pain, not elsewhere classified", "disease", "ICD10CM:G89", "ICD10CM", [("ICD10CM", "G89", 1.0)]),
                         ("Pain, unspecified", "phenotype", "ICD10CM:R52", "ICD10CM", [("ICD10CM", "R52", 1.0)])],
                        columns=["term", "kind", "concept", "source", "codes"])
    linker = Linker.from_lexicon(Lexicon.from_terms(rows, spacy.blank("en").tokenizer), LinkConfig(embedding_fallback=False))
    out = linker.link_item(_item("Which drugs alleviate pain?", {"A": "a", "B": "b"}))
    assert [(m.text, _codes(m)) for m in out.mentions] == [("pain", ["ICD10CM:R52", "ICD10CM:G89"])]


def test_threshold_tuning_needs_the_added_codes_to_be_precise_too():
    from recipes.linking_quality import marginal_precision

    base = {"predicted": 100, "right": 85, "gold": 120, "code_recall_at_1": 85 / 120}
    looser = {"predicted": 110, "right": 92, "gold": 120, "code_recall_at_1": 92 / 120}  # +10 codes, 7 right
    assert marginal_precision(looser, base) == pytest.approx(0.7)
    assert marginal_precision(base, base) == 1.0  # adds nothing


def test_confidence_curve_and_readme_block():
    from recipes.linking_quality import QualityConfig, confidence_curve, page_block

    def item(qid, conf):
        m = Mention("fever", 0, 5, "stem", [CodeRef("ICD10CM", "R50.9", 1.0, confidence=conf)], kind="phenotype")
        return MCQItem(qid, "fever?", {"A": "a"}, "A", "Basic", 0.1, mentions=[m])

    gold = [{"id": "q1", "field": "stem", "start": 0, "end": 5, "kind": "phenotype", "codes": ["ICD10CM:R50.9"]},
            {"id": "q2", "field": "stem", "start": 0, "end": 5, "kind": "phenotype", "codes": ["ICD10CM:R50.8"]}]
    curve = confidence_curve([item("q1", 0.9), item("q2", 0.6)], gold, [0.0, 0.7])
    assert [(r["predicted"], r["code_precision"], r["code_recall_at_1"]) for r in curve] == [(2, 0.5, 0.5), (1, 1.0, 0.5)]
    sc = {"gold": 2, "predicted": 2, "mention_precision": 1.0, "mention_recall": 1.0, "code_precision": 0.5,
          "code_recall_at_1": 0.5}
    after = {"splits": {"v2-report": {"mentions": 2, "questions": 2, "all": sc}}, "load_s": 1.0}
    before = {"splits": {"v2-report": {"all": {**sc, "code_precision": 0.25}}}}
    block = page_block(after, before, QualityConfig(plot=""))
    assert "| all | 2 | 100.0 -> **100.0** | 100.0 -> **100.0** | 25.0 -> **50.0** | 50.0 -> **50.0** |" in block

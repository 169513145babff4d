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
from disease_linking.link import main as link_main
from disease_linking.linker import LinkConfig, Linker, target_type
from disease_linking.questions import MCQFormatError, MCQItem, load_mcq, to_authors_layout
from disease_linking.summary import summarize

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
    assert [(m.text, m.field) for m in out.mentions] == [("ALL", "option:B")]  # "all" != "ALL"; CAT is a gene
    assert "acute" not in lexicon.ci_index and "pain" not in lexicon.ci_index
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
    from disease_linking import link as link_cli

    monkeypatch.setattr(link_cli.Linker, "from_cache", classmethod(lambda cls, *a, **k: linker))
    src = _write(tmp_path / "m.json", MEDDDX)
    out = tmp_path / "out" / "linked.jsonl"
    link_main(["--input", str(src), "--output", str(out), "--authors_output", str(tmp_path / "qa.json"),
               "--progress", "false"])
    (item,), _ = load_mcq(out)
    assert [m.text for m in item.mentions] == ["type 2 diabetes mellitus", "Aspirin"]
    assert json.loads((tmp_path / "qa.json").read_text())[0]["medical_codes"][0] == "ICD10CM:E11"
    summary = json.loads((tmp_path / "out" / "linked.summary.json").read_text())
    assert summary["Expert"]["coverage_stem"] == 1.0 and summary["run"]["questions"] == 1


MEDDDX_FILE = Path(os.environ.get("MEDTOK_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "meddx" / "MedDDx.json"


@pytest.mark.integration
@pytest.mark.skipif(not MEDDDX_FILE.is_file(), reason="MedDDx.json not in the data directory")
def test_real_meddx_parses_and_links_fast(linker):
    items, skipped = load_mcq(MEDDDX_FILE)
    assert (len(items), skipped) == (1769, 0)
    out = linker.link_items(items)
    assert sum(bool(it.mentions) for it in out) >= 20  # the tiny lexicon still finds diabetes, aspirin, ...
    for it in out:
        for m in it.mentions:
            assert it.field_text(m.field)[m.start:m.end] == m.text

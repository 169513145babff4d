"""Question parsing (both layouts), tiers, and the linked JSONL round trip."""

import json

import pytest

from disease_linking.questions import (
    CodeRef,
    MCQFormatError,
    Mention,
    load_mcq,
    read_jsonl,
    split_question,
    tier_of,
    to_authors_layout,
    write_jsonl,
)

MEDDX = {"query": "Which drug treats beriberi?\nA: Niacin\nB: Thiamine\nC: Zinc\nD: Iron\n",
         "answer": "B", "sim_level_std": 0.05}


def test_tiers_follow_kgarevion_rule():
    assert tier_of(0.041) == "Basic"
    assert tier_of(0.04) == "Intermediate"
    assert tier_of(0.02) == "Intermediate"
    assert tier_of(0.0199) == "Expert"
    assert tier_of(None) is None


def test_split_question_multiline_stem_and_na_option():
    stem, options = split_question("Find genes that:\n\n1. bind X\n2. do Y\nA: G1\nB: G2\nC: G3\nE: n/a")
    assert stem == "Find genes that:\n\n1. bind X\n2. do Y"
    assert options == {"A": "G1", "B": "G2", "C": "G3"}


def test_five_options_kept():
    _, options = split_question("Q?\nA: a\nB: b\nC: c\nD: d\nE: e")
    assert list(options) == list("ABCDE")


@pytest.mark.parametrize("text, message", [
    ("Q?\nA: only", "found 1 option"),
    ("Q? no options here", "found 0 option"),
    ("A: a\nB: b", "no stem"),
    ("Q?\nA: a\nC: c", "consecutive letters"),
])
def test_malformed_questions(text, message):
    with pytest.raises(MCQFormatError, match=message):
        split_question(text, "item-7")


def test_both_layouts_and_skip_invalid(tmp_path):
    authors = {"input": ["Which drug treats beriberi?\nA: Niacin\nB: Thiamine\nC: Zinc\nD: Iron", "B: Thiamine"],
               "medical_codes": ["ICD10CM:E51.11"], "tier": "Basic"}
    bad = {"query": "Broken?\nA: x", "answer": "A"}
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([MEDDX, authors, bad]))
    with pytest.raises(MCQFormatError, match="mixed-00002"):
        load_mcq(path)
    items, skipped = load_mcq(path, skip_invalid=True)
    assert len(skipped) == 1 and "found 1 option" in skipped[0]
    assert [i.answer for i in items] == ["B", "B"]
    assert items[0].tier == "Basic" and items[1].tier == "Basic"
    assert items[1].medical_codes == ["ICD10CM:E51.11"]
    assert items[0].question == items[1].question and items[0].options == items[1].options


def test_answer_must_be_an_existing_option(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps([{**MEDDX, "answer": "E"}]))
    with pytest.raises(MCQFormatError, match="answer E is not among its options"):
        load_mcq(path)


def test_linked_jsonl_round_trip_and_authors_export(tmp_path):
    (item,), _ = load_mcq(_write(tmp_path / "q.json", [MEDDX]))
    item.mentions = [Mention("beriberi", 18, 26, "stem", [CodeRef("ICD10CM", "E51.11", 0.9)]),
                     Mention("Thiamine", 0, 8, "option:B", [CodeRef("ATC", "A11DA01", 1.0)])]
    assert item.field_text("stem")[18:26] == "beriberi"
    write_jsonl(tmp_path / "linked.jsonl", [item])
    (again,) = list(read_jsonl(tmp_path / "linked.jsonl"))
    assert again == item
    exported = to_authors_layout(again)
    assert exported["input"][1] == "B"
    assert exported["medical_codes"] == ["ICD10CM:E51.11", "ATC:A11DA01"]
    assert exported["input"][0].endswith("D: Iron")


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path

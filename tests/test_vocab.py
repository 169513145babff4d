"""Code vocabulary: real package loaders, user CSV validation and merging, ids, lookups, parquet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from commons.errors import ConfigError, DataFileError, UserError
from medtok_core import code_systems as cs
from medtok_core.vocab import (
    CodeVocab,
    VocabConfig,
    build_vocab,
    load_or_build_vocab,
    load_user_codes,
    vocab_cache_key,
)

SMALL = ["ATC", "ICD9PCS"]  # fast systems for tests that build more than once


@pytest.fixture(scope="module")
def vocab() -> CodeVocab:
    """The full offline vocabulary, built once per module (cached under the test cache dir)."""
    return load_or_build_vocab(VocabConfig())


def write_csv(tmp_path, text: str, name: str = "codes.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD_CSV = """system,code,description,parent
SNOMEDCT,73211009,Diabetes mellitus,
SNOMEDCT,44054006,Diabetes mellitus type 2,73211009
RxNorm,860975,metformin 500 MG Extended Release Oral Tablet,
ICD9PCS,45.13,Upper GI endoscopy (user wording),
ATC,A10BA99,made-up biguanide for a user list,A10BA
"""


# --------------------------------------------------------------------------------------- loaders
def test_icd10cm_in_vocab_has_chapters_blocks_codes_and_inclusion_terms(vocab):
    t = vocab.table[vocab.table.system == "ICD10CM"]
    assert len(t) > 95_000
    by_code = t.set_index("code")
    assert by_code.at["E11.9", "description"] == "Type 2 diabetes mellitus without complications"
    assert by_code.at["E11.9", "parent"] == "E11"
    assert by_code.at["E11", "parent"] == "E08-E13"
    assert by_code.at["E08-E13", "parent"] == "4"
    assert by_code.at["4", "parent"] == ""
    assert "Classical cholera" in by_code.at["A00.0", "synonyms"]
    # A block with the code of its only category: one row, hung under the chapter, not itself.
    assert by_code.at["B10", "parent"] == "1"
    assert t["code"].is_unique


def test_icd10pcs_loader_reads_seven_character_codes_and_hierarchy_levels():
    df = cs.load_icd10pcs()
    codes = df[df["code"].str.len() == 7]
    assert len(codes) > 60_000 and df["code"].is_unique
    row = df.set_index("code").loc["0016070"]
    assert row["description"].startswith("Bypass Cerebral Ventricle to Nasopharynx")
    assert row["synonyms"] and row["synonyms"][0].startswith("Bypass Cereb Vent")
    # Levels: section (1 char) > body system (2) > table (3) > body part (4) > code (7).
    assert set(df["code"].str.len()) == {1, 2, 3, 4, 7}
    assert (codes["parent"] == codes["code"].str[:4]).all()
    levels = df[df["code"].str.len() < 7]
    assert (levels["description"] != "").all()
    assert (levels["parent"] == [c[:{1: 0, 2: 1, 3: 2, 4: 3}[len(c)]] for c in levels["code"]]).all()
    assert set(df["parent"]) - {""} <= set(df["code"])
    assert (df["parent"] == "").sum() == 1  # only the section
    assert 500 < (df["code"].str.len() == 3).sum() < 1_000  # the CMS tables


def test_icd10pcs_levels_are_titled_from_the_axis_values(vocab):
    by_code = vocab.table[vocab.table.system == "ICD10PCS"].set_index("code")
    assert by_code.at["0", "description"] == "Medical and Surgical"
    assert by_code.at["0D", "description"] == "Medical and Surgical, Gastrointestinal System"
    assert by_code.at["0DT", "description"] == "Medical and Surgical, Gastrointestinal System, Resection"
    assert by_code.at["0DTJ", "description"] == \
        "Medical and Surgical, Gastrointestinal System, Resection, Appendix"
    assert by_code.at["0DTJ4ZZ", "description"].startswith("Resection of Appendix")
    # A 7-character code chains up to its section.
    i = vocab.id_of("ICD10PCS", "0DTJ4ZZ")
    assert [vocab.row(a)["code"] for a in vocab.ancestors(i)] == ["0DTJ", "0DT", "0D", "0"]
    j = vocab.id_of("ICD10PCS", "0016070")
    assert [vocab.ref(a) for a in vocab.ancestors(j)] == \
        ["ICD10PCS:0016", "ICD10PCS:001", "ICD10PCS:00", "ICD10PCS:0"]
    assert vocab.row(vocab.id_of("ICD10PCS", "001"))["description"] == \
        "Medical and Surgical, Central Nervous System and Cranial Nerves, Bypass"
    assert vocab.normalize("ICD10PCS", "0d.t") == "0DT"


def test_icd9cm_loader_has_dotted_leaves_and_hierarchy():
    df = cs.load_icd9cm().set_index("code")
    assert df.at["250.00", "parent"] == "250.0"
    assert df.at["250.0", "parent"] == "250"
    assert df.at["250", "parent"] == "249-259"
    assert df.at["249-259", "parent"] == "240-279"
    assert df.at["240-279", "parent"] == ""
    assert df.at["V10.3", "description"].lower().startswith("personal history of malignant neoplasm of breast")
    assert "E800.0" in df.index and "001.0" in df.index
    assert df.at["250.00", "synonyms"]  # CMS short name differs from the long one
    parents = set(df["parent"]) - {""}
    assert parents <= set(df.index), "every parent is itself a code"
    assert (df["description"] != "").all()


def test_icd9pcs_loader_dots_after_two_digits():
    df = cs.load_icd9pcs().set_index("code")
    assert len(df) > 3_500
    assert df.at["45.13", "description"].startswith("Other endoscopy of small intestine")
    assert all(c[2] == "." for c in df.index)
    # No category titles in the installed packages: parents only where the prefix is itself a code.
    assert set(df["parent"]) - {""} <= set(df.index)


def test_atc_loader_levels_and_parents():
    df = cs.load_atc().set_index("code")
    assert df.at["A10BA02", "description"] == "metformin"
    assert [df.at[c, "parent"] for c in ["A10BA02", "A10BA", "A10B", "A10", "A"]] == \
        ["A10BA", "A10B", "A10", "A", ""]
    assert df.index.str.len().isin([1, 3, 4, 5, 7]).all()


def test_counts_per_system(vocab):
    counts = vocab.counts()
    assert list(counts) == sorted(["ATC", "ICD10CM", "ICD10PCS", "ICD9CM", "ICD9PCS"])
    assert sum(counts.values()) == len(vocab)
    assert counts["ATC"] > 4_000 and counts["ICD9CM"] > 17_000
    summary = vocab.summary().splitlines()
    assert summary[0] == f"{len(vocab)} codes" and len(summary) == 1 + len(counts)
    assert summary[1].split()[:2] == ["ATC", str(counts["ATC"])]


# --------------------------------------------------------------------------------------- lookups
@pytest.mark.parametrize("system, code, canonical", [
    ("ICD10CM", "E11.9", "E11.9"), ("icd10cm", "e119", "E11.9"), ("ICD-10-CM", " E11.9 ", "E11.9"),
    ("ICD9CM", "25000", "250.00"), ("ICD9CM", "250.00", "250.00"), ("ICD9CM", "1.0", "001.0"),
    ("ICD9CM", "e8000", "E800.0"), ("ICD9CM", "V103", "V10.3"), ("ICD9PCS", "4513", "45.13"),
    ("ICD10PCS", "0016070", "0016070"), ("ICD10PCS", "0dt", "0DT"), ("ATC", "a10ba02", "A10BA02"),
])
def test_id_of_accepts_dotted_undotted_and_case_variants(vocab, system, code, canonical):
    i = vocab.id_of(system, code)
    assert i is not None
    assert vocab.row(i)["code"] == canonical
    assert vocab.normalize(system, code) == canonical


def test_unknown_codes_and_canonical_form_of_unknowns(vocab):
    assert vocab.id_of("ICD10CM", "ZZZ.99") is None
    assert vocab.id_of("NOPE", "E11.9") is None
    assert vocab.normalize("ICD10CM", "z999") == "Z99.9"
    assert vocab.normalize("ICD9CM", "99999") == "999.99"


def test_batched_lookup_matches_single(vocab):
    codes = ["E11.9", "e119", "not-a-code", "I10"]
    ids = vocab.ids_of("ICD10CM", codes)
    assert ids.dtype == np.int64
    assert ids.tolist() == [vocab.id_of("ICD10CM", c) if vocab.id_of("ICD10CM", c) is not None else -1
                            for c in codes]
    assert ids[2] == -1
    mixed = vocab.ids_of(["icd-10-cm", "ATC", "ICD9CM"], ["E11.9", "A10BA02", "1.0"])
    assert mixed.tolist() == [vocab.id_of("ICD10CM", "E11.9"), vocab.id_of("ATC", "A10BA02"),
                              vocab.id_of("ICD9CM", "001.0")]
    with pytest.raises(ValueError, match="2 systems for 1 codes"):
        vocab.ids_of(["ATC", "ATC"], ["A"])


def test_lookup_refs_and_bare_codes(vocab):
    e119 = vocab.id_of("ICD10CM", "E11.9")
    assert vocab.lookup("ICD10CM:E11.9") == e119
    assert vocab.lookup("E11.9") == e119  # only ICD-10-CM has it
    assert vocab.ref(e119) == "ICD10CM:E11.9"
    # V10.3 is both an ICD-9-CM and an ICD-10-CM code: ambiguous without a system.
    assert len(vocab.candidates("V10.3")) == 2
    assert vocab.lookup("V10.3") is None
    assert vocab.lookup("A10BA02") == vocab.id_of("ATC", "A10BA02")


def test_ancestors(vocab):
    i = vocab.id_of("ICD10CM", "E11.9")
    assert [vocab.ref(a) for a in vocab.ancestors(i)] == \
        ["ICD10CM:E11", "ICD10CM:E08-E13", "ICD10CM:4"]
    j = vocab.id_of("ICD9CM", "250.00")
    assert [vocab.row(a)["code"] for a in vocab.ancestors(j)] == ["250.0", "250", "249-259", "240-279"]
    assert vocab.ancestors(vocab.id_of("ATC", "A")) == []


def test_row_contents_and_bounds(vocab):
    i = vocab.id_of("ATC", "A10BA02")
    row = vocab.row(i)
    assert row == {"code_id": i, "system": "ATC", "code": "A10BA02", "description": "metformin",
                   "parent": "A10BA", "synonyms": []}
    with pytest.raises(IndexError):
        vocab.row(len(vocab))


# --------------------------------------------------------------------------------------- ids, cache, parquet
def test_ids_are_dense_sorted_and_stable_across_builds(tmp_path):
    csv = write_csv(tmp_path, GOOD_CSV)
    a = build_vocab(VocabConfig(systems=SMALL, user_codes=str(csv)))
    b = build_vocab(VocabConfig(systems=list(reversed(SMALL)), user_codes=str(csv)))
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.table["code_id"].tolist() == list(range(len(a)))
    keys = list(zip(a.table["system"], a.table["code"], strict=True))
    assert keys == sorted(keys)


def test_parquet_round_trip(tmp_path):
    v = build_vocab(VocabConfig(systems=SMALL, user_codes=str(write_csv(tmp_path, GOOD_CSV))))
    path = tmp_path / "out" / "vocab.parquet"
    v.save(path)
    w = CodeVocab.load(path)
    pd.testing.assert_frame_equal(v.table, w.table)
    assert w.table["code_id"].dtype == np.int32
    assert isinstance(w.row(0)["synonyms"], list)
    assert w.ancestors(w.id_of("SNOMEDCT", "44054006")) == [w.id_of("SNOMEDCT", "73211009")]
    import pyarrow.parquet as pq
    assert pq.read_schema(path).names == ["code_id", "system", "code", "description", "parent", "synonyms"]


def test_load_missing_vocab_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataFileError, match="does not exist"):
        CodeVocab.load(tmp_path / "none.parquet")


def test_cached_build_reuses_and_rekeys_on_user_csv_change(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTOK_CACHE_DIR", str(tmp_path / "cache"))
    csv = write_csv(tmp_path, GOOD_CSV)
    cfg = VocabConfig(systems=SMALL, user_codes=str(csv))
    first = load_or_build_vocab(cfg)
    cached = tmp_path / "cache" / "vocab" / vocab_cache_key(cfg) / "vocab.parquet"
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    second = load_or_build_vocab(cfg)
    assert cached.stat().st_mtime_ns == stamp  # read, not rewritten
    pd.testing.assert_frame_equal(first.table, second.table)
    key = vocab_cache_key(cfg)
    csv.write_text(GOOD_CSV + "CPT,99213,Office visit established patient,\n", encoding="utf-8")
    assert vocab_cache_key(cfg) != key
    assert load_or_build_vocab(cfg).id_of("CPT", "99213") is not None


def test_unknown_system_in_config_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown built-in code system SNOMEDCT"):
        build_vocab(VocabConfig(systems=["SNOMEDCT"]))


# --------------------------------------------------------------------------------------- user CSV
def test_user_codes_extend_and_override(tmp_path):
    csv = write_csv(tmp_path, GOOD_CSV)
    base = build_vocab(VocabConfig(systems=SMALL))
    v = build_vocab(VocabConfig(systems=SMALL, user_codes=str(csv)))
    assert v.counts()["SNOMEDCT"] == 2 and v.counts()["RXNORM"] == 1  # system names normalized
    assert v.counts()["ICD9PCS"] == base.counts()["ICD9PCS"]  # override, not a new row
    over = v.row(v.id_of("ICD9PCS", "45.13"))
    old = base.row(base.id_of("ICD9PCS", "45.13"))
    assert over["description"] == "Upper GI endoscopy (user wording)"
    assert over["synonyms"][0] == old["description"]  # the package's wording is kept as a synonym
    new_atc = v.id_of("ATC", "A10BA99")
    assert [v.row(a)["code"] for a in v.ancestors(new_atc)] == ["A10BA", "A10B", "A10", "A"]
    assert v.lookup("44054006") == v.id_of("SNOMEDCT", "44054006")


def test_load_user_codes_returns_validated_frame(tmp_path):
    df = load_user_codes(write_csv(tmp_path, "system,code,description\ncpt,99213, Office visit \n"))
    assert df.to_dict("records") == [{"system": "CPT", "code": "99213", "description": "Office visit",
                                      "parent": ""}]


@pytest.mark.parametrize("text, message", [
    ("system,code\nSNOMEDCT,1\n", r"lacks column\(s\) description; its header must be system,code,description"),
    ("code,description\n1,x\n", r"lacks column\(s\) system"),
    ("system,code,description\nSNOMEDCT,1,Disease\nSNOMEDCT,2,\n", r"line 3 has an empty description"),
    ("system,code,description\nSNOMEDCT,1,A\nSNOMEDCT,1,B\n", r"lists code SNOMEDCT:1 more than once \(lines 2 and 3\)"),
    ("system,code,description\nICD10CM,E11.9,A\nicd10cm,e119,B\n", r"lists code ICD10CM:E11.9 more than once"),
    ("system,code,description,parent\nSNOMEDCT,2,Child,1\n", r"line 2 has parent 1 which is not a SNOMEDCT code"),
    ("system,code,description\n,1,A\n", r"line 2 has an empty system"),
    ("system,code,description\nSNOMEDCT,,A\n", r"line 2 has an empty code"),
    ("system,code,description\nSNOMED/CT,1,A\n", r"not letters and digits"),
    ("system,code,description,parent\nSNOMEDCT,1,A,1\n", r"names the code itself as its parent"),
])
def test_bad_user_csv_errors(tmp_path, text, message):
    with pytest.raises(UserError, match=message) as err:
        load_user_codes(write_csv(tmp_path, text))
    assert "\n" not in str(err.value)


def test_user_parent_in_builtin_system_checked_at_merge(tmp_path):
    csv = write_csv(tmp_path, "system,code,description,parent\nATC,A10BA98,thing,Q99XX\n")
    load_user_codes(csv)  # without the built-in table the parent cannot be checked yet
    with pytest.raises(UserError, match=r"parent Q99XX which is not a ATC code"):
        build_vocab(VocabConfig(systems=["ATC"], user_codes=str(csv)))


def test_missing_user_csv_is_a_data_file_error(tmp_path):
    with pytest.raises(DataFileError, match="does not exist"):
        load_user_codes(tmp_path / "nope.csv")
    with pytest.raises(DataFileError, match="does not exist"):
        load_or_build_vocab(VocabConfig(systems=["ATC"], user_codes=str(tmp_path / "nope.csv")))

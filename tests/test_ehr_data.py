"""EHR data layer: MEDS round trip, code mapping with its unmapped report, splits, sequences."""

from __future__ import annotations

import pandas as pd
import pytest
from ehr_fixtures import FIXTURE, mimic_like_events

from commons.errors import ConfigError, DataFileError
from ehr.code_maps import get_code_map, map_codes
from ehr.meds import MedsDataset, write_meds
from ehr.sequences import VE, VS, build_vocab, cut, encode_timeline, task_token
from ehr.splits import hash_split


def test_meds_round_trip_keeps_every_event(tmp_path):
    events = mimic_like_events()
    write_meds(tmp_path / "m", events, subjects_per_shard=2)
    ds = MedsDataset(tmp_path / "m")
    assert len(ds.shards) == 2  # 3 subjects, 2 per shard: read lazily shard by shard
    back = ds.events()
    key = ["subject_id", "time", "code"]
    a = events.sort_values(key).reset_index(drop=True)
    b = back.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key], b[key], check_dtype=False)
    assert (a["numeric_value"].isna() == b["numeric_value"].isna()).all()
    assert b["numeric_value"].dropna().tolist() == pytest.approx(a["numeric_value"].dropna().tolist())
    assert [sid for sid, _ in ds.iter_subjects()] == [1, 2, 3]
    assert ds.metadata()["etl_name"]


def test_meds_folder_errors_are_one_line(tmp_path):
    with pytest.raises(DataFileError, match="not a MEDS folder"):
        MedsDataset(tmp_path)
    (tmp_path / "data").mkdir()
    pd.DataFrame({"subject_id": [1], "code": ["X"]}).to_parquet(tmp_path / "data" / "0.parquet")
    with pytest.raises(DataFileError, match="lacks MEDS column"):
        MedsDataset(tmp_path)


def test_mimic_codes_map_to_medtok_and_report_the_rest(tmp_path):
    events = mimic_like_events()
    table, report = map_codes(get_code_map("mimic_iv"), events["code"].value_counts())
    assert table["DIAGNOSIS//ICD//10//E11.9"].medtok == "ICD10CM:E11.9"
    assert table["DIAGNOSIS//ICD//9//4019"].medtok == "ICD9CM:4019"
    assert table["PROCEDURE//ICD//9//3893"].medtok == "ICD9PCS:3893"
    assert table["MEDICATION//Metformin//Administered"].medtok == "ATC:A10BA02"  # DrugBank name -> ATC
    assert table["LAB//50912//mg/dL"].medtok is None and table["LAB//50912//mg/dL"].token == "LAB:50912"
    out = report.as_dict()
    assert out["codes"] == events["code"].nunique() and out["events"] == len(events)
    lab = out["unmapped"]["lab item: no MedTok code system"]
    assert lab["events"] == 3 and lab["codes"] == 2
    assert out["mapped_events"] + sum(v["events"] for v in out["unmapped"].values()) == len(events)
    # a predicate (a MedTok artifact's has_code) turns mapped-but-absent codes into a reported reason
    _, report = map_codes(get_code_map("mimic_iv"), events["code"].value_counts(), known=lambda c: c != "ICD10CM:I10")
    assert report.as_dict()["unmapped"]["ICD10CM code not in the MedTok vocabulary"]["codes"] == 1


def test_clinosim_codes_map_rxnorm_to_atc():
    cmap = get_code_map("clinosim")
    assert cmap.map_one("MEDICATION//RXNORM//6809").medtok == "ATC:A10BA02"  # metformin
    assert cmap.map_one("LAB//LOINC//2160-0//mg/dL").token == "LOINC:2160-0"
    assert "RxNorm" in cmap.map_one("MEDICATION//RXNORM//999999999").reason
    with pytest.raises(ConfigError, match="unknown code map"):
        get_code_map("nope")


def test_committed_clinosim_fixture_reads_and_maps():
    ds = MedsDataset(FIXTURE)
    events = ds.events()
    assert events["subject_id"].nunique() >= 50
    assert {"MEDS_BIRTH", "HOSPITAL_ADMISSION//IMP"} <= set(events["code"])
    assert events["code"].str.startswith("LAB//LOINC//").any() and events["numeric_value"].notna().any()
    _, report = map_codes(get_code_map("clinosim"), events["code"].value_counts())
    assert report.mapped_codes > 0 and report.unmapped_by_reason
    assert len(ds.codes_metadata()) > 0 and ds.splits() is not None


def test_hash_split_is_stable_and_covers_every_subject():
    a, b = hash_split(range(200), seed=3), hash_split(reversed(range(200)), seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert set(a["split"]) == {"train", "tuning", "held_out"}


def test_sequence_has_visits_intervals_and_mpf_task_tokens():
    events = mimic_like_events()
    events = events[events.subject_id == 2]
    table, _ = map_codes(get_code_map("mimic_iv"), events["code"].value_counts())
    vocab = build_vocab(table, {}, events["code"].value_counts(), events["code"].unique(), ["readmission_30d"])
    full = encode_timeline(events, table, vocab)
    tokens = [vocab.tokens[i] for i in full["input_ids"]]
    assert tokens[0] == "[CLS]" and tokens.count(VS) == 2 and tokens.count(VE) == 2
    assert "[W1]" in tokens  # 12 days between the stays
    assert list(full["visit_orders"][tokens.index("[W1]") + 1:][:1]) == [2]
    mpf = cut(full, "2160-05-03 10:00", 64, "readmission_30d", vocab)
    ids = [vocab.tokens[i] for i in mpf["input_ids"]]
    assert ids[0] == ids[-1] == task_token("readmission_30d")
    assert "ICD10CM:I10" not in ids  # recorded at the second stay, after the prediction time
    short = cut(full, None, 5)
    assert len(short["input_ids"]) == 5 and short["input_ids"][0] == vocab.index["[CLS]"]

"""EHR task labels from the declared definitions: known labels on the MIMIC-shaped fixture, no leakage."""

from __future__ import annotations

import pandas as pd
import pytest
from ehr_fixtures import FIXTURE, write_mimic_like

from commons.errors import ConfigError
from ehr.code_maps import get_code_map, map_codes
from ehr.data import DataOptions, prepare
from ehr.meds import MedsDataset
from ehr.sequences import build_vocab, cut, encode_timeline
from ehr.tasks import TaskDefinition, build_labels, input_events, load_tasks, subject_samples


def labels_of(tmp_path) -> pd.DataFrame:
    return build_labels(MedsDataset(write_mimic_like(tmp_path / "mimic")), load_tasks())


def test_default_tasks_label_the_mimic_shaped_subjects(tmp_path):
    lab = labels_of(tmp_path).sort_values("prediction_time")

    def labels(task, sid):
        return lab[(lab.task == task) & (lab.subject_id == sid)]["label"].tolist()

    assert labels("mortality_30d", 1) == [1]  # dies 10 days after discharge
    assert labels("los_gt_7d", 1) == [1] and labels("los_gt_7d", 3) == [0]  # 9-day and 2-day stays
    assert labels("readmission_30d", 2) == [1, 0]  # readmitted 12 days after the first stay only
    assert labels("next_hypertension", 2) == [1]  # I10 at the next stay
    assert labels("next_lipid", 2) == [0]  # E78.5 was at the first stay, not the next
    assert labels("next_hypertension", 1) == []  # no next visit: no sample


def test_outcome_one_second_after_prediction_time_is_a_label_not_an_input():
    t = pd.Timestamp("2150-01-10 10:00:00")
    events = pd.DataFrame({"subject_id": 9, "time": [pd.Timestamp("2150-01-01 10:00"), t, t + pd.Timedelta(seconds=1)],
                           "code": ["HOSPITAL_ADMISSION//X", "HOSPITAL_DISCHARGE//HOME", "MEDS_DEATH"],
                           "numeric_value": float("nan")})
    task = TaskDefinition(name="mortality_30d", trigger="^HOSPITAL_DISCHARGE", outcome="^MEDS_DEATH$")
    (sample,) = subject_samples(task, 9, events)
    assert sample["prediction_time"] == t and sample["label"] == 1
    seen = input_events(events, sample["prediction_time"], None)
    assert "MEDS_DEATH" not in set(seen["code"])
    # the encoded sequence cut at the prediction time holds no death token either
    table, _ = map_codes(get_code_map("mimic_iv"), events["code"].value_counts())
    vocab = build_vocab(table, {}, events["code"].value_counts(), events["code"].unique(), [task.name])
    seq = cut(encode_timeline(events, table, vocab), t, 64, task.name, vocab)
    assert vocab.index["MEDS_DEATH"] not in set(seq["input_ids"].tolist())
    # one second earlier the death is at the prediction time: an input, and that sample is excluded
    events.loc[2, "time"] = t
    assert subject_samples(task, 9, events) == []


def test_los_predicts_from_the_first_24_hours_only(tmp_path):
    ds = MedsDataset(write_mimic_like(tmp_path / "m"))
    (task,) = load_tasks(names=["los_gt_7d"])
    events = next(e for sid, e in ds.iter_subjects() if sid == 1)
    (sample,) = subject_samples(task, 1, events)
    assert sample["prediction_time"] == pd.Timestamp("2150-01-02 10:00")
    seen = input_events(events, sample["prediction_time"], None)
    assert "LAB//50912//mg/dL" in set(seen["code"]) and (seen["time"] <= sample["prediction_time"]).all()
    assert len(seen[seen["code"] == "LAB//50912//mg/dL"]) == 1  # the day-3 lab comes later


def test_task_definitions_are_checked():
    with pytest.raises(ConfigError, match="not a regex"):
        TaskDefinition(name="x", trigger="(")
    with pytest.raises(ConfigError, match="needs an outcome"):
        TaskDefinition(name="x", trigger="^A", kind="event_within")
    with pytest.raises(ConfigError, match="unknown task"):
        load_tasks(names=["nope"])


def test_prepare_reports_positives_and_estimability(tmp_path):
    summary = prepare(DataOptions(min_test_positives=5), FIXTURE, tmp_path / "prep")
    pos = summary["positives"]
    assert set(pos) == {t.name for t in load_tasks()}
    assert pos["next_hypertension"]["estimable"] and not pos["mortality_30d"]["estimable"]
    assert "no AUROC" in pos["mortality_30d"]["why_not"]
    samples = pd.read_parquet(tmp_path / "prep" / "samples.parquet")
    train = set(samples.loc[samples.split == "train", "subject_id"])
    assert set(samples.loc[samples.kind == "pretrain", "subject_id"]) <= train  # pretraining sees train only
    assert not train & set(samples.loc[samples.split == "held_out", "subject_id"])

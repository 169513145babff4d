"""Lab values as quantile-bin tokens (``--value_bins``, ehr/value_bins.py): fitted on training subjects only,
the expected tokens on hand-made values, off = the samples as before, leakage, round trip, embeddings."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import torch
from ehr_fixtures import tiny_medtok, write_mimic_like

from commons.errors import ConfigError, DataFileError
from ehr.code_embeddings import EmbeddingOptions, build_code_embedding
from ehr.code_maps.base import Mapped
from ehr.data import DataOptions, prepare
from ehr.meds import write_meds
from ehr.sequences import Vocab, build_vocab
from ehr.value_bins import ValueBins, bin_counts, fit_value_bins

LAB, RARE, HELD_ONLY = "LAB//50912//mg/dL", "LAB//50931//mg/dL", "LAB//99999//x"
PREPARED = ("samples.parquet", "vocab.json", "mapping_report.json", "positives.json", "value_bins.json")


def _ev(sid, time, code, value=None):
    return {"subject_id": sid, "time": pd.Timestamp(time), "code": code, "numeric_value": value}


def lab_cohort(root, held_out_value: float = 1e6, tuning_value: float = 5.5):
    """Train subjects 1..10: one LAB value each (= the subject id: cut points 2.8, 4.6, 6.4, 8.2 for 5 bins),
    subjects 1..3 a RARE value (3 < 2 * 5: plain), subject 1 a LAB event without value. Tuning subject 12:
    LAB ``tuning_value``. Held-out subject 11: LAB 7 during a stay, ``held_out_value`` after discharge (then
    dies: a mortality sample at discharge), and a code with a value in held_out only."""
    rows = []
    for sid in range(1, 11):
        day = f"2150-{sid:02d}-01"
        rows += [_ev(sid, "2080-01-01", "MEDS_BIRTH"), _ev(sid, f"{day} 08:00", "HOSPITAL_ADMISSION//EW"),
                 _ev(sid, f"{day} 09:00", LAB, float(sid)), _ev(sid, f"{day} 18:00", "HOSPITAL_DISCHARGE//HOME")]
        if sid <= 3:
            rows.append(_ev(sid, f"{day} 10:00", RARE, 100.0 * sid))
    rows.append(_ev(1, "2150-01-01 11:00", LAB))  # no numeric_value: the plain token
    rows += [_ev(12, "2080-01-01", "MEDS_BIRTH"), _ev(12, "2151-01-01 08:00", "HOSPITAL_ADMISSION//EW"),
             _ev(12, "2151-01-01 09:00", LAB, tuning_value), _ev(12, "2151-01-02 08:00", "HOSPITAL_DISCHARGE//HOME")]
    rows += [_ev(11, "2080-01-01", "MEDS_BIRTH"), _ev(11, "2152-01-01 08:00", "HOSPITAL_ADMISSION//EW"),
             _ev(11, "2152-01-01 09:00", LAB, 7.0), _ev(11, "2152-01-01 10:00", HELD_ONLY, 3.0),
             _ev(11, "2152-01-03 08:00", "HOSPITAL_DISCHARGE//HOME"),
             _ev(11, "2152-01-03 08:00:01", LAB, held_out_value),  # one second after the prediction time
             _ev(11, "2152-01-10 08:00", "MEDS_DEATH")]
    splits = pd.DataFrame({"subject_id": [*range(1, 11), 11, 12], "split": ["train"] * 10 + ["held_out", "tuning"]})
    return write_meds(root, pd.DataFrame(rows), splits=splits)


def opts(**kw) -> DataOptions:
    return DataOptions(source="mimic_iv", max_len=64, **kw)


def decoded(prep) -> pd.DataFrame:
    samples = pd.read_parquet(prep / "samples.parquet")
    tokens = json.loads((prep / "vocab.json").read_text())["tokens"]
    return samples.assign(tokens=samples["input_ids"].map(lambda ids: [tokens[i] for i in ids]))


def test_cut_points_come_from_training_subjects_only(tmp_path):
    prepare(opts(value_bins=5), lab_cohort(tmp_path / "a", held_out_value=1e6, tuning_value=5.5), tmp_path / "pa")
    prepare(opts(value_bins=5), lab_cohort(tmp_path / "b", held_out_value=-1e6, tuning_value=1e9), tmp_path / "pb")
    a = json.loads((tmp_path / "pa" / "value_bins.json").read_text())
    b = json.loads((tmp_path / "pb" / "value_bins.json").read_text())
    assert a["codes"] == b["codes"]  # the held-out and tuning extremes moved nothing
    assert a["codes"][LAB]["cuts"] == pytest.approx([2.8, 4.6, 6.4, 8.2]) and a["codes"][LAB]["train_values"] == 10


def test_known_values_give_the_expected_lab_tokens_and_report(tmp_path):
    summary = prepare(opts(value_bins=5), lab_cohort(tmp_path / "m"), tmp_path / "p")
    s = decoded(tmp_path / "p")
    pre = s[s["kind"] == "pretrain"].set_index("subject_id")["tokens"]
    expected = {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 4, 8: 4, 9: 5, 10: 5}
    for sid, k in expected.items():
        assert [t for t in pre[sid] if t.startswith("LAB:50912")] == [f"LAB:50912//Q{k}"] + (["LAB:50912"] if sid == 1 else [])
    assert "LAB:50931" in pre[1] and not any("50931//Q" in t for t in pre[1])  # 3 training values: plain
    vocab = json.loads((tmp_path / "p" / "vocab.json").read_text())
    assert vocab["value_bins"] == {f"LAB:50912//Q{k}": "LAB:50912" for k in range(1, 6)}
    assert vocab["train_counts"]["LAB:50912//Q3"] == 2 and vocab["train_counts"]["LAB:50912"] == 11  # code: all events
    tuning = s[(s["subject_id"] == 12)]
    assert all("LAB:50912//Q3" in t for t in tuning["tokens"])  # 5.5 -> the third fifth
    held = s[s["subject_id"] == 11]
    assert "LAB:99999" in held[held["task"] == "mortality_30d"]["tokens"].iloc[0]  # no training values: plain
    assert not any("99999//Q" in x for t in held["tokens"] for x in t)
    rep = summary["value_bins"]
    assert rep == json.loads((tmp_path / "p" / "value_bins.json").read_text())["report"]
    # numeric events: 10 LAB + 3 RARE in train, 1 LAB in tuning, 2 LAB + 1 HELD_ONLY in held-out
    assert rep["numeric_events"] == 17 and rep["binned_events"] == 13 and rep["plain_numeric_events"] == 4
    assert (rep["codes_with_bins"], rep["codes_plain_too_few_training_values"], rep["codes_plain_no_training_values"]) \
        == (1, 1, 1)


def test_a_value_after_the_prediction_time_is_not_an_input(tmp_path):
    prepare(opts(value_bins=5), lab_cohort(tmp_path / "m", held_out_value=1e6), tmp_path / "p")
    s = decoded(tmp_path / "p")
    (mortality,) = s[(s["task"] == "mortality_30d") & (s["subject_id"] == 11)].itertuples()
    assert mortality.label == 1
    assert "LAB:50912//Q4" in mortality.tokens  # the value during the stay
    assert "LAB:50912//Q5" not in mortality.tokens  # 1e6, one second after discharge
    assert (mortality.available <= mortality.prediction_time.value // 1000).all()


# what today's code (before --value_bins existed) wrote for the MIMIC-shaped fixture: the digest of
# samples.parquet's content, computed with main at 92e47e0 by content_digest below
BEFORE_VALUE_BINS = "2ebd6a249f5d28ae"


def content_digest(samples: pd.DataFrame) -> str:
    rows = samples.assign(prediction_time=samples["prediction_time"].astype(str)).to_dict("records")
    text = json.dumps([{k: (list(map(str, v)) if hasattr(v, "__len__") and not isinstance(v, str) else str(v))
                        for k, v in r.items()} for r in rows], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_value_bins_off_writes_the_samples_as_before(tmp_path):
    meds = write_mimic_like(tmp_path / "m")
    prepare(opts(), meds, tmp_path / "off")
    assert content_digest(pd.read_parquet(tmp_path / "off" / "samples.parquet")) == BEFORE_VALUE_BINS
    assert not (tmp_path / "off" / "value_bins.json").exists()
    assert "value_bins" not in json.loads((tmp_path / "off" / "vocab.json").read_text())
    # with bins only the lab tokens change: same rows, features, and each lab token's code is the plain one
    prepare(opts(value_bins=2), lab_cohort(tmp_path / "lab"), tmp_path / "on")
    prepare(opts(), tmp_path / "lab", tmp_path / "off2")
    on, off = decoded(tmp_path / "on"), decoded(tmp_path / "off2")
    for col in ("kind", "task", "subject_id", "label", "split", "codes", "ages", "available", "visit_orders"):
        assert on[col].map(list if col in ("codes", "ages", "available", "visit_orders") else str).tolist() \
            == off[col].map(list if col in ("codes", "ages", "available", "visit_orders") else str).tolist()
    assert [[t.split("//Q")[0] for t in ts] for ts in on["tokens"]] == off["tokens"].map(list).tolist()
    assert on["tokens"].map(lambda ts: any("//Q" in t for t in ts)).any()


def test_prepared_folder_round_trips_and_a_new_cohort_reuses_the_bins(tmp_path):
    meds = lab_cohort(tmp_path / "m")
    prepare(opts(value_bins=5), meds, tmp_path / "p1")
    prepare(opts(value_bins=5), meds, tmp_path / "p2")
    for name in PREPARED:
        assert (tmp_path / "p1" / name).read_bytes() == (tmp_path / "p2" / name).read_bytes(), name
    # another cohort (other training values) through the first folder's bins: the same cut points
    other = lab_cohort(tmp_path / "other", held_out_value=2.0)
    events = pd.read_parquet(other / "data" / "0.parquet")
    events.loc[events["code"] == LAB, "numeric_value"] *= 10
    write_meds(tmp_path / "other2", events, splits=pd.read_parquet(other / "metadata" / "subject_splits.parquet"))
    prepare(opts(value_bins=5, value_bins_file=str(tmp_path / "p1")), tmp_path / "other2", tmp_path / "p3")
    first, reused = (json.loads((tmp_path / p / "value_bins.json").read_text()) for p in ("p1", "p3"))
    assert reused["codes"] == first["codes"] and "read from" in reused["fitted_on"]
    pre = decoded(tmp_path / "p3").query("kind == 'pretrain'").set_index("subject_id")["tokens"]
    assert "LAB:50912//Q5" in pre[3]  # 30 > 8.2 under the first cohort's bins


def test_bad_value_bins_options_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="at least 2"):
        DataOptions(value_bins=1)
    with pytest.raises(ConfigError, match="needs value_bins"):
        DataOptions(value_bins_file="x.json")
    meds = lab_cohort(tmp_path / "m")
    prepare(opts(value_bins=5), meds, tmp_path / "p")
    with pytest.raises(ConfigError, match="holds 5 bins"):
        prepare(opts(value_bins=4, value_bins_file=str(tmp_path / "p")), meds, tmp_path / "q")
    (tmp_path / "bad.json").write_text('{"value_bins": 5, "codes": {"A": {"cuts": [3, 1, 2, 4], "train_values": 9}}}')
    with pytest.raises(DataFileError, match="ascending"):
        prepare(opts(value_bins=5, value_bins_file=str(tmp_path / "bad.json")), meds, tmp_path / "q")
    assert not (tmp_path / "q").exists()  # nothing half-written


def test_lab_token_of_a_medtok_code_embeds_as_its_code_plus_the_learned_bin(tmp_path):
    code = "DIAGNOSIS//ICD//10//E11.9"  # a numeric event on a code MedTok covers
    table = {code: Mapped("ICD10CM:E11.9", "ICD10CM:E11.9")}
    values = {code: torch.arange(1.0, 11.0).numpy()}
    bins = fit_value_bins(values, 2)
    counts = pd.Series({code: 10})
    vocab = build_vocab(table, {code: "Type 2 diabetes"}, counts, counts.index, [], bins, bin_counts(bins, values))
    assert vocab.medtok["ICD10CM:E11.9//Q2"] == "ICD10CM:E11.9"
    assert vocab.descriptions["ICD10CM:E11.9//Q2"] == "Type 2 diabetes, result in quantile 2 of 2"
    assert Vocab.from_dict(json.loads(json.dumps(vocab.to_dict()))).value_bins == vocab.value_bins
    torch.manual_seed(0)
    emb = build_code_embedding("medtok_frozen", vocab, 8, EmbeddingOptions(medtok=str(tiny_medtok(tmp_path / "mt"))))
    base, q1, q2 = (vocab.index[t] for t in ("ICD10CM:E11.9", "ICD10CM:E11.9//Q1", "ICD10CM:E11.9//Q2"))
    with torch.no_grad():
        out = emb(torch.tensor([[base, q1, q2]]))[0]
        assert torch.allclose(out[1] - out[0], emb.table.weight[q1], atol=1e-6)
        assert torch.allclose(out[2] - out[0], emb.table.weight[q2], atol=1e-6)
    assert not torch.allclose(out[1], out[2])


def test_fit_keeps_codes_with_too_few_values_plain():
    import numpy as np

    bins = fit_value_bins({"A": np.arange(9, dtype=np.float32), "B": np.arange(10, dtype=np.float32)}, 5)
    assert set(bins.cuts) == {"B"} and bins.plain == {"A": 9}
    assert bins.bin_of("A", 3.0) is None and bins.bin_of("B", float("nan")) is None
    assert ValueBins.from_dict(bins.to_dict()).cuts["B"].tolist() == bins.cuts["B"].tolist()

"""MedFuse (issue 28): triplets reproduce an irregular series, MuFuse's products, time added not
multiplied, training-only normalisation, pinned 3-step losses per fusion, the in-hospital mortality
label, and the whole path on a MEDS folder in MIMIC-IV's shape."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from ehr_fixtures import mimic_like_events, write_mimic_like

from commons.config import FieldError
from commons.errors import ConfigError, DataFileError
from ehr.code_maps import get_code_map, map_codes
from ehr.medfuse.fusion import build_fusion
from ehr.medfuse.model import MedFuseEmbeddings, MedFuseOptions, collate
from ehr.medfuse.run import (
    CohortOptions,
    FitOptions,
    MedFuseConfig,
    MedFuseEvalConfig,
    build_cohort,
    build_model,
    evaluate_medfuse,
    fit,
    load_medfuse,
    train_medfuse,
)
from ehr.medfuse.triplets import NormStats, Windowing, sample_triplets
from ehr.meds import write_meds
from ehr.sequences import PAD, build_vocab
from ehr.tasks import TaskDefinition, subject_samples

HR, TEMP, DX = "LAB//220045//bpm", "LAB//223762//Cel", "DIAGNOSIS//ICD//10//E11.9"


def _ev(sid, time, code, value=None):
    return {"subject_id": sid, "time": pd.Timestamp(time), "code": code, "numeric_value": value}


def irregular_series() -> pd.DataFrame:
    """Two asynchronous lab features with a 20 h gap, and a diagnosis."""
    return pd.DataFrame([
        _ev(1, "2150-01-01 00:10", HR, 80.0), _ev(1, "2150-01-01 00:40", HR, 90.0),
        _ev(1, "2150-01-01 01:15", TEMP, 37.5), _ev(1, "2150-01-01 03:00", DX),
        _ev(1, "2150-01-01 23:30", HR, 110.0),  # after a gap; temperature not measured again
    ])


def table_and_vocab(events):
    counts = events["code"].value_counts()
    table, _ = map_codes(get_code_map("mimic_iv"), counts)
    vocab = build_vocab(table, {}, counts, counts.index, [])
    return table, vocab


def test_triplets_reproduce_an_irregular_series():
    events = irregular_series()
    table, vocab = table_and_vocab(events)
    t = pd.Timestamp("2150-01-02 00:00")
    got = sample_triplets(events, t, None, Windowing(), table, vocab)
    expect_codes = [HR, HR, TEMP, DX, HR]
    assert [vocab.tokens[i] for i in got["tokens"]] == [table[c].token for c in expect_codes]
    np.testing.assert_allclose(got["values"][got["numeric"]], [80, 90, 37.5, 110])
    assert np.isnan(got["values"][3]) and not got["numeric"][3]
    np.testing.assert_allclose(got["hours"], [(t - ts).total_seconds() / 3600 for ts in events["time"]], rtol=1e-6)
    # 2 h bins counted back from t: the two early heart rates share a bin (mean 85); nothing is imputed
    binned = sample_triplets(events, t, None, Windowing(bin_hours=2), table, vocab)
    assert len(binned["tokens"]) == 4
    np.testing.assert_allclose(binned["values"][binned["numeric"]], [85, 37.5, 110])
    # the 48 h window keeps nothing after the prediction time
    early = sample_triplets(events, pd.Timestamp("2150-01-01 01:00"), None, Windowing(window_hours=48), table, vocab)
    np.testing.assert_allclose(early["values"], [80, 90])


def test_mufuse_is_the_hadamard_product_and_partitions():
    f, v = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    assert torch.equal(build_fusion("mufuse", 8, 8)(f, v), f * v)
    f1, v1 = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 100.0])  # partition factor 2
    assert build_fusion("mufuse", 4, 2)(f1, v1).tolist() == [10.0, 200.0, 30.0, 400.0]
    assert build_fusion("additive", 4, 2)(f1, v1).tolist() == [11.0, 102.0, 13.0, 104.0]
    assert build_fusion("concat", 4, 2)(f1, v1).shape == (4,)
    with pytest.raises(ConfigError, match="multiple of value_dim"):
        build_fusion("mufuse", 6, 4)
    with pytest.raises(FieldError, match="value_dim"):
        MedFuseOptions(feature_dim=6, value_dim=4)


def test_time_is_added_not_multiplied():
    events = irregular_series()
    _, vocab = table_and_vocab(events)
    torch.manual_seed(0)
    emb = MedFuseEmbeddings(vocab, MedFuseOptions(feature_dim=8, value_dim=4, hidden=8, heads=2)).eval()
    base = {"tokens": torch.tensor([[5, 6, 5]]), "values": torch.tensor([[0.3, -1.2, 2.0]]),
            "numeric": torch.tensor([[True, True, False]])}
    at = {h: emb({**base, "hours": torch.full((1, 3), float(h))}) for h in (0.0, 30.0)}
    shift = at[30.0] - at[0.0]
    expected = emb.time(torch.full((1, 3), 30.0 / 24)) - emb.time(torch.zeros(1, 3))
    torch.testing.assert_close(shift, expected)  # the same shift whatever the feature or value
    torch.testing.assert_close(shift[0, 0], shift[0, 1])


def test_normalisation_comes_from_training_patients_only(tmp_path):
    events = pd.concat([mimic_like_events(), pd.DataFrame([_ev(3, "2170-02-01 10:00", "LAB//50912//mg/dL", 1e6)])])
    splits = pd.DataFrame({"subject_id": [1, 2, 3], "split": ["train", "train", "held_out"]})
    root = write_meds(tmp_path / "meds", events, None, splits)
    cohort = build_cohort(CohortOptions(meds_dir=str(root), source="mimic_iv"))
    assert cohort.stats.mean["LAB:50912"] == pytest.approx((1.4 + 2.1) / 2)  # subject 3's 1e6 left out
    assert cohort.stats.count["LAB:50912"] == 2
    cohort.stats.save(tmp_path / "norm.json")
    assert NormStats.load(tmp_path / "norm.json") == cohort.stats
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataFileError, match="not a MedFuse normalisation file"):
        NormStats.load(tmp_path / "bad.json")


def test_in_hospital_mortality_label():
    task = TaskDefinition(name="ihm", kind="event_during_stay", trigger="^HOSPITAL_ADMISSION",
                          prediction_offset_hours=48, lookback_days=2, outcome="^MEDS_DEATH$")
    dies_in_stay = pd.DataFrame([_ev(1, "2150-01-01", "HOSPITAL_ADMISSION//X"), _ev(1, "2150-01-05", "MEDS_DEATH"),
                                 _ev(1, "2150-01-05", "HOSPITAL_DISCHARGE//DIED")])
    dies_after = pd.DataFrame([_ev(2, "2150-01-01", "HOSPITAL_ADMISSION//X"), _ev(2, "2150-01-05", "HOSPITAL_DISCHARGE//H"),
                               _ev(2, "2150-01-09", "MEDS_DEATH")])
    short = pd.DataFrame([_ev(3, "2150-01-01", "HOSPITAL_ADMISSION//X"), _ev(3, "2150-01-02", "HOSPITAL_DISCHARGE//H")])
    assert [s["label"] for s in subject_samples(task, 1, dies_in_stay)] == [1]
    assert [s["label"] for s in subject_samples(task, 2, dies_after)] == [0]
    assert subject_samples(task, 3, short) == []  # over before the 48 h prediction time


@pytest.fixture(scope="module")
def mimic_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("medfuse")
    write_mimic_like(root / "meds")
    opts = CohortOptions(meds_dir=str(root / "meds"), source="mimic_iv", min_test_positives=1)
    return build_cohort(opts), opts, root


# 3 steps, batch 2, widths 8/4, seed 0, on the MIMIC-shaped fixture's los_gt_7d training samples
PINNED = {
    "mufuse": [0.706104, 0.79558, 0.755901],
    "additive": [0.688347, 0.792888, 0.744427],
    "concat": [0.902477, 0.739359, 0.765748],
    "gru": [0.706278, 0.718054, 0.71706],
}


@pytest.mark.parametrize("method", sorted(PINNED))
def test_each_fusion_trains_three_steps_with_pinned_losses(mimic_cohort, method):
    cohort, _, _ = mimic_cohort
    opts = MedFuseOptions(fusion="mufuse" if method == "gru" else method, feature_dim=8, value_dim=4, hidden=8,
                          heads=2, layers=1)
    records = cohort.records("los_gt_7d", "train")
    assert any(r["numeric"].any() for r in records)  # lab triplets reach the model
    model = build_model("gru" if method == "gru" else "medfuse", cohort.vocab, opts, seed=0)
    losses = fit(model, records, cohort.normalised(records), cohort.vocab.index[PAD],
                 FitOptions(steps=3, batch_size=2, threads=1), seed=0)
    assert losses == pytest.approx(PINNED[method], abs=1e-5), losses


def test_whole_path_on_mimic_shaped_meds(mimic_cohort, tmp_path):
    cohort, opts, _ = mimic_cohort
    assert cohort.positives["los_gt_7d"]["train"] == {"samples": 3, "positives": 1}
    small = MedFuseOptions(feature_dim=8, value_dim=4, hidden=8, heads=2, layers=1)
    run = train_medfuse(MedFuseConfig(cohort=opts, model=small, train=FitOptions(steps=2, batch_size=2),
                                      task="los_gt_7d", output_dir=str(tmp_path / "run")), cohort)
    model, cfg, stats, vocab = load_medfuse(run)
    records = cohort.records("los_gt_7d", "held_out")
    batch = collate(records, [stats.normalise(r["tokens"], r["values"], vocab) for r in records], vocab.index[PAD])
    assert model(batch).shape == (len(records),)
    results = evaluate_medfuse(MedFuseEvalConfig(cohort=opts, model=small, train=FitOptions(steps=2, batch_size=2),
                                                 seeds=[0], n_resamples=10, output_dir=str(tmp_path / "eval")), cohort)
    assert results["tasks"]["in_hospital_mortality_48h"]["estimable"] is False  # no positive: no metric
    assert "Not estimable" in (tmp_path / "eval" / "results.md").read_text()
    with pytest.raises(ConfigError, match="no training samples"):
        train_medfuse(MedFuseConfig(cohort=opts, task="no_such_task",
                                    output_dir=str(tmp_path / "none")), cohort)
    assert not (tmp_path / "none").exists()
    with pytest.raises(ConfigError, match="meds_dir is required"):
        build_cohort(CohortOptions())


def test_feature_embeddings_transfer_by_token(mimic_cohort):
    from ehr.medfuse.transfer import copy_feature_embeddings

    cohort, _, _ = mimic_cohort
    opts = MedFuseOptions(feature_dim=8, value_dim=4, hidden=8, heads=2, layers=1)
    source = build_model("medfuse", cohort.vocab, opts, seed=0)
    target = build_model("medfuse", cohort.vocab, opts, seed=1)
    copied = copy_feature_embeddings(source, cohort.vocab, target, cohort.vocab)
    own_row = [t for t in cohort.vocab.tokens if not t.startswith("[") and cohort.vocab.train_counts.get(t, 0) >= 1]
    assert copied == len(own_row) > 0
    lab = cohort.vocab.index["LAB:50912"]
    src_table, dst_table = source.embeddings.identity.table.weight, target.embeddings.identity.table.weight
    assert torch.equal(dst_table[lab], src_table[lab])
    assert not torch.equal(target.embeddings.value.weight, source.embeddings.value.weight)  # only identities move


@pytest.mark.parametrize("variant", ["medtok_frozen", "medtok_tokens"])
def test_medtok_enters_medfuse_through_the_shared_code_embedding(mimic_cohort, variant):
    from ehr_fixtures import tiny_medtok

    from ehr.code_embeddings import EmbeddingOptions

    cohort, _, root = mimic_cohort
    medtok = root / "medtok"
    if not medtok.exists():
        tiny_medtok(medtok)
    opts = MedFuseOptions(code_embedding=variant, feature_dim=8, value_dim=4, hidden=8, heads=2, layers=1,
                          embedding=EmbeddingOptions(medtok=str(medtok), projector_hidden=8))
    model = build_model("medfuse", cohort.vocab, opts, seed=0)
    assert model.embeddings.identity.routes["exact"] > 0  # the fixture's ICD-10 codes have MedTok rows
    records = cohort.records("los_gt_7d", "train")
    losses = fit(model, records, cohort.normalised(records), cohort.vocab.index[PAD],
                 FitOptions(steps=2, batch_size=2), seed=0)
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_per_subject_sample_choice_does_not_depend_on_other_tasks():
    from ehr.medfuse.run import _keep_per_subject

    t = pd.Timestamp("2150-01-01")
    labels = pd.DataFrame({"task": ["a"] * 5 + ["b"] * 5, "subject_id": [1] * 10,
                           "prediction_time": [t + pd.Timedelta(days=i) for i in range(10)], "label": 0})
    both = _keep_per_subject(labels, 2, seed=0)
    alone = _keep_per_subject(labels[labels["task"] == "a"], 2, seed=0)
    assert len(both) == 4 and alone.equals(both[both["task"] == "a"].reset_index(drop=True))


def test_metrics_intervals_and_paired_difference():
    from ehr.medfuse.metrics import bootstrap_intervals, paired_difference

    labels = np.array([0, 1, 0, 1, 0, 1, 0, 0])
    subjects = np.array([1, 1, 2, 2, 3, 3, 4, 5])
    perfect = [labels * 0.8 + 0.1]
    out = bootstrap_intervals(labels, perfect, subjects, n_resamples=50)
    assert out["auroc"] == {"mean": 1.0, "seed_sd": 0.0, "low": 1.0, "high": 1.0}
    assert out["auprc"]["mean"] == 1.0 and out["accuracy"]["mean"] == 1.0
    same = paired_difference(labels, perfect, perfect, subjects, n_resamples=50)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0}
    worse = paired_difference(labels, perfect, [np.full(8, 0.5)], subjects, "auroc", n_resamples=50)
    assert worse["difference"] == pytest.approx(0.5) and worse["low"] > 0


def test_evaluation_of_an_estimable_task(tmp_path):
    """Sixteen MIMIC-shaped stays, half longer than 7 days: the ablation table with paired differences;
    in-hospital mortality (no death) reported as not estimable beside it."""
    rows, splits = [], []
    for sid in range(1, 17):
        start = pd.Timestamp("2150-01-01") + pd.Timedelta(days=30 * sid)
        long_stay = sid % 2 == 0
        rows += [_ev(sid, start, "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM"),
                 _ev(sid, start + pd.Timedelta(hours=3), "LAB//50912//mg/dL", 2.5 if long_stay else 1.0),
                 _ev(sid, start + pd.Timedelta(hours=5), DX),
                 _ev(sid, start + pd.Timedelta(days=9 if long_stay else 3), "HOSPITAL_DISCHARGE//HOME")]
        splits.append({"subject_id": sid, "split": "train" if sid <= 8 else "held_out"})
    root = write_meds(tmp_path / "meds", pd.DataFrame(rows), None, pd.DataFrame(splits))
    cfg = MedFuseEvalConfig(
        cohort=CohortOptions(meds_dir=str(root), source="mimic_iv", tasks=["in_hospital_mortality_48h"],
                             min_test_positives=2),
        model=MedFuseOptions(feature_dim=8, value_dim=4, hidden=8, heads=2, layers=1),
        train=FitOptions(steps=2, batch_size=4), fusions=["mufuse", "additive"], seeds=[0, 1], n_resamples=20,
        output_dir=str(tmp_path / "eval"))
    results = evaluate_medfuse(cfg)
    assert results["tasks"]["in_hospital_mortality_48h"]["estimable"] is False
    los = results["tasks"]["los_gt_7d"]
    assert (los["test_samples"], los["test_positives"]) == (8, 4)
    assert set(los["methods"]) == {"medfuse:mufuse", "medfuse:additive", "gru", "hgb"}
    for m in los["methods"].values():
        assert all(0 <= m[k]["low"] <= m[k]["high"] <= 1 for k in ("auprc", "auroc"))
        assert len(m["held_out_probs_by_seed"]) == 2
    assert set(los["auprc_differences"]) == {"medfuse:mufuse - medfuse:additive", "medfuse:mufuse - gru",
                                             "medfuse:mufuse - hgb"}
    assert "| medfuse:mufuse |" in (tmp_path / "eval" / "results.md").read_text()


@pytest.mark.parametrize("step", ["medfuse-train", "medfuse-eval", "medfuse-transfer"])
def test_medfuse_steps_are_ehr_commands_with_the_one_line_error_contract(step, capsys):
    from recipes import ehr as ehr_cli

    with pytest.raises(SystemExit) as done:
        ehr_cli.main([step, "--print_config", "true"])
    assert done.value.code == 0 and "seed" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        ehr_cli.main([step, "--no_such_option", "1"])
    assert bad.value.code == 2 and capsys.readouterr().err.startswith("error: unknown option no_such_option")

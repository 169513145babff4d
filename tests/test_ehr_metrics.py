"""EHR evaluation helpers: the per-patient cap on scored samples and the paired difference of two
methods over resampled patients."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ehr.evaluate import cap_per_subject
from ehr.metrics import paired_difference


def _samples() -> pd.DataFrame:
    rows = []
    for subject in range(4):
        for split in ("train", "held_out", "tuning"):
            for visit in range(5):
                rows.append({"kind": "task", "task": "next_lipid", "split": split, "subject_id": subject, "visit": visit})
    rows.append({"kind": "pretrain", "task": None, "split": "held_out", "subject_id": 0, "visit": 0})
    return pd.DataFrame(rows)


def test_the_cap_keeps_k_samples_per_patient_outside_training_and_all_training_samples():
    samples = _samples()
    capped = cap_per_subject(samples, 2, seed=0)
    counts = capped[capped["kind"] == "task"].groupby(["split", "subject_id"]).size()
    assert (counts["train"] == 5).all() and (counts["held_out"] == 2).all() and (counts["tuning"] == 2).all()
    assert (capped["kind"] == "pretrain").sum() == 1
    assert capped.equals(cap_per_subject(samples, 2, seed=0))  # seeded
    assert not capped.equals(cap_per_subject(samples, 2, seed=1))
    assert cap_per_subject(samples, 0, seed=0) is samples


def _scored(n_patients: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(n_patients), 3)
    labels = rng.integers(0, 2, len(subjects))
    return pd.DataFrame({"subject_id": subjects, "label": labels, "good_0": labels + rng.normal(0, 0.3, len(labels)),
                         "good_1": labels + rng.normal(0, 0.3, len(labels)), "noise_0": rng.normal(size=len(labels)),
                         "noise_1": rng.normal(size=len(labels))})


def test_a_method_against_itself_differs_by_exactly_zero():
    frame = _scored()
    diff = paired_difference(frame, ["noise_0", "noise_1"], ["noise_0", "noise_1"], n_boot=50, seed=0)
    assert diff["auprc"] == {"difference": 0.0, "ci95": [0.0, 0.0]} and diff["auroc"]["ci95"] == [0.0, 0.0]


def test_an_informative_method_beats_noise_and_the_difference_is_the_mean_over_seed_pairs():
    from sklearn.metrics import roc_auc_score

    frame = _scored()
    diff = paired_difference(frame, ["good_0", "good_1"], ["noise_0", "noise_1"], n_boot=200, seed=0)
    expected = np.mean([roc_auc_score(frame["label"], frame[f"good_{i}"]) - roc_auc_score(frame["label"], frame[f"noise_{i}"])
                        for i in (0, 1)])
    assert diff["auroc"]["difference"] == pytest.approx(expected, abs=1e-4)
    assert 0 < diff["auroc"]["ci95"][0] <= diff["auroc"]["difference"] <= diff["auroc"]["ci95"][1]
    assert diff["auprc"]["ci95"][0] > 0

"""Test helpers for the EHR tests: a tiny MEDS folder in MIMIC-IV's shape (codes as MEDS-Extract writes
them), the committed clinosim fixture's path, and a tiny MedTok artifact over the fixture's codes.

The MIMIC-shaped subjects are written by hand so that each task has known labels:
  1: admitted 2150-01-01, discharged after 9 days (LOS > 7), dies 10 days after discharge (mortality)
  2: two stays 12 days apart (readmission), hypertension at the second stay (next-visit condition)
  3: a 2-day stay with an ICD-9 diagnosis, nothing after
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ehr.meds import write_meds

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "ehr_clinosim_meds"


def _ev(sid, time, code, value=None):
    return {"subject_id": sid, "time": pd.Timestamp(time) if time else pd.NaT, "code": code, "numeric_value": value}


def mimic_like_events() -> pd.DataFrame:
    rows = [
        _ev(1, "2080-03-01", "MEDS_BIRTH"),
        _ev(1, "2150-01-01 10:00", "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM"),
        _ev(1, "2150-01-01 12:00", "LAB//50912//mg/dL", 1.4),
        _ev(1, "2150-01-01 13:00", "MEDICATION//Metformin//Administered"),
        _ev(1, "2150-01-03 09:00", "LAB//50912//mg/dL", 2.1),
        _ev(1, "2150-01-10 10:00", "DIAGNOSIS//ICD//10//E11.9"),
        _ev(1, "2150-01-10 10:00", "DIAGNOSIS//ICD//10//N17.9"),
        _ev(1, "2150-01-10 10:00", "HOSPITAL_DISCHARGE//HOME"),
        _ev(1, "2150-01-20 08:00", "MEDS_DEATH"),
        _ev(2, "2070-06-01", "MEDS_BIRTH"),
        _ev(2, "2160-05-01 08:00", "HOSPITAL_ADMISSION//URGENT//TRANSFER FROM HOSPITAL"),
        _ev(2, "2160-05-01 09:00", "LAB//50931//mg/dL", 180.0),
        _ev(2, "2160-05-03 10:00", "DIAGNOSIS//ICD//10//E78.5"),
        _ev(2, "2160-05-03 10:00", "HOSPITAL_DISCHARGE//HOME HEALTH CARE"),
        _ev(2, "2160-05-15 08:00", "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM"),
        _ev(2, "2160-05-15 09:00", "MEDICATION//Lisinopril//Administered"),
        _ev(2, "2160-05-18 10:00", "DIAGNOSIS//ICD//10//I10"),
        _ev(2, "2160-05-18 10:00", "HOSPITAL_DISCHARGE//HOME"),
        _ev(3, "2090-01-01", "MEDS_BIRTH"),
        _ev(3, "2170-02-01 08:00", "HOSPITAL_ADMISSION//ELECTIVE//PHYSICIAN REFERRAL"),
        _ev(3, "2170-02-01 09:00", "PROCEDURE//ICD//9//3893"),
        _ev(3, "2170-02-03 08:00", "DIAGNOSIS//ICD//9//4019"),
        _ev(3, "2170-02-03 08:00", "HOSPITAL_DISCHARGE//HOME"),
    ]
    return pd.DataFrame(rows)


def write_mimic_like(root: Path) -> Path:
    splits = pd.DataFrame({"subject_id": [1, 2, 3], "split": ["train", "train", "held_out"]})
    codes = pd.DataFrame({"code": ["DIAGNOSIS//ICD//10//E11.9", "DIAGNOSIS//ICD//10//I10"],
                          "description": ["Type 2 diabetes mellitus without complications", "Essential hypertension"],
                          "parent_codes": [[], []]})
    return write_meds(root, mimic_like_events(), codes, splits, dataset_name="MIMIC-IV-shaped test fixture")


def tiny_medtok(path: Path, extra: list[tuple[str, str, str]] = ()) -> Path:
    """A random MedTok artifact (qa.tiny's format) over a few ICD-10-CM / ATC codes of both fixtures."""
    from qa.tiny import build_tiny_medtok

    codes = [("ICD10CM", "E11.9", "Type 2 diabetes mellitus without complications"),
             ("ICD10CM", "I10", "Essential (primary) hypertension"),
             ("ICD10CM", "E78", "Disorders of lipoprotein metabolism"),
             ("ICD10CM", "E78.5", "Hyperlipidemia, unspecified"),
             ("ICD10CM", "N17", "Acute kidney failure"),
             ("ATC", "A10BA02", "metformin"), ("ATC", "C09CA06", "candesartan"), *extra]
    return build_tiny_medtok(path, codes, dim=8, top_k=2, codebook=24, seed=0)

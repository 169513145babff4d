"""clinosim's synthetic cohort (PyPI ``clinosim``, MIT) -> MEDS.

clinosim's CSV output names labs and drugs by display name only; its FHIR R4 Bulk Data output
(``--format fhir-r4``) carries the codes: ICD-10-CM conditions and encounter reasons, LOINC
observations with numeric values and times, RxNorm medication requests, SNOMED/CPT procedures,
encounters with start/end, birth dates and death dates. So the converter reads the FHIR NDJSON
files (pandas, one resource type at a time) and writes MEDS codes in MEDS-Extract's style:

    MEDS_BIRTH, MEDS_DEATH
    HOSPITAL_ADMISSION//IMP, HOSPITAL_DISCHARGE//<disposition>      inpatient stays
    ED_REGISTRATION, ED_OUT                                         emergency visits
    VISIT_START//AMB, VISIT_END//AMB                                other encounters
    DIAGNOSIS//ICD//10//E11.9       conditions (at their recorded time) and encounter reasons (at the end)
    LAB//LOINC//2345-7//mg/dL       observations with a quantity, value in numeric_value
    MEDICATION//RXNORM//214354      medication requests (at authoredOn)
    PROCEDURE//SNOMED//447094002, PROCEDURE//CPT//59400

Diagnoses sit at the time they were recorded (an encounter's reason at its end), as MEDS-Extract
places MIMIC-IV's diagnoses at discharge: a model never sees a diagnosis before it was written down.
Numbers on this cohort measure the software, not medicine.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from commons.errors import DataFileError, UserError
from commons.io import atomic_dir, cache_dir

ICD10CM_SYSTEM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC_SYSTEM = "http://loinc.org"
RXNORM_SYSTEM = "http://www.nlm.nih.gov/research/umls/rxnorm"
PROCEDURE_SYSTEMS = {"http://snomed.info/sct": "SNOMED", "http://www.ama-assn.org/go/cpt": "CPT"}
OBSERVATION_CATEGORIES = ("laboratory", "LAB", "vital-signs")  # quantities worth a token (not surveys)


def _ndjson(folder: Path, resource: str) -> list[dict]:
    path = folder / f"{resource}.ndjson"
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _ref_id(ref: dict | None) -> str | None:
    return ref["reference"].split("/", 1)[1] if ref and "reference" in ref else None


def _coding(concept: dict | None, system: str) -> dict | None:
    for c in (concept or {}).get("coding", []) or []:
        if c.get("system") == system and c.get("code"):
            return c
    return None


def _time(value) -> pd.Timestamp | None:
    if not value:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_convert(None) if ts.tzinfo is not None else ts


def _patients(folder: Path) -> tuple[dict[str, int], list[dict]]:
    """FHIR patient id -> MEDS subject_id (1, 2, ... in file order), and birth/death events."""
    ids, rows = {}, []
    for p in _ndjson(folder, "Patient"):
        sid = ids.setdefault(p["id"], len(ids) + 1)
        if p.get("birthDate"):
            rows.append({"subject_id": sid, "time": _time(p["birthDate"]), "code": "MEDS_BIRTH"})
        if p.get("deceasedDateTime"):
            rows.append({"subject_id": sid, "time": _time(p["deceasedDateTime"]), "code": "MEDS_DEATH"})
    return ids, rows


def _encounters(folder: Path, ids: dict[str, int]) -> tuple[list[dict], dict[str, pd.Timestamp]]:
    rows, ends = [], {}
    for e in _ndjson(folder, "Encounter"):
        sid = ids.get(_ref_id(e.get("subject")))
        period = e.get("period") or {}
        start, end = _time(period.get("start")), _time(period.get("end"))
        if sid is None or start is None:
            continue
        kind = (e.get("class") or {}).get("code", "UNK")
        if kind == "IMP":
            disposition = (((e.get("hospitalization") or {}).get("dischargeDisposition") or {})
                           .get("coding") or [{}])[0].get("code", "UNK")
            codes = ("HOSPITAL_ADMISSION//IMP", f"HOSPITAL_DISCHARGE//{disposition.upper()}")
        elif kind == "EMER":
            codes = ("ED_REGISTRATION", "ED_OUT")
        else:
            codes = (f"VISIT_START//{kind}", f"VISIT_END//{kind}")
        rows.append({"subject_id": sid, "time": start, "code": codes[0]})
        if end is not None:  # still admitted at the snapshot date: no discharge yet
            rows.append({"subject_id": sid, "time": end, "code": codes[1]})
            ends[e["id"]] = end
        for reason in e.get("reasonCode", []) or []:
            icd = _coding(reason, ICD10CM_SYSTEM)
            if icd and end is not None:
                rows.append({"subject_id": sid, "time": end, "code": f"DIAGNOSIS//ICD//10//{icd['code']}"})
    return rows, ends


def _conditions(folder: Path, ids: dict[str, int]) -> list[dict]:
    rows = []
    for c in _ndjson(folder, "Condition"):
        sid, icd = ids.get(_ref_id(c.get("subject"))), _coding(c.get("code"), ICD10CM_SYSTEM)
        when = _time(c.get("recordedDate") or c.get("onsetDateTime"))
        if sid is not None and icd and when is not None:
            rows.append({"subject_id": sid, "time": when, "code": f"DIAGNOSIS//ICD//10//{icd['code']}"})
    return rows


def _observations(folder: Path, ids: dict[str, int], categories: tuple[str, ...]) -> list[dict]:
    rows = []
    for o in _ndjson(folder, "Observation"):
        cats = {c.get("code") for cat in o.get("category", []) or [] for c in cat.get("coding", []) or []}
        loinc, qty = _coding(o.get("code"), LOINC_SYSTEM), o.get("valueQuantity")
        sid, when = ids.get(_ref_id(o.get("subject"))), _time(o.get("effectiveDateTime"))
        if not (cats & set(categories)) or loinc is None or qty is None or sid is None or when is None:
            continue
        unit = str(qty.get("unit") or qty.get("code") or "").replace("//", "/")
        rows.append({"subject_id": sid, "time": when, "code": f"LAB//LOINC//{loinc['code']}//{unit}",
                     "numeric_value": qty.get("value")})
    return rows


def _medications(folder: Path, ids: dict[str, int]) -> list[dict]:
    rows = []
    for m in _ndjson(folder, "MedicationRequest"):
        sid, when = ids.get(_ref_id(m.get("subject"))), _time(m.get("authoredOn"))
        rx = _coding(m.get("medicationCodeableConcept"), RXNORM_SYSTEM)
        if sid is not None and when is not None and rx:
            rows.append({"subject_id": sid, "time": when, "code": f"MEDICATION//RXNORM//{rx['code']}"})
    return rows


def _procedures(folder: Path, ids: dict[str, int]) -> list[dict]:
    rows = []
    for p in _ndjson(folder, "Procedure"):
        sid = ids.get(_ref_id(p.get("subject")))
        when = _time(p.get("performedDateTime") or (p.get("performedPeriod") or {}).get("start"))
        for c in (p.get("code") or {}).get("coding", []) or []:
            system = PROCEDURE_SYSTEMS.get(c.get("system"))
            if sid is not None and when is not None and system and c.get("code"):
                rows.append({"subject_id": sid, "time": when, "code": f"PROCEDURE//{system}//{c['code']}"})
    return rows


def fhir_to_events(folder: str | Path, categories: tuple[str, ...] = OBSERVATION_CATEGORIES) -> pd.DataFrame:
    """MEDS events (subject_id, time, code, numeric_value) from a clinosim ``fhir_r4`` folder."""
    folder = Path(folder)
    if not (folder / "Patient.ndjson").is_file():
        raise DataFileError(f"{folder} has no Patient.ndjson; pass clinosim's fhir_r4 output folder "
                            "(clinosim simulate ... --format fhir-r4)")
    ids, rows = _patients(folder)
    enc_rows, _ = _encounters(folder, ids)
    rows += enc_rows + _conditions(folder, ids) + _observations(folder, ids, categories)
    rows += _medications(folder, ids) + _procedures(folder, ids)
    df = pd.DataFrame(rows, columns=["subject_id", "time", "code", "numeric_value"])
    df = df.drop_duplicates(["subject_id", "time", "code", "numeric_value"])
    return df.sort_values(["subject_id", "time", "code"], kind="stable").reset_index(drop=True)


def code_descriptions(folder: str | Path, codes) -> pd.DataFrame:
    """``metadata/codes.parquet`` rows (code, description) for ``codes``, from the display texts
    FHIR carries (a description-text embedding and MedTok's encoder for unseen codes read them)."""
    folder = Path(folder)
    names: dict[str, str] = {}
    for c in _ndjson(folder, "Condition"):
        icd = _coding(c.get("code"), ICD10CM_SYSTEM)
        if icd and icd.get("display"):
            names.setdefault(f"DIAGNOSIS//ICD//10//{icd['code']}", icd["display"])
    for m in _ndjson(folder, "MedicationRequest"):
        rx = _coding(m.get("medicationCodeableConcept"), RXNORM_SYSTEM)
        text = rx and (rx.get("display") or (m.get("medicationCodeableConcept") or {}).get("text"))
        if text:
            names.setdefault(f"MEDICATION//RXNORM//{rx['code']}", text)
    for o in _ndjson(folder, "Observation"):
        loinc = _coding(o.get("code"), LOINC_SYSTEM)
        if loinc and loinc.get("display"):
            names.setdefault(f"LOINC//{loinc['code']}", loinc["display"])
    rows = []
    for code in sorted(set(codes)):
        parts = code.split("//")
        key = f"LOINC//{parts[2]}" if code.startswith("LAB//LOINC//") and len(parts) > 2 else code
        if key in names:
            rows.append({"code": code, "description": names[key]})
    return pd.DataFrame(rows, columns=["code", "description"])


def run_clinosim(out: Path, population: int, seed: int, start: str | None, end: str) -> Path:
    """Run ``clinosim simulate`` into ``out``; returns its fhir_r4 folder."""
    exe = shutil.which("clinosim") or str(Path(sys.executable).parent / "clinosim")
    if not Path(exe).exists():
        raise UserError("clinosim is not installed; `pip install clinosim` (see pyproject.toml)")
    cmd = [exe, "simulate", "-o", str(out), "-p", str(population), "-s", str(seed), "--country", "US",
           "--end", end, "--format", "fhir-r4"] + (["--start", start] if start else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"clinosim failed ({' '.join(cmd)}): {tail[0]}")
    return out / "fhir_r4"


def cached_cohort(population: int, seed: int, start: str | None, end: str) -> Path:
    """clinosim's FHIR output for these parameters, generated once under the project's cache dir.

    ``--end`` is a required parameter here (clinosim's default is today, which would change the
    cohort every day and defeat the cache)."""
    key = hashlib.sha256(json.dumps([population, seed, start, end, _clinosim_version()]).encode()).hexdigest()[:16]
    root = cache_dir() / "clinosim" / key
    if not (root / "fhir_r4" / "Patient.ndjson").is_file():
        with atomic_dir(root) as tmp:
            run_clinosim(tmp, population, seed, start, end)
    return root / "fhir_r4"


def _clinosim_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clinosim")
    except PackageNotFoundError:
        return "missing"


def convert_fhir(fhir_dir: str | Path, out: str | Path, dataset_name: str = "clinosim",
                 categories: tuple[str, ...] = OBSERVATION_CATEGORIES, seed: int = 0) -> Path:
    """clinosim FHIR folder -> MEDS folder with code descriptions and a seeded hash split."""
    from ehr.meds import write_meds
    from ehr.splits import hash_split

    events = fhir_to_events(fhir_dir, categories)
    if events.empty:
        raise DataFileError(f"{fhir_dir} holds no patient events; check clinosim's output")
    codes = code_descriptions(fhir_dir, events["code"].unique())
    codes["parent_codes"] = [[] for _ in range(len(codes))]
    return write_meds(out, events, codes, hash_split(events["subject_id"], seed), dataset_name=dataset_name,
                      etl_name="medtok-qa ehr convert (ehr/clinosim.py)")

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
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from commons.errors import DataFileError, UserError
from commons.io import atomic_dir, cache_dir

ICD10CM_SYSTEM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC_SYSTEM = "http://loinc.org"
RXNORM_SYSTEM = "http://www.nlm.nih.gov/research/umls/rxnorm"
PROCEDURE_SYSTEMS = {"http://snomed.info/sct": "SNOMED", "http://www.ama-assn.org/go/cpt": "CPT"}
OBSERVATION_CATEGORIES = ("laboratory", "LAB", "vital-signs")  # quantities worth a token (not surveys)


def _ndjson(folder: Path, resource: str) -> Iterator[dict]:
    """The resources of one type, one at a time (Observation.ndjson is ~2 GB for 7,000 patients)."""
    path = folder / f"{resource}.ndjson"
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


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


def _clinosim_exe() -> str:
    exe = shutil.which("clinosim") or str(Path(sys.executable).parent / "clinosim")
    if not Path(exe).exists():
        raise UserError("clinosim is not installed; `pip install clinosim` (see pyproject.toml)")
    return exe


def _check(done: subprocess.CompletedProcess, cmd: list[str]) -> None:
    if done.returncode != 0:
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"clinosim failed ({' '.join(cmd)}): {tail[0]}")


def run_clinosim(out: Path, population: int, seed: int, start: str | None, end: str, workers: int = 1) -> Path:
    """Simulate into ``out/cif``, then export FHIR R4 to ``out/fhir_r4`` (returned), ``workers`` shards at once."""
    cmd = [_clinosim_exe(), "simulate", "-o", str(out), "-p", str(population), "-s", str(seed), "--country", "US",
           "--end", end, "--format", "cif"] + (["--start", start] if start else [])
    _check(subprocess.run(cmd, capture_output=True, text=True), cmd)
    export_fhir(out / "cif", out / "fhir_r4", workers)
    return out / "fhir_r4"


# ------------------------------------------------------------------ FHIR export, sharded by patient
# clinosim's FHIR export is one process (measured ~30 CIF records/s, and slower per record on a large
# CIF: 2,906 records took 533 s). The CIF holds one JSON record per encounter under
# structural/patients/; a household's records (a mother's and her newborn's) go to one shard, each shard is exported by `clinosim
# export-fhir` in its own process, and the shards' NDJSON files (each sorted by resource id, as
# clinosim writes them) are merged by id; a resource in several shards (practitioners, departments)
# has the same id and is kept once. So the result does not depend on the number of shards.
RECORDS = Path("structural") / "patients"
_ID = re.compile(r'"id":\s*"([^"]*)"')


def _household_of(record: Path) -> str:
    """The record's household (else patient) id, read from its head: clinosim writes
    ``{"patient": {"patient_id": ..., "household_id": ...``. A newborn's records name its mother's
    encounters, so a household's records must be exported together."""
    with record.open(encoding="utf-8") as f:
        head = f.read(600)
    found = re.search(r'"household_id":\s*"([^"]+)"', head) or re.search(r'"patient_id":\s*"([^"]+)"', head)
    if not found:
        raise DataFileError(f"{record}: no patient_id near its start; is this a clinosim CIF record?")
    return found.group(1)


def _shards(cif: Path, n: int) -> list[list[Path]]:
    """The CIF's records split into ``n`` shards of whole households with about equal record counts."""
    by_household: dict[str, list[Path]] = {}
    for record in sorted((cif / RECORDS).glob("*.json")):
        by_household.setdefault(_household_of(record), []).append(record)
    shards: list[list[Path]] = [[] for _ in range(n)]
    for records in sorted(by_household.values(), key=len, reverse=True):  # largest first, to the lightest shard
        min(shards, key=len).extend(records)
    return [s for s in shards if s]


def _shard_cif(cif: Path, records: list[Path], out: Path) -> Path:
    """A CIF folder holding ``records`` (links) beside the original's hospital, metadata and narratives."""
    (out / RECORDS).mkdir(parents=True)
    for item in cif.iterdir():
        if item.name != "structural":
            (out / item.name).symlink_to(item.resolve())
    for record in records:
        (out / RECORDS / record.name).symlink_to(record.resolve())
    return out


def _resource_id(line: str) -> str:
    found = _ID.search(line, 0, 300)
    return found.group(1) if found else json.loads(line).get("id", "")


def _merge_ndjson(parts: list[Path], out: Path) -> None:
    """Merge NDJSON files each sorted by resource id into one, each id once."""
    import heapq

    files = [p.open(encoding="utf-8") for p in parts]
    try:
        last = None
        with out.open("w", encoding="utf-8") as dst:
            for line in heapq.merge(*files, key=_resource_id):
                rid = _resource_id(line)
                if rid != last:
                    dst.write(line if line.endswith("\n") else line + "\n")
                    last = rid
    finally:
        for f in files:
            f.close()


def export_fhir(cif: Path, out: Path, workers: int = 1) -> Path:
    """clinosim's CIF -> FHIR R4 NDJSON in ``out``, with ``workers`` `clinosim export-fhir` processes."""
    import tempfile

    if not (cif / RECORDS).is_dir():
        raise DataFileError(f"{cif} holds no {RECORDS}; pass the cif folder of a `clinosim simulate` output")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fhir_shards.") as tmp:
        shards = [_shard_cif(cif, records, Path(tmp) / f"cif{i}") for i, records in enumerate(_shards(cif, workers))]
        cmds = [[_clinosim_exe(), "export-fhir", "--cif-dir", str(s), "-o", str(Path(tmp) / f"fhir{i}"),
                 "--country", "US"] for i, s in enumerate(shards)]
        logs = [Path(tmp) / f"export{i}.log" for i in range(len(cmds))]  # files, not pipes: none may stall on a full pipe
        procs = [subprocess.Popen(c, stdout=log.open("w"), stderr=subprocess.STDOUT) for c, log in zip(cmds, logs, strict=True)]
        for proc, cmd, log in zip(procs, cmds, logs, strict=True):
            proc.wait()
            _check(subprocess.CompletedProcess(cmd, proc.returncode, log.read_text(errors="replace"), ""), cmd)
        parts = [Path(tmp) / f"fhir{i}" for i in range(len(shards))]
        for name in sorted({f.name for part in parts for f in part.iterdir()}):
            files = [part / name for part in parts if (part / name).is_file()]
            if name.endswith(".ndjson"):
                _merge_ndjson(files, out / name)
            elif name != "manifest.json":  # clinosim's metadata: the first shard's
                shutil.copyfile(files[0], out / name)
        manifest = json.loads((parts[0] / "manifest.json").read_text(encoding="utf-8"))
        manifest["output"] = [{"type": f.stem, "url": f.name} for f in sorted(out.glob("*.ndjson"))]
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


def cached_cohort(population: int, seed: int, start: str | None, end: str, workers: int | None = None) -> Path:
    """clinosim's FHIR output for these parameters, generated once under the project's cache dir.

    ``--end`` is a required parameter here (clinosim's default is today, which would change the
    cohort every day and defeat the cache). ``workers`` (default: the CPU count) only sets how many
    processes export FHIR: the files are the same for any number."""
    workers = workers or os.cpu_count() or 1
    key = hashlib.sha256(json.dumps([population, seed, start, end, _clinosim_version()]).encode()).hexdigest()[:16]
    root = cache_dir() / "clinosim" / key
    if not (root / "fhir_r4" / "Patient.ndjson").is_file():
        with atomic_dir(root) as tmp:
            run_clinosim(tmp, population, seed, start, end, workers)
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

"""clinosim's FHIR export in shards (ehr/clinosim.py): households stay whole, the shards' NDJSON files
merge by resource id with shared resources kept once, and the result does not depend on the shard count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from commons.errors import DataFileError
from ehr.clinosim import RECORDS, _merge_ndjson, _shards, export_fhir


def _record(cif: Path, name: str, patient: str, household: str | None) -> None:
    head = {"patient_id": patient, **({"household_id": household} if household else {})}
    (cif / RECORDS).mkdir(parents=True, exist_ok=True)
    (cif / RECORDS / f"{name}.json").write_text(json.dumps({"patient": head, "encounters": []}, indent=2))


def test_a_household_is_never_split_and_shards_are_balanced(tmp_path):
    cif = tmp_path / "cif"
    _record(cif, "ENC-POP-1-a", "POP-1", "HH-1")
    _record(cif, "ENC-POP-1-BABY-b", "POP-1-BABY", "HH-1")  # a newborn names its mother's encounters
    _record(cif, "ENC-POP-1-c", "POP-1", "HH-1")
    for i in range(2, 5):
        _record(cif, f"ENC-POP-{i}-a", f"POP-{i}", None)  # no household: the patient is the unit
    shards = _shards(cif, 2)
    assert sorted(len(s) for s in shards) == [3, 3]
    baby = next(s for s in shards if any("BABY" in p.name for p in s))
    assert {p.name for p in baby} >= {"ENC-POP-1-a.json", "ENC-POP-1-BABY-b.json", "ENC-POP-1-c.json"}
    assert len(_shards(cif, 10)) == 4  # never an empty shard


def test_a_record_without_a_patient_is_one_error(tmp_path):
    (tmp_path / "cif" / RECORDS).mkdir(parents=True)
    (tmp_path / "cif" / RECORDS / "x.json").write_text('{"something": "else"}')
    with pytest.raises(DataFileError, match="no patient_id"):
        _shards(tmp_path / "cif", 2)


def test_merge_keeps_id_order_and_each_id_once(tmp_path):
    def ndjson(name, ids):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"resourceType": "Practitioner", "id": i, "from": name}) + "\n" for i in ids))
        return path

    out = tmp_path / "merged.ndjson"
    _merge_ndjson([ndjson("a", ["DR-1", "DR-3", "DR-5"]), ndjson("b", ["DR-2", "DR-3", "DR-6"])], out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["DR-1", "DR-2", "DR-3", "DR-5", "DR-6"]


@pytest.fixture(scope="module")
def tiny_cif(tmp_path_factory):
    """A real clinosim CIF: a catchment population of 40 (~130 encounter records, ~10 s)."""
    out = tmp_path_factory.mktemp("clinosim")
    exe = Path(sys.executable).parent / "clinosim"
    subprocess.run([str(exe), "simulate", "-o", str(out), "-p", "40", "-s", "3", "--country", "US",
                    "--end", "2026-12-01", "--format", "cif"], check=True, capture_output=True)
    return out / "cif"


def test_two_shards_export_what_one_process_exports(tiny_cif, tmp_path):
    one = export_fhir(tiny_cif, tmp_path / "one", workers=1)
    two = export_fhir(tiny_cif, tmp_path / "two", workers=2)
    files = sorted(f.name for f in one.glob("*.ndjson"))
    assert "Patient.ndjson" in files and "Observation.ndjson" in files
    assert files == sorted(f.name for f in two.glob("*.ndjson"))
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    manifest = json.loads((two / "manifest.json").read_text())
    assert sorted(o["url"] for o in manifest["output"]) == files
    assert not list(tmp_path.glob(".fhir_shards.*"))  # the shards' scratch folder is gone


def test_the_exported_cohort_converts_to_meds(tiny_cif, tmp_path):
    from ehr.clinosim import convert_fhir
    from ehr.meds import MedsDataset

    fhir = export_fhir(tiny_cif, tmp_path / "fhir", workers=2)
    patients = [json.loads(line) for line in (fhir / "Patient.ndjson").read_text().splitlines()]
    meds = MedsDataset(convert_fhir(fhir, tmp_path / "meds", "tiny clinosim (synthetic)"))
    events = pd.concat(list(meds.iter_shards()))
    assert (events["code"] == "MEDS_BIRTH").sum() == sum(bool(p.get("birthDate")) for p in patients)
    assert (events["code"] == "MEDS_DEATH").sum() == sum(bool(p.get("deceasedDateTime")) for p in patients)
    kinds = events["code"].str.split("//").str[0]
    assert {"DIAGNOSIS", "LAB"} <= set(kinds)
    labs = events[kinds == "LAB"]
    assert labs["numeric_value"].notna().all() and labs["code"].str.match(r"LAB//LOINC//[0-9]+-[0-9]//").all()
    assert events[kinds == "DIAGNOSIS"]["code"].str.match(r"DIAGNOSIS//ICD//10//[A-Z][0-9]").all()

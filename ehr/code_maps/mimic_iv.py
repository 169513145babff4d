"""MIMIC-IV as MEDS-Extract writes it: ``DIAGNOSIS//ICD//10//E11.9``, ``PROCEDURE//ICD//9//3893``,
``MEDICATION//<drug name>//...`` (names, mapped to ATC through DrugBank's drug names when exact),
``LAB//<itemid>//<unit>``, ``HOSPITAL_ADMISSION//...``, ``MEDS_BIRTH``, ``MEDS_DEATH``."""

from __future__ import annotations

from ehr.code_maps.base import CodeMap, Mapped, register

MARKER_PREFIXES = ("MEDS_", "HOSPITAL_", "ED_", "ICU_", "TRANSFER_TO", "VISIT_", "GENDER", "RACE", "MARITAL")


@register
class MimicIV(CodeMap):
    name = "mimic_iv"
    summary = "MEDS-Extract MIMIC-IV codes (ICD-9/10 diagnoses and procedures, drug names -> ATC)"

    def map_one(self, code: str) -> Mapped:
        icd = self.icd(code)
        if icd is not None:
            return icd
        parts = code.split("//")
        if parts[0] == "MEDICATION" and len(parts) > 1:
            atc = self.drug_name_atc().get(parts[1].strip().lower())
            if atc:
                return Mapped(f"ATC:{atc}", f"ATC:{atc}")
            return Mapped(f"MEDICATION:{parts[1].strip().lower()}", None, "drug name not a DrugBank name with ATC")
        if parts[0] == "LAB" and len(parts) > 1:
            return Mapped(f"LAB:{parts[1]}", None, "lab item: no MedTok code system")
        if code.startswith(MARKER_PREFIXES):
            return Mapped(code, None, "event marker (admission, birth, death ...): no code system")
        return Mapped(code, None, f"unrecognised MEDS code kind {parts[0]!r}")

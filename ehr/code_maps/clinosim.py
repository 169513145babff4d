"""clinosim's cohort as ``ehr.clinosim`` writes it: ICD-10-CM diagnoses, ``LAB//LOINC//<code>//<unit>``,
``MEDICATION//RXNORM//<rxcui>`` (-> ATC through RxNorm -> UNII -> DrugBank -> ATC), SNOMED/CPT procedures."""

from __future__ import annotations

from ehr.code_maps.base import CodeMap, Mapped, register
from ehr.code_maps.mimic_iv import MARKER_PREFIXES


@register
class Clinosim(CodeMap):
    name = "clinosim"
    summary = "clinosim FHIR -> MEDS codes (ICD-10-CM, LOINC, RxNorm -> ATC, SNOMED/CPT)"

    def map_one(self, code: str) -> Mapped:
        icd = self.icd(code)
        if icd is not None:
            return icd
        parts = code.split("//")
        if parts[:2] == ["MEDICATION", "RXNORM"] and len(parts) > 2:
            atc = self.rxnorm_atc().get(parts[2])
            if atc:
                return Mapped(f"ATC:{atc}", f"ATC:{atc}")
            return Mapped(f"RXNORM:{parts[2]}", None, "RxNorm code not an ingredient with a DrugBank ATC")
        if parts[:2] == ["LAB", "LOINC"] and len(parts) > 2:
            return Mapped(f"LOINC:{parts[2]}", None, "LOINC: no MedTok code system")
        if parts[0] == "PROCEDURE" and len(parts) > 2:
            return Mapped(f"{parts[1]}:{parts[2]}", None, f"{parts[1]} procedure: no MedTok code system")
        if code.startswith(MARKER_PREFIXES):
            return Mapped(code, None, "event marker (admission, birth, death ...): no code system")
        return Mapped(code, None, f"unrecognised MEDS code kind {parts[0]!r}")

"""What a code map is, the shared parsers of MEDS-Extract's code strings, and the unmapped report."""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd

from commons.errors import ConfigError
from commons.registry import Registry

REGISTRY = Registry("code map")
register = REGISTRY.register

# MEDS-Extract's ICD segment ("ICD//10", "ICD//9") and event kind -> MedTok's system name
ICD_SYSTEMS = {("DIAGNOSIS", "10"): "ICD10CM", ("DIAGNOSIS", "9"): "ICD9CM",
               ("PROCEDURE", "10"): "ICD10PCS", ("PROCEDURE", "9"): "ICD9PCS"}


@dataclass(frozen=True)
class Mapped:
    """What one MEDS code becomes: ``medtok`` (``SYSTEM:code``) when a MedTok system covers it,
    else None with the ``reason``; ``token`` is the model's vocabulary entry either way."""

    token: str
    medtok: str | None = None
    reason: str = ""


@dataclass
class MappingReport:
    """How many distinct codes and events mapped, and the unmapped ones by reason."""

    codes: int = 0
    mapped_codes: int = 0
    events: int = 0
    mapped_events: int = 0
    unmapped_by_reason: Counter = field(default_factory=Counter)  # reason -> events
    unmapped_codes_by_reason: Counter = field(default_factory=Counter)  # reason -> distinct codes
    examples: dict = field(default_factory=dict)  # reason -> up to 3 codes

    def as_dict(self) -> dict:
        return {"codes": self.codes, "mapped_codes": self.mapped_codes, "events": self.events,
                "mapped_events": self.mapped_events,
                "unmapped": {r: {"events": n, "codes": self.unmapped_codes_by_reason[r],
                                 "examples": self.examples[r]}
                             for r, n in self.unmapped_by_reason.most_common()}}


class CodeMap:
    """Base class: subclasses set ``name``/``summary`` and implement :meth:`map_one`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def __init__(self, data_dir: str | None = None):
        self.data_dir = data_dir

    def map_one(self, code: str) -> Mapped:
        raise NotImplementedError

    # ---- helpers shared by the sources -------------------------------------------------------
    @staticmethod
    def icd(code: str) -> Mapped | None:
        """``DIAGNOSIS//ICD//10//E11.9`` -> ICD10CM:E11.9 (also ICD-9 and procedures); None if not ICD."""
        parts = code.split("//")
        if len(parts) >= 4 and parts[1] == "ICD":
            system = ICD_SYSTEMS.get((parts[0], parts[2]))
            if system and parts[3].strip():
                return Mapped(f"{system}:{parts[3].strip()}", f"{system}:{parts[3].strip()}")
            return Mapped(code, None, f"ICD version {parts[2]} of {parts[0]} has no MedTok system")
        return None

    def rxnorm_atc(self) -> dict[str, str]:
        return _rxnorm_atc(self.data_dir)

    def drug_name_atc(self) -> dict[str, str]:
        return _drug_name_atc(self.data_dir)


def _first_atc(atc_codes: pd.Series) -> pd.Series:
    """The first ATC code of DrugBank's ``A|B`` lists (sorted, so the choice is stable)."""
    return atc_codes.map(lambda s: sorted(x.strip() for x in s.split("|") if x.strip())[0] if s.strip() else "")


@functools.cache
def _rxnorm_atc(data_dir: str | None) -> dict[str, str]:
    """RxNorm ingredient -> ATC through the data directory's RxNorm -> UNII -> DrugBank -> ATC tables."""
    from medtok_core.kg_sources import SourceContext, rxnorm_to_drugbank

    ctx = SourceContext(data_dir)
    rx = rxnorm_to_drugbank(ctx)
    drugs = ctx.read("kg/drugbank42_drugs_atc.tsv", ("drugbank_id", "atc_codes"))
    drugs = drugs.assign(atc=_first_atc(drugs.atc_codes))
    joined = rx.merge(drugs[drugs.atc != ""][["drugbank_id", "atc"]], on="drugbank_id")
    return dict(zip(joined.rxnorm_id.astype(str), joined.atc, strict=True))


@functools.cache
def _drug_name_atc(data_dir: str | None) -> dict[str, str]:
    """Lower-case DrugBank drug name -> ATC (MIMIC-IV's prescriptions carry names, not RxNorm)."""
    from medtok_core.kg_sources import SourceContext

    drugs = SourceContext(data_dir).read("kg/drugbank42_drugs_atc.tsv", ("drugbank_id", "name", "atc_codes"))
    drugs = drugs.assign(atc=_first_atc(drugs.atc_codes))
    drugs = drugs[drugs.atc != ""]
    return dict(zip(drugs.name.str.strip().str.lower(), drugs.atc, strict=True))


def get_code_map(name: str, data_dir: str | None = None) -> CodeMap:
    if name not in REGISTRY:
        raise ConfigError(f"unknown code map source {name!r}; choose one of {', '.join(source_names())}")
    return REGISTRY[name](data_dir)


def source_names() -> list[str]:
    return sorted(REGISTRY)


def map_codes(code_map: CodeMap, code_counts: pd.Series, known=None) -> tuple[dict[str, Mapped], MappingReport]:
    """Map every distinct code (``code_counts``: code -> events) and count what did not map.

    ``known``: optional predicate on ``SYSTEM:code`` (e.g. a MedTok artifact's ``has_code``); a
    mapped code it rejects is reported as "not in the MedTok vocabulary" but keeps its token."""
    table: dict[str, Mapped] = {}
    report = MappingReport()
    for code, n in code_counts.items():
        m = code_map.map_one(str(code))
        if m.medtok is not None and known is not None and not known(m.medtok):
            m = Mapped(m.token, None, f"{m.medtok.split(':')[0]} code not in the MedTok vocabulary")
        table[str(code)] = m
        report.codes += 1
        report.events += int(n)
        if m.medtok is not None:
            report.mapped_codes += 1
            report.mapped_events += int(n)
        else:
            report.unmapped_by_reason[m.reason] += int(n)
            report.unmapped_codes_by_reason[m.reason] += 1
            report.examples.setdefault(m.reason, [])
            if len(report.examples[m.reason]) < 3:
                report.examples[m.reason].append(str(code))
    return table, report

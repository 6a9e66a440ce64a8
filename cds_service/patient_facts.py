"""Facts about the patient that decide which scores apply: age, pregnancy, an SpO2 target range.

Read from the prefetched (or fetched) Patient, active Conditions and active Goals, leniently: a
resource that does not say is "unknown", never "no".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

SNOMED = "http://snomed.info/sct"
ICD10 = ("http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10-cm")
LOINC = "http://loinc.org"

#: SNOMED CT findings that document a current pregnancy: 77386006 |Pregnancy|, 72892002 |Normal
#: pregnancy|, 47200007 |High risk pregnancy|.
PREGNANCY_SNOMED = frozenset({"77386006", "72892002", "47200007"})
#: ICD-10 chapter XV (O00-O9A, pregnancy, childbirth and the puerperium) and Z33.1 (pregnant state).
PREGNANCY_ICD10_PREFIXES = ("O", "Z33.1")
#: Oxygen saturation LOINC codes a Goal's target may measure (pulse oximetry and arterial).
SPO2_CODES = frozenset({"59408-5", "2708-6", "20564-1"})
#: RCP NEWS2 (2017), chart 2: Scale 2 is for a prescribed target range of 88-92 %, e.g. in
#: hypercapnic respiratory failure. A target whose upper bound is at most 92 % counts.
SCALE2_MAX_TARGET = 92.0


@dataclass(frozen=True)
class PatientFacts:
    age_years: float | None
    pregnant: bool | None
    spo2_scale2: bool


def age_in_years(patient: dict[str, Any] | None, now: datetime) -> float | None:
    birth = patient.get("birthDate") if patient else None
    if not isinstance(birth, str) or len(birth) < 4:
        return None
    try:
        # A partial birthDate (YYYY or YYYY-MM) is taken at its earliest day: the age is then
        # over- rather than under-estimated by less than a year, and only near 16 does it matter.
        parts = [int(p) for p in birth[:10].split("-")]
        born = date(parts[0], parts[1] if len(parts) > 1 else 1, parts[2] if len(parts) > 2 else 1)
    except (ValueError, IndexError):
        return None
    return (now.date() - born).days / 365.25


def _resources(bundle: dict[str, Any] | None, kind: str) -> list[dict[str, Any]]:
    if not bundle or bundle.get("resourceType") != "Bundle":
        return []
    return [
        entry["resource"]
        for entry in bundle.get("entry") or ()
        if isinstance(entry, dict)
        and isinstance(entry.get("resource"), dict)
        and entry["resource"].get("resourceType") == kind
    ]


def _codings(concept: Any) -> list[tuple[str, str]]:
    if not isinstance(concept, dict):
        return []
    return [
        (str(c.get("system")), str(c.get("code")))
        for c in concept.get("coding") or ()
        if isinstance(c, dict)
    ]


def is_pregnant(conditions: dict[str, Any] | None) -> bool | None:
    """True when an active Condition documents pregnancy; None (unknown) otherwise."""
    for condition in _resources(conditions, "Condition"):
        for system, code in _codings(condition.get("code")):
            if system == SNOMED and code in PREGNANCY_SNOMED:
                return True
            if system in ICD10 and code.upper().startswith(PREGNANCY_ICD10_PREFIXES):
                return True
    return None


def has_scale2_target(goals: dict[str, Any] | None) -> bool:
    """An active Goal targeting an oxygen saturation whose upper bound is at most 92 %."""
    for goal in _resources(goals, "Goal"):
        for target in goal.get("target") or ():
            if not isinstance(target, dict):
                continue
            if not any(s == LOINC and c in SPO2_CODES for s, c in _codings(target.get("measure"))):
                continue
            high = (target.get("detailRange") or {}).get("high") or {}
            value = high.get("value") if isinstance(high, dict) else None
            if not isinstance(value, int | float):
                continue
            percent = value * 100 if value <= 1 else value  # a fraction (0.92) or a percentage
            if percent <= SCALE2_MAX_TARGET:
                return True
    return False


def patient_facts(resources: dict[str, dict[str, Any] | None], now: datetime) -> PatientFacts:
    return PatientFacts(
        age_years=age_in_years(resources.get("patient"), now),
        pregnant=is_pregnant(resources.get("conditions")),
        spo2_scale2=has_scale2_target(resources.get("goals")),
    )

"""The ICU stay a sepsis score is anchored to, read from the patient's Encounter.

The model was trained on PhysioNet 2019 ICU stays, where time is counted from ICU admission
(``ICULOS``) and hospital admission is given relative to it (``HospAdmTime``). In FHIR the
Encounter's ``period.start`` is the hospital admission, and the ICU admission is the start of the
``location`` entry that is an intensive care unit. A patient with no such location is outside the
population the model was validated in, and gets no sepsis score.

A location counts as an ICU when its reference is one the site configured, when its HL7 v3
ServiceDeliveryLocationRoleType is ICU or one of the ICU kinds below, or when its display names an
intensive care unit. Display matching is a fallback for EHRs that send no location types.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

ROLE_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
#: v3 RoleCode ServiceDeliveryLocationRoleType codes of adult intensive care units: ICU, coronary
#: (CCU), cardiac (CHR is not: chronic care), and the medical/surgical ones PhysioNet distinguishes
#: are only in display text.
ICU_ROLE_CODES = frozenset({"ICU", "CCU"})
_ICU_TEXT = re.compile(r"\b(ICU|MICU|SICU|CCU|CVICU|TSICU|intensive care|critical care)\b", re.I)
_MEDICAL = re.compile(r"\b(MICU|medical intensive care|medical ICU)\b", re.I)
_SURGICAL = re.compile(r"\b(SICU|TSICU|surgical intensive care|surgical ICU|trauma)\b", re.I)
_ACTIVE_STATUSES = ("in-progress", "arrived", "triaged", "onleave")


@dataclass(frozen=True)
class IcuStay:
    encounter_id: str | None
    icu_start: datetime
    unit: Literal["MICU", "SICU"] | None
    #: ICU admission minus hospital admission, in hours (PhysioNet's -HospAdmTime)
    hospital_to_icu_hours: float | None


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _encounters(resource: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not resource:
        return []
    if resource.get("resourceType") == "Encounter":
        return [resource]
    if resource.get("resourceType") != "Bundle":
        return []
    return [
        entry["resource"]
        for entry in resource.get("entry") or ()
        if isinstance(entry, dict)
        and isinstance(entry.get("resource"), dict)
        and entry["resource"].get("resourceType") == "Encounter"
    ]


def _member(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def _codes(concepts: Iterable[Any]) -> set[str]:
    found: set[str] = set()
    for concept in concepts:
        if not isinstance(concept, dict):
            continue
        for coding in concept.get("coding") or ():
            if isinstance(coding, dict) and coding.get("system") == ROLE_TYPE_SYSTEM:
                found.add(str(coding.get("code")))
    return found


def _is_icu(entry: dict[str, Any], site_icus: frozenset[str]) -> bool:
    location = _member(entry, "location")
    if location.get("reference") in site_icus:
        return True
    concepts = [entry.get("physicalType"), *(location.get("type") or ())]
    if _codes(concepts) & ICU_ROLE_CODES:
        return True
    display = location.get("display")
    return isinstance(display, str) and bool(_ICU_TEXT.search(display))


def _unit(entry: dict[str, Any]) -> Literal["MICU", "SICU"] | None:
    display = _member(entry, "location").get("display")
    if not isinstance(display, str):
        return None
    if _MEDICAL.search(display):
        return "MICU"
    if _SURGICAL.search(display):
        return "SICU"
    return None


def icu_stay(
    encounter: dict[str, Any] | None, site_icus: Iterable[str], *, require_icu: bool
) -> IcuStay | None:
    """The current ICU stay of an active encounter, or None when there is none.

    The newest ICU location entry without an end wins. With ``require_icu`` False, an active
    encounter without an ICU location is anchored at its own start (a site that chose to score
    outside the validated population; the card still names the population).
    """
    icus = frozenset(site_icus)
    for resource in _encounters(encounter):
        if resource.get("status") not in _ACTIVE_STATUSES:
            continue
        admitted = _instant(_member(resource, "period").get("start"))
        candidates: list[tuple[datetime, dict[str, Any]]] = []
        for entry in resource.get("location") or ():
            if not isinstance(entry, dict) or not _is_icu(entry, icus):
                continue
            if entry.get("status") == "completed":
                continue
            span = _member(entry, "period")
            if _instant(span.get("end")) is not None:
                continue
            start = _instant(span.get("start")) or admitted
            if start is not None:
                candidates.append((start, entry))
        ident = resource.get("id") if isinstance(resource.get("id"), str) else None
        if candidates:
            start, entry = max(candidates, key=lambda c: c[0])
            before = (start - admitted).total_seconds() / 3600 if admitted else None
            return IcuStay(
                encounter_id=ident,
                icu_start=start,
                unit=_unit(entry),
                hospital_to_icu_hours=max(before, 0.0) if before is not None else None,
            )
        if not require_icu and admitted is not None:
            return IcuStay(ident, admitted, None, 0.0)
    return None

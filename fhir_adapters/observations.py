"""FHIR R4 Observations to canonical observations: the lean path used on every hook call.

Two steps, so that a second, validating reader (``fhir_adapters.validated``, on fhir.resources) can
share the second one and a test can prove both readers agree:

1. *extract*: a resource (here a plain dict from orjson) → ``RawObservation``, the few fields that
   matter, with no interpretation beyond FHIR's own rules;
2. *canonicalise*: ``RawObservation`` → ``CanonicalObservation``s, through the variable catalogue
   (code → variable), unit conversion and the plausible range. Everything rejected is counted in
   ``MappingStats``; nothing is dropped silently.

FHIR rules applied (R4 Observation): ``entered-in-error`` and ``cancelled`` are skipped; the time is
``effectiveDateTime``, ``effectiveInstant`` or ``effectivePeriod`` (its end, else its start: the
value describes the period, and the end is when it was known); a time without a clock time (a date,
or a partial date) is too imprecise to bin by hour and is skipped; ``dataAbsentReason`` means no
value; each ``component`` (the blood-pressure panel's systolic and diastolic) is an observation of
its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fhir_adapters.canonical import CanonicalObservation
from fhir_adapters.site_codes import CodeIndex, CodeMapping, default_index
from fhir_adapters.units import UnitError, to_canonical
from fhir_adapters.variables import VARIABLES

SKIPPED_STATUSES = frozenset({"entered-in-error", "cancelled"})
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True, slots=True)
class RawValue:
    codings: tuple[tuple[str, str], ...]
    value: float | None
    unit: str | None
    absent: bool
    key: str  # distinguishes components of one Observation in ``source``


@dataclass(frozen=True, slots=True)
class RawObservation:
    source: str
    patient: str | None
    status: str | None
    time: datetime | None
    main: RawValue
    components: tuple[RawValue, ...]


@dataclass
class MappingStats:
    """What happened to every Observation and value seen: the coverage table of a data set."""

    observations: int = 0
    skipped_status: int = 0
    no_time: int = 0
    mapped: int = 0
    no_value: int = 0
    partial_parts: int = 0
    implausible: Counter[str] = field(default_factory=Counter)
    bad_unit: Counter[tuple[str, str]] = field(default_factory=Counter)
    unmapped: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, other: MappingStats) -> None:
        self.observations += other.observations
        self.skipped_status += other.skipped_status
        self.no_time += other.no_time
        self.mapped += other.mapped
        self.no_value += other.no_value
        self.partial_parts += other.partial_parts
        self.implausible.update(other.implausible)
        self.bad_unit.update(other.bad_unit)
        self.unmapped.update(other.unmapped)


# ----------------------------------------------------------------------------- extract


def parse_time(text: object) -> datetime | None:
    """A FHIR dateTime/instant in UTC, or None when absent, partial (no clock time) or zoneless."""
    if not isinstance(text, str) or len(text) <= 10:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:  # FHIR requires a zone whenever a time is given
        return None
    return parsed.astimezone(UTC)


def _codings(concept: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(concept, dict):
        return ()
    found: list[tuple[str, str]] = []
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict):
            system, code = coding.get("system"), coding.get("code")
            if isinstance(system, str) and isinstance(code, str):
                found.append((system, code))
    return tuple(found)


def _value(element: dict[str, Any], key: str) -> RawValue:
    codings = _codings(element.get("code"))
    quantity = element.get("valueQuantity")
    value: float | None = None
    unit: str | None = None
    if isinstance(quantity, dict):
        number = quantity.get("value")
        if isinstance(number, int | float) and not isinstance(number, bool):
            value = float(number)
            code, system = quantity.get("code"), quantity.get("system")
            unit = code if isinstance(code, str) and system == UCUM else quantity.get("unit")
            if not isinstance(unit, str):
                unit = code if isinstance(code, str) else None
    elif isinstance(element.get("valueInteger"), int) and not isinstance(
        element.get("valueInteger"), bool
    ):
        value = float(element["valueInteger"])
    elif isinstance(element.get("valueBoolean"), bool):
        value = 1.0 if element["valueBoolean"] else 0.0
    absent = element.get("dataAbsentReason") is not None
    return RawValue(codings=codings, value=value, unit=unit, absent=absent, key=key)


def _effective(resource: dict[str, Any]) -> datetime | None:
    for name in ("effectiveDateTime", "effectiveInstant"):
        if name in resource:
            return parse_time(resource[name])
    period = resource.get("effectivePeriod")
    if isinstance(period, dict):
        return parse_time(period.get("end")) or parse_time(period.get("start"))
    return None


def _patient(resource: dict[str, Any]) -> str | None:
    subject = resource.get("subject")
    reference = subject.get("reference") if isinstance(subject, dict) else None
    if not isinstance(reference, str):
        return None
    return reference.removeprefix("urn:uuid:").rsplit("/", 1)[-1]


def extract(resource: dict[str, Any], full_url: str | None = None) -> RawObservation:
    """The fields of one Observation that canonicalisation needs, read from plain JSON."""
    rid = resource.get("id")
    source = f"Observation/{rid}" if isinstance(rid, str) else (full_url or "Observation/?")
    components = tuple(
        _value(component, f"c{index}")
        for index, component in enumerate(resource.get("component") or ())
        if isinstance(component, dict)
    )
    status = resource.get("status")
    return RawObservation(
        source=source,
        patient=_patient(resource),
        status=status if isinstance(status, str) else None,
        time=_effective(resource),
        main=_value(resource, ""),
        components=components,
    )


def observations_in(document: object) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Observations (with the entry's fullUrl) in a Bundle, or the one Observation given."""
    if not isinstance(document, dict):
        return
    kind = document.get("resourceType")
    if kind == "Observation":
        yield document, None
    elif kind == "Bundle":
        for entry in document.get("entry") or ():
            if isinstance(entry, dict):
                resource = entry.get("resource")
                if isinstance(resource, dict) and resource.get("resourceType") == "Observation":
                    url = entry.get("fullUrl")
                    yield resource, url if isinstance(url, str) else None


# ------------------------------------------------------------------------ canonicalise


def _mapping(codings: tuple[tuple[str, str], ...], index: CodeIndex) -> CodeMapping | None:
    for system, code in codings:
        mapping = index.resolve(system, code)
        if mapping is not None:
            return mapping
    return None


def _value_of(raw: RawValue, mapping: CodeMapping, stats: MappingStats) -> float | None:
    """The value in the variable's canonical unit, or None (counted) when it cannot be used."""
    variable = mapping.variable
    if raw.absent or raw.value is None:
        stats.no_value += 1
        return None
    unit = raw.unit if raw.unit is not None else mapping.unit
    try:
        value = to_canonical(variable, raw.value * mapping.scale, unit)
    except UnitError:
        stats.bad_unit[(variable.name, unit or "")] += 1
        return None
    if not variable.low <= value <= variable.high:
        stats.implausible[variable.name] += 1
        return None
    return value


def canonicalise(
    obs: RawObservation,
    stats: MappingStats,
    patient: str | None = None,
    index: CodeIndex | None = None,
) -> list[CanonicalObservation]:
    """The canonical observations in one extracted Observation; ``patient`` overrides its subject.

    Parts of a summed variable (the GCS eye, verbal and motor scores) become the total only when
    all parts sit in this one Observation: parts charted separately are counted, not guessed at.
    """
    codes = index or default_index()
    stats.observations += 1
    mapped = [
        (raw, mapping)
        for raw in (obs.main, *obs.components)
        if (mapping := _mapping(raw.codings, codes)) is not None
    ]
    if not mapped:
        _count_unmapped(obs.main.codings, stats)
        return []
    if obs.status in SKIPPED_STATUSES:
        stats.skipped_status += 1
        return []
    if obs.time is None:
        stats.no_time += 1
        return []
    who = patient or obs.patient or ""
    found: list[CanonicalObservation] = []
    parts: dict[str, list[float]] = {}
    for raw, mapping in mapped:
        value = _value_of(raw, mapping, stats)
        if value is None:
            continue
        if mapping.component:
            parts.setdefault(mapping.variable.name, []).append(value)
            continue
        stats.mapped += 1
        source = f"{obs.source}#{raw.key}" if raw.key else obs.source
        found.append(
            CanonicalObservation(
                patient=who,
                variable=mapping.variable.name,
                time=obs.time,
                value=value,
                source=source,
            )
        )
    for name, values in parts.items():
        variable = VARIABLES[name]
        if name in {o.variable for o in found} or len(values) != len(variable.components):
            stats.partial_parts += 1
            continue
        stats.mapped += 1
        found.append(
            CanonicalObservation(
                patient=who, variable=name, time=obs.time, value=sum(values), source=obs.source
            )
        )
    return found


def _count_unmapped(codings: tuple[tuple[str, str], ...], stats: MappingStats) -> None:
    stats.unmapped[codings[0] if codings else ("", "")] += 1


def _any_mapped(resource: dict[str, Any], codes: CodeIndex) -> bool:
    """Whether any code of the Observation or its components is one we read (cheap pre-check)."""
    if _mapping(_codings(resource.get("code")), codes) is not None:
        return True
    return any(
        isinstance(c, dict) and _mapping(_codings(c.get("code")), codes) is not None
        for c in resource.get("component") or ()
    )


def map_observations(
    documents: Iterable[object],
    stats: MappingStats,
    patient: str | None = None,
    index: CodeIndex | None = None,
) -> list[CanonicalObservation]:
    """Every canonical observation in some Bundles or Observations (prefetch or search results)."""
    codes = index or default_index()
    found: list[CanonicalObservation] = []
    for document in documents:
        for resource, full_url in observations_in(document):
            # Most codes in a real feed are ones we do not read (height, pain, BMI ...): count
            # them without extracting the rest, exactly as `canonicalise` would.
            if not _any_mapped(resource, codes):
                stats.observations += 1
                _count_unmapped(_codings(resource.get("code")), stats)
                continue
            found.extend(canonicalise(extract(resource, full_url), stats, patient, codes))
    return found

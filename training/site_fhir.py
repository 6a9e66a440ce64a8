"""A FHIR Bulk Data export (NDJSON) → ICU stays with hourly feature rows and a proxy sepsis label.

**Files.** Every ``*.ndjson`` and ``*.ndjson.gz`` under the folder (Bulk Data writes one resource
type per file; MIMIC-IV on FHIR names them ``MimicPatient.ndjson.gz`` …), read line by line. The
resource type is read from each resource, not from the file name. Patient, Location, Encounter
and Condition resources are read first; Observation files are then streamed once, and only the
Observations of patients with an ICU stay are kept, as canonical observations.

**Stays.** An ICU stay is an Encounter ``location`` entry that is an intensive care unit by the
service's own rule (``cds_service.sepsis.stay``: a site-configured Location reference, a v3
RoleCode ICU/CCU type, or a display naming an ICU; the Location's ``name`` stands in for a missing
display). A patient's overlapping or touching ICU entries, from any of their Encounters (MIMIC
lists the same transfer in the hospital and in the ICU Encounter), are one stay. ICU admission is
the stay's start; hospital admission the earliest start of an Encounter of the patient that
contains it. Rows are ICU hours 1 … discharge (``fhir_adapters.binning``), at most 14 days, as
PhysioNet cut its records; an open stay ends at its last observation. A stay with no value of
the model's 34 variables during it is excluded ("no-observations"): only age, sex and hours
would be scored.

**Features.** ``cds_service.features.grid_from_observations`` and ``feature_matrix``, the path of a
hook call and of ``training.dataset.patient_features``: canonical observations binned from ICU
admission, every feature causal within 72 h. Observations before ICU admission are not used (bin
< 1), as in PhysioNet and in the service.

**Label: a proxy, not the challenge's.** PhysioNet 2019 labels Sepsis-3 onset computed from
suspicion of infection (antibiotics and cultures) and a 2-point SOFA rise, t_sepsis, and sets
SepsisLabel = 1 from t_sepsis - 6 h (Reyna et al., Crit Care Med 2020;48:210-217; shared/data/
README.md, "Label definition"). A site export rarely holds what that definition needs, so here
onset is the time of a Condition coded as sepsis (``is_sepsis_coding``): ``onsetDateTime``, else
``onsetPeriod.start``, else ``recordedDate`` (with a clock time). The stay's rows are labelled 1
from onset - 6 h, as the challenge did, and a septic stay's rows stop at onset + 3 h (every
PhysioNet septic record ends by then, and the utility ignores later hours). An onset belongs to
a stay when it falls between the hospital admission (else 48 h before ICU admission) and 6 h
after ICU discharge (the last hours are then labelled, as in the challenge's records that end
before t_sepsis). As in the challenge, stays whose onset is before ICU hour 4 are excluded. A
sepsis Condition without a usable time cannot place the label in time: its stays (those of its
Encounter, or all of the patient's when it names none) are excluded and counted, not called
negative. Refuted and entered-in-error Conditions are ignored. A coded diagnosis is a billing
and documentation artefact: onset times are when someone recorded sepsis, often hours after it
began, and uncoded sepsis makes a stay look negative. Figures on this label measure agreement
with the site's coding, not with Sepsis-3.
"""

from __future__ import annotations

import gzip
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import orjson

from cds_service.features import (
    MODEL_VARIABLES,
    PatientContext,
    feature_matrix,
    grid_from_observations,
)
from cds_service.sepsis.stay import _is_icu, _unit
from fhir_adapters.binning import bin_of
from fhir_adapters.canonical import CanonicalObservation
from fhir_adapters.observations import MappingStats, map_observations, parse_time
from fhir_adapters.site_codes import CodeIndex
from training.site_data import (
    MIN_HOURS,
    Exclusion,
    SiteCohort,
    StayRows,
    assemble,
    exclusion_by_age,
)

_MODEL_VARIABLES: Final = frozenset(MODEL_VARIABLES)
#: PhysioNet records were cut at two weeks in the ICU.
MAX_HOURS: Final = 14 * 24
#: The challenge's label window: 1 from t_sepsis - 6 h; the record ends by t_sepsis + 3 h.
LABEL_LEAD_H: Final = 6
LABEL_TAIL_H: Final = 3
#: The challenge excluded stays whose t_sepsis fell within 4 h of ICU admission.
EARLIEST_ONSET: Final = timedelta(hours=4)
#: Without a known hospital admission, a sepsis onset this long before ICU admission still
#: belongs to the stay (and excludes it, being before hour 4); older onsets are other episodes.
ONSET_LOOKBACK: Final = timedelta(hours=48)

SNOMED: Final = "http://snomed.info/sct"
_ICD10 = frozenset(
    {
        "http://hl7.org/fhir/sid/icd-10",
        "http://hl7.org/fhir/sid/icd-10-cm",
        "urn:oid:2.16.840.1.113883.6.3",  # ICD-10
        "urn:oid:2.16.840.1.113883.6.90",  # ICD-10-CM
        "http://mimic.mit.edu/fhir/mimic/CodeSystem/mimic-diagnosis-icd10",
    }
)
_ICD9 = frozenset(
    {
        "http://hl7.org/fhir/sid/icd-9-cm",
        "urn:oid:2.16.840.1.113883.6.103",  # ICD-9-CM diagnoses
        "http://mimic.mit.edu/fhir/mimic/CodeSystem/mimic-diagnosis-icd9",
    }
)
_SNOMED = frozenset({SNOMED, "urn:oid:2.16.840.1.113883.6.96"})

SEPSIS_SNOMED: Final = frozenset(
    {
        "91302008",  # Sepsis (disorder)
        "76571007",  # Septic shock (disorder)
        "10001005",  # Bacterial sepsis (disorder)
        "770349000",  # Sepsis caused by virus (disorder)
    }
)
"""SNOMED CT: 91302008 and the concepts under it we name by meaning. A site whose terminology
server knows more descendants passes them with ``--sepsis-code``; we cannot expand the
hierarchy without one."""
#: ICD-10: A40 streptococcal sepsis, A41 other sepsis (every subcode), R65.20 severe sepsis
#: without and R65.21 with septic shock.
SEPSIS_ICD10_PREFIXES: Final = ("A40", "A41")
SEPSIS_ICD10: Final = frozenset({"R6520", "R6521"})
#: ICD-9-CM, the same conditions before 2015 (MIMIC-IV codes both): 038 septicaemia (every
#: subcode, ICD-10's A40/A41), 995.91 sepsis, 995.92 severe sepsis, 785.52 septic shock.
SEPSIS_ICD9_PREFIXES: Final = ("038",)
SEPSIS_ICD9: Final = frozenset({"99591", "99592", "78552"})
SEPSIS_CODES_TEXT: Final = (
    "SNOMED CT 91302008 Sepsis, 76571007 Septic shock, 10001005 Bacterial sepsis, 770349000 "
    "Sepsis caused by virus; ICD-10(-CM) A40*, A41*, R65.20, R65.21; ICD-9-CM 038*, 995.91, "
    "995.92, 785.52"
)
_REFUTED = frozenset({"refuted", "entered-in-error"})


def _normal(code: str) -> str:
    return code.replace(".", "").strip().upper()


def is_sepsis_coding(system: str, code: str, extra: frozenset[tuple[str, str]]) -> bool:
    """Whether one coding names sepsis (``extra``: the site's own ``(system, code)`` pairs)."""
    if (system, code) in extra:
        return True
    normal = _normal(code)
    if system in _SNOMED:
        return code in SEPSIS_SNOMED
    if system in _ICD10:
        return normal.startswith(SEPSIS_ICD10_PREFIXES) or normal in SEPSIS_ICD10
    if system in _ICD9:
        return normal.startswith(SEPSIS_ICD9_PREFIXES) or normal in SEPSIS_ICD9
    return False


# ---------------------------------------------------------------------------------- reading


def export_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith((".ndjson", ".ndjson.gz")))


def _lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        for line in handle:
            if line.strip():
                yield line


def _first_type(path: Path) -> str | None:
    for line in _lines(path):
        resource = orjson.loads(line)
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        return kind if isinstance(kind, str) else None
    return None


def _ref_id(value: Any) -> str | None:
    reference = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(reference, str):
        return None
    return reference.removeprefix("urn:uuid:").rsplit("/", 1)[-1]


def _period(value: Any) -> tuple[datetime | None, datetime | None]:
    if not isinstance(value, dict):
        return None, None
    return parse_time(value.get("start")), parse_time(value.get("end"))


def _birth_date(text: Any) -> date | None:
    """FHIR ``date``: YYYY, YYYY-MM or YYYY-MM-DD; a partial date is taken at its middle."""
    if not isinstance(text, str):
        return None
    parts = text.split("-")
    try:
        if len(parts) == 1:
            return date(int(parts[0]), 7, 1)
        if len(parts) == 2:
            return date(int(parts[0]), int(parts[1]), 15)
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


@dataclass(frozen=True)
class _Person:
    sex: Literal["female", "male"] | None
    birth: date | None


@dataclass(frozen=True)
class _IcuSpan:
    start: datetime
    end: datetime | None
    unit: Literal["MICU", "SICU"] | None
    encounter: str | None


@dataclass(frozen=True)
class _SepsisCondition:
    onset: datetime | None
    encounter: str | None


@dataclass
class _Stay:
    patient: str
    start: datetime
    end: datetime | None
    unit: Literal["MICU", "SICU"] | None
    encounters: set[str]
    hospital_start: datetime | None = None


@dataclass
class _Export:
    persons: dict[str, _Person]
    locations: dict[str, str]
    encounters: list[dict[str, Any]]
    conditions: dict[str, list[_SepsisCondition]]
    observation_files: list[Path]
    loose_observations: list[dict[str, Any]]


def _read_export(folder: Path, sepsis_extra: frozenset[tuple[str, str]]) -> _Export:
    export = _Export({}, {}, [], defaultdict(list), [], [])
    for path in export_files(folder):
        if _first_type(path) == "Observation":
            export.observation_files.append(path)
            continue
        for line in _lines(path):
            resource = orjson.loads(line)
            if isinstance(resource, dict):
                _take(resource, export, sepsis_extra)
    return export


def _take(
    resource: dict[str, Any], export: _Export, sepsis_extra: frozenset[tuple[str, str]]
) -> None:
    kind, rid = resource.get("resourceType"), resource.get("id")
    if kind == "Patient" and isinstance(rid, str):
        gender = resource.get("gender")
        sex: Literal["female", "male"] | None = (
            "female" if gender == "female" else "male" if gender == "male" else None
        )
        export.persons[rid] = _Person(sex, _birth_date(resource.get("birthDate")))
    elif kind == "Location" and isinstance(rid, str) and isinstance(resource.get("name"), str):
        export.locations[rid] = resource["name"]
    elif kind == "Encounter":
        export.encounters.append(resource)
    elif kind == "Condition":
        condition = _sepsis_condition(resource, sepsis_extra)
        subject = _ref_id(resource.get("subject"))
        if condition is not None and subject is not None:
            export.conditions[subject].append(condition)
    elif kind == "Observation":  # a file of mixed types (Bulk Data writes one type a file)
        export.loose_observations.append(resource)


def _codings(concept: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(concept, dict):
        return
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict):
            system, code = coding.get("system"), coding.get("code")
            if isinstance(system, str) and isinstance(code, str):
                yield system, code


def _sepsis_condition(
    resource: dict[str, Any], extra: frozenset[tuple[str, str]]
) -> _SepsisCondition | None:
    if not any(is_sepsis_coding(s, c, extra) for s, c in _codings(resource.get("code"))):
        return None
    status = resource.get("verificationStatus")
    # Read by code alone: senders often leave out the condition-ver-status system.
    codes = {
        coding.get("code")
        for coding in (status.get("coding") or () if isinstance(status, dict) else ())
        if isinstance(coding, dict)
    }
    if codes & _REFUTED:
        return None
    onset_period = resource.get("onsetPeriod")
    onset = (
        parse_time(resource.get("onsetDateTime"))
        or (parse_time(onset_period.get("start")) if isinstance(onset_period, dict) else None)
        or parse_time(resource.get("recordedDate"))
    )
    return _SepsisCondition(onset, _ref_id(resource.get("encounter")))


# ------------------------------------------------------------------------------------ stays


def _icu_spans(
    encounter: dict[str, Any], locations: dict[str, str], site_icus: frozenset[str]
) -> Iterator[_IcuSpan]:
    enc_start, enc_end = _period(encounter.get("period"))
    rid = encounter.get("id") if isinstance(encounter.get("id"), str) else None
    for entry in encounter.get("location") or ():
        if not isinstance(entry, dict) or entry.get("status") in ("planned", "reserved"):
            continue
        given = entry.get("location")
        location: dict[str, Any] = given if isinstance(given, dict) else {}
        named = dict(entry)
        if not isinstance(location.get("display"), str):
            name = locations.get(_ref_id(location) or "")
            named["location"] = {**location, "display": name} if name else location
        if not _is_icu(named, site_icus):
            continue
        start, end = _period(entry.get("period"))
        start = start or enc_start
        if start is None:
            continue
        # A finished Encounter's last location often has no end of its own: the Encounter's.
        yield _IcuSpan(start, end or enc_end, _unit(named), rid)


def _stays(export: _Export, site_icus: frozenset[str]) -> list[_Stay]:
    spans: dict[str, list[_IcuSpan]] = defaultdict(list)
    admissions: dict[str, list[tuple[datetime, datetime | None]]] = defaultdict(list)
    for encounter in export.encounters:
        patient = _ref_id(encounter.get("subject"))
        if patient is None:
            continue
        start, end = _period(encounter.get("period"))
        if start is not None:
            admissions[patient].append((start, end))
        spans[patient].extend(_icu_spans(encounter, export.locations, site_icus))
    stays: list[_Stay] = []
    for patient in sorted(spans):
        current: _Stay | None = None
        for span in sorted(spans[patient], key=lambda s: s.start):
            if current is not None and (current.end is None or span.start <= current.end):
                if current.end is not None:
                    current.end = None if span.end is None else max(current.end, span.end)
                current.unit = current.unit or span.unit
                current.encounters |= {span.encounter} if span.encounter else set()
                continue
            own = {span.encounter} if span.encounter else set()
            current = _Stay(patient, span.start, span.end, span.unit, own)
            stays.append(current)
    for stay in stays:
        containing = [
            start
            for start, end in admissions[stay.patient]
            if start <= stay.start and (end is None or end >= stay.start)
        ]
        stay.hospital_start = min(containing) if containing else None
    return stays


def _encounters_of(stay: _Stay, encounters: list[dict[str, Any]]) -> set[str]:
    """The stay's own Encounters and those containing it (the hospital admission)."""
    found = set(stay.encounters)
    for encounter in encounters:
        rid = encounter.get("id")
        if not isinstance(rid, str) or _ref_id(encounter.get("subject")) != stay.patient:
            continue
        start, end = _period(encounter.get("period"))
        if start is not None and start <= stay.start and (end is None or end >= stay.start):
            found.add(rid)
    return found


# -------------------------------------------------------------------------------- the cohort


def _observations(
    export: _Export, patients: set[str], index: CodeIndex | None, stats: MappingStats
) -> dict[str, list[CanonicalObservation]]:
    def resources() -> Iterator[dict[str, Any]]:
        yield from export.loose_observations
        for path in export.observation_files:
            for line in _lines(path):
                resource = orjson.loads(line)
                if isinstance(resource, dict) and resource.get("resourceType") == "Observation":
                    yield resource

    by_patient: dict[str, list[CanonicalObservation]] = defaultdict(list)
    for resource in resources():
        # Counted for every Observation; mapped only for patients with an ICU stay.
        if _ref_id(resource.get("subject")) not in patients:
            stats.observations += 1
            continue
        for observation in map_observations([resource], stats, index=index):
            by_patient[observation.patient].append(observation)
    return by_patient


def _age(person: _Person | None, at: datetime) -> float | None:
    if person is None or person.birth is None:
        return None
    return (at.date() - person.birth).days / 365.25


def _onset(
    stay: _Stay, conditions: Iterable[_SepsisCondition], encounters: set[str]
) -> tuple[datetime | None, bool]:
    """The stay's sepsis onset (earliest dated sepsis Condition that belongs to it) and whether
    an undated one belongs to it."""
    window_start = stay.hospital_start or (stay.start - ONSET_LOOKBACK)
    # An onset up to 6 h after discharge still labels the stay's last hours, by the challenge's
    # rule (SepsisLabel = 1 from t_sepsis - 6 h; some PhysioNet records end before t_sepsis).
    last = None if stay.end is None else stay.end + timedelta(hours=LABEL_LEAD_H)
    dated: list[datetime] = []
    undated = False
    for condition in conditions:
        if condition.onset is None:
            undated |= condition.encounter is None or condition.encounter in encounters
        elif window_start <= condition.onset and (last is None or condition.onset <= last):
            dated.append(condition.onset)
    return (min(dated) if dated else None), undated


def read_ndjson(
    folder: Path,
    limit: int | None = None,
    index: CodeIndex | None = None,
    site_icus: Iterable[str] = (),
    sepsis_codes: Iterable[tuple[str, str]] = (),
) -> SiteCohort:
    """The ICU stays of an export (the first ``limit``, ordered by patient and admission) as a
    cohort; see the module docstring for every rule."""
    export = _read_export(folder, frozenset(sepsis_codes))
    if not export.encounters:
        raise ValueError("no Encounter resources in the export")
    stays = _stays(export, frozenset(site_icus))[:limit]
    stats = MappingStats()
    observations = _observations(export, {s.patient for s in stays}, index, stats)
    included: list[StayRows] = []
    exclusions: Counter[Exclusion] = Counter()
    persons: set[str] = set()
    septic = 0
    for stay in stays:
        rows, why = _stay_rows(stay, export, observations.get(stay.patient, []))
        if rows is None:
            exclusions[why or "no-observations"] += 1
            continue
        included.append(rows)
        persons.add(stay.patient)
        septic += int(rows.labels.any())
    cohort = assemble("fhir-ndjson", included, len(stays), exclusions)
    cohort.mapping = stats
    cohort.persons = len(persons)
    cohort.septic_by_condition = septic
    return cohort


def _stay_rows(
    stay: _Stay, export: _Export, observations: list[CanonicalObservation]
) -> tuple[StayRows | None, Exclusion | None]:
    person = export.persons.get(stay.patient)
    age = _age(person, stay.start)
    excluded = exclusion_by_age(age)
    if excluded is not None or age is None:
        return None, excluded
    onset, undated = _onset(
        stay, export.conditions.get(stay.patient, ()), _encounters_of(stay, export.encounters)
    )
    if onset is None and undated:
        return None, "sepsis-coded-without-onset"
    if onset is not None and onset < stay.start + EARLIEST_ONSET:
        return None, "sepsis-onset-before-icu-hour-4"
    end = stay.end
    if end is None:
        times = [o.time for o in observations if o.time >= stay.start]
        end = max(times) if times else stay.start
    # The bin holding the last instant of the stay: discharge at 10:00 after admission at 00:00
    # is bins 1-10, not 11.
    last = min(bin_of(end - timedelta(microseconds=1), stay.start), MAX_HOURS)
    onset_bin = None if onset is None else bin_of(onset, stay.start)
    if onset_bin is not None:
        last = min(last, onset_bin + LABEL_TAIL_H)
    if last < MIN_HOURS:
        return None, "fewer-than-8-hours"
    # Only the model's variables count: MIMIC's ICU stays, for one, carry urine output alone.
    if not any(
        o.variable in _MODEL_VARIABLES and 1 <= bin_of(o.time, stay.start) <= last
        for o in observations
    ):
        return None, "no-observations"
    grid = grid_from_observations(observations, stay.start, first_bin=1, last_bin=last)
    before = None if stay.hospital_start is None else stay.start - stay.hospital_start
    context = PatientContext(
        age_years=age,
        sex=person.sex if person else None,
        icu_unit=stay.unit,
        hospital_to_icu_hours=None if before is None else max(before.total_seconds() / 3600, 0.0),
    )
    labels = np.zeros(last, dtype=np.int8)
    if onset_bin is not None:
        labels[max(onset_bin - LABEL_LEAD_H, 1) - 1 :] = 1
    # Length of stay in ICU hours as PhysioNet's last ICULOS counts it: the discharge's bin.
    hours = float(bin_of(end - timedelta(microseconds=1), stay.start))
    return (
        StayRows(
            features=feature_matrix(grid, context).astype(np.float32),
            labels=labels,
            age=age,
            sex=(person.sex if person else None) or "unknown",
            unit=stay.unit or "unknown",
            stay_hours=hours,
        ),
        None,
    )

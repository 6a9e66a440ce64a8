"""The lean Observation reader, rule by rule (FHIR R4 Observation)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_adapters.observations import MappingStats, map_observations
from fhir_adapters.site_codes import CodeIndex, parse_site_map

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
T = "2026-11-30T10:15:00+01:00"
T_UTC = datetime(2026, 11, 30, 9, 15, tzinfo=UTC)


def heart_rate(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "hr1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
        "effectiveDateTime": T,
        "valueQuantity": {"value": 88, "unit": "beats/minute", "system": UCUM, "code": "/min"},
    }
    resource.update(changes)
    return {k: v for k, v in resource.items() if v is not None}


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }


def test_a_value_becomes_a_canonical_observation_in_utc() -> None:
    stats = MappingStats()
    (obs,) = map_observations([bundle(heart_rate())], stats)
    assert (obs.patient, obs.variable, obs.time, obs.value, obs.source) == (
        "p1", "heart_rate", T_UTC, 88.0, "Observation/hr1"
    )  # fmt: skip
    assert stats.mapped == 1 and stats.observations == 1


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled"])
def test_withdrawn_observations_are_skipped_and_counted(status: str) -> None:
    stats = MappingStats()
    assert map_observations([bundle(heart_rate(status=status))], stats) == []
    assert stats.skipped_status == 1


@pytest.mark.parametrize("status", ["final", "amended", "corrected", "preliminary"])
def test_other_statuses_are_read(status: str) -> None:
    assert len(map_observations([bundle(heart_rate(status=status))], MappingStats())) == 1


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"effectiveDateTime": None, "effectiveInstant": "2026-11-30T09:15:00Z"}, T_UTC),
        ({"effectiveDateTime": None, "effectivePeriod": {"start": "2026-11-30T08:00:00Z", "end": "2026-11-30T09:15:00Z"}}, T_UTC),
        ({"effectiveDateTime": None, "effectivePeriod": {"start": "2026-11-30T09:15:00Z"}}, T_UTC),
    ],
)  # fmt: skip
def test_effective_instant_and_period(changes: dict[str, Any], expected: datetime) -> None:
    (obs,) = map_observations([heart_rate(**changes)], MappingStats())
    assert obs.time == expected


@pytest.mark.parametrize("when", ["2026-11-30", "2026-11", "2026", "2026-11-30T10:15:00", None])
def test_times_too_imprecise_to_bin_are_skipped(when: str | None) -> None:
    stats = MappingStats()
    assert map_observations([heart_rate(effectiveDateTime=when)], stats) == []
    assert stats.no_time == 1


def test_data_absent_reason_is_no_value() -> None:
    stats = MappingStats()
    absent = heart_rate(
        valueQuantity=None, dataAbsentReason={"coding": [{"code": "asked-declined"}]}
    )
    assert map_observations([absent], stats) == []
    assert stats.no_value == 1


def test_blood_pressure_panel_components_are_observations_of_their_own() -> None:
    panel = heart_rate(
        code={"coding": [{"system": LOINC, "code": "85354-9"}]},
        valueQuantity=None,
        component=[
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": {"value": 132, "code": "mm[Hg]", "system": UCUM}},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "dataAbsentReason": {"text": "cuff slipped"}},
        ],
    )  # fmt: skip
    stats = MappingStats()
    (systolic,) = map_observations([panel], stats)
    assert (systolic.variable, systolic.value, systolic.source) == (
        "sbp",
        132.0,
        "Observation/hr1#c0",
    )
    assert stats.no_value == 1


def test_units_are_converted_and_implausible_values_rejected() -> None:
    fahrenheit = heart_rate(
        code={"coding": [{"system": LOINC, "code": "8310-5"}]},
        valueQuantity={"value": 101.3, "unit": "degF", "system": UCUM, "code": "[degF]"},
    )
    (temperature,) = map_observations([fahrenheit], MappingStats())
    assert temperature.value == pytest.approx(38.5)
    stats = MappingStats()
    assert map_observations([heart_rate(valueQuantity={"value": 480, "code": "/min"})], stats) == []
    assert stats.implausible["heart_rate"] == 1


def test_an_unknown_unit_is_counted_not_guessed() -> None:
    stats = MappingStats()
    odd = heart_rate(valueQuantity={"value": 1.4, "unit": "Hz"})
    assert map_observations([odd], stats) == []
    assert stats.bad_unit[("heart_rate", "Hz")] == 1


def test_unmapped_codes_are_counted_by_code() -> None:
    stats = MappingStats()
    pain = heart_rate(code={"coding": [{"system": LOINC, "code": "72514-3"}]})
    assert map_observations([bundle(pain, pain)], stats) == []
    assert stats.unmapped[(LOINC, "72514-3")] == 2


def test_pulse_oximetry_is_read_under_both_codes() -> None:
    for code in ("59408-5", "2708-6"):
        spo2 = heart_rate(
            code={"coding": [{"system": LOINC, "code": code}]},
            valueQuantity={"value": 95, "unit": "%"},
        )
        (obs,) = map_observations([spo2], MappingStats())
        assert (obs.variable, obs.value) == ("spo2", 95.0)


def test_a_site_code_map_reads_local_codes_without_code_changes() -> None:
    site = parse_site_map(
        """
        name = "test-hospital"
        [[code]]
        system = "urn:oid:1.2.3.4.flowsheet"
        code = "HR-77"
        variable = "heart_rate"
        unit = "/min"
        """,
        "test-hospital.toml",
    )
    local = heart_rate(
        code={"coding": [{"system": "urn:oid:1.2.3.4.flowsheet", "code": "HR-77"}]},
        valueQuantity={"value": 101},
    )
    stats = MappingStats()
    assert map_observations([local], stats) == []  # without the map: unmapped
    (obs,) = map_observations([local], MappingStats(), index=CodeIndex([site]))
    assert (obs.variable, obs.value) == ("heart_rate", 101.0)


def test_gcs_parts_in_one_observation_are_summed() -> None:
    gcs = heart_rate(
        code={"coding": [{"system": LOINC, "code": "9269-2"}]},
        valueQuantity=None,
        component=[
            {"code": {"coding": [{"system": LOINC, "code": "9267-6"}]}, "valueInteger": 3},
            {"code": {"coding": [{"system": LOINC, "code": "9270-0"}]}, "valueInteger": 4},
            {"code": {"coding": [{"system": LOINC, "code": "9268-4"}]}, "valueInteger": 6},
        ],
    )  # fmt: skip
    (total,) = map_observations([gcs], MappingStats())
    assert (total.variable, total.value) == ("gcs_total", 13.0)


def test_prefetch_shapes_other_than_observations_yield_nothing() -> None:
    stats = MappingStats()
    outcome = {"resourceType": "OperationOutcome", "issue": []}
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    assert map_observations([None, outcome, empty, {"resourceType": "Patient"}], stats) == []
    assert stats.observations == 0


def test_the_context_patient_overrides_the_subject() -> None:
    (obs,) = map_observations([heart_rate(subject=None)], MappingStats(), patient="ctx")
    assert obs.patient == "ctx"

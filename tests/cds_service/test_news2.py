"""NEWS2 against the RCP 2017 chart: every band edge of every parameter, on both SpO2 scales.

Expected points are read off Chart 1 of Royal College of Physicians, National Early Warning
Score (NEWS) 2, London: RCP, 2017, not computed from the module's own tables.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from cds_service.scores import TimedValue, round_half_up
from cds_service.scores.news2 import News2Result, Parameter, RiskBand, SpO2Scale, score_news2

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
T = NOW - timedelta(minutes=30)


def normal() -> dict[str, TimedValue]:
    """All seven parameters, each in its 0-point band."""
    return {
        "resp_rate": TimedValue(16, T),
        "spo2": TimedValue(97, T),
        "supplemental_oxygen": TimedValue(0, T),
        "sbp": TimedValue(120, T),
        "heart_rate": TimedValue(70, T),
        "consciousness": TimedValue(0, T),
        "temperature": TimedValue(37.0, T),
    }


def score(
    values: dict[str, TimedValue],
    *,
    scale2: bool = False,
    age: float | None = 60.0,
    pregnant: bool | None = False,
) -> News2Result:
    return score_news2(values, age_years=age, pregnant=pregnant, spo2_scale2=scale2, now=NOW)


def points_of(values: dict[str, TimedValue], parameter: Parameter, *, scale2: bool = False) -> int:
    [found] = [p for p in score(values, scale2=scale2).parameters if p.parameter is parameter]
    return found.points


def with_value(variable: str, value: float) -> dict[str, TimedValue]:
    values = normal()
    values[variable] = TimedValue(value, T)
    return values


# ------------------------------------------------------------------ Chart 1, band by band

RESPIRATION = [
    (0, 3),
    (8, 3),
    (9, 1),
    (11, 1),
    (12, 0),
    (20, 0),
    (21, 2),
    (24, 2),
    (25, 3),
    (60, 3),
]
SYSTOLIC = [
    (50, 3),
    (90, 3),
    (91, 2),
    (100, 2),
    (101, 1),
    (110, 1),
    (111, 0),
    (219, 0),
    (220, 3),
    (260, 3),
]
PULSE = [
    (30, 3),
    (40, 3),
    (41, 1),
    (50, 1),
    (51, 0),
    (90, 0),
    (91, 1),
    (110, 1),
    (111, 2),
    (130, 2),
    (131, 3),
    (200, 3),
]
TEMPERATURE = [
    (33.0, 3),
    (35.0, 3),
    (35.1, 1),
    (36.0, 1),
    (36.1, 0),
    (38.0, 0),
    (38.1, 1),
    (39.0, 1),
    (39.1, 2),
    (41.0, 2),
]


@pytest.mark.parametrize(("value", "points"), RESPIRATION)
def test_respiration_rate_bands(value: float, points: int) -> None:
    assert points_of(with_value("resp_rate", value), Parameter.RESPIRATION_RATE) == points


@pytest.mark.parametrize(("value", "points"), SYSTOLIC)
def test_systolic_bands(value: float, points: int) -> None:
    assert points_of(with_value("sbp", value), Parameter.SYSTOLIC_BP) == points


@pytest.mark.parametrize(("value", "points"), PULSE)
def test_pulse_bands(value: float, points: int) -> None:
    assert points_of(with_value("heart_rate", value), Parameter.PULSE) == points


@pytest.mark.parametrize(("value", "points"), TEMPERATURE)
def test_temperature_bands(value: float, points: int) -> None:
    assert points_of(with_value("temperature", value), Parameter.TEMPERATURE) == points


# Scale 1 does not depend on oxygen; run every edge on air and on oxygen.
SCALE1 = [(80, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)]


@pytest.mark.parametrize("on_oxygen", [0, 1])
@pytest.mark.parametrize(("value", "points"), SCALE1)
def test_spo2_scale1_bands(value: float, points: int, on_oxygen: int) -> None:
    values = with_value("spo2", value)
    values["supplemental_oxygen"] = TimedValue(on_oxygen, T)
    assert points_of(values, Parameter.SPO2) == points


# Scale 2 up to 92 % is the same on air and oxygen; above it the two columns differ.
SCALE2_ANY = [(75, 3), (83, 3), (84, 2), (85, 2), (86, 1), (87, 1), (88, 0), (92, 0)]
SCALE2_AIR = [(93, 0), (95, 0), (97, 0), (100, 0)]
SCALE2_OXYGEN = [(93, 1), (94, 1), (95, 2), (96, 2), (97, 3), (100, 3)]
SCALE2 = (
    [(v, p, o) for v, p in SCALE2_ANY for o in (0, 1)]
    + [(v, p, 0) for v, p in SCALE2_AIR]
    + [(v, p, 1) for v, p in SCALE2_OXYGEN]
)


@pytest.mark.parametrize(("value", "points", "on_oxygen"), SCALE2)
def test_spo2_scale2_bands(value: float, points: int, on_oxygen: int) -> None:
    values = with_value("spo2", value)
    values["supplemental_oxygen"] = TimedValue(on_oxygen, T)
    result = score(values, scale2=True)
    assert result.scale is SpO2Scale.SCALE_2
    assert points_of(values, Parameter.SPO2, scale2=True) == points


def test_scale_1_is_the_default_even_for_a_high_spo2_on_oxygen() -> None:
    values = with_value("spo2", 99)
    values["supplemental_oxygen"] = TimedValue(1, T)
    result = score(values)
    assert result.scale is SpO2Scale.SCALE_1
    assert points_of(values, Parameter.SPO2) == 0


def test_scale2_spo2_of_93_or_more_is_not_scored_when_air_or_oxygen_is_unknown() -> None:
    values = with_value("spo2", 95)
    del values["supplemental_oxygen"]
    result = score(values, scale2=True)
    assert set(result.missing) == {Parameter.SPO2, Parameter.AIR_OR_OXYGEN}
    assert result.unscored == (Parameter.SPO2,)
    assert any("SpO2 95 %" in note for note in result.notes)


def test_scale2_spo2_in_target_is_scored_even_when_air_or_oxygen_is_unknown() -> None:
    values = with_value("spo2", 90)
    del values["supplemental_oxygen"]
    result = score(values, scale2=True)
    assert result.missing == (Parameter.AIR_OR_OXYGEN,)
    assert points_of(values, Parameter.SPO2, scale2=True) == 0


@pytest.mark.parametrize(("level", "points", "text"), [
    (0, 0, "Alert"), (1, 3, "New confusion"), (2, 3, "Responds to voice"),
    (3, 3, "Responds to pain"), (4, 3, "Unresponsive"),
])  # fmt: skip
def test_consciousness_acvpu(level: int, points: int, text: str) -> None:
    result = score(with_value("consciousness", level))
    [found] = [p for p in result.parameters if p.parameter is Parameter.CONSCIOUSNESS]
    assert (found.points, found.value_text, found.variable) == (points, text, "consciousness")
    assert found.unit == "{score}"  # the catalogue's unit for ACVPU


@pytest.mark.parametrize("level", [5, -1, 1.5])
def test_consciousness_outside_acvpu_is_missing_with_a_note(level: float) -> None:
    result = score(with_value("consciousness", level))
    assert result.missing == (Parameter.CONSCIOUSNESS,)
    assert result.unscored == (Parameter.CONSCIOUSNESS,)
    assert any("not an ACVPU level" in note for note in result.notes)


# ------------------------------------------------------------------ air or oxygen


@pytest.mark.parametrize(("variables", "points", "variable"), [
    ({"supplemental_oxygen": 1}, 2, "supplemental_oxygen"),
    ({"supplemental_oxygen": 0}, 0, "supplemental_oxygen"),
    ({"fio2": 0.21}, 0, "fio2"),
    ({"fio2": 0.22}, 2, "fio2"),
    ({"fio2": 0.6}, 2, "fio2"),
    ({"oxygen_flow_rate": 0}, 0, "oxygen_flow_rate"),
    ({"oxygen_flow_rate": 0.5}, 2, "oxygen_flow_rate"),
    ({"oxygen_flow_rate": 2, "fio2": 0.21}, 2, "oxygen_flow_rate"),  # any record of oxygen wins
    ({"fio2": 0.35, "oxygen_flow_rate": 0}, 2, "fio2"),
    # any record of oxygen outweighs a (possibly stale) room-air flag
    ({"supplemental_oxygen": 0, "fio2": 0.4}, 2, "fio2"),
    ({"supplemental_oxygen": 1, "fio2": 0.21}, 2, "supplemental_oxygen"),
])  # fmt: skip
def test_air_or_oxygen_sources(variables: dict[str, float], points: int, variable: str) -> None:
    values = normal()
    del values["supplemental_oxygen"]
    values |= {name: TimedValue(value, T) for name, value in variables.items()}
    result = score(values)
    [found] = [p for p in result.parameters if p.parameter is Parameter.AIR_OR_OXYGEN]
    assert (found.points, found.variable) == (points, variable)
    assert found.value_text.startswith("Oxygen" if points else "Air")


def test_no_oxygen_record_is_missing_not_air() -> None:
    values = normal()
    del values["supplemental_oxygen"]
    result = score(values)
    assert result.missing == (Parameter.AIR_OR_OXYGEN,)
    assert result.partial


# ------------------------------------------------------------------ rounding


@pytest.mark.parametrize(("value", "points"), [
    (35.04, 3), (35.05, 1), (36.04, 1), (36.05, 0), (38.04, 0), (38.05, 1),
    (39.04, 1), (39.05, 2), (34.95, 3),
])  # fmt: skip
def test_temperature_rounds_half_up_to_one_decimal_first(value: float, points: int) -> None:
    assert points_of(with_value("temperature", value), Parameter.TEMPERATURE) == points


@pytest.mark.parametrize(("variable", "parameter", "value", "points"), [
    ("resp_rate", Parameter.RESPIRATION_RATE, 20.4, 0), ("resp_rate", Parameter.RESPIRATION_RATE, 20.5, 2),
    ("resp_rate", Parameter.RESPIRATION_RATE, 8.5, 1), ("resp_rate", Parameter.RESPIRATION_RATE, 8.49, 3),
    ("sbp", Parameter.SYSTOLIC_BP, 110.5, 0), ("sbp", Parameter.SYSTOLIC_BP, 219.5, 3),
    ("heart_rate", Parameter.PULSE, 90.5, 1), ("heart_rate", Parameter.PULSE, 50.4, 1),
    ("spo2", Parameter.SPO2, 95.5, 0), ("spo2", Parameter.SPO2, 91.4, 3),
])  # fmt: skip
def test_whole_number_parameters_round_half_up(
    variable: str, parameter: Parameter, value: float, points: int
) -> None:
    assert points_of(with_value(variable, value), parameter) == points


def test_round_half_up_uses_the_recorded_digits_not_the_binary_float() -> None:
    assert round(38.05, 1) == 38.0  # the trap: Python rounds the binary 38.0499999...
    assert str(round_half_up(38.05, 1)) == "38.1"
    assert str(round_half_up(20.5)) == "21"


def test_rounded_value_is_shown_beside_the_recorded_one() -> None:
    result = score(with_value("temperature", 38.05))
    [found] = [p for p in result.parameters if p.parameter is Parameter.TEMPERATURE]
    assert found.value == 38.05
    assert found.value_text == "38.05 °C (read as 38.1)"


# ------------------------------------------------------------------ GCS without ACVPU


def test_gcs_below_15_alone_is_not_turned_into_new_confusion() -> None:
    values = normal()
    del values["consciousness"]
    values["gcs_total"] = TimedValue(14, T)
    result = score(values)
    assert result.missing == result.unscored == (Parameter.CONSCIOUSNESS,)
    assert result.score == 0
    assert result.partial
    assert any("GCS 14" in note and "2026-03-01T07:30:00Z" in note for note in result.notes)


def test_gcs_15_alone_reads_as_alert() -> None:
    values = normal()
    del values["consciousness"]
    values["gcs_total"] = TimedValue(15, T)
    result = score(values)
    assert not result.partial
    [found] = [p for p in result.parameters if p.parameter is Parameter.CONSCIOUSNESS]
    assert (found.points, found.variable) == (0, "gcs_total")


def test_acvpu_is_used_when_both_are_recorded() -> None:
    values = with_value("consciousness", 2)
    values["gcs_total"] = TimedValue(15, T)
    [found] = [p for p in score(values).parameters if p.parameter is Parameter.CONSCIOUSNESS]
    assert (found.points, found.variable) == (3, "consciousness")


# ------------------------------------------------------------------ aggregate and bands


def test_all_normal_scores_zero_low() -> None:
    result = score(normal())
    assert (result.score, result.band, result.partial, result.any_single_three) == (
        0, RiskBand.LOW, False, False
    )  # fmt: skip
    assert [p.parameter for p in result.parameters] == list(Parameter)
    assert result.missing == ()


@pytest.mark.parametrize(("changes", "total", "single_three", "band"), [
    ({"heart_rate": 95}, 1, False, RiskBand.LOW),
    ({"heart_rate": 115, "resp_rate": 22}, 4, False, RiskBand.LOW),
    ({"heart_rate": 115, "resp_rate": 22, "temperature": 38.5}, 5, False, RiskBand.MEDIUM),
    ({"heart_rate": 115, "resp_rate": 22, "sbp": 95}, 6, False, RiskBand.MEDIUM),
    ({"heart_rate": 115, "resp_rate": 22, "sbp": 95, "temperature": 38.5}, 7, False, RiskBand.HIGH),
    ({"resp_rate": 26}, 3, True, RiskBand.LOW_MEDIUM),
    ({"consciousness": 1, "heart_rate": 95}, 4, True, RiskBand.LOW_MEDIUM),
    ({"sbp": 85, "resp_rate": 22}, 5, True, RiskBand.MEDIUM),
    ({"sbp": 85, "resp_rate": 26, "heart_rate": 95}, 7, True, RiskBand.HIGH),
    ({"supplemental_oxygen": 1, "heart_rate": 95}, 3, False, RiskBand.LOW),  # 2 + 1, no single 3
])  # fmt: skip
def test_aggregate_and_risk_band(
    changes: dict[str, float], total: int, single_three: bool, band: RiskBand
) -> None:
    values = normal() | {name: TimedValue(value, T) for name, value in changes.items()}
    result = score(values)
    assert (result.score, result.any_single_three, result.band) == (total, single_three, band)


def test_maximum_score_is_20() -> None:
    values = {
        "resp_rate": TimedValue(30, T), "spo2": TimedValue(85, T),
        "supplemental_oxygen": TimedValue(1, T), "sbp": TimedValue(80, T),
        "heart_rate": TimedValue(140, T), "consciousness": TimedValue(4, T),
        "temperature": TimedValue(34.0, T),
    }  # fmt: skip
    assert score(values).score == 20


# ------------------------------------------------------------------ partial scores


def test_partial_score_sums_what_is_there_and_names_what_is_not() -> None:
    values = normal() | {"resp_rate": TimedValue(26, T)}
    del values["temperature"]
    del values["sbp"]
    result = score(values)
    assert result.partial
    assert result.missing == (Parameter.SYSTOLIC_BP, Parameter.TEMPERATURE)
    assert result.unscored == ()
    assert result.score == 3
    assert {p.parameter for p in result.parameters}.isdisjoint(result.missing)


def test_nothing_recorded_is_all_missing_not_zero_normal() -> None:
    result = score({})
    assert result.partial
    assert result.missing == tuple(Parameter)
    assert result.parameters == ()


def test_a_non_finite_value_is_missing_with_a_note() -> None:
    result = score(with_value("heart_rate", math.nan))
    assert result.missing == result.unscored == (Parameter.PULSE,)
    assert any("heart_rate" in note for note in result.notes)


# ------------------------------------------------------------------ population


@pytest.mark.parametrize(("age", "pregnant", "eligible", "reason_has", "unknown"), [
    (16.0, False, True, None, False),
    (15.99, False, False, "under 16", False),
    (2.0, None, False, "under 16", True),
    (None, False, False, "Age is not recorded", False),
    (30.0, True, False, "pregnancy", False),
    (30.0, None, True, None, True),
])  # fmt: skip
def test_eligibility(
    age: float | None, pregnant: bool | None, eligible: bool, reason_has: str | None, unknown: bool
) -> None:
    result = score(normal(), age=age, pregnant=pregnant)
    assert result.eligible is eligible
    assert result.pregnancy_unknown is unknown
    if reason_has is None:
        assert result.ineligible_reason is None
    else:
        assert result.ineligible_reason is not None
        assert reason_has in result.ineligible_reason


def test_ineligible_patient_is_still_scored() -> None:
    result = score(with_value("resp_rate", 30), age=10.0)
    assert not result.eligible
    assert result.score == 3


# ------------------------------------------------------------------ contract


def test_result_is_frozen_and_carries_the_inputs_time() -> None:
    result = score(normal())
    assert result.scored_at == NOW
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.score = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.parameters[0].points = 3  # type: ignore[misc]


def test_parameter_results_carry_variable_unit_and_time() -> None:
    other_zone = datetime(2026, 3, 1, 9, 0, tzinfo=timezone(timedelta(hours=2)))
    values = normal() | {"sbp": TimedValue(95, other_zone)}
    [found] = [p for p in score(values).parameters if p.parameter is Parameter.SYSTOLIC_BP]
    assert (found.variable, found.value, found.unit, found.time, found.points) == (
        "sbp", 95, "mm[Hg]", other_zone, 2
    )  # fmt: skip
    assert found.value_text == "95 mmHg"


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        score_news2({}, age_years=50, pregnant=False, spo2_scale2=False, now=datetime(2026, 1, 1))
    naive = {"sbp": TimedValue(120, datetime(2026, 1, 1))}
    with pytest.raises(ValueError, match="timezone-aware"):
        score(naive)

"""Hourly binning: bin k covers [start + (k-1) h, start + k h); the last value in a bin wins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fhir_adapters.binning import bin_of, bin_start, hourly_values
from fhir_adapters.canonical import CanonicalObservation

START = datetime(2150, 3, 1, 8, 30, tzinfo=UTC)


def obs(
    minutes: float, value: float, variable: str = "heart_rate", source: str = ""
) -> CanonicalObservation:
    return CanonicalObservation(
        patient="p1",
        variable=variable,
        time=START + timedelta(minutes=minutes),
        value=value,
        source=source or f"Observation/{minutes}-{value}",
    )


@pytest.mark.parametrize(
    ("minutes", "k"),
    [
        (0, 1),  # exactly at the start: the first hour owns its opening edge
        (0.001, 1),
        (59.999, 1),
        (60, 2),  # exactly on an edge: the later bin
        (61, 2),
        (24 * 60, 25),
        (-0.001, 0),  # just before the start
        (-60, 0),
        (-60.001, -1),
        (-120, -1),
    ],
)
def test_bin_edges(minutes: float, k: int) -> None:
    assert bin_of(START + timedelta(minutes=minutes), START) == k


def test_bin_start_round_trips_like_a_psv_row() -> None:
    # One PSV row is bin ICULOS: its values, timed at bin_start, bin back to ICULOS.
    for iculos in (1, 2, 7, 336):
        assert bin_of(bin_start(START, iculos), START) == iculos
    assert bin_start(START, 1) == START


def test_time_zones_are_compared_as_instants() -> None:
    eastern = timezone(timedelta(hours=-5))
    same_instant = (START + timedelta(minutes=90)).astimezone(eastern)
    assert bin_of(same_instant, START) == 2


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        bin_of(datetime(2150, 3, 1, 9, 0), START)
    with pytest.raises(ValueError, match="timezone-aware"):
        hourly_values([], START.replace(tzinfo=None))


def test_several_values_in_one_hour_keep_the_last() -> None:
    values = hourly_values([obs(50, 110), obs(5, 90), obs(30, 100)], START)
    assert values == {1: {"heart_rate": 110}}


def test_ties_are_broken_by_source_whatever_the_order() -> None:
    a = obs(10, 80, source="Observation/a")
    b = obs(10, 95, source="Observation/b")
    assert hourly_values([a, b], START) == {1: {"heart_rate": 95}}
    assert hourly_values([b, a], START) == {1: {"heart_rate": 95}}


def test_bins_variables_and_before_start() -> None:
    values = hourly_values(
        [
            obs(-30, 4.1, "lactate"),  # an ED lactate before ICU admission: bin 0, kept
            obs(0, 88),
            obs(60, 92),  # on the edge: bin 2
            obs(75, 37.9, "temperature"),
            obs(200, 2.2, "lactate"),
        ],
        START,
    )
    assert values == {
        0: {"lactate": 4.1},
        1: {"heart_rate": 88},
        2: {"heart_rate": 92, "temperature": 37.9},
        4: {"lactate": 2.2},
    }
    assert list(values) == sorted(values)  # ascending bins
    # The caller decides about pre-start values, e.g. drop them:
    assert 0 not in {k: v for k, v in values.items() if k > 0}


def test_empty_input() -> None:
    assert hourly_values([], START) == {}

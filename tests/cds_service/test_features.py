"""The feature definition: causal, within the 72 h look-back, and right on hand-made cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cds_service.features import (
    FEATURE_NAMES,
    LOOKBACK_HOURS,
    MODEL_VARIABLES,
    HourlyGrid,
    PatientContext,
    feature_matrix,
    grid_from_observations,
)
from fhir_adapters.canonical import CanonicalObservation

START = datetime(2019, 1, 1, tzinfo=UTC)
CONTEXT = PatientContext(age_years=67, sex="female", icu_unit="MICU", hospital_to_icu_hours=5)
COL = {name: i for i, name in enumerate(MODEL_VARIABLES)}
F = {name: i for i, name in enumerate(FEATURE_NAMES)}


def random_grid(hours: int, seed: int = 7) -> HourlyGrid:
    rng = np.random.default_rng(seed)
    values = rng.normal(80, 15, size=(hours, len(MODEL_VARIABLES)))
    values[rng.random(values.shape) < 0.7] = np.nan
    return HourlyGrid(first_bin=1, values=values)


def test_names_match_columns() -> None:
    assert feature_matrix(random_grid(30), CONTEXT).shape == (30, len(FEATURE_NAMES))
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)


def test_an_hour_sees_only_itself_and_the_past() -> None:
    grid = random_grid(60)
    full = feature_matrix(grid, CONTEXT)
    for cut in (1, 10, 45):
        past = HourlyGrid(first_bin=1, values=grid.values[:cut])
        np.testing.assert_array_equal(feature_matrix(past, CONTEXT), full[:cut])


def test_the_last_hour_needs_no_more_than_the_look_back() -> None:
    """A long stay truncated to the timeline's 72 h gives the same newest row (the service)."""
    grid = random_grid(200, seed=3)
    full = feature_matrix(grid, CONTEXT)
    for end in (80, 150, 200):
        window = HourlyGrid(
            first_bin=end - LOOKBACK_HOURS + 1, values=grid.values[end - LOOKBACK_HOURS : end]
        )
        np.testing.assert_array_equal(feature_matrix(window, CONTEXT)[-1], full[end - 1])


def test_hand_made_values() -> None:
    values = np.full((30, len(MODEL_VARIABLES)), np.nan)
    hr, sbp = COL["heart_rate"], COL["sbp"]
    values[[0, 3, 10, 20], hr] = [100, 110, 130, 90]
    values[[10, 25], sbp] = [100, 80]
    rows = feature_matrix(HourlyGrid(first_bin=1, values=values), CONTEXT)
    at = rows[24]  # bin 25
    assert at[F["heart_rate_last"]] == 90
    assert at[F["heart_rate_hours_since"]] == 4
    assert at[F["heart_rate_count_24h"]] == 3  # bins 2-25 hold the values of rows 3, 10, 20
    assert at[F["heart_rate_mean_24h"]] == pytest.approx((110 + 130 + 90) / 3)
    assert at[F["heart_rate_min_24h"]] == 90 and at[F["heart_rate_max_24h"]] == 130
    assert at[F["heart_rate_mean_6h"]] == 90  # rows 19-24 hold only row 20's value
    assert np.isnan(rows[27][F["heart_rate_mean_6h"]])  # rows 22-27 hold none
    assert rows[20][F["heart_rate_delta_6h"]] == 90 - 130
    assert at[F["shock_index"]] == pytest.approx(90 / 100)
    assert rows[25][F["shock_index"]] == pytest.approx(90 / 80)
    assert rows[25][F["news2_sbp"]] == 3  # 80 mmHg: chart 1 scores <= 90 with 3
    assert rows[25][F["qsofa_partial"]] == 1
    assert at[F["icu_hours"]] == 25 and at[F["hospital_hours"]] == 30
    assert at[F["age_years"]] == 67 and at[F["sex_male"]] == 0 and at[F["unit_micu"]] == 1
    assert np.isnan(at[F["lactate_last"]]) and np.isnan(at[F["lactate_hours_since"]])


def test_values_older_than_the_look_back_are_forgotten() -> None:
    values = np.full((100, len(MODEL_VARIABLES)), np.nan)
    values[0, COL["lactate"]] = 4.1
    rows = feature_matrix(HourlyGrid(first_bin=1, values=values), CONTEXT)
    assert rows[LOOKBACK_HOURS - 1][F["lactate_last"]] == 4.1
    assert np.isnan(rows[LOOKBACK_HOURS][F["lactate_last"]])


def test_sofa_points_follow_the_published_cut_points() -> None:
    values = np.full((5, len(MODEL_VARIABLES)), np.nan)
    values[:, COL["platelets"]] = [160, 149, 99, 49, 19]
    values[:, COL["creatinine"]] = [1.1, 1.2, 2.0, 3.5, 5.0]
    rows = feature_matrix(HourlyGrid(first_bin=1, values=values), CONTEXT)
    assert list(rows[:, F["sofa_coagulation"]]) == [0, 1, 2, 3, 4]
    assert list(rows[:, F["sofa_renal"]]) == [0, 1, 2, 3, 4]


def test_grid_takes_the_newest_value_of_a_bin() -> None:
    def obs(minutes: int, value: float, source: str) -> CanonicalObservation:
        return CanonicalObservation(
            "p", "heart_rate", START + timedelta(minutes=minutes), value, source
        )

    grid = grid_from_observations(
        [obs(10, 80, "a"), obs(50, 95, "b"), obs(70, 101, "c"), obs(-5, 60, "early")],
        START,
        first_bin=1,
        last_bin=3,
    )
    assert list(grid.values[:, COL["heart_rate"]][:2]) == [95, 101]
    assert np.isnan(grid.values[2, COL["heart_rate"]])

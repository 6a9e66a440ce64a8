"""Drift figures: PSI, normalised Wasserstein, missingness, alert rate, and the verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cds_service.drift import (
    DriftReport,
    FeatureDrift,
    Reference,
    Thresholds,
    alerts_per_100_patient_days,
    bin_counts,
    classify,
    missing_drift,
    normalised_wasserstein,
    psi,
    reference_bins,
    reference_scale,
    score_bins,
)
from cds_service.features import FEATURE_NAMES

LEVELS = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
REFERENCE_JSON = Path(__file__).parents[2] / "model_artifacts/sepsis-gbdt-AB-1/reference.json"


def normal_reference(size: int = 200_000) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    x = np.random.default_rng(0).normal(size=size)
    q = np.quantile(x, LEVELS)
    edges, shares = reference_bins(LEVELS, list(q))
    return x, edges, shares, reference_scale(LEVELS, list(q))


def test_bins_hold_the_quantile_gaps() -> None:
    edges, shares = reference_bins(LEVELS, [1, 2, 3, 4, 5, 6, 7])
    assert edges.tolist() == [-math.inf, 1, 2, 3, 4, 5, 6, 7, math.inf]
    assert shares == pytest.approx([0.01, 0.04, 0.20, 0.25, 0.25, 0.20, 0.04, 0.01])


def test_tied_quantiles_merge_into_a_point_mass() -> None:
    # sex_male: P(X <= 0) lies between 0.25 and 0.5, taken at the middle; 1 is the maximum.
    edges, shares = reference_bins(LEVELS, [0, 0, 0, 1, 1, 1, 1])
    assert edges.tolist() == [-math.inf, 0, 1, math.inf]
    assert shares == pytest.approx([0.375, 0.62, 0.005])
    assert shares.sum() == pytest.approx(1.0)


def test_no_quantiles_is_one_bin() -> None:
    edges, shares = reference_bins(LEVELS, None)
    assert edges.tolist() == [-math.inf, math.inf]
    assert shares.tolist() == [1.0]
    assert reference_scale(LEVELS, None) == 0.0


def test_bins_are_right_closed_and_skip_nan() -> None:
    counts = bin_counts(np.array([0.0, 1.0]), [-1.0, 0.0, 0.5, 1.0, 2.0, math.nan])
    assert counts.tolist() == [2, 2, 1]


def test_psi_is_zero_for_identical_and_grows_with_a_shift() -> None:
    x, edges, shares, _ = normal_reference()
    figures = [psi(shares, bin_counts(edges[1:-1], x + shift)) for shift in (0, 0.1, 0.25, 0.5)]
    assert figures[0] == pytest.approx(0.0, abs=1e-12)
    assert figures == sorted(figures)
    assert figures[-1] > 0.2


def test_psi_by_hand() -> None:
    # Expected 0.5/0.5, observed 0.3/0.7: (0.7-0.5)ln(0.7/0.5) + (0.3-0.5)ln(0.3/0.5) = 0.1695.
    expected = 0.2 * math.log(0.7 / 0.5) + (-0.2) * math.log(0.3 / 0.5)
    assert psi([0.5, 0.5], [30, 70]) == pytest.approx(expected)
    assert expected == pytest.approx(0.16946, abs=1e-5)
    # An empty bin is floored, not infinite.
    assert math.isfinite(psi([0.5, 0.5], [0, 100]))
    assert psi([0.5, 0.5], [0, 0]) == 0.0
    with pytest.raises(ValueError, match="one count"):
        psi([0.5, 0.5], [1, 2, 3])


def test_wasserstein_is_zero_for_same_and_proportional_to_a_shift() -> None:
    x, edges, shares, scale = normal_reference()
    assert normalised_wasserstein(edges, shares, bin_counts(edges[1:-1], x), scale) == 0.0
    for shift in (0.1, 0.25, 0.5, 1.0):
        got = normalised_wasserstein(edges, shares, bin_counts(edges[1:-1], x + shift), scale)
        # Within the binning approximation: tails beyond the 1st/99th percentile are not seen.
        assert got == pytest.approx(shift / scale, rel=0.06)
        got_down = normalised_wasserstein(edges, shares, bin_counts(edges[1:-1], x - shift), scale)
        assert got_down == pytest.approx(got, rel=0.05)


def test_wasserstein_scale_falls_back_to_the_range_then_zero() -> None:
    assert reference_scale(LEVELS, [0, 0, 0, 0, 0, 1, 3]) == pytest.approx(1 / 2.44)
    assert reference_scale(LEVELS, [0, 0, 0, 0, 0, 0, 3]) == 3.0
    assert reference_scale(LEVELS, [1, 2, 3, 4, 5, 6, 7]) == 2.0
    # Heavy tails widen the IQR to the 5-95 % range over 2.44 (troponin).
    assert reference_scale(LEVELS, [0, 0.01, 0.03, 0.14, 1.55, 37.6, 116]) == pytest.approx(
        37.59 / 2.44
    )
    edges, shares = reference_bins(LEVELS, [2] * 7)
    assert reference_scale(LEVELS, [2] * 7) == 0.0
    assert normalised_wasserstein(edges, shares, [0, 10], 0.0) == 0.0


def test_missingness_and_alert_rate() -> None:
    assert missing_drift(0.1, 30, 100) == pytest.approx(0.2)
    assert missing_drift(0.5, 10, 100) == pytest.approx(0.4)
    assert missing_drift(0.5, 0, 0) == 0.0
    assert alerts_per_100_patient_days(6, 240) == pytest.approx(60.0)
    assert alerts_per_100_patient_days(3, 0) is None


def test_score_bins_are_twenty_of_five_percent() -> None:
    bins = score_bins(list(np.linspace(0, 1, 21) ** 2))
    assert bins.size == 20
    assert bins.expected == pytest.approx([0.05] * 20)
    with pytest.raises(ValueError, match="21 score quantiles"):
        score_bins([0.1, 0.2])


def report(
    features: dict[str, FeatureDrift] | None = None,
    score_psi: float = 0.0,
    alert_rate: float | None = 50.0,
    rows: int = 1000,
    patient_hours: float = 1000.0,
    stays: int | None = None,
) -> DriftReport:
    return DriftReport(
        rows=rows,
        stays=stays,
        patient_hours=patient_hours,
        features=features
        or {"hr": FeatureDrift(psi=0.0, wasserstein=0.0, missing_delta=0.0, n=900)},
        score_psi=score_psi,
        alert_rate=alert_rate,
        reference_alert_rate=50.0,
    )


def drift(
    psi: float = 0.0, w: float = 0.0, missing: float = 0.0, n: int = 900
) -> dict[str, FeatureDrift]:
    return {"hr": FeatureDrift(psi=psi, wasserstein=w, missing_delta=missing, n=n)}


@pytest.mark.parametrize(
    ("case", "inputs", "behaviour"),
    [
        (report(), "ok", "ok"),
        (report(drift(psi=0.12)), "warn", "ok"),
        (report(drift(psi=0.3)), "act", "ok"),
        # Wasserstein alone warns at most; with PSI at warn it acts
        (report(drift(w=0.3)), "warn", "ok"),
        (report(drift(psi=0.12, w=0.3)), "act", "ok"),
        (report(drift(w=0.15)), "warn", "ok"),
        (report(drift(missing=0.25)), "act", "ok"),
        (report(drift(missing=0.12)), "warn", "ok"),
        (report(drift(psi=5.0, n=50)), "ok", "ok"),  # too few present values to judge
        (report(drift(missing=0.5), rows=100, patient_hours=100), "ok", "ok"),  # too few rows
        (report(score_psi=0.15), "ok", "warn"),
        (report(score_psi=0.3), "ok", "act"),
        (report(alert_rate=80.0), "ok", "warn"),
        (report(alert_rate=100.0), "ok", "act"),
        (report(alert_rate=150.0, patient_hours=100), "ok", "ok"),  # under ten patient-days
        (report(alert_rate=None), "ok", "ok"),
        (report(drift(psi=0.3), score_psi=0.3), "act", "act"),
        # the same 1,000 rows from 50 patients: too few effective patients to judge
        (report(drift(psi=0.6, missing=0.5), score_psi=0.6, stays=50), "ok", "ok"),
        # from 400 patients (effective n 360): PSI is judged above its floor 7/360
        (report(drift(psi=0.3), stays=400), "act", "ok"),
        (report(drift(psi=0.26), stays=400), "warn", "ok"),
        (report(drift(psi=0.3), stays=200), "ok", "ok"),  # effective n 180 < min_stays
    ],
)
def test_classification_separates_inputs_from_behaviour(
    case: DriftReport, inputs: str, behaviour: str
) -> None:
    verdict = classify(case, Thresholds())
    assert (verdict.inputs, verdict.behaviour) == (inputs, behaviour)
    assert verdict.features["hr"] == inputs


def test_thresholds_default_to_common_practice() -> None:
    t = Thresholds()
    assert (t.psi_warn, t.psi_act, t.alert_rate_act_ratio) == (0.1, 0.25, 2.0)


def test_the_real_reference_parses_for_every_feature() -> None:
    reference = Reference.from_json(json.loads(REFERENCE_JSON.read_text()), FEATURE_NAMES)
    assert [f.name for f in reference.features] == list(FEATURE_NAMES)
    for feature in reference.features:
        assert feature.bins.expected.sum() == pytest.approx(1.0)
        # exact shares: only the bin above the largest edge may be empty (q99 = maximum)
        assert (feature.bins.expected[:-1] > 0).all() and feature.bins.expected[-1] >= 0
        assert len(feature.bins.edges) == feature.bins.size + 1
    assert reference.score.size == 20
    assert reference.alerts_per_100_patient_days == pytest.approx(55.79, abs=0.01)

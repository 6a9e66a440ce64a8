"""Hourly metrics: rank-based AUROC/AUPRC against scikit-learn, calibration on simulated models,
patient-level bootstrap, and alerting metrics against hand-computed cohorts."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from training.metrics import (
    PlottingUnavailableError,
    auprc,
    auroc,
    bootstrap_ci,
    brier_score,
    calibration,
    lead_time,
    operating_point,
    reliability_curve,
    save_reliability_plot,
    subgroup_metrics,
    summary,
    to_dict,
)
from training.utility import cohort_utility_concat

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def sigmoid(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-z))
    return out


@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal place: heavy ties
def test_auroc_and_auprc_match_sklearn(decimals: int | None) -> None:
    rng = np.random.default_rng(0)
    y = rng.random(5000) < 0.1
    s = sigmoid(rng.normal(size=5000) + 1.2 * y)
    if decimals is not None:
        s = np.round(s, decimals)
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert brier_score(y, s) == pytest.approx(brier_score_loss(y, s), abs=1e-12)


def test_discrimination_edge_cases() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    assert math.isnan(auroc([0, 0], [0.1, 0.2]))
    assert math.isnan(auprc([0, 0], [0.1, 0.2]))
    # Perfect ranking: precision 1 at every recall step.
    assert auprc([0, 1, 1], [0.1, 0.8, 0.9]) == 1.0


@pytest.mark.parametrize(
    ("scale", "expected_slope"),
    [(1.0, 1.0), (2.0, 0.5), (0.5, 2.0)],  # calibrated, over-confident, under-confident
)
def test_calibration_slope_on_simulated_models(scale: float, expected_slope: float) -> None:
    # Outcomes drawn from sigmoid(z); the model reports sigmoid(scale * z). Refitting y on
    # logit(p) = scale * z recovers slope 1/scale and intercept 0.
    rng = np.random.default_rng(1)
    z = rng.normal(-1.0, 1.5, size=40_000)
    y = rng.random(z.size) < sigmoid(z)
    fit = calibration(y, sigmoid(scale * z))
    assert fit.slope == pytest.approx(expected_slope, rel=0.06)
    assert fit.intercept == pytest.approx(0.0, abs=0.05)


def test_calibration_detects_shift_and_degenerate_outcomes() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(-1.0, 1.0, size=40_000)
    y = rng.random(z.size) < sigmoid(z)
    # Predicting sigmoid(z - 1) underestimates risk: intercept about +1, slope about 1.
    fit = calibration(y, sigmoid(z - 1.0))
    assert fit.intercept == pytest.approx(1.0, abs=0.08)
    assert fit.slope == pytest.approx(1.0, abs=0.05)
    assert to_dict(calibration([0, 0, 0], [0.1, 0.2, 0.3])) == {"intercept": None, "slope": None}


def test_reliability_curve_quantile_bins() -> None:
    rng = np.random.default_rng(3)
    p = rng.beta(1, 12, size=10_000)  # crowded near 0, like hourly sepsis risk
    y = rng.random(p.size) < p
    curve = reliability_curve(y, p, n_bins=10)
    assert curve.counts == (1000,) * 10
    assert list(curve.mean_predicted) == sorted(curve.mean_predicted)
    # Calibrated by construction: observed rate tracks mean prediction in every bin.
    assert np.allclose(curve.observed, curve.mean_predicted, atol=0.035)
    with pytest.raises(ValueError, match="n_bins"):
        reliability_curve([0, 1], [0.1, 0.2], n_bins=3)


def test_bootstrap_resamples_whole_patients() -> None:
    lengths = np.array([3, 5, 2, 7, 4])
    bounds = np.r_[0, np.cumsum(lengths)]
    # The score carries the original patient index, so a resampled segment can be traced.
    patient = np.repeat(np.arange(lengths.size), lengths).astype(np.float64)
    labels = np.zeros(patient.size, dtype=bool)

    def check(y: np.ndarray, s: np.ndarray, b: np.ndarray) -> float:
        assert b.size == lengths.size + 1
        for start, stop in itertools.pairwise(b):
            segment = s[start:stop]
            assert np.all(segment == segment[0])
            assert stop - start == lengths[int(segment[0])]
        return float(b[-1])

    ci = bootstrap_ci(check, labels, patient, bounds, n_resamples=50, seed=4)
    assert ci.estimate == lengths.sum()
    assert ci.n_defined == 50
    assert ci.low <= ci.high


def test_bootstrap_ci_of_auroc_and_utility() -> None:
    rng = np.random.default_rng(5)
    lengths = rng.integers(10, 30, size=200)
    bounds = np.r_[0, np.cumsum(lengths)]
    septic = rng.random(lengths.size) < 0.3
    labels = np.concatenate(
        [
            (np.arange(n) >= n - 8) if sep else np.zeros(n, bool)
            for n, sep in zip(lengths, septic, strict=True)
        ]
    )
    scores = sigmoid(rng.normal(size=labels.size) + 1.5 * labels)
    ci = bootstrap_ci(lambda y, s, b: auroc(y, s), labels, scores, bounds, n_resamples=100)
    assert ci.low < ci.estimate < ci.high
    assert ci.estimate == pytest.approx(roc_auc_score(labels, scores))
    again = bootstrap_ci(lambda y, s, b: auroc(y, s), labels, scores, bounds, n_resamples=100)
    assert again == ci  # seeded: reproducible
    util = bootstrap_ci(
        lambda y, s, b: cohort_utility_concat(y, s >= 0.6, b).normalized,
        labels,
        scores,
        bounds,
        n_resamples=50,
    )
    assert util.low <= util.estimate <= util.high
    json.dumps(to_dict(util), allow_nan=False)


def lead_time_cohort() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Five patients of 20 rows; the comments give onset = first label + 6 and the first alert."""
    labels, preds = [], []
    # A: first label row 10 -> onset 16; alerts at rows 12-13 -> lead 4.
    labels.append(np.arange(20) >= 10)
    preds.append(np.isin(np.arange(20), [12, 13]))
    # B: positive from row 0 -> onset 6; alert at row 0 -> lead 6.
    labels.append(np.ones(20, bool))
    preds.append(np.isin(np.arange(20), [0]))
    # C: first label row 5 -> onset 11; first alert at row 12, after onset.
    labels.append(np.arange(20) >= 5)
    preds.append(np.isin(np.arange(20), [12]))
    # D: first label row 8 -> onset 14; never alerted.
    labels.append(np.arange(20) >= 8)
    preds.append(np.zeros(20, bool))
    # E: non-septic; alerts at rows 0, 1 (one alert), 5 (another) and 19 (another).
    labels.append(np.zeros(20, bool))
    preds.append(np.isin(np.arange(20), [0, 1, 5, 19]))
    return np.concatenate(labels), np.concatenate(preds), np.arange(0, 101, 20)


def test_lead_time_hand_computed() -> None:
    labels, preds, bounds = lead_time_cohort()
    lead = lead_time(labels, preds, bounds)
    assert (lead.septic_patients, lead.alerted_by_onset, lead.not_alerted_by_onset) == (4, 2, 2)
    # Leads 4 and 6: median 5, quartiles 4.5 and 5.5 (linear interpolation).
    assert (lead.median_h, lead.q1_h, lead.q3_h) == (5.0, 4.5, 5.5)


def test_operating_point_hand_computed() -> None:
    labels, preds, bounds = lead_time_cohort()
    point = operating_point(labels, preds.astype(float), bounds, threshold=0.5)
    # Positive labels: A 10, B 20, C 15, D 12 = 57. True positives: A rows 12, 13; B row 0;
    # C row 12 = 4. False positives: E's 4 positive hours. Negatives: 100 - 57 = 43.
    assert point.sensitivity == pytest.approx(4 / 57)
    assert point.specificity == pytest.approx(39 / 43)
    assert point.ppv == pytest.approx(4 / 8)
    assert point.number_needed_to_evaluate == pytest.approx(2.0)
    # Alerts (negative -> positive, first hour counts): A 1, B 1, C 1, E 3 = 6 over 100 h.
    assert point.alerts == 6
    assert point.alerts_per_100_patient_days == pytest.approx(6 / (100 / 24) * 100)
    assert point.normalized_utility == cohort_utility_concat(labels, preds, bounds).normalized
    flat = to_dict(point)
    assert flat["lead_median_h"] == 5.0
    assert flat["alerts"] == 6.0
    json.dumps(flat, allow_nan=False)


def test_alerts_reset_at_patient_boundaries() -> None:
    # Patient 1 ends positive and patient 2 starts positive: two alerts, not one.
    point = operating_point([0, 0, 0, 0], [0.0, 1.0, 1.0, 1.0], [0, 2, 4], threshold=0.5)
    assert point.alerts == 2
    assert math.isnan(point.sensitivity)  # no positive hours
    assert to_dict(point)["sensitivity"] is None


def test_summary_and_subgroups() -> None:
    rng = np.random.default_rng(6)
    lengths = rng.integers(10, 30, size=120)
    bounds = np.r_[0, np.cumsum(lengths)]
    septic = np.arange(lengths.size) % 4 == 0
    labels = np.concatenate(
        [
            (np.arange(n) >= n - 8) if sep else np.zeros(n, bool)
            for n, sep in zip(lengths, septic, strict=True)
        ]
    )
    scores = sigmoid(rng.normal(-2, 1, size=labels.size) + 2.0 * labels)
    sex = np.where(np.arange(lengths.size) % 3 == 0, "F", "M")
    groups = subgroup_metrics(labels, scores, bounds, sex, threshold=0.5)
    assert set(groups) == {"F", "M"}
    female = np.repeat(sex == "F", lengths)
    expected = summary(
        labels[female], scores[female], np.r_[0, np.cumsum(lengths[sex == "F"])], 0.5
    )
    assert groups["F"] == expected
    assert expected["patients"] == 40.0
    assert expected["auroc"] == pytest.approx(roc_auc_score(labels[female], scores[female]))
    json.dumps(groups, allow_nan=False)
    with pytest.raises(ValueError, match="one label per patient"):
        subgroup_metrics(labels, scores, bounds, sex[:-1], threshold=0.5)


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed (optional)")
def test_reliability_plot_writes_png(tmp_path: Path) -> None:
    curve = reliability_curve([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.7], n_bins=2)
    out = save_reliability_plot(curve, tmp_path / "reliability.png", title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(HAS_MATPLOTLIB, reason="matplotlib is installed; the error path cannot run")
def test_reliability_plot_without_matplotlib_raises(tmp_path: Path) -> None:
    curve = reliability_curve([0, 1], [0.1, 0.9], n_bins=1)
    with pytest.raises(PlottingUnavailableError, match="matplotlib"):
        save_reliability_plot(curve, tmp_path / "reliability.png")

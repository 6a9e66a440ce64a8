"""The normalized utility against hand-computed cases (shared/data/README.md section 1).

Notation in the comments: d = t - t_sepsis, with t the row index and t_sepsis = first positive
row + 6. Positive predictions score max(d/6 + 2, -0.05) for d <= -6 and 1 - (d + 6)/9 for
-6 < d <= 3; negative predictions score 0 for d <= -6 and -2(d + 6)/9 for -6 < d <= 3; every hour
after d = 3 scores 0; non-septic patients score -0.05 per positive hour and 0 per negative hour.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.utility import (
    UtilityParams,
    best_threshold,
    boundaries_from_ids,
    cohort_utility,
    cohort_utility_concat,
    patient_utility,
    row_utilities,
    utility_curve,
)


def septic(first_positive: int, n_rows: int) -> np.ndarray:
    labels = np.zeros(n_rows, dtype=np.int64)
    labels[first_positive:] = 1
    return labels


def predicted(n_rows: int, rows: list[int]) -> np.ndarray:
    pred = np.zeros(n_rows, dtype=np.int64)
    pred[rows] = 1
    return pred


def reference_hour(t: int, positive: bool, t_sepsis: float) -> float:
    """One hour's utility, written line by line from the README's bullets, as a slow oracle."""
    if math.isinf(t_sepsis):
        return -0.05 if positive else 0.0
    d = t - t_sepsis
    if d > 3:
        return 0.0
    if positive:
        return max(d / 6 + 2, -0.05) if d <= -6 else 1 - (d + 6) / 9
    return 0.0 if d <= -6 else -2 * (d + 6) / 9


def reference_patient(labels: np.ndarray, predictions: np.ndarray) -> float:
    t_sepsis = float(np.argmax(labels) + 6) if labels.any() else math.inf
    return sum(reference_hour(t, bool(p), t_sepsis) for t, p in enumerate(predictions))


def test_septic_patient_first_label_row_10() -> None:
    # First label at row 10, so t_sepsis = 16; the record ends at t_sepsis + 3 = row 19 (20 rows).
    labels = septic(10, 20)
    pred = predicted(20, [2, 4, 8, 13, 17, 19])
    # Positive hours:  row 2 (d=-14): max(-14/6 + 2, -0.05) = -0.05 (too early, floor)
    #                  row 4 (d=-12): -12/6 + 2 = 0
    #                  row 8 (d=-8):  -8/6 + 2 = 2/3
    #                  row 13 (d=-3): 1 - 3/9 = 2/3
    #                  row 17 (d=1):  1 - 7/9 = 2/9
    #                  row 19 (d=3):  1 - 9/9 = 0
    # Negative hours:  rows 0-10 (d <= -6): 0
    #                  rows 11, 12, 14, 15, 16, 18 (d = -5, -4, -2, -1, 0, 2):
    #                  -2/9 * (1 + 2 + 4 + 5 + 6 + 8) = -52/9
    # Total: -0.05 + 2/3 + 2/3 + 2/9 - 52/9 = -0.05 - 38/9
    assert patient_utility(labels, pred) == pytest.approx(-0.05 - 38 / 9, abs=1e-12)
    # Only the optimal hour, row 10 (d=-6): +1, then misses at rows 11-19 (d=-5..3):
    # -2/9 * (1 + 2 + ... + 9) = -10, total -9.
    assert patient_utility(labels, predicted(20, [10])) == pytest.approx(-9.0, abs=1e-12)
    # Every hour after t_sepsis + 3 scores 0 whatever is predicted (rows 20+ if the record ran on).
    longer = septic(10, 26)
    assert patient_utility(longer, predicted(26, [10, 20, 21, 25])) == pytest.approx(-9.0)


def test_scorer_documented_example() -> None:
    # The example in the scorer's comments: labels 000011, predictions 001111 -> 3.3888...
    # (rows 2..5 are d = -8, -7, -6, -5: 2/3 + 5/6 + 1 + 8/9).
    assert patient_utility([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]) == pytest.approx(
        3.388888888888889, abs=1e-12
    )


def test_non_septic_patient() -> None:
    # 30 negative labels; 4 positive hours at -0.05 each, 26 negative hours at u_tn = 0.
    labels = np.zeros(30, dtype=np.int64)
    assert patient_utility(labels, predicted(30, [0, 5, 6, 29])) == pytest.approx(-0.2)
    assert patient_utility(labels, np.zeros(30, dtype=np.int64)) == 0.0


def test_patient_positive_from_row_0() -> None:
    # The 426-style patient: SepsisLabel 1 from row 0, so t_sepsis = 6 and the record ends at
    # row 9 = t_sepsis + 3. Row k is d = k - 6.
    labels = np.ones(10, dtype=np.int64)
    # All positive: row 0 (d=-6) scores 1, rows 1..9 score 1 - k/9: 9 - 45/9 = 4; total 5.
    assert patient_utility(labels, np.ones(10, dtype=np.int64)) == pytest.approx(5.0)
    # All negative: misses at rows 1..9, -2k/9: -90/9 = -10.
    assert patient_utility(labels, np.zeros(10, dtype=np.int64)) == pytest.approx(-10.0)
    # Only row 5 (d=-1): 1 - 5/9 = 4/9, misses at the other rows 1..9: -2/9 * (45 - 5) = -80/9.
    assert patient_utility(labels, predicted(10, [5])) == pytest.approx(-76 / 9)
    # The optimal window [t_sepsis - 12, t_sepsis + 3] clipped to the record is every row, so
    # optimal = 5, inaction = -10 and row 5 alone normalizes to (-76/9 + 10) / 15 = 14/135.
    score = cohort_utility([(labels, predicted(10, [5]))])
    assert (score.optimal, score.inaction) == pytest.approx((5.0, -10.0))
    assert score.normalized == pytest.approx(14 / 135)


def test_record_ending_before_t_sepsis_plus_3() -> None:
    # First label at row 10 (t_sepsis 16), but the record stops at row 13 (d = -3).
    labels = septic(10, 14)
    score = cohort_utility([(labels, np.zeros(14, dtype=np.int64))])
    # Inaction: misses at rows 11..13 (d = -5, -4, -3): -2/9 * (1 + 2 + 3) = -4/3.
    assert score.inaction == pytest.approx(-4 / 3)
    # Optimal: positive on rows 4..13 (window [4, 19] clipped to the record):
    # rising d = -12..-6: (0 + 1 + ... + 6)/6 = 3.5; falling d = -5..-3: (8 + 7 + 6)/9 = 7/3.
    assert score.optimal == pytest.approx(3.5 + 7 / 3)
    assert score.normalized == pytest.approx(0.0)


def test_inaction_scores_0_and_optimal_scores_1() -> None:
    labels = [
        septic(10, 20),
        np.zeros(30, dtype=np.int64),
        np.ones(10, dtype=np.int64),
        septic(10, 14),
    ]
    inaction = [(y, np.zeros_like(y)) for y in labels]
    assert cohort_utility(inaction).normalized == 0.0
    # The optimal policy, built as the README states: 1 in [t_sepsis - 12, t_sepsis + 3].
    optimal = []
    for y in labels:
        pred = np.zeros_like(y)
        if y.any():
            t_sepsis = int(np.argmax(y)) + 6
            pred[max(0, t_sepsis - 12) : t_sepsis + 4] = 1
        optimal.append((y, pred))
    assert cohort_utility(optimal).normalized == pytest.approx(1.0)
    # With the default parameters that window is also the per-hour best choice: no policy beats it.
    bounds = np.r_[0, np.cumsum([y.size for y in labels])]
    rows = row_utilities(np.concatenate(labels), bounds)
    assert rows.optimal == pytest.approx(float(np.maximum(rows.u_pos, rows.u_neg).sum()))


def test_matches_reference_oracle_on_random_cohort() -> None:
    rng = np.random.default_rng(7)
    patients = []
    for _ in range(60):
        n = int(rng.integers(8, 60))
        labels = septic(int(rng.integers(0, n)), n) if rng.random() < 0.4 else np.zeros(n, np.int64)
        patients.append((labels, (rng.random(n) < 0.3).astype(np.int64)))
    for labels, pred in patients:
        assert patient_utility(labels, pred) == pytest.approx(
            reference_patient(labels, pred), abs=1e-9
        )
    # The concatenated fast path gives the same cohort score as the list of patients.
    bounds = np.r_[0, np.cumsum([y.size for y, _ in patients])]
    fast = cohort_utility_concat(
        np.concatenate([y for y, _ in patients]), np.concatenate([p for _, p in patients]), bounds
    )
    assert fast == cohort_utility(patients)
    assert fast.observed == pytest.approx(sum(reference_patient(y, p) for y, p in patients))


def test_boundaries_from_ids() -> None:
    assert boundaries_from_ids(["a", "a", "b", "c", "c", "c"]).tolist() == [0, 2, 3, 6]
    with pytest.raises(ValueError, match="contiguous"):
        boundaries_from_ids([1, 1, 2, 1])


def test_utility_curve_matches_direct_scoring() -> None:
    rng = np.random.default_rng(3)
    lengths = rng.integers(8, 40, size=80)
    bounds = np.r_[0, np.cumsum(lengths)]
    labels = np.concatenate(
        [
            septic(int(rng.integers(0, n)), n) if i % 3 == 0 else np.zeros(n, np.int64)
            for i, n in enumerate(lengths)
        ]
    )
    probs = np.round(rng.random(labels.size) * 0.5 + 0.4 * labels, 2)  # rounded: ties on purpose
    thresholds, normalized = utility_curve(probs, labels, boundaries=bounds)
    assert np.all(np.diff(thresholds) < 0)
    for thr, value in zip(thresholds[::7], normalized[::7], strict=True):
        direct = cohort_utility_concat(labels, probs >= thr, bounds).normalized
        assert value == pytest.approx(direct, abs=1e-9)
    choice = best_threshold(probs, labels, boundaries=bounds)
    assert choice.normalized_utility == pytest.approx(float(normalized.max()))
    assert choice.candidates_evaluated == np.unique(probs).size
    ids = np.repeat(np.arange(lengths.size), lengths)
    assert best_threshold(probs, labels, patient_ids=ids) == choice


def test_best_threshold_finds_a_perfect_separator() -> None:
    # One septic patient (first label at row 10, t_sepsis 16, 20 rows) and one non-septic.
    labels = np.r_[septic(10, 20), np.zeros(20, np.int64)]
    probs = np.full(40, 0.1)
    probs[4:20] = 0.8  # exactly the optimal window, rows 4..19
    probs[25] = 0.5  # one false alarm if the threshold goes as low as 0.5
    choice = best_threshold(probs, labels, boundaries=[0, 20, 40], candidates=[0.05, 0.3, 0.6, 0.9])
    # 0.6 gives utility 1; 0.3 adds the false alarm (-0.05); ties would go to the higher threshold.
    assert choice.threshold == 0.6
    assert choice.normalized_utility == pytest.approx(1.0)


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        patient_utility([0, 2, 1], [0, 0, 1])
    with pytest.raises(ValueError, match="same length"):
        patient_utility([0, 0, 1], [0, 1])
    with pytest.raises(ValueError, match="exactly one"):
        best_threshold([0.1, 0.2], [0, 1])
    with pytest.raises(ValueError, match="strictly increasing"):
        cohort_utility_concat([0, 1], [0, 1], [0, 0, 2])
    with pytest.raises(ValueError, match="dt_early < dt_optimal < dt_late"):
        UtilityParams(dt_early=-6, dt_optimal=-6)
    # A cohort without septic patients has no defined normalized utility.
    assert math.isnan(cohort_utility([([0, 0], [0, 1])]).normalized)
    assert cohort_utility([([0, 0], [0, 1])]).as_dict()["normalized"] is None

"""Fitting the gradient-boosted trees, and calibrating them into probabilities.

Hyper-parameters are fixed here, once, rather than searched on every run (a full search does not
fit one working session on two cores). They were set by reasoning — shallow trees with a large
minimum leaf, because the positive rows are few (1.8 %) and come in runs of up to 16 hours per
septic patient, so a leaf of a few rows would learn single patients; positives up-weighted
because the challenge's utility pays far more for a true early alarm (up to +1) than it charges
for a false one (-0.05 an hour) — and then checked one at a time against neighbours by
``python -m training.tune`` (record: ``model_artifacts/tuning.json``, CV fold 0's training side,
held-out 15 %): utility 0.451 for these settings against 0.441 (63 leaves), 0.447 (min leaf
100), 0.439 (learning rate 0.1), 0.448 (positives x2) and 0.447 (x10), AUROC 0.843-0.848 for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from training.dataset import Dataset

PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 400,
    "feature_fraction": 0.7,
    "bagging_fraction": 0.7,
    "bagging_freq": 1,
    "lambda_l2": 10.0,
    "max_bin": 255,
    "verbose": -1,
    "num_threads": 2,
    "seed": 2019,
    "deterministic": True,
    "force_row_wise": True,
}
MAX_ROUNDS = 600
EARLY_STOPPING = 40
#: Weight of a positive row relative to a negative one (see the module docstring).
POSITIVE_WEIGHT = 5.0


@dataclass(frozen=True)
class Fitted:
    booster: lgb.Booster
    best_iteration: int


def split_patients(
    n_patients: int, fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A random patient-level split: (the rest, the held-out ``fraction``)."""
    order = np.random.default_rng(seed).permutation(n_patients)
    cut = round(n_patients * (1 - fraction))
    return np.sort(order[:cut]).astype(np.int64), np.sort(order[cut:]).astype(np.int64)


def fit(
    train: Dataset,
    valid: Dataset,
    rounds: int = MAX_ROUNDS,
    overrides: dict[str, Any] | None = None,
    positive_weight: float = POSITIVE_WEIGHT,
) -> Fitted:
    """Trees on ``train``, stopped early on ``valid`` (other patients), by log-loss."""
    weight = np.where(train.labels == 1, positive_weight, 1.0)
    train_set = lgb.Dataset(train.features, label=train.labels, weight=weight, free_raw_data=True)
    valid_weight = np.where(valid.labels == 1, positive_weight, 1.0)
    valid_set = lgb.Dataset(
        valid.features, label=valid.labels, weight=valid_weight, reference=train_set
    )
    booster = lgb.train(
        PARAMS | (overrides or {}),
        train_set,
        num_boost_round=rounds,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(EARLY_STOPPING, verbose=False)],
    )
    best = booster.best_iteration or rounds
    # Keep exactly the trees that were best on the held-out patients.
    trimmed = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return Fitted(booster=trimmed, best_iteration=best)


@dataclass(frozen=True)
class PlattCalibration:
    """p_calibrated = sigmoid(intercept + slope · logit(p_raw)), fitted on held-out patients."""

    intercept: float
    slope: float

    def apply(self, raw: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        p = np.clip(raw, 1e-7, 1 - 1e-7)
        z = self.intercept + self.slope * np.log(p / (1 - p))
        calibrated: npt.NDArray[np.float64] = 1 / (1 + np.exp(-z))
        return calibrated


def calibrate(raw: npt.NDArray[np.float64], labels: npt.NDArray[np.int8]) -> PlattCalibration:
    """Logistic recalibration (Platt scaling) by Newton's method: the up-weighting of positives
    made the raw scores too high, and a two-parameter map keeps their order and the trees' ONNX
    form unchanged."""
    p = np.clip(raw, 1e-7, 1 - 1e-7)
    x = np.log(p / (1 - p))
    y = labels.astype(np.float64)
    a, b = 0.0, 1.0
    for _ in range(100):
        q = 1 / (1 + np.exp(-(a + b * x)))
        w = q * (1 - q)
        g = np.array([np.sum(q - y), np.sum((q - y) * x)])
        h = np.array([[np.sum(w), np.sum(w * x)], [np.sum(w * x), np.sum(w * x * x)]])
        step = np.linalg.solve(h + 1e-9 * np.eye(2), g)
        a, b = a - step[0], b - step[1]
        if np.max(np.abs(step)) < 1e-10:
            break
    return PlattCalibration(intercept=float(a), slope=float(b))

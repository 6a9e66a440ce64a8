"""Rule-based baselines on the same rows as the model, computed from the same features.

Each is partial where PhysioNet lacks an input (no mentation for qSOFA, no consciousness or
oxygen device for NEWS2, no vasopressors, GCS or PaO2 for SOFA), and is labelled so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cds_service.features import FEATURE_NAMES
from training.dataset import Dataset

_F = {name: i for i, name in enumerate(FEATURE_NAMES)}


@dataclass(frozen=True)
class Baseline:
    name: str
    cut: float  # the published alarm level, on the score itself
    source: str


BASELINES = (
    Baseline("qSOFA (partial: no mentation)", 2, "Seymour et al., JAMA 2016;315:762-774"),
    Baseline("SIRS", 2, "Bone et al., Chest 1992;101:1644-1655"),
    Baseline("NEWS2 (partial: 5 of 7 parameters)", 5, "Royal College of Physicians, NEWS2, 2017"),
    Baseline(
        "SOFA (partial: coagulation, liver, renal, MAP)", 2, "Vincent et al., ICM 1996;22:707-710"
    ),
)


def _col(data: Dataset, name: str) -> npt.NDArray[np.float64]:
    column: npt.NDArray[np.float64] = data.features[:, _F[name]].astype(np.float64)
    return column


def _sirs(data: Dataset) -> npt.NDArray[np.float64]:
    t, hr, rr = (
        _col(data, "temperature_last"),
        _col(data, "heart_rate_last"),
        _col(data, "resp_rate_last"),
    )
    paco2, wbc = _col(data, "paco2_last"), _col(data, "wbc_last")
    with np.errstate(invalid="ignore"):
        score = (
            ((t > 38) | (t < 36)).astype(np.float64)
            + (hr > 90)
            + ((rr > 20) | (paco2 < 32))
            + ((wbc > 12) | (wbc < 4))
        )
    return score


def baseline_scores(baseline: Baseline, data: Dataset) -> npt.NDArray[np.float64]:
    """The baseline's score per row; unknown parts count 0 (as a bedside chart would)."""
    if baseline.name.startswith("qSOFA"):
        return np.nan_to_num(_col(data, "qsofa_partial"))
    if baseline.name.startswith("SIRS"):
        return _sirs(data)
    if baseline.name.startswith("NEWS2"):
        return np.nan_to_num(_col(data, "news2_partial_sum"))
    parts = ("sofa_coagulation", "sofa_liver", "sofa_renal", "sofa_cardiovascular_map")
    total: npt.NDArray[np.float64] = np.sum([np.nan_to_num(_col(data, p)) for p in parts], axis=0)
    return total

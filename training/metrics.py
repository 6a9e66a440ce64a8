"""Hourly discrimination, calibration and alerting metrics for sepsis early-warning models.

Rows are patient-hours concatenated patient after patient; ``boundaries`` are the CSR-style offsets
of :mod:`training.utility`. Undefined values (e.g. AUROC with one class) are NaN in the frozen
result dataclasses and become None in the flat dicts of :func:`to_dict` and :func:`summary`, which
are ready for JSON.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from training.utility import (
    DEFAULT_PARAMS,
    BoolArray,
    FloatArray,
    IntArray,
    UtilityParams,
    as_binary,
    check_boundaries,
    cohort_utility_concat,
    first_true_per_patient,
)

logger = logging.getLogger(__name__)

Metric = Callable[[BoolArray, FloatArray, IntArray], float]


class PlottingUnavailableError(RuntimeError):
    """Raised by the plotting helper when matplotlib is not installed (it is not a dependency)."""


def _jsonable(values: dict[str, Any]) -> dict[str, float | None]:
    return {k: (float(v) if math.isfinite(v) else None) for k, v in values.items()}


def to_dict(
    result: Calibration | ConfidenceInterval | LeadTime | OperatingPoint,
) -> dict[str, float | None]:
    """A result as one flat dict of plain floats for JSON: NaN becomes None, nested fields
    (an operating point's lead time) are prefixed with their parent's name."""
    values = asdict(result)
    nested = {
        f"{k}_{kk}": vv for k, v in values.items() if isinstance(v, dict) for kk, vv in v.items()
    }
    return _jsonable({k: v for k, v in values.items() if not isinstance(v, dict)} | nested)


def _scores(scores: npt.ArrayLike, n: int) -> FloatArray:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n,) or not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite, 1-D and as long as the labels")
    return s


def auroc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic with mid-ranks for ties."""
    y = as_binary(labels, "labels")
    s = _scores(scores, y.size)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    counts = np.diff(np.r_[starts, s.size])
    ranks = np.empty(s.size)
    # Tied scores share the mean of the 1-based ranks they occupy, so ties count one half.
    ranks[order] = np.repeat(starts + (counts + 1) / 2.0, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auprc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Average precision: precision as a step function of recall over distinct thresholds.

    The same estimator as scikit-learn's ``average_precision_score`` and the challenge scorer's
    piecewise-constant AUPRC; no trapezoidal interpolation, which is optimistic for PR curves.
    """
    y = as_binary(labels, "labels")
    s = _scores(scores, y.size)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    sorted_s = s[order]
    last_of_tie = np.flatnonzero(np.r_[sorted_s[1:] != sorted_s[:-1], True])
    tp = np.cumsum(y[order])[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier_score(labels: npt.ArrayLike, probabilities: npt.ArrayLike) -> float:
    """Mean squared difference between predicted probability and the 0/1 outcome."""
    y = as_binary(labels, "labels")
    return float(np.mean((_scores(probabilities, y.size) - y) ** 2))


@dataclass(frozen=True)
class Calibration:
    """Logistic recalibration y ~ a + b·logit(p); a calibrated model has intercept 0, slope 1.

    The intercept is the one fitted jointly with the slope, not calibration-in-the-large.
    """

    intercept: float
    slope: float


def calibration(
    labels: npt.ArrayLike, probabilities: npt.ArrayLike, *, max_iter: int = 100, eps: float = 1e-7
) -> Calibration:
    """Fit intercept and slope of y on logit(p) by Newton-Raphson (IRLS).

    Probabilities are clipped to [eps, 1 - eps] so that 0 and 1 have finite logits. A slope below
    1 means over-confident predictions (too extreme); above 1 means under-confident (too timid).
    NaN when the outcome has one class or the fit does not converge (separation).
    """
    y = as_binary(labels, "labels").astype(np.float64)
    p = np.clip(_scores(probabilities, y.size), eps, 1.0 - eps)
    if y.min() == y.max():
        return Calibration(math.nan, math.nan)
    x = np.column_stack([np.ones_like(p), np.log(p) - np.log1p(-p)])
    beta = np.zeros(2)
    for _ in range(max_iter):
        mu = np.exp(-np.logaddexp(0.0, -(x @ beta)))  # overflow-free sigmoid
        hessian = x.T @ (x * (mu * (1.0 - mu))[:, None])
        try:
            step = np.linalg.solve(hessian, x.T @ (y - mu))
        except np.linalg.LinAlgError:
            break
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            return Calibration(intercept=float(beta[0]), slope=float(beta[1]))
    logger.warning("calibration fit did not converge in %s iterations", max_iter)
    return Calibration(math.nan, math.nan)


@dataclass(frozen=True)
class ReliabilityCurve:
    """Mean predicted probability and observed event rate per equal-count (quantile) bin."""

    mean_predicted: tuple[float, ...]
    observed: tuple[float, ...]
    counts: tuple[int, ...]


def reliability_curve(
    labels: npt.ArrayLike, probabilities: npt.ArrayLike, n_bins: int = 10
) -> ReliabilityCurve:
    """Quantile-binned reliability curve: rows sorted by p and cut into ``n_bins`` equal counts.

    Equal-count bins keep every bin populated when probabilities crowd near 0, as hourly sepsis
    risks do; rows tied at a cut may fall on either side of it.
    """
    y = as_binary(labels, "labels")
    p = _scores(probabilities, y.size)
    if n_bins < 1 or y.size < n_bins:
        raise ValueError("need 1 <= n_bins <= number of rows")
    order = np.argsort(p, kind="mergesort")
    starts = (np.arange(n_bins) * y.size) // n_bins
    counts = np.diff(np.r_[starts, y.size])
    mean_p = np.add.reduceat(p[order], starts) / counts
    observed = np.add.reduceat(y[order].astype(np.float64), starts) / counts
    return ReliabilityCurve(
        mean_predicted=tuple(float(v) for v in mean_p),
        observed=tuple(float(v) for v in observed),
        counts=tuple(int(c) for c in counts),
    )


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate with a percentile bootstrap interval over resampled patients."""

    estimate: float
    low: float
    high: float
    level: float
    n_resamples: int
    n_defined: int  # resamples where the metric was defined (finite)


def bootstrap_ci(
    metric: Metric,
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    boundaries: npt.ArrayLike,
    *,
    n_resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap CI, resampling whole PATIENTS with replacement.

    Hours of one patient are strongly correlated, so resampling rows would give intervals far too
    narrow. ``metric(labels, scores, boundaries)`` receives each resampled cohort with its own
    boundaries, so patient-level metrics such as the utility work too.
    """
    y = as_binary(labels, "labels")
    s = _scores(scores, y.size)
    b = check_boundaries(boundaries, y.size)
    lengths = np.diff(b)
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    for i in range(n_resamples):
        pick = rng.integers(0, lengths.size, lengths.size)
        new_b = np.r_[0, np.cumsum(lengths[pick])].astype(np.int64)
        rows = np.repeat(b[:-1][pick] - new_b[:-1], lengths[pick]) + np.arange(new_b[-1])
        values[i] = metric(y[rows], s[rows], new_b)
    defined = values[np.isfinite(values)]
    alpha = (1.0 - level) / 2.0
    low, high = (
        (float(np.quantile(defined, alpha)), float(np.quantile(defined, 1.0 - alpha)))
        if defined.size
        else (math.nan, math.nan)
    )
    return ConfidenceInterval(
        estimate=float(metric(y, s, b)),
        low=low,
        high=high,
        level=level,
        n_resamples=n_resamples,
        n_defined=int(defined.size),
    )


@dataclass(frozen=True)
class LeadTime:
    """Hours from the first alert to onset among septic patients alerted by onset."""

    septic_patients: int
    alerted_by_onset: int
    not_alerted_by_onset: int
    median_h: float
    q1_h: float
    q3_h: float


def lead_time(
    labels: npt.ArrayLike,
    predictions: npt.ArrayLike,
    boundaries: npt.ArrayLike,
    params: UtilityParams = DEFAULT_PARAMS,
) -> LeadTime:
    """Lead time of each septic patient's first alert of the stay before onset.

    Onset is the scorer's t_sepsis = first SepsisLabel=1 row + 6 (README section 1; for patients
    positive from row 0 the true onset is only known to be at or before row 6). Lead = onset - row
    of the first positive prediction; an alert in the onset hour counts, with lead 0. Patients
    whose first alert comes after onset, or never, are counted in ``not_alerted_by_onset``.
    """
    y = as_binary(labels, "labels")
    pred = as_binary(predictions, "predictions")
    b = check_boundaries(boundaries, y.size)
    first_label = first_true_per_patient(y, b)
    first_alert = first_true_per_patient(pred, b)
    septic = first_label >= 0
    onset = first_label[septic] - params.dt_optimal
    alert = first_alert[septic]
    leads = (onset - alert)[(alert >= 0) & (alert <= onset)].astype(np.float64)
    q1, median, q3 = np.quantile(leads, [0.25, 0.5, 0.75]) if leads.size else [math.nan] * 3
    return LeadTime(
        septic_patients=int(septic.sum()),
        alerted_by_onset=int(leads.size),
        not_alerted_by_onset=int(septic.sum() - leads.size),
        median_h=float(median),
        q1_h=float(q1),
        q3_h=float(q3),
    )


@dataclass(frozen=True)
class OperatingPoint:
    """Hourly confusion-matrix metrics, alert burden, utility and lead time at one threshold."""

    threshold: float
    sensitivity: float
    specificity: float
    ppv: float
    number_needed_to_evaluate: float
    alerts: int
    patient_days: float
    alerts_per_100_patient_days: float
    normalized_utility: float
    lead: LeadTime


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def operating_point(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    boundaries: npt.ArrayLike,
    threshold: float,
    *,
    params: UtilityParams = DEFAULT_PARAMS,
) -> OperatingPoint:
    """Metrics with rows predicted positive where score >= threshold.

    Sensitivity, specificity and PPV are hourly, against SepsisLabel. Number needed to evaluate is
    1/PPV. An alert is a patient-hour predicted positive whose previous hour in the same stay was
    negative; the first hour of a stay counts as an alert when positive (no earlier hour to have
    already alerted on). Alerts per 100 patient-days = alerts / (total hours / 24) x 100.
    """
    y = as_binary(labels, "labels")
    pred = _scores(scores, y.size) >= threshold
    b = check_boundaries(boundaries, y.size)
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    positives = int(y.sum())
    ppv = _ratio(tp, tp + fp)
    previous = np.r_[False, pred[:-1]]
    previous[b[:-1]] = False
    alerts = int(np.sum(pred & ~previous))
    patient_days = y.size / 24.0
    return OperatingPoint(
        threshold=float(threshold),
        sensitivity=_ratio(tp, positives),
        specificity=_ratio(y.size - positives - fp, y.size - positives),
        ppv=ppv,
        number_needed_to_evaluate=_ratio(1.0, ppv) if math.isfinite(ppv) else math.nan,
        alerts=alerts,
        patient_days=patient_days,
        alerts_per_100_patient_days=alerts / patient_days * 100.0,
        normalized_utility=cohort_utility_concat(y, pred, b, params).normalized,
        lead=lead_time(y, pred, b, params),
    )


def summary(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    boundaries: npt.ArrayLike,
    threshold: float,
    *,
    params: UtilityParams = DEFAULT_PARAMS,
) -> dict[str, float | None]:
    """Every metric of this module for one cohort, as one flat JSON-ready dict."""
    y = as_binary(labels, "labels")
    s = _scores(scores, y.size)
    b = check_boundaries(boundaries, y.size)
    septic = first_true_per_patient(y, b) >= 0
    head = {
        "patients": float(b.size - 1),
        "septic_patients": float(septic.sum()),
        "rows": float(y.size),
        "row_prevalence": float(y.mean()),
        "auroc": auroc(y, s),
        "auprc": auprc(y, s),
        "brier": brier_score(y, s),
    }
    fit = calibration(y, s)
    head |= {"calibration_intercept": fit.intercept, "calibration_slope": fit.slope}
    return _jsonable(head) | to_dict(operating_point(y, s, b, threshold, params=params))


def subgroup_metrics(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    boundaries: npt.ArrayLike,
    groups: Sequence[str] | npt.ArrayLike,
    *,
    threshold: float,
    params: UtilityParams = DEFAULT_PARAMS,
) -> dict[str, dict[str, float | None]]:
    """:func:`summary` per group; ``groups`` has one label per PATIENT (age band, sex, unit...)."""
    y = as_binary(labels, "labels")
    s = _scores(scores, y.size)
    b = check_boundaries(boundaries, y.size)
    g = np.asarray(groups)
    if g.shape != (b.size - 1,):
        raise ValueError("groups must hold one label per patient")
    lengths = np.diff(b)
    result: dict[str, dict[str, float | None]] = {}
    for value in np.unique(g):
        member = g == value
        rows = np.repeat(member, lengths)
        sub_b = np.r_[0, np.cumsum(lengths[member])]
        result[str(value)] = summary(y[rows], s[rows], sub_b, threshold, params=params)
    return result


def save_reliability_plot(curve: ReliabilityCurve, path: str | Path, title: str = "") -> Path:
    """Write a reliability diagram PNG; needs matplotlib, which is optional, not a dependency."""
    try:
        figure_module = importlib.import_module("matplotlib.figure")
    except ImportError as exc:
        raise PlottingUnavailableError("save_reliability_plot needs matplotlib installed") from exc
    # Figure without pyplot: no global state and no GUI backend, safe in workers and tests.
    fig = figure_module.Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="ideal")
    ax.plot(curve.mean_predicted, curve.observed, marker="o", label="model")
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title=title)
    ax.legend()
    out = Path(path)
    fig.savefig(out, format="png", dpi=120)
    return out

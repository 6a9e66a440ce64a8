"""The PhysioNet/CinC 2019 normalized utility, vectorised for threshold sweeps.

Written from the definition in ``shared/data/README.md`` section 1 ("Official scoring: the
normalized utility"), which describes ``evaluate_sepsis_score.py`` of
physionetchallenges/evaluation-2019 (BSD-2-Clause; read for understanding, not copied).

A cohort is one concatenated row array plus ``boundaries``: CSR-style offsets of length
``n_patients + 1``, from 0 to ``n_rows``; patient ``k`` owns rows
``boundaries[k]:boundaries[k + 1]``.
Row ``i`` of a patient is hour ``t = i`` (the scorer uses row indices, not ICULOS).

Every hour's utility depends only on the labels and on whether that hour is predicted positive, so
the utility of any prediction vector is ``sum(u_neg) + sum(u_pos - u_neg over positive rows)``. A
threshold sweep therefore sorts once and reads a cumulative sum, instead of rescoring 1.5 M rows per
candidate threshold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# Marks "no such row" in per-patient first-index reductions.
_NONE = np.iinfo(np.int64).max


@dataclass(frozen=True)
class UtilityParams:
    """The scorer's parameters; defaults are the challenge's (README section 1, parameter table)."""

    dt_early: int = -12
    dt_optimal: int = -6
    dt_late: int = 3
    max_u_tp: float = 1.0
    min_u_fn: float = -2.0
    u_fp: float = -0.05
    u_tn: float = 0.0

    def __post_init__(self) -> None:
        # The official scorer refuses the same orderings: the piecewise-linear pieces need them.
        if not self.dt_early < self.dt_optimal < self.dt_late:
            raise ValueError("utility windows must satisfy dt_early < dt_optimal < dt_late")


DEFAULT_PARAMS = UtilityParams()


@dataclass(frozen=True)
class UtilityScore:
    """Unnormalized cohort utilities and the normalized one.

    ``normalized`` = (observed - inaction) / (optimal - inaction) (README section 1); it is NaN
    when optimal equals inaction (a cohort without septic patients).
    """

    observed: float
    inaction: float
    optimal: float
    normalized: float

    def as_dict(self) -> dict[str, float | None]:
        """Plain floats for JSON; NaN becomes None."""
        return {k: (v if math.isfinite(v) else None) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class RowUtilities:
    """Per-row utility of predicting positive (``u_pos``) or negative (``u_neg``), plus the totals
    of the inaction and optimal policies, for one cohort."""

    u_pos: FloatArray
    u_neg: FloatArray
    inaction: float
    optimal: float


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold with the highest normalized utility, and that utility."""

    threshold: float
    normalized_utility: float
    candidates_evaluated: int


def check_boundaries(boundaries: npt.ArrayLike, n_rows: int) -> IntArray:
    """Validate CSR-style patient offsets (0, strictly increasing, ending at ``n_rows``)."""
    b = np.asarray(boundaries, dtype=np.int64)
    if b.ndim != 1 or b.size < 2 or b[0] != 0 or b[-1] != n_rows:
        raise ValueError("boundaries must be 1-D offsets starting at 0 and ending at n_rows")
    # Empty patients are refused: reduceat over an empty segment returns a neighbour's value.
    if np.any(np.diff(b) <= 0):
        raise ValueError("boundaries must be strictly increasing (no empty patients)")
    return b


def boundaries_from_ids(patient_ids: npt.ArrayLike) -> IntArray:
    """Offsets from a per-row patient id array whose patients each occupy one contiguous run."""
    ids = np.asarray(patient_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError("patient_ids must be a non-empty 1-D array")
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    if np.unique(ids).size != starts.size:
        raise ValueError("each patient's rows must be contiguous (sort by patient, then hour)")
    return np.append(starts, ids.size).astype(np.int64)


def row_positions(boundaries: IntArray) -> IntArray:
    """Hour index ``t`` of every row within its own patient (0 at each patient's first row)."""
    lengths = np.diff(boundaries)
    return np.arange(int(boundaries[-1]), dtype=np.int64) - np.repeat(boundaries[:-1], lengths)


def first_true_per_patient(mask: BoolArray, boundaries: IntArray) -> IntArray:
    """Per patient, the row position of the first True in ``mask``, or -1 where there is none."""
    positions = np.where(mask, row_positions(boundaries), _NONE)
    first = np.minimum.reduceat(positions, boundaries[:-1])
    return np.where(first == _NONE, -1, first)


def as_binary(values: npt.ArrayLike, name: str) -> BoolArray:
    """A 0/1 (or bool) array as bool; anything else is refused, as the official scorer does."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D")
    if arr.dtype != np.bool_ and not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must contain only 0 and 1")
    return arr.astype(np.bool_)


def row_utilities(
    labels: npt.ArrayLike, boundaries: npt.ArrayLike, params: UtilityParams = DEFAULT_PARAMS
) -> RowUtilities:
    """Per-row utilities for a concatenated cohort (README section 1, "The scorer applies them")."""
    y = as_binary(labels, "labels")
    b = check_boundaries(boundaries, y.size)
    lengths = np.diff(b)
    first = first_true_per_patient(y, b)
    septic = np.repeat(first >= 0, lengths)
    # t_sepsis = first positive row - dt_optimal, i.e. first positive row + 6 (README section 1).
    t_sepsis = np.repeat(np.where(first >= 0, first - params.dt_optimal, 0), lengths)
    d = (row_positions(b) - t_sepsis).astype(np.float64)

    # The three lines u = m·(t - t_sepsis) + c of the scorer: rising reward up to dt_optimal,
    # falling reward to dt_late, and the growing penalty for a missed hour up to dt_late.
    m_rise = params.max_u_tp / (params.dt_optimal - params.dt_early)
    m_fall = -params.max_u_tp / (params.dt_late - params.dt_optimal)
    m_miss = params.min_u_fn / (params.dt_late - params.dt_optimal)
    early = d <= params.dt_optimal
    counted = d <= params.dt_late  # later hours score 0 whatever is predicted
    pos_septic = np.where(
        early,
        np.maximum(m_rise * (d - params.dt_early), params.u_fp),
        np.where(counted, m_fall * (d - params.dt_late), 0.0),
    )
    neg_septic = np.where(~early & counted, m_miss * (d - params.dt_optimal), 0.0)
    u_pos = np.where(septic, pos_septic, params.u_fp)
    u_neg = np.where(septic, neg_septic, params.u_tn)

    # The scorer's best policy predicts positive exactly for t in [t_sepsis + dt_early,
    # t_sepsis + dt_late] (clipped to the record) in septic patients, negative elsewhere.
    best = septic & (d >= params.dt_early) & counted
    inaction = float(u_neg.sum())
    optimal = float(np.where(best, u_pos, u_neg).sum())
    return RowUtilities(u_pos=u_pos, u_neg=u_neg, inaction=inaction, optimal=optimal)


def _normalize(observed: float, inaction: float, optimal: float) -> UtilityScore:
    span = optimal - inaction
    normalized = (observed - inaction) / span if span != 0 else math.nan
    return UtilityScore(
        observed=observed, inaction=inaction, optimal=optimal, normalized=normalized
    )


def cohort_utility_concat(
    labels: npt.ArrayLike,
    predictions: npt.ArrayLike,
    boundaries: npt.ArrayLike,
    params: UtilityParams = DEFAULT_PARAMS,
) -> UtilityScore:
    """Normalized utility of binary ``predictions`` for a concatenated cohort."""
    rows = row_utilities(labels, boundaries, params)
    pred = as_binary(predictions, "predictions")
    if pred.size != rows.u_pos.size:
        raise ValueError("labels and predictions must have the same length")
    observed = float(np.where(pred, rows.u_pos, rows.u_neg).sum())
    return _normalize(observed, rows.inaction, rows.optimal)


def cohort_utility(
    patients: Iterable[tuple[npt.ArrayLike, npt.ArrayLike]],
    params: UtilityParams = DEFAULT_PARAMS,
) -> UtilityScore:
    """Normalized utility of a cohort given as (labels, predictions) pairs, one pair per patient."""
    label_parts: list[BoolArray] = []
    pred_parts: list[BoolArray] = []
    for labels, predictions in patients:
        y, p = as_binary(labels, "labels"), as_binary(predictions, "predictions")
        if y.size != p.size:
            raise ValueError("labels and predictions must have the same length per patient")
        label_parts.append(y)
        pred_parts.append(p)
    if not label_parts:
        raise ValueError("the cohort is empty")
    bounds = np.r_[0, np.cumsum([part.size for part in label_parts])]
    return cohort_utility_concat(
        np.concatenate(label_parts), np.concatenate(pred_parts), bounds, params
    )


def patient_utility(
    labels: npt.ArrayLike, predictions: npt.ArrayLike, params: UtilityParams = DEFAULT_PARAMS
) -> float:
    """Unnormalized utility of one patient (the scorer's per-patient sum)."""
    y = as_binary(labels, "labels")
    return cohort_utility_concat(y, predictions, [0, y.size], params).observed


def _resolve_boundaries(
    n_rows: int, patient_ids: npt.ArrayLike | None, boundaries: npt.ArrayLike | None
) -> IntArray:
    if boundaries is not None and patient_ids is None:
        return check_boundaries(boundaries, n_rows)
    if patient_ids is not None and boundaries is None:
        return check_boundaries(boundaries_from_ids(patient_ids), n_rows)
    raise ValueError("pass exactly one of patient_ids and boundaries")


def utility_curve(
    probabilities: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    patient_ids: npt.ArrayLike | None = None,
    boundaries: npt.ArrayLike | None = None,
    thresholds: npt.ArrayLike | None = None,
    params: UtilityParams = DEFAULT_PARAMS,
) -> tuple[FloatArray, FloatArray]:
    """Normalized utility at each threshold (a row is positive when probability >= threshold).

    ``thresholds`` defaults to every distinct probability, which finds the exact optimum. Returns
    (thresholds in descending order, normalized utilities). One sort, O(n log n) in all.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 1 or not np.all(np.isfinite(p)):
        raise ValueError("probabilities must be a finite 1-D array")
    bounds = _resolve_boundaries(p.size, patient_ids, boundaries)
    rows = row_utilities(labels, bounds, params)
    if rows.u_pos.size != p.size:
        raise ValueError("labels and probabilities must have the same length")
    order = np.argsort(-p, kind="stable")
    descending = p[order]
    gain = np.r_[0.0, np.cumsum((rows.u_pos - rows.u_neg)[order])]
    if thresholds is None:
        thr = np.unique(p)[::-1]
    else:
        thr = np.sort(np.asarray(thresholds, dtype=np.float64).ravel())[::-1]
    # Rows with p >= thr are a prefix of the descending order; its length is found by bisection.
    n_positive = np.searchsorted(-descending, -thr, side="right")
    span = rows.optimal - rows.inaction
    normalized = gain[n_positive] / span if span != 0 else np.full(thr.size, math.nan)
    return thr, normalized


def best_threshold(
    probabilities: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    patient_ids: npt.ArrayLike | None = None,
    boundaries: npt.ArrayLike | None = None,
    candidates: npt.ArrayLike | None = None,
    params: UtilityParams = DEFAULT_PARAMS,
) -> ThresholdChoice:
    """The probability threshold with the highest normalized utility.

    Choose it on the training hospital only and apply it unchanged elsewhere. Ties go to the
    highest threshold, i.e. the fewest alerts for the same utility.
    """
    thr, normalized = utility_curve(
        probabilities,
        labels,
        patient_ids=patient_ids,
        boundaries=boundaries,
        thresholds=candidates,
        params=params,
    )
    if thr.size == 0 or not np.any(np.isfinite(normalized)):
        raise ValueError("no candidate threshold gives a defined utility (no septic patients?)")
    best = int(np.nanargmax(normalized))  # first maximum in descending threshold order
    return ThresholdChoice(
        threshold=float(thr[best]),
        normalized_utility=float(normalized[best]),
        candidates_evaluated=int(thr.size),
    )

"""Drift figures from binned counts: PSI, normalised Wasserstein distance, missingness, alerts.

Pure numpy, no I/O. The reference of a model version (``reference.json``, written at training by
``training.artifacts.reference_statistics``) holds, per feature, bins cut at distinct quantiles
with the exact share of validation rows in each (``bins``), and the same for the score. An older
reference kept seven quantiles only; its distribution is then known only as a step CDF through
those points, the bins are the spaces between the quantiles, and each bin's expected share is the
gap between the levels either side (0.01, 0.04, 0.20, 0.25, 0.25, 0.20, 0.04, 0.01), with point
masses estimated (:func:`reference_bins`); on real data those estimates were off enough to give
a PSI above 0.25 on the reference population itself (hours-since and count features), which is
why exact shares are stored now.

Bins are right-closed, ``(e[k-1], e[k]]``, with ``-inf`` and ``+inf`` outside, so a value equal to
a quantile falls in the bin that ends at it, as ``P(X <= q) >= level`` says it should.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Level = Literal["ok", "warn", "act"]

#: Levels of ``score_quantiles`` in reference.json (``np.linspace(0, 1, 21)``).
SCORE_LEVELS = tuple(float(v) for v in np.linspace(0.0, 1.0, 21))


@dataclass(frozen=True)
class Bins:
    """Bin edges (``-inf`` first, ``+inf`` last) and the reference share of each bin."""

    edges: FloatArray
    expected: FloatArray

    @property
    def inner(self) -> FloatArray:
        """The finite edges, for :func:`bin_counts`."""
        return self.edges[1:-1]

    @property
    def size(self) -> int:
        return len(self.expected)


def reference_bins(
    quantile_levels: Sequence[float], quantiles: Sequence[float] | None
) -> tuple[FloatArray, FloatArray]:
    """Edges ``[-inf, q..., +inf]`` (distinct quantile values) and each bin's expected share.

    A value held by several quantiles is a point mass (a count, a flag, a score of 0): the levels
    say only that its CDF lies between the highest tied level and the next distinct level above
    it, so the CDF there is put at the middle of that interval and the zero-width bins between
    the tied quantiles are merged into the bin that ends at the value. Taking the lower end
    instead, a feature such as ``sex_male`` (quantiles 0,0,0,1,1,1,1) would show a PSI near 0.2
    on its own reference population. Without quantiles (a feature never seen in the reference)
    there is one bin holding everything.
    """
    if quantiles is None or len(quantiles) == 0:
        return np.array([-np.inf, np.inf]), np.array([1.0])
    if len(quantiles) != len(quantile_levels):
        raise ValueError("one quantile per level is needed")
    levels = np.asarray(quantile_levels, dtype=np.float64)
    values = np.asarray(quantiles, dtype=np.float64)
    distinct = np.unique(values)
    cdf = np.empty(len(distinct))
    for i, value in enumerate(distinct):
        held = levels[values == value]
        above = levels[values > value]
        upper = float(above.min()) if above.size else 1.0
        cdf[i] = float(held.max()) if held.size == 1 else (float(held.max()) + upper) / 2
    expected = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    edges = np.concatenate([[-np.inf], distinct, [np.inf]])
    return edges, expected


def score_bins(score_quantiles: Sequence[float]) -> Bins:
    """Twenty bins of 5 % of the validation scores, cut at the inner 19 of the 21 quantiles
    (the outer two are the validation minimum and maximum, which would make empty end bins)."""
    if len(score_quantiles) != len(SCORE_LEVELS):
        raise ValueError(f"{len(SCORE_LEVELS)} score quantiles are expected")
    edges, expected = reference_bins(SCORE_LEVELS[1:-1], list(score_quantiles)[1:-1])
    return Bins(edges, expected)


def bin_counts(inner_edges: FloatArray, values: npt.ArrayLike) -> IntArray:
    """Counts of the non-NaN ``values`` in each right-closed bin of ``inner_edges``."""
    column = np.asarray(values, dtype=np.float64)
    present = column[~np.isnan(column)]
    index = np.searchsorted(inner_edges, present, side="left")
    return np.bincount(index, minlength=len(inner_edges) + 1).astype(np.int64)


def psi(expected_shares: npt.ArrayLike, observed_counts: npt.ArrayLike, eps: float = 1e-4) -> float:
    """Population stability index of observed counts against expected shares.

    PSI = sum over bins of (o - e) * ln(o / e), o and e being the observed and expected shares:
    the symmetrised Kullback-Leibler divergence (Jeffreys divergence) of the two binned
    distributions, as set out by Yurdakul B., "Statistical properties of population stability
    index" (2018). Shares are floored at ``eps`` so that an empty bin gives a large but finite
    term. Zero when there are no observations (nothing to judge; see ``Thresholds.min_rows``).
    """
    e = np.asarray(expected_shares, dtype=np.float64)
    counts = np.asarray(observed_counts, dtype=np.float64)
    if e.shape != counts.shape:
        raise ValueError("one count per expected share is needed")
    total = counts.sum()
    if total <= 0:
        return 0.0
    o = np.maximum(counts / total, eps)
    e = np.maximum(e, eps)
    return float(np.sum((o - e) * np.log(o / e)))


def bin_points(edges: FloatArray) -> FloatArray:
    """One point per bin: the midpoint of a finite bin, the inner edge of an outer bin."""
    inner = edges[1:-1]
    if inner.size == 0:
        return np.zeros(1)
    middles = (inner[:-1] + inner[1:]) / 2
    return np.concatenate([[inner[0]], middles, [inner[-1]]])


def normalised_wasserstein(
    edges: FloatArray,
    expected_shares: npt.ArrayLike,
    observed_counts: npt.ArrayLike,
    scale: float,
) -> float:
    """1-Wasserstein distance of the observed from the expected binned distribution, over ``scale``.

    Each bin's mass is put at one point (:func:`bin_points`), so the figure is that of two
    discrete distributions on the same points, sum_k |F_o(k) - F_e(k)| * (x[k+1] - x[k]). This is
    exact for shifts of whole bins and smooths a shift inside a bin to a share of the bin width;
    mass beyond the outer quantiles is not seen further out than the 1st or 99th percentile, so a
    shift past the reference range is under-counted: PSI sees it instead. ``scale`` is the
    reference spread (:func:`reference_scale`); a zero scale gives 0 (nothing to compare with).
    """
    if scale <= 0:
        return 0.0
    e = np.asarray(expected_shares, dtype=np.float64)
    counts = np.asarray(observed_counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    points = bin_points(edges)
    gaps = np.diff(points)
    difference = np.abs(np.cumsum(counts / total) - np.cumsum(e))[:-1]
    return float(np.sum(difference * gaps) / scale)


def reference_scale(quantile_levels: Sequence[float], quantiles: Sequence[float] | None) -> float:
    """The reference spread: the IQR (q75 - q25), widened for heavy tails to the 5-95 % range
    over 2.44 (their ratio for a normal distribution); the 1-99 % range where both are 0; 0 where
    that is 0 too.

    The widening is our choice: with the IQR alone, a lab value such as troponin (IQR 1.5, q95 to
    q99 from 38 to 116) puts its tail bins dozens of IQRs apart, so the sampling noise of a 4 %
    bin on a few thousand stable rows already reads as 0.2-0.3 of the IQR.
    """
    if not quantiles:
        return 0.0
    by_level = dict(zip((round(v, 6) for v in quantile_levels), quantiles, strict=True))
    spread = max(by_level[0.75] - by_level[0.25], (by_level[0.95] - by_level[0.05]) / 2.44)
    if spread > 0:
        return float(spread)
    return float(max(by_level[0.99] - by_level[0.01], 0.0))


def missing_drift(reference_rate: float, missing: int, total: int) -> float:
    """Absolute difference between the live and the reference missing rates (0 with no rows)."""
    if total <= 0:
        return 0.0
    return abs(missing / total - reference_rate)


def alerts_per_100_patient_days(alerts: int, patient_hours: float) -> float | None:
    """Alerts per 100 patient-days, as in reference.json; None without patient time."""
    if patient_hours <= 0:
        return None
    return alerts / (patient_hours / 24) * 100


def _exact(bins: Mapping[str, Any]) -> tuple[FloatArray, FloatArray]:
    """Edges and shares counted at training (``training.artifacts.exact_bins``)."""
    inner = np.asarray(bins["edges"], dtype=np.float64)
    shares = np.asarray(bins["shares"], dtype=np.float64)
    if shares.shape != (inner.size + 1,) or not np.isclose(shares.sum(), 1.0):
        raise ValueError("exact bins need one share per bin, summing to 1")
    return np.concatenate([[-np.inf], inner, [np.inf]]), shares


@dataclass(frozen=True)
class FeatureReference:
    """What drift monitoring needs of one feature's reference."""

    name: str
    bins: Bins
    missing: float
    scale: float


@dataclass(frozen=True)
class Reference:
    """A model version's reference, binned: one entry per feature, in feature-matrix order."""

    features: tuple[FeatureReference, ...]
    score: Bins
    alerts_per_100_patient_days: float | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], feature_names: Sequence[str]) -> Reference:
        """Bins from the parsed ``reference.json`` for the columns ``feature_names``."""
        levels = [float(v) for v in data["quantile_levels"]]
        features = []
        for name in feature_names:
            entry = data["features"][name]
            quantiles = entry["quantiles"]
            exact = entry.get("bins")
            if exact is not None:
                edges, expected = _exact(exact)
            else:  # a reference written before exact bins: shares estimated from quantiles
                edges, expected = reference_bins(levels, quantiles)
            features.append(
                FeatureReference(
                    name=name,
                    bins=Bins(edges, expected),
                    missing=float(entry["missing"]),
                    scale=reference_scale(levels, quantiles),
                )
            )
        rate = data.get("alerts_per_100_patient_days")
        exact_score = data.get("score_bins")
        return cls(
            features=tuple(features),
            score=Bins(*_exact(exact_score))
            if exact_score is not None
            else score_bins([float(v) for v in data["score_quantiles"]]),
            alerts_per_100_patient_days=None if rate is None else float(rate),
        )


class FeatureDrift(BaseModel):
    """One feature's figures over the window; ``n`` counts the rows where it was present."""

    psi: float
    wasserstein: float
    missing_delta: float
    n: int
    bins: int = Field(default=8, description="bins the PSI was computed over")


class DriftReport(BaseModel):
    """The drift figures of one model version over a window: no row-level value, counts only."""

    rows: int
    stays: int | None = Field(
        default=None,
        description="distinct patients in the window (a HyperLogLog estimate); None: unknown",
    )
    patient_hours: float
    features: dict[str, FeatureDrift]
    score_psi: float
    score_bins: int = 20
    alert_rate: float | None = Field(description="alerts per 100 patient-days in the window")
    reference_alert_rate: float | None = Field(description="the same on the validation split")


class Thresholds(BaseModel):
    """When a figure warns or acts. PSI 0.1/0.25 and twice the validation alert rate are the
    common practice issue 9 names; the Wasserstein, missingness, warn-ratio and minimum-count
    values are this project's choice."""

    psi_warn: float = 0.1
    psi_act: float = 0.25
    wasserstein_warn: float = 0.1
    """Share of the reference spread, :func:`reference_scale` (our choice)."""
    wasserstein_act: float = 0.25
    """Share of the reference spread, :func:`reference_scale` (our choice)."""
    missing_delta_warn: float = 0.1
    missing_delta_act: float = 0.2
    alert_rate_warn_ratio: float = 1.5
    alert_rate_act_ratio: float = 2.0
    min_rows: int = 200
    """Fewer rows (present values for a feature) than this: the figure is not judged."""
    min_stays: int = 200
    """Fewer effective patients than this: a distribution is not judged (our choice).

    A census window holds the same patients hour after hour: 12 rows of one stay carry a lab
    value once. With ``stays`` known, a feature's effective sample is its present rows times
    stays / rows, and PSI is judged above its sampling floor, (bins - 1) / effective n (the mean
    of n x PSI under no drift is about the chi-square's degrees of freedom). Replaying hospital A
    to its own model, 100 beds for 12 hours, gave PSIs up to 1.9 on labs seen in ~25 patients
    without it (tests/workers/test_drift_simulation.py). Even with it, ~120 patients left one
    window in 36 with a feature at act by chance; ~285 patients (250 beds, 6 hours) kept every
    feature below 0.09 above its floor in 36 windows: hence 200. A unit that sees fewer patients
    in ``window_hours`` has its distributions judged only once the window is longer."""
    min_patient_hours: float = 720.0
    """Thirty patient-days before the alert rate is judged (our choice): about 16 alerts at a
    validation rate of 53 per 100 patient-days, where twice that by chance has a Poisson
    probability below 1e-4 (ten patient-days would give 1.5 %)."""


class Verdict(BaseModel):
    """Levels per figure and overall. ``inputs`` (features, missingness) breaking means every
    version would see it: stop the cards. ``behaviour`` (score PSI, alert rate) breaking while
    the inputs hold means the model itself changed: roll back."""

    inputs: Level
    behaviour: Level
    features: dict[str, Level]
    score_psi: Level
    alert_rate: Level


_ORDER: dict[Level, int] = {"ok": 0, "warn": 1, "act": 2}


def level(value: float | None, warn: float, act: float) -> Level:
    """``act`` at or above ``act``, ``warn`` at or above ``warn``, else (or unknown) ``ok``."""
    if value is None:
        return "ok"
    if value >= act:
        return "act"
    if value >= warn:
        return "warn"
    return "ok"


def worst(levels: Sequence[Level]) -> Level:
    """The most severe of ``levels`` (``ok`` for none)."""
    return max(levels, key=_ORDER.__getitem__, default="ok")


def _above_floor(psi_value: float, bins: int, effective: float) -> float:
    return psi_value - (bins - 1) / effective if effective > 0 else 0.0


def classify(report: DriftReport, thresholds: Thresholds) -> Verdict:
    """Judge each figure of ``report``; figures on too few counts are ``ok`` (not judged).

    The normalised Wasserstein distance raises a feature to ``warn`` at most unless its PSI is at
    warn too: its scale is the reference spread estimated from seven quantiles, which for a point
    mass (hours since a vital, 0 most of the time) or a heavy-tailed lab is fragile enough to read
    0.25-0.33 on hospital A's own rows, while PSI on exact bins stays below 0.06 there."""
    t = thresholds
    stays = report.stays if report.stays is not None else report.rows
    features: dict[str, Level] = {}
    for name, drift in report.features.items():
        missing = level(drift.missing_delta, t.missing_delta_warn, t.missing_delta_act)
        if report.rows < t.min_rows or stays < t.min_stays:
            missing = "ok"
        shape: list[Level] = []
        effective = _effective_of(drift.n, report.rows, report.stays)
        if drift.n >= t.min_rows and effective >= t.min_stays:
            psi_level = level(_above_floor(drift.psi, drift.bins, effective), t.psi_warn, t.psi_act)
            w_level = level(drift.wasserstein, t.wasserstein_warn, t.wasserstein_act)
            if w_level == "act" and psi_level == "ok":
                w_level = "warn"
            shape = [psi_level, w_level]
        features[name] = worst([missing, *shape])
    score: Level = "ok"
    if report.rows >= t.min_rows and stays >= t.min_stays:
        effective = _effective_of(report.rows, report.rows, report.stays)
        floor = _above_floor(report.score_psi, report.score_bins, effective)
        score = level(floor, t.psi_warn, t.psi_act)
    alert: Level = "ok"
    reference = report.reference_alert_rate
    if (
        report.alert_rate is not None
        and reference is not None
        and reference > 0
        and report.patient_hours >= t.min_patient_hours
    ):
        ratio = report.alert_rate / reference
        alert = level(ratio, t.alert_rate_warn_ratio, t.alert_rate_act_ratio)
    return Verdict(
        inputs=worst(list(features.values())),
        behaviour=worst([score, alert]),
        features=features,
        score_psi=score,
        alert_rate=alert,
    )


#: Cochran's rule for the chi-square approximation: at least five expected observations per bin
MIN_EXPECTED = 5.0


def merge_sparse(
    expected: npt.ArrayLike, observed: npt.ArrayLike, effective_n: float
) -> tuple[FloatArray, IntArray]:
    """Adjacent bins merged until each expects at least ``MIN_EXPECTED`` of ``effective_n``
    observations (a sparse tail merges into its neighbour).

    PSI over bins that expect one or two patients is dominated by chance: an empty 1 % bin adds
    0.046, its floor-to-share ratio taken at ``eps``. Replaying hospital A to its own model (100
    beds, 9 hours, ~115 patients) gave platelets_mean_24h a PSI of 0.4 from such bins alone."""
    e = np.asarray(expected, dtype=np.float64)
    o = np.asarray(observed, dtype=np.int64)
    need = MIN_EXPECTED / effective_n if effective_n > 0 else 1.0
    merged_e: list[float] = []
    merged_o: list[int] = []
    share, count = 0.0, 0
    for e_k, o_k in zip(e.tolist(), o.tolist(), strict=True):
        share, count = share + e_k, count + o_k
        if share >= need:
            merged_e.append(share)
            merged_o.append(count)
            share, count = 0.0, 0
    if share > 0 or count > 0:
        if merged_e:  # the short last run joins the bin before it
            merged_e[-1] += share
            merged_o[-1] += count
        else:
            merged_e, merged_o = [share], [count]
    return np.asarray(merged_e), np.asarray(merged_o, dtype=np.int64)


def _effective_of(n: int, rows: int, stays: int | None) -> float:
    """Present rows discounted for the same patients' repeated rows (``Thresholds.min_stays``)."""
    if stays is None or rows <= 0:
        return float(n)
    return n * min(1.0, stays / rows)


def drift_report(
    reference: Reference,
    *,
    feature_counts: Sequence[npt.ArrayLike],
    feature_missing: Sequence[int],
    score_counts: npt.ArrayLike,
    rows: int,
    alerts: int,
    patient_hours: float,
    stays: int | None = None,
) -> DriftReport:
    """The figures of a window's counts (one array per feature, one missing count per feature)
    against ``reference``."""
    if len(feature_counts) != len(reference.features) or len(feature_missing) != len(
        reference.features
    ):
        raise ValueError("one count array and one missing count per reference feature")
    features: dict[str, FeatureDrift] = {}
    for ref, counts, missing in zip(
        reference.features, feature_counts, feature_missing, strict=True
    ):
        observed = np.asarray(counts, dtype=np.int64)
        n = int(observed.sum())
        expected, merged = merge_sparse(ref.bins.expected, observed, _effective_of(n, rows, stays))
        features[ref.name] = FeatureDrift(
            psi=psi(expected, merged),
            wasserstein=normalised_wasserstein(
                ref.bins.edges, ref.bins.expected, observed, ref.scale
            ),
            missing_delta=missing_drift(ref.missing, int(missing), rows),
            n=n,
            bins=len(merged),
        )
    score_expected, score_merged = merge_sparse(
        reference.score.expected, score_counts, _effective_of(rows, rows, stays)
    )
    return DriftReport(
        rows=rows,
        stays=stays,
        score_bins=len(score_merged),
        patient_hours=patient_hours,
        features=features,
        score_psi=psi(score_expected, score_merged),
        alert_rate=alerts_per_100_patient_days(alerts, patient_hours),
        reference_alert_rate=reference.alerts_per_100_patient_days,
    )

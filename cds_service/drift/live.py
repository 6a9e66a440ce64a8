"""Live drift counts per model version in Redis: hourly bin counts, nothing about a patient.

Each scored batch (a hook call, a rescoring run) adds to one hash per model version and hour,
``cds:drift:{version}:{hour}`` (``hour`` = Unix time // 3600), in one MULTI/EXEC round trip:

- ``f{j}:b{k}``: rows whose feature ``j`` fell in reference bin ``k``; ``f{j}:nan``: rows where it
  was missing;
- ``score:b{k}``: rows whose score fell in score bin ``k``;
- ``n``: rows; ``alerts``: alerts raised; ``patient_hours``: patient time covered.

Only counts are stored: no identifier, time of a call, value or score of a row, so a bucket
cannot be traced back to a patient. A bucket expires ``retention`` after it was last written,
which bounds the longest window that can be read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from cds_service.drift.statistics import DriftReport, IntArray, Reference, bin_counts, drift_report
from cds_service.errors import DependencyUnavailable

KEY_PREFIX = "cds:drift"
_VERSION = re.compile(r"[A-Za-z0-9._-]{1,100}")
_FIELD = re.compile(r"f(\d+):(b(\d+)|nan)|score:b(\d+)")


@dataclass(frozen=True)
class WindowCounts:
    """Sums of the hour buckets in a window."""

    rows: int
    alerts: int
    patient_hours: float
    feature_counts: tuple[IntArray, ...]
    feature_missing: tuple[int, ...]
    score_counts: IntArray
    #: distinct patients (HyperLogLog union of the buckets' sketches; ~0.8 % standard error)
    stays: int | None = None


def hour_of(now: datetime) -> int:
    """The bucket of ``now`` (timezone-aware): whole hours since the Unix epoch."""
    if now.tzinfo is None:
        raise ValueError("a timezone-aware time is needed")
    return math.floor(now.timestamp()) // 3600


class LiveStats:
    """Binned counts of one model version's inputs, scores and alerts, in Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        version: str,
        reference: Reference,
        retention: timedelta = timedelta(days=8),
    ) -> None:
        if not _VERSION.fullmatch(version):
            raise ValueError("a model version is letters, digits, '.', '_' and '-'")
        if retention <= timedelta(0):
            raise ValueError("retention must be positive")
        self._redis = redis
        self.version = version
        self.reference = reference
        self.retention = retention

    def key(self, hour: int) -> str:
        return f"{KEY_PREFIX}:{self.version}:{hour}"

    def _increments(
        self, rows: npt.NDArray[np.floating], scores: npt.NDArray[np.floating]
    ) -> dict[str, int]:
        fields: dict[str, int] = {}
        for j, feature in enumerate(self.reference.features):
            column = rows[:, j]
            missing = int(np.isnan(column).sum())
            if missing:
                fields[f"f{j}:nan"] = missing
            counts = bin_counts(feature.bins.inner, column)
            for k in np.flatnonzero(counts):
                fields[f"f{j}:b{k}"] = int(counts[k])
        counts = bin_counts(self.reference.score.inner, scores)
        for k in np.flatnonzero(counts):
            fields[f"score:b{k}"] = int(counts[k])
        return fields

    def add_to(
        self,
        pipe: Pipeline,
        rows: npt.NDArray[np.floating],
        scores: npt.NDArray[np.floating],
        *,
        alerts: int,
        patient_hours: float,
        now: datetime,
        patients: Sequence[str] = (),
    ) -> None:
        """Queue the counts of a scored batch (``rows`` N x F features, NaN = missing; ``scores``
        N) for the bucket of ``now`` on ``pipe``, to share the caller's round trip."""
        rows = np.asarray(rows)
        scores = np.asarray(scores)
        width = len(self.reference.features)
        if rows.ndim != 2 or rows.shape[1] != width:
            raise ValueError(f"rows must be N x {width}")
        if scores.shape != (rows.shape[0],):
            raise ValueError("one score per row is needed")
        if alerts < 0 or patient_hours < 0:
            raise ValueError("alerts and patient hours cannot be negative")
        key = self.key(hour_of(now))
        # Counters only grow, so HINCRBY of each changed field (never HSET) lets every replica
        # and worker write to the same bucket without a lost update.
        for field, amount in self._increments(rows, scores).items():
            pipe.hincrby(key, field, amount)
        pipe.hincrby(key, "n", int(rows.shape[0]))
        pipe.hincrby(key, "alerts", int(alerts))
        pipe.hincrbyfloat(key, "patient_hours", float(patient_hours))
        ttl = int(self.retention.total_seconds() * 1000)
        pipe.pexpire(key, ttl)
        if patients:
            # A sketch of the (already keyed-hash) pseudonyms: it answers "how many distinct
            # patients" and nothing about which.
            pipe.pfadd(f"{key}:stays", *patients)
            pipe.pexpire(f"{key}:stays", ttl)

    async def record(  # noqa: PLR0917 - the counts of one batch, in their natural order
        self,
        rows: npt.NDArray[np.floating],
        scores: npt.NDArray[np.floating],
        alerts: int,
        patient_hours: float,
        now: datetime,
        patients: Sequence[str] = (),
    ) -> None:
        """Add a scored batch to the bucket of ``now`` in one round trip (see :meth:`add_to`).
        Raises :class:`DependencyUnavailable` when Redis fails."""
        pipe = self._redis.pipeline(transaction=True)
        self.add_to(
            pipe,
            rows,
            scores=scores,
            alerts=alerts,
            patient_hours=patient_hours,
            now=now,
            patients=patients,
        )
        try:
            await pipe.execute()
        except RedisError as exc:
            raise DependencyUnavailable("drift counts are unavailable: Redis unavailable") from exc

    async def window(self, hours: int, now: datetime) -> WindowCounts:
        """The sums of the ``hours`` buckets ending with that of ``now``, in one round trip."""
        if hours < 1:
            raise ValueError("a window is at least one hour")
        if timedelta(hours=hours) > self.retention:
            raise ValueError("the window is longer than the counts are kept")
        last = hour_of(now)
        pipe = self._redis.pipeline(transaction=False)
        window = range(last - hours + 1, last + 1)
        for hour in window:
            pipe.hgetall(self.key(hour))
        pipe.pfcount(*(f"{self.key(hour)}:stays" for hour in window))
        try:
            *buckets, stays = await pipe.execute()
        except RedisError as exc:
            raise DependencyUnavailable("drift counts are unavailable: Redis unavailable") from exc
        counts = self._sum(buckets)
        # 0 when no batch carried pseudonyms: then no distribution is judged (min_stays)
        return replace(counts, stays=int(stays))

    def _sum(self, buckets: list[dict[bytes, bytes]]) -> WindowCounts:
        features = self.reference.features
        counts = [np.zeros(f.bins.size, dtype=np.int64) for f in features]
        missing = [0] * len(features)
        score = np.zeros(self.reference.score.size, dtype=np.int64)
        rows = alerts = 0
        patient_hours = 0.0
        for bucket in buckets:
            for raw_field, raw_value in bucket.items():
                field = raw_field.decode()
                if field == "n":
                    rows += int(raw_value)
                elif field == "alerts":
                    alerts += int(raw_value)
                elif field == "patient_hours":
                    patient_hours += float(raw_value)
                elif match := _FIELD.fullmatch(field):
                    feature, bin_, k, score_k = match.groups()
                    if score_k is not None:
                        score[int(score_k)] += int(raw_value)
                    elif bin_ == "nan":
                        missing[int(feature)] += int(raw_value)
                    else:
                        counts[int(feature)][int(k)] += int(raw_value)
        return WindowCounts(
            rows=rows,
            alerts=alerts,
            patient_hours=patient_hours,
            feature_counts=tuple(counts),
            feature_missing=tuple(missing),
            score_counts=score,
        )


def report(counts: WindowCounts, reference: Reference) -> DriftReport:
    """The drift figures of a window's counts; judge them with :func:`classify`."""
    return drift_report(
        reference,
        feature_counts=counts.feature_counts,
        feature_missing=counts.feature_missing,
        score_counts=counts.score_counts,
        rows=counts.rows,
        alerts=counts.alerts,
        patient_hours=counts.patient_hours,
        stays=counts.stays,
    )

"""Everything a scoring pass leaves behind, in one Redis round trip: drift counts per shown
version, the shadow comparison, and the audit event of each scored call."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from pydantic import BaseModel
from redis.exceptions import RedisError

from cds_service.drift.live import LiveStats
from cds_service.inference.registry import LoadedModel
from cds_service.lifecycle.audit import CALLS_STREAM, AuditTrail
from cds_service.lifecycle.shadow import ShadowStats
from cds_service.metrics import Metrics

log = logging.getLogger(__name__)

#: drift and shadow counts are kept a day longer than the longest window the policy allows
COUNTS_RETENTION = timedelta(days=8)


@dataclass(frozen=True)
class ScoredBatch:
    """Rows one version scored: ``alerts`` new alerts among them and ``patient_hours`` of patient
    time they stand for (only the census rescoring, at a fixed cadence, knows patient time)."""

    model: LoadedModel
    rows: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float64]
    alerts: int = 0
    patient_hours: float = 0.0
    #: the rows' patient pseudonyms, for the distinct-patient sketch
    patients: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShadowPair:
    shown: LoadedModel
    shadow: LoadedModel
    rows: npt.NDArray[np.float32]
    shown_scores: npt.NDArray[np.float64]
    shadow_scores: npt.NDArray[np.float64]
    patients: tuple[str, ...] = ()


class ScoreRecorder:
    def __init__(
        self,
        redis: aioredis.Redis,
        audit: AuditTrail,
        metrics: Metrics,
        retention: timedelta = COUNTS_RETENTION,
    ) -> None:
        self._redis = redis
        self._audit = audit
        self._metrics = metrics
        self._retention = retention
        self._shadow = ShadowStats(redis, retention)
        self._live: dict[str, LiveStats] = {}

    def live(self, model: LoadedModel) -> LiveStats:
        stats = self._live.get(model.version)
        if stats is None or stats.reference is not model.drift_reference:
            stats = LiveStats(self._redis, model.version, model.drift_reference, self._retention)
            self._live[model.version] = stats
        return stats

    async def record(
        self,
        batches: list[ScoredBatch],
        now: datetime,
        shadow: list[ShadowPair] | None = None,
        calls: list[BaseModel] | None = None,
    ) -> bool:
        """Write it all; False (counted, logged) when it cannot: scoring goes on without it."""
        try:
            return await self._record(batches, now, shadow or [], calls or [])
        except Exception as exc:  # drift counts and audit never decide what a clinician sees
            self._metrics.audit_unwritten.inc()
            log.error("drift counts and audit events not written (%s)", type(exc).__name__)
            return False

    async def _record(
        self,
        batches: list[ScoredBatch],
        now: datetime,
        shadow: list[ShadowPair],
        calls: list[BaseModel],
    ) -> bool:
        pipe = self._redis.pipeline(transaction=False)
        for batch in batches:
            if len(batch.rows):
                self.live(batch.model).add_to(
                    pipe,
                    batch.rows,
                    scores=batch.scores,
                    alerts=batch.alerts,
                    patient_hours=batch.patient_hours,
                    now=now,
                    patients=batch.patients,
                )
        for pair in shadow:
            # The shadow's own counts (no alerts or patient time: its cards are never shown)
            # give it a drift history before it is promoted.
            self.live(pair.shadow).add_to(
                pipe,
                pair.rows,
                scores=pair.shadow_scores,
                alerts=0,
                patient_hours=0.0,
                now=now,
                patients=pair.patients,
            )
            self._shadow.add_to(
                pipe,
                pair.shown.version,
                shadow=pair.shadow.version,
                shown_scores=pair.shown_scores,
                shadow_scores=pair.shadow_scores,
                shown_level=pair.shown.entry.operating_points.utility_optimal,
                shadow_level=pair.shadow.entry.operating_points.utility_optimal,
                now=now,
            )
        for event in calls:
            self._audit.add(pipe, CALLS_STREAM, event, now)
        try:
            await pipe.execute()
        except RedisError:
            self._metrics.audit_unwritten.inc()
            log.warning("drift counts and audit events not written: Redis unavailable")
            return False
        return True

"""Shadow comparison: the candidate scored beside the shown model on the same rows, counted.

Per pair and hour, ``cds:shadow:{shown}:{shadow}:{hour}`` holds: rows ``n``; rows where both,
only the shown model, or only the shadow were at or above their own alert level; the summed
absolute difference of the two risks; and both risks' counts in fixed log-spaced bins (the two
models' own reference bins differ, so a common grid is needed to compare their distributions).
Counts only, as for drift: nothing identifies a patient or a call.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from pydantic import BaseModel
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from cds_service.drift.live import hour_of
from cds_service.drift.statistics import bin_counts, psi
from cds_service.errors import DependencyUnavailable

KEY_PREFIX = "cds:shadow"
#: 1e-4 .. 1 in 24 log-spaced bins (sepsis risks are mostly 0.1 %-10 %), plus one below
GRID = np.logspace(-4, 0, 25)[:-1]


class ShadowReport(BaseModel):
    active: str
    shadow: str
    rows: int
    agreement: float | None
    """Share of rows where both models were on the same side of their own alert level."""
    active_alert_share: float | None
    shadow_alert_share: float | None
    score_psi: float | None
    """PSI of the shadow's risk distribution against the shown model's, on the common grid."""
    mean_abs_difference: float | None


class ShadowStats:
    def __init__(self, redis: aioredis.Redis, retention: timedelta) -> None:
        self._redis = redis
        self.retention = retention

    def key(self, shown: str, shadow: str, hour: int) -> str:
        return f"{KEY_PREFIX}:{shown}:{shadow}:{hour}"

    def add_to(
        self,
        pipe: Pipeline,
        shown: str,
        shadow: str,
        *,
        shown_scores: npt.NDArray[np.float64],
        shadow_scores: npt.NDArray[np.float64],
        shown_level: float,
        shadow_level: float,
        now: datetime,
    ) -> None:
        if shown_scores.shape != shadow_scores.shape:
            raise ValueError("one shadow score per shown score is needed")
        key = self.key(shown, shadow, hour_of(now))
        a = shown_scores >= shown_level
        s = shadow_scores >= shadow_level
        fields = {
            "n": int(a.size),
            "both": int(np.sum(a & s)),
            "shown_only": int(np.sum(a & ~s)),
            "shadow_only": int(np.sum(~a & s)),
        }
        for name, values in (("a", shown_scores), ("s", shadow_scores)):
            counts = bin_counts(GRID, values)
            for k in np.flatnonzero(counts):
                fields[f"{name}:b{k}"] = int(counts[k])
        for field, amount in fields.items():
            if amount:
                pipe.hincrby(key, field, amount)
        diff = float(np.sum(np.abs(shown_scores - shadow_scores)))
        pipe.hincrbyfloat(key, "absdiff", diff)
        pipe.pexpire(key, int(self.retention.total_seconds() * 1000))

    async def report(self, shown: str, shadow: str, hours: int, now: datetime) -> ShadowReport:
        last = hour_of(now)
        pipe = self._redis.pipeline(transaction=False)
        for hour in range(last - hours + 1, last + 1):
            pipe.hgetall(self.key(shown, shadow, hour))
        try:
            buckets: list[dict[bytes, bytes]] = await pipe.execute()
        except RedisError as exc:
            raise DependencyUnavailable("shadow counts unavailable: Redis unavailable") from exc
        totals: dict[str, float] = {}
        for bucket in buckets:
            for field, value in bucket.items():
                name = field.decode()
                totals[name] = totals.get(name, 0.0) + float(value)
        n = int(totals.get("n", 0))
        if n == 0:
            return ShadowReport(
                active=shown, shadow=shadow, rows=0, agreement=None, active_alert_share=None,
                shadow_alert_share=None, score_psi=None, mean_abs_difference=None,
            )  # fmt: skip
        bins = GRID.size + 1
        shown_counts = np.array([totals.get(f"a:b{k}", 0.0) for k in range(bins)])
        shadow_counts = np.array([totals.get(f"s:b{k}", 0.0) for k in range(bins)])
        both, shown_only, shadow_only = (
            totals.get(k, 0.0) for k in ("both", "shown_only", "shadow_only")
        )
        return ShadowReport(
            active=shown,
            shadow=shadow,
            rows=n,
            agreement=1 - (shown_only + shadow_only) / n,
            active_alert_share=(both + shown_only) / n,
            shadow_alert_share=(both + shadow_only) / n,
            score_psi=psi(shown_counts / shown_counts.sum(), shadow_counts),
            mean_abs_difference=totals.get("absdiff", 0.0) / n,
        )

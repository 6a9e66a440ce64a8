"""The append-only audit trail: every lifecycle change and every scored call, in Redis streams.

Two streams, ``cds:audit:lifecycle`` (who promoted, rolled back, stopped or killed what, why, with
the figures) and ``cds:audit:calls`` (each scored hook call: time, service, patient pseudonym,
model version and role, risk, card shown or why it was suppressed; each feedback entry). Entries
are only ever added (XADD); the only removal is the retention trim, ``MINID`` on each add, so the
streams never hold more than ``retention`` of history.

Durability is the Redis server's: append-only persistence and the ``noeviction`` policy (the
Helm chart's Redis and the embedded dev server run so); :func:`durability` reads both from INFO so
that /readyz can say when the trail is not safe. A pseudonym is a keyed hash, never the patient id.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, Field
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from cds_service.errors import DependencyUnavailable

LIFECYCLE_STREAM = "cds:audit:lifecycle"
CALLS_STREAM = "cds:audit:calls"

Action = Literal[
    "seed",
    "promote",
    "promote-refused",
    "rollback",
    "rollback-refused",
    "withdraw",
    "canary-share",
    "stop",
    "resume",
    "kill",
    "revive",
    "drift-warn",
]


class LifecycleEvent(BaseModel):
    """One change (or refused change) of a model's deployment."""

    at: datetime
    actor: str = Field(description="the admin's name, or 'drift-monitor' for automatic actions")
    action: Action
    model: str = Field(description="the model family, e.g. 'sepsis'")
    service: str | None = Field(default=None, description="the CDS service, for kill/revive")
    version: str | None = None
    from_role: str | None = None
    to_role: str | None = None
    reason: str
    figures: dict[str, Any] = Field(default_factory=dict)
    revision: int | None = Field(default=None, description="the state revision it produced")


class CallEvent(BaseModel):
    """One scored hook call, or one feedback entry. No identifier but the keyed pseudonym."""

    at: datetime
    kind: Literal["call", "feedback"]
    service: str
    patient: str | None = Field(default=None, description="keyed pseudonym of the patient")
    version: str | None = None
    role: Literal["active", "canary"] | None = None
    risk: float | None = None
    card: str = Field(description="'shown', 'suppressed:<reason>', or the feedback outcome")
    card_uuid: str | None = None
    shadow_version: str | None = None
    shadow_risk: float | None = None
    override_reason: str | None = None


class AuditEntry(BaseModel):
    id: str
    event: dict[str, Any]


def _minid(now: datetime, retention: timedelta) -> str:
    return f"{int((now - retention).timestamp() * 1000)}-0"


class AuditTrail:
    """``retention`` for lifecycle events; ``calls_retention`` (default the same) for scored
    calls and feedback, which are many more (about 400 bytes each)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        retention: timedelta,
        calls_retention: timedelta | None = None,
    ) -> None:
        calls_retention = calls_retention or retention
        if retention <= timedelta(0) or calls_retention <= timedelta(0):
            raise ValueError("retention must be positive")
        self._redis = redis
        self.retention = retention
        self.calls_retention = calls_retention

    def retention_of(self, stream: str) -> timedelta:
        return self.calls_retention if stream == CALLS_STREAM else self.retention

    def add(self, pipe: Pipeline, stream: str, event: BaseModel, now: datetime) -> None:
        """Queue one append on ``pipe`` (so it shares the caller's round trip or transaction)."""
        payload = orjson.dumps(event.model_dump(mode="json", exclude_none=True))
        minid = _minid(now, self.retention_of(stream))
        pipe.xadd(stream, {"e": payload}, minid=minid, approximate=False)

    async def append(self, stream: str, event: BaseModel, now: datetime | None = None) -> None:
        pipe = self._redis.pipeline(transaction=False)
        self.add(pipe, stream, event, now or datetime.now(UTC))
        try:
            await pipe.execute()
        except RedisError as exc:
            raise DependencyUnavailable("audit trail unavailable: Redis unavailable") from exc

    async def recent(self, stream: str, count: int = 50) -> list[AuditEntry]:
        """The newest ``count`` entries, newest first."""
        try:
            raw: list[tuple[bytes, dict[bytes, bytes]]] = await self._redis.xrevrange(  # type: ignore[assignment]
                stream, count=count
            )
        except RedisError as exc:
            raise DependencyUnavailable("audit trail unavailable: Redis unavailable") from exc
        return [
            AuditEntry(id=entry_id.decode(), event=orjson.loads(fields[b"e"]))
            for entry_id, fields in raw
        ]

    async def length(self, stream: str) -> int:
        try:
            return int(await self._redis.xlen(stream))
        except RedisError as exc:
            raise DependencyUnavailable("audit trail unavailable: Redis unavailable") from exc


async def durability(redis: aioredis.Redis) -> str | None:
    """None when the server persists appends and never evicts; else what is wrong."""
    try:
        persistence = await redis.info("persistence")
        memory = await redis.info("memory")
    except RedisError:
        return "unknown: Redis unavailable"
    return durability_of(persistence, memory)


def durability_of(persistence: dict[str, Any], memory: dict[str, Any]) -> str | None:
    """:func:`durability` from the ``INFO persistence`` and ``INFO memory`` replies."""
    problems = []
    if int(persistence.get("aof_enabled", 0)) != 1:
        problems.append("appendonly off")
    policy = memory.get("maxmemory_policy", "unknown")
    if policy != "noeviction":
        problems.append(f"maxmemory-policy {policy}")
    return ", ".join(problems) or None

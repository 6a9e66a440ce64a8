"""Refuse a replayed JWT ``jti`` (CDS Hooks 2.0.1 §Trusting CDS Clients)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cds_service.metrics import Metrics

log = logging.getLogger(__name__)


class ReplayGuard:
    """Remembers each (iss, jti) until the token expires.

    Redis is the shared memory across API replicas. When Redis does not answer, a bounded
    per-process memory takes over: hook calls keep working (a fail-closed check would turn a Redis
    outage into an outage of every card) and a replay to the same replica is still refused. Each
    such fallback is counted, so the gap is visible.
    """

    _LOCAL_MAX = 100_000

    def __init__(self, redis: aioredis.Redis, metrics: Metrics, skew_s: int) -> None:
        self._redis = redis
        self._metrics = metrics
        self._skew_s = skew_s
        self._local: OrderedDict[str, float] = OrderedDict()

    @staticmethod
    def _key(iss: str, jti: str) -> str:
        return "cds:jti:" + hashlib.sha256(f"{iss}\x00{jti}".encode()).hexdigest()

    async def first_use(self, iss: str, jti: str, exp: int) -> bool:
        """True the first time this (iss, jti) is seen before it expires, False on a replay."""
        key = self._key(iss, jti)
        ttl = max(1, int(exp - time.time()) + self._skew_s)
        local_fresh = self._remember_locally(key, ttl)
        try:
            stored = await self._redis.set(key, b"1", nx=True, ex=ttl)
        except RedisError:
            self._metrics.replay_check_degraded.inc()
            log.warning("replay check fell back to process memory: Redis unavailable")
            return local_fresh
        return bool(stored) and local_fresh

    def _remember_locally(self, key: str, ttl: int) -> bool:
        now = time.monotonic()
        while self._local:
            oldest_key, expires = next(iter(self._local.items()))
            if expires > now and len(self._local) < self._LOCAL_MAX:
                break
            del self._local[oldest_key]
        seen_until = self._local.get(key)
        if seen_until is not None and seen_until > now:
            return False
        self._local[key] = now + ttl
        return True

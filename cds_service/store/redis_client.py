"""The one Redis connection pool of a process."""

from __future__ import annotations

import redis.asyncio as aioredis

from cds_service.errors import DependencyUnavailable
from cds_service.settings import Settings


def create_redis(settings: Settings) -> aioredis.Redis:
    """A pooled client; connecting is lazy, so start-up succeeds while Redis is still coming up."""
    if settings.redis_url is None:
        raise DependencyUnavailable(
            "no Redis configured: set REDIS_URL (or run `make run`, which starts one)"
        )
    return aioredis.Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
        retry_on_timeout=False,
    )

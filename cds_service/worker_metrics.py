"""Worker figures for the API's /metrics, read from Redis at scrape time.

Prefork worker children cannot share an in-process Prometheus registry, so the workers count task
outcomes in a Redis hash; the queue is the broker's list; the refresh lag is the age of each
census patient's newest observation, exported as a distribution (never one series per patient).
"""

from __future__ import annotations

import time
from typing import cast

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from redis.exceptions import RedisError

from cds_service.errors import DependencyUnavailable
from cds_service.store.patients import PatientCache

TASK_COUNTS = "cds:worker:tasks"
QUEUE = "celery"
#: how long after its last census sighting a patient still counts as on the census
CENSUS_GRACE_S = 3600
LAG_BUCKETS = (300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)


class _Snapshot:
    def __init__(self, families: list[GaugeMetricFamily | HistogramMetricFamily]) -> None:
        self._families = families

    def collect(self) -> list[GaugeMetricFamily | HistogramMetricFamily]:
        return self._families


async def worker_registry(redis: aioredis.Redis, cache: PatientCache) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    try:
        counts = await redis.hgetall(TASK_COUNTS)
        queued = int(await redis.llen(QUEUE))
        lags = await cache.newest_data(await cache.census(time.time() - CENSUS_GRACE_S))
    except (RedisError, OSError, DependencyUnavailable):
        return registry
    tasks = GaugeMetricFamily(
        "cds_worker_tasks",
        "Worker task outcomes since Redis was emptied.",
        labels=["task", "outcome"],
    )
    for field, value in counts.items():
        task, _, outcome = cast(bytes, field).decode().rpartition("|")
        tasks.add_metric([task, outcome], float(value))
    queue = GaugeMetricFamily("cds_worker_queue_length", "Tasks waiting in the broker queue.")
    queue.add_metric([], queued)
    buckets = [(str(b), float(sum(1 for lag in lags if lag <= b))) for b in LAG_BUCKETS]
    buckets.append(("+Inf", float(len(lags))))
    lag = HistogramMetricFamily(
        "cds_worker_refresh_lag_seconds",
        "Age of each census patient's newest observation held in Redis.",
    )
    lag.add_metric([], buckets, sum_value=float(sum(lags)))
    registry.register(_Snapshot([tasks, queue, lag]))
    return registry

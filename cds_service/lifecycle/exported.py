"""Lifecycle figures for /metrics, read at scrape time: what the alert rules watch.

- ``cds_cards_off{service, why}``: 1 while a service's cards are off (``killed`` or ``stopped``);
- ``cds_lifecycle_actions_total{action}``: lifecycle changes since Redis was emptied (rollback,
  stop, promote, ...), counted in the same transaction as the change itself;
- ``cds_drift_level{version, part}``: 0 ok, 1 warn, 2 act, from the newest drift check of each
  shown version; ``cds_drift_score_psi``, ``cds_drift_max_feature_psi``,
  ``cds_drift_alert_rate_ratio`` its figures;
- ``cds_audit_durable``: 1 when Redis persists appends and never evicts.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from redis.exceptions import RedisError

from cds_service.catalogue import SERVICES
from cds_service.lifecycle.audit import CALLS_STREAM, LIFECYCLE_STREAM, durability_of
from cds_service.lifecycle.follower import Deployment
from cds_service.lifecycle.monitor import HISTORY_PREFIX, DriftSnapshot
from cds_service.lifecycle.state import ACTIONS_PREFIX

_LEVEL = {"ok": 0.0, "warn": 1.0, "act": 2.0}


class _Families:
    def __init__(self, families: list[GaugeMetricFamily | CounterMetricFamily]) -> None:
        self._families = families

    def collect(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        return self._families


async def lifecycle_registry(redis: aioredis.Redis, deployment: Deployment) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    off = GaugeMetricFamily(
        "cds_cards_off", "1 while a service's cards are off, by why.", labels=["service", "why"]
    )
    for service in SERVICES:
        reason = deployment.cards_off(service.id)
        for why in ("killed", "stopped"):
            off.add_metric([service.id, why], 1.0 if reason and reason[0] == why else 0.0)
    families: list[GaugeMetricFamily | CounterMetricFamily] = [off]
    state = deployment.state
    versions = [v for v in (state.active, state.canary) if v] if state else []
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(f"{ACTIONS_PREFIX}:sepsis")
    pipe.info("persistence")
    pipe.info("memory")
    for stream in (LIFECYCLE_STREAM, CALLS_STREAM):
        pipe.xlen(stream)
    for version in versions:
        pipe.lindex(f"{HISTORY_PREFIX}:{version}", -1)
    try:
        actions, persistence, memory, *rest = await pipe.execute()
    except (RedisError, OSError):
        registry.register(_Families(families))
        return registry
    lengths, newest = rest[:2], rest[2:]
    problem = durability_of(persistence, memory)
    counted = CounterMetricFamily(
        "cds_lifecycle_actions", "Lifecycle changes, by action.", labels=["action"]
    )
    for action, count in actions.items():
        counted.add_metric([cast(bytes, action).decode()], float(count))
    level = GaugeMetricFamily(
        "cds_drift_level", "Newest drift check: 0 ok, 1 warn, 2 act.", labels=["version", "part"]
    )
    score = GaugeMetricFamily("cds_drift_score_psi", "Newest score PSI.", labels=["version"])
    feature = GaugeMetricFamily(
        "cds_drift_max_feature_psi", "Newest largest feature PSI.", labels=["version"]
    )
    ratio = GaugeMetricFamily(
        "cds_drift_alert_rate_ratio",
        "Newest alert rate over the validation alert rate.",
        labels=["version"],
    )
    for raw in newest:
        if raw is None:
            continue
        snap = DriftSnapshot.model_validate_json(raw)
        level.add_metric([snap.version, "inputs"], _LEVEL[snap.inputs])
        level.add_metric([snap.version, "behaviour"], _LEVEL[snap.behaviour])
        score.add_metric([snap.version], snap.score_psi)
        feature.add_metric([snap.version], snap.max_feature_psi)
        if snap.alert_rate is not None and snap.reference_alert_rate:
            ratio.add_metric([snap.version], snap.alert_rate / snap.reference_alert_rate)
    durable = GaugeMetricFamily("cds_audit_durable", "1 when the audit store cannot lose data.")
    if problem is None or not problem.startswith("unknown"):
        durable.add_metric([], 1.0 if problem is None else 0.0)
    events = GaugeMetricFamily(
        "cds_audit_events", "Audit events held in Redis, by stream.", labels=["stream"]
    )
    for stream, length in zip(("lifecycle", "calls"), lengths, strict=True):
        events.add_metric([stream], float(length))
    used = GaugeMetricFamily(
        "cds_redis_memory_used_ratio",
        "Redis used memory over its maxmemory (absent without a limit): the audit data is never "
        "evicted, so a full Redis refuses writes.",
    )
    limit = float(memory.get("maxmemory", 0) or 0)
    if limit > 0:
        used.add_metric([], float(memory.get("used_memory", 0)) / limit)
    families += [counted, level, score, feature, ratio, durable, events, used]
    registry.register(_Families(families))
    return registry

"""The patient timeline in the real Redis: dedupe, amendment, retention, pseudonymous keys."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
import redis.asyncio as aioredis
from pydantic import SecretStr

from cds_service.redis_server import EmbeddedRedis
from cds_service.security.pseudonym import Pseudonymiser
from cds_service.store.timeline import TimelineStore
from fhir_adapters.canonical import CanonicalObservation

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
PATIENT = "timeline-patient-1"
VARIABLES = ("heart_rate", "resp_rate", "temperature")


def obs(variable: str, hours_ago: float, value: float, source: str) -> CanonicalObservation:
    return CanonicalObservation(
        patient=PATIENT,
        variable=variable,
        time=NOW - timedelta(hours=hours_ago),
        value=value,
        source=source,
    )


@pytest.fixture
def run(redis_server: EmbeddedRedis, redis_client: redis.Redis) -> Iterator[object]:
    redis_client.flushdb()
    loop = asyncio.new_event_loop()
    client = aioredis.Redis.from_url(redis_server.url)
    store = TimelineStore(client, Pseudonymiser(SecretStr("k" * 40)), VARIABLES, 72 * 3600)
    yield lambda make: loop.run_until_complete(make(store))
    loop.run_until_complete(client.aclose())
    loop.close()


def test_merge_twice_stores_once_and_reads_in_time_order(run: object) -> None:
    batch = [
        obs("heart_rate", 2, 88, "Observation/a"),
        obs("heart_rate", 1, 92, "Observation/b"),
        obs("resp_rate", 1.5, 18, "Observation/c"),
    ]

    async def scenario(store: TimelineStore) -> tuple[int, int, list[CanonicalObservation]]:
        first = await store.merge(PATIENT, batch, NOW)
        again = await store.merge(PATIENT, batch, NOW)
        return first, again, await store.window(PATIENT, NOW - timedelta(hours=24), NOW)

    first, again, window = run(scenario)  # type: ignore[operator]
    assert (first, again) == (3, 0)
    assert [o.source for o in window] == ["Observation/a", "Observation/c", "Observation/b"]
    assert window == sorted(batch, key=lambda o: o.time)


def test_an_amended_value_replaces_the_old_one(run: object) -> None:
    async def scenario(store: TimelineStore) -> list[CanonicalObservation]:
        await store.merge(PATIENT, [obs("temperature", 1, 39.9, "Observation/t")], NOW)
        await store.merge(PATIENT, [obs("temperature", 1, 37.9, "Observation/t")], NOW)
        return await store.window(PATIENT, NOW - timedelta(hours=24), NOW)

    window = run(scenario)  # type: ignore[operator]
    assert [(o.source, o.value) for o in window] == [("Observation/t", 37.9)]


def test_retention_drops_old_values(run: object) -> None:
    async def scenario(store: TimelineStore) -> list[CanonicalObservation]:
        await store.merge(PATIENT, [obs("heart_rate", 80, 70, "Observation/old")], NOW)
        await store.merge(
            PATIENT, [obs("heart_rate", 73, 75, "Observation/older")], NOW - timedelta(hours=2)
        )
        await store.merge(PATIENT, [obs("heart_rate", 1, 80, "Observation/new")], NOW)
        return await store.window(PATIENT, NOW - timedelta(hours=100), NOW)

    window = run(scenario)  # type: ignore[operator]
    assert [o.source for o in window] == ["Observation/new"]


def test_keys_never_hold_the_raw_patient_id(run: object, redis_client: redis.Redis) -> None:
    async def scenario(store: TimelineStore) -> int:
        return await store.merge(PATIENT, [obs("heart_rate", 1, 80, "Observation/x")], NOW)

    assert run(scenario) == 1  # type: ignore[operator]
    keys = [k.decode() for k in redis_client.keys("cds:tl*")]
    assert keys and all(PATIENT not in k for k in keys)
    assert all(0 < redis_client.ttl(k) <= 72 * 3600 for k in keys)
